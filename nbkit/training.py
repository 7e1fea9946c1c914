"""``nbkit.tune``: prompt + data + method → a run directory with a trained adapter.

The path reads top to bottom: validate everything, resolve the prompt and the
data, create the run directory, load a fresh base model, wrap it with the
method, train with ``transformers.Trainer``, save the adapter atomically.
Progress leaves through :mod:`nbkit.events`; nothing here draws.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from . import events
from .data import fingerprint, load_data
from .encoding import training_example
from .errors import ConfigError, TrainingFailed, TrainingInterrupted
from .methods import get_method
from .models import DEFAULT_MODEL, autocast_precision, load_model
from .prompts import Prompt, get_prompt
from .runs import RUNS, Run, runs_dir, write_json


@dataclass
class TuneConfig:
    """Everything that decides what a tune does; saved as ``config.json``."""

    prompt: str = field(metadata={"help": "name of the prompt to train on"})
    data: str = field(metadata={"help": "data spec; the train split is used"})
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
        if self.name is not None and (not self.name or "/" in self.name or self.name.startswith(".")):
            raise ConfigError("name", f"must be a plain folder name, got {self.name!r}")

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
    prompt: Prompt | str,
    data: Any,
    *,
    model: str = DEFAULT_MODEL,
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
    name: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    namespace: Mapping[str, Any] | None = None,
    callbacks: Sequence[events.Callback] | None = None,
    **options,
) -> Run:
    """Fine-tune ``model`` on ``data`` formatted by ``prompt``; the loss covers the target only.

    Args:
        prompt: a :class:`Prompt` or the name of a registered one.
        data: a data spec (see :func:`nbkit.load_data`); its ``train`` split is used.
        model: base model spec.
        method: ``lora`` or ``qlora`` (see ``nbkit.methods.available_methods()``).
        epochs, max_steps, lr, batch_size, grad_accum, max_length, warmup, seed: training settings.
        precision: ``auto`` (bf16 autocast on GPUs that have it, fp32 on CPU), ``bf16``, ``fp16``, ``fp32``.
        name: run name (a folder under ``runs/``); default ``<prompt>-<method>``, numbered if taken.
        resume: continue the run ``name`` from its last checkpoint.
        overwrite: replace an existing run directory of the same name.
        namespace: where data given as a variable name is looked up.
        callbacks: progress subscribers; default prints a few plain lines.
        **options: method options (``r``, ``alpha``, ``dropout``, ``target_modules``).

    Returns:
        The :class:`Run`, completed.

    Raises:
        ConfigError, UnknownNameError, TemplateError, DataError: before any model loads.
        TrainingInterrupted, TrainingFailed: the run is marked so and kept.
    """
    prompt = get_prompt(prompt)
    data_spec = data if isinstance(data, str) else f"<{type(data).__name__}>"
    cfg = TuneConfig(
        prompt=prompt.name, data=data_spec, model=model, method=method, epochs=epochs, max_steps=max_steps,
        lr=lr, batch_size=batch_size, grad_accum=grad_accum, max_length=max_length, warmup=warmup,
        seed=seed, precision=precision, name=name, options=options,
    )
    spec = get_method(cfg.method)
    method_options = spec.make_options(cfg.options)
    cfg.options, cfg.lr = dataclasses.asdict(method_options), cfg.lr or spec.lr
    splits = load_data(data, namespace)
    train = splits["train"]
    prompt = prompt.resolve_target(train.column_names)
    prompt.check(train.column_names)
    if resume and not cfg.name:
        raise ConfigError("name", "is needed with --resume: which run should continue?")
    cfg.name = cfg.name or _free_name(f"{prompt.name}-{cfg.method}")
    run = Run.create(cfg.name, overwrite=overwrite, resume=resume)
    emit = events.Emitter(callbacks if callbacks is not None else [events.PlainProgress()])
    _write_inputs(run, cfg, prompt, splits, resume)

    loaded = load_model(cfg.model, quantize=spec.quantize, fresh=True)
    rows = list(train)
    examples, truncated = [], 0
    for i, row in enumerate(rows):
        shots = prompt.pick_shots(rows, seed=cfg.seed + i, exclude=row)
        example, cut = training_example(prompt, row, loaded.tokenizer, cfg.max_length, shots)
        examples.append(example)
        truncated += cut

    import warnings

    import transformers

    # peft asks the model for the old name of a transformers 5 property; harmless, and not the user's to fix
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.set_seed(cfg.seed)  # the adapter's initial weights come from this seed
    model = spec.build(loaded.model, method_options)
    trainable, total = _count_parameters(model)
    trainer = _trainer(model, loaded, examples, cfg, run)
    bridge = _Bridge(emit, run, cfg, examples=len(examples), truncated=truncated, trainable=trainable, total=total)
    trainer.add_callback(bridge)
    checkpoint = _last_checkpoint(run) if resume else None

    run.set_status("running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), error=None)
    try:
        trainer.train(resume_from_checkpoint=checkpoint)
        _check_finite(bridge)
        run.save_adapter(model)
    except KeyboardInterrupt:
        _finish(run, emit, bridge, "interrupted")
        raise TrainingInterrupted(run) from None
    except Exception as e:
        _finish(run, emit, bridge, "failed", f"{type(e).__name__}: {e}")
        raise TrainingFailed(run, f"{type(e).__name__}: {e}") from e
    _finish(run, emit, bridge, "completed")
    RUNS[run.name] = run
    return run


def _free_name(base: str) -> str:
    root, name, n = runs_dir(), base, 1
    while (root / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name


def _write_inputs(run: Run, cfg: TuneConfig, prompt: Prompt, splits, resume: bool) -> None:
    if resume:
        saved = run.config
        changed = sorted(k for k, v in cfg.to_dict().items() if saved.get(k) != v and k != "name")
        if changed:
            raise ConfigError(changed[0], f"differs from the run being resumed ({saved.get(changed[0])!r}); "
                              "resume with the same settings or start a new run")
        return
    write_json(run.path / "config.json", cfg.to_dict())
    write_json(run.path / "prompt.json", prompt.to_dict())
    write_json(run.path / "data.json", {
        "spec": cfg.data, "rows": {k: len(v) for k, v in splits.items()},
        "train_fingerprint": fingerprint(splits["train"]), "columns": splits["train"].column_names,
    })
    run.set_status("created")


def _count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _collate(pad_id: int):
    import torch

    def collate(batch):
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


def _trainer(model, loaded, examples, cfg: TuneConfig, run: Run):
    import datasets
    import transformers

    precision = autocast_precision(loaded.device) if cfg.precision == "auto" else cfg.precision
    steps_per_epoch = math.ceil(len(examples) / (cfg.batch_size * cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
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
        save_strategy="steps",
        save_steps=max(10, total // 4),  # a few checkpoints to resume from, not one per step
        save_total_limit=1,
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
        optim="adamw_torch",
        bf16=precision == "bf16",
        fp16=precision == "fp16",
    )
    dataset = datasets.Dataset.from_list(examples)
    trainer = transformers.Trainer(
        model=model, args=args, train_dataset=dataset, data_collator=_collate(loaded.tokenizer.pad_token_id)
    )
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # it prints every log dict
    return trainer


def _last_checkpoint(run: Run) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    folder = run.path / "checkpoints"
    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def _check_finite(bridge: "_Bridge") -> None:
    if bridge.losses and not math.isfinite(bridge.losses[-1]):
        raise FloatingPointError(f"the loss became {bridge.losses[-1]} at step {bridge.step}; lower --lr")


def _finish(run: Run, emit, bridge: "_Bridge", status: str, error: str | None = None) -> None:
    elapsed = time.monotonic() - bridge.started if bridge.started else 0.0
    losses = bridge.losses
    tail = losses[-max(1, len(losses) // 10):] if losses else []
    metrics = {
        "steps": bridge.step,
        "train_seconds": round(elapsed, 2),
        "train_loss": sum(tail) / len(tail) if tail else None,
        "first_loss": losses[0] if losses else None,
        "tokens_per_second": bridge.tokens_per_second,
        "trainable_parameters": bridge.trainable,
        "total_parameters": bridge.total,
        "truncated": bridge.truncated,
        "examples": bridge.examples,
    }
    run.set_status(status, metrics=metrics, error=error, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
    emit.on_end(events.End(status=status, elapsed=elapsed, steps=bridge.step, metrics=metrics, error=error, run=run))


def _bridge_base():
    from transformers import TrainerCallback

    return TrainerCallback


class _Bridge(_bridge_base()):
    """Turns the Trainer's callbacks into nbkit events and metrics.jsonl lines."""

    def __init__(self, emit, run: Run, cfg: TuneConfig, examples: int, truncated: int, trainable: int, total: int):
        self.emit, self.run, self.cfg = emit, run, cfg
        self.examples, self.truncated, self.trainable, self.total = examples, truncated, trainable, total
        self.losses: list[float] = []
        self.step, self.started, self.tokens_per_second = 0, None, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.monotonic(), state.global_step
        self.tokens0 = state.num_input_tokens_seen
        self.emit.on_begin(events.Begin(
            run_name=self.run.name, run_path=str(self.run.path), model=self.cfg.model, method=self.cfg.method,
            total_steps=state.max_steps, epochs=self.cfg.epochs, examples=self.examples,
            trainable_parameters=self.trainable, total_parameters=self.total, truncated=self.truncated,
            resumed_from=state.global_step,
        ))

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
        self.run.append_metrics(row)
        self.emit.on_step(events.Step(
            step=self.step, total_steps=state.max_steps, epoch=row["epoch"], loss=loss, learning_rate=row["lr"],
            tokens_per_second=self.tokens_per_second, elapsed=elapsed,
            eta=elapsed / done * (state.max_steps - self.step),
        ))
        if not math.isfinite(loss):
            control.should_training_stop = True
