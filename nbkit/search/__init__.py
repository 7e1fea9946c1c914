"""Automatic prompt search: candidate prompts scored on a dev split, ranked, the best registered.

Candidates are the product of templates (the given prompts, plus paraphrases of their
instruction that the model itself writes, APE-style), label words (a verbalizer per
candidate set: ``{"positive": "great", "negative": "awful"}``), numbers of shots and how
the shots are chosen (``random``, ``balanced``). Each is scored on held-out dev rows,
never on the test split, with the base model loaded once; the winner is registered
under a name so ``%evaluate --prompt NAME`` measures it on the test split.

:mod:`.candidates` builds the candidates, :mod:`.reinforce` is the ``rl`` strategy's policy
and :mod:`.autoprompt` the ``gradient`` strategy's trigger search; this module scores and
ranks them.
"""

from __future__ import annotations

import random
import time
from typing import Any, Mapping, Sequence

from ..config import DEFAULT_MODEL
from ..errors import ConfigError
from ..models import family_of
from ..prompts import SELECTIONS, Prompt
from ..session import get_prompt, register_prompt
from .hotflip import autoprompt
from .candidates import (FORMATS, check_words, describe, grid, instruction_of, paraphrase, templates_of, variant,
                         with_formats, words_text)
from .policy import reinforce

__all__ = ["STRATEGIES", "autoprompt", "instruction_of", "paraphrase", "reinforce", "search_prompts", "variant"]

STRATEGIES = ("grid", "rl", "gradient")


def search_prompts(
    prompt: Prompt | str | Sequence[Prompt | str],
    data: Any,
    *,
    words: Sequence[Mapping[str, str]] | None = None,
    shots: Sequence[int] = (0,),
    selection: Sequence[str] = ("random",),
    formats: Sequence[str] | None = None,
    paraphrases: int = 0,
    dev: float | int | str = 0.25,
    metric: str | None = None,
    model: str | None = None,
    scoring: str = "sum",
    name: str | None = None,
    seed: int = 0,
    batch_size: int = 16,
    strategy: str = "grid",
    budget: int = 24,
    triggers: int = 4,
    steps: int = 8,
    namespace: Mapping[str, Any] | None = None,
):
    """Search prompts on a dev split; returns a ranked :class:`nbkit.results.Report`.

    Args:
        prompt: the hand-written prompt(s) to start from; each is a candidate template.
        data: data spec; the dev rows come from it, the shots from the rest of ``train``.
        words: label-word sets to try, each mapping every label to the word the model should
            say (the prompts' own choices are always tried too).
        shots: numbers of few-shot examples to try.
        selection: how shots are chosen: ``random``, ``balanced`` (one per class in turn) and/or
            ``nearest`` (the most similar training rows, by the embedded sentence encoder).
        formats: ``chat`` (chat template) and/or ``plain`` (the text as is); ``None``: both for a model with a
            chat template, on each prompt whose ``chat`` is unset (``chat=True|False`` is kept).
        paraphrases: ask the model for this many rewordings of each prompt's instruction (the
            text before its first variable) and try them too.
        dev: a split name, or a fraction / count of ``train`` held out for scoring.
        metric: what ranks the candidates (any of ``%evaluate``'s): ``accuracy`` with choices, else ``token_f1``.
        model: base model spec.
        scoring: label log-likelihood ``sum`` or ``mean`` (length-normalised).
        name: the name the best prompt is registered under (default ``<first prompt>-best``).
        seed: seed of the dev split, the shots and the paraphrase sampling.
        strategy: ``grid`` scores every candidate; ``rl`` samples ``budget`` candidates from a
            policy over the same edits (template, words, shots, selection), trained by REINFORCE on
            dev mini-batches, then scores its three most rewarded and the starting prompt on all dev
            rows; ``gradient`` appends ``triggers`` tokens to the first prompt's instruction and
            improves them for ``steps`` HotFlip steps on the training rows (AutoPrompt), in the format
            whose starting prompt scores best on dev, then scores the start (in each format) and the found
            one. See :mod:`nbkit.search.policy` and :mod:`nbkit.search.hotflip`.

    Returns:
        A Report whose ``frame`` has one row per candidate, best first; ``report.best`` is the
        winning :class:`Prompt` and ``report.candidates`` every candidate prompt by row label.
    """
    from ..models import load_model

    bases = [get_prompt(p) for p in (prompt if isinstance(prompt, (list, tuple)) else [prompt])]
    shots, selection = _check_settings(bases, words, shots, selection, paraphrases, strategy, model)
    _check_formats(formats)
    bases, dev_rows, pool = _rows(bases, data, namespace, dev, seed)
    verbalizers = [None] + [check_words(w, bases[0], dev_rows + pool) for w in (words or [])]
    rank_by = metric or ("accuracy" if bases[0].choices else "token_f1")

    loaded = load_model(model or DEFAULT_MODEL)
    started = time.monotonic()
    templates = with_formats(templates_of(bases, loaded, paraphrases, seed), formats, loaded.tokenizer)
    candidates, described = grid(templates, verbalizers, shots, selection)
    score = _scorer(loaded, pool, rank_by, scoring, batch_size)
    extra: dict = {}
    if strategy == "rl":
        candidates, described, extra = _reinforce(templates, verbalizers, shots, selection, score, dev_rows,
                                                  budget, batch_size, seed)
    elif strategy == "gradient":
        candidates, described, extra = _gradient(templates, loaded, pool, score, dev_rows, triggers, steps, seed)
    info = {"data": data if isinstance(data, str) else f"<{type(data).__name__}>", "split": "dev",
            "rows": len(dev_rows), "metrics": [rank_by], "ranked_by": rank_by, "errors": {},
            "seconds": None, "best": None, "registered": None,  # filled in once every candidate is scored
            "scoring": f"label log-likelihood ({scoring})" if bases[0].choices else "greedy generation",
            "templates": {label: candidates[label].template for label in candidates}, "strategy": strategy, **extra}
    return _ranked(candidates, described, score, dev_rows, name or f"{bases[0].name}-best", started, info)


