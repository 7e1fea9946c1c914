import time

import pytest

from nbkit import load_model
from nbkit.errors import UnknownNameError
from nbkit.models import cache_dir, embedded_gguf


def test_embedded_model_is_cached_and_shared(smol):
    assert (cache_dir() / "models" / "smollm2-135m" / "model.safetensors").exists()
    assert embedded_gguf("smollm2-135m").suffix == ".gguf"
    started = time.monotonic()
    again = load_model("smollm2-135m")
    assert again is smol and time.monotonic() - started < 0.5
    fresh = load_model("smollm2-135m", fresh=True)
    assert fresh is not smol and fresh.model is not smol.model
    assert 130e6 < smol.num_parameters() < 140e6
    assert smol.tokenizer.chat_template


def test_embedded_model_answers(smol):
    from nbkit.inference import generate

    ids = smol.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, tokenize=False)
    out = generate(smol.model, smol.tokenizer, [smol.tokenizer(ids, add_special_tokens=False)["input_ids"]], 12)
    assert "Paris" in out[0]


def test_local_directory_loads():
    path = cache_dir() / "models" / "smollm2-135m"
    model = load_model(str(path), fresh=True)
    # SmolLM2-135M's own count (the session's shared model may carry adapters from earlier tests)
    assert model.num_parameters() == 134_515_008


def test_unknown_model_lists_the_embedded_ones():
    with pytest.raises(UnknownNameError) as e:
        load_model("no-such-model")
    assert "smollm2-135m" in str(e.value)


def test_four_bit_is_nf4_with_double_quant():
    import bitsandbytes as bnb

    model = load_model("smollm2-135m", quantize="4bit", fresh=True)
    layers = [m for m in model.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(layers) == 30 * 7
    state = layers[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested


def test_eight_bit_loads_and_answers():
    import bitsandbytes as bnb

    from nbkit.inference import generate

    model = load_model("smollm2-135m", quantize="8bit", fresh=True)
    assert sum(isinstance(m, bnb.nn.Linear8bitLt) for m in model.model.modules()) == 30 * 7
    tok = model.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=False)
    assert "Paris" in generate(model.model, tok, [tok(text, add_special_tokens=False)["input_ids"]], 10)[0]


def test_attention_is_sdpa(smol):
    """PyTorch's fused scaled-dot-product attention, not the eager reference implementation."""
    assert smol.model.config._attn_implementation == "sdpa"
