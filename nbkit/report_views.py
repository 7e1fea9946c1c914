"""How a :class:`~nbkit.results.Report` shows itself in a notebook: the table with each metric's 95%
interval, a bar chart with error bars, a confusion matrix per classification target, and, when
targets were scored on the same rows, each against the first: the paired test and the rows they
disagree on. Charts are SVG pictures in ``<img>`` tags (base64 data URIs): a saved notebook shows them
without a plotting library or a running kernel, and they survive the sanitiser of an untrusted notebook
(JupyterLab, GitHub and nbviewer strip inline ``<svg>`` and styling, so a chart drawn in HTML collapses
into run-together text there).
"""

from __future__ import annotations

import base64
import html

PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]


UNBOUNDED = ("perplexity", "margin")  # metrics not in [0, 1]: in the table, not in the bar chart


def as_image(svg: str, cls: str, alt: str) -> str:
    """An SVG as an ``<img>`` with a data URI: the form every notebook viewer's sanitiser keeps."""
    if not svg:
        return ""
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f"<img class='{cls}' alt='{html.escape(alt, quote=True)}' src='data:image/svg+xml;base64,{data}'/>"


def bar_chart(frame, metrics: list[str], width: int = 420, intervals=None) -> str:
    """Horizontal grouped bars, one group per row of ``frame``, values in [0, 1]; with ``intervals`` (a frame
    of ``M_low``/``M_high`` by target) each bar gets its 95% interval as an error bar."""
    metrics = [m for m in metrics if m in frame.columns and m not in UNBOUNDED]
    if not metrics or frame.empty:
        return ""
    bar, gap, label_w = 14, 10, 170
    height = len(frame) * (len(metrics) * bar + gap) + 24
    parts = [f"<svg class='nbkit-chart' width='{width + label_w + 60}' height='{height}' "
             "xmlns='http://www.w3.org/2000/svg' font-family='sans-serif' font-size='11'>"]
    y = 4
    for target, row in frame.iterrows():
        parts.append(f"<text x='{label_w - 6}' y='{y + len(metrics) * bar / 2 + 4}' text-anchor='end'>"
                     f"{html.escape(str(target))[:28]}</text>")
        for k, metric in enumerate(metrics):
            value = row[metric]
            value = float(value) if value == value else 0.0  # NaN → empty bar
            w = max(0.0, min(1.0, value)) * width
            parts.append(f"<rect x='{label_w}' y='{y}' width='{w:.1f}' height='{bar - 2}' fill='{PALETTE[k % 6]}'/>")
            end = w
            span = _interval(intervals, target, metric)
            if span is not None:  # the 95% interval: a line from low to high across the bar's middle
                low, high = (max(0.0, min(1.0, v)) * width for v in span)
                mid = y + (bar - 2) / 2
                parts.append(f"<line class='nbkit-interval' x1='{label_w + low:.1f}' x2='{label_w + high:.1f}' "
                             f"y1='{mid}' y2='{mid}' stroke='#222' stroke-width='1'/>"
                             + "".join(f"<line x1='{label_w + x:.1f}' x2='{label_w + x:.1f}' y1='{mid - 3}' "
                                       f"y2='{mid + 3}' stroke='#222' stroke-width='1'/>" for x in (low, high)))
                end = max(w, high)
            parts.append(f"<text x='{label_w + end + 4:.1f}' y='{y + bar - 4}'>{value:.3f}</text>")
            y += bar
        y += gap
    legend = "".join(
        f"<rect x='{label_w + 110 * k}' y='{y + 2}' width='10' height='10' fill='{PALETTE[k % 6]}'/>"
        f"<text x='{label_w + 110 * k + 14}' y='{y + 11}'>{html.escape(m)}</text>" for k, m in enumerate(metrics)
    )
    parts.append(legend + "</svg>")
    return "".join(parts)


