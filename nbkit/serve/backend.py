"""The model side of ``nbkit serve``: the loaded models, the request queue and the one worker thread.

Greedy requests that wait together for the same model (and the same stop strings) are answered
in one batched ``generate``; adapters are swapped on the one base model, never reloaded.
"""

import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Sequence

from ..config import DEFAULT_MODEL
from ..errors import ConfigError
from .protocol import HTTPError


@dataclass
class Limits:
    """What one request may ask for, and how much the server takes on."""

    max_tokens: int = 512  # the largest max_tokens a request may ask for
    # what a chat request that names no max_tokens gets (DSPy sends none): a few sentences, not 512
    # tokens, which take a 135M model on a CPU most of a minute
    default_max_tokens: int = 256
    timeout: float = 300.0  # seconds a request may take, queued and generating; then it ends as "length"
    max_request_bytes: int = 1_000_000  # request bodies above this get 413
    max_batch: int = 8  # greedy prompts answered in one generate call
    max_queue: int = 256  # requests waiting before the server answers 503 (the client retries)


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
    echo: bool = False  # completions: answer with the prompt first, and with logprobs its tokens' own
    texts: list = field(default_factory=list)  # each prompt as sent when it was text (None: token ids)
    echoed: list | None = None  # echo with logprobs: (logprobs, tops) of each prompt's tokens
    streamer: Any = None
    result: list | None = None
    error: BaseException | None = None
    done: Any = None  # called (from the worker thread) when result or error is set
    cancelled: bool = False  # its client went away: it is skipped, or its generation ends
    deadline: float | None = None  # time.monotonic() after which its generation ends

    def over(self) -> bool:
        """Whether nobody waits for this request any more, or its time is up."""
        return self.cancelled or (self.deadline is not None and time.monotonic() > self.deadline)

    @property
    def batchable(self) -> bool:
        return self.temperature == 0 and self.streamer is None and self.seed is None and not self.echo


class Backend:
    """The loaded models and the worker thread that runs every request.

    Args:
        model: the base model spec (its name in the API).
        runs: run names or directories; each is served under its run name with its adapter on
            the base model (a ``full`` run is its own model).
        limits: request and queue bounds.
    """

    def __init__(self, model: str = DEFAULT_MODEL, runs: Sequence[str] = (), limits: Limits | None = None):
        from ..encoding import run_tokenizer
        from ..predict import run_model
        from ..models import load_model
        from ..session import get_run

        self.limits = limits or Limits()
        self.base = model
        self.stopping = False  # set on shutdown: every generation ends at its next step
        found = {}
        for spec in runs:  # every run checked (unknown, unfinished, another base) before any weights load
            run = get_run(spec)
            base, quantize, adapter = run_model(run)
            if run.name in found or run.name == model:
                raise ConfigError("run", f"{run.name!r} is served twice (or shares the base model's name)")
            if not run.is_full_model and base != model:
                raise ConfigError("run", f"{run.name!r} was trained on {base!r}, not on the served base {model!r}; "
                                  f"serve it with --model {base}")
            found[run.name] = (base, quantize, adapter, run.chat)
        self.targets: dict[str, tuple[Any, Any]] = {model: (load_model(model), None)}
        self.tokenizers = {model: self.targets[model][0].tokenizer}
        for name, (base, quantize, adapter, chat) in found.items():
            self.targets[name] = (load_model(base, quantize=quantize), adapter)
            # a run's chat requests are framed with the chat template it trained with (its chat.json)
            self.tokenizers[name] = run_tokenizer(chat, self.targets[name][0].tokenizer, name)
        self.queue: queue.Queue = queue.Queue()
        self.served = 0
        self.abandoned = 0  # requests stopped (or skipped) because their client went away
        self.timed_out = 0  # generations ended by the server-side deadline
        threading.Thread(target=self._work, name="nbkit-serve", daemon=True).start()

    def tokenizer(self, name: str):
        return self.tokenizers[name]

    def context_length(self, name: str) -> int:
        config = self.targets[name][0].model.config
        return int(getattr(config, "max_position_embeddings", 2048) or 2048)

    def submit(self, job: GenerationRequest) -> None:
        if self.queue.qsize() >= self.limits.max_queue:
            raise HTTPError(503, f"the server has {self.queue.qsize()} requests waiting; try again shortly",
                            type="server_busy")
        job.deadline = time.monotonic() + self.limits.timeout
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
            if batch[0].cancelled:  # its client is gone: nothing to generate for
                self.abandoned += 1
                batch[0].error = ConnectionAbortedError("the client went away")
                if batch[0].done is not None:
                    batch[0].done()
                continue
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

        from ..inference import Generated, generate_tokens, prompt_logprobs

        first = batch[0]
        loaded, adapter = self.targets[first.model]
        wanted = [j.logprobs for j in batch if j.logprobs is not None]
        try:
            if first.seed is not None:
                torch.manual_seed(first.seed)
            with loaded.adapter(adapter) as lm:
                contexts = [c for j in batch for c in j.contexts]
                if first.echo and first.logprobs is not None:  # an echo request is never batched with others
                    first.echoed = prompt_logprobs(lm, loaded.tokenizer.pad_token_id, contexts, first.logprobs,
                                                   batch_size=self.limits.max_batch)
                longest = max(j.max_tokens for j in batch)
                generated = generate_tokens(
                    lm, loaded.tokenizer, contexts, longest, batch_size=len(contexts),
                    logprobs=max(wanted) if wanted else None, temperature=first.temperature, top_p=first.top_p,
                    stop=first.stop, streamer=first.streamer,
                    should_stop=lambda: self.stopping or all(j.over() for j in batch),
                ) if longest else [Generated([], "length", [], []) for _ in contexts]  # echo alone
            start = 0
            for j in batch:
                j.result = [_cut(g, j.max_tokens) for g in generated[start:start + len(j.contexts)]]
                start += len(j.contexts)
            self.served += len(batch)
            self.abandoned += sum(j.cancelled for j in batch)
            self.timed_out += sum(not j.cancelled and j.over() for j in batch)
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
    from ..inference import Generated

    return Generated(generated.ids[:max_tokens], "length",
                     generated.logprobs[:max_tokens] if generated.logprobs is not None else None,
                     generated.top[:max_tokens] if generated.top is not None else None)
