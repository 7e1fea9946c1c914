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


# -- real clients: lm-evaluation-harness and DSPy --------------------------------------------
def test_lm_eval_scores_the_served_run_as_evaluate_and_its_own_hf_model_do(served, tmp_path):
    """lm-evaluation-harness's `local-completions` (echo + logprobs + token-id prompts against
    /v1/completions, its tokenizer from /tokenize) and its `hf` model with `peft=` on the same weights,
    beside %evaluate: the same accuracy and the same answer on every row."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from nbkit.models.decoder import resolve

    run, url = served["run"], served["url"]
    local = nbkit.evaluation.evaluate(run=run, data="sample:sentiment", limit=40)
    tasks = TaskManager(include_path=str(nbkit.evaluation.lm_eval_task(sentiment(), "sample:sentiment", tmp_path,
                                                                       limit=40)))
    weights = resolve("smollm2-135m")[1]
    # the tokenizer too comes from the server (vLLM's /tokenize endpoints): no local copy of the model
    served_args = f"model=served,base_url={url}/completions,tokenizer_backend=remote,auth_token={KEY},max_retries=1"
    remote = lm_eval.simple_evaluate(model="local-completions", model_args=served_args, tasks=["nbkit_sentiment"],
                                     task_manager=tasks, log_samples=True)
    hf = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={weights},peft={run.adapter_path},dtype=float32",
                                 tasks=["nbkit_sentiment"], task_manager=tasks, device="cpu", log_samples=True)
    accuracy = local.frame.loc["sentiment + served", "accuracy"]
    assert remote["results"]["nbkit_sentiment"]["acc,none"] == pytest.approx(accuracy, abs=1e-9)
    assert hf["results"]["nbkit_sentiment"]["acc,none"] == pytest.approx(accuracy, abs=1e-9)
    outputs = list(local.predictions["sentiment + served"]["output"])
    for result in (remote, hf):  # row for row, not only the same count
        samples = sorted(result["samples"]["nbkit_sentiment"], key=lambda s: s["doc_id"])
        picked = [sentiment().choices[max(range(2), key=lambda j: s["filtered_resps"][j][0])] for s in samples]
        assert picked == outputs


def test_dspy_runs_a_predict_and_labeled_few_shot_on_the_served_run(served, monkeypatch):
    """DSPy's own client (dspy.LM, through litellm) against the served run: a typed Predict compiled
    with LabeledFewShot, scored with dspy.Evaluate; every answer parses into one of the labels."""
    from typing import Literal

    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm would fetch its price list
    dspy = pytest.importorskip("dspy")
    from nbkit.data import load_data

    class Sentiment(dspy.Signature):
        """Is this review positive or negative?"""

        review: str = dspy.InputField()
        sentiment: Literal["positive", "negative"] = dspy.OutputField()

    data = load_data("sample:sentiment")
    examples = {split: [dspy.Example(review=r["text"], sentiment=r["label"]).with_inputs("review")
                        for r in list(data[split])[:8]] for split in ("train", "test")}
    lm = dspy.LM("openai/served", api_base=served["url"], api_key=KEY, cache=False, temperature=0, max_tokens=48,
                 num_retries=0)
    program = dspy.LabeledFewShot(k=4).compile(dspy.Predict(Sentiment), trainset=examples["train"])
    with dspy.context(lm=lm):
        answers = [program(review=ex.review).sentiment for ex in examples["test"]]
        score = dspy.Evaluate(devset=examples["test"], num_threads=1)(
            program, metric=lambda ex, pred, trace=None: ex.sentiment == pred.sentiment)
    assert set(answers) <= {"positive", "negative"} and len(answers) == 8
    expected = 100 * sum(a == ex.sentiment for a, ex in zip(answers, examples["test"])) / 8
    assert float(score.score if hasattr(score, "score") else score) == pytest.approx(expected)
    assert all(h["model"] == "openai/served" for h in lm.history) and len(lm.history) >= 8


def test_a_tuned_run_records_its_chat_framing_and_learns_to_stop(served, client):
    """chat.json holds the template and end token it trained with; asked its training prompts through
    the chat API (the recorded template), the run answers a label and then the end token, long before
    max_tokens (finish_reason "stop", not "length")."""
    from nbkit.data import load_data
    from nbkit.encoding import chat_facts
    from nbkit.models.decoder import load_tokenizer

    run = served["run"]
    assert run.chat == chat_facts(load_tokenizer("smollm2-135m")) and run.chat["end"] == "<|im_end|>"
    for row in list(load_data("sample:sentiment")["train"])[:6]:
        answer = client.chat.completions.create(model="served", messages=sentiment().messages(row), max_tokens=16,
                                                temperature=0)
        choice = answer.choices[0]
        assert choice.finish_reason == "stop" and answer.usage.completion_tokens < 16, choice
        assert choice.message.content.strip() in ("positive", "negative")


def test_a_run_exported_as_gguf_generates_as_the_run(served, tmp_path):
    """`nbkit export RUN --format gguf`: one file with the tokenizer and the run's chat template inside
    and an Ollama Modelfile beside it; transformers loads it (gguf_file=) and answers the run's own
    training prompts greedily with the run's tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nbkit.data import load_data
    from nbkit.exports import export
    from nbkit.inference import generate

    run = served["run"]
    result = export(run, tmp_path / "gguf", format="gguf")
    assert result.gguf == tmp_path / "gguf" / "served-f16.gguf" and result.gguf.stat().st_size > 100e6
    assert sorted(p.name for p in result.path.iterdir()) == ["Modelfile", "nbkit_export.json", "served-f16.gguf"]
    assert 'PARAMETER stop "<|im_end|>"' in (result.path / "Modelfile").read_text()
    tok = AutoTokenizer.from_pretrained(result.path, gguf_file=result.gguf.name)
    assert tok.chat_template == run.chat["chat_template"]
    model = AutoModelForCausalLM.from_pretrained(result.path, gguf_file=result.gguf.name).eval()
    prompt = sentiment()
    rows = list(load_data("sample:sentiment")["train"])[:6]
    ours = nbkit.evaluation.generate(prompt, "sample:sentiment", adapter=run, split="train", limit=6,
                                     max_new_tokens=8).outputs
    contexts = [tok(prompt.format(r, tok), add_special_tokens=False)["input_ids"] for r in rows]
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    assert generate(model, tok, contexts, max_new_tokens=8) == ours
    assert set(ours) <= {"positive", "negative"}
