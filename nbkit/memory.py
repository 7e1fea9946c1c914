"""Memory estimates from a model's configuration, before any weights load.

``%tune`` prints the estimate with what the device has, warns when it will
not fit and says what to change; an out-of-memory error during training is
answered with the same estimate instead of a raw CUDA trace. The estimate is
deliberately simple (weights + gradients + Adam states + activations) and
errs high: it is for deciding, not for accounting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def estimate_parameters(config) -> int:
    """Parameters of a decoder from its config (embeddings, attention, gated MLP); 0 if unknown."""
    h = getattr(config, "hidden_size", None)
    layers = getattr(config, "num_hidden_layers", None)
    vocab = getattr(config, "vocab_size", None)
    if not (h and layers and vocab):
        return 0
    heads = getattr(config, "num_attention_heads", None) or 1
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    inter = getattr(config, "intermediate_size", None) or 4 * h
    attention = 2 * h * heads * head_dim + 2 * h * kv
    mlp = 3 * h * inter
    embeddings = vocab * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return int(layers * (attention + mlp + 2 * h) + embeddings + h)


@dataclass
class Estimate:
    """Bytes a training run needs, by part, and what the device has."""

    weights: int
    optimizer: int  # gradients + Adam moments of the trainable parameters
    activations: int
    available: int | None
    device: str

    @property
    def total(self) -> int:
        return self.weights + self.optimizer + self.activations

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= 0.9 * self.available

    def suggestions(self, method: str, batch_size: int, gradient_checkpointing: bool) -> list[str]:
        """What to change, largest saving first."""
        out = []
        if method in ("full", "lora", "dora") and self.weights > 0.25 * self.total:
            out.append("--method qlora (4-bit base: about a quarter of the weights' memory)")
        if not gradient_checkpointing and self.activations > 0.2 * self.total:
            out.append("--gradient-checkpointing (recompute activations in the backward pass)")
        if batch_size > 1 and self.activations > 0.2 * self.total:
            out.append(f"--batch-size {max(1, batch_size // 2)} --grad-accum 2 (same effective batch)")
        if method == "full":
            out.append("--method lora (no gradients or Adam states for the base weights)")
        return out or ["a smaller model"]

    def describe(self) -> str:
        gib = 2 ** 30
        have = f" of {self.available / gib:.1f} GiB available" if self.available else ""
        return (f"~{self.total / gib:.2f} GiB estimated on {self.device}{have} "
                f"(weights {self.weights / gib:.2f}, optimizer {self.optimizer / gib:.2f}, "
                f"activations {self.activations / gib:.2f})")


def available_memory(device: str) -> int | None:
    """Free bytes on ``device``: CUDA's free memory, or the RAM this process may still use: the machine's
    available memory, or less where a container's memory limit says so (Binder gives a session ~2 GB of a
    machine whose /proc/meminfo shows far more)."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    free = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    free = int(line.split()[1]) * 1024
    except OSError:
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    room = container_room()
    return room if free is None else free if room is None else min(free, room)


def container_room(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 ``memory.max``, or v1 ``memory.limit_in_bytes``),
    or None without a limit. The page cache counts towards the usage but the kernel reclaims it before it
    kills anything, so it is added back."""
    base = Path(root)
    try:
        lines = Path(proc).read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, where = line.split(":", 2)
        if controllers == "":  # v2: one unified hierarchy
            folder = base / where.lstrip("/")
            limit, usage, stat = folder / "memory.max", folder / "memory.current", folder / "memory.stat"
            cache_key = "file"
        elif "memory" in controllers.split(","):
            folder = base / "memory" / where.lstrip("/")
            limit, usage, stat = folder / "memory.limit_in_bytes", folder / "memory.usage_in_bytes", folder / "memory.stat"
            cache_key = "total_cache"
        else:
            continue
        try:
            text = limit.read_text().strip()
            if text == "max" or int(text) >= 2 ** 60:  # no limit (v1 writes a huge number)
                continue
            used = int(usage.read_text())
            cache = next((int(v) for k, v in (ln.split() for ln in stat.read_text().splitlines()) if k == cache_key), 0)
        except (OSError, ValueError):
            continue
        return max(0, int(text) - used + cache)
    return None


def estimate_training(config, *, method_kind: str, quantize: str | None, trainable: int | None,
                      batch_size: int, seq_len: int, weight_bytes: int, gradient_checkpointing: bool,
                      device: str, available: int | None = None) -> Estimate:
    """Estimate the memory of one training run.

    Args:
        config: the model's transformers config.
        method_kind: ``adapter``, ``prompt`` or ``full``.
        quantize: ``None``, ``4bit`` or ``8bit``.
        trainable: trainable parameters if known (else ~1% of the model for adapters).
        batch_size, seq_len: the largest batch the run will see.
        weight_bytes: bytes per unquantized weight (4 for fp32, 2 for bf16).
        gradient_checkpointing: whether activations are recomputed.
        device: where it trains.
        available: free bytes (default: measured).
    """
    n = estimate_parameters(config)
    h = getattr(config, "hidden_size", 0) or 0
    vocab = getattr(config, "vocab_size", 0) or 0
    layers = getattr(config, "num_hidden_layers", 0) or 0
    embeddings = vocab * h
    per_weight = {"4bit": 0.5 + 0.05, "8bit": 1.0}.get(quantize or "", weight_bytes)
    weights = int((n - embeddings) * per_weight + embeddings * weight_bytes)  # embeddings stay unquantized
    if trainable is None:
        trainable = n if method_kind == "full" else max(1, n // 100)
    optimizer = trainable * (4 + 8)  # fp32 gradient + two Adam moments
    tokens = batch_size * seq_len
    # per layer and token ~34·h bytes of saved activations in 16-bit (Korthikanti et al.), doubled for fp32;
    # with checkpointing only each layer's input is kept; plus fp32 logits and their gradient
    per_layer = (2 * h * weight_bytes) if gradient_checkpointing else 17 * h * weight_bytes
    activations = int(tokens * (layers * per_layer + 2 * vocab * 4))
    return Estimate(weights, optimizer, activations,
                    available if available is not None else available_memory(device), device)
