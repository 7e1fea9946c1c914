"""nbkit.gguf_file: a merged model directory as a GGUF file that transformers and llama.cpp load.

The round trips read the file back with transformers' GGUF loader, which undoes llama.cpp's q/k
permutation for the ``llama`` architecture: a file written without it, or with the wrong head
counts, fails them. The files go to a directory of their own because beside a ``tokenizer.json``
``AutoTokenizer(..., gguf_file=...)`` reads that file instead, and the GGUF's vocabulary would go
untested. Metadata is read with ``read_gguf_metadata`` (transformers' fast reader, 0.02 s) rather
than ``gguf.GGUFReader`` (4 s here: it parses every token into a numpy view).
"""

from __future__ import annotations

import contextlib
import functools
import json

import pytest

from nbkit.errors import ConfigError
from nbkit.gguf_file import GGUF_TYPES, modelfile, write_gguf

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Count: 1, 2, 3,"]
TEXTS = ["Hello world 12345 3.14159", "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
         "  spaces\tand\nnewlines ünïcödé 😀 don't <repo_name>"]
CHAT = [{"role": "user", "content": "What is the capital of France?"}]


@contextlib.contextmanager
def _cached_name_maps():
    """transformers' loader rebuilds gguf's tensor-name map once per submodule (~400 times, 6 s); it is a
    pure function of (arch, layers), so caching it changes nothing but the time."""
    import gguf

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "get_tensor_name_map", functools.lru_cache(gguf.get_tensor_name_map))
        yield


def _from_gguf(folder, name):
    from transformers import AutoModelForCausalLM

    with _cached_name_maps():
        return AutoModelForCausalLM.from_pretrained(folder, gguf_file=name).eval()


def _metadata(path):
    from transformers.integrations.gguf import read_gguf_metadata

    return read_gguf_metadata(str(path))


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """The embedded SmolLM2 saved as a merged export would be (a fresh copy: the session's may carry adapters)."""
    from nbkit.models import load_model

    m = load_model("smollm2-135m", fresh=True)
    folder = tmp_path_factory.mktemp("merged")
    m.model.save_pretrained(folder)
    m.tokenizer.save_pretrained(folder)
    return m, folder


@pytest.fixture(scope="module")
def ggufs(merged, tmp_path_factory):
    out = tmp_path_factory.mktemp("gguf")
    for dtype in ("f16", "q8_0"):
        write_gguf(merged[1], out / f"model-{dtype}.gguf", dtype=dtype)
    return out


def _greedy(model, tokenizer, text):
    import torch

    ids = tokenizer(text, return_tensors="pt").to(model.device)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out[0].tolist()


def _max_logit_diff(a, b, tokenizer, texts):
    import torch

    diffs = []
    for text in texts:
        ids = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            diffs.append((a(**ids.to(a.device)).logits.cpu() - b(**ids.to(b.device)).logits.cpu()).abs().max().item())
    return max(diffs)


@pytest.mark.slow
def test_f16_round_trip_gives_the_same_tokens_metadata_and_chat_template(merged, ggufs):
    from transformers import AutoTokenizer

    original, tokenizer = merged[0].model, merged[0].tokenizer
    metadata, tensors = _metadata(ggufs / "model-f16.gguf")
    # the keys and values llama.cpp wrote for this very model, in the file it ships as
    reference, _ = _metadata(_embedded_gguf())
    for key, value in reference.items():
        if key.startswith(("llama.", "tokenizer.ggml.")) and key != "tokenizer.ggml.add_space_prefix":
            assert metadata[key] == value, key
    assert metadata["general.file_type"] == 1 and metadata["general.architecture"] == "llama"
    assert "output.weight" not in tensors and len(tensors) == 2 + 9 * 30  # tied: the embedding is the output
    assert metadata["tokenizer.chat_template"] == tokenizer.chat_template

    gguf_tokenizer = AutoTokenizer.from_pretrained(ggufs, gguf_file="model-f16.gguf")
    assert gguf_tokenizer.chat_template == tokenizer.chat_template
    for text in TEXTS:
        assert gguf_tokenizer(text)["input_ids"] == tokenizer(text)["input_ids"], text
    chat = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert gguf_tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False) == chat

    model = _from_gguf(ggufs, "model-f16.gguf")
    for text in [*PROMPTS, chat]:
        assert _greedy(model, gguf_tokenizer, text) == _greedy(original, tokenizer, text), text
    diff = _max_logit_diff(original, model, tokenizer, PROMPTS)
    print(f"f16: max |logit diff| {diff:.4f}")
    assert diff < 0.1  # f16 rounding only; a wrong permutation gives differences of several units


