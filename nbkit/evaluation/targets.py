"""What an evaluation scores: the targets (prompts and runs), their data, their metrics."""

from __future__ import annotations

from typing import Any, Mapping

from ..config import DEFAULT_MODEL
from ..data import load_data
from ..errors import ConfigError, NbkitError
from ..metrics import CLASSIFICATION, DEFAULTS, GENERATION, PREFERENCE, kind_of
from ..prompts import Prompt
from ..predict import Target
from ..runs import Run
from ..session import get_prompt, get_run


def as_list(value) -> list:
    """``None`` → ``[]``, a list or tuple as a list, anything else as a list of one."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def run_task(run: Run, data=None) -> dict:
    """The task of ``run`` to evaluate on ``data``: its only one, or the one trained on that data spec."""
    tasks = run.tasks
    if len(tasks) == 1:
        return tasks[0]
    matching = [t for t in tasks if data is not None and t["data"] == data]
    if len(matching) == 1:
        return matching[0]
    trained = "; ".join(f"{t['name']} on {t['data']}" for t in tasks)
    what = "give --data" if data is None else f"{data!r} is none of them; give one of their data specs"
    raise ConfigError("data", f"picks the task of multi-task run {run.name!r} to evaluate ({trained}): {what}")


def run_target(run: Run, model: str | None, data=None) -> Target:
    """The target of a finished run: its own prompt (of the task trained on ``data``) and adapter."""
    if not run.has_adapter():
        raise NbkitError(f"run {run.name!r} has no adapter (status: {run.status}); it did not finish training")
    config = run.config
    if run.task == "embedding":
        raise ConfigError("run", f"{run.name!r} tuned an encoder for embeddings; evaluate it with "
                          "--task retrieval (nbkit.evaluate(run=..., task='retrieval'))")
    if run.task == "classification":  # an encoder with a head: its own model, no adapter to swap
        return Target.of_run(run, Prompt.from_dict(run.prompt))
    if model and model != config.get("model"):
        raise ConfigError("model", f"is {model!r} but run {run.name!r} was trained on {config.get('model')!r}; "
                          "an adapter only fits the base model it was trained with")
    return Target.of_run(run, Prompt.from_dict(run_task(run, data)["prompt"]))


def targets(prompts, runs, model, namespace, data=None) -> list[Target]:
    """Every prompt (on ``model``) and every run, as targets; at least one."""
    found = [Target(p.name, p, None, model or DEFAULT_MODEL) for p in map(get_prompt, as_list(prompts))]
    named = []  # a variable holding several runs (tune(seeds=...)'s Runs) stands for each of them
    for r in as_list(runs):
        held = (namespace or {}).get(r) if isinstance(r, str) else None
        named += list(held) if isinstance(held, list) else [r]
    found += [run_target(get_run(r, namespace), model, data) for r in named]
    if not found:
        raise ConfigError("prompt", "nothing to evaluate: give at least one --prompt or --run")
    return found


def metrics_for(prompt: Prompt, metric, columns=()) -> list[str]:
    """The metrics asked for (default: the prompt kind's, or the preference metrics on data with chosen and
    rejected completions), each checked to fit the prompt."""
    kind = kind_of(prompt.choices, columns)
    allowed = {"classification": CLASSIFICATION, "preference": PREFERENCE + GENERATION}.get(kind, GENERATION)
    # --metric exact_match,token_f1 and --metric exact_match --metric token_f1 say the same
    chosen = [m.strip() for item in as_list(metric) for m in str(item).split(",") if m.strip()] or list(DEFAULTS[kind])
    for m in chosen:
        if m not in allowed:
            what = "a classification prompt (with choices)" if prompt.choices else "a free-text prompt"
            raise ConfigError("metric", f"{m!r} does not fit {what} {prompt.name!r}; use one of: {', '.join(allowed)}")
    return chosen


def rows_of(data: Any, split: str, limit: int | None, namespace: Mapping[str, Any] | None):
    """(the split's rows, up to ``limit``; the train rows the shots come from; the split's columns)."""
    splits = load_data(data, namespace)
    if split not in splits:
        raise ConfigError("split", f"{split!r} is not in the data; splits: {', '.join(splits)}")
    return list(splits[split])[:limit], list(splits["train"]), splits[split].column_names


def prepared(found: list[Target], columns, metric) -> list[tuple[Target, Prompt, list[str]]]:
    """Each target with its prompt resolved for the data and its metrics: every target checked before
    any scoring starts."""
    out = []
    for t in found:
        p = t.prompt.resolve_target(columns)
        p.check(columns)
        names = metrics_for(p, metric, columns)
        if set(names) & set(PREFERENCE) and t.family != "decoder":
            raise ConfigError("metric", "preference metrics compare a decoder's log-probabilities of the chosen and "
                              f"rejected completions; {t.label!r} is not a decoder")
        if "perplexity" in names and t.family == "seq2seq":
            raise ConfigError("metric", "perplexity is for decoders; an encoder-decoder is scored on its generations")
        if "perplexity" in names and t.family == "api":
            raise ConfigError("metric", "perplexity needs the model's token probabilities of the expected text; "
                              "API models are scored on their answers")
        out.append((t, p, names))
    return out
