"""Automatic prompt search on the embedded model: candidates, ranking on dev rows, the best registered."""

import pytest

import nbkit
import nbkit.evaluation  # noqa: F401  (before any test patches models.load_model: it binds it at import)
from nbkit import models
from nbkit.errors import ConfigError
from nbkit.prompts import Prompt
from nbkit.session import current

PROMPTS = current().prompts  # the session's registry (one dict for the whole test session)
from nbkit.search import instruction_of, variant as _variant


@pytest.fixture
def sentiment():
    return Prompt("Is this review positive or negative?\nReview: {{ text }}\nAnswer:", name="sentiment",
                  target="{{ label }}", choices=["positive", "negative"])


def test_label_words_become_a_self_contained_target(sentiment):
    p = _variant(sentiment, {"positive": "great", "negative": "awful"}, 2, "balanced")
    assert p.choices == ["great", "awful"] and p.shots == 2 and p.selection == "balanced"
    assert p.render_target({"text": "x", "label": "negative"}) == "awful"
    assert Prompt.from_dict(p.to_dict()).render_target({"text": "x", "label": "positive"}) == "great"


def test_instruction_is_the_text_before_the_first_variable(sentiment):
    assert instruction_of(sentiment) == "Is this review positive or negative?"
    assert instruction_of(Prompt("Review: {{ text }}", name="bare")) == ""


def test_balanced_shots_cover_the_labels():
    rows = list(nbkit.load_data("sample:intent", split="train"))
    p = Prompt("M: {{ text }}", target="{{ label }}", shots=4, selection="balanced")
    for seed in range(5):
        assert sorted(p.render_target(r) for r in p.pick_shots(rows, seed=seed)) == [
            "account", "delivery", "other", "refund"]


