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


def test_prompt_logprobs_are_each_tokens_own_after_the_ones_before(smol):
    """The server's `echo`: every prompt token's log-probability (the first None), batched and padded
    as several prompts of different lengths, equal to one forward pass per prompt."""
    from nbkit.inference import prompt_logprobs

    tok = smol.tokenizer
    prompts = [tok(t, add_special_tokens=False)["input_ids"] for t in
               ("The capital of France is Paris.", "1, 2, 3", "Once upon a time there was a small dragon who")]
    got = prompt_logprobs(smol.model, tok.pad_token_id, prompts, top_n=3, batch_size=2)
    for ids, (own, tops) in zip(prompts, got):
        assert own[0] is None and tops[0] is None and len(own) == len(tops) == len(ids)
        with torch.no_grad():
            logp = smol.model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        expected = [logp[t - 1, ids[t]].item() for t in range(1, len(ids))]
        assert np.allclose(own[1:], expected, atol=1e-4)
        assert [i for i, _ in tops[2]] == logp[1].topk(3).indices.tolist()


def test_a_run_is_framed_with_the_chat_template_it_recorded(smol):
    """chat.json: the same tokenizer passes as it is; another chat template is replaced by the recorded
    one with a warning naming both (the loaded tokenizer untouched); another end token is refused."""
    from nbkit.encoding import chat_facts, run_tokenizer
    from nbkit.errors import ConfigError

    tok = smol.tokenizer
    recorded = chat_facts(tok)
    assert recorded["eos_token"] == "<|im_end|>" and "<|im_start|>" in recorded["chat_template"]
    assert run_tokenizer(recorded, tok, "r") is tok and run_tokenizer({}, tok, "old") is tok
    changed = {**recorded, "chat_template": recorded["chat_template"].replace("<|im_start|>", "<|im_start|> ")}
    with pytest.warns(UserWarning, match="run 'r' was trained with chat template [0-9a-f]{12}; .* now has [0-9a-f]{12}"):
        framed = run_tokenizer(changed, tok, "r")
    assert framed.chat_template == changed["chat_template"] and tok.chat_template == recorded["chat_template"]
    assert framed("hi")["input_ids"] == tok("hi")["input_ids"]
    with pytest.raises(ConfigError, match="trained with eos_token '</s>'"):
        run_tokenizer({**recorded, "eos_token": "</s>"}, tok, "r")
