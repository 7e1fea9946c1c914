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
    """Bytes a training run needs, by part, and what the device has.

    On the CPU ``total`` is the process's whole peak resident memory: ``resident`` is what it held when
    the estimate was made (libraries, data, an earlier evaluation), and ``available`` is that plus what
    the machine or its container still has free, so the two compare directly.
    """

    weights: int
    optimizer: int  # gradients + Adam moments of the trainable parameters
    activations: int
    available: int | None
    device: str
    resident: int = 0
    plan: str = ""  # "", "checkpointing", "freed-memory" or "low-memory" (both): what nbkit turned on to fit

    @property
    def total(self) -> int:
        return self.resident + self.weights + self.optimizer + self.activations

    @property
    def returns_freed_memory(self) -> bool:
        return self.plan in ("freed-memory", "low-memory")

    @property
    def fits(self) -> bool:
        return self.available is None or self.total <= 0.9 * self.available

    def suggestions(self, method: str, batch_size: int, gradient_checkpointing: bool) -> list[str]:
        """What to change, largest saving first."""
        out = []
        need = self.total - self.resident
        if method in ("full", "lora", "dora") and self.weights > 0.25 * need:
            out.append("--method qlora (4-bit base: about a quarter of the weights' memory)")
        if not gradient_checkpointing and self.activations > 0.2 * need:
            out.append("--gradient-checkpointing (recompute activations in the backward pass)")
        if batch_size > 1 and self.activations > 0.2 * need:
            out.append(f"--batch-size {max(1, batch_size // 2)} --grad-accum 2 (same effective batch)")
        if method == "full":
            out.append("--method lora (no gradients or Adam states for the base weights)")
        return out or ["a smaller model"]

    def describe(self) -> str:
        gib = 2 ** 30
        have = f" of {self.available / gib:.1f} GiB available" if self.available else ""
        held = f"held already {self.resident / gib:.2f}, " if self.resident else ""
        plan = {"checkpointing": ", with gradient checkpointing", "freed-memory": ", with freed memory returned at once",
                "low-memory": ", with gradient checkpointing and freed memory returned at once"}.get(self.plan, "")
        return (f"~{self.total / gib:.2f} GiB estimated on {self.device}{have}{plan} "
                f"({held}weights {self.weights / gib:.2f}, optimizer {self.optimizer / gib:.2f}, "
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
    found = _container(root, proc)
    return None if found is None else max(0, found[0] - found[1] + found[2])


def container_limit(root: str = "/sys/fs/cgroup", proc: str = "/proc/self/cgroup") -> int | None:
    """This process's cgroup memory limit in bytes, or None without one."""
    found = _container(root, proc)
    return None if found is None else found[0]


def _container(root: str, proc: str) -> tuple[int, int, int] | None:
    """(limit, usage, page cache) of the first memory cgroup of this process that has a limit."""
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
        return int(text), used, cache
    return None


def status_kib(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def resident_memory() -> int:
    """This process's resident memory now (VmRSS), in bytes; 0 where /proc does not say."""
    return (status_kib("VmRSS") or 0) * 1024


def _glibc():
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_freed_memory() -> bool:
    """Free what is unreachable and give the memory this process freed back to the system now (``gc`` and
    glibc's ``malloc_trim``): a finished training run's model and trainer live in reference cycles, and
    glibc keeps freed heap memory resident, counted against a container's limit, until it happens to
    reuse it. Whether the trim could be asked for (glibc only)."""
    import gc

    gc.collect()
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0) >= 0)


def return_freed_memory_at_once(on: bool = True) -> bool:
    """Give every large block (128 KiB and more) back to the system as soon as it is freed, or (``on=False``)
    stop doing so.

    glibc raises its mmap threshold as large blocks are freed, so a training step's activations come
    from the heap, whose freed blocks stay resident: measured 2.5 GiB of peak for 1.3 GiB with a fixed
    threshold, on the embedded model with checkpointing. It costs time (fresh pages at every step:
    2x the time with checkpointing's 1.4x, bench/README.md), so nbkit does it only for a run that
    would not fit otherwise, and ends it with the run: the threshold goes to 32 MiB, where glibc's own
    would have risen to. Whether it could (glibc only)."""
    libc = _glibc()
    return bool(libc and libc.mallopt(-3, 128 * 1024 if on else 32 * 2 ** 20))  # M_MMAP_THRESHOLD


