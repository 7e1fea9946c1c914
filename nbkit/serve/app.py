"""The HTTP side of ``nbkit serve``: the FastAPI app, its routes, the key check and streaming.

``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``, ``GET /health`` and vLLM's
``GET /tokenizer_info``, ``POST /tokenize`` and ``POST /detokenize``.
Requests are read and checked with :mod:`nbkit.serve.protocol`, handed to the
:class:`~nbkit.serve.backend.Backend`'s worker, and answered (or streamed as server-sent events).
"""

import asyncio
import hmac
import json
import time
import uuid

from ..errors import MissingDependencyError
from .backend import Backend, GenerationRequest
from .protocol import (HTTPError, answer_body, chat_prompt, check_ids, completion_prompts, is_ids, first_stop, generation_failed,
                       read_max_tokens, read_number, read_sampling, stop_prefix, usage_of)


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

        # vLLM's tokenizer endpoints: lm-evaluation-harness's `tokenizer_backend=remote` needs no local copy
        @app.get("/tokenizer_info")
        async def tokenizer_info(request: Request):
            self._check_key(request)
            tok = self.backend.tokenizer(self._named(request.query_params.get("model")))
            return {"tokenizer_class": type(tok).__name__, "chat_template": getattr(tok, "chat_template", None),
                    "model_max_length": self.backend.context_length(self.backend.base),
                    **{k: getattr(tok, k, None) for k in ("bos_token", "eos_token", "pad_token", "unk_token")}}

        @app.post("/tokenize")
        async def tokenize(request: Request):
            self._check_key(request)
            body = await self._body(request)
            tok = self.backend.tokenizer(self._named(body.get("model")))
            if not isinstance(body.get("prompt"), str):
                raise HTTPError(400, "prompt must be a string", param="prompt")
            ids = tok(body["prompt"], add_special_tokens=bool(body.get("add_special_tokens", True)))["input_ids"]
            return {"tokens": ids, "count": len(ids), "max_model_len": self.backend.context_length(self.backend.base)}

        @app.post("/detokenize")
        async def detokenize(request: Request):
            self._check_key(request)
            body = await self._body(request)
            tok = self.backend.tokenizer(self._named(body.get("model")))
            ids = body.get("tokens")
            if ids != [] and not is_ids(ids):
                raise HTTPError(400, "tokens must be a list of token ids", param="tokens")
            return {"prompt": tok.decode(check_ids(ids, len(tok)))}

        @app.get("/health")
        async def health():
            return {"status": "ok", "served": self.backend.served, "abandoned": self.backend.abandoned,
                    "timed_out": self.backend.timed_out}

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

    def _named(self, name) -> str:
        """A served model's name (the base model when none is given), or a 404."""
        if name is None:
            return self.backend.base
        if name not in self.backend.targets:
            raise HTTPError(404, f"model {name!r} is not served here; models: {', '.join(self.backend.targets)}",
                            param="model", code="model_not_found")
        return name

    def _job(self, body: dict, chat: bool) -> tuple[GenerationRequest, dict]:
        name = body.get("model")
        if not isinstance(name, str):
            raise HTTPError(400, f"model must be a model name (a string), got {json.dumps(name)[:80]}", param="model")
        tok = self.backend.tokenizer(self._named(name))
        limits = self.backend.limits
        if read_number(body, "n", 1, 1, 1, int) != 1:
            raise HTTPError(400, "n must be 1", param="n")
        echo = not chat and bool(body.get("echo"))
        max_tokens = read_max_tokens(body, limits.max_tokens, chat, limits.default_max_tokens, least=0 if echo else 1)
        options = read_sampling(body)
        if chat:
            text, logprobs = chat_prompt(body, tok)
            prompts = [text]
        else:
            prompts, logprobs = completion_prompts(body, limits.max_batch)
        contexts = [tok(p, add_special_tokens=False)["input_ids"] if isinstance(p, str) else check_ids(p, len(tok))
                    for p in prompts]
        if not all(contexts):
            raise HTTPError(400, "a prompt is empty", param="messages" if chat else "prompt")
        if echo and body.get("stream"):
            raise HTTPError(400, "echo is not supported with stream", param="echo")
        room = self.backend.context_length(name)
        for c in contexts:
            if len(c) + max_tokens > room:
                raise HTTPError(400, f"the prompt has {len(c)} tokens; with max_tokens {max_tokens} that is over the "
                                f"model's {room}", param="messages" if chat else "prompt", code="context_length_exceeded")
        if body.get("stream") and logprobs is not None:
            raise HTTPError(400, "logprobs are not supported with stream", param="logprobs")
        if body.get("stream_options") is not None and not isinstance(body.get("stream_options"), dict):
            raise HTTPError(400, "stream_options must be an object like {\"include_usage\": true}",
                            param="stream_options")
        texts = [p if isinstance(p, str) else None for p in prompts]
        job = GenerationRequest(name, contexts, max_tokens, logprobs=logprobs, echo=echo, texts=texts, **options)
        return job, {"name": name, "tokenizer": tok}

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
        while not finished.done():  # a client that goes away stops its generation, queued or running
            await asyncio.wait({finished}, timeout=0.5)
            if not finished.done() and await request.is_disconnected():
                job.cancelled = True
                return None
        if job.error is not None:
            raise generation_failed(job.error)
        return answer_body(job, meta["tokenizer"], ident, meta["name"], chat)

    async def _events(self, job, finished, streamer, ident, name, chat, include_usage):
        try:
            async for event in self._stream(job, finished, streamer, ident, name, chat, include_usage):
                yield event
        finally:  # the client went away (the stream was cancelled) or it ended: nothing more to generate
            job.cancelled = True

    async def _stream(self, job, finished, streamer, ident, name, chat, include_usage):
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
            cut = first_stop(held, job.stop)
            if cut is not None:  # a stop string: send what came before it, nothing after
                if held[:cut]:
                    yield chunk(held[:cut])
                held, stopped = "", True
            else:
                safe = len(held) - stop_prefix(held, job.stop)
                if safe > 0:
                    yield chunk(held[:safe])
                    held = held[safe:]
            if end:
                break
        if held:
            yield chunk(held)
        await finished
        if job.error is not None:
            yield "data: " + json.dumps(generation_failed(job.error).body()) + "\n\n"
            return
        generated = job.result[0]
        yield chunk(finish="stop" if stopped else generated.finish)
        if include_usage:
            yield "data: " + json.dumps({"id": ident, "object": kind, "created": created, "model": name,
                                         "choices": [], "usage": usage_of(job)}) + "\n\n"
        yield "data: [DONE]\n\n"


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
