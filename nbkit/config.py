"""What a tune does, declared once: :class:`TuneConfig`, the run-config schema of every family.

Each field carries its default and its help text. ``nbkit.tune`` takes these fields as
keyword arguments, job files are these fields, and ``%tune``'s options are built from them
(their defaults and help come from here), so a setting is added in this one place. The
same dict is written as every run's ``config.json``, whatever the model family (decoder,
encoder, encoder-decoder), with the task and the family in it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .checks import finite, folder_name, positive_number
from .errors import ConfigError

DEFAULT_MODEL = "smollm2-135m"  # the embedded decoder
DEFAULT_ENCODER = "minilm-l6"  # the embedded sentence encoder, default of the encoder tasks
TASKS = ("generation", "classification", "embedding")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
SWITCHES = ("auto", "on", "off")


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class TuneConfig:
    """Everything that decides what a tune does; saved as ``config.json``."""

    prompt: str | list | None = field(metadata=_help(
        "name of the prompt to train on; a list for multi-task training (none for --task embedding)"))
    data: str | list = field(metadata=_help("data spec whose train split is used; a list, one per prompt"))
    model: str | None = field(default=None, metadata=_help(
        "base model spec (default smollm2-135m; minilm-l6 with --task classification/embedding)"))
    method: str | None = field(default=None, metadata=_help(
        "lora, qlora, dora, ia3, prompt-tuning, p-tuning, prefix-tuning, full or setfit (see %nbkit methods; "
        "default lora, setfit with --task classification)"))
    objective: str = field(default="sft", metadata=_help(
        "what a decoder learns from: sft (imitate the target), dpo, orpo (chosen/rejected pairs), kto (good/bad "
        "completions) or grpo (rewards; see --reward); %nbkit objectives lists them"))
    task: str = field(default="generation", metadata=_help(
        "generation (a decoder learns the target text); classification (an encoder with a head on the "
        "prompt's choices); embedding (an encoder, contrastive, on query/positive pairs)"))
    # 3 passes fit ~200 examples: fewer leave accuracy on the table, more overfit the small samples; SetFit's
    # pairs already hold every row 2 x iterations times, so one pass over them is its paper's and package's default
    epochs: float | None = field(default=None, metadata=_help(
        "passes over the training split (default 3; setfit: 1 over its pairs)"))
    max_steps: int | None = field(default=None, metadata=_help("stop after this many steps (overrides epochs)"))
    lr: float | None = field(default=None, metadata=_help("learning rate (default: the method's)"))
    # 8 keeps a CPU step of the embedded model around a second
    batch_size: int = field(default=8, metadata=_help("examples per step (default 8)"))
    grad_accum: int = field(default=1, metadata=_help("gradient accumulation steps (default 1)"))
    max_length: int = field(default=256, metadata=_help(
        "tokens per example (default 256); longer ones are cut and counted"))
    warmup: float = field(default=0.1, metadata=_help("warm-up fraction of the steps (default 0.1)"))
    seed: int = field(default=0, metadata=_help("seed of the adapter init and the data order (default 0)"))
    precision: str = field(default="auto", metadata=_help(
        "autocast: auto (bf16 on GPUs that have it, fp32 on CPU), bf16, fp16 or fp32", choices=PRECISIONS))
    # auto: on for CPU training wherever a run can pack (measured on the CPU: the same losses, 1.1-1.3x the step
    # speed and 12-23% less peak memory on one CPU, no faster on another; bench/README.md); off on GPUs (one
    # attention call per example, not measured there); true/false from older configs mean on/off
    packing: str | bool = field(default="auto", metadata=_help(
        "padding-free batches: each batch's examples end to end in one row, each attending only to itself; "
        "auto: on for CPU training where the run can pack (not learned prompts, preference objectives, "
        "multi-task or several processes), off on GPUs", choices=SWITCHES))
    compile: str = field(default="auto", metadata=_help(
        "torch.compile each layer: 20-50 s once, then 0.9-1.16x the step speed on a CPU (measured on two); "
        "auto: on for GPU runs of 200+ steps, off on the CPU", choices=SWITCHES))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "recompute activations in the backward pass: less memory, ~30% slower"))
    dev: float | int | str | None = field(default=None, metadata=_help(
        "held-out data scored during training: a fraction (0.1) or count of train, or a split; picks the "
        "best checkpoint"))
    eval_every: int | None = field(default=None, metadata=_help(
        "steps between dev evaluations (default: five per run)"))
    patience: int | None = field(default=None, metadata=_help(
        "early stopping: evaluations without improvement before stopping (needs --dev)"))
    save_every: int | None = field(default=None, metadata=_help(
        "steps between checkpoints for --resume (default: four per run; with --dev, every evaluation)"))
    weights: list | None = field(default=None, metadata=_help(
        "multi-task: each task's weight in the loss, e.g. 1,2 (default all 1)"))
    name: str | None = field(default=None, metadata=_help("run name (default <prompt>-<method>, numbered if taken)"))
    architecture: str = field(default="decoder", metadata=_help(
        "the model family, decided from the model: decoder, encoder or seq2seq", cli=False))
    labels: list | None = field(default=None, metadata=_help(
        "classification: the label of each head output (the prompt's choices)", cli=False))
    input: str | None = field(default=None, metadata=_help(
        "--task classification: what the encoder reads: a column as it is (text), or prompt (the rendered "
        "template); default the column when the template reads one, else prompt"))
    pooling: str | None = field(default=None, metadata=_help(
        "--task embedding: mean, cls or lasttoken, for a model without a sentence-transformers pooling "
        "(a decoder, a bare BERT)"))
    corpus: str | None = field(default=None, metadata=_help(
        "--task embedding: documents the pairs' positive/negative ids refer to (default the data's own, as "
        "sample:search has)"))
    scale: float = field(default=20.0, metadata=_help(
        "--task embedding: cosine scale of the contrastive loss (default 20, sentence-transformers')"))
    options: dict = field(default_factory=dict, metadata=_help(
        "method options (r, alpha, dropout, …)", cli=False))
    objective_options: dict = field(default_factory=dict, metadata=_help(
        "objective options (beta, reward, generations, …)", cli=False))

    def __post_init__(self):
        if self.task not in TASKS:
            raise ConfigError("task", f"must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.model is None:
            self.model = DEFAULT_MODEL if self.task == "generation" else DEFAULT_ENCODER
        if self.method is None:
            self.method = default_method(self.task)
        if not isinstance(self.objective, str) or not self.objective:
            raise ConfigError("objective", f"must be a name like sft or dpo, got {self.objective!r}")
        if self.epochs is None:
            self.epochs = 1 if self.method == "setfit" else 3
        for name in ("lr", "epochs", "warmup", "scale"):
            finite(name, getattr(self, name))
        if self.lr is not None:
            positive_number("lr", self.lr)
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, (int, float)) or not self.epochs >= 0:
            raise ConfigError("epochs", f"must be >= 0, got {self.epochs!r}")
        if self.max_steps is not None:
            positive_number("max_steps", self.max_steps, int)
        elif self.epochs == 0:
            raise ConfigError("epochs", "is 0 and no max_steps is set: nothing would be trained")
        positive_number("batch_size", self.batch_size, int)
        positive_number("grad_accum", self.grad_accum, int)
        positive_number("max_length", self.max_length, int)
        if not 0 <= self.warmup < 1:
            raise ConfigError("warmup", f"must be a fraction in [0, 1), got {self.warmup!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError("precision", f"must be auto, bf16, fp16 or fp32, got {self.precision!r}")
        if isinstance(self.packing, bool):  # configs written before packing had auto
            self.packing = "on" if self.packing else "off"
        if self.packing not in SWITCHES:
            raise ConfigError("packing", f"must be auto, on or off, got {self.packing!r}")
        if self.compile not in SWITCHES:
            raise ConfigError("compile", f"must be auto, on or off, got {self.compile!r}")
        if not isinstance(self.gradient_checkpointing, bool):
            raise ConfigError("gradient_checkpointing", f"must be true or false, got {self.gradient_checkpointing!r}")
        self._check_dev()
        self._check_tasks()
        if self.name is not None:
            folder_name("name", self.name)

    def _check_dev(self) -> None:
        if self.dev is not None:
            if isinstance(self.dev, bool) or (isinstance(self.dev, (int, float)) and not self.dev > 0):
                raise ConfigError("dev", f"must be a fraction in (0, 1), a row count or a split name, got {self.dev!r}")
            if isinstance(self.dev, float) and self.dev >= 1 and not self.dev.is_integer():
                raise ConfigError("dev", f"must be a fraction in (0, 1) or a whole row count, got {self.dev!r}")
            if isinstance(self.dev, str) and (not self.dev or self.dev == "train"):
                raise ConfigError("dev", "must not be the train split: evaluate on data the run does not train on")
        if self.eval_every is not None:
            positive_number("eval_every", self.eval_every, int)
        if self.save_every is not None:
            positive_number("save_every", self.save_every, int)
            if self.dev is not None:
                raise ConfigError("save_every", "does not go with --dev: checkpoints are saved at every evaluation "
                                  "then (the best one is kept); set --eval-every instead")
        if self.patience is not None:
            positive_number("patience", self.patience, int)
            if self.dev is None:
                raise ConfigError("patience", "needs --dev: early stopping watches a held-out metric")

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


def settings() -> list[dataclasses.Field]:
    """The fields a user sets (``%tune``'s options, the job file's keys), in declaration order."""
    return [f for f in dataclasses.fields(TuneConfig) if f.metadata.get("cli", True)]


def default_method(task: str) -> str:
    """The method a task tunes with when none is named: SetFit for encoder classification, else LoRA."""
    return "setfit" if task == "classification" else "lora"


def default(name: str) -> Any:
    """The declared default of a :class:`TuneConfig` field."""
    found = {f.name: f for f in dataclasses.fields(TuneConfig)}[name]
    return found.default_factory() if found.default_factory is not dataclasses.MISSING else found.default


def pair_tasks(prompt, data) -> tuple[list, list]:
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


def task_names(prompts: Sequence[str]) -> list[str]:
    """Each task is called by its prompt; a prompt used on several data sets is numbered."""
    prompts = list(prompts)
    if len(set(prompts)) == len(prompts):
        return prompts
    return [f"{p}-{i + 1}" if prompts.count(p) > 1 else p for i, p in enumerate(prompts)]


def data_spec(data) -> str:
    """How a run records its data: the spec, or ``<DataFrame>`` for data held in a variable."""
    return data if isinstance(data, str) else f"<{type(data).__name__}>"
