"""Encoder-decoder models (issue 7, item 6) on a tiny randomly initialised T5 built from a config:
%tune and %evaluate work with them for a text-to-text task (no download)."""

from __future__ import annotations

import pytest

ROWS = [
    {"text": f"The {thing} meeting moved from {a} to {b} because the room was booked.",
     "summary": f"{thing} meeting moved to {b}"}
    for thing, a, b in [("budget", "monday", "tuesday"), ("design", "friday", "thursday"),
                        ("sales", "tuesday", "wednesday"), ("hiring", "thursday", "monday"),
                        ("support", "wednesday", "friday"), ("launch", "monday", "thursday"),
                        ("review", "friday", "tuesday"), ("planning", "tuesday", "monday"),
                        ("security", "thursday", "friday"), ("training", "wednesday", "monday")]
]


def test_tiny_t5_is_tuned_and_evaluated_through_the_magics(ip, tiny_t5):
    from nbkit.models import family_of

    def is_seq2seq(spec):
        return family_of(spec) == "seq2seq"

    assert is_seq2seq(tiny_t5) and not is_seq2seq("smollm2-135m")
    ip.user_ns["meetings"] = {"train": ROWS, "test": ROWS[:4]}
    ip.run_cell_magic("prompt", "brief --target '{{ summary }}'", "summarize: {{ text }}")
    ip.run_line_magic("tune", f"--prompt brief --data meetings --model {tiny_t5} --method full --epochs 40 "
                              "--lr 3e-3 --batch-size 5 --warmup 0 --name t5-full --progress none -o full")
    ip.run_line_magic("tune", f"--prompt brief --data meetings --model {tiny_t5} --method lora --epochs 5 "
                              "--name t5-lora --progress none -o lora")
    full, lora = ip.user_ns["full"], ip.user_ns["lora"]
    assert full.config["architecture"] == "seq2seq" and full.is_full_model
    assert (lora.adapter_path / "adapter_config.json").exists()
    assert full.metrics["train_loss"] < full.metrics["first_loss"] / 3
    assert lora.metrics["train_loss"] < lora.metrics["first_loss"]
    report = ip.run_line_magic("evaluate", f"--prompt brief --run t5-full --run t5-lora --model {tiny_t5} "
                                           "--data meetings --split train --metric rougeL --metric exact_match")
    table = report.frame
    print(table)
    assert list(table.index) == ["brief", "brief + t5-full", "brief + t5-lora"]
    # the random model says nothing useful; the fully tuned one learned the training summaries
    assert table.loc["brief + t5-full", "rougeL"] > table.loc["brief", "rougeL"] + 0.5
    with pytest.raises(Exception, match="perplexity is for decoders"):
        ip.run_line_magic("evaluate", f"--prompt brief --model {tiny_t5} --data meetings --metric perplexity")
    with pytest.raises(Exception, match="not available for encoder-decoder"):
        ip.run_line_magic("tune", f"--prompt brief --data meetings --model {tiny_t5} --method prefix-tuning")


class _StopAt:
    """A progress subscriber that raises ``error`` at step ``step``, like a failure mid-run or a Ctrl-C."""

    def __init__(self, step: int, error: BaseException):
        self.step, self.error = step, error

    def on_begin(self, e): ...

    def on_evaluate(self, e): ...

    def on_note(self, text): ...

    def on_end(self, e): ...

    def on_step(self, e):
        if e.step == self.step:
            raise self.error


@pytest.mark.parametrize("error, raised, status", [
    (RuntimeError("the disk is full"), "TrainingFailed", "failed"),
    (KeyboardInterrupt(), "TrainingInterrupted", "interrupted"),
])
def test_every_family_fails_and_is_interrupted_alike(tiny_t5, smol, intent_prompt, error, raised, status):
    """A decoder, an encoder (both tasks) and an encoder-decoder run that stop mid-training raise the same
    nbkit exception, marked in status.json with the run kept (the recipes share one way to end)."""
    import nbkit.errors
    from nbkit import tune
    from nbkit.prompts import Prompt

    pairs = [{"query": f"question {i}", "positive": f"answer {i}"} for i in range(8)]
    summarize = Prompt("summarize: {{ text }}", name="brief-stop", target="{{ summary }}")
    runs = {
        "decoder": lambda cb: tune(intent_prompt, "sample:intent", max_steps=3, name="dec-stop", callbacks=[cb]),
        "classifier": lambda cb: tune(intent_prompt, "sample:intent", task="classification", epochs=1,
                                      name="cls-stop", callbacks=[cb]),
        "embedding": lambda cb: tune(None, pairs, task="embedding", batch_size=2, name="emb-stop", callbacks=[cb]),
        "seq2seq": lambda cb: tune(summarize, ROWS, model=tiny_t5, batch_size=2, name="s2s-stop", callbacks=[cb]),
    }
    for family, start in runs.items():
        with pytest.raises(getattr(nbkit.errors, raised)) as e:
            start(_StopAt(2, error))
        run = e.value.run
        assert run.status == status, family
        assert (run.path / "config.json").exists() and not run.has_adapter(), family
        if raised == "TrainingFailed":
            assert "the disk is full" in e.value.reason, family