def estimate_training(config, *, method_kind: str, quantize: str | None, trainable: int | None,
                      batch_size: int, seq_len: int, weight_bytes: int, gradient_checkpointing: bool,
                      device: str, available: int | None = None, resident: int | None = None,
                      dropout: bool = False, low_memory: bool = False, packed_tokens: int | None = None) -> Estimate:
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
        resident: on the CPU, bytes the process holds now (default: measured); they count in the peak.
        dropout: whether an adapter drops out the input of every adapted layer (LoRA's dropout).
        low_memory: on the CPU, whether freed memory goes back to the system at once (:func:`return_freed_memory_at_once`).
        packed_tokens: for packed batches (``nbkit.training.packing``), the tokens of the largest packed row, in
            place of ``batch_size * seq_len``.
    """
    n = estimate_parameters(config)
    h = getattr(config, "hidden_size", 0) or 0
    vocab = getattr(config, "vocab_size", 0) or 0
    embeddings = vocab * h
    per_weight = {"4bit": 0.5 + 0.05, "8bit": 1.0}.get(quantize or "", weight_bytes)
    weights = int((n - embeddings) * per_weight + embeddings * weight_bytes)  # embeddings stay unquantized
    if trainable is None:
        trainable = n if method_kind == "full" else max(1, n // 100)
    optimizer = trainable * (4 + 8)  # fp32 gradient + two Adam moments
    cpu = device == "cpu"
    activations = activation_bytes(config, packed_tokens or batch_size * seq_len, act_bytes=weight_bytes,
                                   dropout=dropout, all_logits=method_kind == "prompt",
                                   checkpointing=gradient_checkpointing, cpu=cpu, low_memory=low_memory,
                                   packed=packed_tokens is not None)
    if quantize and not gradient_checkpointing:  # each layer's weights, dequantized, are kept for its backward
        activations += int((n - embeddings) * weight_bytes * (1.25 if cpu else 1.0))
    if cpu and resident is None:
        resident = resident_memory()
    if cpu and quantize:  # quantized weights were made in memory (resident already); the embeddings load lazily
        weights = embeddings * weight_bytes
    measured = available is None
    if measured:
        available = available_memory(device)
    if cpu and available is not None:  # what is free, plus what the process holds, and never over a container's limit
        available += resident or 0
        limit = container_limit() if measured else None
        available = min(available, limit) if limit else available
    return Estimate(weights, optimizer, activations, available, device, resident=(resident or 0) if cpu else 0,
                    plan=("low-memory" if gradient_checkpointing else "freed-memory") if low_memory
                    else "checkpointing" if gradient_checkpointing else "")


def activation_bytes(config, tokens: int, *, act_bytes: int, dropout: bool, all_logits: bool, checkpointing: bool,
                     cpu: bool, low_memory: bool, packed: bool = False) -> int:
    """Bytes of activations at the peak of a step over ``tokens`` tokens (the longest batch).

    Per layer and token autograd keeps about 7h + 3kv + 4i values of a Llama-shaped decoder (h the
    width, kv the keys' width, i the MLP's; counted 18.7h and measured 19.7h on SmolLM2), and LoRA's
    dropout keeps a dropped copy and a mask of every adapted layer's input (6h + i, measured with
    the rest 32.3h). The output head runs on the target positions only, except under learned prompts.
    On the CPU glibc keeps freed blocks for reuse rather than returning them, which is measured, not
    derived: about 1.25x the saved values without checkpointing and 0.7x with it (the recomputed
    layers land in fresh blocks); once freed memory is returned at once, the saved values alone, or
    with checkpointing the saved layer inputs plus a few layers' worth (bench/README.md, "Memory").
    A packed row (one SDPA call per example, no attention mask) was measured at about 0.8x a padded
    batch's bytes per token on SmolLM2, at lengths 128 and 256 alike: on the CPU 1.1x the saved values,
    and 0.5x with checkpointing.
    """
    h = getattr(config, "hidden_size", 0) or 0
    layers = getattr(config, "num_hidden_layers", 0) or 0
    vocab = getattr(config, "vocab_size", 0) or 0
    heads = getattr(config, "num_attention_heads", None) or 1
    kv = (getattr(config, "num_key_value_heads", None) or heads) * (getattr(config, "head_dim", None) or h // max(1, heads))
    inter = getattr(config, "intermediate_size", None) or 4 * h
    per_layer = (7 * h + 3 * kv + 4 * inter) * act_bytes + ((6 * h + inter) * (act_bytes + 1) if dropout else 0)
    logits = 3 * vocab * 4 if all_logits else 0  # fp32 logits, their log-softmax and its gradient
    saved = tokens * (layers * per_layer + logits)
    if not checkpointing:
        return int(saved * ((1.1 if packed else 1.25) if cpu and not low_memory else 1.0))
    kept = tokens * (layers * h * act_bytes + 3 * per_layer + logits)  # layer inputs, one layer redone, its gradients
    if not cpu or low_memory:
        return int(kept)
    return int(max(kept, (0.5 if packed else 0.7) * saved))
