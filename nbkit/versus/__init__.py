"""``nbkit.prompt_vs_finetune``: prompting and fine-tuning on one task, side by side, with their costs.

The guide's FAQ asks what the essential difference between prompt learning and
fine-tuning is. This answers it with numbers: the same prompt, data and test rows
go through zero-shot, few-shot and searched prompts (no weights change) and
through a soft prompt, LoRA and QLoRA (a few weights are trained), and one table
shows accuracy next to what each cost: trainable parameters, seconds and memory.

Nothing is reimplemented: prompts are scored by :func:`nbkit.evaluate`, the
searched prompt comes from :func:`nbkit.search_prompts`, the tuned ones from
:func:`nbkit.tune`, each then evaluated like any run.

:mod:`.approaches` runs each approach, :mod:`.memory` measures its peak memory; this module
checks the settings, runs the approaches in turn and builds the table.
"""

from __future__ import annotations

import dataclasses
import html
import os
import time
from typing import Any, Mapping, Sequence

from .. import events
from ..config import DEFAULT_MODEL
from ..errors import ConfigError
from ..prompts import Prompt
from ..results import Report
from ..session import get_prompt
from .approaches import APPROACHES, SEEDED, SHOTS, STEPS, TUNED, Failed, Task, stops_everything
from .memory import PeakMemory, release_freed_memory, reset_high_water_mark, status_kib

__all__ = [
    "APPROACHES", "MEMORY", "SHOTS", "STEPS", "TUNED", "PeakMemory", "Task", "VersusReport", "prompt_vs_finetune",
    "release_freed_memory", "reset_high_water_mark", "status_kib", "warm_up",
]

MEMORY = ("the process's peak resident memory (VmHWM) while the approach ran, in MiB: everything the process "
          "held, model weights included (also the session's cached base model)")


class VersusReport(Report):
    """A :class:`Report` whose rows are approaches; its views say what was run before the table."""

    def setup(self) -> str:
        """One paragraph of plain text: the prompt, model, shots, training length and test rows."""
        i = self.info
        length = f"{i['max_steps']} steps" if i.get("max_steps") else f"{i.get('epochs'):g} epochs"
        parts = [f"prompt {i.get('prompt')!r} on {i.get('model')}, scored on {i.get('rows')} {i.get('split')} "
                 f"rows of {i.get('data')}"]
        if "few-shot" in i.get("approaches", []):
            parts.append(f"few-shot: {i.get('shots')} balanced shots")
        search = i.get("search")
        if search:
            parts.append(f"searched: best of {search['candidates']} candidates ({search['best']}) on "
                         f"{search['dev_rows']} dev rows of train, registered as {search['registered']!r}")
        runs = i.get("runs") or {}
        if runs:
            parts.append(f"tuned for {length} on the train split: " + ", ".join(f"{a} → run {r!r}"
                                                                              for a, r in runs.items()))
        if i.get("baseline_memory_mb") is not None:
            parts.append(f"peak_memory_mb: {MEMORY}; {i['baseline_memory_mb']} MiB were resident before the first")
        elif "memory" in i:
            parts.append(f"peak_memory_mb: {i['memory']}")
        return "; ".join(parts)

    def __repr__(self):
        return f"nbkit prompt vs fine-tune: {self.setup()}\n{super().__repr__()}"

    def _repr_html_(self):
        return (f"<div class='nbkit-versus'><p><b>prompt vs fine-tune</b>: {html.escape(self.setup())}</p>"
                f"{super()._repr_html_()}</div>")


