"""OpenAI-compatible models as a backend: ``--model openai:NAME [--base-url URL]``.

Any server that speaks the OpenAI Chat Completions API works: OpenAI itself, vLLM,
llama.cpp's server, Ollama, hosted providers, and ``nbkit serve``. Requests go out through
the official ``openai`` client, concurrently up to a limit; the client retries rate limits
(429), timeouts and server errors with exponential backoff. Answers are cached on disk,
keyed by (server, model, request), so re-running a notebook sends nothing twice.

The key comes from ``OPENAI_API_KEY`` or from ``%nbkit login openai`` (kept in this process's
memory only). It is never written anywhere nbkit writes, and error messages have it masked.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlparse

from .errors import ConfigError, MissingDependencyError, NbkitError

PREFIX = "openai:"
KEY_ENV = "OPENAI_API_KEY"
URL_ENV = "OPENAI_BASE_URL"
TOP_LOGPROBS = 20  # the most the Chat Completions API returns per token
_KEYS: dict[str, str] = {}  # set by login(); memory only


class ApiError(NbkitError):
    """A request to an API model failed (after retries), or its answer could not be read."""


def is_api_model(spec: Any) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def login(key: str, provider: str = "openai") -> None:
    """Use ``key`` for API models in this process (``%nbkit login openai`` asks for it with getpass)."""
    if provider != "openai":
        raise ConfigError("provider", f"{provider!r} is not known; nbkit speaks the OpenAI API: use 'openai'")
    if not key or not key.strip():
        raise ConfigError("key", "is empty")
    _KEYS[provider] = key.strip()


def has_key() -> bool:
    """Whether an API key is set (``OPENAI_API_KEY`` or ``%nbkit login openai``); never the key itself."""
    return _secret() is not None


def _secret() -> str | None:
    return _KEYS.get("openai") or os.environ.get(KEY_ENV) or None


def mask(text: str) -> str:
    """``text`` with the API key (and any long prefix of it) replaced by ``***``."""
    key = _secret()
    if key and len(key) >= 4:
        text = text.replace(key, "***")
    return text


def cache_root() -> Path:
    """Where API answers are cached: ``$NBKIT_API_CACHE``, else ``api/`` in nbkit's cache."""
    if os.environ.get("NBKIT_API_CACHE"):
        return Path(os.environ["NBKIT_API_CACHE"]).expanduser()
    from .models import cache_dir

    return cache_dir() / "api"


def _loopback(url: str) -> bool:
    return (urlparse(url).hostname or "") in ("127.0.0.1", "localhost", "::1")


class Stats:
    """Requests sent, cache hits, tokens in and out, and each request's latency."""

    def __init__(self):
        self.requests = self.cache_hits = self.tokens_in = self.tokens_out = 0
        self.latencies: list[float] = []
        self._lock = threading.Lock()

    def add(self, seconds: float, usage: Mapping | None) -> None:
        with self._lock:
            self.requests += 1
            self.latencies.append(seconds)
            self.tokens_in += int((usage or {}).get("prompt_tokens") or 0)
            self.tokens_out += int((usage or {}).get("completion_tokens") or 0)

    def hit(self) -> None:
        with self._lock:
            self.cache_hits += 1

    def summary(self) -> dict:
        import numpy as np

        lat = np.array(self.latencies) * 1000
        pct = {f"latency_p{q}_ms": round(float(np.percentile(lat, q)), 1) if len(lat) else None for q in (50, 90, 99)}
        return {"requests": self.requests, "cache_hits": self.cache_hits, "tokens_in": self.tokens_in,
                "tokens_out": self.tokens_out, **pct}


