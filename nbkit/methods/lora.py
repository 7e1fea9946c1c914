"""LoRA: low-rank updates on the linear layers (Hu et al., 2021), through peft."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import ConfigError
from ..checks import positive_int
from .registry import Method, register_method


@dataclass
class LoraOptions:
    r: int = field(default=8, metadata={"help": "rank of the update; 8 is plenty for classification-sized tasks"})
    alpha: float = field(default=16, metadata={"help": "scale; the update is multiplied by alpha / r"})
    # decoders 0: dropout's masks cost a decoder step 1.25-1.5x its time on the CPU, for no accuracy the shipped
    # sets or a made-up one could tell apart (bench/README.md, "LoRA dropout"); encoders keep the 0.05 their
    # defaults were picked with
    dropout: float | None = field(default=None, metadata={
        "help": "dropout on the LoRA input (default 0 on decoders, 0.05 on encoders)",
        "shown": "0 on decoders, 0.05 on encoders"})
    dropouts: ClassVar[dict[str, float]] = {"decoder": 0.0}  # the default by family where it is not 0.05
    target_modules: str = field(
        default="all-linear", metadata={"help": "which layers get adapters: all-linear, or comma-separated names"}
    )

    def __post_init__(self):
        positive_int("r", self.r)
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ConfigError("alpha", f"must be positive, got {self.alpha!r}")
        if self.dropout is not None and (isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float))
                                         or not 0 <= self.dropout < 1):
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if not str(self.target_modules).strip():
            raise ConfigError("target_modules", "is empty; use all-linear or layer names like q_proj,v_proj")

    def for_family(self, family: str) -> None:
        """Fill the defaults that depend on the model family (the dropout)."""
        if self.dropout is None:
            self.dropout = self.dropouts.get(family, 0.05)

    def peft_config(self, context=None, **extra):
        """peft's ``LoraConfig``; ``context`` (a ``BuildContext``) gives the family's task type, and its
        layers to adapt when the options leave ``all-linear`` to an encoder or an encoder-decoder."""
        from peft import LoraConfig

        targets = split_modules(self.target_modules)
        if targets == "all-linear" and context is not None and context.default_targets is not None:
            targets = context.default_targets
        task_type = context.task_type if context is not None else "CAUSAL_LM"
        self.for_family(context.family if context is not None else "decoder")
        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
                          task_type=task_type, **extra)


def split_modules(value: str):
    """``all-linear`` stays a string (peft's keyword); ``q_proj, v_proj`` becomes a list."""
    if value == "all-linear":
        return value
    return [t.strip() for t in str(value).split(",") if t.strip()]


def check_modules(model_config, options) -> None:
    """Named target modules must exist in the architecture; checked from the config's layer names."""
    names = split_modules(options.target_modules)
    if names == "all-linear" or getattr(model_config, "model_type", None) not in ("llama", "mistral", "qwen2", "qwen3"):
        return  # unknown layouts are left to peft, which names the missing module itself
    known = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"}
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError("target_modules", f"{missing[0]!r} is not a layer of a {model_config.model_type} model; "
                          f"its linear layers: {', '.join(sorted(known - {'lm_head'}))}")


def build(model, options: LoraOptions, context=None):
    from peft import get_peft_model

    return get_peft_model(model, options.peft_config(context))


register_method(Method(
    "lora", LoraOptions, build, quantize=None, families=("decoder", "encoder", "seq2seq"),
    # 5e-4: on ~200 short examples and 3 epochs (~75 steps) smaller rates leave accuracy on the table
    lr=5e-4, check=check_modules,
    summary="low-rank adapters on every linear layer, full-precision base",
))
