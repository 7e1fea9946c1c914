"""Preference (DPO, ORPO, KTO) and reward (GRPO) tuning: options, rows, rewards, metrics, and learning."""

from __future__ import annotations

import json

import pytest

import nbkit
from conftest import SigintAt, adapter_tensors
from nbkit.errors import ConfigError, DataError, UnknownNameError
from nbkit.prompts import Prompt

PAIRS = [{"instruction": f"Name colour {i}. Answer in capital letters only.", "chosen": "RED", "rejected": "red"}
         for i in range(12)]


@pytest.fixture
def no_weights(monkeypatch):
    """Any weights loading fails the test: the errors below must come before."""
    import nbkit.training.decoder as decoder

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(decoder, "load_model", refuse)


@pytest.fixture
def pref_prompt():
    from nbkit.session import register_prompt

    return register_prompt(Prompt("{{ instruction }}", name="pref"))


def test_objectives_and_their_options_are_checked_by_name(no_weights, pref_prompt):
    with pytest.raises(UnknownNameError, match="unknown objective 'dop'; available: dpo, grpo, kto, orpo, sft"):
        nbkit.tune(pref_prompt, PAIRS, objective="dop")
    with pytest.raises(ConfigError, match="`reward` is not an option of objective 'dpo'; it takes: beta, loss_type"):
        nbkit.tune(pref_prompt, PAIRS, objective="dpo", reward="exact_match")
    with pytest.raises(ConfigError, match="`beta` is not an option of objective 'sft'"):
        nbkit.tune(pref_prompt, PAIRS, beta=0.2)
    with pytest.raises(ConfigError, match="`beta` must be a positive number"):
        nbkit.tune(pref_prompt, PAIRS, objective="dpo", beta=0)
    with pytest.raises(ConfigError, match="`reward` is needed with --objective grpo"):
        nbkit.tune(pref_prompt, PAIRS, objective="grpo")
    with pytest.raises(ConfigError, match="'bleu' is not a reward; rewards: exact_match, token_f1"):
        nbkit.tune(pref_prompt, PAIRS, objective="grpo", reward="exact_match,bleu")
    with pytest.raises(ConfigError, match="`generations` must be at least 2"):
        nbkit.tune(pref_prompt, PAIRS, objective="grpo", reward="format", generations=1)
    with pytest.raises(ConfigError, match="`batch_size` 6 x grad_accum 1 completions per step do not split into "
                                          "groups of --generations 4"):
        nbkit.tune(pref_prompt, PAIRS, objective="grpo", reward="format", batch_size=6)
    with pytest.raises(ConfigError, match="`method` 'prompt-tuning' learns a prompt, and objective 'orpo' trains"):
        nbkit.tune(pref_prompt, PAIRS, objective="orpo", method="prompt-tuning")
    with pytest.raises(ConfigError, match="`objective` 'dpo' tunes a decoder"):
        nbkit.tune(Prompt("{{ instruction }}", choices=["a", "b"], target="{{ label }}"),
                   [{"instruction": "x", "label": "a"}] * 4, task="classification", objective="dpo")


@pytest.mark.parametrize("rows, message", [
    ([*PAIRS[:2], {"instruction": "x", "chosen": "A"}], "train row 3 has no 'rejected'"),
    ([PAIRS[0], {"instruction": "x", "chosen": "Same", "rejected": " Same "}],
     "train row 2: 'chosen' and 'rejected' are the same text"),
    ([{"instruction": "x", "chosen": "", "rejected": "b"}], "train row 1: 'chosen' is empty"),
])
def test_bad_preference_rows_are_named_before_weights_load(no_weights, pref_prompt, rows, message):
    with pytest.raises(DataError, match=message):
        nbkit.tune(pref_prompt, {"train": rows * 1, "test": PAIRS[:2]}, objective="dpo")


def test_kto_reads_labelled_completions_or_splits_pairs(no_weights, pref_prompt):
    from nbkit.training.preference import check_rows

    split = check_rows(PAIRS[:2], "unpaired", pref_prompt)
    assert [(r["completion"], r["label"]) for r in split] == [("RED", True), ("red", False)] * 2
    rows = [{"instruction": "x", "completion": "A", "label": "true"}, {"instruction": "y", "completion": "b",
                                                                         "label": 0}]
    assert [r["label"] for r in check_rows(rows, "unpaired", pref_prompt)] == [True, False]
    with pytest.raises(DataError, match="train row 1: label 'maybe' is not true or false"):
        nbkit.tune(pref_prompt, {"train": [{"instruction": "x", "completion": "A", "label": "maybe"}],
                                 "test": rows[:1]}, objective="kto")


