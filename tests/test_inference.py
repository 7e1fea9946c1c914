import pytest
import numpy as np
import torch

from nbkit.encoding import encode_choice, encode_contexts
from nbkit.inference import score_choices, shared_prefix


def test_shared_cache_scoring_matches_scoring_each_sequence_whole(smol, intent_prompt):
    """Each context runs once and its cache is shared by the choices; the scores must not change."""
    rows = [{"text": t, "label": "other"} for t in ("Where is my parcel?", "I was charged twice for one order, please fix",
                                                   "hi")]
    tok = smol.tokenizer
    contexts = encode_contexts(intent_prompt, rows, tok)
    choices = [encode_choice(intent_prompt, c, tok) for c in ["refund", "delivery", "account team now", "other"]]
    assert max(len(c) for c in choices) > 1  # multi-token choices go through the cache
    assert shared_prefix(contexts) > 20  # chat header + instruction: computed once, continued by every batch
    fast = score_choices(smol.model, tok.pad_token_id, contexts, choices, batch_size=2)
    slow = np.zeros_like(fast)
    with torch.no_grad():
        for i, ctx in enumerate(contexts):
            for j, ch in enumerate(choices):
                logp = smol.model(input_ids=torch.tensor([ctx + ch])).logits[0].log_softmax(-1)
                slow[i, j] = sum(logp[len(ctx) - 1 + t, ch[t]].item() for t in range(len(ch)))
    assert np.allclose(fast, slow, atol=1e-3), np.abs(fast - slow).max()
    mean = score_choices(smol.model, tok.pad_token_id, contexts, choices, normalize=True)
    assert np.allclose(mean, fast / np.array([len(c) for c in choices]), atol=1e-5)
    alone = score_choices(smol.model, tok.pad_token_id, contexts[1:2], choices)  # one context: nothing shared
    assert np.allclose(alone, slow[1:2], atol=1e-3)


@pytest.mark.parametrize("kind", ["prompt-tuning", "prefix-tuning"])
def test_learned_prompt_scoring_matches_scoring_each_sequence_whole(intent_prompt, kind):
    """Soft prompts and prefixes score whole sequences; one-token choices share their context's pass, and
    only the positions that predict a choice token get logits. The scores must not change."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model

    import nbkit

    loaded = nbkit.load_model("smollm2-135m", fresh=True)
    config = (PromptTuningConfig if kind == "prompt-tuning" else PrefixTuningConfig)(task_type="CAUSAL_LM",
                                                                                      num_virtual_tokens=5)
    torch.manual_seed(0)
    model = get_peft_model(loaded.model, config).eval()
    tok = loaded.tokenizer
    rows = [{"text": t, "label": "other"} for t in ("Where is my parcel?", "I was charged twice, please fix", "hi")]
    contexts = encode_contexts(intent_prompt, rows, tok)
    choices = [encode_choice(intent_prompt, c, tok) for c in ["refund", "delivery", "account team now", "other"]]
    passes = len({tuple(c[:-1]) for c in choices})  # all one-token choices share the context's own pass
    assert passes < len(choices)
    rows_run = []
    hook = model.get_base_model().get_input_embeddings().register_forward_hook(
        lambda module, args, out: rows_run.append(args[0].shape[0]))
    fast = score_choices(model, tok.pad_token_id, contexts, choices, batch_size=2)
    hook.remove()
    assert sum(rows_run) == len(contexts) * passes
    slow = np.zeros_like(fast)
    with torch.no_grad():
        for i, ctx in enumerate(contexts):
            for j, ch in enumerate(choices):
                seq = ctx + ch
                logp = model(input_ids=torch.tensor([seq])).logits[0, -len(seq):].log_softmax(-1)
                slow[i, j] = sum(logp[len(ctx) - 1 + t, ch[t]].item() for t in range(len(ch)))
    assert np.allclose(fast, slow, atol=1e-3), np.abs(fast - slow).max()


def test_shared_prefix_leaves_every_context_a_token_of_its_own():
    assert shared_prefix([list(range(20)), list(range(20))]) == 19
    assert shared_prefix([list(range(20)), list(range(12)) + [99]]) == 12
    assert shared_prefix([list(range(20)), list(range(5)) + [99] * 10]) == 0  # too short to be worth a pass
    assert shared_prefix([list(range(20))]) == 0


def test_perplexity_of_the_expected_text_matches_the_models_own_loss(smol):
    import math

    import torch

    import nbkit
    from nbkit.encoding import encode_choice, encode_contexts
    from nbkit.prompts import Prompt

    prompt = Prompt("Which team should handle this message?\nMessage: {{ text }}\nTeam:", name="free",
                    target="{{ label }}")
    report = nbkit.evaluate(prompt, data="sample:intent", limit=1, metric=["perplexity", "token_f1"])
    row = list(nbkit.load_data("sample:intent", split="test"))[0]
    context = encode_contexts(prompt, [row], smol.tokenizer)[0]
    target = encode_choice(prompt, row["label"], smol.tokenizer)
    ids = torch.tensor([context + target])
    labels = torch.tensor([[-100] * len(context) + target])
    with torch.no_grad(), smol.adapter(None) as base:  # the base model, whatever an earlier test left on it
        loss = base(input_ids=ids, labels=labels).loss  # mean NLL of the target tokens
    assert report.frame.loc["free", "perplexity"] == pytest.approx(math.exp(float(loss)), rel=1e-4)
    assert report.info["metrics"] == ["perplexity", "token_f1"]
