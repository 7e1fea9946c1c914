"""SetFit (Tunstall et al., 2022): few-shot classification with a sentence encoder, in two stages.

First the whole encoder is tuned contrastively on pairs of training texts (same label: their
vectors' cosine should be 1; different labels: 0), so that texts of one class gather; then a
logistic regression learns the labels on the tuned vectors. The maintained ``setfit`` package
makes the pairs and holds the model (encoder + head: ``SetFitModel``, saved in its own format
so ``SetFitModel.from_pretrained(run.adapter_path)`` loads a run); nbkit's plain loop trains
the first stage (:mod:`nbkit.training.setfit`), so the run has its widget, interruption and
failure handling like every other run.

It is the default of ``--task classification`` on an encoder: on nbkit's samples and on
held-out sets of tens of rows it learns where a cross-entropy head at the same step budget
stays at chance (bench/encoder_classification.py has the numbers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..checks import positive_int
from .registry import Method, register_method


MIN_PAIRS = 800


@dataclass
class SetFitOptions:
    iterations: int | None = field(default=None, metadata={
        "help": "pairs per training row and kind: each row is paired this many times with a row of its own "
                "label and as many times with another's (SetFit's num_iterations; default: at least 2, and "
                "enough for 800 pairs on small data)"})

    def __post_init__(self):
        if self.iterations is not None:
            positive_int("iterations", self.iterations)

    def pairs_per_row(self, rows: int) -> int:
        """``iterations``, or from the data size: 2 on a few hundred rows, more on a few dozen (SetFit's
        paper used 20 on 8 rows per class); the steps grow with the data, never below ~100 at batch 8."""
        return self.iterations or max(2, math.ceil(MIN_PAIRS / 2 / max(rows, 1)))


def build(model, options: SetFitOptions, context=None):
    """The sentence encoder, every weight trainable (SetFit tunes the whole body; MiniLM is 22M)."""
    for p in model.parameters():
        p.requires_grad_(True)
    return model


register_method(Method(
    "setfit", SetFitOptions, build, quantize=None, lr=2e-5, kind="setfit", families=("encoder",),
    summary="SetFit on encoders: pairs of same/different labels, then a logistic head (classification's default)",
))