def confusion_svg(counts, title: str, cell: int = 34) -> str:
    """A confusion matrix as an SVG heat map: rows expected, columns predicted, counts in the cells."""
    labels, columns = list(counts.index), list(counts.columns)
    # whole labels, not cut: cells as wide as the longest column label, the margin as the longest row label
    cell = max(cell, 6 * max((len(str(c)) for c in columns), default=0) + 8)
    left, top = max(90, 6 * max((len(str(e)) for e in labels), default=0) + 10), 40
    width, height = left + cell * len(columns) + 10, top + cell * len(labels) + 10
    peak = max(int(counts.values.max()), 1)
    parts = [f"<svg class='nbkit-confusion' width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg' "
             f"font-family='sans-serif' font-size='10'><text x='0' y='11' font-weight='bold'>{html.escape(title)[:40]}"
             "</text><text x='0' y='26'>expected ↓ predicted →</text>"]
    for j, c in enumerate(columns):
        parts.append(f"<text x='{left + j * cell + cell / 2}' y='{top - 3}' text-anchor='middle'>"
                     f"{html.escape(str(c))}</text>")
    for i, e in enumerate(labels):
        y = top + i * cell
        parts.append(f"<text x='{left - 4}' y='{y + cell / 2 + 3}' text-anchor='end'>{html.escape(str(e))}</text>")
        for j, c in enumerate(columns):
            n = int(counts.iloc[i, j])
            shade = 255 - int(200 * n / peak)
            fill = f"rgb({shade},{shade},255)" if e != c else f"rgb({shade},255,{shade})"
            parts.append(f"<rect x='{left + j * cell}' y='{y}' width='{cell - 1}' height='{cell - 1}' fill='{fill}'/>"
                         f"<text x='{left + j * cell + cell / 2}' y='{y + cell / 2 + 3}' text-anchor='middle'>{n}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _interval(intervals, target, metric):
    """``(low, high)`` of ``metric`` for ``target`` in an intervals frame, or None when it has none."""
    if intervals is None or target not in intervals.index or f"{metric}_low" not in intervals.columns:
        return None
    low, high = intervals.loc[target, f"{metric}_low"], intervals.loc[target, f"{metric}_high"]
    return None if any(v != v for v in (low, high)) else (float(low), float(high))


def table_html(report, intervals) -> str:
    """The report's table, each metric with its interval: ``0.787 [0.69, 0.87]``."""
    shown = report.frame.copy().astype(object)
    for metric in report.metrics:
        if metric not in shown.columns:
            continue
        for target in shown.index:
            value, span = report.frame.loc[target, metric], _interval(intervals, target, metric)
            number = f"{value:.3f}" if isinstance(value, float) and value == value else str(value)
            shown.loc[target, metric] = number + (f" [{span[0]:.2f}, {span[1]:.2f}]" if span else "")
    return shown.to_html(float_format=lambda v: f"{v:.3f}", classes="nbkit-report", border=0)


def safe_intervals(report):
    """The report's intervals, or None for a report whose rows cannot be resampled (no predictions)."""
    scored = [t for t in report.frame.index if t in report.predictions]
    if not scored or not report.metrics:
        return None
    from .metrics import COMPUTE

    wanted = [m for m in report.metrics if m in COMPUTE]
    return report.intervals(wanted) if wanted else None


def p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def comparison_text(report, first: str, other: str) -> str:
    """The paired comparison of ``other`` against ``first`` on the report's first metric, in one sentence."""
    metric = next((m for m in report.metrics if m in report.frame.columns), None)
    if metric is None:
        return ""
    try:
        row = report.compare(first, other, metric=metric).loc[metric]
    except ValueError:  # not scored on the same rows
        return ""
    p = "" if row["p_value"] != row["p_value"] else f", {row['test']} {p_text(float(row['p_value']))}"
    return f"{metric} {row['difference']:+.3f} [{row['low']:+.2f}, {row['high']:+.2f}]{p}: {row['verdict']}"


def disagreement_html(report) -> str:
    """Each of the next few targets against the first: the paired test, and examples only one got right."""
    import pandas as pd

    from .events import short

    names = list(report.predictions)
    if len(names) < 2:
        return ""
    parts = []
    for other in names[1:4]:  # the first against the next few (a search ranks the best first)
        d = report.disagreements(names[0], other)
        gains, losses = d[d["right"] == other], d[d["right"] == names[0]]
        rows = "".join(
            f"<tr><td>{html.escape(short(r['input'], 80))}</td><td>{html.escape(str(r['expected']))}</td>"
            f"<td>{html.escape(str(r[names[0]]))}</td><td>{html.escape(str(r[other]))}</td></tr>"
            for _, r in pd.concat([gains.head(3), losses.head(3)]).iterrows()
        )
        verdict = comparison_text(report, names[0], other)
        parts.append(
            f"<p><b>{html.escape(other)}</b> against <b>{html.escape(names[0])}</b>"
            + (f": {html.escape(verdict)}" if verdict else "")
            + f"<br>right where <b>{html.escape(names[0])}</b> was wrong: {len(gains)}; the reverse: {len(losses)}</p>"
            + (f"<table class='nbkit-disagreements'><tr><th>input</th><th>expected</th>"
               f"<th>{html.escape(names[0])}</th><th>{html.escape(other)}</th></tr>{rows}</table>" if rows else "")
        )
    return "<div class='nbkit-disagreements'>" + "".join(parts) + "</div>"


def report_html(report) -> str:
    info = report.info
    intervals = safe_intervals(report)
    table = table_html(report, intervals)
    errors = "".join(f"<p style='color:#b00'>{html.escape(t)} failed: {html.escape(e)}</p>"
                     for t, e in info.get("errors", {}).items())
    caption = (f"<b>nbkit evaluation</b> on {html.escape(str(info.get('data')))} "
               f"[{html.escape(str(info.get('split')))}], {html.escape(info.get('scoring', ''))}"
               + (" (95% intervals in brackets)" if intervals is not None else ""))
    matrices = "".join(as_image(confusion_svg(report.confusion(t), t), "nbkit-confusion", f"confusion matrix of {t}")
                       for t in info.get("labels", {}) if t in report.predictions)
    chart = as_image(bar_chart(report.frame, report.metrics, intervals=intervals), "nbkit-chart",
                     "bar chart of " + ", ".join(report.metrics))
    api = ""
    if info.get("api"):
        api = "<p><b>API requests</b> (latencies in ms)</p>" + report.api().to_html(classes="nbkit-api", border=0)
    seeds = report.seeds()
    if len(seeds):  # one run per seed: how far the seed alone moves each metric
        table += "<p><b>Across seeds</b></p>" + seeds.to_html(float_format=lambda v: f"{v:.3f}", border=0)
    return (f"<div class='nbkit-report'>{caption}{table}{chart}"
            f"<div>{matrices}</div>{disagreement_html(report)}{api}{errors}</div>")