@pytest.mark.slow
def test_q8_0_is_about_half_the_size_and_close(merged, ggufs):
    original, tokenizer = merged[0].model, merged[0].tokenizer
    f16, q8 = (ggufs / "model-f16.gguf").stat().st_size, (ggufs / "model-q8_0.gguf").stat().st_size
    print(f"f16 {f16 / 1e6:.0f} MB, q8_0 {q8 / 1e6:.0f} MB ({q8 / f16:.2f})")
    assert q8 < 0.6 * f16  # 34 bytes per 32 weights against 64; the f32 norms barely count
    metadata, _ = _metadata(ggufs / "model-q8_0.gguf")
    assert metadata["general.file_type"] == 7 and metadata["general.quantization_version"] == 2

    model = _from_gguf(ggufs, "model-q8_0.gguf")
    diff = _max_logit_diff(original, model, tokenizer, PROMPTS)
    print(f"q8_0: max |logit diff| {diff:.4f}")
    assert diff < 1.5  # ~0.65 seen, on logits from about -20 to 36
    for text in PROMPTS[:2]:
        assert _greedy(model, tokenizer, text) == _greedy(original, tokenizer, text), text


def _embedded_gguf():
    from nbkit.models import embedded_gguf

    return embedded_gguf("smollm2-135m")


@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A 300-token byte-level BPE: the tiny models' files then load in a second, not the 49k vocabulary's 20."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(["the quick brown fox jumps over the lazy dog", "hello world, 123 numbers"], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>")


def _tiny(kind, tokenizer, folder, **overrides):
    """A 2-layer random model of ``kind`` with every weight (biases and norms too) far from its init."""
    import torch
    import transformers

    prefix = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2"}[kind]
    config_class, model_class = getattr(transformers, f"{prefix}Config"), getattr(transformers, f"{prefix}ForCausalLM")
    config = config_class(vocab_size=320, hidden_size=64, intermediate_size=80, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, **overrides)
    torch.manual_seed(0)
    model = model_class(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


@pytest.mark.parametrize("kind, tied", [("llama", False), ("qwen2", True), ("mistral", True)])
def test_tiny_models_round_trip_exactly_in_f32(kind, tied, tiny_tokenizer, tmp_path):
    """Grouped-query attention (4 heads, 2 kv), an untied output (llama), q/k/v biases (qwen2), Mistral as
    llama.cpp's llama, an embedding padded past the tokenizer (320 rows, 300 tokens), and q8_0's f16
    fallback for 80-wide rows."""
    import gguf
    import torch

    model = _tiny(kind, tiny_tokenizer, tmp_path / "model", tie_word_embeddings=tied)
    for dtype in ("f32", "bf16", "q8_0"):
        write_gguf(tmp_path / "model", tmp_path / "out" / f"m-{dtype}.gguf", dtype=dtype)
    reader = gguf.GGUFReader(tmp_path / "out" / "m-q8_0.gguf")
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert reader.fields["general.architecture"].contents() == ("qwen2" if kind == "qwen2" else "llama")
    assert ("output.weight" in types) == (not tied)
    assert types["blk.0.attn_norm.weight"] == "F32" and types["blk.0.ffn_down.weight"] == "F16"  # rows of 80
    assert types["blk.0.ffn_up.weight"] == "Q8_0" and types["token_embd.weight"] == "Q8_0"
    assert kind != "qwen2" or types["blk.1.attn_k.bias"] == "F32"
    assert reader.fields["tokenizer.ggml.token_type"].contents()[300:] == [gguf.TokenType.UNUSED] * 20
    assert reader.fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # plain byte-level: GPT-2's split

    ids = torch.tensor([tiny_tokenizer("the quick brown fox, hello 123")["input_ids"]])
    with torch.no_grad():
        expected = model(ids).logits
        diffs = {dtype: (_from_gguf(tmp_path / "out", f"m-{dtype}.gguf")(ids).logits - expected).abs().max().item()
                 for dtype in ("f32", "bf16", "q8_0")}
    print(kind, {k: f"{v:.2e}" for k, v in diffs.items()}, f"logits span {expected.abs().max().item():.1f}")
    assert diffs["f32"] < 1e-4  # exact but for summation order; an unpermuted q/k misses by far more
    assert diffs["bf16"] < 0.1 and diffs["q8_0"] < 0.1


def test_llama3_rope_scaling_is_stored_as_llama_cpp_rope_freqs(tiny_tokenizer, tmp_path):
    """Llama 3.1's scaled rope becomes one divisor per rotary pair, equal to transformers' own. (transformers'
    GGUF loader neither reads them nor restores rope_scaling, so it loads such a file unscaled.)"""
    import gguf
    import numpy as np

    rope = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=64)  # short, so the 16-wide heads span all three regimes
    model = _tiny("llama", tiny_tokenizer, tmp_path / "model", rope_parameters=rope)
    write_gguf(tmp_path / "model", tmp_path / "m.gguf", dtype="f32")
    stored = next(t for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors if t.name == "rope_freqs.weight")
    unscaled = 1.0 / (10000.0 ** (np.arange(0, 16, 2, dtype=np.float32) / 16))
    expected = unscaled / model.model.rotary_emb.inv_freq.numpy()
    assert stored.tensor_type.name == "F32" and np.allclose(stored.data, expected, rtol=1e-5)
    assert 1 < expected[1] < 8 and expected[0] == 1 and expected[-1] == 8


