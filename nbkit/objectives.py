"""Training objectives: what a decoder run optimises, each with its options, declared once.

``sft`` (the default) imitates the prompt's target with cross-entropy. The others go through
TRL's trainers on the same run directory, methods and progress (:mod:`nbkit.training.preference`):

- ``dpo`` (Rafailov et al., 2023) and ``orpo`` (Hong et al., 2024) learn from pairs: a row's
  ``chosen`` completion over its ``rejected`` one;
- ``kto`` (Ethayarajh et al., 2024) from single completions marked good or bad (``completion`` and
  a boolean ``label``), or from the pairs split into one good and one bad row each;
- ``grpo`` (Shao et al., 2024) from rewards: completions sampled from the prompt, scored by nbkit's
  metrics against the row's target or by a notebook function.

Options are validated by name like a method's: an option the objective does not take is an error
naming those it does. A DPO/KTO run's reference model is the base with the adapter switched off.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from .checks import options_of, positive_int
from .errors import ConfigError, UnknownNameError

# the rewards GRPO scores completions with: nbkit's text metrics against the row's target, and a format check
REWARDS = ("exact_match", "token_f1", "rougeL", "accuracy", "format")


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(name, f"must be a positive number, got {value!r}")


@dataclass
class DpoOptions:
    beta: float = field(default=0.1, metadata={
        "help": "how far the tuned model may move from the base: higher stays closer (dpo, orpo, kto: 0.1)"})
    loss_type: str = field(default="sigmoid", metadata={
        "help": "dpo's loss: sigmoid (the paper's), hinge, ipo or robust"})

    def __post_init__(self):
        _positive("beta", self.beta)
        if self.loss_type not in ("sigmoid", "hinge", "ipo", "robust"):
            raise ConfigError("loss_type", f"must be sigmoid, hinge, ipo or robust, got {self.loss_type!r}")


@dataclass
class OrpoOptions:
    beta: float = field(default=0.1, metadata={"help": "weight of the odds-ratio term beside the SFT loss"})

    def __post_init__(self):
        _positive("beta", self.beta)


@dataclass
class KtoOptions:
    beta: float = 0.1
    desirable_weight: float = field(default=1.0, metadata={
        "help": "kto: weight of the good completions' loss (raise it when they are fewer than the bad ones)"})
    undesirable_weight: float = field(default=1.0, metadata={"help": "kto: weight of the bad completions' loss"})

    def __post_init__(self):
        for name in ("beta", "desirable_weight", "undesirable_weight"):
            _positive(name, getattr(self, name))


@dataclass
class GrpoOptions:
    reward: str | None = field(default=None, metadata={
        "help": "grpo: the reward(s), comma-separated and summed: exact_match, token_f1, rougeL, accuracy "
                "(label words), format (one line, no longer than the target); or leave it to --reward-fn"})
    reward_fn: str | None = field(default=None, metadata={
        "help": "grpo: a notebook function f(completions, rows) -> list of floats, by variable name"})
    generations: int = field(default=4, metadata={
        "help": "grpo: completions sampled per prompt (their rewards are compared with each other)"})
    max_new_tokens: int = field(default=32, metadata={"help": "grpo: longest sampled completion, in tokens"})
    temperature: float = field(default=1.0, metadata={"help": "grpo: sampling temperature"})
    kl: float = field(default=0.0, metadata={
        "help": "grpo: KL penalty towards the base (0, TRL's default, needs no reference pass)"})

    def __post_init__(self):
        rewards = self.rewards
        unknown = [r for r in rewards if r not in REWARDS]
        if unknown:
            raise ConfigError("reward", f"{unknown[0]!r} is not a reward; rewards: {', '.join(REWARDS)} "
                              "(or a function of yours through --reward-fn)")
        if not rewards and not self.reward_fn:
            raise ConfigError("reward", "is needed with --objective grpo: which metric rewards a completion? "
                              f"One of {', '.join(REWARDS)}, or --reward-fn VAR")
        positive_int("generations", self.generations)
        if self.generations < 2:
            raise ConfigError("generations", "must be at least 2: GRPO compares completions of the same prompt")
        positive_int("max_new_tokens", self.max_new_tokens)
        _positive("temperature", self.temperature)
        if isinstance(self.kl, bool) or not isinstance(self.kl, (int, float)) or self.kl < 0:
            raise ConfigError("kl", f"must be >= 0, got {self.kl!r}")

    @property
    def rewards(self) -> list[str]:
        return [r.strip() for r in str(self.reward or "").split(",") if r.strip()]


@dataclass
class NoOptions:
    pass


@dataclass(frozen=True)
class Objective:
    """What a run optimises: its options, the data it needs, and one line for help texts."""

    name: str
    options: type
    data: str  # "target" (the prompt's), "pairs" (chosen/rejected), "unpaired" (completion/label) or "rewards"
    summary: str

    def make_options(self, values: Mapping[str, Any] | None = None):
        """Validated options from ``values``; unknown names raise naming the valid ones."""
        return options_of(self.options, values, f"objective {self.name!r}")


OBJECTIVES: dict[str, Objective] = {o.name: o for o in (
    Objective("sft", NoOptions, "target", "imitate the prompt's target (cross-entropy on the completion)"),
    Objective("dpo", DpoOptions, "pairs", "prefer each row's chosen completion to its rejected one (TRL's DPO)"),
    Objective("orpo", OrpoOptions, "pairs", "SFT on chosen plus an odds-ratio penalty on rejected; no reference "
                                            "model (TRL's ORPO)"),
    Objective("kto", KtoOptions, "unpaired", "good and bad completions, unpaired (TRL's KTO); pairs are split"),
    Objective("grpo", GrpoOptions, "rewards", "sample completions, reward them with a metric or your function, "
                                              "reinforce the better ones (TRL's GRPO)"),
)}


def get_objective(name: str) -> Objective:
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise UnknownNameError("objective", name, OBJECTIVES) from None


def objective_fields() -> dict[str, dataclasses.Field]:
    """Every option of every objective by name (the first declaration wins), for ``%tune``'s flags."""
    fields: dict[str, dataclasses.Field] = {}
    for objective in OBJECTIVES.values():
        for f in dataclasses.fields(objective.options):
            fields.setdefault(f.name, f)
    return fields
