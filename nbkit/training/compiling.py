"""``torch.compile`` for training, where it pays: each transformer layer compiled on its own.

Compiling the whole PEFT model breaks its graph at every adapter check and recompiles as batch
widths change; compiling each decoder layer (``dynamic=True``: one graph for every width) fuses
the elementwise chain inside it (norms, SiLU, rotary, LoRA's scaling and sums) and leaves the
rest eager. Measured on the embedded model, 2 CPU cores (bench/README.md): 20-50 s of compilation
once, then steps 1.16x faster on a Xeon with AMX and no faster at all on an AMD EPYC (0.9-1.0x).
So ``auto`` never compiles on the CPU; on CUDA, where fusing saves a kernel launch per elementwise
operation, it compiles runs of :data:`AUTO_STEPS` steps or more (not measured here: no GPU yet).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil

AUTO_STEPS = 200


def compiler_missing(device: str) -> str | None:
    """Why torch.compile cannot build kernels here (inductor needs a C++ compiler for the CPU, Triton for
    CUDA), or None."""
    if device.startswith("cuda"):
        return None if importlib.util.find_spec("triton") else "Triton is not installed"
    if device != "cpu":
        return f"nbkit compiles on the CPU and CUDA only, not {device}"
    compilers = [os.environ.get("CXX"), "g++", "c++", "clang++"]
    return None if any(c and shutil.which(c) for c in compilers) else "no C++ compiler (g++ or clang++) is on PATH"


def decide(setting: str, *, steps: int, kind: str, quantize, checkpointing: bool, device: str) -> bool:
    """Whether a run compiles its layers: ``on`` (or an error saying why it cannot), ``off``, or ``auto``: where
    it :func:`pays`, for an adapter or full fine-tuning on an unquantized base, without gradient checkpointing
    (whose recomputation compiling would not speed up)."""
    from ..errors import ConfigError

    reasons = []
    missing = compiler_missing(device)
    if missing:
        reasons.append(missing)
    if kind == "prompt":
        reasons.append("learned prompts feed the layers a prefix cache the compiled graph would recompile for")
    if quantize:
        reasons.append("bitsandbytes' 4-bit layers run their own kernels")
    if setting == "on":
        if reasons:
            raise ConfigError("compile", f"cannot be on: {reasons[0]}; leave it auto or off")
        return True
    return setting == "auto" and pays(steps, device) and not reasons and not checkpointing and compiles_here(device)


def pays(steps: int, device: str) -> bool:
    """Whether ``auto`` expects compiling to repay its wait: never on the CPU (measured: no gain on one of two
    CPUs), on CUDA from :data:`AUTO_STEPS` steps."""
    return device.startswith("cuda") and steps >= AUTO_STEPS


@functools.cache
def compiles_here(device: str) -> bool:
    """Whether torch.compile builds and runs a small function on ``device`` in this process (a compiler that
    cannot link, a missing OpenMP, …): ``auto`` compiles only then, in a few seconds once per process."""
    import torch

    try:
        double = torch.compile(lambda x: torch.nn.functional.silu(x) * 2 + 1, dynamic=True)
        x = torch.arange(6.0, device=device)
        return bool(torch.allclose(double(x), torch.nn.functional.silu(x) * 2 + 1))
    except Exception:  # noqa: BLE001  (any failure means: do not compile the run)
        return False


def compile_layers(model, fallback: bool = False) -> int:
    """Compile each transformer layer of ``model`` in place (``dynamic=True``); how many were compiled. With
    ``fallback`` (compiling chosen by ``auto``), a layer that fails to compile runs eagerly instead of failing
    the run."""
    import torch
    from transformers.modeling_layers import GradientCheckpointingLayer

    torch._dynamo.config.suppress_errors = fallback

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    for layer in layers:
        layer.compile(dynamic=True)
    return len(layers)