def test_the_pre_tokenizer_is_named_as_llama_cpp_names_it():
    """Split regexes as transformers' GGUF loader maps them back, so both ends split text alike."""
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    from nbkit.gguf_file import _pre_tokenizer

    def tokenizer(*steps):
        return {"pre_tokenizer": {"type": "Sequence", "pretokenizers": list(steps)}, "model": {"vocab": {"a": 0}}}

    byte_level = {"type": "ByteLevel", "use_regex": False}
    for name in ("llama-bpe", "qwen2"):
        split = {"type": "Split", "pattern": {"Regex": GGUF_PRE_TOKENIZER_SPLITS[name]}, "behavior": "Isolated"}
        assert _pre_tokenizer(tokenizer(split, byte_level)) == name
    assert _pre_tokenizer(tokenizer({"type": "Digits", "individual_digits": True}, byte_level)) == "smollm"
    smollm = {t: i for i, t in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>"])}
    assert _pre_tokenizer({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"vocab": smollm}}) == "smollm"
    assert _pre_tokenizer({"pre_tokenizer": {"type": "ByteLevel"}, "model": {"vocab": {"a": 0}}}) == "gpt-2"
    assert _pre_tokenizer(tokenizer({"type": "Split", "pattern": {"Regex": "x"}}, byte_level)) == "default"


def test_a_failed_write_leaves_nothing(tiny_tokenizer, tmp_path, monkeypatch):
    import nbkit.gguf_file

    _tiny("llama", tiny_tokenizer, tmp_path / "model")
    monkeypatch.setattr(nbkit.gguf_file, "_load", lambda *_: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_gguf(tmp_path / "model", tmp_path / "out" / "m.gguf")
    assert list((tmp_path / "out").iterdir()) == []


def test_an_unsupported_architecture_or_dtype_is_refused_before_anything_loads(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["BertModel"], "model_type": "bert"}))
    # no weights, no tokenizer: the config alone must be enough to refuse
    with pytest.raises(ConfigError, match="BertModel") as error:
        write_gguf(tmp_path, tmp_path / "m.gguf")
    assert error.value.field == "format"
    with pytest.raises(ConfigError, match="q4_0") as error:
        write_gguf(tmp_path / "missing", tmp_path / "m.gguf", dtype="q4_0")
    assert error.value.field == "format" and "f16" in GGUF_TYPES and "q8_0" in GGUF_TYPES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_modelfile_for_chatml_llama3_and_other_templates(smol, tmp_path):
    smol.tokenizer.save_pretrained(tmp_path)
    text = modelfile("model-q8_0.gguf", tmp_path)
    print(text)
    assert text.startswith("FROM ./model-q8_0.gguf\n")
    assert 'TEMPLATE """' in text and "<|im_start|>{{ .Role }}" in text
    assert 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """You are a helpful AI assistant named SmolLM, trained by Hugging Face"""' in text

    llama3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n'"
              " + m['content'] + '<|eot_id|>' }}{% endfor %}")
    text = modelfile("m.gguf", tmp_path, chat_template=llama3)
    assert "<|start_header_id|>{{ .Role }}<|end_header_id|>" in text and 'PARAMETER stop "<|eot_id|>"' in text
    assert "SYSTEM" not in text

    text = modelfile("m.gguf", tmp_path, chat_template="{% for m in messages %}[INST] {{ m.content }}{% endfor %}")
    assert 'TEMPLATE """' not in text and "tokenizer.chat_template" in text.split("\n", 3)[2]
    assert f'PARAMETER stop "{smol.tokenizer.eos_token}"' in text
