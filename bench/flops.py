"""FLOPs of a LoRA training step, and the machine's measured matrix-multiply peak.

Model FLOPs count the useful work only: real (non-padding) tokens, no recomputation
(activation checkpointing does not add to them), one multiply-add = 2 FLOPs.
For a decoder with frozen linear weights ``N_lin`` (every projection of every layer, plus the
output head, tied or not: it is a matmul all the same) and LoRA weights ``N_lora``, one
sequence of ``s`` real tokens costs

    forward     2 * N_lin * s  +  2 * N_lora * s  +   4 * L * d * s**2
    backward    2 * N_lin * s  +  4 * N_lora * s  +   8 * L * d * s**2
                (frozen weights: gradients of their inputs only, no weight gradients;
                 LoRA weights: both; attention: QK^T and AV both ways)
    total       s * (4 * N_lin + 6 * N_lora)  +  12 * L * d * s**2

with ``L`` layers and ``d`` the width of the attention (heads x head size). The attention term
is the dense one (PaLM's convention, not halved for the causal mask). Embedding look-ups,
norms, activations and softmax are left out (they are not matmuls and are a few percent).
Full fine-tuning would be ``6 * N`` per token; LoRA saves the weight gradients, a third.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    """What the FLOP count needs from a Llama-style config."""

    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int

    @classmethod
    def of(cls, config) -> "Shape":
        return cls(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                   config.num_attention_heads, getattr(config, "num_key_value_heads", None)
                   or config.num_attention_heads, config.vocab_size)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def linears(self) -> list[tuple[int, int]]:
        """(in, out) of every projection in one layer: q, k, v, o, gate, up, down."""
        d, kv, f = self.hidden, self.kv_heads * self.head_dim, self.intermediate
        return [(d, d), (d, kv), (d, kv), (d, d), (d, f), (d, f), (f, d)]

    def linear_params(self) -> int:
        """Weights the matmuls of one token touch: every layer's projections and the output head."""
        return self.layers * sum(i * o for i, o in self.linears()) + self.vocab * self.hidden

    def lora_params(self, r: int) -> int:
        """LoRA on every projection of every layer (peft's ``all-linear``, which skips the head)."""
        return self.layers * sum(r * (i + o) for i, o in self.linears())


def lora_step_flops(shape: Shape, lengths, r: int) -> float:
    """Model FLOPs of forward + backward over sequences of these real lengths (the formula above)."""
    n_lin, n_lora = shape.linear_params(), shape.lora_params(r)
    attention = 12 * shape.layers * shape.heads * shape.head_dim
    return float(sum(s * (4 * n_lin + 6 * n_lora) + attention * s * s for s in lengths))


def matmul_peak(dtype: str = "float32", n: int = 2048, seconds: float = 3.0, device: str = "cpu") -> float:
    """FLOP/s of an ``n x n @ n x n`` matmul in ``dtype`` on ``device`` (the CPU's threads by default; best of a
    few runs)."""
    import torch

    kind = getattr(torch, dtype)
    a, b = torch.randn(n, n).to(device, kind), torch.randn(n, n).to(device, kind)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)  # CUDA work is asynchronous
    a @ b  # warm-up: thread pool, packing buffers
    sync()
    best, spent = float("inf"), 0.0
    while spent < seconds:
        started = time.perf_counter()
        a @ b
        sync()
        took = time.perf_counter() - started
        best, spent = min(best, took), spent + took
    return 2 * n ** 3 / best
