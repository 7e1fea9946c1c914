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

The package: :mod:`.backend` (the loaded models, the queue and the worker thread),
:mod:`.protocol` (reading OpenAI request bodies and building answers), :mod:`.app` (the HTTP
routes, the key check and streaming); here, :func:`serve` and :func:`start`.
"""

import time
from typing import Sequence

from ..config import DEFAULT_MODEL
from ..errors import ConfigError, MissingDependencyError, NbkitError
from .app import Server
from .backend import Backend, GenerationRequest, Limits
from .protocol import HTTPError

HOST, PORT = "127.0.0.1", 8000


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
    # SIGTERM / Ctrl-C: every generation ends at its next token and open requests get 2 s to finish, so
    # the server stops promptly even in the middle of a long answer
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=2)

    class Stopping(uvicorn.Server):
        def handle_exit(self, sig, frame):
            backend.stopping = True
            super().handle_exit(sig, frame)

    Stopping(config).run()


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
          timeout: float = 300, request_timeout: float | None = None) -> Served:
    """Start ``nbkit serve`` in a child process and wait until it answers; for notebooks and tests.

    Args:
        model, runs: what to serve (as for ``nbkit serve``).
        port: a free one by default.
        max_tokens, max_request_kb: the request bounds (``--max-tokens``, ``--max-request-kb``).
        api_key: require this bearer token (passed through the environment, not the command line).
        log: a file object for the server's output (default: discarded).
        timeout: seconds to wait for the model to load.
        request_timeout: the server's deadline per request (``--timeout``; default 300 s).

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
    if request_timeout is not None:
        command += ["--timeout", str(request_timeout)]
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


__all__ = ["Backend", "GenerationRequest", "HTTPError", "Limits", "Server", "Served", "serve", "start", "HOST", "PORT"]
