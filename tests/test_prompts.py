import pytest

from nbkit.errors import ConfigError, TemplateError, UnknownNameError
from nbkit.prompts import Prompt
from nbkit.session import get_prompt, register_prompt


def test_render_and_target():
    p = Prompt("Review: {{ text }}\nSentiment:", name="s", target="{{ label }}", choices=["positive", "negative"])
    row = {"text": "Great kettle", "label": "positive"}
    assert p.render(row) == "Review: Great kettle\nSentiment:"
    assert p.render_target(row) == "positive"
    assert p.variables == {"text", "label"}


def test_missing_variable_names_it_and_the_columns():
    p = Prompt("Message: {{ txt }}", name="m")
    with pytest.raises(TemplateError) as e:
        p.check(["text", "label"])
    assert e.value.variable == "txt"
    assert "txt" in str(e.value) and "label, text" in str(e.value)
    with pytest.raises(TemplateError) as e:
        p.render({"text": "hi"})
    assert "txt" in str(e.value) and "text" in str(e.value)


def test_syntax_error_reports_the_line():
    with pytest.raises(TemplateError) as e:
        Prompt("line one\nline two {{ text\nline three", name="bad")
    assert e.value.line == 2 or e.value.line == 3
    assert "line" in str(e.value)


def test_sandbox_blocks_attribute_escape():
    p = Prompt("{{ text.__class__.__mro__ }}", name="evil")
    with pytest.raises(Exception) as e:
        p.render({"text": "x"})
    assert "unsafe" in str(e.value).lower() or "SecurityError" in type(e.value).__name__


@pytest.mark.parametrize("choices, message", [
    (["a"], "at least two"), (["a", "a"], "duplicates"), (["a", " "], "empty"),
])
def test_bad_choices(choices, message):
    with pytest.raises(ConfigError) as e:
        Prompt("x {{ text }}", choices=choices)
    assert e.value.field == "choices" and message in str(e.value)


def test_default_target_is_label_when_present():
    p = Prompt("{{ text }}", name="p")
    assert p.resolve_target(["text", "label"]).target == "{{ label }}"
    with pytest.raises(ConfigError) as e:
        p.resolve_target(["text", "answer"])
    assert e.value.field == "target"


def test_plain_format_with_shots():
    p = Prompt("Q: {{ q }}\nA:", name="qa", target="{{ a }}", system="Answer briefly.", shots=1)
    pool = [{"q": "1+1", "a": "2"}, {"q": "2+2", "a": "4"}]
    shots = p.pick_shots(pool, seed=0, exclude=pool[0])
    assert shots == [pool[1]]
    text = p.format({"q": "3+3", "a": "6"}, shots=shots)
    assert text == "Answer briefly.\n\nQ: 2+2\nA: 4\n\nQ: 3+3\nA:"
    assert p.completion("6") == " 6"


def test_chat_format_uses_the_tokenizer_template(smol):
    p = Prompt("Message: {{ text }}", name="c", target="{{ label }}", system="Route messages.")
    text = p.format({"text": "hello", "label": "other"}, smol.tokenizer)
    assert text.startswith("<|im_start|>system\nRoute messages.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")
    assert p.completion("other", smol.tokenizer) == "other"


def test_registry_and_roundtrip():
    p = register_prompt(Prompt("Hi {{ name }}", name="greet", choices=["a", "b"], shots=0))
    assert get_prompt("greet") is p
    assert Prompt.from_dict(p.to_dict()) == p
    with pytest.raises(UnknownNameError) as e:
        get_prompt("nope")
    assert "greet" in str(e.value)
    with pytest.raises(ConfigError):
        Prompt.from_dict({"template": "x", "bogus": 1})


def test_the_embedded_encoder_ranks_by_meaning():
    from nbkit import load_model
    from nbkit.retrieval import nearest

    encoder = load_model("minilm-l6")
    texts = ["I want my money back for the broken kettle", "Please refund the money you took from my card",
             "My parcel has not arrived yet", "Where is my delivery? It is two days late",
             "I cannot log in to my account", "How do I reset my password?"]
    vectors = encoder.encode(texts)
    assert vectors.shape == (6, 384)
    assert torch_allclose_ones(vectors.norm(dim=1))
    # each text's nearest other text is its pair (0-1, 2-3, 4-5), the nearest listed last
    assert [picked[-1] for picked in nearest(texts, texts, 2, exclude_same=True)] == [1, 0, 3, 2, 5, 4]
    assert nearest(texts[:1], texts, 1) == [[0]]  # without exclude_same a text is its own nearest


def torch_allclose_ones(values) -> bool:
    import torch

    return torch.allclose(values, torch.ones_like(values), atol=1e-5)


def test_nearest_shots_are_the_most_similar_training_rows():
    p = Prompt("Message: {{ text }}\nTeam:", name="n", target="{{ label }}", shots=2, selection="nearest")
    pool = [{"text": "Refund the double charge on my card", "label": "refund"},
            {"text": "I was charged twice, money back please", "label": "refund"},
            {"text": "The courier left my parcel at the wrong house", "label": "delivery"},
            {"text": "Tracking says delivered but nothing came", "label": "delivery"},
            {"text": "Change the email address on my profile", "label": "account"}]
    row = {"text": "My package never showed up", "label": "delivery"}
    (shots,) = p.shots_for([row], pool)
    assert {s["label"] for s in shots} == {"delivery"}
    # training: a row is never its own shot, and its nearest other row is shown last, next to it
    per_row = p.shots_for(pool, pool, exclude_self=True)
    assert all(row not in shots for row, shots in zip(pool, per_row))
    assert per_row[0][-1] == pool[1] and per_row[1][-1] == pool[0]
    with pytest.raises(ConfigError) as e:
        p.pick_shots(pool)
    assert e.value.field == "selection"
    with pytest.raises(ConfigError) as e:
        Prompt("{{ text }}", shots=9, selection="nearest").shots_for([row], pool)
    assert e.value.field == "shots"


def test_lm_eval_task_holds_the_text_evaluate_scores(tmp_path):
    """The lm-eval task's contexts are nbkit's (chat markup and shots included), its choices the
    completions nbkit scores, its gold the target's index; a prompt without choices is refused."""
    import json

    import yaml

    from nbkit.data import load_data
    from nbkit.errors import ConfigError
    from nbkit.evaluation import lm_eval_task
    from nbkit.models import load_tokenizer

    prompt = Prompt("Review: {{ text }}\nPositive or negative?", name="sent-1", target="{{ label }}",
                    choices=["positive", "negative"], shots=2)
    folder = lm_eval_task(prompt, "sample:sentiment", tmp_path / "task", limit=5)
    spec = yaml.safe_load((folder / "nbkit_sent_1.yaml").read_text())
    assert spec["task"] == "nbkit_sent_1" and spec["output_type"] == "multiple_choice"
    docs = [json.loads(line) for line in open(spec["dataset_kwargs"]["data_files"]["test"])]
    splits, tok = load_data("sample:sentiment"), load_tokenizer("smollm2-135m")
    rows, train = list(splits["test"])[:5], list(splits["train"])
    assert [d["context"] for d in docs] == [prompt.format(r, tok, s) for r, s in zip(rows, prompt.shots_for(rows, train))]
    assert docs[0]["choices"] == ["positive", "negative"] and "<|im_start|>" in docs[0]["context"]
    assert [d["gold"] for d in docs] == [prompt.choices.index(r["label"]) for r in rows]
    with pytest.raises(ConfigError, match="has no choices"):
        lm_eval_task(Prompt("{{ text }}", name="free", target="{{ label }}"), "sample:sentiment", tmp_path / "x")
