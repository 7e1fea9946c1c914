"""Padding-free batches: a batch's examples end to end in one row, each attending only to itself.

A padded batch is as wide as its longest example, and every layer computes the padding. Packed,
the same examples are one row of exactly their tokens: ``position_ids`` restart at each example
(the rotary positions each would have alone) and ``cu_seq_lens_q`` marks where each one starts.
The attention is :func:`packed_attention`, registered with transformers as ``nbkit_packed``: one
causal SDPA call per example, so no token can see another example's (the cross-contamination
packing is known for) and no attention is computed across examples.

transformers' own route, ``position_ids`` alone with ``sdpa``, is not used: in 5.x the model
builds a cache whenever ``use_cache`` is on (the default, in training too), and with a cache the
packed-sequence mask is skipped: every example attends to the ones before it in the row
(``tests/test_packing.py`` shows the difference). The batch's examples, the loss (mean over the
batch's target tokens) and so the updates are the batch's, whether packed or padded.
"""

from __future__ import annotations

ATTENTION = "nbkit_packed"
_registered = False


def packed_attention(module, query, key, value, attention_mask, cu_seq_lens_q=None, **kwargs):
    """SDPA over each example of a packed row (``cu_seq_lens_q``: where each starts, and the end); without
    it, plain SDPA with the mask transformers built (padded batches, evaluation, generation)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds = cu_seq_lens_q.tolist()
    outputs = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                      None, **kwargs)[0] for start, end in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outputs, dim=1), None  # (batch, tokens, heads, head_dim), as sdpa_attention_forward gives


def register() -> None:
    """Make ``nbkit_packed`` an attention implementation transformers knows, masks made as for SDPA."""
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTENTION, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)
    _registered = True


def base_of(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def can_pack(model) -> bool:
    """Whether the model routes its attention through transformers' attention interface (Llama, Qwen, Mistral,
    Gemma, … do; GPT-2-era models with their own attention code do not) and runs it as SDPA or eager."""
    base = base_of(model)
    config = getattr(base, "config", None)
    return bool(getattr(base, "_supports_attention_backend", False)) and \
        getattr(config, "_attn_implementation", None) in ("sdpa", "eager", ATTENTION)


class PackedAttention:
    """``with PackedAttention(model):`` the model attends with ``nbkit_packed`` (a packed row's examples apart, a
    padded batch as SDPA would), and goes back to its own attention after."""

    def __init__(self, model):
        self.config = base_of(model).config
        self.before = None

    def __enter__(self):
        register()
        self.before = self.config._attn_implementation
        self.config._attn_implementation = ATTENTION
        return self

    def __exit__(self, *exc):
        self.config._attn_implementation = self.before
        return False


def pack(batch: list[dict]) -> dict:
    """One row holding every example of ``batch`` end to end: ids, labels (the first token of each example
    never a target, so no example learns to predict the next one's start), positions restarting at 0 for
    each, and ``cu_seq_lens_q``, the offsets where each starts (and the row's end)."""
    import torch

    ids, labels, positions, offsets = [], [], [], [0]
    for b in batch:
        n = len(b["input_ids"])
        ids += b["input_ids"]
        labels += [-100] + list(b["labels"][1:])
        positions += range(n)
        offsets.append(offsets[-1] + n)
    row = lambda values: torch.tensor([values], dtype=torch.long)  # noqa: E731
    return {"input_ids": row(ids), "labels": row(labels), "position_ids": row(positions),
            "cu_seq_lens_q": torch.tensor(offsets, dtype=torch.int32)}


def model_packs(model_config) -> bool:
    """Whether a decoder of this configuration attends through transformers' attention interface (its class
    says so), read before any weights load."""
    from transformers import AutoModelForCausalLM

    try:
        cls = AutoModelForCausalLM._model_mapping[type(model_config)]
    except (KeyError, ValueError):
        return False
    return bool(getattr(cls, "_supports_attention_backend", False))


def pays(device: str) -> bool:
    """Whether ``auto`` packs on ``device``: on the CPU (measured: 1.1-1.3x the step speed and 12-23% less
    peak memory on an AMD EPYC, not faster on an Intel Xeon; bench/README.md), not on GPUs,
    where one attention call per example is a kernel launch each and nothing was measured."""
    return device == "cpu"


def reasons_not(*, method: str, kind: str, objective: str, tasks: int, processes: int, model_config) -> list[str]:
    """Why a run cannot pack its batches (none: it can)."""
    reasons = []
    if kind == "prompt":
        reasons.append(f"{method} puts learned tokens before each example")
    if objective != "sft":
        reasons.append(f"objective {objective!r} batches its own pairs and completions")
    if tasks > 1:
        reasons.append("a multi-task run weighs each example's loss by its task")
    if processes > 1:
        reasons.append("several processes split each batch by its rows")
    if not model_packs(model_config):
        reasons.append("this model's attention does not go through transformers' attention interface")
    return reasons
