"""Batched forward passes: label scoring by log-likelihood and greedy generation.

Both sort requests by length so each batch pads as little as possible, and
neither loops over examples one forward at a time.
"""

from __future__ import annotations

from typing import Sequence


def _batches(order: Sequence[int], size: int):
    for start in range(0, len(order), size):
        yield order[start:start + size]


def score_choices(model, pad_id: int, contexts: Sequence[list[int]], choices: Sequence[list[int]],
                  batch_size: int = 16, normalize: bool = False):
    """Log-likelihood of every choice after every context.

    Args:
        model: a causal LM (``logits`` output).
        pad_id: the padding token id.
        contexts: token ids of each example's input.
        choices: token ids of each label word, as it follows the input.
        batch_size: sequences per forward pass.
        normalize: divide by the choice's token count (length-normalised log-likelihood).

    Returns:
        A float array ``[len(contexts), len(choices)]``.
    """
    import numpy as np
    import torch

    device = next(model.parameters()).device
    items = [(i, j, list(ctx) + list(ch), len(ctx), len(ch)) for i, ctx in enumerate(contexts) for j, ch in enumerate(choices)]
    order = sorted(range(len(items)), key=lambda k: len(items[k][2]))
    scores = np.zeros((len(contexts), len(choices)))
    with torch.inference_mode():
        for batch in _batches(order, batch_size):
            width = max(len(items[k][2]) for k in batch)
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, k in enumerate(batch):
                seq = items[k][2]
                ids[b, :len(seq)] = torch.tensor(seq)
                mask[b, :len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            for b, k in enumerate(batch):
                i, j, seq, n_ctx, n_ch = items[k]
                # the logits at position t predict token t + 1
                rows = logits[b, n_ctx - 1:n_ctx + n_ch - 1].log_softmax(-1)
                picked = rows.gather(-1, ids[b, n_ctx:n_ctx + n_ch, None].to(device)).sum().item()
                scores[i, j] = picked / n_ch if normalize else picked
    return scores


def generate(model, tokenizer, contexts: Sequence[list[int]], max_new_tokens: int = 64, batch_size: int = 8) -> list[str]:
    """Greedy completions of each context, batched with left padding.

    Args:
        model: a causal LM.
        tokenizer: decodes the new tokens and names the pad / end tokens.
        contexts: token ids of each input.
        max_new_tokens: the longest completion.
        batch_size: inputs per ``generate`` call.

    Returns:
        The decoded completions, in the order of ``contexts``.
    """
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(contexts)), key=lambda k: len(contexts[k]))
    outputs: list[str] = [""] * len(contexts)
    pad = tokenizer.pad_token_id
    with torch.inference_mode():
        for batch in _batches(order, batch_size):
            width = max(len(contexts[k]) for k in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, k in enumerate(batch):  # left padding: every row ends where generation starts
                n = len(contexts[k])
                ids[b, width - n:] = torch.tensor(contexts[k])
                mask[b, width - n:] = 1
            new = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id,
            )[:, width:]
            for b, k in enumerate(batch):
                outputs[k] = tokenizer.decode(new[b], skip_special_tokens=True).strip()
    return outputs