def _check_settings(bases, words, shots, selection, paraphrases, strategy, model) -> tuple[list, list]:
    """Refuse bad settings before any data or model loads; ``shots`` and ``selection`` as lists."""
    if not bases:
        raise ConfigError("prompt", "needs at least one prompt to start from")
    shots, selection = list(shots), list(selection)
    for k in shots:
        if isinstance(k, bool) or not isinstance(k, int) or k < 0:
            raise ConfigError("shots", f"must be non-negative integers, got {shots!r}")
    for s in selection:
        if s not in SELECTIONS:
            raise ConfigError("selection", f"must be among {', '.join(SELECTIONS)}, got {s!r}")
    if isinstance(paraphrases, bool) or not isinstance(paraphrases, int) or paraphrases < 0:
        raise ConfigError("paraphrases", f"must be a non-negative integer, got {paraphrases!r}")
    if strategy not in STRATEGIES:
        raise ConfigError("strategy", f"must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if strategy == "gradient" and (len(bases) > 1 or words or paraphrases or list(shots) != [0]):
        raise ConfigError("strategy", "gradient search improves one prompt's trigger tokens; give one --prompt "
                          "and no --words, --shots or --paraphrases (search those with grid or rl)")
    if family_of(model or DEFAULT_MODEL) == "api":
        raise ConfigError("model", "prompt search scores candidates with a local model's label log-likelihoods; "
                          "search locally, then %evaluate the winner on the API model")
    return shots, selection


def _check_formats(formats) -> None:
    if formats is None:
        return
    if isinstance(formats, str) or not formats or any(f not in FORMATS for f in formats) \
            or len(set(formats)) != len(formats):
        raise ConfigError("formats", f"must be a list of {' and/or '.join(FORMATS)}, got {formats!r}")


def _scorer(loaded, pool, rank_by: str, scoring: str, batch_size: int):
    """``score(prompt, rows) -> (metrics, predictions)`` on the base model, shots drawn from ``pool``."""
    from ..evaluation import metrics_for
    from ..metrics import compute_metrics
    from ..predict.decoder import predict_decoder

    def score(p: Prompt, rows) -> tuple[dict, Any]:
        names = metrics_for(p, [rank_by] + (["accuracy"] if p.choices and rank_by != "accuracy" else []))
        with loaded.adapter(None) as lm:  # the base model, whatever adapter the session swapped on
            frame = predict_decoder(lm, loaded.tokenizer, p, rows, pool, scoring, batch_size,
                                    perplexity="perplexity" in names)
        return compute_metrics(frame, names, p.choices), frame

    return score


def _ranked(candidates: dict, described: dict, score, dev_rows, name: str, started: float, info: dict):
    """Score every candidate on all dev rows, best first; register the winner as ``name``."""
    import pandas as pd

    from ..results import Report

    rank_by = info["ranked_by"]
    results, predictions = {}, {}
    for label, p in candidates.items():
        values, frame = score(p, dev_rows)
        results[label] = {**described[label], **values, "n": len(frame)}
        predictions[label] = frame
    table = pd.DataFrame.from_dict(results, orient="index")
    table.index.name = "candidate"
    ascending = rank_by == "perplexity"
    table = table.sort_values(rank_by, ascending=ascending, kind="stable")
    best_label = table.index[0]
    best = Prompt.from_dict({**candidates[best_label].to_dict(), "name": name})
    register_prompt(best)
    info = {**info, "seconds": {"search": round(time.monotonic() - started, 2)}, "best": best_label,
            "registered": best.name}
    report = Report(table, {k: predictions[k] for k in table.index}, info)
    report.best, report.candidates = best, candidates
    return report


def _reinforce(templates, verbalizers, shots, selection, score, dev_rows, budget, batch, seed):
    """Candidates of the rl strategy: the starting prompt and the policy's three most rewarded."""
    space = [templates, verbalizers, list(shots), list(selection)]

    def make(pick):
        (template, origin), verbalizer, k, how = (space[d][i] for d, i in enumerate(pick))
        p = variant(template, verbalizer, k, how if k else selection[0])
        return p, describe(template, origin, p, verbalizer, k, how)

    def reward(pick, draw):
        rows = random.Random(seed * 1000 + draw).sample(dev_rows, min(batch, len(dev_rows)))
        values, _ = score(make(pick)[0], rows)
        return float(next(iter(values.values())))

    seen, policy = reinforce(space, reward, budget=budget, seed=seed)
    ranked = sorted(seen, key=lambda pick: (-sum(seen[pick]) / len(seen[pick]), pick))
    candidates, described = {}, {}
    picks: dict[str, tuple] = {}
    for label, pick in [("start", (0, 0, 0, 0))] + [(f"rl{k + 1}", pick) for k, pick in enumerate(ranked[:3])]:
        if pick in picks.values():
            continue
        picks[label] = pick
        candidates[label], described[label] = make(pick)
        rewards = seen.get(pick, [])
        described[label].update(pulls=len(rewards), mean_reward=round(sum(rewards) / len(rewards), 4) if rewards else None)
    names = ["template", "words", "shots", "selection"]
    return candidates, described, {"policy": {n: [round(p, 3) for p in probs] for n, probs in zip(names, policy)},
                                   "budget": budget}


def _gradient(templates, loaded, pool, score, dev_rows, triggers, steps, seed):
    """Candidates of the gradient strategy: the starting prompt in each format searched, and the one with
    trigger tokens, found in the format whose starting prompt scores best on the dev rows."""
    starts = {"start" if len(templates) == 1 else f"start, {origin.rsplit(', ', 1)[-1]}": (t, origin)
              for t, origin in templates}
    if len(starts) > 1:
        first_of = {label: float(next(iter(score(t, dev_rows)[0].values()))) for label, (t, _) in starts.items()}
        base, origin = starts[max(first_of, key=first_of.get)]  # ties: the first format listed
    else:
        base, origin = next(iter(starts.values()))
    found, history = autoprompt(base, loaded, pool, triggers=triggers, steps=steps, seed=seed)
    facts = {"prompt": base.name, "words": words_text(base, None), "shots": base.shots, "selection": "-"}
    candidates = {label: t for label, (t, _) in starts.items()} | {"gradient": found}
    described = {label: {**facts, "template": o} for label, (_, o) in starts.items()}
    described["gradient"] = {**facts, "template": f"{origin} + triggers '{history[-1]['triggers'].strip()}'"}
    return candidates, described, {"history": history}


def _rows(bases: list[Prompt], data, namespace, dev, seed: int) -> tuple[list[Prompt], list, list]:
    """``(the prompts, checked against the data's columns, dev rows, the rest of train)``."""
    from ..data import load_data

    splits = load_data(data, namespace)
    dev_rows, pool = _dev_split(splits, dev, seed)
    columns = splits["train"].column_names
    bases = [b.resolve_target(columns) for b in bases]
    for b in bases:
        b.check(columns)
    return bases, dev_rows, pool


def _dev_split(splits, dev, seed: int) -> tuple[list, list]:
    """``(dev rows, the rest of train)``: a named split, or a fraction / count held out of train."""
    rows = list(splits["train"])
    if isinstance(dev, str):
        if dev not in splits or dev == "test":
            raise ConfigError("dev", f"{dev!r} is not a split to search on; splits: "
                              f"{', '.join(s for s in splits if s != 'test')}, or a fraction of train like 0.25")
        return list(splits[dev]), rows
    if isinstance(dev, bool) or not isinstance(dev, (int, float)) or dev <= 0:
        raise ConfigError("dev", f"must be a split name, a fraction in (0, 1) or a row count, got {dev!r}")
    from ..data import hold_out

    kept, held = hold_out(rows, dev, seed, "none would be left for shots")
    return held, kept
