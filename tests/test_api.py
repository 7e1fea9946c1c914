"""API models as a backend: retries, timeouts, cache, errors and partial results, against small
real HTTP servers on the loopback (no model needed; the round trip through `nbkit serve` is in
test_serve.py)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import nbkit.evaluation  # noqa: F401  (bound before any test patches)
from nbkit.models.api import ApiError, ApiModel
from nbkit.predict.api import choice_scores
from nbkit.prompts import Prompt

ROWS = [{"text": f"review number {i}", "label": "positive" if i % 2 else "negative"} for i in range(6)]


def data():
    import datasets

    return datasets.DatasetDict({"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS)})


def completion(content: str, top: list[tuple[str, float]] | None = None) -> dict:
    logprobs = None
    if top is not None:
        logprobs = {"content": [{"token": top[0][0], "logprob": top[0][1], "bytes": None,
                                 "top_logprobs": [{"token": t, "logprob": v, "bytes": None} for t, v in top]}]}
    return {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop", "logprobs": logprobs}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}


class Fake:
    """A loopback HTTP server whose answer to each POST is ``respond(body) -> (status, json, headers)``."""

    def __init__(self, respond):
        self.respond, self.bodies = respond, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                fake.bodies.append(body)
                status, payload, headers = fake.respond(body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in {"content-type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST

            def log_message(self, *args):
                pass

            def handle(self):  # a client that gave up (the timeout test) is not an error here
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    servers = []

    def start(respond):
        servers.append(Fake(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def _api_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NBKIT_API_CACHE", str(tmp_path / "api-cache"))
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    from nbkit.models import api
    from nbkit.session import current

    current().keys.clear()


@pytest.fixture
def sentiment():
    return Prompt("Is this review positive or negative?\n{{ text }}", name="sent", target="{{ label }}",
                  choices=["positive", "negative"])


def by_label(body) -> tuple[int, dict, dict]:
    """A perfect classifier: reads the review number and answers its label with log-probabilities."""
    n = int(body["messages"][-1]["content"].split()[-1])
    right = "positive" if n % 2 else "negative"
    wrong = "negative" if n % 2 else "positive"
    return 200, completion(right, [(right, -0.1), (wrong[:3], -2.0), (wrong, -3.0)]), {}


def test_choice_scores_use_the_longest_fitting_first_token():
    top = [{"token": "pos", "logprob": -0.5}, {"token": "positive", "logprob": -1.0}, {"token": "neg", "logprob": -2.0}]
    assert choice_scores(top, ["positive", "negative"]) == [-1.0, -2.0]
    assert choice_scores(top, ["refund", "other"]) is None


def test_evaluate_scores_from_logprobs_and_caches_answers(fake, sentiment):
    server = fake(by_label)
    report = nbkit.evaluation.evaluate(sentiment, data=data(), model="openai:m", base_url=server.url,
                                       namespace={})
    assert report.frame.loc["sent", "accuracy"] == 1.0 and report.frame.loc["sent", "n"] == 6
    assert report.info["scoring"].startswith("first-token log-probabilities from the API")
    stats = report.info["api"]["sent"]
    assert stats["requests"] == 6 and stats["cache_hits"] == 0 and stats["tokens_in"] == 60
    assert stats["latency_p50_ms"] is not None
    assert server.bodies[0]["temperature"] == 0 and server.bodies[0]["top_logprobs"] == 20
    assert "API requests" in report._repr_html_() and "latency_p90_ms" in repr(report)
    assert report.api().loc["sent", "requests"] == 6

    again = nbkit.evaluation.evaluate(sentiment, data=data(), model="openai:m", base_url=server.url)
    assert len(server.bodies) == 6  # every answer came from the disk cache
    assert again.info["api"]["sent"]["cache_hits"] == 6 and again.info["api"]["sent"]["requests"] == 0
    nbkit.evaluation.evaluate(sentiment, data=data(), model="openai:m", base_url=server.url, cache=False)
    assert len(server.bodies) == 12


def test_without_logprobs_labels_come_from_the_text_and_the_report_says_so(fake, sentiment):
    server = fake(lambda body: (200, completion("Positive, I think."), {}))
    report = nbkit.evaluation.evaluate(sentiment, data=data(), model="openai:m", base_url=server.url)
    assert list(report.predictions["sent"]["output"]) == ["positive"] * 6
    assert report.frame.loc["sent", "accuracy"] == 0.5
    assert "no log-probabilities" in report.info["scoring"]


def test_rate_limits_are_retried_with_backoff(fake):
    calls = []

    def respond(body):
        calls.append(time.monotonic())
        if len(calls) == 1:
            return 429, {"error": {"message": "slow down", "type": "rate_limit"}}, {"retry-after": "0.2"}
        return 200, completion("hi"), {}

    server = fake(respond)
    api = ApiModel("openai:m", server.url, cache=False)
    answer = api.request("chat", {"messages": [{"role": "user", "content": "hi"}]})
    assert answer["choices"][0]["message"]["content"] == "hi"
    assert len(calls) == 2 and calls[1] - calls[0] >= 0.15


def test_persistent_errors_are_clear_after_retries(fake):
    server = fake(lambda body: (503, {"error": {"message": "overloaded"}}, {"retry-after": "0"}))
    api = ApiModel("openai:m", server.url, cache=False, max_retries=2)
    with pytest.raises(ApiError, match=r"answered 503 after 2 retries"):
        api.request("chat", {"messages": [{"role": "user", "content": "hi"}]})
    assert len(server.bodies) == 3
    limited = fake(lambda body: (429, {"error": {"message": "quota"}}, {"retry-after": "0"}))
    with pytest.raises(ApiError, match=r"rate limiting \(429\) after 1 retries; lower the concurrency"):
        ApiModel("openai:m", limited.url, cache=False, max_retries=1).request("chat", {"messages": []})
    assert len(limited.bodies) == 2


def test_timeout_unreachable_and_malformed(fake):
    def slow(body):
        time.sleep(0.6)
        return 200, completion("late"), {}

    api = ApiModel("openai:m", fake(slow).url, cache=False, timeout=0.3, max_retries=0)
    with pytest.raises(ApiError, match=r"did not answer within 0.3 s"):
        api.request("chat", {"messages": [{"role": "user", "content": "hi"}]})

    closed = Fake(lambda body: (200, {}, {}))
    url = closed.url
    closed.close()
    with pytest.raises(ApiError, match=r"could not connect to http://127.0.0.1:\d+/v1 .*is the server running"):
        ApiModel("openai:m", url, cache=False, max_retries=0).request("chat", {"messages": []})

    broken = fake(lambda body: (200, {"id": "x", "choices": []}, {}))
    prompt = Prompt("Say {{ text }}", name="say")
    with pytest.raises(ApiError, match=r"malformed response to request 0 \(chat, model 'm'\)"):
        nbkit.evaluation.generate(prompt, data=data(), model="openai:m", base_url=broken.url)


def test_no_key_says_how_to_give_one():
    with pytest.raises(ApiError, match=r"OPENAI_API_KEY.*%nbkit login openai"):
        ApiModel("openai:gpt-4o-mini")


def test_unauthorized_and_unknown_model_never_show_the_key(fake, monkeypatch):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("OPENAI_API_KEY", secret)

    def respond(body):
        if "messages" not in body:
            return 200, {"object": "list", "data": [{"id": "served", "object": "model", "created": 0, "owned_by": "x"}]}, {}
        if body["model"] == "missing":
            return 404, {"error": {"message": "no such model"}}, {}
        return 401, {"error": {"message": f"Incorrect API key provided: {secret}"}}, {}

    server = fake(respond)
    with pytest.raises(ApiError) as e:
        ApiModel("openai:m", server.url, cache=False).request("chat", {"messages": []})
    assert "refused the API key (401)" in str(e.value) and secret not in str(e.value)
    with pytest.raises(ApiError, match=r"model 'missing' not found \(404\)"):
        ApiModel("openai:missing", server.url, cache=False).request("chat", {"messages": []})


def test_finished_rows_are_kept_when_some_fail(fake, sentiment):
    failing = {"review number 3"}

    def respond(body):
        if body["messages"][-1]["content"].endswith(tuple(failing)):
            return 400, {"error": {"message": "content filter"}}, {}
        return by_label(body)

    server = fake(respond)
    report = nbkit.evaluation.evaluate(sentiment, data=data(), model="openai:m", base_url=server.url)
    assert report.frame.loc["sent", "n"] == 5 and report.frame.loc["sent", "accuracy"] == 1.0
    assert report.info["errors"]["sent"].startswith("1 of 6 rows failed")
    failing.clear()
    sent = len(server.bodies)
    report = nbkit.evaluation.evaluate(sentiment, data=data(), model="openai:m", base_url=server.url)
    assert len(server.bodies) == sent + 1  # only the failed row is sent again
    assert report.frame.loc["sent", "n"] == 6 and not report.info["errors"]


def test_api_models_refuse_what_they_cannot_do(sentiment):
    from nbkit.errors import ConfigError

    with pytest.raises(ConfigError, match="perplexity"):
        nbkit.evaluation.evaluate(sentiment, data=data(), model="openai:m",
                                  base_url="http://127.0.0.1:9/v1", metric="perplexity")
    with pytest.raises(ConfigError, match="nbkit serve --run RUN"):
        nbkit.evaluation.generate(sentiment, data=data(), model="openai:m", adapter="some-run")
    with pytest.raises(ConfigError, match="openai:NAME"):
        ApiModel("openai:")
