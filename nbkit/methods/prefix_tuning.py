"""Prefix tuning: trainable key/value prefixes in every attention layer (Li & Liang, 2021), through peft.

The prefix enters as a past key/value cache, so the architecture must take
one; nbkit checks the model's configuration before loading any weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError
from ..checks import positive_int
from .registry import Method, check_virtual_tokens, register_method


@dataclass
class PrefixTuningOptions:
    virtual_tokens: int = field(default=20, metadata={"help": "prefix length per layer"})
    projection: bool = field(default=False, metadata={"help": "reparameterise the prefix through an MLP"})
    encoder_hidden: int = field(default=256, metadata={"help": "hidden size of that MLP (with projection)"})

    def __post_init__(self):
        positive_int("virtual_tokens", self.virtual_tokens)
        positive_int("encoder_hidden", self.encoder_hidden)
        if not isinstance(self.projection, bool):
            raise ConfigError("projection", f"must be true or false, got {self.projection!r}")


def check(model_config, options) -> None:
    check_virtual_tokens(model_config, options)
    needed = ("num_hidden_layers", "num_attention_heads", "hidden_size")
    missing = [k for k in needed if getattr(model_config, k, None) is None]
    if missing or getattr(model_config, "use_cache", True) is False:
        raise ConfigError("method", f"prefix-tuning needs a decoder with a key/value cache, and this "
                          f"{getattr(model_config, 'model_type', '?')} model does not describe one "
                          f"({', '.join(missing) or 'use_cache is off'}); use prompt-tuning, p-tuning or lora")


def build(model, options: PrefixTuningOptions, context=None):
    from peft import PrefixTuningConfig, get_peft_model

    return get_peft_model(model, PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=options.virtual_tokens,
        prefix_projection=options.projection, encoder_hidden_size=options.encoder_hidden,
    ))


register_method(Method(
    "prefix-tuning", PrefixTuningOptions, build, quantize=None, lr=3e-2, kind="prompt", check=check,
    summary="trainable key/value prefixes in every attention layer",
))
