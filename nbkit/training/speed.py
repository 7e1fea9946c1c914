"""What a decoder run does to go faster, decided once before any weights load: packing and compiling.

Compiling is said in one line before training when it is on; packing is not (it computes the same
losses). An impossible ``--packing on`` or ``--compile on`` is an error naming the reason, before
anything loads; ``auto`` turns either on only where it can work and was measured to pay.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import TuneConfig
from ..errors import ConfigError
from . import compiling, packing


@dataclass(frozen=True)
class Speed:
    packed: bool = False  # batches are packed rows (nbkit.training.packing)
    compiled: bool = False  # each layer is torch.compile'd (nbkit.training.compiling)
    fallback: bool = False  # chosen by auto: a layer that fails to compile runs eagerly


def plan(cfg: TuneConfig, spec, objective: str, tasks: int, processes: int, model_config, steps: int,
         device: str, emit=None) -> Speed:
    """The run's :class:`Speed` from its settings, method, objective, tasks, processes, model and steps."""
    why = packing.reasons_not(method=cfg.method, kind=spec.kind, objective=objective, tasks=tasks,
                              processes=processes, model_config=model_config)
    if cfg.packing == "on" and why:
        raise ConfigError("packing", f"cannot be on: {why[0]}; leave it auto or off")
    packed = not why and (cfg.packing == "on" or cfg.packing == "auto" and packing.pays(device))
    if objective != "sft":  # TRL's trainers build their own batches and model calls
        if cfg.compile == "on":
            raise ConfigError("compile", f"cannot be on with objective {objective!r}: TRL's trainer runs the model; "
                              "leave it auto or off")
        compiled = False
    else:
        compiled = compiling.decide(cfg.compile, steps=steps, kind=spec.kind, quantize=spec.quantize,
                                    checkpointing=cfg.gradient_checkpointing, device=device)
    if emit is not None and compiled:
        emit.on_note(f"compiling each layer with torch.compile ({steps} steps; the first ones wait for it, 20-50 s "
                     "measured on a CPU; --compile off skips it)")
    return Speed(packed, compiled, fallback=compiled and cfg.compile == "auto")