@pytest.mark.parametrize("kwargs, field", [
    ({"words": [{"positive": "great"}]}, "words"),  # no word for negative
    ({"words": [{"positive": "ok", "negative": "ok"}]}, "words"),
    ({"shots": [-1]}, "shots"), ({"selection": ["closest"]}, "selection"), ({"dev": "test"}, "dev"),
    ({"dev": 1000}, "dev"), ({"paraphrases": -2}, "paraphrases"),
    ({"formats": ["markdown"]}, "formats"), ({"formats": "chat"}, "formats"), ({"formats": ["chat", "chat"]}, "formats"),
])
def test_bad_search_settings_fail_before_any_model_loads(sentiment, kwargs, field, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model"))
    with pytest.raises(ConfigError) as e:
        nbkit.search_prompts(sentiment, "sample:sentiment", **kwargs)
    assert e.value.field == field


@pytest.mark.slow
def test_search_ranks_candidates_on_dev_rows_and_registers_the_best(ip):
    ip.run_cell_magic("prompt", 'intent --target "{{ label }}" --choices refund,delivery,account,other',
                      "Which team should handle this customer message?\nMessage: {{ text }}\nTeam:")
    report = ip.run_line_magic(
        "evaluate", "--search --prompt intent --data sample:intent --shots 0,4 --selection balanced "
                    "--words refund=refund,delivery=shipping,account=login,other=other --paraphrases 1 --dev 32 "
                    "--formats chat --name intent-searched")  # (the default tries plain too: a test below)
    frame = report.frame
    # (the prompt + 1 paraphrase) x 2 word sets x (0 shots, 4 balanced shots)
    assert len(frame) == len(report.candidates) == 2 * 2 * 2 and (frame["n"] == 32).all()
    assert list(frame["accuracy"]) == sorted(frame["accuracy"], reverse=True)
    assert set(frame["template"]) == {"as written, chat", "paraphrase 1, chat"}
    for label in frame.index[frame["template"] != "as written, chat"]:
        template = report.candidates[label].template
        assert template.endswith("Message: {{ text }}\nTeam:") and not template.startswith("Which team should")
    written = frame[(frame["template"] == "as written, chat") & (frame["shots"] == 0)
                    & (frame["words"] == "refund, delivery, account, other")]["accuracy"].iloc[0]
    assert frame["accuracy"].iloc[0] > written, frame  # the search found a better prompt than the hand-written one
    assert PROMPTS["intent-searched"] is report.best and report.best.name == "intent-searched"
    test = nbkit.evaluate(["intent", "intent-searched"], data="sample:intent", limit=32)  # rows never searched on
    assert set(test.frame.index) == {"intent", "intent-searched"}


def test_paraphrases_come_from_the_base_model_even_after_an_adapter_was_used(smol, sentiment, tmp_path):
    from peft import LoraConfig, get_peft_model

    from nbkit.search import paraphrase

    clean = paraphrase(sentiment, smol, 2, seed=0)
    base = nbkit.load_model("smollm2-135m", fresh=True).model
    adapter = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter.save_pretrained(tmp_path / "adapter")  # random, non-zero: it changes what the model says
    with smol.adapter(tmp_path / "adapter"):
        pass  # %evaluate leaves the last adapter attached to the session's model
    assert paraphrase(sentiment, smol, 2, seed=0) == clean and clean


@pytest.mark.slow
def test_rl_search_learns_which_edits_pay_and_beats_the_hand_written_prompt(ip):
    ip.run_cell_magic("prompt", 'intent-rl --target "{{ label }}" --choices refund,delivery,account,other',
                      "Which team should handle this customer message?\nMessage: {{ text }}\nTeam:")
    report = ip.run_line_magic(
        "evaluate", "--search --strategy rl --budget 8 --prompt intent-rl --data sample:intent --shots 0,2 "
                    "--selection random,nearest --formats chat --dev 16 --batch-size 8 --name intent-rl-best")
    frame, info = report.frame, report.info
    assert info["strategy"] == "rl" and info["budget"] == 8 and (frame["n"] == 16).all()
    assert frame["pulls"].fillna(0).sum() <= 8 and "start" in frame.index
    start = frame.loc["start"]
    assert start["shots"] == 0 and start["template"] == "as written, chat"
    # the policy moved towards what paid on the mini-batches (8 rows each): showing shots (4 nearest: 0.79 test accuracy,
    # against 0.25 zero-shot, README) ...
    assert info["policy"]["shots"][1] > 0.5, info["policy"]
    # ... and the best prompt it found beats the hand-written one on the dev rows
    assert frame["accuracy"].iloc[0] > start["accuracy"], frame
    assert report.best.name == "intent-rl-best" and report.best.shots == 2


@pytest.mark.slow
def test_gradient_search_lowers_the_label_loss_and_reports_what_it_found(ip):
    """AutoPrompt's trigger tokens lower the label loss on the rows they are fitted on by construction
    (a swap is kept only when it does); whether that carries over to dev rows is reported, not
    assumed: on 32 dev rows it went 0.375 -> 0.406 on sample:intent and 0.625 -> 0.563 on
    sample:sentiment (3 triggers, 3 steps). Run through the magic (%evaluate --search --strategy
    gradient), which calls nbkit.search_prompts; the refusal below goes to the API directly."""
    ip.run_cell_magic("prompt", 'intent-ap --target "{{ label }}" --choices refund,delivery,account,other',
                      "Which team should handle this customer message?\nMessage: {{ text }}\nTeam:")
    p = PROMPTS["intent-ap"]
    report = ip.run_line_magic("evaluate", "--search --strategy gradient --triggers 2 --steps 2 --dev 16 "
                                           "--prompt intent-ap --data sample:intent -o found")
    assert ip.user_ns["found"] is report and report.info["strategy"] == "gradient"
    history = report.info["history"]
    assert [h["step"] for h in history] == [1, 2] and [h["position"] for h in history] == [0, 1]
    assert all(h["loss_after"] <= h["loss_before"] for h in history)
    assert sum(h["loss_before"] - h["loss_after"] for h in history) > 0, history  # at least one swap helped
    found = report.candidates["gradient"].template
    triggers = history[-1]["triggers"]
    assert found.startswith("Which team should handle this customer message?" + triggers + "\nMessage: ")
    frame = report.frame
    assert set(frame.index) == {"start, chat", "start, plain", "gradient"} and (frame["n"] == 16).all()
    # the triggers were searched in the format whose starting prompt scored best on the dev rows (chat on a tie)
    better = "start, plain" if frame.loc["start, plain", "accuracy"] > frame.loc["start, chat", "accuracy"] else "start, chat"
    assert report.candidates["gradient"].chat == report.candidates[better].chat == (better == "start, chat")
    assert frame.loc["gradient", "template"].startswith(frame.loc[better, "template"] + " + triggers")
    print("dev accuracy:", report.frame["accuracy"].to_dict())
    with pytest.raises(ConfigError) as e:
        nbkit.search_prompts(p, "sample:intent", strategy="gradient", shots=[0, 4])
    assert e.value.field == "strategy"


def test_reinforce_moves_the_policy_to_the_rewarded_options():
    from nbkit.search import reinforce

    space = [["a", "b", "c"], [0, 4]]
    seen, policy = reinforce(space, lambda pick, draw: float(pick == (2, 1)) + 0.1 * pick[1], budget=60, seed=1)
    assert sum(map(len, seen.values())) == 60
    assert max(policy[0]) == policy[0][2] > 0.6 and policy[1][1] > 0.8, policy
    with pytest.raises(ConfigError):
        reinforce(space, lambda pick, draw: 0.0, budget=0)


def test_the_format_is_a_searched_choice(intent_prompt):
    """--formats chat,plain tries each template through the chat template and as plain text; the
    winner keeps its format (chat=True/False), and the two really are scored differently."""
    report = nbkit.search_prompts(intent_prompt, "sample:intent", formats=["chat", "plain"], dev=24)
    frame = report.frame
    assert sorted(frame["template"]) == ["as written, chat", "as written, plain"] and (frame["n"] == 24).all()
    chats = {report.candidates[label].chat for label in frame.index}
    assert chats == {True, False} and report.best.chat == report.candidates[frame.index[0]].chat
    from nbkit.models import load_tokenizer

    tok, row = load_tokenizer("smollm2-135m"), {"text": "Where is my parcel?"}
    rendered = {report.candidates[label].chat: report.candidates[label].format(row, tok) for label in frame.index}
    assert rendered[True].startswith("<|im_start|>") and "<|im_start|>" not in rendered[False]


@pytest.mark.slow
def test_default_search_finds_the_better_format_on_intent():
    """With default options the search tries the chat template and plain text (the embedded model has a chat
    template) and keeps the one that is also better on the held-out test rows: on sample:intent with the
    quickstart's prompt and 4 nearest shots, the chat template (bench/formats.py)."""
    quickstart = Prompt("Which team should handle this customer message? Answer refund, delivery, account or "
                        "other.\nMessage: {{ text }}\nTeam:", name="intent-quick", target="{{ label }}",
                        choices=["refund", "delivery", "account", "other"])
    report = nbkit.search_prompts(quickstart, "sample:intent", shots=[4], selection=["nearest"], dev=40)
    assert sorted(report.frame["template"]) == ["as written, chat", "as written, plain"]
    framed = [Prompt.from_dict({**report.best.to_dict(), "chat": chat, "name": f"intent-{chat}"})
              for chat in (True, False)]
    test = nbkit.evaluate(framed, data="sample:intent").frame["accuracy"]
    assert test["intent-True"] != test["intent-False"], test
    assert report.best.chat == (test["intent-True"] > test["intent-False"]), (report.frame, test)
