"""The ``rl`` search strategy's policy: REINFORCE over a factored space of prompt edits.

Each way of editing a prompt (template, label words, number of shots, how they are chosen)
is a categorical choice; prompts are sampled from a policy, each is rewarded with the dev
metric on a mini-batch, and the policy follows REINFORCE with a running-mean baseline (as in
RLPrompt, Deng et al., 2022, over a discrete edit space instead of generated tokens).
"""

from __future__ import annotations

import math
import random
from typing import Callable, Sequence

from ..errors import ConfigError


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
