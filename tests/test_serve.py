"""`nbkit serve` on the embedded model with a freshly tuned run, called with the official openai
client over the loopback: chat, streaming, completions, refusals, concurrency, the round trip
back into %evaluate, and the key never written anywhere."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import nbkit.evaluation  # noqa: F401  (bound before any test patches)
import nbkit.training  # noqa: F401
from nbkit.prompts import Prompt
from nbkit.session import register_prompt

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.slow
KEY = "nbkit-test-key-5f1c9a7e2b"


def sentiment() -> Prompt:
    return Prompt("Is this review positive or negative?\nReview: {{ text }}", name="sentiment",
                  target="{{ label }}", choices=["positive", "negative"])


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A LoRA run tuned for a few steps, and `nbkit serve` serving the base model and it."""
    from nbkit.serve import start
    from nbkit.training import tune

    root = tmp_path_factory.mktemp("serve")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NBKIT_RUNS_DIR", str(root / "runs"))
        run = tune(sentiment(), "sample:sentiment", method="lora", max_steps=12, lr=1e-3, name="served")
        log = open(root / "server.log", "w")
        server = start(runs=[run], api_key=KEY, max_tokens=64, max_request_kb=64, log=log)
    yield {"url": server.url, "run": run, "root": root, "log": root / "server.log"}
    server.stop()


@pytest.fixture
def client(served):
    return openai.OpenAI(api_key=KEY, base_url=served["url"], max_retries=0)


@pytest.fixture(autouse=True)
def _api_env(tmp_path, monkeypatch):
    monkeypatch.setenv("NBKIT_API_CACHE", str(tmp_path / "api-cache"))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    from nbkit.models import api
    from nbkit.session import current

    current().keys.clear()


def ask(client, model, text, **kw):
    kw = {"max_tokens": 24, "temperature": 0, **kw}
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kw)


def test_chat_stream_and_completions_with_the_official_client(served, client, smol):
    assert sorted(m.id for m in client.models.list()) == ["served", "smollm2-135m"]
    answer = ask(client, "smollm2-135m", "Tell me a long story about a dragon.")
    local = nbkit.evaluation.generate(Prompt("Tell me a long story about a dragon.", name="story"), max_new_tokens=24)
    assert answer.choices[0].message.content.strip() == local.outputs[0]  # the same model, the same greedy tokens
    assert answer.usage.completion_tokens == 24 and answer.choices[0].finish_reason == "length"

    pieces, finish, usage = [], None, None
    for chunk in ask(client, "smollm2-135m", "Tell me a long story about a dragon.", stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        usage = chunk.usage or usage
    assert "".join(pieces) == answer.choices[0].message.content and len(pieces) > 5
    assert finish == "length" and usage.completion_tokens == 24

    text = client.completions.create(model="smollm2-135m", prompt="1, 2, 3, 4,", max_tokens=12, temperature=0,
                                     stop=[", 7"], logprobs=3)
    choice = text.choices[0]
    assert choice.text.startswith(" 5, 6") and ", 7" not in choice.text and choice.finish_reason == "stop"
    assert len(choice.logprobs.top_logprobs[0]) == 3 and "".join(choice.logprobs.tokens) == choice.text


def test_refusals_are_openai_errors_and_the_server_keeps_serving(served, client):
    with pytest.raises(openai.AuthenticationError):
        ask(openai.OpenAI(api_key="wrong-key-000", base_url=served["url"], max_retries=0), "served", "hi")
    with pytest.raises(openai.NotFoundError, match="not served here; models: smollm2-135m, served"):
        ask(client, "gpt-5", "hi")
    with pytest.raises(openai.APIStatusError) as big:
        ask(client, "served", "word " * 20000)
    assert big.value.status_code == 413
    with pytest.raises(openai.BadRequestError, match="at most 64"):
        ask(client, "served", "hi", max_tokens=100000)
    with pytest.raises(openai.BadRequestError, match="temperature"):
        ask(client, "served", "hi", temperature=7)
    assert ask(client, "served", "Still there?").choices[0].message.content


def test_concurrent_requests_are_batched_and_answer_as_alone(served, client):
    questions = [f"Write one sentence about the number {n}." for n in range(6)]
    alone = [ask(client, "served", q).choices[0].message.content for q in questions]
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda q: ask(client, "served", q).choices[0].message.content, questions))
    assert together == alone


def test_round_trip_served_adapter_scores_as_in_process(served):
    run, url = served["run"], served["url"]
    local = nbkit.evaluation.evaluate(run=run, data="sample:sentiment", limit=40)
    remote = nbkit.evaluation.evaluate(sentiment(), data="sample:sentiment", model="openai:served", base_url=url,
                                       limit=40)
    label = "sentiment + served"
    assert remote.frame.loc["sentiment", "accuracy"] == local.frame.loc[label, "accuracy"]
    assert list(remote.predictions["sentiment"]["output"]) == list(local.predictions[label]["output"])
    assert remote.info["scoring"] == "first-token log-probabilities from the API (top 20)"
    stats = remote.api().loc["sentiment"]
    assert stats["requests"] == 40 and stats["tokens_in"] > 40 * 20 and stats["latency_p99_ms"] > 0
    base = nbkit.evaluation.evaluate(sentiment(), data="sample:sentiment", model="openai:smollm2-135m",
                                     base_url=url, limit=40)
    assert list(base.predictions["sentiment"]["output"]) != list(local.predictions[label]["output"])  # the adapter counts


def test_the_key_is_written_nowhere(served, ip, tmp_path, monkeypatch, capsys):
    """Log in through the magic, evaluate and generate over the API in a job, save the report,
    then read every file nbkit wrote (runs, job, cache, reports, the server's log)."""
    import getpass

    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.setenv("NBKIT_JOB_DIR", str(tmp_path / "job"))
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": KEY)
    register_prompt(sentiment())
    ip.run_line_magic("nbkit", "login openai")
    url = served["url"]
    report = ip.run_line_magic("evaluate", f"--prompt sentiment --data sample:sentiment --model openai:served "
                                           f"--base-url {url} --limit 8")
    assert report.frame.loc["sentiment", "n"] == 8
    ip.run_cell_magic("prompt", f"hello --run --model openai:served --base-url {url} --max-new-tokens 8",
                      "Say hello.")
    nbkit.evaluation.evaluate(run=served["run"], data="sample:sentiment", limit=8)  # writes into the run
    report.save(tmp_path / "saved")
    shown = capsys.readouterr()
    texts = [shown.out, shown.err, repr(report), report._repr_html_()]
    written = [p for root in (tmp_path, served["root"]) for p in Path(root).rglob("*") if p.is_file()]
    assert any("api-cache" in str(p) for p in written) and any("job" in p.parts for p in written)
    for path in written:
        assert KEY.encode() not in path.read_bytes(), f"the API key is in {path}"
    for text in texts:
        assert KEY not in text
