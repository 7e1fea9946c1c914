"""Every tuning method: options validated by name, unfit methods refused before loading, the CUDA-only
choices made right without a GPU, and (slow) each method learning on the embedded model."""

import types

import pytest

import nbkit
from nbkit import models
from nbkit.errors import ConfigError
from nbkit.memory import Estimate, estimate_parameters, estimate_training
from nbkit.methods import available_methods, get_method
from nbkit.methods.prompt_tuning import init_text
from nbkit.config import TuneConfig
from nbkit.training.decoder import explain
from nbkit.training.trainer import optimizer_name, schedule

LLAMA = types.SimpleNamespace(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                              num_attention_heads=9, num_key_value_heads=3, head_dim=64, vocab_size=49152,
                              tie_word_embeddings=True, use_cache=True)


def test_every_method_the_guide_names_is_registered():
    assert set(available_methods()) == {"lora", "qlora", "dora", "ia3", "prompt-tuning", "p-tuning",
                                        "prefix-tuning", "full", "setfit"}
    assert available_methods("encoder") == ["full", "lora", "setfit"]
    for name in available_methods():
        m = get_method(name)
        assert m.summary and m.lr > 0 and m.kind in ("adapter", "prompt", "full", "setfit")


@pytest.mark.parametrize("method, family, dropout", [
    ("lora", "decoder", 0.0), ("dora", "decoder", 0.0),  # measured: never less accurate, 1.2-1.5x faster
    ("qlora", "decoder", 0.05),  # measured: 3-8 rows of 80 lost without it on sample:intent
    ("lora", "encoder", 0.05), ("lora", "seq2seq", 0.05),
])
def test_lora_dropout_defaults_by_method_and_family(method, family, dropout):
    assert get_method(method).make_options({}, family).dropout == dropout
    assert get_method(method).make_options({"dropout": 0.1}, family).dropout == 0.1  # a given one is kept


@pytest.mark.parametrize("method, options, field", [
    ("dora", {"r": 0}, "r"), ("dora", {"alpha": -1}, "alpha"), ("lora", {"dropout": 2}, "dropout"),
    ("ia3", {"target_modules": " "}, "target_modules"),
    ("ia3", {"target_modules": "k_proj,v_proj", "feedforward_modules": "down_proj"}, "feedforward_modules"),
    ("prompt-tuning", {"virtual_tokens": 0}, "virtual_tokens"), ("prompt-tuning", {"init": "vocab"}, "init"),
    ("p-tuning", {"encoder": "gru"}, "encoder"), ("p-tuning", {"encoder_hidden": -4}, "encoder_hidden"),
    ("prefix-tuning", {"virtual_tokens": 2.5}, "virtual_tokens"), ("prefix-tuning", {"projection": "yes"}, "projection"),
    ("full", {"max_parameters": 0}, "max_parameters"),
    ("prompt-tuning", {"r": 8}, "r"),  # an option of another method is named, with what this one takes
    ("ia3", {"alpha": 16}, "alpha"),
])
def test_method_options_are_validated_by_name(method, options, field, intent_prompt, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ConfigError) as e:
        nbkit.tune(intent_prompt, "sample:intent", method=method, **options)
    assert e.value.field == field and field in str(e.value)


