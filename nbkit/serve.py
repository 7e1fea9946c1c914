"""``nbkit serve``: a base model and any number of tuned runs behind the OpenAI API.

``POST /v1/chat/completions`` and ``POST /v1/completions`` (with streaming and log-probabilities)
and ``GET /v1/models``; the model name is the base model's spec or a run's name, so the official
``openai`` client, LangChain, or ``%evaluate --model openai:RUN --base-url …`` can call an adapter
that was tuned a minute ago.

One worker thread owns the model. Requests wait in a bounded queue; greedy requests that arrive
together for the same model are answered in one batched ``generate`` (adapters are swapped on the
one base model, never reloaded). A request that fails gets an error answer in the OpenAI format;
the server keeps serving. It binds 127.0.0.1 unless told otherwise, and with ``api_key`` every
request must carry it as a bearer token.
"""

import asyncio
import hmac
import json
import queue
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from .errors import ConfigError, MissingDependencyError, NbkitError
from .config import DEFAULT_MODEL

HOST, PORT = "127.0.0.1", 8000


@dataclass
class Limits:
    """What one request may ask for, and how much the server takes on."""

    max_tokens: int = 512  # the largest max_tokens a request may ask for (and the default)
    max_request_bytes: int = 1_000_000  # request bodies above this get 413
    max_batch: int = 8  # greedy prompts answered in one generate call
    max_queue: int = 256  # requests waiting before the server answers 503 (the client retries)


class HTTPError(Exception):
    """An error answer: status code and the OpenAI error object's fields."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class GenerationRequest:
    """One request for the worker: its prompts (token ids) and generation settings."""

    model: str
    contexts: list[list[int]]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    logprobs: int | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    streamer: Any = None
    result: list | None = None
    error: BaseException | None = None
    done: Any = None  # called (from the worker thread) when result or error is set

    @property
    def batchable(self) -> bool:
        return self.temperature == 0 and self.streamer is None and self.seed is None


class Backend:
    """The loaded models and the worker thread that runs every request.

    Args:
        model: the base model spec (its name in the API).
        runs: run names or directories; each is served under its run name with its adapter on
            the base model (a ``full`` run is its own model).
        limits: request and queue bounds.
    """

    def __init__(self, model: str = DEFAULT_MODEL, runs: Sequence[str] = (), limits: Limits | None = None):
        from .predict import run_model
        from .models import load_model
        from .session import get_run

        self.limits = limits or Limits()
        self.base = model
        self.targets: dict[str, tuple[Any, Any]] = {model: (load_model(model), None)}
        for spec in runs:
            run = get_run(spec)
            base, quantize, adapter = run_model(run)
            if run.name in self.targets:
                raise ConfigError("run", f"{run.name!r} is served twice (or shares the base model's name)")
            if not run.is_full_model and base != model:
                raise ConfigError("run", f"{run.name!r} was trained on {base!r}, not on the served base {model!r}; "
                                  f"serve it with --model {base}")
            self.targets[run.name] = (load_model(base, quantize=quantize), adapter)
        self.queue: queue.Queue = queue.Queue()
        self.served = 0
        threading.Thread(target=self._work, name="nbkit-serve", daemon=True).start()

    def tokenizer(self, name: str):
        return self.targets[name][0].tokenizer

    def context_length(self, name: str) -> int:
        config = self.targets[name][0].model.config
        return int(getattr(config, "max_position_embeddings", 2048) or 2048)

    def submit(self, job: GenerationRequest) -> None:
        if self.queue.qsize() >= self.limits.max_queue:
            raise HTTPError(503, f"the server has {self.queue.qsize()} requests waiting; try again shortly",
                            type="server_busy")
        self.queue.put(job)

    def _work(self) -> None:
        pending: deque = deque()
        while True:
            if not pending:
                pending.append(self.queue.get())
            while True:  # everything that has arrived meanwhile
                try:
                    pending.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            batch = [pending.popleft()]
            if batch[0].batchable:
                rows = len(batch[0].contexts)
                for other in list(pending):
                    if (other.batchable and other.model == batch[0].model and other.stop == batch[0].stop
                            and rows + len(other.contexts) <= self.limits.max_batch):
                        batch.append(other)
                        pending.remove(other)
                        rows += len(other.contexts)
            self._run(batch)

    def _run(self, batch: list[GenerationRequest]) -> None:
        import torch

        from .inference import generate_tokens

        first = batch[0]
        loaded, adapter = self.targets[first.model]
        wanted = [j.logprobs for j in batch if j.logprobs is not None]
        try:
            if first.seed is not None:
                torch.manual_seed(first.seed)
            with loaded.adapter(adapter) as lm:
                contexts = [c for j in batch for c in j.contexts]
                generated = generate_tokens(
                    lm, loaded.tokenizer, contexts, max(j.max_tokens for j in batch), batch_size=len(contexts),
                    logprobs=max(wanted) if wanted else None, temperature=first.temperature, top_p=first.top_p,
                    stop=first.stop, streamer=first.streamer,
                )
            start = 0
            for j in batch:
                j.result = [_cut(g, j.max_tokens) for g in generated[start:start + len(j.contexts)]]
                start += len(j.contexts)
            self.served += len(batch)
        except Exception as e:  # answered as a 500; the worker goes on
            for j in batch:
                j.error = e
        finally:
            for j in batch:
                if j.streamer is not None and j.error is not None:
                    j.streamer.fail()
                if j.done is not None:
                    j.done()


def _cut(generated, max_tokens: int):
    """A batched completion cut to this request's own ``max_tokens`` (greedy: the same tokens it would get alone)."""
    if len(generated.ids) <= max_tokens:
        return generated
    from .inference import Generated

    return Generated(generated.ids[:max_tokens], "length",
                     generated.logprobs[:max_tokens] if generated.logprobs is not None else None,
                     generated.top[:max_tokens] if generated.top is not None else None)


