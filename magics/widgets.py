"""The live ``%tune`` widget: progress bar, loss curve, step/epoch, tokens/s and ETA,
and with ``--dev`` the held-out metric and a few generations at each evaluation.

It subscribes to nbkit's training events; the core never draws. The bar turns
green when the run completes, orange when interrupted and red when it fails. When
the run ends the widget's output is replaced by a static PNG of the loss curve
(and the dev metric) titled with one line of text, ``NAME: completed, 8 steps,
loss 0.3400, 26s``, which is also its text form: a saved notebook then reads
well where widgets do not render (a freshly cloned, untrusted notebook, GitHub,
nbviewer, after a kernel restart), with one loss curve, not a dead widget beside it.
"""

from __future__ import annotations

import base64
import html
import io
import time

from nbkit.events import Begin, Callback, End, Evaluation, Step, fmt_seconds, reward_text, task_loss_text


def loss_svg(losses: list[float], width: int = 360, height: int = 110) -> str:
    """The loss curve as an inline SVG polyline (no plotting library, renders anywhere)."""
    if len(losses) < 2:
        return f"<svg width='{width}' height='{height}'></svg>"
    lo, hi = min(losses), max(losses)
    span = (hi - lo) or 1.0
    pad = 24
    points = " ".join(
        f"{pad + i * (width - pad - 4) / (len(losses) - 1):.1f},{4 + (hi - v) / span * (height - 22):.1f}"
        for i, v in enumerate(losses)
    )
    return (
        f"<svg class='nbkit-loss' width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg' "
        "font-family='sans-serif' font-size='10'>"
        f"<polyline fill='none' stroke='#4C72B0' stroke-width='1.5' points='{points}'/>"
        f"<text x='0' y='12'>{hi:.2f}</text><text x='0' y='{height - 18}'>{lo:.2f}</text>"
        f"<text x='{pad}' y='{height - 4}'>loss over {len(losses)} steps</text></svg>"
    )


