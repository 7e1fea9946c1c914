"""LoRA: low-rank updates on the linear layers (Hu et al., 2021), through peft."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from . import Method, register_method


@dataclass
class LoraOptions:
    r: int = field(default=8, metadata={"help": "rank of the update; 8 is plenty for classification-sized tasks"})
    alpha: float = field(default=16, metadata={"help": "scale; the update is multiplied by alpha / r"})
    dropout: float = field(default=0.05, metadata={"help": "dropout on the LoRA input; a little helps on small data"})
    target_modules: str = field(
        default="all-linear", metadata={"help": "which layers get adapters: all-linear, or comma-separated names"}
    )

    def __post_init__(self):
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r <= 0:
            raise ConfigError("r", f"must be a positive integer, got {self.r!r}")
        if not self.alpha > 0:
            raise ConfigError("alpha", f"must be positive, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ConfigError("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if not str(self.target_modules).strip():
            raise ConfigError("target_modules", "is empty; use all-linear or layer names like q_proj,v_proj")

    def peft_config(self, **extra):
        from peft import LoraConfig

        targets = self.target_modules
        if targets != "all-linear":
            targets = [t.strip() for t in str(targets).split(",") if t.strip()]
        return LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
            target_modules=targets, task_type="CAUSAL_LM", **extra,
        )


def build(model, options: LoraOptions):
    from peft import get_peft_model

    return get_peft_model(model, options.peft_config())


register_method(Method(
    "lora", LoraOptions, build, quantize=None,
    # 5e-4: on ~200 short examples and 3 epochs (~75 steps) smaller rates leave accuracy on the table
    lr=5e-4,
    summary="low-rank adapters on every linear layer, full-precision base",
))