class ApiModel:
    """A model behind an OpenAI-compatible server.

    Args:
        spec: ``openai:NAME``; NAME is the server's model name (for ``nbkit serve``: the base
            model or a run name).
        base_url: the server (``http://host:port/v1``); default ``$OPENAI_BASE_URL``, else OpenAI.
        cache: read and write the on-disk answer cache; ``False`` sends every request.
        concurrency: requests in flight at once.
        timeout: seconds per request attempt.
        max_retries: retries of a rate-limited, timed-out or failed request (exponential backoff).
    """

    def __init__(self, spec: str, base_url: str | None = None, *, cache: bool = True, concurrency: int = 8,
                 timeout: float = 60.0, max_retries: int = 4):
        if not is_api_model(spec) or not spec[len(PREFIX):]:
            raise ConfigError("model", f"an API model is written openai:NAME, got {spec!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ConfigError("concurrency", f"must be a positive integer, got {concurrency!r}")
        self.name = spec[len(PREFIX):]
        self.spec = spec
        self.base_url = (base_url or os.environ.get(URL_ENV) or "https://api.openai.com/v1").rstrip("/")
        if urlparse(self.base_url).scheme not in ("http", "https"):
            raise ConfigError("base_url", f"must be an http(s) URL like http://127.0.0.1:8000/v1, got {self.base_url!r}")
        key = _secret()
        if key is None:
            if not (base_url or os.environ.get(URL_ENV)):
                raise ApiError(f"no API key for {spec}: set the {KEY_ENV} environment variable, or run "
                               "`%nbkit login openai` (it asks without echoing and keeps the key in memory only)")
            key = "no-key"  # a self-hosted server without authentication
        try:
            import openai
        except ImportError:
            raise MissingDependencyError("openai", "API models", "pip install openai") from None
        self._openai = openai
        self.client = openai.OpenAI(api_key=key, base_url=self.base_url, timeout=timeout, max_retries=max_retries)
        self.cache, self.concurrency, self.timeout, self.max_retries = cache, concurrency, timeout, max_retries
        self.stats = Stats()

    def __repr__(self):
        return f"<nbkit.ApiModel {self.name} at {self.base_url}>"

    # -- requests --------------------------------------------------------------------
    def _cache_path(self, endpoint: str, body: Mapping) -> Path:
        blob = json.dumps({"url": self.base_url, "endpoint": endpoint, "body": body}, sort_keys=True)
        digest = hashlib.sha256(blob.encode()).hexdigest()
        return cache_root() / digest[:2] / f"{digest}.json"

    def request(self, endpoint: str, body: Mapping, index: int = 0) -> dict:
        """One ``chat`` or ``completions`` request (``model`` is added), answered from the cache when it can."""
        body = {"model": self.name, **body}
        path = self._cache_path(endpoint, body)
        if self.cache and path.exists():
            try:
                answer = json.loads(path.read_text())
                self.stats.hit()
                return answer
            except (OSError, ValueError):
                pass  # a damaged entry: ask again
        api = self.client.chat.completions if endpoint == "chat" else self.client.completions
        started = time.monotonic()
        try:
            answer = api.create(**body)
        except self._openai.APIError as e:
            raise self._error(e, index) from None
        seconds = time.monotonic() - started
        try:
            answer = answer.model_dump()
        except AttributeError:
            raise ApiError(f"malformed response to request {index} ({endpoint}, model {self.name!r}): "
                           f"not a completion object: {mask(str(answer))[:200]}") from None
        self.stats.add(seconds, answer.get("usage"))
        if self.cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_text(json.dumps(answer))
            os.replace(tmp, path)
        return answer

    def _error(self, e, index: int) -> ApiError:
        o = self._openai
        where = f"{self.base_url} (model {self.name!r}, request {index})"
        retried = f"after {self.max_retries} retries"
        if isinstance(e, o.AuthenticationError):
            text = (f"{where} refused the API key (401): set {KEY_ENV} to a valid key, "
                    "or run `%nbkit login openai`")
        elif isinstance(e, o.PermissionDeniedError):
            text = f"{where} denied access (403): {e.message}"
        elif isinstance(e, o.NotFoundError):
            text = f"{where}: model {self.name!r} not found (404)" + self._served()
        elif isinstance(e, o.RateLimitError):
            text = f"{where} is rate limiting (429) {retried}; lower the concurrency or try later"
        elif isinstance(e, o.APITimeoutError):
            text = f"{where} did not answer within {self.timeout:g} s {retried}"
        elif isinstance(e, o.APIConnectionError):
            text = f"could not connect to {where} {retried}: is the server running and the URL right?"
        elif isinstance(e, o.APIStatusError):
            text = f"{where} answered {e.status_code} {retried if e.status_code >= 500 else ''}: {e.message}"
        else:
            text = f"{where}: {type(e).__name__}: {e}"
        return ApiError(mask(text))

    def _served(self) -> str:
        try:
            names = sorted(m.id for m in self.client.models.list())
        except Exception:  # the listing is a courtesy
            return ""
        return f"; it serves: {', '.join(names)}" if names else ""

    def map(self, endpoint: str, bodies: Sequence[Mapping]) -> tuple[list[dict | None], list[ApiError]]:
        """Send every request, ``concurrency`` at a time; answers in order (``None`` where one failed)
        and the errors. The answered ones are cached, so a re-run only sends the failed ones."""
        answers: list[dict | None] = [None] * len(bodies)
        errors: list[ApiError] = []

        def one(i):
            try:
                answers[i] = self.request(endpoint, bodies[i], i)
            except ApiError as e:
                errors.append(e)

        with ThreadPoolExecutor(max_workers=min(self.concurrency, max(1, len(bodies)))) as pool:
            list(pool.map(one, range(len(bodies))))
        return answers, errors


# -- prompts over the API ----------------------------------------------------------------
def _body(prompt, row, shots, max_tokens: int, logprobs: bool) -> tuple[str, dict]:
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
    requests = [_body(prompt, row, shots, max_tokens, logprobs)
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
    from .metrics import normalize

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

    from .metrics import normalize

    expected = [prompt.render_target(row) for row in rows] if prompt.target is not None else [None] * len(rows)
    if prompt.choices:
        longest = max(len(c) for c in prompt.choices) + 4  # characters bound the tokens
        endpoint, answers, errors = _send(api, prompt, rows, train_rows, longest, logprobs=True)
    else:
        if max_new_tokens is None:  # as locally: room for the longest expected answer, and some
            max_new_tokens = max(len((e or "").split()) * 2 for e in expected) + 16
        endpoint, answers, errors = _send(api, prompt, rows, train_rows, max_new_tokens, logprobs=False)
    keep, outputs, by_logprobs = [], [], 0
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        try:
            text, top = _read(answer, endpoint, i, api.name)
        except ApiError as e:
            errors.append(e)
            continue
        if prompt.choices:
            comps = [prompt.completion(c, _Chat) for c in prompt.choices]
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
    elif by_logprobs == 0:
        how = "generated text matched to the choices (the server returned no log-probabilities)"
    else:
        how = f"first-token log-probabilities from the API ({len(keep) - by_logprobs} rows by generated text)"
    return frame, how, errors


class _Chat:
    """Stands in for a chat tokenizer: a prompt with ``chat`` unset is a chat prompt over the API,
    and its completion follows the turn without a leading space."""

    chat_template = "api"


def chat(api: ApiModel, prompt, rows, train_rows, max_new_tokens: int) -> list[str]:
    """Generated text for each row (``%%prompt --run``); raises the first error."""
    endpoint, answers, errors = _send(api, prompt, rows, train_rows, max_new_tokens, logprobs=False)
    if errors:
        raise errors[0]
    return [_read(a, endpoint, i, api.name)[0].strip() for i, a in enumerate(answers)]
