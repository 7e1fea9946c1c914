"""GRPO's rewards: nbkit's metrics against each row's target, a format check, or a notebook function.

TRL calls each reward function with the sampled ``completions`` and, by name, the data set's other
columns; nbkit's rows carry their rendered target (``nbkit_target``) and the row itself
(``nbkit_row``, JSON), so a user's ``f(completions, rows) -> list[float]`` sees the row as the prompt
did. The rewards are summed; TRL logs their mean and spread per step, which the progress shows.
"""

from __future__ import annotations

import json
import math
from typing import Callable

from ..errors import ConfigError
from ..metrics import in_format, normalize, rouge_rows, token_f1


METRIC_REWARDS: dict[str, Callable[[str, str], float]] = {
    "exact_match": lambda c, t: float(normalize(c) == normalize(t)),
    "accuracy": lambda c, t: float(normalize(c) == normalize(t)),
    "token_f1": lambda c, t: token_f1(c, t),
    "rougeL": lambda c, t: rouge_rows([c], [t], "rougeL")[0],
    "format": in_format,
}


def metric_reward(name: str):
    score = METRIC_REWARDS[name]

    def reward(completions, nbkit_target, **_):
        return [score(str(c).strip(), t) for c, t in zip(completions, nbkit_target)]

    reward.__name__ = name  # TRL logs each reward under its function's name
    return reward


def user_reward(function, name: str):
    """A notebook function ``f(completions, rows)`` as TRL calls rewards; its answers are checked."""
    def reward(completions, nbkit_row, **_):
        rows = [json.loads(r) for r in nbkit_row]
        values = function([str(c).strip() for c in completions], rows)
        values = list(values) if values is not None else []
        if len(values) != len(completions):
            raise ConfigError("reward_fn", f"{name} returned {len(values)} rewards for {len(completions)} "
                              "completions; it must return one number per completion")
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
        if bad:
            raise ConfigError("reward_fn", f"{name} returned {bad[0]!r}; rewards must be finite numbers")
        return [float(v) for v in values]

    reward.__name__ = name
    return reward


def reward_functions(options, prompt, namespace) -> list:
    """The reward functions of a GRPO run; a ``reward_fn`` given by name is looked up in ``namespace``."""
    rewards = options.rewards
    if rewards and prompt.target is None:
        raise ConfigError("reward", f"{rewards[0]!r} compares completions with the row's target, and prompt "
                          f"{prompt.name!r} has none: give the prompt a --target, or reward with --reward-fn")
    if "accuracy" in rewards and not prompt.choices:
        raise ConfigError("reward", "accuracy scores label words: the prompt needs --choices (exact_match scores "
                          "free text)")
    functions = [metric_reward(r) for r in rewards]
    if options.reward_fn:
        given = options.reward_fn
        found = given if callable(given) else (namespace or {}).get(given)
        if not callable(found):
            raise ConfigError("reward_fn", f"{given!r} is not a function in the notebook; define f(completions, "
                              "rows) -> list of floats and pass its name")
        functions.append(user_reward(found, getattr(found, "__name__", str(given))))
    return functions
