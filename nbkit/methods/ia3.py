"""IA3: learned rescaling of keys, values and feed-forward activations (Liu et al., 2022), through peft.

The smallest adapter nbkit offers (a vector per adapted layer). It needs a much
larger learning rate than LoRA: the vectors start at one and must move far.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from .registry import Method, register_method
from .lora import split_modules


@dataclass
class IA3Options:
    target_modules: str = field(
        default="auto", metadata={"help": "layers to rescale: auto (peft's choice for the architecture) or names"}
    )
    feedforward_modules: str = field(
        default="auto", metadata={"help": "which of them are feed-forward (scaled on the input): auto or names"}
    )

    def __post_init__(self):
        for name in ("target_modules", "feedforward_modules"):
            if not str(getattr(self, name)).strip():
                raise ConfigError(name, "is empty; use auto or layer names like k_proj,v_proj,down_proj")
        if self.target_modules == "auto" and self.feedforward_modules != "auto":
            raise ConfigError("feedforward_modules", "needs explicit --target-modules that include them")
        if self.target_modules != "auto" and self.feedforward_modules != "auto":
            extra = set(split_modules(self.feedforward_modules)) - set(split_modules(self.target_modules))
            if extra:
                raise ConfigError("feedforward_modules", f"{sorted(extra)[0]!r} is not among --target-modules")


def check(model_config, options: IA3Options) -> None:
    from peft.utils import TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING as DEFAULTS

    kind = getattr(model_config, "model_type", None)
    if options.target_modules == "auto" and kind not in DEFAULTS:
        raise ConfigError("target_modules", f"peft has no IA3 default for {kind!r} models; name the layers, "
                          "e.g. --target-modules k_proj,v_proj,down_proj --feedforward-modules down_proj")


def build(model, options: IA3Options, context=None):
    from peft import IA3Config, get_peft_model

    kwargs = {}
    if options.target_modules != "auto":
        targets = split_modules(options.target_modules)
        kwargs["target_modules"] = targets
        # feed-forward layers are those named so; by default the MLP's output projection when targeted
        ff = options.feedforward_modules
        kwargs["feedforward_modules"] = (split_modules(ff) if ff != "auto"
                                         else [t for t in targets if t in ("down_proj", "fc2", "w2")])
    return get_peft_model(model, IA3Config(task_type="CAUSAL_LM", **kwargs))


register_method(Method(
    "ia3", IA3Options, build, quantize=None, lr=1e-2, check=check,
    summary="learned scaling vectors on keys, values and feed-forward inputs: the fewest parameters",
))
