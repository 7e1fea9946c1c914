"""Real training on the embedded model: it must learn, and leave a run a user can trust."""

import json

import pytest
import torch

import nbkit
from conftest import SigintAt, adapter_tensors
from nbkit import events
from nbkit.errors import RunExistsError, TrainingInterrupted

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """The quickstart's LoRA with default hyperparameters, 30 steps of 8 (1.3 epochs) instead of the default 3
    epochs, trained once for this module. (Two epochs reaching 71% is the quickstart's saved output, which
    CI checks with nbval.)"""
    from nbkit.prompts import Prompt

    root = tmp_path_factory.mktemp("runs")
    prompt = Prompt(
        "Which team should handle this customer message? Answer refund, delivery, account or other.\n"
        "Message: {{ text }}\nTeam:",
        name="intent", target="{{ label }}", choices=["refund", "delivery", "account", "other"],
    )
    import os

    os.environ["NBKIT_RUNS_DIR"] = str(root)
    return prompt, nbkit.tune(prompt, "sample:intent", name="lora", max_steps=30)


def test_default_lora_beats_zero_shot_on_unseen_data_after_30_steps(lora_run):
    prompt, run = lora_run
    history = run.history
    assert history[-1]["loss"] < history[0]["loss"] / 3
    report = nbkit.evaluate(prompt, run, "sample:intent")  # test split: never trained on
    zero_shot, tuned = report.frame.loc["intent", "accuracy"], report.frame.loc["intent + lora", "accuracy"]
    assert tuned >= zero_shot + 0.25, report.frame  # 0.25 -> 0.55 here; 0.7125 after two epochs (the quickstart)


def test_run_directory_is_complete_and_plain_peft_loads_it(lora_run, smol):
    from peft import PeftModel

    prompt, run = lora_run
    files = {p.name for p in run.path.iterdir()}
    assert {"adapter", "config.json", "prompt.json", "data.json", "metrics.jsonl", "status.json"} <= files
    assert run.status == "completed" and run.config["method"] == "lora" and run.config["lr"] == 5e-4
    assert json.loads((run.path / "data.json").read_text())["rows"] == {"train": 184, "test": 80}
    assert not list(run.path.glob(".adapter*"))  # no temporary leftovers

    base = nbkit.load_model("smollm2-135m", fresh=True).model
    plain = PeftModel.from_pretrained(base, str(run.adapter_path)).eval()
    ids = smol.tokenizer("Message: my parcel never came\nTeam:", return_tensors="pt")["input_ids"]
    with torch.no_grad(), smol.adapter(run.adapter_path) as ours:
        expected = ours(input_ids=ids).logits
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, expected, atol=1e-4)


def test_existing_run_is_not_overwritten(lora_run, monkeypatch):
    prompt, run = lora_run
    monkeypatch.setenv("NBKIT_RUNS_DIR", str(run.path.parent))
    before = (run.adapter_path / "adapter_model.safetensors").read_bytes()
    with pytest.raises(RunExistsError):
        nbkit.tune(prompt, "sample:intent", name="lora", max_steps=1)
    assert (run.adapter_path / "adapter_model.safetensors").read_bytes() == before


class _InterruptAt(events.Callback):
    def __init__(self, step):
        self.step = step

    def on_step(self, e):
        if e.step == self.step:
            raise KeyboardInterrupt


def test_interrupt_leaves_the_run_marked_not_corrupt(intent_prompt):
    with pytest.raises(TrainingInterrupted) as e:
        nbkit.tune(intent_prompt, "sample:intent", name="stopped", max_steps=20,
                   callbacks=[_InterruptAt(2)])
    run = e.value.run
    assert run.status == "interrupted" and run.metrics["steps"] == 2
    assert not run.has_adapter() and not list(run.path.glob(".adapter*"))
    assert len(run.history) == 2
    with pytest.raises(nbkit.errors.NbkitError, match="no adapter"):
        nbkit.evaluate(None, str(run.path), "sample:intent")


