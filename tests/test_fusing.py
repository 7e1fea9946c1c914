"""LoRA's fused forward (nbkit.training.fusing): the low-rank product added into the base product in place gives
peft's outputs and gradients, and every case it does not cover runs peft's own forward."""

import pytest
import torch

import nbkit
from nbkit.training.fusing import fuse_lora, fused_forward


def _peft_llama(seed=0, **lora):
    """A two-layer Llama with LoRA on every linear layer, B drawn at random (peft starts it at zero, which would
    hide the low-rank product)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    settings = dict(r=3, lora_alpha=10, target_modules="all-linear", lora_dropout=0.0) | lora
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(**settings))
    for name, p in model.named_parameters():
        if "lora_B" in name or "lora_magnitude" in name:
            torch.nn.init.normal_(p, std=0.05)
    return model


def _loss_and_grads(model, ids, seed=1):
    torch.manual_seed(seed)  # the same dropout masks for both
    model.zero_grad()
    out = model(input_ids=ids, labels=ids)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _no_fallback(monkeypatch):
    """From here on, peft's own forward fails: the fused layers must not fall back to it."""
    from peft.tuners.lora.layer import Linear

    def fell_back(*args, **kwargs):
        raise AssertionError("the fused forward fell back to peft's")

    monkeypatch.setattr(Linear, "forward", fell_back)


def _same(a, b, tol):
    (logits_a, grads_a), (logits_b, grads_b) = a, b
    assert torch.allclose(logits_a, logits_b, atol=tol, rtol=tol), (logits_a - logits_b).abs().max()
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name, grad in grads_a.items():
        scale = grads_b[name].abs().max()
        assert (grad - grads_b[name]).abs().max() <= tol * scale, name


IDS = torch.randint(0, 300, (3, 17), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_the_fused_forward_gives_peft_s_logits_and_gradients(dropout, monkeypatch):
    """A scaling that is not a power of two (alpha 10 over r 3), with and without dropout (the same masks)."""
    model = _peft_llama(lora_dropout=dropout)
    reference = _loss_and_grads(model, IDS)
    assert fuse_lora(model) == 14  # q, k, v, o, gate, up, down in each of the two layers
    _no_fallback(monkeypatch)
    _same(_loss_and_grads(model, IDS), reference, 1e-5)


def test_under_bf16_autocast_it_is_peft_s_to_bf16_rounding(monkeypatch):
    model = _peft_llama()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = _loss_and_grads(model, IDS)
        fuse_lora(model)
        _no_fallback(monkeypatch)
        fused = _loss_and_grads(model, IDS)
    _same(fused, reference, 3e-2)


def test_it_fuses_only_plain_lora_layers_and_leaves_every_other_case_to_peft():
    """DoRA (a variant), a bias on B (peft's lora_bias), adapters disabled (DPO's reference pass) and merged
    weights: peft's own forward, so the outputs are exactly peft's; layers that are not LoRA's are not touched."""
    for unusual in (dict(use_dora=True), dict(lora_bias=True)):
        model = _peft_llama(**unusual)  # B's bias drawn at random too
        reference = _loss_and_grads(model, IDS)
        fuse_lora(model)
        _same(_loss_and_grads(model, IDS), reference, 0.0)

    model = _peft_llama()
    fuse_lora(model)
    with model.disable_adapter(), torch.no_grad():
        base = model(input_ids=IDS).logits
    with torch.no_grad():
        adapted = model(input_ids=IDS).logits
        model.merge_adapter()
        merged = model(input_ids=IDS).logits
    assert not torch.allclose(base, adapted, atol=1e-3)  # the adapters count, and disabling them is honoured
    assert torch.allclose(merged, adapted, atol=1e-5)
    assert model.get_base_model().lm_head.forward.__func__ is torch.nn.Linear.forward
    layer = model.get_base_model().model.layers[0].self_attn.q_proj
    assert layer.forward.__func__ is fused_forward


@pytest.mark.slow
def test_a_tune_run_trains_its_lora_layers_fused_and_as_peft_would(intent_prompt, monkeypatch):
    """Two steps of nbkit.tune with LoRA's layers fused and with peft's forward: the same losses; every one of
    the embedded model's 210 adapted layers was fused."""
    import nbkit.training.decoder as decoder

    fused = []
    monkeypatch.setattr(decoder, "fuse_lora", lambda model: fused.append(fuse_lora(model)))
    runs = [nbkit.tune(intent_prompt, "sample:intent", method="lora", max_steps=2, name="fused", callbacks=[])]
    monkeypatch.setattr(decoder, "fuse_lora", lambda model: 0)
    runs.append(nbkit.tune(intent_prompt, "sample:intent", method="lora", max_steps=2, name="peft", callbacks=[]))
    assert fused == [210]
    with_fusing, with_peft = ([h["loss"] for h in r.history] for r in runs)
    assert len(with_fusing) == 2 and with_fusing == pytest.approx(with_peft, rel=1e-4), (with_fusing, with_peft)
