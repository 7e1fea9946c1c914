"""QLoRA: LoRA on a 4-bit NF4 base with double quantization (Dettmers et al., 2023).

On CPUs with AVX512-BF16, bitsandbytes (0.50) rewrites a ``Linear4bit`` weight
into an inference-only packed layout the first time the layer runs in eval
mode on an input that needs no gradient (``nn/modules.py``: ``Linear4bit.forward``
→ ``_convert_weight_packed_for_cpu``). ``matmul_4bit`` then always calls
``gemv_4bit``, which has no backward, and ``train()`` never converts back: the
gradient reaching the LoRA weights below each frozen layer is truncated and the
loss barely moves. nbkit turns that switch off on the layers it trains and
unpacks any layer already converted. The evidence is in ``docs/qlora-cpu.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from .registry import Method, register_method
from .lora import LoraOptions, check_modules


def keep_trainable_layout(model) -> int:
    """Stop bitsandbytes' CPU inference packing on every 4-bit layer; undo it where done.

    Returns:
        How many layers had already been packed and were converted back.
    """
    import bitsandbytes as bnb
    import bitsandbytes.functional as F

    unpacked = 0
    for module in model.modules():
        if not isinstance(module, bnb.nn.Linear4bit):
            continue
        module.support_avx512bf16_for_cpu = False
        state = module.weight.quant_state
        if getattr(state, "packing_format_for_cpu", False):
            module.weight.data, module.weight.quant_state = F._convert_weight_packed_for_cpu_inverse(
                module.weight.data, state
            )
            unpacked += 1
    return unpacked


@dataclass
class QloraOptions(LoraOptions):
    # 0.05 on every family: measured without it, QLoRA lost 3 and 8 rows of 80 on sample:intent (two prompts) and
    # tied on sentiment, where LoRA lost nothing (bench/README.md, "QLoRA's dropout"); the 4-bit base's rounding
    # is one more thing to fit to
    dropout: float | None = field(default=None, metadata={
        "help": "dropout on the LoRA input (default 0.05)", "shown": "0.05"})
    dropouts: ClassVar[dict[str, float]] = {}


def build(model, options: QloraOptions, context=None):
    from peft import get_peft_model, prepare_model_for_kbit_training

    keep_trainable_layout(model)
    # gradient checkpointing off: on small models it costs more time than the memory it saves
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return get_peft_model(model, options.peft_config(context))


register_method(Method(
    "qlora", QloraOptions, build, quantize="4bit", lr=5e-4, check=check_modules,
    summary="LoRA on a 4-bit NF4 base (bitsandbytes): a quarter of the base model's memory",
))
