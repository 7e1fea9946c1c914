"""Result objects with rich display: :class:`Report` (evaluation) and :class:`Generations`.

Each renders as HTML in JupyterLab, Colab and VS Code, and as plain text
everywhere else. Charts are inline SVG, so saved notebooks show them without a
plotting library or a running kernel.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from typing import Any

PALETTE = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]


def bar_chart(frame, metrics: list[str], width: int = 420) -> str:
    """Horizontal grouped bars, one group per row of ``frame``, values in [0, 1]."""
    metrics = [m for m in metrics if m in frame.columns]
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
            parts.append(f"<text x='{label_w + w + 4:.1f}' y='{y + bar - 4}'>{value:.3f}</text>")
            y += bar
        y += gap
    legend = "".join(
        f"<rect x='{label_w + 110 * k}' y='{y + 2}' width='10' height='10' fill='{PALETTE[k % 6]}'/>"
        f"<text x='{label_w + 110 * k + 14}' y='{y + 11}'>{html.escape(m)}</text>" for k, m in enumerate(metrics)
    )
    parts.append(legend + "</svg>")
    return "".join(parts)


class Report:
    """An evaluation: one row per target (prompt, or prompt + run), one column per metric.

    Attributes:
        frame: pandas DataFrame indexed by target; metric columns (``accuracy``, ``f1``, …),
            then ``n`` (examples scored).
        predictions: per target, a DataFrame of input, output, expected and correct.
        info: what was evaluated: data, split, scoring, metrics, seconds per target, and
            the errors of targets that failed.
    """

    def __init__(self, frame, predictions: dict, info: dict):
        self.frame, self.predictions, self.info = frame, predictions, info

    @property
    def metrics(self) -> list[str]:
        return list(self.info.get("metrics", []))

    def __repr__(self):
        return f"nbkit Report on {self.info.get('data')} [{self.info.get('split')}]\n{self.frame.to_string()}"

    def _repr_html_(self):
        table = self.frame.to_html(float_format=lambda v: f"{v:.3f}", classes="nbkit-report", border=0)
        errors = "".join(
            f"<p style='color:#b00'>{html.escape(t)} failed: {html.escape(e)}</p>"
            for t, e in self.info.get("errors", {}).items()
        )
        caption = (f"<b>nbkit evaluation</b> on {html.escape(str(self.info.get('data')))} "
                   f"[{html.escape(str(self.info.get('split')))}], {html.escape(self.info.get('scoring', ''))}")
        return f"<div class='nbkit-report'>{caption}{table}{bar_chart(self.frame, self.metrics)}{errors}</div>"

    def to_dict(self) -> dict:
        return {
            "info": self.info,
            "results": {str(k): {c: _plain(v) for c, v in row.items()} for k, row in self.frame.iterrows()},
        }

    def save(self, folder: str | os.PathLike, name: str | None = None) -> Path:
        """Write ``<name>.json`` (info + table) and ``<name>.csv`` (the table) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if name is None:  # time-ordered, and two reports in one second do not collide
            stamp, k = time.strftime("report-%Y%m%d-%H%M%S"), 1
            while (folder / f"{stamp}-{k:02d}.json").exists():
                k += 1
            name = f"{stamp}-{k:02d}"
        path = folder / f"{name}.json"
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
        self.frame.to_csv(folder / f"{name}.csv")
        return path


def _plain(value: Any):
    try:
        return value.item()  # numpy scalar
    except AttributeError:
        return value


class Generations:
    """Outputs of a prompt on some rows: ``frame`` has input, output and (when known) expected."""

    def __init__(self, frame, prompt: str, model: str):
        self.frame, self.prompt, self.model = frame, prompt, model

    @property
    def outputs(self) -> list[str]:
        return list(self.frame["output"])

    def __repr__(self):
        if len(self.frame) == 1 and "expected" not in self.frame:  # a chat cell: just the answer
            return self.frame["output"].iloc[0]
        return self.frame.to_string()

    def _repr_html_(self):
        rows = "".join(
            "<tr>" + "".join(
                f"<td style='text-align:left;white-space:pre-wrap;vertical-align:top'>{html.escape(str(v))}</td>"
                for v in row
            ) + "</tr>"
            for row in self.frame.itertuples(index=False)
        )
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.frame.columns)
        return (f"<div class='nbkit-generations'><b>{html.escape(self.prompt)}</b> on {html.escape(self.model)}"
                f"<table><tr>{head}</tr>{rows}</table></div>")
