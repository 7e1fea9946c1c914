"""``nbkit.tune``: one short dispatcher over one recipe per model family.

``tune`` splits its keyword arguments into the run's settings (the fields of
:class:`nbkit.config.TuneConfig`) and the method's options, and hands them to the recipe of
the task and the model's family: :mod:`~nbkit.training.decoder` (causal LMs, on HF
``Trainer``), :mod:`~nbkit.training.encoder` (embeddings, a classification head) and
:mod:`~nbkit.training.seq2seq` (T5, BART), the last two on one plain loop
(:mod:`~nbkit.training.loop`). Every recipe goes through the methods registry, writes the
same run-config schema and fails with the same exceptions.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

from .. import events
from ..config import DEFAULT_MODEL, TASKS, TuneConfig, default, default_method
from ..errors import ConfigError
from ..models import family_of
from ..objectives import get_objective, objective_fields
from ..prompts import Prompt
from ..runs import Run, Runs, safe_name
from .callbacks import Terminated
from .decoder import tune_decoder
from .encoder import tune_classifier, tune_embedding
from .seq2seq import tune_seq2seq

__all__ = ["Terminated", "TuneConfig", "tune"]

# the settings every run records; the rest of tune's keyword arguments are the method's options
SETTINGS = {f.name for f in dataclasses.fields(TuneConfig)} - {"prompt", "data", "task", "architecture", "labels",
                                                              "options", "objective_options"}


def tune(
    prompt: Prompt | str | Sequence[Prompt | str] | None,
    data: Any,
    *,
    task: str = "generation",
    resume: bool = False,
    overwrite: bool = False,
    export: str | os.PathLike | None = None,
    namespace: Mapping[str, Any] | None = None,
    callbacks: Sequence[events.Callback] | None = None,
    seeds: Sequence[int] | None = None,
    **settings,
) -> Run:
    """Fine-tune ``model`` on ``data`` formatted by ``prompt``; the loss covers the target only.

    With ``task="classification"`` or ``task="embedding"`` an encoder is tuned instead (see
    :mod:`nbkit.training.encoder`): a classification head on the prompt's ``choices``, or
    contrastive tuning on (query, positive[, negative]) pairs (no prompt needed). A T5/BART
    model is tuned text-to-text (:mod:`nbkit.training.seq2seq`).

    Args:
        prompt: a :class:`Prompt` or the name of a registered one; a list of them trains one
            adapter on several tasks at once (multi-task), paired in order with ``data``.
        data: a data spec (see :func:`nbkit.load_data`); its ``train`` split is used. For
            multi-task training a list of specs, one per prompt (a single spec or a single
            prompt is used for every task). A list of dicts is one data set, not several.
        model, method, objective, epochs, max_steps, lr, batch_size, grad_accum, max_length, warmup, seed,
        precision, gradient_checkpointing, dev, eval_every, patience, save_every, weights,
        pooling, corpus, scale: the run's settings; each is declared once, with its default and
            meaning, on :class:`nbkit.config.TuneConfig` (``%tune?`` shows the same texts). ``dev``
            picks the best checkpoint by its metric; ``weights`` weighs each task's tokens in a
            multi-task loss, and each task's own loss is logged (``loss_<task>``).
        name: run name (a folder under ``runs/``); default ``<prompt>-<method>``, numbered if taken.
        resume: continue the run ``name`` from its last checkpoint.
        overwrite: replace an existing run directory of the same name.
        export: write the validated configuration as a job file (``.yaml``) instead of training, for
            ``nbkit tune --config FILE`` (also under torchrun / accelerate launch); returns its path.
            Data held in notebook variables is written beside it.
        namespace: where data given as a variable name is looked up.
        callbacks: progress subscribers; default prints a few plain lines.
        seeds: train one run per seed, named ``<name>-s<seed>`` (the adapter's initialisation, the
            data order and any dropout masks differ; nothing else), and return them as :class:`nbkit.runs.Runs`;
            ``nbkit.evaluate(run=runs)`` scores each, ``report.seeds()`` gives their mean and spread.
        task: ``generation`` (the default: a decoder learns the target text), ``classification``
            (an encoder with a head) or ``embedding`` (an encoder, contrastive).
        **options: the method's (``r``, ``alpha``, ``dropout``, …; ``%nbkit methods``) and the objective's
            (``beta``, ``reward``, ``reward_fn``: a function or its name, …; ``%nbkit objectives``).

    Returns:
        The :class:`Run`, completed (the job file's path with ``export``).

    Under ``torchrun`` / ``accelerate launch`` every process calls this (data-parallel, ``batch_size``
    split between them); only the first writes the run directory.

    Raises:
        ConfigError, UnknownNameError, TemplateError, DataError: before any model loads.
        TrainingInterrupted, TrainingFailed: the run is marked so and kept.
    """
    if task not in TASKS:
        raise ConfigError("task", f"must be one of {', '.join(TASKS)}, got {task!r}")
    if seeds is not None:
        return _tune_seeds(prompt, data, seeds, settings, task=task, resume=resume, overwrite=overwrite,
                           export=export, namespace=namespace, callbacks=callbacks)
    options = split_options(settings)
    if settings.get("weights") is not None:
        settings["weights"] = list(settings["weights"])
    callbacks = list(callbacks) if callbacks is not None else [events.PlainProgress()]
    common = {"overwrite": overwrite, "namespace": namespace, "callbacks": callbacks}
    family = family_of(settings.get("model") or DEFAULT_MODEL) if task == "generation" else "encoder"
    if task == "generation" and prompt is None:
        raise ConfigError("prompt", "is needed: which prompt formats the data? (only --task embedding goes without)")
    check_objective(settings, family, task)
    if family == "decoder":
        return tune_decoder(prompt, data, settings, options, resume=resume, export=export, **common)
    what = f"with task={task!r} (encoder tuning)" if family == "encoder" else "for encoder-decoder models"
    for name, given in (("resume", resume), ("export", export is not None)):
        if given:
            raise ConfigError(name, f"is not supported {what}")
    recipe = {"classification": tune_classifier, "embedding": tune_embedding}.get(task, tune_seq2seq)
    return recipe(prompt, data, settings, options, **common)


def check_objective(settings: dict, family: str, task: str) -> None:
    """An unknown objective, a bad option of it, or one that does not fit the model fails before anything loads."""
    objective = get_objective(settings.get("objective") or "sft")
    objective.make_options(settings["objective_options"])
    if objective.name != "sft" and family != "decoder":
        raise ConfigError("objective", f"{objective.name!r} tunes a decoder (a causal LM); "
                          f"{'this task' if task != 'generation' else 'this model'} trains with sft only")


def split_options(settings: dict) -> dict:
    """The method's options, taken out of ``settings``; an objective's (beta, reward, …) go to
    ``settings["objective_options"]``."""
    options = {k: settings.pop(k) for k in list(settings) if k not in SETTINGS}
    settings["objective_options"] = {k: options.pop(k) for k in list(options) if k in objective_fields()}
    return options


def _tune_seeds(prompt, data, seeds, settings: dict, **common) -> Runs:
    """One run per seed, ``NAME-s<seed>``; every name is checked free before the first trains."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not seeds \
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        raise ConfigError("seeds", f"must be distinct non-negative integers, like [0, 1, 2]; got {seeds!r}")
    if common["export"] is not None:
        raise ConfigError("seeds", "a job file holds one run: export without seeds, then run it once per seed "
                          "with nbkit tune --config FILE --set seed=N --name NAME-sN")
    if settings.get("seed", default("seed")) != default("seed"):
        raise ConfigError("seeds", "give either seed (one run) or seeds (one run per seed), not both")
    settings = {k: v for k, v in settings.items() if k != "seed"}
    base = settings.pop("name", None) or _default_name(prompt, settings.get("method"), common["task"])
    for s in seeds:
        Run.check_create(f"{base}-s{s}", overwrite=common["overwrite"], resume=common["resume"])
    return Runs(tune(prompt, data, seed=s, name=f"{base}-s{s}", **common, **settings) for s in seeds)


def _default_name(prompt, method: str | None, task: str) -> str:
    """``<prompt>-<method>`` as a run names itself, without the numbering (a seed suffix follows)."""
    from ..session import get_prompt

    prompts = prompt if isinstance(prompt, (list, tuple)) else [prompt] if prompt is not None else []
    names = [get_prompt(p).name for p in prompts] or [task]
    return safe_name(f"{'+'.join(names)}-{method or default_method(task)}")