def test_unfit_methods_are_refused_before_weights_load():
    no_cache = types.SimpleNamespace(model_type="toy", hidden_size=8, use_cache=True)
    with pytest.raises(ConfigError, match="prompt-tuning, p-tuning or lora"):
        get_method("prefix-tuning").check(no_cache, get_method("prefix-tuning").make_options())
    with pytest.raises(ConfigError, match="name the layers"):
        get_method("ia3").check(types.SimpleNamespace(model_type="toy"), get_method("ia3").make_options())
    big = types.SimpleNamespace(**{**vars(LLAMA), "hidden_size": 8192, "intermediate_size": 28672,
                                   "num_hidden_layers": 80, "num_attention_heads": 64, "head_dim": 128,
                                   "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False})
    with pytest.raises(ConfigError, match="use lora or qlora"):
        get_method("full").check(big, get_method("full").make_options())
    with pytest.raises(ConfigError, match="q_proj"):
        get_method("lora").check(LLAMA, get_method("lora").make_options({"target_modules": "query,value"}))
    get_method("full").check(LLAMA, get_method("full").make_options())  # 135M is fine


def test_a_method_check_runs_on_the_real_config_before_loading(intent_prompt, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ConfigError, match="not a layer of a llama model"):
        nbkit.tune(intent_prompt, "sample:intent", method="dora", target_modules="attn.c_proj")


def test_prompt_tuning_starts_from_the_prompts_own_words():
    template = "{# comment #}Which team?{% if x %} maybe{% endif %}\nMessage: {{ text }}\nTeam:"
    assert init_text(template) == "Which team? maybe Message: Team:"
    assert init_text("{{ text }}") == ""


def test_parameter_estimate_matches_the_embedded_model_exactly():
    # SmolLM2-135M has 134,515,008 parameters (counted from the loaded model in test_models)
    assert estimate_parameters(LLAMA) == 134_515_008


def test_memory_estimate_warns_and_says_what_to_change():
    est = estimate_training(LLAMA, method_kind="full", quantize=None, trainable=None, batch_size=64, seq_len=512,
                            weight_bytes=4, gradient_checkpointing=False, device="cuda", available=2 * 2**30)
    assert not est.fits and est.total > 2 * 2**30
    tips = " ".join(est.suggestions("full", 64, False))
    assert "--gradient-checkpointing" in tips and "--batch-size 32" in tips and "--method lora" in tips
    four_bit = estimate_training(LLAMA, method_kind="adapter", quantize="4bit", trainable=None, batch_size=8,
                                 seq_len=64, weight_bytes=4, gradient_checkpointing=False, device="cpu",
                                 available=24 * 2**30)
    fp32 = estimate_training(LLAMA, method_kind="adapter", quantize=None, trainable=None, batch_size=8,
                             seq_len=64, weight_bytes=4, gradient_checkpointing=False, device="cpu",
                             available=24 * 2**30)
    assert four_bit.fits and four_bit.weights < fp32.weights / 2
    assert "GiB" in four_bit.describe()


def test_out_of_memory_is_answered_with_the_estimate_and_a_suggestion():
    est = Estimate(weights=3 * 2**30, optimizer=2**30, activations=4 * 2**30, available=6 * 2**30, device="cuda:0")
    cfg = TuneConfig(prompt="p", data="d", method="lora", batch_size=16)
    message = explain(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), est, None, cfg)
    assert message.startswith("out of memory: ~8.00 GiB estimated on cuda:0")
    assert "--method qlora" in message and "--batch-size 8 --grad-accum 2" in message


def test_cuda_paths_pick_paged_8bit_adam_for_qlora_only():
    assert optimizer_name("cuda", "4bit") == "paged_adamw_8bit"
    assert optimizer_name("cuda", None) == "adamw_torch"
    assert optimizer_name("cpu", "4bit") == "adamw_torch"  # paged optimizers exist for CUDA only


def test_bf16_is_the_cuda_default_where_supported(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert models.autocast_precision("cuda") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert models.autocast_precision("cuda") == "fp16"
    assert models.autocast_precision("cpu") == "fp32"


def test_schedule_checkpoints_at_every_dev_evaluation():
    cfg = TuneConfig(prompt="p", data="d", epochs=2, batch_size=8, dev=0.1)
    plan = schedule(cfg, examples=160, dev=True)
    assert plan == {"total": 40, "save_steps": 8, "eval_steps": 8}
    assert schedule(TuneConfig(prompt="p", data="d", max_steps=100), 10, dev=False)["save_steps"] == 25


@pytest.mark.parametrize("kwargs, field", [
    ({"dev": 0}, "dev"), ({"dev": "train"}, "dev"), ({"dev": 1.5}, "dev"), ({"patience": 2}, "patience"),
    ({"dev": 0.1, "eval_every": 0}, "eval_every"), ({"gradient_checkpointing": "yes"}, "gradient_checkpointing"),
])
def test_training_settings_are_validated_by_name(kwargs, field):
    with pytest.raises(ConfigError) as e:
        TuneConfig(prompt="p", data="d", **kwargs)
    assert e.value.field == field


def test_dev_split_name_must_exist(intent_prompt, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ConfigError, match="'validation' is not a split"):
        nbkit.tune(intent_prompt, "sample:intent", dev="validation")
    with pytest.raises(ConfigError, match="nothing would be left"):
        nbkit.tune(intent_prompt, "sample:intent", dev=500)


# -- slow: each method learns on the embedded model -----------------------------------------------------------

LEARNERS = ["dora", "ia3", "prompt-tuning", "p-tuning", "prefix-tuning", "full"]  # lora, qlora: test_training
STEPS = {"adapter": 20, "full": 12, "prompt": 12}


@pytest.fixture(scope="module")
def method_runs(tmp_path_factory):
    """Every method trained once with its defaults on sample:intent: adapters 20 steps of 8 (under one epoch),
    full fine-tuning 12 (every weight moves: it clears the bar sooner), learned prompts 12 (their bar is only
    to match zero-shot; the methods table has them over two epochs)."""
    import os

    from nbkit.prompts import Prompt

    os.environ["NBKIT_RUNS_DIR"] = str(tmp_path_factory.mktemp("method-runs"))
    prompt = Prompt(
        "Which team should handle this customer message: refund, delivery, account or other?\n"
        "Message: {{ text }}\nTeam:",
        name="intent", target="{{ label }}", choices=["refund", "delivery", "account", "other"],
    )
    zero_shot = nbkit.evaluate(prompt, None, "sample:intent", limit=40).frame.loc["intent", "accuracy"]
    runs = {m: nbkit.tune(prompt, "sample:intent", method=m, name=m, max_steps=STEPS[get_method(m).kind], callbacks=[])
            for m in LEARNERS}
    return prompt, zero_shot, runs


@pytest.mark.slow
@pytest.mark.parametrize("method", LEARNERS)
def test_every_method_learns(method_runs, method):
    prompt, zero_shot, runs = method_runs
    run = runs[method]
    losses = [h["loss"] for h in run.history]
    assert len(losses) == STEPS[get_method(method).kind] and sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 / 2, losses
    tuned = nbkit.evaluate(None, run, "sample:intent", limit=40).frame["accuracy"].iloc[0]
    # learned prompts learn slowly on a 135M model (see the methods table); weights clearly beat zero-shot
    margin = 0.0 if get_method(method).kind == "prompt" else 0.2
    assert tuned >= zero_shot + margin, (method, zero_shot, tuned)
    assert run.status == "completed" and not (run.path / "checkpoints").exists()
    trainable = run.metrics["trainable_parameters"]
    if method == "full":
        assert run.is_full_model and trainable == run.metrics["total_parameters"]
    else:
        assert not run.is_full_model and 0 < trainable < run.metrics["total_parameters"] / 20


@pytest.mark.slow
def test_runs_of_different_kinds_compare_on_one_base_model(method_runs):
    """LoRA-family, IA3 and learned-prompt adapters swap on the session's one base model."""
    prompt, zero_shot, runs = method_runs
    base = nbkit.load_model("smollm2-135m")  # the session's copy (each training run let the one before go)
    picked = [runs["ia3"], runs["prompt-tuning"], runs["dora"], runs["prefix-tuning"]]
    together = nbkit.evaluate(prompt, picked, "sample:intent", limit=16).frame["accuracy"]
    for run in picked:
        alone = nbkit.evaluate(None, run, "sample:intent", limit=16).frame["accuracy"].iloc[0]
        assert together.loc[f"intent + {run.name}"] == alone, run.name
    assert together.loc["intent"] == nbkit.evaluate(prompt, None, "sample:intent", limit=16).frame["accuracy"].iloc[0]
    assert nbkit.load_model("smollm2-135m") is base


@pytest.mark.slow
def test_soft_prompt_generates_through_prompt_run(method_runs):
    prompt, _, runs = method_runs
    gens = nbkit.generate(prompt, "sample:intent", adapter=runs["prompt-tuning"], limit=3, max_new_tokens=4)
    assert len(gens.frame) == 3 and all(isinstance(o, str) for o in gens.frame["output"])


@pytest.mark.slow
def test_learned_prompts_export_as_adapters_not_merges(method_runs, tmp_path):
    _, _, runs = method_runs
    with pytest.raises(ConfigError, match="cannot be merged"):
        nbkit.export(runs["prompt-tuning"], tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    out = nbkit.export(runs["prompt-tuning"], tmp_path / "adapter", merge=False)
    assert not out.merged and (out.path / "adapter_config.json").exists() and (out.path / "nbkit_export.json").exists()


def test_four_bit_without_bitsandbytes_fails_before_a_run_exists(intent_prompt, monkeypatch, tmp_path):
    import importlib.util

    from nbkit.errors import MissingDependencyError
    from nbkit.runs import runs_dir

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(MissingDependencyError, match=r"pip install 'nbkit-lm\[quant\]'.*--method lora"):
        nbkit.tune(intent_prompt, "sample:intent", method="qlora", name="q")
    assert not (runs_dir() / "q").exists()


@pytest.mark.parametrize("version", [1, 2])
def test_a_containers_memory_limit_is_what_a_run_may_use(tmp_path, version):
    """Binder's ~2 GB is a cgroup limit on a machine whose /proc/meminfo shows far more: the room left under the
    limit (its page cache added back: the kernel reclaims that first) is what the estimate is compared with."""
    from nbkit.memory import container_limit, container_room

    gib = 2 ** 30
    if version == 2:
        folder = tmp_path / "user.slice" / "binder"
        proc = "0::/user.slice/binder\n"
        files = {"memory.max": str(2 * gib), "memory.current": str(gib), "memory.stat": f"anon 1\nfile {gib // 4}\n"}
    else:
        folder = tmp_path / "memory" / "docker" / "abc"
        proc = "5:devices:/\n4:memory:/docker/abc\n0::/\n"
        files = {"memory.limit_in_bytes": str(2 * gib), "memory.usage_in_bytes": str(gib),
                 "memory.stat": f"cache 9\ntotal_cache {gib // 4}\n"}
    folder.mkdir(parents=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    (tmp_path / "cgroup").write_text(proc)
    assert container_room(str(tmp_path), str(tmp_path / "cgroup")) == gib + gib // 4
    assert container_limit(str(tmp_path), str(tmp_path / "cgroup")) == 2 * gib  # the whole peak's ceiling
    (folder / ("memory.max" if version == 2 else "memory.limit_in_bytes")).write_text(
        "max\n" if version == 2 else "9223372036854771712\n")
    assert container_room(str(tmp_path), str(tmp_path / "cgroup")) is None  # no limit: the machine's memory counts