# -- requests ----------------------------------------------------------------------------
def _number(body: dict, name: str, default, low, high, kind=float):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise HTTPError(400, f"{name} must be a number, got {value!r}", param=name)
    if not low <= value <= high:
        raise HTTPError(400, f"{name} must be between {low} and {high}, got {value!r}", param=name)
    return kind(value)


def _stops(body: dict) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop) or len(stop) > 4:
        raise HTTPError(400, "stop must be a string or a list of at most 4 non-empty strings", param="stop")
    return stop


def _content(message: dict, index: int) -> str:
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text ones are understood
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) != len(content) or not all(isinstance(t, str) for t in texts):
            raise HTTPError(400, f"messages[{index}].content: only text parts are supported", param="messages")
        return "".join(texts)
    if not isinstance(content, str):
        raise HTTPError(400, f"messages[{index}].content must be a string", param="messages")
    return content


class Server:
    """The HTTP side: parses and checks requests, hands them to the :class:`Backend`, answers."""

    def __init__(self, backend: Backend, api_key: str | None = None):
        self.backend, self.api_key = backend, api_key

    def app(self):
        try:
            from fastapi import FastAPI, Request
            from fastapi.responses import JSONResponse, StreamingResponse
        except ImportError:
            raise MissingDependencyError("fastapi", "nbkit serve", "pip install fastapi uvicorn") from None

        app = FastAPI(title="nbkit serve", docs_url=None, redoc_url=None, openapi_url=None)
        self._stream_response = StreamingResponse

        @app.exception_handler(HTTPError)
        async def _http_error(request: Request, e: HTTPError):
            return JSONResponse(e.body(), status_code=e.status)

        @app.exception_handler(Exception)
        async def _unexpected(request: Request, e: Exception):
            return JSONResponse(HTTPError(500, f"{type(e).__name__}: {e}", type="server_error").body(), status_code=500)

        @app.get("/v1/models")
        async def models(request: Request):
            self._check_key(request)
            now = int(time.time())
            return {"object": "list", "data": [{"id": name, "object": "model", "created": now, "owned_by": "nbkit"}
                                               for name in self.backend.targets]}

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            return await self._complete(request, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request):
            return await self._complete(request, chat=False)

        @app.get("/health")
        async def health():
            return {"status": "ok", "served": self.backend.served}

        return app

    def _check_key(self, request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        token = given[7:] if given.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(token.encode(), self.api_key.encode()):
            raise HTTPError(401, "missing or wrong API key: send it as 'Authorization: Bearer <key>'",
                            type="invalid_request_error", code="invalid_api_key")

    async def _body(self, request) -> dict:
        limit = self.backend.limits.max_request_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise HTTPError(413, f"the request has {int(declared)} bytes; this server takes at most {limit}")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"the request is over {limit} bytes, the most this server takes")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks) or b"null")
        except ValueError:
            raise HTTPError(400, "the request body is not JSON") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        return body

    def _job(self, body: dict, chat: bool) -> tuple[GenerationRequest, dict]:
        name = body.get("model")
        if name not in self.backend.targets:
            raise HTTPError(404, f"model {name!r} is not served here; models: {', '.join(self.backend.targets)}",
                            param="model", code="model_not_found")
        tok = self.backend.tokenizer(name)
        limit = self.backend.limits.max_tokens
        if _number(body, "n", 1, 1, 1, int) != 1:
            raise HTTPError(400, "n must be 1", param="n")
        asked = body.get("max_completion_tokens", body.get("max_tokens"))
        if asked is not None and not isinstance(asked, bool) and isinstance(asked, int) and asked > limit:
            raise HTTPError(400, f"max_tokens is {asked}; this server allows at most {limit} (nbkit serve --max-tokens)",
                            param="max_tokens")
        max_tokens = _number({"max_tokens": asked}, "max_tokens", limit if chat else min(16, limit), 1, limit, int)
        options = {
            "temperature": _number(body, "temperature", 1.0, 0, 2), "top_p": _number(body, "top_p", 1.0, 0, 1),
            "stop": _stops(body), "seed": _number(body, "seed", None, -2**63, 2**63 - 1, int),
        }
        if options["top_p"] == 0:
            options["top_p"] = 1e-6
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise HTTPError(400, "messages must be a non-empty list", param="messages")
            turns = []
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or m.get("role") not in ("system", "developer", "user", "assistant"):
                    raise HTTPError(400, f"messages[{i}] needs a role of system, user or assistant", param="messages")
                turns.append({"role": "system" if m["role"] == "developer" else m["role"], "content": _content(m, i)})
            try:
                text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            except Exception as e:
                raise HTTPError(400, f"the messages do not fit the model's chat template: {e}", param="messages") from None
            prompts = [text]
            logprobs = _number(body, "top_logprobs", 0, 0, 20, int) if body.get("logprobs") else None
        else:
            prompt = body.get("prompt")
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
                raise HTTPError(400, "prompt must be a string or a non-empty list of strings", param="prompt")
            if len(prompts) > self.backend.limits.max_batch:
                raise HTTPError(400, f"at most {self.backend.limits.max_batch} prompts per request", param="prompt")
            if body.get("echo"):
                raise HTTPError(400, "echo is not supported", param="echo")
            logprobs = _number(body, "logprobs", None, 0, 20, int)
        contexts = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        room = self.backend.context_length(name)
        for c in contexts:
            if len(c) + max_tokens > room:
                raise HTTPError(400, f"the prompt has {len(c)} tokens; with max_tokens {max_tokens} that is over the "
                                f"model's {room}", param="messages" if chat else "prompt", code="context_length_exceeded")
        if body.get("stream") and logprobs is not None:
            raise HTTPError(400, "logprobs are not supported with stream", param="logprobs")
        return GenerationRequest(name, contexts, max_tokens, logprobs=logprobs, **options), {"name": name, "tokenizer": tok}

    async def _complete(self, request, chat: bool):
        self._check_key(request)
        body = await self._body(request)
        job, meta = self._job(body, chat)
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        job.done = lambda: loop.call_soon_threadsafe(lambda: finished.done() or finished.set_result(None))
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        if body.get("stream"):
            streamer = _Streamer(meta["tokenizer"], loop)
            job.streamer = streamer
            self.backend.submit(job)
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return self._stream_response(self._events(job, finished, streamer, ident, meta["name"], chat, usage),
                                         media_type="text/event-stream")
        self.backend.submit(job)
        await finished
        if job.error is not None:
            raise HTTPError(500, f"generation failed: {type(job.error).__name__}: {job.error}", type="server_error")
        return _answer(job, meta["tokenizer"], ident, meta["name"], chat)

    async def _events(self, job, finished, streamer, ident, name, chat, include_usage):
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(text=None, finish=None, role=False):
            if chat:
                delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            else:
                choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
            return "data: " + json.dumps({"id": ident, "object": kind, "created": created, "model": name,
                                          "choices": [choice]}) + "\n\n"

        if chat:
            yield chunk(role=True, text="")
        held, stopped = "", False
        while True:
            text, end = await streamer.queue.get()
            if stopped:
                if end:
                    break
                continue
            held += text
            cut = _first_stop(held, job.stop)
            if cut is not None:  # a stop string: send what came before it, nothing after
                if held[:cut]:
                    yield chunk(held[:cut])
                held, stopped = "", True
            else:
                safe = len(held) - _stop_prefix(held, job.stop)
                if safe > 0:
                    yield chunk(held[:safe])
                    held = held[safe:]
            if end:
                break
        if held:
            yield chunk(held)
        await finished
        if job.error is not None:
            error = HTTPError(500, f"generation failed: {type(job.error).__name__}: {job.error}", type="server_error")
            yield "data: " + json.dumps(error.body()) + "\n\n"
            return
        generated = job.result[0]
        yield chunk(finish="stop" if stopped else generated.finish)
        if include_usage:
            usage = _usage(job)
            yield "data: " + json.dumps({"id": ident, "object": kind, "created": created, "model": name,
                                         "choices": [], "usage": usage}) + "\n\n"
        yield "data: [DONE]\n\n"


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    found = [text.find(s) for s in stops if s in text]
    return min(found) if found else None


