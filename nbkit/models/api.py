"""The API family: OpenAI-compatible models as a backend: ``--model openai:NAME [--base-url URL]``.

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

from ..errors import ConfigError, MissingDependencyError, NbkitError
from ..session import current
from .embedded import cache_dir

PREFIX = "openai:"
KEY_ENV = "OPENAI_API_KEY"
URL_ENV = "OPENAI_BASE_URL"
TOP_LOGPROBS = 20  # the most the Chat Completions API returns per token


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
    current().keys[provider] = key.strip()


def has_key() -> bool:
    """Whether an API key is set (``OPENAI_API_KEY`` or ``%nbkit login openai``); never the key itself."""
    return secret() is not None


def secret() -> str | None:
    return current().keys.get("openai") or os.environ.get(KEY_ENV) or None


def mask(text: str) -> str:
    """``text`` with the API key (and any long prefix of it) replaced by ``***``."""
    key = secret()
    if key and len(key) >= 4:
        text = text.replace(key, "***")
    return text


def cache_root() -> Path:
    """Where API answers are cached: ``$NBKIT_API_CACHE``, else ``api/`` in nbkit's cache."""
    if os.environ.get("NBKIT_API_CACHE"):
        return Path(os.environ["NBKIT_API_CACHE"]).expanduser()
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
        key = secret()
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
