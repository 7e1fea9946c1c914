"""The tasks a run trains on: each prompt with its data, the rows held out, the token ids.

One single-task run has one task; a multi-task run pairs several prompts with their data
sets in order. What is written into the run directory about them (``config.json``,
``prompt.json``, ``data.json``, ``tasks.json``) is written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import TuneConfig
from ..data import fingerprint, hold_out, load_data
from ..encoding import training_example
from ..errors import ConfigError
from ..prompts import Prompt
from ..runs import Run, write_json


@dataclass
class Task:
    """One prompt on one data set, with the rows it trains and is evaluated on."""

    name: str
    prompt: Prompt | None
    spec: str
    weight: float
    splits: Any
    train: list
    dev: list


def load_task(name: str, prompt: Prompt | None, data, spec: str, weight: float, cfg: TuneConfig, namespace) -> Task:
    """Load ``data``, hold out the dev rows and check that ``prompt`` fits its columns."""
    splits = load_data(data, namespace)
    train, dev_rows = split_dev(splits, cfg)
    if prompt is not None:
        prompt = prompt.resolve_target(train[0].keys() if train else splits["train"].column_names)
        prompt.check(splits["train"].column_names)
    return Task(name, prompt, spec, float(weight), splits, train, dev_rows)


def split_dev(splits, cfg: TuneConfig) -> tuple[list[dict], list[dict]]:
    """The rows to train on and the rows to evaluate on during training."""
    rows = list(splits["train"])
    if cfg.dev is None:
        return rows, []
    if isinstance(cfg.dev, str):
        if cfg.dev not in splits:
            raise ConfigError("dev", f"{cfg.dev!r} is not a split of the data; splits: {', '.join(splits)}, "
                              "or give a fraction of train like 0.1")
        return rows, list(splits[cfg.dev])
    return hold_out(rows, cfg.dev, cfg.seed, "nothing would be left to train on")


def examples(prompt: Prompt, rows, tokenizer, cfg: TuneConfig, pool=None) -> tuple[list[dict], int]:
    """Token ids of each row (loss on the completion only) and how many were cut to ``max_length``."""
    out, truncated = [], 0
    pool = rows if pool is None else pool
    for row, shots in zip(rows, prompt.shots_for(rows, pool, seed=cfg.seed, exclude_self=True)):
        example, cut = training_example(prompt, row, tokenizer, cfg.max_length, shots)
        out.append(example)
        truncated += cut
    return out, truncated


def describe(task: Task) -> dict:
    """What ``data.json`` says of a task's data: spec, row counts, the train split's fingerprint."""
    return {"spec": task.spec, "rows": {k: len(v) for k, v in task.splits.items()},
            "train_fingerprint": fingerprint(task.splits["train"]), "columns": task.splits["train"].column_names}


def write_inputs(run: Run, cfg: TuneConfig, tasks: list[Task], resume: bool = False, **data_facts) -> None:
    """``config.json``, ``prompt.json``, ``data.json`` (and ``tasks.json``) of a new run; on resume, the
    check that the settings are the ones it started with."""
    if resume:
        saved = run.config
        # a setting the saved run lacks came after it was trained (an older nbkit): it cannot differ
        changed = sorted(k for k, v in cfg.to_dict().items() if k in saved and saved[k] != v and k != "name")
        if changed:
            raise ConfigError(changed[0], f"differs from the run being resumed ({saved.get(changed[0])!r}); "
                              "resume with the same settings or start a new run")
        return
    write_json(run.path / "config.json", cfg.to_dict())
    if tasks[0].prompt is not None:
        write_json(run.path / "prompt.json", tasks[0].prompt.to_dict())
    write_json(run.path / "data.json", {**describe(tasks[0]), **data_facts})
    if len(tasks) > 1:
        write_json(run.path / "tasks.json", [
            {"name": t.name, "prompt": t.prompt.to_dict(), "data": t.spec, "weight": t.weight, **describe(t)}
            for t in tasks
        ])
    run.set_status("created")