def test_rewards_score_completions_against_the_target():
    from nbkit.objectives import GrpoOptions
    from nbkit.training.rewards import reward_functions

    prompt = Prompt("Q: {{ question }}", name="qa", target="{{ answer }}")
    rewards = reward_functions(GrpoOptions(reward="exact_match,token_f1,format"), prompt, {})
    completions, targets = ["Paris.", "the city of Paris", "Lyon\nParis"], ["Paris"] * 3
    scored = [f(completions, nbkit_target=targets) for f in rewards]
    assert [f.__name__ for f in rewards] == ["exact_match", "token_f1", "format"]
    assert scored[0] == [1.0, 0.0, 0.0]
    assert scored[1][0] == 1.0 and scored[1][1] == pytest.approx(2 * (1 / 3) / (1 + 1 / 3))  # SQuAD F1: "the" drops
    assert scored[2] == [1.0, 0.0, 0.0]  # one line, no longer than the target

    def length_penalty(completions, rows):
        return [-len(c) / 10 for c in completions]

    found = reward_functions(GrpoOptions(reward_fn="length_penalty"), prompt, {"length_penalty": length_penalty})
    rows = [json.dumps({"question": "q", "answer": "Paris"})] * 3
    assert found[0](completions, nbkit_row=rows) == [-0.6, -1.7, -1.0]
    with pytest.raises(ConfigError, match="`reward_fn` 'missing' is not a function in the notebook"):
        reward_functions(GrpoOptions(reward_fn="missing"), prompt, {})
    bad = reward_functions(GrpoOptions(reward_fn=lambda completions, rows: [1.0]), prompt, {})
    with pytest.raises(ConfigError, match="returned 1 rewards for 3 completions"):
        bad[0](completions, nbkit_row=rows)
    with pytest.raises(ConfigError, match="has none: give the prompt a --target"):
        reward_functions(GrpoOptions(reward="exact_match"), Prompt("{{ question }}", name="q"), {})


def test_objective_flags_reach_tune_and_the_job_file(ip, tmp_path, pref_prompt, capsys):
    from nbkit.jobfiles import read_job, tune_arguments

    job = tmp_path / "dpo.yaml"
    ip.run_line_magic("tune", f"--prompt pref --data sample:preference --objective dpo --beta 0.3 "
                              f"--max-steps 2 --export {job}")
    prompt, data, settings = tune_arguments(read_job(job))
    assert (prompt, data, settings["objective"], settings["beta"], settings["loss_type"]) == \
        ("pref", "sample:preference", "dpo", 0.3, "sigmoid")
    assert settings["r"] == 8  # the method's options travel beside the objective's
    with pytest.raises(ConfigError, match="a job file cannot hold a function"):
        nbkit.tune(Prompt("Q: {{ question }}", name="qa", target="{{ answer }}"), "sample:qa", objective="grpo",
                   reward_fn=lambda completions, rows: [0.0] * len(completions), export=tmp_path / "grpo.yaml")
    capsys.readouterr()
    ip.run_line_magic("nbkit", "objectives")
    listing = capsys.readouterr().out
    assert "dpo    prefer each row's chosen completion" in listing and "--beta (0.1)" in listing
    assert "--reward (auto), --reward-fn (auto), --generations (4)" in listing


def test_preference_metrics_and_their_intervals():
    import pandas as pd

    from nbkit.metrics import compute_metrics
    from nbkit.results import Report
    from nbkit.stats import wilson

    frame = pd.DataFrame({"input": ["a"] * 4, "output": ["chosen", "rejected", "chosen", "chosen"],
                          "expected": ["chosen"] * 4, "correct": [True, False, True, True],
                          "margin": [1.0, -0.5, 2.0, 0.5]})
    assert compute_metrics(frame, ["preference_accuracy", "margin"]) == {"preference_accuracy": 0.75, "margin": 0.75}
    report = Report(pd.DataFrame({"preference_accuracy": [0.75], "margin": [0.75], "n": [4]}, index=["base"]),
                    {"base": frame}, {"metrics": ["preference_accuracy", "margin"]})
    intervals = report.intervals()
    assert (intervals.loc["base", "preference_accuracy_low"],
            intervals.loc["base", "preference_accuracy_high"]) == pytest.approx(wilson(3, 4))
    assert intervals.loc["base", "margin_low"] < 0.75 < intervals.loc["base", "margin_high"]


def _pairs(train: int, test: int) -> dict:
    splits = nbkit.load_data("sample:preference")
    return {"train": list(splits["train"])[:train], "test": list(splits["test"])[:test]}


