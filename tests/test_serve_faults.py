"""`nbkit serve` under faults and bad requests (docs/reliability.md): clients that go away, deadlines,
SIGTERM mid-generation, numbers that are not numbers. The fault cases run a real server process."""

from __future__ import annotations

import http.client
import json
import signal
import threading
import time
from urllib.parse import urlparse

import pytest

from nbkit.serve.backend import Limits
from nbkit.serve.protocol import HTTPError, read_max_tokens, read_number


# -- bad requests: 400s, not 500s ------------------------------------------------------------------
@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_infinite_and_nan_numbers_are_400s(value):
    for name, kind in (("seed", int), ("temperature", float), ("max_tokens", int)):
        with pytest.raises(HTTPError) as e:
            read_number({name: value}, name, None, 0, 10, kind)
        assert e.value.status == 400 and e.value.param == name


def test_a_request_without_max_tokens_gets_the_default_that_fits_the_model():
    limits = Limits()
    assert read_max_tokens({}, limits.max_tokens, True, limits.default_max_tokens) == 256 < limits.max_tokens
    assert read_max_tokens({"max_tokens": 400}, limits.max_tokens, True, limits.default_max_tokens) == 400
    assert read_max_tokens({}, limits.max_tokens, False, limits.default_max_tokens) == 16  # the OpenAI default


class _Tokenizer:
    def __len__(self):
        return 100  # the vocabulary token-id prompts are checked against

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [1] * len(text.split())}

    def apply_chat_template(self, turns, tokenize=False, add_generation_prompt=True):
        return " ".join(t["content"] for t in turns)


class _Backend:
    """Only what the HTTP side reads before it queues anything; a queued request fails the test."""

    targets = {"m": (None, None)}
    limits = Limits()
    served = abandoned = timed_out = 0

    def tokenizer(self, name):
        return _Tokenizer()

    def context_length(self, name):
        return 2048

    def submit(self, job):
        pytest.fail("a bad request was queued")


@pytest.mark.parametrize("body, param", [
    ({"model": ["m"], "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": {"m": 1}, "messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": True, "stream_options": "yes"},
     "stream_options"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": float("inf")}, "seed"),
])
def test_malformed_fields_are_400s_before_any_work_is_queued(body, param):
    from fastapi.testclient import TestClient

    from nbkit.serve.app import Server

    client = TestClient(Server(_Backend()).app())
    answer = client.post("/v1/chat/completions", content=json.dumps(body, allow_nan=True),
                         headers={"content-type": "application/json"})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


@pytest.mark.parametrize("body, param", [
    ({"prompt": [], "max_tokens": 1}, "prompt"),
    ({"prompt": [1, 2.5], "max_tokens": 1}, "prompt"),
    ({"prompt": [[1, 2], [True]], "max_tokens": 1}, "prompt"),
    ({"prompt": [[1, 100]], "max_tokens": 1}, "prompt"),  # not in the vocabulary
    ({"prompt": [[-1]], "max_tokens": 1}, "prompt"),
    ({"prompt": "", "max_tokens": 1}, "prompt"),
    ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),  # only an echo request may generate nothing
    ({"prompt": "hi", "max_tokens": 0, "echo": True, "logprobs": 21}, "logprobs"),
    ({"prompt": "hi", "echo": True, "stream": True}, "echo"),
    ({"prompt": "hi", "stop": ["x"] * 17}, "stop"),
    ({"prompt": "hi", "n": 2}, "n"),
])
def test_malformed_completions_are_400s_before_any_work_is_queued(body, param):
    """What lm-evaluation-harness and vLLM clients send (token ids, echo, max_tokens 0) is read; a
    malformed variant is a 400 naming the field."""
    from fastapi.testclient import TestClient

    from nbkit.serve.app import Server

    answer = TestClient(Server(_Backend()).app()).post("/v1/completions", json={"model": "m", **body})
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


def test_an_unknown_run_is_refused_before_the_base_model_loads(monkeypatch):
    from nbkit import models
    from nbkit.errors import UnknownNameError
    from nbkit.serve.backend import Backend

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded the base model first"))
    with pytest.raises(UnknownNameError):
        Backend("smollm2-135m", runs=["no-such-run"])


# -- faults: a real server -----------------------------------------------------------------------
def _health(url) -> dict:
    import urllib.request

    with urllib.request.urlopen(url.removesuffix("/v1") + "/health", timeout=10) as answer:
        return json.loads(answer.read())


def _post(url, path, body, timeout=300):
    where = urlparse(url)
    connection = http.client.HTTPConnection(where.hostname, where.port, timeout=timeout)
    connection.request("POST", f"/v1/{path}", json.dumps(body), {"content-type": "application/json"})
    return connection, connection.getresponse()


STORY = {"model": "smollm2-135m", "prompt": "Once upon a time, in a small town by the sea,", "max_tokens": 500,
         "temperature": 0}


@pytest.mark.slow
def test_a_client_that_goes_away_stops_its_generation_and_sigterm_stops_the_server():
    from nbkit.serve import start

    server = start()
    try:
        # a stream cut after its first event: the worker stops generating for nobody
        connection, answer = _post(server.url, "completions", {**STORY, "stream": True})
        assert answer.status == 200 and answer.readline().startswith(b"data:")
        connection.sock.close()
        connection.close()
        deadline = time.monotonic() + 120
        while _health(server.url)["abandoned"] < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _health(server.url)["abandoned"] == 1
        # a plain request whose client gives up (timeout) is stopped too
        with pytest.raises(TimeoutError):
            _post(server.url, "completions", STORY, timeout=2)
        deadline = time.monotonic() + 120
        while _health(server.url)["abandoned"] < 2 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _health(server.url)["abandoned"] == 2
        started = time.monotonic()
        _, short = _post(server.url, "completions", {**STORY, "max_tokens": 4})
        assert short.status == 200 and json.loads(short.read())["usage"]["completion_tokens"] == 4
        short_seconds = time.monotonic() - started
        # SIGTERM in the middle of a long generation: the server is gone within seconds, not after it
        threading.Thread(target=lambda: _post(server.url, "completions", STORY), daemon=True).start()
        time.sleep(2 + short_seconds)
        stopped = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)
        assert time.monotonic() - stopped < 15
    finally:
        server.stop()


@pytest.mark.slow
def test_a_request_past_the_servers_deadline_ends_as_length():
    from nbkit.serve import start

    with start(request_timeout=3) as server:
        started = time.monotonic()
        _, answer = _post(server.url, "completions", STORY)
        body = json.loads(answer.read())
        assert answer.status == 200 and body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] < STORY["max_tokens"]
        assert time.monotonic() - started < 60
        assert _health(server.url)["timed_out"] == 1
