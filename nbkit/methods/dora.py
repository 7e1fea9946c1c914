"""DoRA: LoRA with the weight split into magnitude and direction (Liu et al., 2024), through peft.

Same options as LoRA; peft's ``use_dora`` adds a trainable magnitude vector per
adapted layer. Slower per step than LoRA (the weight norm is recomputed every
forward), often a little better at low rank.
"""

from __future__ import annotations

from .registry import Method, register_method
from .lora import LoraOptions, check_modules


def build(model, options: LoraOptions, context=None):
    from peft import get_peft_model

    return get_peft_model(model, options.peft_config(context, use_dora=True))


register_method(Method(
    "dora", LoraOptions, build, quantize=None, lr=5e-4, check=check_modules,
    summary="weight-decomposed LoRA: a magnitude and a low-rank direction per layer",
))