def test_qlora_learns_on_the_cpu(intent_prompt, smol, tmp_path):
    """The bitsandbytes CPU packing bug (docs/qlora-cpu.md) must not stop QLoRA learning."""
    # an eval-mode, no-grad 4-bit forward first: this is what used to break training
    four_bit = nbkit.load_model("smollm2-135m", quantize="4bit")
    zero_shot = nbkit.evaluate(intent_prompt, None, "sample:intent", model="smollm2-135m", limit=40)
    run = nbkit.tune(intent_prompt, "sample:intent", method="qlora", name="q", max_steps=30)
    losses = [h["loss"] for h in run.history]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 / 3, losses
    tuned = nbkit.evaluate(None, run, "sample:intent", limit=40)
    # 30 steps land at 0.35-0.475 on these 40 rows over seeds 0-2, packed or padded alike (2026-12-07), zero-shot
    # at 0.2: 6 rows more is learning, and a model that does not learn stays at zero-shot
    assert tuned.frame["accuracy"].iloc[0] >= zero_shot.frame["accuracy"].iloc[0] + 0.15, (zero_shot.frame, tuned.frame)
    # training let the session's 4-bit copy go (one copy in memory at a time); the evaluation loaded the next one
    again = nbkit.load_model("smollm2-135m", quantize="4bit")
    assert again is not four_bit and again is nbkit.load_model("smollm2-135m", quantize="4bit")
    # merging dequantizes the 4-bit base first: the merged model matches the adapter on its 4-bit base
    exported = nbkit.export(run, tmp_path / "merged")
    assert exported.merged and exported.max_logit_diff < 1e-2, exported
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert "quantization_config" not in config  # a plain full-precision model