def loss_curve_png(losses: list[float], dev: list[tuple[int, float]] = (), metric: str = "accuracy",
                   title: str = "", label: str | None = None) -> bytes:
    """The loss per step (and the dev metric at its evaluations, or a reward per step) as a PNG, drawn
    with matplotlib; ``label`` names the second curve (default ``dev METRIC``)."""
    from matplotlib.figure import Figure  # no pyplot: nothing global changes in the user's session

    fig = Figure(figsize=(5.6, 2.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(range(1, len(losses) + 1), losses, color="#4C72B0", linewidth=1.4)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss", color="#4C72B0")
    ax.grid(alpha=0.3)
    if dev:
        other = ax.twinx()
        other.plot([s for s, _ in dev], [v for _, v in dev], "o-", color="#DD8452", markersize=4)
        other.set_ylabel(label or f"dev {metric}", color="#DD8452")
    if title:
        ax.set_title(title, fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


class TuneWidget(Callback):
    """An ipywidgets view of one training run."""

    def __init__(self, display=None):
        import ipywidgets as w

        self._display = display
        self.bar = w.IntProgress(value=0, min=0, max=1, description="tune", bar_style="info",
                                 layout=w.Layout(width="360px"))
        self.status = w.HTML("starting…")
        self.curve = w.HTML(loss_svg([]))
        self.dev = w.HTML("")  # the dev metric and sample generations, once evaluated
        self.box = w.VBox([w.HBox([self.bar, self.status]), self.curve, self.dev])
        self.box.add_class("nbkit-tune-widget")
        self.losses: list[float] = []
        self.dev_values: list[tuple[int, float]] = []
        self.rewards: list[tuple[int, float]] = []  # GRPO: the mean reward of each step
        self.metric = "accuracy"
        self.name = "tune"
        self._drawn = 0.0
        self._handle = None  # the widget's display, replaced by the static picture at the end

    def on_begin(self, e: Begin) -> None:
        self.bar.max = max(e.total_steps, 1)
        self.bar.value = e.resumed_from
        self.bar.description = e.run_name[:12]
        self.name = e.run_name
        note = f"; {e.truncated} truncated" if e.truncated else ""
        if e.memory_advice:
            note += f"<br><b>may not fit</b> ({html.escape(e.memory or '')}); try {html.escape('; or '.join(e.memory_advice))}"
        self.status.value = (f"{html.escape(e.method)} on {html.escape(e.model)}: {e.examples} examples, "
                             f"{e.total_steps} steps, {e.trainable_parameters:,} trainable parameters{note}")
        if self._display is not None:
            self._handle = self._display(self.box, display_id=True)

    def on_step(self, e: Step) -> None:
        self.losses.append(e.loss)
        if e.rewards and "reward" in e.rewards:
            self.rewards.append((e.step, e.rewards["reward"]))
        self.bar.value = e.step
        self.status.value = (f"step {e.step}/{e.total_steps} · epoch {e.epoch:.2f} · loss {e.loss:.4f} · "
                             + (f"{e.tokens_per_second:.0f} tok/s · " if e.tokens_per_second else "")  # encoders do not count
                             + f"ETA {fmt_seconds(e.eta)}"
                             + (f"<br>per task: {html.escape(task_loss_text(e.task_losses))}" if e.task_losses else "")
                             + (f"<br>{html.escape(reward_text(e.rewards))}" if e.rewards else ""))
        now = time.monotonic()
        if now - self._drawn > 0.5 or e.step == e.total_steps:  # a redraw per step floods slow frontends
            self.curve.value = loss_svg(self.losses)
            self._drawn = now

    def on_evaluate(self, e: Evaluation) -> None:
        if e.value is not None:
            self.dev_values.append((e.step, e.value))
            self.metric = e.metric
        value = f"{e.value:.4f}" if e.value is not None else "?"
        best = " (best so far)" if e.best else ""
        rows = "".join(
            f"<tr><td>{html.escape(_tail(s['input']))}</td><td><b>{html.escape(s['output'])}</b></td>"
            f"<td>{html.escape(s['expected'])}</td></tr>" for s in e.samples
        )
        table = (f"<table class='nbkit-samples'><tr><th>input</th><th>output</th><th>expected</th></tr>{rows}</table>"
                 if rows else "")
        self.dev.value = f"<div class='nbkit-dev'>step {e.step}: dev {html.escape(e.metric)} {value}{best}{table}</div>"

    def on_note(self, text: str) -> None:
        self.status.value = html.escape(text)

    def on_end(self, e: End) -> None:
        self.curve.value = loss_svg(self.losses)
        self.bar.bar_style = {"completed": "success", "interrupted": "warning"}.get(e.status, "danger")
        loss = e.metrics.get("train_loss")
        loss = f" · final loss {loss:.4f}" if isinstance(loss, float) else ""
        error = f" · {html.escape(e.error)}" if e.error else ""
        warning = e.metrics.get("warning")
        if warning:  # completed, but learned nothing: said where the user looks, not only in metrics.json
            self.bar.bar_style = "warning"
            error += f" · <b>warning</b>: {html.escape(warning)}"
        self.status.value = f"<b>{e.status}</b> after {e.steps} steps in {fmt_seconds(e.elapsed)}{loss}{error}"
        if self._display is None:
            return
        bundle = self.static_image(e)
        if self._handle is not None:  # the widget gives way to its static form: one curve, no dead widget
            self._handle.update(bundle, raw=True)
        else:
            self._display(bundle, raw=True)

    def summary(self, e: End) -> str:
        """The run in one line: ``NAME: completed, 8 steps, loss 0.3400, 26s`` (and a warning or error)."""
        loss = e.metrics.get("train_loss", self.losses[-1] if self.losses else None)
        return (f"{self.name}: {e.status}, {e.steps} step{'' if e.steps == 1 else 's'}"
                + (f", loss {loss:.4f}" if isinstance(loss, float) else "") + f", {fmt_seconds(e.elapsed)}"
                + (f"; warning: {e.metrics['warning']}" if e.metrics.get("warning") else "")
                + (f"; error: {e.error}" if e.error else ""))

    def static_image(self, e: End) -> dict:
        """The run's static form as a display bundle: the loss curve as a PNG titled with :meth:`summary`,
        and the summary as its text (what nbval, GitHub's text view and a terminal show). Without two
        losses to draw, the text alone."""
        text = self.summary(e)
        if len(self.losses) < 2:
            return {"text/plain": text}
        reward = self.rewards and not self.dev_values  # a reward run draws its reward where a dev metric would be
        png = loss_curve_png(self.losses, self.rewards if reward else self.dev_values, self.metric,
                             title=text if len(text) <= 90 else text[:89] + "…",
                             label="mean reward" if reward else None)
        return {"image/png": base64.b64encode(png).decode("ascii"), "text/plain": text}


def _tail(text: str, width: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else "…" + text[-(width - 1):]
