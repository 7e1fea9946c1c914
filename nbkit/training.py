"""``nbkit.tune``: prompt + data + method → a run directory with a trained adapter.

The path reads top to bottom: validate everything, resolve the prompt and the
data, create the run directory, load a fresh base model, wrap it with the
method, train with ``transformers.Trainer``, save the adapter atomically.
Progress leaves through :mod:`nbkit.events`; nothing here draws.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from . import distributed, events
from .data import fingerprint, hold_out, load_data
from .encoding import training_example
from .errors import ConfigError, TrainingFailed, TrainingInterrupted
from .methods import BuildContext, get_method
from .models import DEFAULT_MODEL, _quiet, autocast_precision, load_model, quantization_config
from .prompts import Prompt, get_prompt
from .runs import RUNS, Run, runs_dir, write_json


@dataclass
class TuneConfig:
    """Everything that decides what a tune does; saved as ``config.json``."""

    prompt: str | list = field(metadata={"help": "name of the prompt to train on; a list for multi-task training"})
    data: str | list = field(metadata={"help": "data spec whose train split is used; a list, one per prompt"})
    model: str = field(default=DEFAULT_MODEL, metadata={"help": "base model spec"})
    method: str = field(default="lora", metadata={"help": "tuning method (see nbkit.methods)"})
    epochs: float = field(default=3, metadata={"help": "passes over the training split; 3 fits ~200 examples"})
    max_steps: int | None = field(default=None, metadata={"help": "stop after this many steps (overrides epochs)"})
    lr: float | None = field(default=None, metadata={"help": "learning rate; None takes the method's default"})
    batch_size: int = field(default=8, metadata={"help": "examples per step; 8 keeps CPU steps around a second"})
    grad_accum: int = field(default=1, metadata={"help": "steps to accumulate before an update"})
    max_length: int = field(default=256, metadata={"help": "tokens per example; longer ones are cut and counted"})
    warmup: float = field(default=0.1, metadata={"help": "fraction of steps with a linear warm-up"})
    seed: int = field(default=0, metadata={"help": "seed of the adapter init and the data order"})
    precision: str = field(
        default="auto", metadata={"help": "autocast: auto (bf16 on GPUs that have it, else fp32), bf16, fp16 or fp32"}
    )
    gradient_checkpointing: bool = field(
        default=False, metadata={"help": "recompute activations in the backward pass: less memory, ~30% slower"}
    )
    dev: float | int | str | None = field(
        default=None, metadata={"help": "held-out data evaluated during training: a fraction or count of the "
                                        "train split, or a split name; picks the best checkpoint"}
    )
    eval_every: int | None = field(default=None, metadata={"help": "steps between evaluations; default 5 per run"})
    patience: int | None = field(
        default=None, metadata={"help": "stop after this many evaluations without improvement (needs dev)"}
    )
    save_every: int | None = field(
        default=None, metadata={"help": "steps between checkpoints for --resume; default four per run (with "
                                        "--dev: at every evaluation)"}
    )
    weights: list | None = field(
        default=None, metadata={"help": "multi-task: each task's weight in the loss (default all 1)"}
    )
    name: str | None = field(default=None, metadata={"help": "run name; default <prompt>-<method>"})
    options: dict = field(default_factory=dict, metadata={"help": "method options (r, alpha, dropout, …)"})

    def __post_init__(self):
        def positive(name, value, kind=(int, float)):
            if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
                raise ConfigError(name, f"must be a positive number, got {value!r}")

        if self.lr is not None:
            positive("lr", self.lr)
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float)) or self.epochs < 0:
            raise ConfigError("epochs", f"must be >= 0, got {self.epochs!r}")
        if self.max_steps is not None:
            positive("max_steps", self.max_steps, int)
        elif self.epochs == 0:
            raise ConfigError("epochs", "is 0 and no max_steps is set: nothing would be trained")
        positive("batch_size", self.batch_size, int)
        positive("grad_accum", self.grad_accum, int)
        positive("max_length", self.max_length, int)
        if not 0 <= self.warmup < 1:
            raise ConfigError("warmup", f"must be a fraction in [0, 1), got {self.warmup!r}")
        if self.precision not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError("precision", f"must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError("gradient_checkpointing", f"must be true or false, got {self.gradient_checkpointing!r}")
        if self.dev is not None:
            if isinstance(self.dev, bool) or (isinstance(self.dev, (int, float)) and not self.dev > 0):
                raise ConfigError("dev", f"must be a fraction in (0, 1), a row count or a split name, got {self.dev!r}")
            if isinstance(self.dev, float) and self.dev >= 1 and not self.dev.is_integer():
                raise ConfigError("dev", f"must be a fraction in (0, 1) or a whole row count, got {self.dev!r}")
            if isinstance(self.dev, str) and (not self.dev or self.dev == "train"):
                raise ConfigError("dev", "must not be the train split: evaluate on data the run does not train on")
        if self.eval_every is not None:
            positive("eval_every", self.eval_every, int)
        if self.save_every is not None:
            positive("save_every", self.save_every, int)
            if self.dev is not None:
                raise ConfigError("save_every", "does not go with --dev: checkpoints are saved at every evaluation "
                                  "then (the best one is kept); set --eval-every instead")
        if self.patience is not None:
            positive("patience", self.patience, int)
            if self.dev is None:
                raise ConfigError("patience", "needs --dev: early stopping watches a held-out metric")
        self._check_tasks()
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError("name", f"must be a plain folder name, got {self.name!r}")

    def _check_tasks(self) -> None:
        prompts = self.prompt if isinstance(self.prompt, list) else [self.prompt]
        datas = self.data if isinstance(self.data, list) else [self.data]
        if not prompts or len(prompts) != len(datas):
            raise ConfigError("data", f"gives {len(datas)} data set(s) for {len(prompts)} prompt(s); multi-task "
                              "training pairs them in order (one of either is used for all)")
        if self.weights is None:
            return
        if not isinstance(self.weights, list) or len(self.weights) != len(prompts):
            raise ConfigError("weights", f"needs one weight per task ({len(prompts)}), got {self.weights!r}")
        for w in self.weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0 or not math.isfinite(w):
                raise ConfigError("weights", f"must be positive numbers, got {self.weights!r}")

    @property
    def tasks(self) -> list[tuple[str, str, float]]:
        """(prompt, data spec, weight) of each task; one for a single-task run."""
        prompts = self.prompt if isinstance(self.prompt, list) else [self.prompt]
        datas = self.data if isinstance(self.data, list) else [self.data]
        return list(zip(prompts, datas, self.weights or [1.0] * len(prompts)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> "TuneConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"is not a tune setting; settings: {', '.join(sorted(known))}")
        return cls(**dict(data))


def tune(
    prompt: Prompt | str | Sequence[Prompt | str],
    data: Any,
    *,
    model: str | None = None,
    method: str = "lora",
    epochs: float = 3,
    max_steps: int | None = None,
    lr: float | None = None,
    batch_size: int = 8,
    grad_accum: int = 1,
    max_length: int = 256,
    warmup: float = 0.1,
    seed: int = 0,
    precision: str = "auto",
    gradient_checkpointing: bool = False,
    dev: float | int | str | None = None,
    eval_every: int | None = None,
    patience: int | None = None,
    save_every: int | None = None,
    weights: Sequence[float] | None = None,
    name: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    export: str | os.PathLike | None = None,
    namespace: Mapping[str, Any] | None = None,
    callbacks: Sequence[events.Callback] | None = None,
    task: str = "generation",
    **options,
) -> Run:
    """Fine-tune ``model`` on ``data`` formatted by ``prompt``; the loss covers the target only.

    With ``task="classification"`` or ``task="embedding"`` an encoder is tuned instead (see
    :mod:`nbkit.encoders`): a classification head on the prompt's ``choices``, or contrastive
    tuning on (query, positive[, negative]) pairs (no prompt needed).

    Args:
        prompt: a :class:`Prompt` or the name of a registered one; a list of them trains one
            adapter on several tasks at once (multi-task), paired in order with ``data``.
        data: a data spec (see :func:`nbkit.load_data`); its ``train`` split is used. For
            multi-task training a list of specs, one per prompt (a single spec or a single
            prompt is used for every task). A list of dicts is one data set, not several.
        model: base model spec (default ``smollm2-135m``; ``minilm-l6`` for the encoder tasks).
        method: ``lora``, ``qlora``, ``dora``, ``ia3``, ``prompt-tuning``, ``p-tuning``, ``prefix-tuning``
            or ``full`` (see ``nbkit.methods.available_methods()``).
        epochs, max_steps, lr, batch_size, grad_accum, max_length, warmup, seed: training settings.
        precision: ``auto`` (bf16 autocast on GPUs that have it, fp32 on CPU), ``bf16``, ``fp16``, ``fp32``.
        gradient_checkpointing: trade compute for activation memory.
        dev: held-out data scored during training (fraction or count of the train split, or a split
            name); the best checkpoint by its metric becomes the run's adapter.
        eval_every: steps between those evaluations (default: five per run).
        patience: stop after this many evaluations without improvement.
        save_every: steps between checkpoints (default: four per run; with ``dev``, every evaluation).
        weights: multi-task: each task's weight in the loss, ``sum_t w_t * (token losses of t)``
            over ``sum_t w_t * (tokens of t)`` per batch; all 1 (the default) is plain fine-tuning
            on the mixed data. Each task's own loss is logged (``Run.history``, ``loss_<task>``).
        name: run name (a folder under ``runs/``); default ``<prompt>-<method>``, numbered if taken.
        resume: continue the run ``name`` from its last checkpoint.
        overwrite: replace an existing run directory of the same name.
        export: write the validated configuration as a job file (``.yaml``) instead of training, for
            ``nbkit tune --config FILE`` (also under torchrun / accelerate launch); returns its path.
            Data held in notebook variables is written beside it.
        namespace: where data given as a variable name is looked up.
        callbacks: progress subscribers; default prints a few plain lines.
        task: ``generation`` (the default: a decoder learns the target text), ``classification``
            (an encoder with a head) or ``embedding`` (an encoder, contrastive).
        **options: method options (``r``, ``alpha``, ``dropout``, ``target_modules``, ``virtual_tokens``, …;
            ``%nbkit methods`` lists them).

    Returns:
        The :class:`Run`, completed (the job file's path with ``export``).

    Under ``torchrun`` / ``accelerate launch`` every process calls this; they train data-parallel
    with ``batch_size`` split between them, and only the first writes the run directory.

    Raises:
        ConfigError, UnknownNameError, TemplateError, DataError: before any model loads.
        TrainingInterrupted, TrainingFailed: the run is marked so and kept.
    """
    # encoders and encoder-decoders train in their own loops (nbkit.encoders, nbkit.seq2seq), without these
    unsupported = {"max_steps": max_steps, "grad_accum": grad_accum != 1, "dev": dev, "eval_every": eval_every,
                   "patience": patience, "save_every": save_every, "resume": resume, "export": export,
                   "weights": weights, "gradient_checkpointing": gradient_checkpointing,
                   "precision": precision != "auto"}
    settings = dict(method=method, epochs=epochs, lr=lr, batch_size=batch_size, max_length=max_length, warmup=warmup,
                    seed=seed, name=name, overwrite=overwrite, namespace=namespace,
                    callbacks=list(callbacks) if callbacks is not None else [events.PlainProgress()])
    if task != "generation":
        return _tune_encoder(task, prompt, data, model=model, options=options, unsupported=unsupported, **settings)
    if prompt is None:
        raise ConfigError("prompt", "is needed: which prompt formats the data? (only --task embedding goes without)")
    model = model or DEFAULT_MODEL
    from .seq2seq import is_seq2seq

    if is_seq2seq(model):  # T5, BART: text-to-text tuning (nbkit.seq2seq)
        return _tune_seq2seq(prompt, data, model=model, options=options, unsupported=unsupported, **settings)
    prompts, datas = _pair_tasks(prompt, data)
    prompts = [get_prompt(p) for p in prompts]
    specs = [d if isinstance(d, str) else f"<{type(d).__name__}>" for d in datas]
    multi = len(prompts) > 1
    cfg = TuneConfig(
        prompt=[p.name for p in prompts] if multi else prompts[0].name, data=specs if multi else specs[0],
        model=model, method=method, epochs=epochs, max_steps=max_steps,
        lr=lr, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, warmup=warmup,
        seed=seed, precision=precision, gradient_checkpointing=gradient_checkpointing, dev=dev,
        eval_every=eval_every, patience=patience, save_every=save_every,
        weights=list(weights) if weights is not None else None, name=name, options=options,
    )
    spec = get_method(cfg.method)
    method_options = spec.make_options(cfg.options)
    cfg.options, cfg.lr = dataclasses.asdict(method_options), cfg.lr or spec.lr
    names = _task_names([p.name for p in prompts])
    tasks = [_load_task(n, p, d, s, w, cfg, namespace)
             for n, p, d, s, (_, _, w) in zip(names, prompts, datas, specs, cfg.tasks)]
    prompt = tasks[0].prompt  # what a soft prompt starts from with --init text
    if resume and not cfg.name:
        raise ConfigError("name", "is needed with --resume: which run should continue?")
    model_config, model_path = _model_config(cfg.model)
    if spec.check is not None:
        spec.check(model_config, method_options)  # an unfit method fails before any weights load
    quantization_config(spec.quantize, "cpu")  # 4-bit without bitsandbytes fails here, not after loading
    if export is not None:
        from .jobfiles import write_job

        return write_job(export, cfg.to_dict(), [t.prompt for t in tasks], datas, namespace)

    world = distributed.world()
    _check_world(world, cfg, sum(len(t.train) for t in tasks))
    device = _process_device(world)
    distributed.start(device)
    cfg.name = cfg.name or _free_name(f"{'+'.join(names)}-{cfg.method}")
    Run.check_create(cfg.name, overwrite=overwrite, resume=resume)  # every process: they fail alike
    distributed.barrier(world)
    if world.main:
        run = Run.create(cfg.name, overwrite=overwrite, resume=resume)
        _write_inputs(run, cfg, tasks, resume)
    distributed.barrier(world)
    run = Run(runs_dir() / cfg.name)
    if callbacks is None:
        callbacks = [events.PlainProgress()]
    emit = events.Emitter(callbacks if world.main else [])  # one process reports

    loaded = load_model(cfg.model, quantize=spec.quantize, device=device, fresh=True)
    examples, truncated, evaluators = [], 0, {}
    for i, task in enumerate(tasks):
        task_examples, cut = _examples(task.prompt, task.train, loaded.tokenizer, cfg)
        for e in task_examples if multi else ():
            e["task"] = i  # the multi-task loss weighs and logs each example by its task
        examples += task_examples
        truncated += cut
        if task.dev:
            dev_examples, _ = _examples(task.prompt, task.dev, loaded.tokenizer, cfg, pool=task.train)
            evaluators[task.name] = DevEvaluator(task.prompt, task.dev, dev_examples, task.train, loaded.tokenizer)

    import warnings

    import transformers

    # peft asks the model for the old name of a transformers 5 property; harmless, and not the user's to fix
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.set_seed(cfg.seed)  # the adapter's initial weights come from this seed
    context = BuildContext(tokenizer=loaded.tokenizer, prompt=prompt, model_path=model_path)
    model = spec.build(loaded.model, method_options, context)
    trainable, total = _count_parameters(model)
    memory = _estimate(model_config, spec, cfg, loaded, trainable, examples)
    dev_eval = (TasksEvaluator(evaluators) if multi else evaluators[names[0]]) if evaluators else None
    task_losses = TaskLosses(names, [t.weight for t in tasks]) if multi else None
    trainer = _trainer(model, loaded, examples, cfg, run, spec, dev_eval, task_losses)
    bridge = _Bridge(emit, run, cfg, examples=len(examples), truncated=truncated, trainable=trainable, total=total,
                     memory=memory, dev_eval=dev_eval, world=world)
    trainer.add_callback(bridge)
    checkpoint = _last_checkpoint(run) if resume else None
    if resume and checkpoint is None:
        emit.on_note(f"run {run.name!r} has no checkpoint yet: it starts from the beginning")

    if world.main:
        run.set_status("running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), error=None)
    try:
        # several processes must stop at the same step: there a Ctrl-C stops at once, checkpoints resume
        with _soft_interrupt(bridge, soft=not world.distributed), _quiet():
            trainer.train(resume_from_checkpoint=checkpoint)
        if bridge.interrupt_requested:
            raise KeyboardInterrupt
        _check_finite(bridge, run)
        if world.main:
            with _quiet():
                run.save_adapter(model, loaded.tokenizer if spec.kind == "full" else None)
            run.drop_checkpoints()  # a completed run has nothing to resume; full-model checkpoints are GBs
    except KeyboardInterrupt:
        _finish(run, emit, bridge, "interrupted")
        raise TrainingInterrupted(run) from None
    except Exception as e:
        message = _explain(e, memory, spec, cfg)
        _finish(run, emit, bridge, "failed", message)
        raise TrainingFailed(run, message) from e
    _finish(run, emit, bridge, "completed")
    RUNS[run.name] = run
    return run


TASKS = ("generation", "classification", "embedding")
ENCODER_OPTIONS = {"classification": ("r", "alpha", "dropout", "target_modules"),
                   "embedding": ("r", "alpha", "dropout", "target_modules", "pooling", "corpus", "scale")}


def _checked(options: dict, unsupported: Mapping, allowed: Sequence[str], what: str) -> dict:
    """The method options of an encoder or encoder-decoder run, refusing settings its loop does not have."""
    given = [k for k, v in unsupported.items() if v]
    if given:
        raise ConfigError(given[0], f"is not supported {what}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(unknown[0], f"is not an option {what}; options: {', '.join(allowed)}")
    if isinstance(options.get("target_modules"), str):
        options["target_modules"] = [m.strip() for m in options["target_modules"].split(",") if m.strip()]
    return options


def _tune_encoder(task, prompt, data, *, model, options, unsupported, **settings) -> Run:
    """``task="classification"`` / ``"embedding"``: tune an encoder (:mod:`nbkit.encoders`)."""
    from . import encoders
    from .embeddings import DEFAULT_ENCODER

    if task not in TASKS:
        raise ConfigError("task", f"must be one of {', '.join(TASKS)}, got {task!r}")
    options = _checked(options, unsupported, ENCODER_OPTIONS[task], f"with task={task!r} (encoder tuning)")
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, str) for d in data):
        raise ConfigError("data", f"task={task!r} trains on one data set, not several")
    model = model or DEFAULT_ENCODER
    if task == "embedding":
        if prompt is not None:
            raise ConfigError("prompt", "is not used by task='embedding': it trains on (query, positive) pairs")
        return encoders.tune_embedding(data, model=model, **settings, **options)
    if prompt is None:
        raise ConfigError("prompt", "is needed with task='classification': its choices are the labels")
    if isinstance(prompt, (list, tuple)):
        raise ConfigError("prompt", "task='classification' trains one head on one prompt")
    return encoders.tune_classifier(prompt, data, model=model, **settings, **options)


def _tune_seq2seq(prompt, data, *, options, unsupported, **settings) -> Run:
    from .seq2seq import tune_seq2seq

    options = _checked(options, unsupported, ("r", "alpha", "dropout", "target_modules"),
                       "for encoder-decoder models")
    if isinstance(prompt, (list, tuple)):
        raise ConfigError("prompt", "multi-task training is for decoders; give one prompt")
    return tune_seq2seq(prompt, data, **settings, **options)


@dataclass
class _Task:
    """One prompt on one data set, with the rows it trains and is evaluated on."""

    name: str
    prompt: Prompt
    spec: str
    weight: float
    splits: Any
    train: list
    dev: list


def _process_device(world: "distributed.World") -> str:
    """This process's device: under a multi-GPU launch, the GPU of its local rank."""
    from .models import pick_device

    device = pick_device()
    if device == "cuda" and world.distributed:
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def _check_world(world: "distributed.World", cfg: TuneConfig, rows: int) -> None:
    """Settings a multi-process run cannot take, said before any model loads."""
    if not world.distributed:
        return
    if rows < world.size:
        raise ConfigError("data", f"has {rows} training rows for {world.size} processes; use fewer processes")
    if cfg.batch_size % world.size:
        raise ConfigError("batch_size", f"{cfg.batch_size} does not split over {world.size} processes: each takes "
                          f"an equal share of every batch; use a multiple of {world.size}")


def _pair_tasks(prompt, data) -> tuple[list, list]:
    """Prompts and data sets paired in order; one of either serves every task."""
    prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
    many = isinstance(data, (list, tuple)) and data and not any(isinstance(d, Mapping) for d in data)
    datas = list(data) if many else [data]  # a list of dicts is one data set
    if len(prompts) == 1 and len(datas) > 1:
        prompts = prompts * len(datas)
    elif len(datas) == 1 and len(prompts) > 1:
        datas = datas * len(prompts)
    if not prompts:
        raise ConfigError("prompt", "is empty: give at least one prompt to train on")
    if len(prompts) != len(datas):
        raise ConfigError("data", f"gives {len(datas)} data sets for {len(prompts)} prompts; multi-task training "
                          "pairs each prompt with the data set in the same place")
    return prompts, datas


def _task_names(prompts: list[str]) -> list[str]:
    """Each task is called by its prompt; a prompt used on several data sets is numbered."""
    if len(set(prompts)) == len(prompts):
        return list(prompts)
    return [f"{p}-{i + 1}" if prompts.count(p) > 1 else p for i, p in enumerate(prompts)]


def _load_task(name: str, prompt: Prompt, data, spec: str, weight: float, cfg: TuneConfig, namespace) -> _Task:
    splits = load_data(data, namespace)
    train, dev_rows = _split_dev(splits, cfg)
    prompt = prompt.resolve_target(train[0].keys() if train else splits["train"].column_names)
    prompt.check(splits["train"].column_names)
    return _Task(name, prompt, spec, float(weight), splits, train, dev_rows)


def _split_dev(splits, cfg: TuneConfig) -> tuple[list[dict], list[dict]]:
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


def _model_config(spec: str):
    """The model's configuration and where it lives, without loading weights."""
    from transformers import AutoConfig

    from .errors import NbkitError
    from .models import resolve

    _, source = resolve(spec)
    try:
        return AutoConfig.from_pretrained(source), source
    except OSError as e:
        raise NbkitError(f"could not load model {spec!r}: {e}") from None


def _examples(prompt: Prompt, rows, tokenizer, cfg: TuneConfig, pool=None):
    examples, truncated = [], 0
    pool = rows if pool is None else pool
    for row, shots in zip(rows, prompt.shots_for(rows, pool, seed=cfg.seed, exclude_self=True)):
        example, cut = training_example(prompt, row, tokenizer, cfg.max_length, shots)
        examples.append(example)
        truncated += cut
    return examples, truncated


def _estimate(model_config, spec, cfg: TuneConfig, loaded, trainable: int, examples):
    from .memory import estimate_training

    longest = max((e["length"] for e in examples), default=cfg.max_length)
    weight_bytes = 2 if str(getattr(loaded.model, "dtype", "")).endswith(("bfloat16", "float16")) else 4
    return estimate_training(
        model_config, method_kind=spec.kind, quantize=spec.quantize, trainable=trainable,
        batch_size=cfg.batch_size, seq_len=longest, weight_bytes=weight_bytes,
        gradient_checkpointing=cfg.gradient_checkpointing, device=loaded.device,
    )


def _explain(error: Exception, memory, spec, cfg: TuneConfig) -> str:
    """A failure as one message; out-of-memory comes with the estimate and what to change."""
    if isinstance(error, (FloatingPointError, Terminated)):  # nbkit's own messages say everything
        return str(error)
    text = f"{type(error).__name__}: {error}"
    if "out of memory" in str(error).lower() or type(error).__name__ == "OutOfMemoryError":
        tips = "; ".join(memory.suggestions(cfg.method, cfg.batch_size, cfg.gradient_checkpointing))
        return f"out of memory: {memory.describe()}. Try: {tips}"
    return text


def _free_name(base: str) -> str:
    root, name, n = runs_dir(), base, 1
    while (root / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _write_inputs(run: Run, cfg: TuneConfig, tasks: list[_Task], resume: bool) -> None:
    if resume:
        saved = run.config
        changed = sorted(k for k, v in cfg.to_dict().items() if saved.get(k) != v and k != "name")
        if changed:
            raise ConfigError(changed[0], f"differs from the run being resumed ({saved.get(changed[0])!r}); "
                              "resume with the same settings or start a new run")
        return

    def described(task: _Task) -> dict:
        return {"spec": task.spec, "rows": {k: len(v) for k, v in task.splits.items()},
                "train_fingerprint": fingerprint(task.splits["train"]), "columns": task.splits["train"].column_names}

    write_json(run.path / "config.json", cfg.to_dict())
    write_json(run.path / "prompt.json", tasks[0].prompt.to_dict())
    write_json(run.path / "data.json", described(tasks[0]))
    if len(tasks) > 1:
        write_json(run.path / "tasks.json", [
            {"name": t.name, "prompt": t.prompt.to_dict(), "data": t.spec, "weight": t.weight, **described(t)}
            for t in tasks
        ])
    run.set_status("created")


def _count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _collate(pad_id: int):
    import torch

    def collate(batch):
        out = _pad(batch)
        if "task" in batch[0]:
            out["task"] = torch.tensor([b["task"] for b in batch], dtype=torch.long)
        return out

    def _pad(batch):
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):  # right padding: only as wide as the longest in the batch
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def optimizer_name(device: str, quantize: str | None) -> str:
    """Paged 8-bit AdamW for 4-bit bases on CUDA (the QLoRA recipe); plain AdamW elsewhere.

    bitsandbytes' paged optimizers page their states to host memory under pressure; they
    exist for CUDA only.
    """
    import importlib.util

    if device.startswith("cuda") and quantize == "4bit" and importlib.util.find_spec("bitsandbytes"):
        return "paged_adamw_8bit"
    return "adamw_torch"


def schedule(cfg: TuneConfig, examples: int, dev: bool) -> dict:
    """Steps, evaluation and checkpoint intervals of a run."""
    steps_per_epoch = math.ceil(examples / (cfg.batch_size * cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    if not dev:
        return {"total": total, "save_steps": cfg.save_every or max(10, total // 4), "eval_steps": None}
    every = cfg.eval_every or max(1, total // 5)
    # best-checkpoint selection needs a checkpoint at every evaluation
    return {"total": total, "save_steps": every, "eval_steps": every}


def _checkpointing_args(enabled: bool) -> dict:
    """Activation checkpointing, under the argument name this transformers version uses."""
    import dataclasses

    import transformers

    if not enabled:
        return {}
    names = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def _trainer(model, loaded, examples, cfg: TuneConfig, run: Run, spec, dev_eval: "DevEvaluator | None",
             task_losses: "TaskLosses | None" = None):
    import datasets
    import transformers

    precision = autocast_precision(loaded.device) if cfg.precision == "auto" else cfg.precision
    plan = schedule(cfg, len(examples), dev_eval is not None)
    extra_args = {}
    if dev_eval is not None:
        extra_args = dict(
            eval_strategy="steps", eval_steps=plan["eval_steps"], load_best_model_at_end=True,
            metric_for_best_model=dev_eval.metric, greater_is_better=dev_eval.greater_is_better,
        )
    world = distributed.world()
    if world.distributed:
        extra_args.update(
            # the batch_size rows of each step are split between the processes: the same updates as one process
            accelerator_config={"split_batches": True},
            ddp_find_unused_parameters=False,
            ddp_timeout=distributed.TIMEOUT_SECONDS,  # a lost process fails the job instead of hanging it
        )
    args = transformers.TrainingArguments(
        output_dir=str(run.path / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup,
        weight_decay=0.0,
        logging_steps=1,
        # the Trainer's default hides a NaN/inf loss (it logs the running mean, 0 at first): nbkit must see it
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=plan["save_steps"],  # a few checkpoints to resume from, not one per step
        # with a dev set the best checkpoint is kept besides the last, so --resume still finds the last
        save_total_limit=2 if dev_eval is not None else 1,
        report_to="none",
        disable_tqdm=True,
        log_level="error",
        seed=cfg.seed,
        data_seed=cfg.seed,
        # batches of similar length: padding costs compute on every step
        train_sampling_strategy="group_by_length",
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        dataloader_pin_memory=False,
        use_cpu=loaded.device == "cpu",
        optim=optimizer_name(loaded.device, spec.quantize),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **_checkpointing_args(cfg.gradient_checkpointing),
        **extra_args,
    )
    dataset = datasets.Dataset.from_list(examples)
    trainer = _NbkitTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=_collate(loaded.tokenizer.pad_token_id),
        eval_dataset=datasets.Dataset.from_list(dev_eval.examples) if dev_eval is not None else None,
    )
    trainer.dev_eval = dev_eval
    if task_losses is not None:
        trainer.task_losses = task_losses
        trainer.loss_is_scaled_for_ga = False  # a mean per micro-batch: the Trainer divides by grad_accum
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # it prints every log dict
    if dev_eval is not None and cfg.patience:
        trainer.add_callback(transformers.EarlyStoppingCallback(early_stopping_patience=cfg.patience))
    return trainer


def _trainer_base():
    from transformers import Trainer

    return Trainer


class _NbkitTrainer(_trainer_base()):
    """``Trainer`` whose evaluation is nbkit's: dev loss, the prompt's metric, and a few generations."""

    dev_eval: "DevEvaluator | None" = None
    task_losses: "TaskLosses | None" = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.task_losses is None or "task" not in inputs:
            if not return_outputs:
                inputs = _head_on_targets(self.model, inputs)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        task, labels = inputs.pop("task"), inputs.pop("labels")
        outputs = model(**inputs)
        loss = self.task_losses(outputs.logits, labels, task)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if self.task_losses is not None and "loss" in logs:
            logs = {**logs, **self.task_losses.flush()}
        super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        metrics = self.dev_eval(self.model, self.data_collator, self.args.per_device_train_batch_size)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def _head_on_targets(model, inputs: dict) -> dict:
    """Ask the model for logits only at the positions that predict a target token.

    The loss covers the completion only, yet a causal LM computes the output head (vocab x width,
    a fifth of SmolLM2's matmul FLOPs) and a vocab-wide softmax at every position, prompt included.
    ``logits_to_keep`` (the positions any row of the batch needs) and ``shift_labels`` (their next
    tokens) make the model's own loss the same number from far fewer logits: measured 17% less time
    per step on sample:intent and 10% less peak memory (bench/README.md). Learned prompts (virtual
    tokens before the input) shift positions, so they keep the plain path.
    """
    labels = inputs.get("labels")
    config = getattr(model, "active_peft_config", None)
    if labels is None or getattr(config, "is_prompt_learning", False) or not _keeps_logits(model):
        return inputs
    keep = (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)
    if len(keep) == 0 or len(keep) == labels.shape[1] - 1:
        return inputs
    return {**inputs, "logits_to_keep": keep, "shift_labels": labels[:, keep + 1]}


def _keeps_logits(model) -> bool:
    """Whether the (base) model takes ``logits_to_keep`` and computes transformers' causal-LM loss."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    from .inference import _takes_logits_to_keep

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _takes_logits_to_keep(base) and getattr(base, "loss_function", None) is ForCausalLMLoss


class DevEvaluator:
    """Scores the model being trained on held-out rows: loss, the prompt's metric, sample generations.

    With label choices the metric is accuracy by label log-likelihood (the same scoring as
    ``nbkit.evaluate``); for free text it is the loss, and three rows are generated so a user sees
    the outputs change, not only a number.
    """

    samples = 3

    def __init__(self, prompt: Prompt, rows, examples, pool, tokenizer):
        self.prompt, self.rows, self.examples, self.pool, self.tokenizer = prompt, rows, examples, pool, tokenizer
        self.metric = "accuracy" if prompt.choices else "loss"
        self.greater_is_better = bool(prompt.choices)
        self.last_samples: list[dict] = []

    def __call__(self, model, collate, batch_size: int) -> dict:
        import torch

        from .encoding import encode_contexts
        from .evaluation import _predict
        from .inference import generate

        was_training = model.training
        model.eval()
        try:
            device = next(model.parameters()).device
            total, tokens = 0.0, 0
            with torch.no_grad():
                for start in range(0, len(self.examples), batch_size):
                    batch = {k: v.to(device) for k, v in collate(self.examples[start:start + batch_size]).items()}
                    n = int((batch["labels"] != -100).sum())
                    total += float(model(**batch).loss) * n
                    tokens += n
            metrics = {"eval_loss": total / max(tokens, 1)}
            if self.prompt.choices:
                frame = _predict(model, self.tokenizer, self.prompt, self.rows, self.pool, "sum", batch_size)
                metrics["eval_accuracy"] = float(frame["correct"].mean())
            shown = self.rows[:self.samples]
            contexts = encode_contexts(self.prompt, shown, self.tokenizer, self.pool)
            longest = max(len(self.tokenizer(self.prompt.render_target(r), add_special_tokens=False)["input_ids"])
                          for r in shown)
            outputs = generate(model, self.tokenizer, contexts, max_new_tokens=min(longest + 8, 64))
            self.last_samples = [{"input": self.prompt.render(r), "output": o, "expected": self.prompt.render_target(r)}
                                 for r, o in zip(shown, outputs)]
        finally:
            model.train(was_training)
        return metrics


class TaskLosses:
    """The multi-task loss, and each task's own loss for the logs.

    ``loss = sum_t w_t * (sum of token losses of task t) / sum_t w_t * (target tokens of task t)``
    over one batch: with all weights 1 it is the usual mean token loss of a mixed batch, and a
    task of weight 2 pulls on the adapter as if its examples were there twice.
    """

    PREFIX = "task_loss:"

    def __init__(self, names: Sequence[str], weights: Sequence[float]):
        self.names, self.weights = list(names), [float(w) for w in weights]
        self._reset()

    def _reset(self):
        self.sums, self.counts = [0.0] * len(self.names), [0] * len(self.names)

    def __call__(self, logits, labels, task):
        import torch
        import torch.nn.functional as F

        logits = logits[:, -labels.shape[1]:]  # learned prompts put virtual tokens before the input
        targets = labels[:, 1:]
        token = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                ignore_index=-100, reduction="none").view(targets.shape)
        counted = targets != -100
        per_example, tokens = (token * counted).sum(1), counted.sum(1)
        w = torch.tensor(self.weights, device=logits.device)[task]
        loss = (w * per_example).sum() / (w * tokens).sum().clamp(min=1)
        with torch.no_grad():
            for t in task.unique().tolist():
                chosen = task == t
                self.sums[t] += float(per_example[chosen].sum())
                self.counts[t] += int(tokens[chosen].sum())
        return loss

    def flush(self) -> dict:
        """Each task's mean token loss since the last flush (tasks absent from those batches are left out)."""
        out = {f"{self.PREFIX}{n}": s / c for n, s, c in zip(self.names, self.sums, self.counts) if c}
        self._reset()
        return out


class TasksEvaluator:
    """Dev evaluation of a multi-task run: each task scored by its own :class:`DevEvaluator`.

    Logs ``eval_<task>_<metric>`` per task; the selection metric is the mean over tasks (accuracy
    when every task has label choices, else loss), so the best checkpoint is best on average.
    """

    def __init__(self, evaluators: Mapping[str, DevEvaluator]):
        self.evaluators = dict(evaluators)
        self.metric = "accuracy" if all(e.metric == "accuracy" for e in self.evaluators.values()) else "loss"
        self.greater_is_better = self.metric == "accuracy"
        self.examples = [x for e in self.evaluators.values() for x in e.examples]
        self.rows = [r for e in self.evaluators.values() for r in e.rows]
        self.last_samples: list[dict] = []

    def __call__(self, model, collate, batch_size: int) -> dict:
        metrics, samples = {}, []
        for name, evaluator in self.evaluators.items():
            for key, value in evaluator(model, collate, batch_size).items():
                metrics[f"eval_{name}_{key.removeprefix('eval_')}"] = value
            samples += evaluator.last_samples[:1]
        for key in ("loss", "accuracy"):
            values = [metrics[f"eval_{n}_{key}"] for n in self.evaluators if f"eval_{n}_{key}" in metrics]
            if values:
                metrics[f"eval_{key}"] = sum(values) / len(values)
        self.last_samples = samples
        return metrics


class Terminated(Exception):
    """SIGTERM: a launcher stopping the job (torchrun does when another process failed) or a scheduler."""


class _soft_interrupt:
    """The first Ctrl-C (a kernel interrupt) stops training at the end of the step with a checkpoint;
    a second one interrupts at once. With ``soft=False`` (several processes) the first one does.

    SIGTERM fails the run with a message instead of killing the process silently, so the run is
    marked failed and ``--resume`` continues from its last checkpoint.
    """

    def __init__(self, bridge: "_Bridge", soft: bool = True):
        self.bridge, self.soft, self.previous = bridge, soft, {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only; Ctrl-C then interrupts at once

        def interrupt(signum, frame):
            if self.bridge.interrupt_requested or not self.soft:
                raise KeyboardInterrupt
            self.bridge.interrupt_requested = True
            self.bridge.emit.on_note("interrupt: stopping after this step and saving a checkpoint "
                                     "(interrupt again to stop at once)")

        def terminate(signum, frame):
            raise Terminated("stopped by SIGTERM (a launcher does this when another process of the job failed; "
                             "schedulers, to stop a job); --resume continues from the last checkpoint")

        self.previous = {signal.SIGINT: signal.signal(signal.SIGINT, interrupt),
                         signal.SIGTERM: signal.signal(signal.SIGTERM, terminate)}
        return self

    def __exit__(self, *exc):
        import signal

        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


def _last_checkpoint(run: Run) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = run.path / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def _check_finite(bridge: "_Bridge", run: Run) -> None:
    if bridge.losses and not math.isfinite(bridge.losses[-1]):
        last = _last_checkpoint(run)
        kept = f"; the last good checkpoint is kept ({Path(last).name})" if last else ""
        raise FloatingPointError(f"the loss became {bridge.losses[-1]} at step {bridge.step}, training stopped"
                                 f"{kept}. Lower --lr (now {run.config.get('lr')}) and start again")


def _finish(run: Run, emit, bridge: "_Bridge", status: str, error: str | None = None) -> None:
    elapsed = time.monotonic() - bridge.started if bridge.started else 0.0
    losses = [x for x in bridge.losses if math.isfinite(x)]
    metrics = {
        "steps": bridge.step,
        "train_seconds": round(elapsed, 2),
        "train_loss": _final(losses),
        "first_loss": losses[0] if losses else None,
        "tokens_per_second": bridge.tokens_per_second,
        "trainable_parameters": bridge.trainable,
        "total_parameters": bridge.total,
        "truncated": bridge.truncated,
        "examples": bridge.examples,
        "peak_memory_mb": _peak_memory_mb(),
    }
    for task, values in bridge.task_losses.items():  # multi-task: each task's loss, first and at the end
        values = [x for x in values if math.isfinite(x)]
        if values:
            metrics[f"first_loss_{task}"], metrics[f"train_loss_{task}"] = values[0], _final(values)
    if bridge.evaluations:
        metric = bridge.metric_key
        best = bridge.best_evaluation()
        metrics.update({f"dev_{metric}": best.get(f"eval_{metric}"), "best_step": best.get("step"),
                        "dev_examples": bridge.dev})
    if bridge.world.main:
        run.set_status(status, metrics=metrics, error=error, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    emit.on_end(events.End(status=status, elapsed=elapsed, steps=bridge.step, metrics=metrics, error=error, run=run))


def _final(losses: list[float]) -> float | None:
    """The loss a run ended at: the mean of its last tenth of logged values (one step is noisy)."""
    if not losses:
        return None
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail)


def _peak_memory_mb() -> float:
    """The process's peak resident memory (the high-water mark since it started), in MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)


def _bridge_base():
    from transformers import TrainerCallback

    return TrainerCallback


class _Bridge(_bridge_base()):
    """Turns the Trainer's callbacks into nbkit events and metrics.jsonl / dev.jsonl lines."""

    def __init__(self, emit, run: Run, cfg: TuneConfig, examples: int, truncated: int, trainable: int, total: int,
                 memory=None, dev_eval: "DevEvaluator | None" = None, world: "distributed.World | None" = None):
        self.emit, self.run, self.cfg = emit, run, cfg
        self.world = world or distributed.World()  # only the main process writes metrics
        self.examples, self.truncated, self.trainable, self.total = examples, truncated, trainable, total
        self.memory, self.dev_eval = memory, dev_eval
        self.dev = len(dev_eval.rows) if dev_eval is not None else 0
        self.losses: list[float] = []
        self.task_losses: dict[str, list[float]] = {}  # multi-task: each task's logged losses
        self.evaluations: list[dict] = []
        self.metric_key = "loss"
        self.step, self.started, self.tokens_per_second = 0, None, 0.0
        self.interrupt_requested = False

    def best_evaluation(self) -> dict:
        key = f"eval_{self.metric_key}"
        pick = max if self.metric_key != "loss" else min
        return pick(self.evaluations, key=lambda e: e.get(key, float("nan")))

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.monotonic(), state.global_step
        self.tokens0 = state.num_input_tokens_seen
        self.metric_key = (args.metric_for_best_model or "loss").removeprefix("eval_")
        memory = self.memory
        self.emit.on_begin(events.Begin(
            run_name=self.run.name, run_path=str(self.run.path), model=self.cfg.model, method=self.cfg.method,
            total_steps=state.max_steps, epochs=self.cfg.epochs, examples=self.examples,
            trainable_parameters=self.trainable, total_parameters=self.total, truncated=self.truncated,
            resumed_from=state.global_step, dev_examples=self.dev, processes=self.world.size,
            batch_size=self.cfg.batch_size, grad_accum=self.cfg.grad_accum,
            memory=memory.describe() if memory else None,
            memory_advice=None if memory is None or memory.fits else memory.suggestions(
                self.cfg.method, self.cfg.batch_size, self.cfg.gradient_checkpointing),
        ))

    def _stop_if_asked(self, control):
        if self.interrupt_requested:
            control.should_save = True  # a checkpoint at this step boundary, for --resume
            control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        self._stop_if_asked(control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        self.step = state.global_step
        elapsed = time.monotonic() - self.started
        done = max(self.step - self.first_step, 1)
        self.tokens_per_second = (state.num_input_tokens_seen - self.tokens0) / max(elapsed, 1e-9)
        loss = float(logs["loss"])
        self.losses.append(loss)
        row = {"step": self.step, "epoch": round(state.epoch or 0, 4), "loss": loss,
               "lr": logs.get("learning_rate", 0.0), "tokens": state.num_input_tokens_seen,
               "elapsed": round(elapsed, 3)}
        tasks = {k.removeprefix(TaskLosses.PREFIX): float(v) for k, v in logs.items()
                 if k.startswith(TaskLosses.PREFIX)}
        for task, value in tasks.items():
            self.task_losses.setdefault(task, []).append(value)
            row[f"loss_{task}"] = value
        if self.world.main:
            self.run.append_metrics(row)
        self.emit.on_step(events.Step(
            step=self.step, total_steps=state.max_steps, epoch=row["epoch"], loss=loss, learning_rate=row["lr"],
            tokens_per_second=self.tokens_per_second, elapsed=elapsed,
            eta=elapsed / done * (state.max_steps - self.step), task_losses=tasks or None,
        ))
        if not math.isfinite(loss):
            control.should_training_stop = True
            control.should_save = False  # never checkpoint broken weights: the last good one stays
            control.should_evaluate = False
        self._stop_if_asked(control)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics:
            return
        row = {"step": state.global_step, **{k: v for k, v in metrics.items() if k.startswith("eval_")}}
        self.evaluations.append(row)
        key = f"eval_{self.metric_key}"
        best = self.best_evaluation() is row
        if self.world.main:
            self.run.append_metrics(row, "dev.jsonl")
        self.emit.on_evaluate(events.Evaluation(
            step=state.global_step, total_steps=state.max_steps, metric=self.metric_key, value=row.get(key),
            loss=row.get("eval_loss"), best=best,
            samples=list(self.dev_eval.last_samples) if self.dev_eval is not None else [],
        ))
