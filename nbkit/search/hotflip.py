"""The ``gradient`` search strategy: trigger tokens found by HotFlip (AutoPrompt, Shin et al., 2020).

Trigger tokens are appended to the instruction and improved one position per step: the
gradient of the label loss with respect to that trigger's input embedding ranks every
vocabulary token by how much swapping it in should lower the loss (first-order), and the
best few are tried for real.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Sequence

from ..encoding import encode_choice
from ..errors import ConfigError
from ..prompts import Prompt
from .candidates import instruction_of

MARK = "\x00TRIGGER\x00"


_WORDS: dict = {}


def _word_tokens(tokenizer) -> list[int]:
    """Token ids that decode to a space and a plain word: readable triggers that survive re-tokenizing."""
    key = (tokenizer.name_or_path, len(tokenizer))
    if key not in _WORDS:
        special = set(tokenizer.all_special_ids)
        texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
        _WORDS[key] = [i for i, text in enumerate(texts)
                       if i not in special and re.fullmatch(r" [A-Za-z]{2,15}", text)]
    return _WORDS[key]


def with_triggers(p: Prompt, text: str) -> Prompt:
    """``p`` with ``text`` right after its instruction (before the line with the first variable)."""
    instruction = instruction_of(p)
    if instruction:
        template = p.template.replace(instruction, instruction + text, 1)
    else:
        template = text.lstrip() + "\n" + p.template
    return Prompt.from_dict({**p.to_dict(), "template": template})


def autoprompt(prompt: Prompt, loaded, rows: Sequence[dict], *, triggers: int = 4, steps: int = 8,
               candidates: int = 8, batch: int = 16, seed: int = 0, progress: Callable | None = None):
    """Trigger tokens after ``prompt``'s instruction that lower the label loss on ``rows``.

    Args:
        prompt: a prompt with ``choices`` (the loss is the label's negative log-likelihood).
        loaded: the :class:`nbkit.models.Model` (its base weights; no adapter).
        rows: training rows the triggers are fitted on (never the dev or test rows).
        triggers: how many trigger tokens.
        steps: HotFlip steps; each updates one trigger position (in turn).
        candidates: replacements per step tried with a real forward pass.
        batch: rows per step.

    Returns:
        ``(prompt with triggers, history)``: history has the loss before and after each step.
    """
    import torch

    if not prompt.choices:
        raise ConfigError("strategy", "gradient search optimises the label likelihood: the prompt needs --choices")
    for name, value in (("triggers", triggers), ("steps", steps), ("candidates", candidates)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(name, f"must be a positive integer, got {value!r}")
    tok = loaded.tokenizer
    vocab = torch.tensor(_word_tokens(tok))
    examples = _encode(prompt, rows, tok)
    rng = random.Random(seed)
    start = tok(" the", add_special_tokens=False)["input_ids"]
    current = [start[0]] * triggers
    history = []

    with loaded.adapter(None) as lm:
        frozen = [(p, p.requires_grad) for p in lm.parameters()]
        for p, _ in frozen:
            p.requires_grad_(False)
        try:
            for step in range(steps):
                chosen = rng.sample(examples, min(batch, len(examples)))
                position = step % triggers
                best, before, after = _hotflip_step(lm, tok, vocab, current, chosen, position, candidates)
                history.append({"step": step + 1, "position": position, "loss_before": round(before, 4),
                                "loss_after": round(after, 4), "triggers": tok.decode(best)})
                current = best
                if progress:
                    progress(history[-1])
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
    found = with_triggers(prompt, tok.decode(current))
    return found, history


def _encode(prompt: Prompt, rows, tok) -> list[tuple[list[int], list[int], list[int]]]:
    """``(ids before the triggers, ids after them, the label's ids)`` of each row."""
    marked = with_triggers(prompt, MARK)
    examples = []
    for row in rows:
        before, after = marked.format(row, tok).split(MARK)
        examples.append((tok(before, add_special_tokens=False)["input_ids"],
                         tok(after, add_special_tokens=False)["input_ids"],
                         encode_choice(prompt, prompt.render_target(row), tok)))
    return examples


def _hotflip_step(lm, tok, vocab, current: list[int], chosen, position: int, candidates: int):
    """One HotFlip step at trigger ``position``: ``(best triggers, loss before, loss after)``."""
    import torch

    device = next(lm.parameters()).device
    embeddings = lm.get_input_embeddings()
    grads = {}

    def embeds(ids, where):
        e = embeddings(ids).detach().requires_grad_(True)
        grads["e"], grads["where"] = e, where
        return e

    with torch.enable_grad():
        before = _loss(lm, tok, current, chosen, device, embeds)
        before.backward()
    e, where = grads["e"], grads["where"]
    g = torch.stack([e.grad[b, w + position] for b, w in enumerate(where)]).mean(0)
    # first-order change of the loss when the trigger's embedding becomes token v's: (E_v - E_cur) . g
    scores = embeddings.weight[vocab.to(device)].float() @ g.float()
    tried = vocab[scores.argsort()[:candidates].cpu()].tolist()
    best, best_loss = current, float(before.detach())
    with torch.no_grad():
        for token in tried:
            trial = list(current)
            trial[position] = token
            value = float(_loss(lm, tok, trial, chosen, device))
            if value < best_loss:
                best, best_loss = trial, value
    return best, float(before.detach()), best_loss


def _batch(tok, trigger_ids, chosen, device):
    """Padded ``(input ids, labels, attention mask, where each row's triggers start)``."""
    import torch

    seqs, labels, where = [], [], []
    for pre, post, target in chosen:
        seq = pre + list(trigger_ids) + post + target
        seqs.append(seq)
        labels.append([-100] * (len(seq) - len(target)) + target)
        where.append(len(pre))
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    lab = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for b, (s, l) in enumerate(zip(seqs, labels)):
        ids[b, :len(s)], lab[b, :len(l)], mask[b, :len(s)] = torch.tensor(s), torch.tensor(l), 1
    return ids.to(device), lab.to(device), mask.to(device), where


def _loss(lm, tok, trigger_ids, chosen, device, embeds=None):
    """Mean label-token loss; logits only where a label token is predicted (not vocab x every position)."""
    from ..training.trainer import head_on_targets

    ids, lab, mask, where = _batch(tok, trigger_ids, chosen, device)
    inputs = {"attention_mask": mask, "labels": lab}
    inputs.update({"inputs_embeds": embeds(ids, where)} if embeds else {"input_ids": ids})
    return lm(**head_on_targets(lm, inputs)).loss.float()
