"""Prompts over an OpenAI-compatible API: the API family's predictions, like the local ones.

Labels are chosen by the first token's log-probabilities where the server returns them,
else from the generated text; :func:`predict` says which.
"""

from __future__ import annotations

import json
from typing import Any, Mapping, Sequence

from ..metrics import normalize
from ..models.api import TOP_LOGPROBS, ApiError, ApiModel, mask


def request_body(prompt, row, shots, max_tokens: int, logprobs: bool) -> tuple[str, dict]:
    """The request for one row: chat messages, or a plain completion for ``chat=False`` prompts."""
    body: dict[str, Any] = {"max_tokens": max_tokens, "temperature": 0}
    if prompt.chat is False:
        body["prompt"] = prompt.format(row, None, shots)
        if logprobs:
            body["logprobs"] = 5  # the legacy Completions API's limit
        return "completions", body
    body["messages"] = prompt.messages(row, shots)
    if logprobs:
        body.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
    return "chat", body


def _send(api: ApiModel, prompt, rows, train_rows, max_tokens: int, logprobs: bool):
    """One request per row (its shots drawn from ``train_rows`` as locally): (endpoint, answers, errors)."""
    requests = [request_body(prompt, row, shots, max_tokens, logprobs)
                for row, shots in zip(rows, prompt.shots_for(rows, train_rows or []))]
    endpoint = requests[0][0]
    return (endpoint, *api.map(endpoint, [body for _, body in requests]))


def _read(answer: Mapping, endpoint: str, index: int, model: str) -> tuple[str, list[dict] | None]:
    """(text, top alternatives of the first token as [{token, logprob}] or None) of an answer."""
    try:
        choice = answer["choices"][0]
        if endpoint == "chat":
            text = choice["message"]["content"] or ""
            content = (choice.get("logprobs") or {}).get("content")
            top = content[0]["top_logprobs"] if content else None
        else:
            text = choice["text"]
            lp = choice.get("logprobs") or {}
            top = [{"token": t, "logprob": v} for t, v in lp["top_logprobs"][0].items()] if lp.get("top_logprobs") else None
        return text, top
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise ApiError(f"malformed response to request {index} ({endpoint}, model {model!r}): "
                       f"{type(e).__name__} {e} in {mask(json.dumps(answer, default=str))[:300]}") from None


def choice_scores(top: list[dict], completions: Sequence[str]) -> list[float] | None:
    """Each choice's score from the first token's alternatives: the log-probability of the
    longest alternative that begins the choice's completion text (-inf where none does);
    ``None`` when no choice is among them.

    For choices of one token each this is exactly the label log-likelihood nbkit computes
    locally; for longer ones it ranks by the first token only.
    """
    scores = []
    for comp in completions:
        fitting = [(len(t["token"]), t["logprob"]) for t in top if t["token"] and comp.startswith(t["token"])]
        scores.append(max(fitting)[1] if fitting else float("-inf"))
    return None if all(s == float("-inf") for s in scores) else scores


def _by_text(text: str, choices: Sequence[str]) -> str:
    """The choice a generated text starts with (the longest that fits), else the text itself."""
    said = normalize(text)
    fitting = [c for c in choices if said.startswith(normalize(c))]
    return max(fitting, key=len) if fitting else text.strip()


def predict(api: ApiModel, prompt, rows, train_rows, *, max_new_tokens: int | None = None):
    """Predictions of ``prompt`` on ``rows`` through ``api``, like the local path's.

    Returns:
        ``(frame, how, errors)``: one row per answered example (input, output, expected, correct),
        how labels were chosen, and the errors of the rows that failed.
    """
    import pandas as pd

    expected = [prompt.render_target(row) for row in rows] if prompt.target is not None else [None] * len(rows)
    if prompt.choices:
        longest = max(len(c) for c in prompt.choices) + 4  # characters bound the tokens
        endpoint, answers, errors = _send(api, prompt, rows, train_rows, longest, logprobs=True)
    else:
        if max_new_tokens is None:  # as locally: room for the longest expected answer, and some
            max_new_tokens = max(len((e or "").split()) * 2 for e in expected) + 16
        endpoint, answers, errors = _send(api, prompt, rows, train_rows, max_new_tokens, logprobs=False)
    keep, outputs, by_logprobs, returned = [], [], 0, 0
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        try:
            text, top = _read(answer, endpoint, i, api.name)
        except ApiError as e:
            errors.append(e)
            continue
        if prompt.choices:
            comps = [prompt.completion(c, ChatTokenizer) for c in prompt.choices]
            returned += bool(top)
            scores = choice_scores(top, comps) if top else None
            if scores is not None:
                by_logprobs += 1
                text = prompt.choices[max(range(len(scores)), key=scores.__getitem__)]
            else:
                text = _by_text(text, prompt.choices)
        keep.append(i)
        outputs.append(text.strip())
    frame = pd.DataFrame({"input": [prompt.render(rows[i]) for i in keep], "output": outputs,
                          "expected": [expected[i] for i in keep]})
    frame["correct"] = [e is not None and normalize(o) == normalize(e) for o, e in zip(outputs, frame["expected"])]
    if not prompt.choices:
        how = "greedy generation through the API"
    elif by_logprobs == len(keep):
        how = f"first-token log-probabilities from the API (top {TOP_LOGPROBS if endpoint == 'chat' else 5})"
    elif by_logprobs == 0 and returned:
        how = ("generated text matched to the choices (the server returned log-probabilities, but none of "
               "their top tokens begins a choice)")
    elif by_logprobs == 0:
        how = "generated text matched to the choices (the server returned no log-probabilities)"
    else:
        how = f"first-token log-probabilities from the API ({len(keep) - by_logprobs} rows by generated text)"
    return frame, how, errors


class ChatTokenizer:
    """Stands in for a chat tokenizer: a prompt with ``chat`` unset is a chat prompt over the API,
    and its completion follows the turn without a leading space."""

    chat_template = "api"


def chat(api: ApiModel, prompt, rows, train_rows, max_new_tokens: int) -> list[str]:
    """Generated text for each row (``%%prompt --run``); raises the first error."""
    endpoint, answers, errors = _send(api, prompt, rows, train_rows, max_new_tokens, logprobs=False)
    if errors:
        raise errors[0]
    return [_read(a, endpoint, i, api.name)[0].strip() for i, a in enumerate(answers)]
