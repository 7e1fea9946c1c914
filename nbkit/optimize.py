"""Prompt optimisers beyond the grid: gradient-guided trigger tokens and a policy gradient over edits.

``autoprompt`` (Shin et al., 2020, AutoPrompt) appends trigger tokens to the instruction and
improves them by HotFlip: the gradient of the label loss with respect to each trigger's input
embedding ranks every vocabulary token by how much swapping it in should lower the loss
(first-order), and the best few are tried for real. ``reinforce`` treats each way of editing a
prompt (template, label words, number of shots, how they are chosen) as a categorical choice,
samples prompts from a policy, rewards each with the dev metric on a mini-batch, and follows
REINFORCE with a running-mean baseline (as in RLPrompt, Deng et al., 2022, over a discrete
edit space instead of generated tokens).
"""

from __future__ import annotations

import math
import random
import re
from typing import Callable, Sequence

from .encoding import encode_choice
from .errors import ConfigError
from .prompts import Prompt

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


def _with_triggers(p: Prompt, text: str) -> Prompt:
    """``p`` with ``text`` right after its instruction (before the line with the first variable)."""
    from .search import instruction_of

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

    from .training.trainer import head_on_targets

    if not prompt.choices:
        raise ConfigError("strategy", "gradient search optimises the label likelihood: the prompt needs --choices")
    for name, value in (("triggers", triggers), ("steps", steps), ("candidates", candidates)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(name, f"must be a positive integer, got {value!r}")
    tok = loaded.tokenizer
    vocab = torch.tensor(_word_tokens(tok))
    marked = _with_triggers(prompt, MARK)
    examples = []
    for row in rows:
        before, after = marked.format(row, tok).split(MARK)
        examples.append((tok(before, add_special_tokens=False)["input_ids"],
                         tok(after, add_special_tokens=False)["input_ids"],
                         encode_choice(prompt, prompt.render_target(row), tok)))
    rng = random.Random(seed)
    start = tok(" the", add_special_tokens=False)["input_ids"]
    current = [start[0]] * triggers
    history = []

    with loaded.adapter(None) as lm:
        device = next(lm.parameters()).device
        embeddings = lm.get_input_embeddings()
        frozen = [(p, p.requires_grad) for p in lm.parameters()]
        for p, _ in frozen:
            p.requires_grad_(False)
        try:
            def tensors(trigger_ids, chosen):
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

            def loss_of(trigger_ids, chosen, embeds=None):
                """Mean label-token loss; logits only where a label token is predicted (not vocab x every position)."""
                ids, lab, mask, where = tensors(trigger_ids, chosen)
                inputs = {"attention_mask": mask, "labels": lab}
                inputs.update({"inputs_embeds": embeds(ids, where)} if embeds else {"input_ids": ids})
                return lm(**head_on_targets(lm, inputs)).loss.float()

            for step in range(steps):
                chosen = rng.sample(examples, min(batch, len(examples)))
                grads = {}

                def embeds(ids, where):
                    e = embeddings(ids).detach().requires_grad_(True)
                    grads["e"], grads["where"] = e, where
                    return e

                with torch.enable_grad():
                    before = loss_of(current, chosen, embeds)
                    before.backward()
                e, where = grads["e"], grads["where"]
                position = step % triggers
                g = torch.stack([e.grad[b, w + position] for b, w in enumerate(where)]).mean(0)
                # first-order change of the loss when the trigger's embedding becomes token v's: (E_v - E_cur) . g
                scores = embeddings.weight[vocab.to(device)].float() @ g.float()
                tried = vocab[scores.argsort()[:candidates].cpu()].tolist()
                best, best_loss = current, float(before.detach())
                with torch.no_grad():
                    for token in tried:
                        trial = list(current)
                        trial[position] = token
                        value = float(loss_of(trial, chosen))
                        if value < best_loss:
                            best, best_loss = trial, value
                history.append({"step": step + 1, "position": position, "loss_before": round(float(before.detach()), 4),
                                "loss_after": round(best_loss, 4), "triggers": tok.decode(best)})
                current = best
                if progress:
                    progress(history[-1])
        finally:
            for p, flag in frozen:
                p.requires_grad_(flag)
    found = _with_triggers(prompt, tok.decode(current))
    return found, history


def reinforce(space: Sequence[Sequence], reward: Callable[[tuple, int], float], *, budget: int = 24,
              lr: float = 1.0, seed: int = 0) -> tuple[dict, list[list[float]]]:
    """REINFORCE over a factored discrete space: one softmax policy per dimension.

    Args:
        space: the options of each dimension (template, label words, shots, selection).
        reward: ``reward(indices, draw)`` -> the dev metric of the prompt those options make,
            on the ``draw``-th mini-batch.
        budget: prompts sampled (each costs one mini-batch evaluation).
        lr: step size on the logits.

    Returns:
        ``(rewards by indices, final probabilities per dimension)``; rewards hold every
        mini-batch reward each sampled prompt got.
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError("budget", f"must be a positive integer, got {budget!r}")
    rng = random.Random(seed)
    logits = [[0.0] * len(options) for options in space]
    baseline, seen = None, {}

    def probs(row):
        top = max(row)
        e = [math.exp(v - top) for v in row]
        return [v / sum(e) for v in e]

    for draw in range(budget):
        dist = [probs(row) for row in logits]
        pick = tuple(rng.choices(range(len(p)), weights=p)[0] for p in dist)
        r = reward(pick, draw)
        seen.setdefault(pick, []).append(r)
        advantage = r - (baseline if baseline is not None else r)
        baseline = r if baseline is None else 0.8 * baseline + 0.2 * r
        for d, k in enumerate(pick):  # grad of log softmax: onehot - p
            for j in range(len(logits[d])):
                logits[d][j] += lr * advantage * ((j == k) - dist[d][j])
    return seen, [probs(row) for row in logits]
