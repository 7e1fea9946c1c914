"""Where a model runs and in what precision: devices, matmul dtypes, quantization configs."""

from __future__ import annotations

import importlib.util
import os

from ..errors import ConfigError, MissingDependencyError, install_extra

QUANTIZE = (None, "4bit", "8bit")


def pick_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` if present, else ``mps``, else ``cpu``."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def compute_dtype(device: str):
    """The dtype matmuls run in: bf16 on GPUs that have it, fp16 on older GPUs, fp32 elsewhere.

    fp32 on CPU and MPS because training there in half precision loses updates
    without a loss scaler, and the CPU kernels are not faster for 16-bit inputs
    in every build.
    """
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def autocast_precision(device: str) -> str:
    """What training autocasts to on ``device`` by default: ``bf16``, ``fp16`` or ``fp32``.

    GPUs take bf16 when they have it, fp16 otherwise. CPUs stay in fp32 for now:
    the gain depends on the CPU (none without AVX512-BF16 or AMX), and every saved
    notebook output and test bar was made in fp32. On a 2-core AVX512-BF16 CPU a
    two-epoch LoRA run with ``precision="bf16"`` trained 1.25x faster and scored
    0.775 against fp32's 0.787 on sample:intent (bench/README.md, "bf16 over a
    whole run"); an earlier measurement there had found no end-to-end gain.
    """
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def quantization_config(quantize: str | None, device: str):
    """The ``BitsAndBytesConfig`` for ``"4bit"`` (NF4, double quant) or ``"8bit"``."""
    if quantize not in QUANTIZE:
        raise ConfigError("quantize", f"must be one of 4bit, 8bit or None, got {quantize!r}")
    if quantize is None:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependencyError("bitsandbytes", f"{quantize} quantization (QLoRA)",
                                     install_extra("quant") + ", or use --method lora on a full-precision base")
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    fsdp = {}
    if under_fsdp():  # FSDP shards float tensors only: the 4-bit weights are packed in the compute dtype
        fsdp["bnb_4bit_quant_storage"] = compute_dtype(device)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(device),
        **fsdp,
    )


def under_fsdp() -> bool:
    """Launched by ``accelerate launch`` with an FSDP config (it sets ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
