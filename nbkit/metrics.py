"""Metrics: what ``%evaluate --metric`` computes from a predictions frame.

Every metric takes the frame of one target (``output``, ``expected``, ``correct``,
and ``nll``/``tokens`` for perplexity) and returns one number. Classification:
``accuracy``, ``f1`` (macro), ``precision``/``recall`` (macro; per class in
:func:`per_class`). Generation: ``rouge1``, ``rouge2``, ``rougeL`` (F-measure, Google's
``rouge-score``, with stemming). Question answering: ``exact_match`` and ``token_f1``
(SQuAD's normalisation: lower case, no punctuation or articles). Language
modelling: ``perplexity`` of the expected text given the prompt.
"""

from __future__ import annotations

import collections
import math
import re
import string
from typing import Callable, Sequence

CLASSIFICATION = ("accuracy", "f1", "precision", "recall")
GENERATION = ("exact_match", "token_f1", "rouge1", "rouge2", "rougeL", "format", "perplexity")
# preference data (chosen / rejected completions): how often the model scores chosen above rejected, and by how
# much (the mean difference of their summed log-probabilities, in nats)
PREFERENCE = ("preference_accuracy", "margin")
DEFAULTS = {"classification": ("accuracy", "f1"), "generation": ("exact_match", "token_f1", "rougeL"),
            "preference": PREFERENCE}


def kind_of(choices, columns=()) -> str:
    """``classification`` (a prompt with choices), ``preference`` (data with chosen and rejected) or ``generation``."""
    if choices:
        return "classification"
    return "preference" if {"chosen", "rejected"} <= set(columns) else "generation"


def normalize(text: str) -> str:
    """Lower case, no punctuation, single spaces: exact match forgives formatting only."""
    text = str(text).lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def squad_tokens(text: str) -> list[str]:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, split on spaces."""
    text = str(text).lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def in_format(output: str, expected: str) -> float:
    """1 for an answer in the expected one's form: one non-empty line of no more words than it has (a
    one-word answer where one word is expected), else 0. GRPO's ``format`` reward, and a metric."""
    text = str(output).strip()
    words = normalize(text).split()
    return float(bool(words) and "\n" not in text and len(words) <= max(1, len(normalize(expected).split())))