def prompt_vs_finetune(
    prompt: Prompt | str,
    data: Any,
    *,
    approaches: Sequence[str] = APPROACHES,
    shots: int = 4,
    epochs: float = 2.0,
    max_steps: int | None = None,
    limit: int | None = None,
    model: str = DEFAULT_MODEL,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    dev: float | int | str = 0.25,
    namespace: Mapping[str, Any] | None = None,
    callbacks: Sequence[events.Callback] | None = None,
) -> VersusReport:
    """Run prompting and fine-tuning approaches on one classification task; one row per approach.

    ``zero-shot`` scores ``prompt`` as written without examples; ``few-shot`` with ``shots``
    examples from the train split, one per class in turn; ``searched`` ranks ``shots`` 0 and
    ``shots`` x random/balanced examples on ``dev`` rows held out of train (never the test split)
    and scores the winner, registered as ``<prompt>-searched``; ``prompt-tuning``, ``lora`` and
    ``qlora`` train a run of that method on the whole train split (named ``<prompt>-<method>``,
    numbered if the name is taken: an existing run is never replaced) and score it. Every
    approach is scored on the same test rows.

    Args:
        prompt: a prompt with ``choices`` (or its name).
        data: data spec; tuning and shots use ``train``, the table ``test``.
        approaches: which of ``zero-shot``, ``few-shot``, ``searched``, ``prompt-tuning``,
            ``lora``, ``qlora`` to run, in the order of the rows.
        shots: examples in the few-shot prompt, and the most the search tries.
        epochs: passes over the train split for each tuned run.
        max_steps: stop each tuned run after this many steps instead (for quick looks).
        limit: score only the first ``limit`` test rows.
        model: base model spec (a local model: tuning needs its weights).
        seed: seed of the search's dev split and of the tuned runs.
        seeds: run the approaches a seed changes (``searched`` and the tuned ones) once per seed instead,
            as rows ``<approach>-s<seed>``; ``report.seeds()`` then gives each one's mean, standard
            deviation and range across seeds. Zero-shot and few-shot, which no seed changes, run once.
        dev: the search's dev rows: a fraction or count of train, or a split other than test.
        namespace: where a data variable name is looked up.
        callbacks: progress subscribers for the tuned runs and a note per approach; default
            a few plain lines.

    Returns:
        A :class:`VersusReport` (a :class:`nbkit.results.Report`): ``frame`` indexed by
        approach with ``accuracy``, ``f1``, ``trainable_parameters`` (0 for prompts; a run's
        own count), ``train_seconds`` (the run's training loop), ``search_seconds``,
        ``eval_seconds``, ``peak_memory_mb`` and ``n`` (test rows scored). ``peak_memory_mb``
        is the process's peak resident memory while that approach ran, model weights included,
        measured by resetting Linux's high-water mark (``/proc/self/clear_refs``) before each
        approach; it is ``None`` where that reset is not possible. On a GPU,
        ``peak_gpu_memory_mb`` is ``torch.cuda.max_memory_allocated`` over the approach. An
        approach that fails has no row; ``info["errors"]`` says why, and the others still run.

    Raises:
        ConfigError: before any model loads, for unknown or repeated approaches, a prompt
            without choices, ``shots`` below 1 with few-shot or searched, and bad settings.
    """
    from ..data import load_data

    approaches = _check_approaches(approaches)
    plan = _plan(approaches, seed, seeds)
    base = get_prompt(prompt)
    _check_settings(base, approaches, shots, limit, model, epochs, max_steps, seed)
    splits = load_data(data, namespace)
    columns = splits["train"].column_names
    base = Prompt.from_dict({**base.resolve_target(columns).to_dict(), "shots": 0})
    base.check(columns)
    _check_rows(splits, approaches, shots, dev, seed)
    task = Task(base, data, model, shots, epochs, max_steps, limit, dev, seed, namespace,
                list(callbacks) if callbacks is not None else [events.PlainProgress()])
    emit = events.Emitter(task.callbacks)
    meter = PeakMemory(warm_up(model, approaches))

    rows, predictions, errors, seconds, facts = _run_all(task, plan, emit, meter)
    return _report(task, approaches, splits, rows, predictions, errors, seconds, facts, meter)


def _plan(approaches: list[str], seed: int, seeds) -> list[tuple[str, str, int]]:
    """``(row label, approach, seed)`` in the order of the rows: with ``seeds``, one row per seed for the
    approaches a seed changes."""
    if seeds is None:
        return [(a, a, seed) for a in approaches]
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds) \
            or len(set(seeds)) < len(seeds):
        raise ConfigError("seeds", f"must be distinct whole numbers of 0 or more, like [0, 1, 2]; got {seeds!r}")
    return [(f"{a}-s{s}", a, s) if a in SEEDED else (a, a, seed)
            for a in approaches for s in (seeds if a in SEEDED else seeds[:1])]


def _run_all(task: Task, plan, emit, meter) -> tuple[dict, dict, dict, dict, dict]:
    """Each planned row in turn: ``(rows, predictions, errors, seconds, facts)`` by row label."""
    rows, predictions, errors, seconds, facts = {}, {}, {}, {}, {}
    for k, (approach, step, seed) in enumerate(plan):
        emit.on_note(f"prompt vs fine-tune: {approach} ({k + 1} of {len(plan)})")
        meter.reset()
        started = time.monotonic()
        try:
            report, row, facts[approach] = STEPS[step](dataclasses.replace(task, seed=seed), step)
        except Exception as e:  # keep the approaches that worked; report this one
            if stops_everything(e):
                raise
            errors[approach] = str(e) if isinstance(e, Failed) else f"{type(e).__name__}: {e}"
            emit.on_note(f"{approach} failed: {errors[approach]}")
            continue
        label = report.frame.index[0]
        measured = report.frame.loc[label]
        rows[approach] = {"accuracy": measured["accuracy"], "f1": measured["f1"], **row,
                          "eval_seconds": report.info["seconds"][label], **meter.read(), "n": int(measured["n"])}
        predictions[approach] = report.predictions[label]
        seconds[approach] = round(time.monotonic() - started, 2)
        emit.on_note(f"{approach}: accuracy {measured['accuracy']:.3f} ({seconds[approach]:.0f}s)")
    return rows, predictions, errors, seconds, facts


