"""The decoder family's predictions: label log-likelihood for choices, greedy generation otherwise."""

from __future__ import annotations

from ..encoding import encode, encode_choice, encode_contexts
from ..errors import ConfigError, DataError
from ..inference import completion_logprobs, generate, score_choices
from ..metrics import normalize
from ..prompts import Prompt


def predict_decoder(lm, tokenizer, prompt: Prompt, rows, train_rows, scoring: str, batch_size: int,
             perplexity: bool = False):
    """One row per example: input, output, expected, correct (and nll, tokens for perplexity)."""
    import pandas as pd

    contexts = encode_contexts(prompt, rows, tokenizer, train_rows)
    expected = [prompt.render_target(row) for row in rows]
    if prompt.choices:
        unknown = sorted({e for e in expected if e not in prompt.choices})
        if unknown:
            raise DataError(f"the data has label(s) {', '.join(map(repr, unknown))} that are not among the "
                            f"choices of prompt {prompt.name!r}: {', '.join(prompt.choices)}")
        choice_ids = [encode_choice(prompt, c, tokenizer) for c in prompt.choices]
        empty = [c for c, ids in zip(prompt.choices, choice_ids) if not ids]
        if empty:
            raise ConfigError("choices", f"{empty[0]!r} tokenizes to nothing")
        scores = score_choices(lm, tokenizer.pad_token_id, contexts, choice_ids, batch_size, normalize=scoring == "mean")
        outputs = [prompt.choices[k] for k in scores.argmax(axis=1)]
    else:
        longest = max(len(tokenizer(e, add_special_tokens=False)["input_ids"]) for e in expected)
        outputs = generate(lm, tokenizer, contexts, max_new_tokens=longest + 16, batch_size=max(1, batch_size // 2))
    inputs = [prompt.render(row) for row in rows]
    frame = pd.DataFrame({"input": inputs, "output": outputs, "expected": expected,
                          "correct": [normalize(o) == normalize(e) for o, e in zip(outputs, expected)]})
    if perplexity:  # of the expected text, given the prompt
        targets = [encode_choice(prompt, e, tokenizer) for e in expected]
        frame["nll"] = [-x for x in completion_logprobs(lm, tokenizer.pad_token_id, contexts, targets, batch_size)]
        frame["tokens"] = [len(t) for t in targets]
    return frame


def predict_preference(lm, tokenizer, prompt: Prompt, rows, train_rows, batch_size: int):
    """One row per example: whether the model gives ``chosen`` a higher log-probability than ``rejected``
    (each with the end token, as preference tuning trained them), and the difference, ``margin`` (nats)."""
    import pandas as pd

    contexts = encode_contexts(prompt, rows, tokenizer, train_rows)
    scored = {}
    for column in ("chosen", "rejected"):
        missing = [i + 1 for i, row in enumerate(rows) if not str(row.get(column) or "").strip()]
        if missing:
            raise DataError(f"row {missing[0]} has no {column!r} completion: preference metrics need both")
        targets = [encode(prompt, row, tokenizer, target=str(row[column]))[1] for row in rows]
        scored[column] = completion_logprobs(lm, tokenizer.pad_token_id, contexts, targets, batch_size)
    margins = [c - r for c, r in zip(scored["chosen"], scored["rejected"])]
    return pd.DataFrame({"input": [prompt.render(row) for row in rows],
                         "output": ["chosen" if m > 0 else "rejected" for m in margins],
                         "expected": ["chosen"] * len(rows), "correct": [m > 0 for m in margins],
                         "margin": margins, "chosen_logprob": scored["chosen"],
                         "rejected_logprob": scored["rejected"]})
