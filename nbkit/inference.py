"""Batched forward passes: label scoring by log-likelihood and greedy generation.

Both sort requests by length so each batch pads as little as possible, and
neither loops over examples one forward at a time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Sequence


def _batches(order: Sequence[int], size: int):
    for start in range(0, len(order), size):
        yield order[start:start + size]


def score_choices(model, pad_id: int, contexts: Sequence[list[int]], choices: Sequence[list[int]],
                  batch_size: int = 16, normalize: bool = False):
    """Log-likelihood of every choice after every context.

    Each context is run once: its key/value cache is shared by all choices, so
    scoring C label words costs one pass over the inputs plus C short passes
    over the label tokens, not C passes over everything. The tokens all contexts
    start with (chat header, system prompt, instruction) run once, and every
    batch continues from their cache.

    Args:
        model: a causal LM (``logits`` and ``past_key_values`` outputs).
        pad_id: the padding token id.
        contexts: token ids of each example's input.
        choices: token ids of each label word, as it follows the input.
        batch_size: contexts per forward pass.
        normalize: divide by the choice's token count (length-normalised log-likelihood).

    Returns:
        A float array ``[len(contexts), len(choices)]``.
    """
    import numpy as np
    import torch

    if is_prompt_learning(model):
        return _score_whole(model, pad_id, contexts, choices, batch_size, normalize)
    device = next(model.parameters()).device
    n_choices, longest = len(choices), max(len(c) for c in choices)
    # all but the last choice token are fed through the cache (the context predicts the first)
    tail = torch.full((n_choices, max(longest - 1, 1)), pad_id, dtype=torch.long)
    tail_mask = torch.zeros_like(tail)
    for j, ch in enumerate(choices):
        tail[j, :len(ch) - 1] = torch.tensor(ch[:-1], dtype=torch.long)
        tail_mask[j, :len(ch) - 1] = 1
    shared = shared_prefix(contexts)
    # only the last position's logits are read: not a vocabulary-wide row for every input token
    last = {"logits_to_keep": 1} if takes_logits_to_keep(model) else {}
    order = sorted(range(len(contexts)), key=lambda k: len(contexts[k]))
    scores = np.zeros((len(contexts), n_choices))
    with torch.inference_mode():
        prefix = None
        if shared:  # the text every context starts with (system prompt, instruction) runs once
            prefix = model(input_ids=torch.tensor([contexts[0][:shared]], device=device), use_cache=True)
            prefix = prefix_cache(prefix)
        for batch in _batches(order, batch_size):
            ids, mask, positions = _left_padded([contexts[k] for k in batch], shared, pad_id)
            past = {}
            if prefix is not None:
                key, cache = prefix
                cache = copy.deepcopy(cache)
                cache.batch_repeat_interleave(len(batch))
                past = {key: cache}
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                        position_ids=positions.to(device), use_cache=longest > 1 or bool(past), **past, **last)
            first = out.logits[:, -1].float().log_softmax(-1).cpu()  # predicts each choice's first token
            rest = None
            if longest > 1:
                key, cache = prefix_cache(out)
                cache.batch_repeat_interleave(n_choices)
                step_ids = tail.repeat(len(batch), 1)
                step_mask = torch.cat([mask.repeat_interleave(n_choices, 0), tail_mask.repeat(len(batch), 1)], 1)
                start = positions[:, -1:].repeat_interleave(n_choices, 0) + 1
                step_pos = start + torch.arange(step_ids.shape[1])
                rest = model(input_ids=step_ids.to(device), attention_mask=step_mask.to(device),
                             position_ids=step_pos.to(device), **{key: cache}).logits.float()
                rest = rest.log_softmax(-1).cpu().view(len(batch), n_choices, -1, rest.shape[-1])
                del cache
            for b, k in enumerate(batch):
                for j, ch in enumerate(choices):
                    total = first[b, ch[0]].item()
                    for t in range(1, len(ch)):
                        total += rest[b, j, t - 1, ch[t]].item()
                    scores[k, j] = total / len(ch) if normalize else total
    return scores


def _left_padded(rows: Sequence[list[int]], shared: int, pad_id: int):
    """(ids after the shared prefix, attention mask over prefix + ids, positions of the ids) of rows that
    all start with the same ``shared`` tokens, left-padded so every row ends at the same column."""
    import torch

    width = max(len(r) for r in rows) - shared
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), shared + width), dtype=torch.long)
    mask[:, :shared] = 1
    for b, row in enumerate(rows):
        n = len(row) - shared
        ids[b, width - n:] = torch.tensor(row[shared:])
        mask[b, shared + width - n:] = 1
    positions = ((mask.cumsum(-1) - 1).clamp(min=0))[:, shared:]
    return ids, mask, positions


def _right_padded(rows: Sequence[Sequence[int]], pad_id: int):
    """(ids, attention mask) of ``rows`` right-padded to the longest, as in training."""
    import torch

    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[b, :len(row)] = 1
    return ids, mask


MIN_SHARED = 8  # a shorter common prefix is not worth a pass of its own


def shared_prefix(contexts: Sequence[list[int]]) -> int:
    """Tokens every context starts with (chat header, system prompt, instruction), leaving each
    context at least one token of its own; 0 when fewer than ``MIN_SHARED`` or only one context."""
    if len(contexts) < 2:
        return 0
    first, n = contexts[0], min(len(c) for c in contexts) - 1
    for c in contexts[1:]:
        k = 0
        while k < n and c[k] == first[k]:
            k += 1
        n = k
    return n if n >= MIN_SHARED else 0


def prefix_cache(out) -> tuple[str, object]:
    """(the keyword a model takes its key/value cache back under, the cache) of a forward's output."""
    # transformers >= 5.2x calls the cache `cache`; earlier 5.x `past_key_values`
    key = "cache" if getattr(out, "cache", None) is not None else "past_key_values"
    return key, getattr(out, key)


