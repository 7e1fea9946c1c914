"""The OpenAI wire format: error answers, reading and checking request bodies, and building answers.

Pure functions on the request's JSON (and the tokenizer); nothing here touches a model. A bad
field raises :class:`HTTPError` with the status and the OpenAI error object to answer with.
"""

import time
import math
from typing import Sequence

ROLES = ("system", "developer", "user", "assistant")


class HTTPError(Exception):
    """An error answer: status code and the OpenAI error object's fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def generation_failed(error: BaseException) -> HTTPError:
    """The 500 answer for a request whose generation raised ``error``."""
    return HTTPError(500, f"generation failed: {type(error).__name__}: {error}", type="server_error")


# -- requests ----------------------------------------------------------------------------
def read_number(body: dict, name: str, default, low, high, kind=float):
    """``body[name]`` checked to be a number in ``[low, high]`` (an integer for ``kind=int``), or ``default``."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (kind is int and value != int(value)):
        raise HTTPError(400, f"{name} must be a finite number, got {value!r}", param=name)
    if not low <= value <= high:
        raise HTTPError(400, f"{name} must be between {low} and {high}, got {value!r}", param=name)
    return kind(value)


def read_stops(body: dict) -> list[str]:
    """The request's stop strings (``stop``: a string or a list; OpenAI allows 4, vLLM and llama.cpp more,
    and lm-evaluation-harness sends a task's own list and the end token, so up to 16 are taken)."""
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 16:
        raise HTTPError(400, "stop must be a string or a list of at most 16 non-empty strings", param="stop")
    return stop


def message_text(message: dict, index: int) -> str:
    """The text of ``messages[index]``: a string, or a list of text parts joined."""
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text ones are understood
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
            raise HTTPError(400, f"messages[{index}].content: only text parts are supported", param="messages")
        return "".join(texts)
    if not isinstance(content, str):
        raise HTTPError(400, f"messages[{index}].content must be a string", param="messages")
    return content


def read_max_tokens(body: dict, limit: int, chat: bool, default: int | None = None, least: int = 1) -> int:
    """``max_completion_tokens`` or ``max_tokens``, at most ``limit`` (default: ``default`` for chat, else 16);
    ``least`` is 0 for an ``echo`` request (its prompt's log-probabilities alone)."""
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    if asked is not None and not isinstance(asked, bool) and isinstance(asked, int) and asked > limit:
        raise HTTPError(400, f"max_tokens is {asked}; this server allows at most {limit} (nbkit serve --max-tokens)",
                        param="max_tokens")
    fallback = min(default or limit, limit) if chat else min(16, limit)
    return read_number({"max_tokens": asked}, "max_tokens", fallback, least, limit, int)


def read_sampling(body: dict) -> dict:
    """``temperature``, ``top_p``, ``stop`` and ``seed``, checked (and ``n``, which must be 1)."""
    if read_number(body, "n", 1, 1, 1, int) != 1:
        raise HTTPError(400, "n must be 1", param="n")
    options = {
        "temperature": read_number(body, "temperature", 1.0, 0, 2), "top_p": read_number(body, "top_p", 1.0, 0, 1),
        "stop": read_stops(body), "seed": read_number(body, "seed", None, -2**63, 2**63 - 1, int),
    }
    if options["top_p"] == 0:
        options["top_p"] = 1e-6
    return options


def chat_prompt(body: dict, tokenizer) -> tuple[str, int | None]:
    """A chat request's prompt (its messages through the chat template) and its ``top_logprobs``."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise HTTPError(400, "messages must be a non-empty list", param="messages")
    turns = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise HTTPError(400, f"messages[{i}] needs a role of system, user or assistant", param="messages")
        turns.append({"role": "system" if m["role"] == "developer" else m["role"], "content": message_text(m, i)})
    try:
        text = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    except Exception as e:
        raise HTTPError(400, f"the messages do not fit the model's chat template: {e}", param="messages") from None
    logprobs = read_number(body, "top_logprobs", 0, 0, 20, int) if body.get("logprobs") else None
    return text, logprobs


def completion_prompts(body: dict, max_batch: int) -> tuple[list, int | None]:
    """A completion request's prompts and its ``logprobs``.

    ``prompt`` is a string, a list of strings, a list of token ids (one prompt) or a list of such
    lists, as in OpenAI's API; lm-evaluation-harness sends token ids. Each prompt comes back as a
    string or a list of ids.
    """
    prompt = body.get("prompt")
    if isinstance(prompt, str) or is_ids(prompt):
        prompts = [prompt]
    else:
        prompts = prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) or is_ids(p) for p in prompts):
        raise HTTPError(400, "prompt must be a string, a list of strings, a list of token ids or a list of such lists",
                        param="prompt")
    if len(prompts) > max_batch:
        raise HTTPError(400, f"at most {max_batch} prompts per request", param="prompt")
    return prompts, read_number(body, "logprobs", None, 0, 20, int)


def is_ids(value) -> bool:
    """Whether ``value`` is a non-empty list of token ids (integers, not booleans)."""
    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, int) and not isinstance(t, bool) for t in value))


def check_ids(ids: list[int], vocabulary: int) -> list[int]:
    """A token-id prompt, checked against the model's vocabulary size."""
    bad = [t for t in ids if not 0 <= t < vocabulary]
    if bad:
        raise HTTPError(400, f"token id {bad[0]} is not in the model's vocabulary (0 to {vocabulary - 1})",
                        param="prompt")
    return ids


