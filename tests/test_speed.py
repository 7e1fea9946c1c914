"""What a run does to go faster: packed batches (every example in a packed row sees only itself, the loss and
gradients are the padded batch's) and compiled layers (the same losses as eager), each only where it can."""

import pytest
import torch

import nbkit
from nbkit.encoding import training_example
from nbkit.errors import ConfigError
from nbkit.training.packing import PackedAttention, pack
from nbkit.training.trainer import collate


def _examples(prompt, tokenizer, n=6):
    rows = list(nbkit.load_data("sample:intent", split="train"))[:n]
    return [training_example(prompt, row, tokenizer, 256)[0] for row in rows]


def _tiny_llama(seed=0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def test_a_packed_row_gives_each_example_the_logits_it_has_alone(smol, intent_prompt):
    """The embedded model, six sample:intent examples end to end in one row: each example's logits are the ones
    it gets run alone (float tolerance), the first example's and the last's alike."""
    examples = _examples(intent_prompt, smol.tokenizer)
    model = smol.model
    with torch.no_grad():
        alone = [model(input_ids=torch.tensor([e["input_ids"]])).logits[0] for e in examples]
        row = pack(examples)
        with PackedAttention(model):
            packed = model(input_ids=row["input_ids"], position_ids=row["position_ids"],
                           cu_seq_lens_q=row["cu_seq_lens_q"]).logits[0]
    assert model.config._attn_implementation == "sdpa"  # given back after
    pieces = torch.split(packed, [len(e["input_ids"]) for e in examples])
    assert len(pieces) == len(examples) > 1
    for a, p in zip(alone, pieces):
        assert torch.allclose(a, p, atol=2e-4, rtol=1e-4), (a - p).abs().max()


def test_the_packed_loss_and_gradients_are_the_padded_batchs(smol, intent_prompt):
    """The same examples padded (nbkit's collator) and packed: the same mean loss over their target tokens and
    the same gradient for every weight."""
    examples = _examples(intent_prompt, smol.tokenizer)
    results = []
    for batch, packed in ((collate(smol.tokenizer.pad_token_id)(examples), False), (pack(examples), True)):
        model = _tiny_llama()
        with PackedAttention(model) if packed else torch.enable_grad():
            loss = model(**batch).loss
            loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (padded_loss, padded_grads), (packed_loss, packed_grads) = results
    assert abs(padded_loss - packed_loss) < 1e-5
    for name, grad in padded_grads.items():
        assert torch.allclose(grad, packed_grads[name], atol=1e-6, rtol=1e-4), name


def test_packed_labels_never_ask_an_example_to_predict_the_next_ones_start():
    row = pack([{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4, 5], "labels": [4, 5]}])
    assert row["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert row["labels"].tolist() == [[-100, 2, 3, -100, 5]]
    assert row["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert row["cu_seq_lens_q"].tolist() == [0, 3, 5]


@pytest.mark.parametrize("settings, flag, reason", [
    ({"method": "prompt-tuning", "packing": "on"}, "packing", "learned tokens"),
    ({"method": "prefix-tuning", "packing": True}, "packing", "learned tokens"),  # true: on, as configs had it
    ({"method": "lora", "packing": "on", "dropout": 0.0, "objective": "dpo"}, "packing", "pairs"),
    ({"method": "qlora", "compile": "on"}, "compile", "4-bit"),
    ({"method": "prompt-tuning", "compile": "on"}, "compile", "prefix"),
    ({"method": "lora", "packing": "yes"}, "packing", "auto, on or off"),
    ({"method": "lora", "compile": "always"}, "compile", "auto, on or off"),
])
def test_speedups_that_cannot_work_are_refused_before_any_weights_load(intent_prompt, monkeypatch, settings, flag,
                                                                        reason):
    from nbkit import models

    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    data = "sample:preference" if settings.get("objective") == "dpo" else "sample:intent"
    prompt = None if settings.get("objective") == "dpo" else intent_prompt
    if prompt is None:
        prompt = nbkit.Prompt("{{ instruction }}", name="pref", target="{{ chosen }}")
    with pytest.raises(ConfigError, match=f"{flag}.*{reason}"):
        nbkit.tune(prompt, data, max_steps=1, **settings)


def test_packing_auto_packs_cpu_runs_that_can_and_leaves_the_others_padded():
    """auto: packed on the CPU wherever a run can pack; padded (not refused) where it cannot, and on GPUs."""
    from types import SimpleNamespace

    from transformers import BloomConfig, LlamaConfig

    from nbkit.config import TuneConfig
    from nbkit.training import speed

    adapter, prompt = SimpleNamespace(kind="adapter", quantize=None), SimpleNamespace(kind="prompt", quantize=None)

    def packed(spec=adapter, objective="sft", tasks=1, processes=1, device="cpu", config=LlamaConfig(), **settings):
        cfg = TuneConfig(prompt="p", data="sample:intent", compile="off", **settings)
        return speed.plan(cfg, spec, objective, tasks, processes, config, steps=10, device=device).packed

    assert TuneConfig(prompt="p", data="d").packing == "auto"
    assert packed() and packed(method="qlora") and packed(method="dora")
    assert not packed(device="cuda") and packed(device="cuda", packing="on")
    assert not packed(method="prompt-tuning", spec=prompt) and not packed(objective="dpo")
    assert not packed(tasks=2) and not packed(processes=2) and not packed(config=BloomConfig())
    assert not packed(packing="off") and not packed(packing=False) and packed(packing=True)


def test_compile_auto_waits_for_runs_long_enough_to_pay():
    from nbkit.training.compiling import AUTO_STEPS, compiler_missing, decide, pays

    assert pays(AUTO_STEPS, "cuda") and not pays(AUTO_STEPS - 1, "cuda")
    assert not pays(100 * AUTO_STEPS, "cpu")  # measured: no gain on one of two CPUs (bench/README.md)
    if compiler_missing("cpu"):
        pytest.skip(compiler_missing("cpu"))
    plain = dict(kind="adapter", quantize=None, checkpointing=False, device="cpu")
    assert not decide("auto", steps=100 * AUTO_STEPS, **plain)
    assert decide("on", steps=1, **plain) and not decide("off", steps=10 * AUTO_STEPS, **plain)


@pytest.mark.slow
def test_a_packed_run_trains_as_the_padded_one(intent_prompt):
    """Three steps of LoRA (dropout 0, so nothing random differs) packed and padded: the same losses."""
    runs = [nbkit.tune(intent_prompt, "sample:intent", method="lora", max_steps=3, dropout=0.0, packing=p,
                       name=f"packing-{p}", callbacks=[]) for p in ("on", "off")]
    packed, padded = ([h["loss"] for h in r.history] for r in runs)
    assert len(packed) == 3 and packed == pytest.approx(padded, rel=2e-3), (packed, padded)


@pytest.mark.slow
def test_compiled_layers_train_as_eager_ones(intent_prompt):
    """Three steps of LoRA with each layer compiled and without (packed, the CPU's default): the same losses
    (float tolerance)."""
    from nbkit.training.compiling import compiler_missing

    if compiler_missing("cpu"):
        pytest.skip(compiler_missing("cpu"))
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    compiled = nbkit.tune(intent_prompt, "sample:intent", method="lora", max_steps=3, dropout=0.0, compile="on",
                          name="compiled", callbacks=[])
    assert counters["stats"]["unique_graphs"] > graphs  # compiled for real, not fallen back to eager
    eager = nbkit.tune(intent_prompt, "sample:intent", method="lora", max_steps=3, dropout=0.0, compile="off",
                       name="eager", callbacks=[])
    compiled, eager = ([h["loss"] for h in r.history] for r in (compiled, eager))
    assert len(compiled) == 3 and compiled == pytest.approx(eager, rel=2e-3), (compiled, eager)
