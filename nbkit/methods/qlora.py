"""QLoRA: LoRA on a 4-bit NF4 base with double quantization (Dettmers et al., 2023)."""

from __future__ import annotations

from . import Method, register_method
from .lora import LoraOptions


def build(model, options: LoraOptions):
    from peft import get_peft_model, prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, options.peft_config())


register_method(Method(
    "qlora", LoraOptions, build, quantize="4bit", lr=5e-4,
    summary="LoRA on a 4-bit NF4 base (bitsandbytes): a quarter of the base model's memory",
))
