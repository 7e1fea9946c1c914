"""Full fine-tuning: every weight trains. For small models; the run saves a whole model.

The optimizer keeps two more copies of every weight, so memory is about four
times the model's (fp32 weights + gradients + Adam moments); nbkit refuses on
models whose estimate is beyond ``max_parameters`` and suggests LoRA instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..memory import estimate_parameters
from .registry import Method, register_method


@dataclass
class FullOptions:
    max_parameters: float = field(
        default=2e9, metadata={"help": "refuse models larger than this (weights + Adam need ~16 bytes each)"}
    )

    def __post_init__(self):
        if isinstance(self.max_parameters, bool) or not isinstance(self.max_parameters, (int, float)) \
                or self.max_parameters <= 0:
            raise ConfigError("max_parameters", f"must be a positive number, got {self.max_parameters!r}")


def check(model_config, options: FullOptions) -> None:
    n = estimate_parameters(model_config)
    if n and n > options.max_parameters:
        raise ConfigError("method", f"full fine-tuning of a ~{n / 1e9:.1f}B-parameter model needs ~{16 * n / 2**30:.0f} GiB "
                          "for weights, gradients and Adam states; use lora or qlora "
                          f"(or raise --max-parameters above {options.max_parameters:.0e})")


def build(model, options: FullOptions, context=None):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


register_method(Method(
    "full", FullOptions, build, quantize=None, lr=5e-5, kind="full", check=check,
    families=("decoder", "encoder", "seq2seq"),
    summary="every weight trains (small models); the run holds a whole model, not an adapter",
))
