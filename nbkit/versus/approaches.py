"""The approaches of a prompt-vs-fine-tune comparison, each run on one :class:`Task`.

A runner takes the task and the approach's name and returns ``(report, costs, facts)``: the
evaluation :class:`nbkit.results.Report` on the test rows, the costs of its row (trainable
parameters, training and search seconds) and what the comparison's info records (the prompt
scored, the run trained, the search's outcome).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .. import events
from ..errors import TrainingInterrupted
from ..prompts import Prompt
from ..results import Report

APPROACHES = ("zero-shot", "few-shot", "searched", "prompt-tuning", "lora", "qlora")
TUNED = ("prompt-tuning", "lora", "qlora")  # each is the tune method of the same name
SHOTS = ("few-shot", "searched")  # the approaches that show examples in the prompt


@dataclass
class Task:
    """What every approach shares."""

    prompt: Prompt  # resolved, without shots: the zero-shot prompt, and what the tuned runs train on
    data: Any
    model: str
    shots: int
    epochs: float
    max_steps: int | None
    limit: int | None
    dev: float | int | str
    seed: int
    namespace: Mapping[str, Any] | None
    callbacks: Sequence[events.Callback]


class Failed(Exception):
    """An evaluation that recorded its target's error instead of raising it."""


def stops_everything(error: Exception) -> bool:
    """A Ctrl-C or a SIGTERM while training stops the comparison, not just the approach."""
    nbkit = __package__.rpartition(".")[0]  # this package's parent: nbkit
    training = sys.modules.get(f"{nbkit}.training")  # no tune ran if it was never imported
    terminated = training is not None and isinstance(error.__cause__, training.Terminated)
    return terminated or isinstance(error, TrainingInterrupted)


def _scored(report) -> Report:
    if report.info.get("errors") and report.frame.empty:
        raise Failed(next(iter(report.info["errors"].values())))
    return report


def _evaluate(task: Task, prompt: Prompt | None = None, run=None) -> Report:
    from ..evaluation import evaluate

    if run is not None:
        return _scored(evaluate(run=run, data=task.data, limit=task.limit, namespace=task.namespace))
    return _scored(evaluate(prompt, data=task.data, model=task.model, limit=task.limit, namespace=task.namespace))


def _prompted(search_seconds: float = 0.0) -> dict:
    """The costs of a prompt: no weights trained."""
    return {"trainable_parameters": 0, "train_seconds": 0.0, "search_seconds": search_seconds}


def _zero_shot(task: Task, approach: str):
    return _evaluate(task, task.prompt), _prompted(), {"prompt": task.prompt.name}


def _few_shot(task: Task, approach: str):
    p = Prompt.from_dict({**task.prompt.to_dict(), "name": f"{task.prompt.name}-{task.shots}-shot",
                          "shots": task.shots, "selection": "balanced"})
    return _evaluate(task, p), _prompted(), {"prompt": p.name}


def _searched(task: Task, approach: str):
    from ..search import search_prompts

    # paraphrases are left out: each costs generations and doubles the candidates
    search = search_prompts(task.prompt, task.data, shots=[0, task.shots], selection=["random", "balanced", "nearest"],
                            dev=task.dev, model=task.model, seed=task.seed, name=f"{task.prompt.name}-searched",
                            strategy="grid", namespace=task.namespace)
    best = search.frame.iloc[0]
    found = {"candidates": len(search.frame), "dev_rows": search.info["rows"], "registered": search.best.name,
             "best": f"{best['shots']} shots" + (f", {best['selection']}" if best["shots"] else "")
             + {True: ", chat template", False: ", plain text", None: ""}[search.best.chat]}
    report = _evaluate(task, search.best)
    return report, _prompted(search.info["seconds"]["search"]), {"prompt": search.best.name, "search": found}


def _tuned(task: Task, approach: str):
    from .. import training  # tune looked up at call time, through the module

    # no name: tune picks <prompt>-<method>, numbered when taken, so earlier runs are never replaced
    run = training.tune(task.prompt, task.data, model=task.model, method=approach, epochs=task.epochs,
                        max_steps=task.max_steps, seed=task.seed, namespace=task.namespace, callbacks=task.callbacks)
    metrics = run.metrics
    row = {"trainable_parameters": int(metrics["trainable_parameters"]),
           "train_seconds": float(metrics["train_seconds"]), "search_seconds": 0.0}
    return _evaluate(task, run=run), row, {"run": run.name}


SEEDED = ("searched", *TUNED)  # the approaches a seed changes: the search's dev split, a run's training

STEPS = {"zero-shot": _zero_shot, "few-shot": _few_shot, "searched": _searched,
         **{method: _tuned for method in TUNED}}