def test_qlora_unpacks_layers_bitsandbytes_packed_for_inference():
    import bitsandbytes as bnb

    from nbkit.methods.qlora import keep_trainable_layout

    model = nbkit.load_model("smollm2-135m", quantize="4bit", fresh=True).model.eval()
    with torch.no_grad():
        model(input_ids=torch.tensor([[1, 2, 3]]))
    layer = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    if not getattr(layer.weight.quant_state, "packing_format_for_cpu", False):
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not pack, nothing to undo")
    assert keep_trainable_layout(model) == 30 * 7
    x = torch.randn(2, layer.in_features, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_same_seed_same_adapter_and_an_interrupted_run_resumes_to_the_same_adapter(intent_prompt):
    settings = dict(max_steps=12, batch_size=4, seed=3, callbacks=[])
    first = nbkit.tune(intent_prompt, "sample:intent", name="first", **settings)
    again = nbkit.tune(intent_prompt, "sample:intent", name="again", **settings)
    a, b = adapter_tensors(first), adapter_tensors(again)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # reproducible on the CPU

    with pytest.raises(TrainingInterrupted) as e:
        nbkit.tune(intent_prompt, "sample:intent", name="cut", **{**settings, "callbacks": [SigintAt(5)]})
    cut = e.value.run
    assert cut.status == "interrupted" and not cut.has_adapter()
    assert (cut.path / "checkpoints" / "checkpoint-5").is_dir()  # saved at the step boundary, not lost
    resumed = nbkit.tune(intent_prompt, "sample:intent", name="cut", resume=True, **settings)
    assert resumed.status == "completed" and [h["step"] for h in resumed.history] == list(range(1, 13))
    c = adapter_tensors(resumed)
    for k in a:
        assert torch.allclose(a[k], c[k], atol=1e-6), k


def test_resume_refuses_changed_settings(intent_prompt):
    with pytest.raises(TrainingInterrupted):
        nbkit.tune(intent_prompt, "sample:intent", name="r", max_steps=12, batch_size=4,
                   callbacks=[SigintAt(2)])
    with pytest.raises(nbkit.errors.ConfigError, match="lr"):
        nbkit.tune(intent_prompt, "sample:intent", name="r", max_steps=12, batch_size=4, lr=1e-3, resume=True)


class _Collect(events.Callback):
    def __init__(self):
        self.evaluations, self.begin = [], None

    def on_begin(self, e):
        self.begin = e

    def on_evaluate(self, e):
        self.evaluations.append(e)


def test_dev_evaluation_keeps_the_best_checkpoint_and_shows_generations(intent_prompt, smol):
    from nbkit.data import load_data
    from nbkit.predict.decoder import predict_decoder
    from nbkit.config import TuneConfig
    from nbkit.training.tasks import split_dev

    seen = _Collect()
    run = nbkit.tune(intent_prompt, "sample:intent", name="dev", max_steps=8, dev=0.2, eval_every=2,
                     callbacks=[seen, events.PlainProgress()])
    assert seen.begin.dev_examples == 37 and "GiB" in seen.begin.memory
    assert [e.step for e in seen.evaluations] == [2, 4, 6, 8] == [r["step"] for r in run.dev_history]
    assert all(e.metric == "accuracy" and len(e.samples) == 3 and e.samples[0]["expected"] in intent_prompt.choices
               for e in seen.evaluations)
    best = max(run.dev_history, key=lambda r: r["eval_accuracy"])
    assert run.metrics["best_step"] == best["step"] and run.metrics["dev_accuracy"] == best["eval_accuracy"]
    # the saved adapter is the best checkpoint: it scores the dev rows exactly as recorded
    splits = load_data("sample:intent")
    train, dev = split_dev(splits, TuneConfig(prompt="intent", data="sample:intent", dev=0.2))
    with smol.adapter(run.adapter_path) as lm:
        frame = predict_decoder(lm, smol.tokenizer, intent_prompt, dev, train, "sum", 16)
    assert frame["correct"].mean() == best["eval_accuracy"]


def test_early_stopping_ends_a_run_that_stopped_improving(intent_prompt):
    run = nbkit.tune(intent_prompt, "sample:intent", name="flat", max_steps=20, dev=12, eval_every=3,
                     patience=1, lr=1e-12, callbacks=[])  # too small to change anything: no improvement
    assert run.status == "completed" and run.metrics["steps"] == 6 and len(run.dev_history) == 2
    assert run.metrics["best_step"] == 3


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(intent_prompt):
    import math

    from nbkit.errors import TrainingFailed

    # a checkpoint every step (dev evaluation each step); warm-up makes the first update 0, the second absurd
    with pytest.raises(TrainingFailed, match="Lower --lr") as e:
        nbkit.tune(intent_prompt, "sample:intent", name="nan", max_steps=40, lr=1e30, dev=4, eval_every=1,
                   callbacks=[])
    run = e.value.run
    assert run.status == "failed" and not run.has_adapter() and "Lower --lr" in run._read("status.json")["error"]
    losses = [h["loss"] for h in run.history]
    assert math.isfinite(losses[0]) and not math.isfinite(losses[-1]) and len(losses) < 10
    kept = sorted(int(c.name.split("-")[1]) for c in (run.path / "checkpoints").glob("checkpoint-*"))
    assert kept and max(kept) < len(losses)  # the broken step was never saved; the last good one is there


def test_plain_peft_in_a_fresh_process_gives_the_same_logits(lora_run, smol, tmp_path):
    import subprocess
    import sys

    from nbkit.models import embedded_path

    prompt, run = lora_run
    text = "Message: my parcel never came\nTeam:"
    script = (
        "import sys, torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\nfrom peft import PeftModel\n"
        f"base = AutoModelForCausalLM.from_pretrained({str(embedded_path('smollm2-135m'))!r})\n"
        f"tok = AutoTokenizer.from_pretrained({str(embedded_path('smollm2-135m'))!r})\n"
        f"model = PeftModel.from_pretrained(base, {str(run.adapter_path)!r}).eval()\n"
        f"ids = tok({text!r}, return_tensors='pt')['input_ids']\n"
        f"with torch.no_grad(): torch.save(model(input_ids=ids).logits, {str(tmp_path / 'logits.pt')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = smol.tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad(), smol.adapter(run.adapter_path) as ours:
        expected = ours(input_ids=ids).logits
    assert torch.allclose(torch.load(tmp_path / "logits.pt"), expected, atol=1e-4)


def test_merged_export_loads_without_nbkit_and_matches_the_adapter(lora_run, smol, tmp_path):
    from transformers import AutoModelForCausalLM

    from nbkit.cli import main

    prompt, run = lora_run
    assert main(["export", str(run.path), "--out", str(tmp_path / "merged")]) == 0
    meta = json.loads((tmp_path / "merged" / "nbkit_export.json").read_text())
    assert meta["merged"] and meta["checked_examples"] == 4 and meta["max_logit_diff"] < 1e-3
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = smol.tokenizer("Message: I was charged twice\nTeam:", return_tensors="pt")["input_ids"]
    with torch.no_grad(), smol.adapter(run.adapter_path) as ours:
        assert torch.allclose(merged(input_ids=ids).logits, ours(input_ids=ids).logits, atol=1e-3)
    assert main(["export", str(run.path), "--out", str(tmp_path / "merged")]) == 1  # never overwrites silently


def test_seeds_train_one_run_each_and_evaluate_summarises_them(intent_prompt, ip):
    """%tune --seeds 2 trains NAME-s0 and NAME-s1 (different adapters: the seed is all that differs);
    %evaluate --run on the bound variable scores both and reports their mean and spread."""
    from nbkit.session import register_prompt

    register_prompt(intent_prompt)
    runs = ip.run_line_magic("tune", "--prompt intent --data sample:intent --max-steps 3 --seeds 2 --seed 4 "
                                     "--name seeded --progress none -o seeded")
    assert runs.names == ["seeded-s4", "seeded-s5"] and [r.config["seed"] for r in runs] == [4, 5]
    assert all(r.status == "completed" for r in runs) and "seeded-s4 (completed)" in repr(runs)
    from safetensors.torch import load_file

    a, b = (load_file(str(r.adapter_path / "adapter_model.safetensors")) for r in runs)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    report = ip.run_line_magic("evaluate", "--run seeded --data sample:intent --limit 12")
    assert list(report.frame.index) == ["intent + seeded-s4", "intent + seeded-s5"]
    row = report.seeds().loc["intent + seeded-s*"]
    assert row["seeds"] == 2 and row["accuracy_mean"] == pytest.approx(report.frame["accuracy"].mean())
