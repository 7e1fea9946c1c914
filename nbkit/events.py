"""Training progress as events, and the plain-text subscriber.

The core emits; displays subscribe. A widget in ``nbkit.magics`` draws the
same events live in Jupyter; :class:`PlainProgress` prints a few lines for
terminals, papermill and CI, where a redrawn bar would scroll.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Sequence

from .errors import shown_path


@dataclass
class Begin:
    """Training starts."""

    run_name: str
    run_path: str
    model: str
    method: str
    total_steps: int
    epochs: float
    examples: int
    trainable_parameters: int
    total_parameters: int
    truncated: int = 0  # examples cut to max_length; reported, never silent
    resumed_from: int = 0
    dev_examples: int = 0  # held-out rows evaluated during training
    memory: str | None = None  # the memory estimate, described
    memory_advice: list[str] | None = None  # set when the estimate does not fit: what to change
    processes: int = 1  # data-parallel processes (torchrun / accelerate launch)
    batch_size: int = 0  # rows per optimizer step before accumulation, split over the processes
    grad_accum: int = 1


@dataclass
class Step:
    """One optimizer step finished."""

    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    tokens_per_second: float
    elapsed: float
    eta: float
    task_losses: dict | None = None  # multi-task: each task's loss in this step's batches
    rewards: dict | None = None  # preference / reward objectives: reward, reward_std, accuracy, margin


@dataclass
class Evaluation:
    """The model was scored on the dev data during training."""

    step: int
    total_steps: int
    metric: str  # accuracy (with label choices) or loss
    value: float | None
    loss: float | None
    best: bool  # the best so far: this checkpoint becomes the adapter unless a later one beats it
    samples: list = field(default_factory=list)  # dicts of input, output, expected


@dataclass
class End:
    """Training ended: ``status`` is completed, interrupted or failed."""

    status: str
    elapsed: float
    steps: int
    metrics: dict = field(default_factory=dict)
    error: str | None = None
    run: object = None


class Callback:
    """Base class of progress subscribers; override what you need."""

    def on_begin(self, event: Begin) -> None: ...

    def on_step(self, event: Step) -> None: ...

    def on_evaluate(self, event: Evaluation) -> None: ...

    def on_note(self, text: str) -> None: ...

    def on_end(self, event: End) -> None: ...


class Emitter(Callback):
    """Fans events out to several subscribers."""

    def __init__(self, callbacks: Sequence[Callback]):
        self.callbacks = list(callbacks)

    def on_begin(self, event):
        for cb in self.callbacks:
            cb.on_begin(event)

    def on_step(self, event):
        for cb in self.callbacks:
            cb.on_step(event)

    def on_evaluate(self, event):
        for cb in self.callbacks:
            cb.on_evaluate(event)

    def on_note(self, text):
        for cb in self.callbacks:
            cb.on_note(text)

    def on_end(self, event):
        for cb in self.callbacks:
            cb.on_end(event)


def fmt_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class PlainProgress(Callback):
    """A few plain lines: the start, about ``lines`` progress lines, the end."""

    def __init__(self, lines: int = 4, stream=None):
        self.lines, self.stream = lines, stream
        self._next = 0.0

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stdout, flush=True)

    def on_begin(self, e: Begin) -> None:
        resumed = f", resuming at step {e.resumed_from}" if e.resumed_from else ""
        self._print(
            f"tune {e.run_name}: {e.method} on {e.model}, {e.examples} examples, {e.total_steps} steps{resumed}; "
            f"{e.trainable_parameters:,} of {e.total_parameters:,} parameters trainable "
            f"({100 * e.trainable_parameters / max(e.total_parameters, 1):.2f}%)"
        )
        if e.truncated:
            self._print(f"  note: {e.truncated} example(s) longer than max_length were truncated")
        if e.memory:
            self._print(f"  memory: {e.memory}")
        if e.memory_advice:
            self._print(f"  warning: this may not fit; try {'; or '.join(e.memory_advice)}")
        if e.processes > 1:
            self._print(f"  {e.processes} processes: {e.batch_size // e.processes} rows each per batch of "
                        f"{e.batch_size}, x{e.grad_accum} accumulation = {e.batch_size * e.grad_accum} examples "
                        "per update (effective batch size)")
        if e.dev_examples:
            self._print(f"  evaluating on {e.dev_examples} held-out examples during training")
        self._next = 1 / self.lines

    def on_step(self, e: Step) -> None:
        if e.step / max(e.total_steps, 1) + 1e-9 < self._next and e.step != e.total_steps:
            return
        while self._next <= e.step / max(e.total_steps, 1):
            self._next += 1 / self.lines
        self._print(
            f"  step {e.step}/{e.total_steps}  epoch {e.epoch:.2f}  loss {e.loss:.4f}  "
            + (f"{e.tokens_per_second:.0f} tok/s  " if e.tokens_per_second else "")  # encoder loops do not count
            + f"elapsed {fmt_seconds(e.elapsed)}  eta {fmt_seconds(e.eta)}"
            + (f"  ({task_loss_text(e.task_losses)})" if e.task_losses else "")
            + (f"  {reward_text(e.rewards)}" if e.rewards else "")
        )

    def on_evaluate(self, e: Evaluation) -> None:
        value = f"{e.value:.4f}" if e.value is not None else "?"
        best = "  (best so far)" if e.best else ""
        self._print(f"  eval at step {e.step}: dev {e.metric} {value}{best}")
        for s in e.samples[:2]:
            self._print(f"    {short(s['input'])!r} -> {short(s['output'])!r} (expected {short(s['expected'])!r})")

    def on_note(self, text: str) -> None:
        self._print(f"  {text}")

    def on_end(self, e: End) -> None:
        where = f" -> {shown_path(e.run.path)}" if e.run is not None else ""
        detail = f": {e.error}" if e.error else ""
        self._print(f"tune {e.status} after {e.steps} steps in {fmt_seconds(e.elapsed)}{detail}{where}")
        if e.metrics.get("warning"):
            self._print(f"  warning: {e.metrics['warning']}")


def task_loss_text(losses: dict) -> str:
    """``intent 0.41, sentiment 0.22``: each task's loss in a multi-task step."""
    return ", ".join(f"{name} {value:.4f}" for name, value in losses.items())


def reward_text(rewards: dict) -> str:
    """``reward 0.42 ± 0.18`` (GRPO), ``accuracy 0.75, margin 0.31`` (DPO, ORPO, KTO)."""
    parts = []
    if "reward" in rewards:
        spread = f" ± {rewards['reward_std']:.2f}" if "reward_std" in rewards else ""
        parts.append(f"reward {rewards['reward']:.3f}{spread}")
    parts += [f"{k} {v:.3f}" for k, v in rewards.items() if k not in ("reward", "reward_std")]
    return ", ".join(parts)


def short(text: str, width: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else "…" + text[-(width - 1):]


def distinct(texts: list[str]) -> list[str]:
    """Each text without the start and the end that every text shares (a prompt's fixed words), cut at word
    boundaries and marked with "…": the part that tells the rows apart."""
    import os

    texts = [str(t) for t in texts]
    if len(texts) < 2:
        return texts
    head = os.path.commonprefix(texts)
    head = head[:max(head.rfind(" "), head.rfind("\n")) + 1]
    tail = os.path.commonprefix([t[len(head):][::-1] for t in texts])[::-1]
    tail = tail[min((i for i in (tail.find(" "), tail.find("\n")) if i >= 0), default=len(tail)):]
    return [("…" if head else "") + t[len(head):len(t) - len(tail)].strip() + ("…" if tail.strip() else "")
            for t in texts]