def token_f1(output: str, expected: str) -> float:
    """Harmonic mean of token precision and recall (SQuAD v1.1's F1); 1.0 when both are empty."""
    out, exp = squad_tokens(output), squad_tokens(expected)
    if not out or not exp:
        return float(out == exp)
    common = sum((collections.Counter(out) & collections.Counter(exp)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(out), common / len(exp)
    return 2 * precision * recall / (precision + recall)


def per_class(expected: Sequence[str], predicted: Sequence[str], labels: Sequence[str] | None = None):
    """Precision, recall, F1 and support of each label, as a DataFrame indexed by label."""
    import pandas as pd

    labels = list(labels or sorted(set(expected) | set(predicted)))
    rows = {}
    for label in labels:
        tp = sum(e == label and p == label for e, p in zip(expected, predicted))
        fp = sum(e != label and p == label for e, p in zip(expected, predicted))
        fn = sum(e == label and p != label for e, p in zip(expected, predicted))
        rows[label] = {
            "precision": tp / (tp + fp) if tp + fp else 0.0,
            "recall": tp / (tp + fn) if tp + fn else 0.0,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
            "support": tp + fn,
        }
    frame = pd.DataFrame.from_dict(rows, orient="index")
    frame.index.name = "label"
    return frame


def confusion(expected: Sequence[str], predicted: Sequence[str], labels: Sequence[str] | None = None):
    """Counts of (expected row, predicted column) pairs, as a DataFrame."""
    import pandas as pd

    labels = list(labels or sorted(set(expected) | set(predicted)))
    extra = sorted(set(predicted) - set(labels))  # free-text outputs outside the labels still count
    columns = labels + extra
    counts = pd.DataFrame(0, index=pd.Index(labels, name="expected"), columns=pd.Index(columns, name="predicted"))
    for e, p in zip(expected, predicted):
        if e in counts.index:
            counts.loc[e, p] += 1
    return counts


def rouge(outputs: Sequence[str], expected: Sequence[str], kind: str) -> float:
    """Mean ROUGE F-measure (``rouge1``, ``rouge2`` or ``rougeL``) with Porter stemming."""
    scores = rouge_rows(outputs, expected, kind)
    return sum(scores) / len(scores) if scores else float("nan")


def rouge_rows(outputs: Sequence[str], expected: Sequence[str], kind: str) -> list[float]:
    """Each row's ROUGE F-measure."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    return [scorer.score(str(e), str(o))[kind].fmeasure for o, e in zip(outputs, expected)]


def macro_resampled(name: str, expected: Sequence[str], predicted: Sequence[str], labels, draws):
    """Macro ``precision``/``recall``/``f1`` of each resample of the rows (``draws``: resamples x rows
    of row indices), as :func:`per_class` computes them over ``labels`` (default: every label seen),
    vectorised: a thousand resamples of a few hundred rows in milliseconds."""
    import numpy as np

    labels = list(labels or sorted(set(expected) | set(predicted)))
    code = {label: i for i, label in enumerate(labels)}
    e = np.array([code.get(x, -1) for x in expected])[draws]
    p = np.array([code.get(x, -2) for x in predicted])[draws]
    per_label = []
    for c in range(len(labels)):
        tp = ((e == c) & (p == c)).sum(axis=1)
        fp = ((e != c) & (p == c)).sum(axis=1)
        fn = ((e == c) & (p != c)).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            value = {"precision": tp / (tp + fp), "recall": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn)}[name]
        per_label.append(np.nan_to_num(value, nan=0.0))
    return np.mean(per_label, axis=0)


def _macro(name: str) -> Callable:
    def compute(frame, labels=None) -> float:
        table = per_class(list(frame["expected"]), list(frame["output"]), labels)
        return float(table[name].mean()) if len(table) else float("nan")

    return compute


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


COMPUTE: dict[str, Callable] = {
    "accuracy": lambda frame, labels=None: _mean(frame["correct"]),
    "exact_match": lambda frame, labels=None: _mean(frame["correct"]),
    "f1": _macro("f1"),
    "precision": _macro("precision"),
    "recall": _macro("recall"),
    "token_f1": lambda frame, labels=None: _mean(token_f1(o, e) for o, e in zip(frame["output"], frame["expected"])),
    "rouge1": lambda frame, labels=None: rouge(frame["output"], frame["expected"], "rouge1"),
    "rouge2": lambda frame, labels=None: rouge(frame["output"], frame["expected"], "rouge2"),
    "rougeL": lambda frame, labels=None: rouge(frame["output"], frame["expected"], "rougeL"),
    "format": lambda frame, labels=None: _mean(in_format(o, e) for o, e in zip(frame["output"], frame["expected"])),
    "preference_accuracy": lambda frame, labels=None: _mean(frame["correct"]),
    "margin": lambda frame, labels=None: _mean(frame["margin"]),
    # exp of the mean negative log-likelihood per expected token, over all tokens of the split
    "perplexity": lambda frame, labels=None: math.exp(frame["nll"].sum() / max(frame["tokens"].sum(), 1)),
}


# metrics that are a mean over rows: each row's value, so intervals and paired tests resample rows once
PER_ROW: dict[str, Callable] = {
    "accuracy": lambda frame: [float(c) for c in frame["correct"]],
    "exact_match": lambda frame: [float(c) for c in frame["correct"]],
    "preference_accuracy": lambda frame: [float(c) for c in frame["correct"]],
    "margin": lambda frame: [float(m) for m in frame["margin"]],
    "token_f1": lambda frame: [token_f1(o, e) for o, e in zip(frame["output"], frame["expected"])],
    "format": lambda frame: [in_format(o, e) for o, e in zip(frame["output"], frame["expected"])],
    **{kind: (lambda frame, kind=kind: rouge_rows(frame["output"], frame["expected"], kind))
       for kind in ("rouge1", "rouge2", "rougeL")},
}


def compute_metrics(frame, names: Sequence[str], labels: Sequence[str] | None = None) -> dict:
    """Metric values from a predictions frame (``output``, ``expected``, ``correct``, …)."""
    return {name: COMPUTE[name](frame, labels) for name in names}


# -- retrieval: ranked document ids against the relevant ones (binary relevance) ------------------
def reciprocal_rank(ranked: Sequence[str], relevant: Sequence[str], k: int | None = None) -> float:
    """1 / the rank of the first relevant document within the top ``k`` (0 when none is there)."""
    for rank, doc in enumerate(ranked[:k] if k else ranked, start=1):
        if doc in relevant:
            return 1.0 / rank
    return 0.0


def recall_at(ranked: Sequence[str], relevant: Sequence[str], k: int) -> float:
    """The share of the relevant documents found in the top ``k``."""
    return len(set(ranked[:k]) & set(relevant)) / len(set(relevant)) if relevant else float("nan")


def ndcg_at(ranked: Sequence[str], relevant: Sequence[str], k: int) -> float:
    """Normalised discounted cumulative gain at ``k``, gain 1 per relevant document."""
    dcg = sum(1.0 / math.log2(rank + 1) for rank, doc in enumerate(ranked[:k], start=1) if doc in relevant)
    ideal = sum(1.0 / math.log2(rank + 1) for rank in range(1, min(k, len(set(relevant))) + 1))
    return dcg / ideal if ideal else float("nan")


def retrieval_metrics(ranked: Sequence[Sequence[str]], relevant: Sequence[Sequence[str]], k: int = 10) -> dict:
    """recall@1, recall@k, MRR (within the top 10, MRR@10, or k when larger) and nDCG@k, averaged over queries."""
    cut = max(k, 10)
    pairs = list(zip(ranked, relevant))
    return {
        "recall@1": _mean(recall_at(r, rel, 1) for r, rel in pairs),
        f"recall@{k}": _mean(recall_at(r, rel, k) for r, rel in pairs),
        "mrr": _mean(reciprocal_rank(r, rel, cut) for r, rel in pairs),
        f"ndcg@{k}": _mean(ndcg_at(r, rel, k) for r, rel in pairs),
    }