def takes_logits_to_keep(model) -> bool:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def is_prompt_learning(model) -> bool:
    """Whether ``model`` is a peft model whose active adapter is a learned prompt (soft prompt, prefix)."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def _score_whole(model, pad_id: int, contexts, choices, batch_size: int, normalize: bool):
    """Score every (context + choice) sequence whole, right-padded as in training.

    Learned prompts put virtual tokens before the input (or into the cache, for prefix tuning),
    so the shared-cache path of :func:`score_choices` does not apply. Choices of one token need
    only their context's pass (:func:`completion_logprobs` runs equal sequences once), so
    single-token labels cost one pass per context, as in the cached path.
    """
    import numpy as np

    pairs = [(k, j) for k in range(len(contexts)) for j in range(len(choices))]
    totals = completion_logprobs(model, pad_id, [contexts[k] for k, _ in pairs], [choices[j] for _, j in pairs],
                                 batch_size)
    scores = np.zeros((len(contexts), len(choices)))
    for (k, j), total in zip(pairs, totals):
        scores[k, j] = total / len(choices[j]) if normalize else total
    return scores


def completion_logprobs(model, pad_id: int, contexts: Sequence[list[int]], completions: Sequence[list[int]],
                        batch_size: int = 16) -> list[float]:
    """Sum of the log-probabilities of each completion's tokens after its context.

    Whole sequences, right-padded as in training, sorted by length; works for learned prompts too
    (positions are counted from the end, so virtual tokens before the input do not shift them).
    A pair's sequence is its context and its completion but the last token (which is only
    predicted); pairs with the same sequence, as one context with several one-token completions,
    share one pass. The output head and the softmax run only at the positions that predict a
    completion token. Perplexity is ``exp(-sum / tokens)``.
    """
    import torch

    device = next(model.parameters()).device
    sequences: dict[tuple, list[int]] = {}  # the tokens a forward pass needs -> the pairs it serves
    for i, (context, completion) in enumerate(zip(contexts, completions)):
        if len(completion):
            sequences.setdefault(tuple(context) + tuple(completion[:-1]), []).append(i)
    unique = list(sequences)
    keep_some = takes_logits_to_keep(model)
    totals = [0.0] * len(contexts)
    with torch.inference_mode():
        for batch in _batches(sorted(range(len(unique)), key=lambda u: len(unique[u])), batch_size):
            ids, mask = _right_padded([unique[u] for u in batch], pad_id)
            width = ids.shape[1]
            wanted = []  # (pair, completion tokens, their positions counted from the end of the batch's width)
            for b, u in enumerate(batch):
                for i in sequences[unique[u]]:
                    start = len(contexts[i]) - 1 - width  # the position predicting the first completion token
                    wanted.append((b, i, start + torch.arange(len(completions[i]))))
            positions = torch.unique(torch.cat([w[2] for w in wanted]))  # sorted, negative
            extra = {"logits_to_keep": positions.to(device)} if keep_some else {}
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), **extra).logits
            picked = logits if keep_some else logits[:, positions.to(device)]
            logp = picked.float().log_softmax(-1).cpu()
            column = {int(p): c for c, p in enumerate(positions)}
            for b, i, where in wanted:
                cols = torch.tensor([column[int(p)] for p in where])
                tokens = torch.tensor(completions[i], dtype=torch.long)
                totals[i] = float(logp[b, cols].gather(-1, tokens[:, None]).sum())
    return totals


def prompt_logprobs(model, pad_id: int, sequences: Sequence[list[int]], top_n: int = 0,
                    batch_size: int = 8) -> list[tuple[list, list]]:
    """Each token's log-probability after the tokens before it (the server's ``echo``), and the ``top_n``
    most likely tokens at each position: ``(logprobs, tops)`` per sequence, the first entry of both None
    (nothing predicts the first token). Right-padded batches, sorted by length."""
    import torch

    device = next(model.parameters()).device
    out: list = [None] * len(sequences)
    with torch.inference_mode():
        for batch in _batches(sorted(range(len(sequences)), key=lambda k: len(sequences[k])), batch_size):
            ids, mask = _right_padded([sequences[k] for k in batch], pad_id)
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
            logp = logits[:, -ids.shape[1]:].float().log_softmax(-1).cpu()  # a learned prompt's virtual tokens come first
            for b, k in enumerate(batch):
                n = len(sequences[k])
                steps, tokens = logp[b, :n - 1], torch.tensor(sequences[k][1:], dtype=torch.long)
                own = steps.gather(-1, tokens[:, None])[:, 0].tolist()
                tops: list = [[] for _ in own]
                if top_n:
                    values, indices = steps.topk(top_n, -1)
                    tops = [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]
                out[k] = ([None] + own, [None] + tops)
    return out


# Rows per generate call. On 2 CPU cores a decoding step for 16 rows costs ~2.5x a step for one,
# so 16 generates 32 rows 1.5x faster than batches of 8 (bench/eval_throughput.py); 32 gained nothing more.
GENERATE_BATCH = 16


def generate(model, tokenizer, contexts: Sequence[list[int]], max_new_tokens: int = 64,
             batch_size: int = GENERATE_BATCH) -> list[str]:
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
    return [tokenizer.decode(g.ids, skip_special_tokens=True).strip()
            for g in generate_tokens(model, tokenizer, contexts, max_new_tokens, batch_size)]


@dataclass
class Generated:
    """One completion: its token ids (up to, not including, the end token), why it stopped, and
    with ``logprobs`` the log-probability of each token and the ``top`` alternatives at each step
    (one more entry than ``ids`` when the end token ended it: the end token's own)."""

    ids: list[int]
    finish: str  # "stop" (end token or stop string) or "length"
    logprobs: list[float] | None = None
    top: list[list[tuple[int, float]]] | None = None


def generate_tokens(model, tokenizer, contexts: Sequence[list[int]], max_new_tokens: int = 64,
                    batch_size: int = GENERATE_BATCH,
                    *, logprobs: int | None = None, temperature: float = 0.0, top_p: float = 1.0,
                    stop: Sequence[str] = (), streamer=None, should_stop=None) -> list[Generated]:
    """Completions of each context, batched with left padding: greedy, or sampled with ``temperature``.

    Args:
        logprobs: also return each token's log-probability (under the model, before sampling
            settings) and this many most likely alternatives per step (0: the token's own only).
        stop: strings that end a completion (the server's ``stop``); the text is cut before them
            by the caller, generation stops once one appears.
        streamer: a transformers streamer (one context only).
        should_stop: called between steps; generation ends (``finish`` is ``length``) once it returns
            True (the server's client went away, or its deadline passed).
    """
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(contexts)), key=lambda k: len(contexts[k]))
    results: list[Generated | None] = [None] * len(contexts)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {"do_sample": False}
    extra = {"stop_strings": list(stop), "tokenizer": tokenizer} if stop else {}
    if should_stop is not None:
        extra["stopping_criteria"] = _halting(should_stop)
    with torch.inference_mode():
        for batch in _batches(order, batch_size):
            width = max(len(contexts[k]) for k in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for b, k in enumerate(batch):  # left padding: every row ends where generation starts
                n = len(contexts[k])
                ids[b, width - n:] = torch.tensor(contexts[k])
                mask[b, width - n:] = 1
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                pad_token_id=pad, eos_token_id=eos, return_dict_in_generate=True,
                output_logits=logprobs is not None, streamer=streamer, **sampling, **extra,
            )
            new = out.sequences[:, width:].cpu()
            steps = torch.stack(out.logits, 1).float().log_softmax(-1).cpu() if logprobs is not None else None
            for b, k in enumerate(batch):
                row, finish, scored = new[b].tolist(), "length", None
                if eos in row:
                    row, finish = row[:row.index(eos)], "stop"
                    scored = row + [eos]  # the end token's log-probability is kept (echo answers list it)
                elif stop and row and row[-1] == pad:  # a stop string ended it; the rest is padding
                    row, finish = row[:len(row) - _trailing(row, pad)], "stop"
                gen = Generated(row, finish)
                if steps is not None:
                    scored = scored or row
                    gen.logprobs = [float(steps[b, t, tok]) for t, tok in enumerate(scored)]
                    if logprobs:
                        values, indices = steps[b, :len(scored)].topk(logprobs, -1)
                        gen.top = [list(zip(i.tolist(), v.tolist())) for i, v in zip(indices, values)]
                    else:
                        gen.top = [[] for _ in scored]
                results[k] = gen
    return results


def _halting(should_stop):
    """A transformers stopping criterion that ends every row once ``should_stop()`` is true."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Halt(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), bool(should_stop()), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Halt()])


def _trailing(row: list[int], pad: int) -> int:
    n = 0
    while n < len(row) and row[len(row) - 1 - n] == pad:
        n += 1
    return n
