"""Real training on the embedded model: it must learn, and leave a run a user can trust."""

import json

import pytest
import torch

import nbkit
from nbkit import events
from nbkit.errors import RunExistsError, TrainingInterrupted

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """The quickstart's LoRA with default hyperparameters, trained once for this module."""
    from nbkit.prompts import Prompt

    root = tmp_path_factory.mktemp("runs")
    prompt = Prompt(
        "Which team should handle this customer message? Answer refund, delivery, account or other.\n"
        "Message: {{ text }}\nTeam:",
        name="intent", target="{{ label }}", choices=["refund", "delivery", "account", "other"],
    )
    import os

    os.environ["NBKIT_RUNS_DIR"] = str(root)
    return prompt, nbkit.tune(prompt, "sample:intent", name="lora")


def test_default_lora_beats_zero_shot_on_unseen_data(lora_run):
    prompt, run = lora_run
    history = run.history
    assert history[-1]["loss"] < history[0]["loss"] / 3
    report = nbkit.evaluate(prompt, run, "sample:intent")  # test split: never trained on
    zero_shot, tuned = report.frame.loc["intent", "accuracy"], report.frame.loc["intent + lora", "accuracy"]
    assert tuned >= zero_shot + 0.25 and tuned >= 0.7, report.frame


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


def test_qlora_learns_on_the_cpu(intent_prompt, smol):
    """The bitsandbytes CPU packing bug (docs/qlora-cpu.md) must not stop QLoRA learning."""
    # an eval-mode, no-grad 4-bit forward first: this is what used to break training
    four_bit = nbkit.load_model("smollm2-135m", quantize="4bit")
    zero_shot = nbkit.evaluate(intent_prompt, None, "sample:intent", model="smollm2-135m", limit=40)
    run = nbkit.tune(intent_prompt, "sample:intent", method="qlora", name="q", max_steps=30)
    losses = [h["loss"] for h in run.history]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 / 3, losses
    tuned = nbkit.evaluate(None, run, "sample:intent", limit=40)
    assert tuned.frame["accuracy"].iloc[0] >= zero_shot.frame["accuracy"].iloc[0] + 0.2, (zero_shot.frame, tuned.frame)
    assert four_bit is nbkit.load_model("smollm2-135m", quantize="4bit")  # evaluation reused the session's copy


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