# -- stop strings ------------------------------------------------------------------------
def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Where the first stop string in ``text`` begins, or None."""
    found = [text.find(s) for s in stops if s in text]
    return min(found) if found else None


def stop_prefix(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string (held back)."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                longest = max(longest, k)
                break
    return longest


# -- answers -----------------------------------------------------------------------------
def usage_of(job) -> dict:
    """The ``usage`` object of a finished :class:`~nbkit.serve.backend.GenerationRequest`."""
    prompt = sum(len(c) for c in job.contexts)
    completion = sum(len(g.ids) for g in job.result)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _logprobs(g, ids: list[int], pieces: list[str], top_n: int, tok, chat: bool) -> dict:
    """The ``logprobs`` object of one choice: chat's ``content`` list or completions' parallel lists."""
    tops = [[(tok.decode([i]), v) for i, v in step][:top_n] for step in g.top[:len(ids)]]
    if chat:
        return {"content": [
            {"token": p, "logprob": v, "bytes": list(p.encode()),
             "top_logprobs": [{"token": a, "logprob": w, "bytes": list(a.encode())} for a, w in top]}
            for p, v, top in zip(pieces, g.logprobs, tops)]}
    return {"tokens": pieces, "token_logprobs": g.logprobs[:len(ids)],
            "top_logprobs": [dict(top) for top in tops], "text_offset": _offsets(pieces)}


def _offsets(pieces: list[str], start: int = 0) -> list[int]:
    """Where each piece begins in the text they make, counted from ``start``."""
    offsets = []
    for p in pieces:
        offsets.append(start)
        start += len(p)
    return offsets


def _choice(index: int, g, job, tok, chat: bool) -> dict:
    """One generated completion as a choice, cut at the first stop string (``echo``: after its prompt)."""
    text, ids, finish = tok.decode(g.ids, skip_special_tokens=True), g.ids, g.finish
    cut = first_stop(text, job.stop)
    if cut is not None:
        text, finish = text[:cut], "stop"
        keep = 0  # the tokens that make up the text before the stop string
        while keep < len(ids) and len(tok.decode(ids[:keep + 1], skip_special_tokens=True)) <= cut:
            keep += 1
        ids = ids[:keep]
    logprobs = None
    if job.logprobs is not None:
        pieces = [tok.decode([t]) for t in ids]
        if job.echo and cut is None and g.logprobs is not None and len(g.logprobs) > len(ids):  # ended by the end
            # token: an echo answer lists it (lm-evaluation-harness drops the last token of max_tokens 1)
            ids, pieces = ids + [tok.eos_token_id], pieces + [tok.eos_token or ""]
        logprobs = _logprobs(g, ids, pieces, job.logprobs, tok, chat)
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": text},
                "finish_reason": finish, "logprobs": logprobs}
    if job.echo:
        text, logprobs = _echoed(index, job, tok, text, logprobs)
    return {"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs}


def _echoed(index: int, job, tok, text: str, logprobs: dict | None) -> tuple[str, dict | None]:
    """An ``echo`` choice: the prompt before the completion, and its tokens' log-probabilities before the
    completion's (the first token's ``null``: nothing predicts it), as OpenAI's and vLLM's answers."""
    context = job.contexts[index]
    prompt = job.texts[index] if job.texts[index] is not None else tok.decode(context)
    if logprobs is None:
        return prompt + text, None
    own, tops = job.echoed[index]
    pieces = [tok.decode([t]) for t in context]
    return prompt + text, {
        "tokens": pieces + logprobs["tokens"], "token_logprobs": own + logprobs["token_logprobs"],
        "top_logprobs": [None] + [{tok.decode([i]): v for i, v in top[:job.logprobs]} for top in tops[1:]]
        + logprobs["top_logprobs"],
        "text_offset": _offsets(pieces + logprobs["tokens"])}


def answer_body(job, tok, ident: str, name: str, chat: bool) -> dict:
    """The whole (not streamed) answer to a finished request: ``chat.completion`` or ``text_completion``."""
    choices = [_choice(index, g, job, tok, chat) for index, g in enumerate(job.result)]
    return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": name, "choices": choices, "usage": usage_of(job)}