@pytest.mark.slow
def test_a_dpo_run_resumes_to_the_same_adapter_is_evaluated_and_exports(pref_prompt, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from nbkit.errors import TrainingInterrupted

    data = _pairs(16, 8)
    settings = dict(objective="dpo", beta=0.2, max_steps=4, batch_size=4, callbacks=[])
    first = nbkit.tune(pref_prompt, data, name="first", **settings)
    assert first.config["objective"] == "dpo" and first.config["objective_options"] == {"beta": 0.2,
                                                                                         "loss_type": "sigmoid"}
    assert {"accuracy", "margin"} <= set(first.history[-1])  # TRL's preference numbers, logged per step
    assert "train_margin" in first.metrics
    with pytest.raises(TrainingInterrupted) as e:
        nbkit.tune(pref_prompt, data, name="cut", **{**settings, "callbacks": [SigintAt(2)]})
    assert (e.value.run.path / "checkpoints" / "checkpoint-2").is_dir()
    resumed = nbkit.tune(pref_prompt, data, name="cut", resume=True, **settings)
    assert resumed.status == "completed" and [h["step"] for h in resumed.history] == [1, 2, 3, 4]
    a, c = adapter_tensors(first), adapter_tensors(resumed)
    assert a.keys() == c.keys() and all(torch.allclose(a[k], c[k], atol=1e-6) for k in a)

    report = nbkit.evaluate(prompt=pref_prompt, run=resumed, data=data)
    assert list(report.frame.columns[:2]) == ["preference_accuracy", "margin"]
    assert report.info["scoring"] == "chosen vs rejected log-likelihood"
    frame = report.predictions["pref + cut"]
    assert all(frame["margin"] == frame["chosen_logprob"] - frame["rejected_logprob"])
    assert frame["margin"].mean() != pytest.approx(report.predictions["pref"]["margin"].mean())  # it moved

    exported = nbkit.export(resumed, tmp_path / "merged")
    assert exported.merged and exported.max_logit_diff < 1e-3
    model = AutoModelForCausalLM.from_pretrained(exported.path)
    assert model.config.model_type == "llama"

    held = nbkit.tune(pref_prompt, data, name="dev", dev=4, eval_every=1, **{**settings, "max_steps": 2})
    assert [e["step"] for e in held.dev_history] == [1, 2] and "eval_loss" in held.dev_history[0]
    assert held.metrics["best_step"] in (1, 2) and held.metrics["dev_loss"] is not None


@pytest.mark.slow
def test_grpo_rewards_its_samples_with_metrics_and_a_function_resumes_and_exports(tmp_path):
    from nbkit.errors import TrainingFailed, TrainingInterrupted
    from nbkit.session import register_prompt

    prompt = register_prompt(Prompt("{{ question }} Answer with one word.", name="quiz", target="{{ answer }}"))
    rows = [{"question": q, "answer": a} for q, a in [
        ("What colour is grass?", "green"), ("What is the opposite of up?", "down"),
        ("What do cows drink?", "water"), ("What is frozen water called?", "ice"),
        ("What colour is snow?", "white"), ("What animal barks?", "dog")]]
    seen = []

    def short(completions, rows):
        seen.append((list(completions), [r["answer"] for r in rows]))
        return [1.0 if len(c.split()) <= 2 else 0.0 for c in completions]

    settings = dict(objective="grpo", reward="exact_match", reward_fn=short, generations=2, batch_size=4,
                    max_new_tokens=6, max_steps=2, name="quiz-grpo")
    with pytest.raises(TrainingInterrupted):
        nbkit.tune(prompt, {"train": rows, "test": rows[:2]}, **settings, callbacks=[SigintAt(1)])
    run = nbkit.tune(prompt, {"train": rows, "test": rows[:2]}, **settings, resume=True, callbacks=[])
    assert run.status == "completed" and [h["step"] for h in run.history] == [1, 2]
    assert run.config["objective_options"]["reward_fn"] == "short"  # recorded by name: config.json stays JSON
    assert {"reward", "reward_std"} <= set(run.history[0]) and "train_reward" in run.metrics
    assert len(seen) == 2 and all(len(c) == 4 for c, _ in seen)  # 2 prompts x 2 generations per step, 2 steps
    answers = {a for _, batch in seen for a in batch}
    assert answers <= {r["answer"] for r in rows}  # the function saw each completion's own row
    report = nbkit.evaluate(prompt=prompt, run=run, data={"train": rows, "test": rows}, metric="exact_match,format")
    assert len(report.frame) == 2 and list(report.frame.columns[:2]) == ["exact_match", "format"]

    with pytest.raises(TrainingFailed, match="returned 1 rewards for 4 completions") as e:
        nbkit.tune(prompt, {"train": rows, "test": rows[:2]}, objective="grpo", reward_fn=lambda c, r: [1.0],
                   generations=2, batch_size=4, max_new_tokens=4, max_steps=1, callbacks=[], name="bad-reward")
    assert e.value.run.status == "failed"  # marked and kept
    exported = nbkit.export(run, tmp_path / "merged")
    assert exported.merged and exported.max_logit_diff < 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("method, objective", [("qlora", "kto"), ("dora", "orpo"), ("ia3", "dpo"), ("full", "grpo")])
def test_every_objective_trains_with_the_methods_that_apply(pref_prompt, method, objective):
    """One step of each objective, each on another method: the adapter (or model) is saved and scores."""
    from nbkit.session import register_prompt

    quiz = register_prompt(Prompt("{{ question }} Answer with one word.", name="quiz", target="{{ answer }}"))
    splits = nbkit.load_data("sample:quiz")
    data = {"train": list(splits["train"])[:4], "test": list(splits["test"])[:2]}
    grpo = dict(reward="exact_match,format", generations=2, max_new_tokens=4) if objective == "grpo" else {}
    run = nbkit.tune(quiz if grpo else pref_prompt, data if grpo else _pairs(4, 2), method=method,
                     objective=objective, max_steps=1, batch_size=4, callbacks=[], **grpo)
    assert run.status == "completed" and run.config["method"] == method and len(run.history) == 1
    assert run.has_adapter()