def _check_approaches(approaches) -> list[str]:
    approaches = [approaches] if isinstance(approaches, str) else list(approaches)
    if not approaches:
        raise ConfigError("approaches", f"is empty; pick some of: {', '.join(APPROACHES)}")
    unknown = [a for a in approaches if a not in APPROACHES]
    if unknown:
        raise ConfigError("approaches", f"has unknown {unknown[0]!r}; pick some of: {', '.join(APPROACHES)}")
    repeated = sorted({a for a in approaches if approaches.count(a) > 1})
    if repeated:
        raise ConfigError("approaches", f"names {repeated[0]!r} twice; each approach is one row")
    return approaches


def _check_settings(prompt: Prompt, approaches, shots, limit, model, epochs, max_steps, seed) -> None:
    from ..config import TuneConfig
    from ..models import family_of

    if not prompt.choices:
        raise ConfigError("prompt", f"{prompt.name!r} has no choices; the comparison scores classification "
                          "(give the prompt --choices, e.g. --choices refund,delivery,account,other)")
    if isinstance(shots, bool) or not isinstance(shots, int) or (shots < 1 and set(SHOTS) & set(approaches)):
        raise ConfigError("shots", f"must be a positive integer for {' and '.join(SHOTS)}, got {shots!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ConfigError("limit", f"must be a positive integer, got {limit!r}")
    if family_of(model) == "api":
        raise ConfigError("model", "must be a local model: tuning needs its weights and the table its memory")
    if set(TUNED) & set(approaches):  # the training settings fail here, not after the prompts have run
        TuneConfig(prompt=prompt.name, data="-", model=model, epochs=epochs, max_steps=max_steps, seed=seed)


def _check_rows(splits, approaches, shots, dev, seed) -> None:
    """The search's dev rows and the shots fit the train split."""
    from ..data import hold_out

    train = list(splits["train"])
    pool = train
    if "searched" in approaches:
        if isinstance(dev, str):
            if dev == "test" or dev not in splits:
                raise ConfigError("dev", f"{dev!r} is not a split to search on; splits: "
                                  f"{', '.join(s for s in splits if s != 'test')}, or a fraction of train like 0.25")
        elif isinstance(dev, bool) or not isinstance(dev, (int, float)) or dev <= 0:
            raise ConfigError("dev", f"must be a split name, a fraction in (0, 1) or a row count, got {dev!r}")
        else:
            pool, _ = hold_out(train, dev, seed, "none would be left for shots")
    if set(SHOTS) & set(approaches) and shots > len(pool) - 1:
        raise ConfigError("shots", f"is {shots} but only {len(pool)} training rows are there to draw them from")


def warm_up(model: str, approaches) -> str:
    """Load the session's base model before the first measurement, so each row starts alike; the device."""
    from ..models import load_model, pick_device

    if set(approaches) - {"qlora"}:  # every other approach scores on the full-precision base
        load_model(model)
    return pick_device()


def _report(task: Task, approaches, splits, rows, predictions, errors, seconds, facts, meter) -> VersusReport:
    import pandas as pd

    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "approach"
    test_rows = len(splits["test"]) if task.limit is None else min(task.limit, len(splits["test"]))
    info = {
        "data": task.data if isinstance(task.data, str) else f"<{type(task.data).__name__}>", "split": "test",
        "rows": test_rows, "metrics": ["accuracy", "f1"], "errors": errors, "seconds": seconds,
        "labels": {a: task.prompt.choices for a in rows}, "scoring": "label log-likelihood (sum)",
        "prompt": task.prompt.name, "model": task.model, "approaches": list(approaches), "shots": task.shots,
        "epochs": task.epochs, "max_steps": task.max_steps, "limit": task.limit, "seed": task.seed,
        "train_rows": len(splits["train"]),
        "prompts": {a: f["prompt"] for a, f in facts.items() if "prompt" in f},
        "runs": {a: f["run"] for a, f in facts.items() if "run" in f},
        "memory": MEMORY if meter.resettable else "not measured: the peak-memory mark cannot be reset here",
        "baseline_memory_mb": meter.baseline,
    }
    if "search" in facts.get("searched", {}):
        info["search"] = facts["searched"]["search"]
    report = VersusReport(table, predictions, info)
    if os.environ.get("NBKIT_JOB_DIR"):  # where a job collects its reports, beside each approach's own
        report.save(os.path.join(os.environ["NBKIT_JOB_DIR"], "reports"))
    return report