def _stop_prefix(text: str, stops: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could be the start of a stop string (held back)."""
    longest = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                longest = max(longest, k)
                break
    return longest


def _usage(job: GenerationRequest) -> dict:
    prompt = sum(len(c) for c in job.contexts)
    completion = sum(len(g.ids) for g in job.result)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _answer(job: GenerationRequest, tok, ident: str, name: str, chat: bool) -> dict:
    choices = []
    for index, g in enumerate(job.result):
        text, ids, finish = tok.decode(g.ids, skip_special_tokens=True), g.ids, g.finish
        cut = _first_stop(text, job.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
            keep = 0  # the tokens that make up the text before the stop string
            while keep < len(ids) and len(tok.decode(ids[:keep + 1], skip_special_tokens=True)) <= cut:
                keep += 1
            ids = ids[:keep]
        pieces = [tok.decode([t]) for t in ids]
        logprobs = None
        if job.logprobs is not None:
            tops = [[(tok.decode([i]), v) for i, v in step][:job.logprobs] for step in g.top[:len(ids)]]
            if chat:
                logprobs = {"content": [
                    {"token": p, "logprob": v, "bytes": list(p.encode()),
                     "top_logprobs": [{"token": a, "logprob": w, "bytes": list(a.encode())} for a, w in top]}
                    for p, v, top in zip(pieces, g.logprobs, tops)]}
            else:
                offsets, at = [], 0
                for p in pieces:
                    offsets.append(at)
                    at += len(p)
                logprobs = {"tokens": pieces, "token_logprobs": g.logprobs[:len(ids)],
                            "top_logprobs": [dict(top) for top in tops], "text_offset": offsets}
        if chat:
            choices.append({"index": index, "message": {"role": "assistant", "content": text},
                            "finish_reason": finish, "logprobs": logprobs})
        else:
            choices.append({"index": index, "text": text, "finish_reason": finish, "logprobs": logprobs})
    return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
            "model": name, "choices": choices, "usage": _usage(job)}


class _Streamer:
    """transformers' text streamer, handing each decoded piece to the event loop's queue."""

    def __new__(cls, tokenizer, loop):
        from transformers import TextStreamer

        class Streamer(TextStreamer):
            def __init__(self):
                super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
                self.queue: asyncio.Queue = asyncio.Queue()

            def on_finalized_text(self, text: str, stream_end: bool = False):
                loop.call_soon_threadsafe(self.queue.put_nowait, (text, stream_end))

            def fail(self):
                loop.call_soon_threadsafe(self.queue.put_nowait, ("", True))

        return Streamer()


def serve(model: str = DEFAULT_MODEL, runs: Sequence[str] = (), *, host: str = HOST, port: int = PORT,
          api_key: str | None = None, limits: Limits | None = None, log_level: str = "warning") -> None:
    """Load ``model`` and ``runs`` and serve them until interrupted (``nbkit serve``)."""
    try:
        import uvicorn
    except ImportError:
        raise MissingDependencyError("uvicorn", "nbkit serve", "pip install fastapi uvicorn") from None
    if api_key is not None and len(api_key) < 8:
        raise ConfigError("api_key", "is shorter than 8 characters")
    backend = Backend(model, runs, limits)
    app = Server(backend, api_key).app()
    where = f"http://{host}:{port}/v1"
    print(f"nbkit serve: {', '.join(backend.targets)} on {where}"
          + (" (bearer token required)" if api_key else "") + "; Ctrl-C stops", flush=True)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        print("nbkit serve: warning: listening beyond this machine without --api-key", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


class Served:
    """``nbkit serve`` running in a child process (from :func:`start`): ``url`` for clients, ``stop()``.

    Also a context manager: ``with nbkit.serve.start(runs=["quickstart"]) as server: ...``.
    """

    def __init__(self, process, url: str, log):
        self.process, self.url, self._log = process, url, log

    def __repr__(self):
        state = "running" if self.process.poll() is None else f"stopped ({self.process.returncode})"
        return f"<nbkit serve at {self.url}, {state}>"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except Exception:
                self.process.kill()
        if hasattr(self._log, "close"):
            self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start(model: str = DEFAULT_MODEL, runs: Sequence[str] = (), *, host: str = HOST, port: int | None = None,
          api_key: str | None = None, max_tokens: int = 512, max_request_kb: int = 1024, log=None,
          timeout: float = 300) -> Served:
    """Start ``nbkit serve`` in a child process and wait until it answers; for notebooks and tests.

    Args:
        model, runs: what to serve (as for ``nbkit serve``).
        port: a free one by default.
        max_tokens, max_request_kb: the request bounds (``--max-tokens``, ``--max-request-kb``).
        api_key: require this bearer token (passed through the environment, not the command line).
        log: a file object for the server's output (default: discarded).
        timeout: seconds to wait for the model to load.

    Returns:
        A :class:`Served` with ``url`` (``http://host:port/v1``) and ``stop()``.
    """
    import os
    import subprocess
    import sys
    import urllib.request

    port = port or _free_port(host)
    env = {k: v for k, v in os.environ.items() if k != "NBKIT_SERVE_API_KEY"}
    if api_key:
        env["NBKIT_SERVE_API_KEY"] = api_key
    command = [sys.executable, "-m", "nbkit", "serve", "--model", model, "--host", host, "--port", str(port),
               "--max-tokens", str(max_tokens), "--max-request-kb", str(max_request_kb)]
    for run in runs:
        command += ["--run", str(getattr(run, "path", run))]
    sink = log if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env)
    served = Served(process, f"http://{host}:{port}/v1", log)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as answer:
                if answer.status == 200:
                    return served
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            served.stop()
            why = f"exited with {process.returncode}" if process.returncode is not None else f"is not up after {timeout:g} s"
            raise NbkitError(f"nbkit serve {why}" + ("; its output is in the log" if log is not None else
                                                      "; run `nbkit serve` in a terminal to see why"))
        time.sleep(0.5)


__all__ = ["Backend", "Limits", "Server", "Served", "serve", "start", "HOST", "PORT"]
