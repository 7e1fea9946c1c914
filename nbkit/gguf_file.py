"""A merged Hugging Face model directory as one GGUF file, for llama.cpp, Ollama and ``transformers``.

:func:`write_gguf` reads what ``save_pretrained`` wrote (``config.json``, ``*.safetensors``,
``tokenizer.json``) and writes the layout llama.cpp's ``convert_hf_to_gguf.py`` writes for the
``llama`` architecture (Llama, SmolLM, Mistral) and for ``qwen2``: the same tensor names, the
q/k row permutation of the llama converter, norms in f32, the same metadata keys. The weights
are streamed one tensor at a time, so memory stays at about one tensor however large the model.
:func:`modelfile` writes the Ollama ``Modelfile`` that goes beside the file.

Only byte-level BPE tokenizers (``tokenizer.ggml.model = gpt2``: SmolLM, Llama 3, Qwen2,
Mistral's tekken) are written; sentencepiece vocabularies (Llama 2, Mistral 7B v0.1) are refused.
``tokenizer.ggml.pre`` names the pre-tokenizer llama.cpp splits text with. It is read from
``tokenizer.json``'s ``pre_tokenizer``: ``llama-bpe`` (Llama 3's split regex), ``qwen2``,
``smollm`` (single digits, then GPT-2's regex; also any vocabulary that starts like SmolLM's,
because a tokenizer rebuilt from a GGUF by transformers lost its digit splitter), ``gpt-2``
(plain byte-level), else ``default``, llama.cpp's generic split (digits and punctuation may then
split differently from the original tokenizer in llama.cpp; transformers ignores the key).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .errors import ConfigError, MissingDependencyError

GGUF_TYPES = ("f16", "q8_0", "f32", "bf16")

# model_type -> (llama.cpp architecture, whether q/k rows are permuted). llama.cpp converts Mistral
# with its Llama converter (and ignores the sliding window, as it does for Llama).
_ARCHS = {"llama": ("llama", True), "mistral": ("llama", True), "qwen2": ("qwen2", False)}
MODEL_TYPES = tuple(sorted(_ARCHS))  # the transformers model types this writes
_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # gguf.LlamaFileType values
_BYTES = {"F32": 4.0, "F16": 2.0, "BF16": 2.0, "Q8_0": 34 / 32}  # per weight; a Q8_0 block is 32 int8 + an f16 scale
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_SPLITS = {_LLAMA3_SPLIT: "llama-bpe", _LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}"): "qwen2"}


def write_gguf(model_dir, out_file, *, dtype: str = "f16", name: str | None = None,
               chat_template: str | None = None) -> Path:
    """Write the model in ``model_dir`` as one GGUF file.

    Everything is checked (dtype, architecture, tokenizer, tensor names) before any weight is
    read, and the file is written under a temporary name, then renamed: a failure leaves nothing.

    Args:
        model_dir: a directory ``save_pretrained`` wrote, model and tokenizer (a merged export).
        out_file: the ``.gguf`` file to write; an existing one is replaced.
        dtype: ``f16`` (llama.cpp's default), ``q8_0`` (8-bit, about half the size), ``f32`` or
            ``bf16``. Norms and biases stay f32 whatever this says, as llama.cpp keeps them.
        name: ``general.name``; defaults to the directory's name.
        chat_template: the Jinja chat template to embed; defaults to the tokenizer's.

    Returns:
        The path written.

    Raises:
        ConfigError: ``format``, for a dtype, architecture, tokenizer or tensor this cannot write.
    """
    if dtype not in GGUF_TYPES:
        raise ConfigError("format", f"dtype {dtype!r} is not a GGUF type this writes; "
                          f"use one of {', '.join(GGUF_TYPES)}")
    model_dir, out_file = Path(model_dir), Path(out_file)
    config = _read_config(model_dir)
    tokenizer = _read_tokenizer(model_dir)
    try:
        import gguf
        import numpy as np
    except ImportError as error:
        raise MissingDependencyError("gguf", "writing a GGUF file") from error
    arch, permute = _ARCHS[config["model_type"]]
    plan = _tensor_plan(model_dir, config, arch, dtype)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_file.with_name(f".{out_file.name}.tmp-{os.getpid()}")
    writer = gguf.GGUFWriter(tmp, arch)
    try:
        _add_hparams(writer, config, name or model_dir.resolve().name, dtype)
        _add_tokenizer(writer, model_dir, config, tokenizer, chat_template)
        for gguf_name, _, _, shape, qtype in plan:
            # a non-uint8 placeholder dtype makes the writer take `shape` as the element shape
            writer.add_tensor_info(gguf_name, shape, np.dtype(np.float32), int(math.prod(shape) * _BYTES[qtype]),
                                   gguf.GGMLQuantizationType[qtype])
        # header, metadata and tensor table first, then the weights one at a time: memory stays at one tensor
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        heads = (config["num_attention_heads"], config.get("num_key_value_heads") or config["num_attention_heads"])
        for gguf_name, source, file, _, qtype in plan:
            array = _load(file, source) if file else _rope_factors(config)
            if permute and (".attn_q." in gguf_name or ".attn_k." in gguf_name):
                array = _permute(array, heads[0] if ".attn_q." in gguf_name else heads[1])
            writer.write_tensor_data(gguf.quants.quantize(array, gguf.GGMLQuantizationType[qtype]))
        writer.close()
        os.replace(tmp, out_file)  # atomic: a reader sees the old file or the whole new one
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    return out_file


def _read_config(model_dir: Path) -> dict:
    """``config.json``, refused unless it is an architecture and rope this writes."""
    path = model_dir / "config.json"
    if not path.is_file():
        raise ConfigError("format", f"{str(model_dir)!r} has no config.json; give a directory save_pretrained wrote")
    config = json.loads(path.read_text())
    kind, names = config.get("model_type"), config.get("architectures") or []
    if kind not in _ARCHS or not all(n.endswith("ForCausalLM") for n in names):
        raise ConfigError("format", f"cannot write {'/'.join(names) or kind!r} as GGUF: only causal LMs of type "
                          f"{', '.join(sorted(_ARCHS))} (llama.cpp's llama and qwen2 architectures)")
    if config.get("hidden_act", "silu") != "silu":
        raise ConfigError("format", f"hidden_act {config['hidden_act']!r}: llama.cpp's {kind} runs silu only")
    rope_type = _rope_type(config)
    if rope_type not in ("default", "linear", "llama3", "yarn"):
        raise ConfigError("format", f"rope scaling {rope_type!r} is not written; default, linear, llama3 and yarn are")
    return config


def _rope(config: dict) -> dict:
    # transformers 5 keeps rope_theta and the scaling in rope_parameters; 4.x at the top and in rope_scaling
    return config.get("rope_parameters") or config.get("rope_scaling") or {}


def _rope_type(config: dict) -> str:
    return _rope(config).get("rope_type") or _rope(config).get("type") or "default"  # "type": before 4.45


def _read_tokenizer(model_dir: Path) -> dict:
    """``tokenizer.json``, refused unless it is byte-level BPE (what ``tokenizer.ggml.model = gpt2`` means)."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise ConfigError("format", f"{str(model_dir)!r} has no tokenizer.json; save the tokenizer beside the model")
    tokenizer = json.loads(path.read_text(encoding="utf-8"))
    model = tokenizer.get("model") or {}
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(tokenizer.get("decoder")):
        raise ConfigError("format", "only byte-level BPE tokenizers (Llama 3, SmolLM, Qwen2) are written; this one is "
                          f"{model.get('type')!r} without a ByteLevel decoder (sentencepiece-style)")
    return tokenizer


def _pre_tokenizer(tokenizer: dict) -> str:
    """llama.cpp's name for how this tokenizer splits text before BPE (see the module docstring)."""
    pre = tokenizer.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [step.get("type") for step in steps]
    first = {index: token for token, index in tokenizer["model"]["vocab"].items() if index < 4}
    if [first.get(i) for i in range(4)] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>"]:
        return "smollm"  # SmolLM's vocabulary, whatever splitter the saved tokenizer kept
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    for step in steps:
        if step.get("type") == "Split" and (step.get("pattern") or {}).get("Regex") in _SPLITS:
            return _SPLITS[step["pattern"]["Regex"]]
    return "default"


def _weight_files(model_dir: Path) -> list[Path]:
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError("format", f"{str(model_dir)!r} has no *.safetensors weights; save with save_pretrained")
    return files


def _tensor_plan(model_dir: Path, config: dict, arch: str, dtype: str) -> list[tuple]:
    """``(gguf name, hf name, file, shape, ggml type)`` for every tensor, block by block, from the headers only."""
    import gguf
    from safetensors import safe_open

    blocks = config["num_hidden_layers"]
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], blocks)
    plan = []
    for file in _weight_files(model_dir):
        with safe_open(file, framework="pt") as f:
            for source in f.keys():
                if source.endswith("rotary_emb.inv_freq"):  # recomputed from rope.freq_base
                    continue
                target = names.get_name(source, try_suffixes=(".weight", ".bias"))
                if target is None:
                    raise ConfigError("format", f"tensor {source!r} has no GGUF name in llama.cpp's {arch} layout")
                plan.append((target, source, file, tuple(f.get_slice(source).get_shape())))
    if config.get("tie_word_embeddings", False):  # llama.cpp reads token_embd for the output when `output` is absent
        plan = [p for p in plan if p[0] != "output.weight"]
    if _rope_type(config) == "llama3":
        plan.append(("rope_freqs.weight", None, None, (_head_dim(config) // 2,)))

    def order(item):  # token_embd, rope_freqs, blk.0 ... blk.N, output_norm, output
        match = re.match(r"blk\.(\d+)\.", item[0])
        return (int(match[1]) if match else -1 if item[0].startswith(("token_embd", "rope")) else blocks, item[0])

    return [(*p, _ggml_type(p[0], p[3], dtype)) for p in sorted(plan, key=order)]


def _ggml_type(gguf_name: str, shape: tuple, dtype: str) -> str:
    """The stored type of one tensor, chosen as llama.cpp's converter does."""
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return "F32"  # norms, biases, rope factors: tiny, and precision-sensitive
    if dtype == "q8_0" and shape[-1] % 32:
        return "F16"  # Q8_0 blocks run along a row of 32; llama.cpp falls back to f16 too
    return dtype.upper()


def _head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _load(file: Path, source: str):
    """One tensor as float32 numpy (bf16 has no numpy type; the writer rounds it again anyway)."""
    from safetensors import safe_open

    with safe_open(file, framework="pt") as f:
        return f.get_tensor(source).float().numpy()


def _permute(weights, heads: int):
    """llama.cpp's q/k row order: each head's two rotary halves interleaved (transformers' GGUF loader undoes it)."""
    return (weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _rope_factors(config: dict):
    """Llama 3.1's rope scaling as llama.cpp stores it: one frequency divisor per rotary pair."""
    import numpy as np

    rope = _rope(config)
    dim, base = _head_dim(config), rope.get("rope_theta", config.get("rope_theta", 10000.0))
    factor, low, high = rope.get("factor", 8.0), rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old / high:
            factors.append(1.0)
        elif wavelen > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def _add_hparams(writer, config: dict, name: str, dtype: str) -> None:
    """The ``general.*`` and ``<arch>.*`` keys llama.cpp writes (and transformers reads back as the config)."""
    import gguf

    heads = config["num_attention_heads"]
    writer.add_type("model")
    writer.add_name(name)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config.get("num_key_value_heads") or heads)
    rope = _rope(config)
    writer.add_rope_freq_base(float(rope.get("rope_theta", config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_file_type(_FILE_TYPES[dtype])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_rope_dimension_count(_head_dim(config))
    if _head_dim(config) != config["hidden_size"] // heads:  # llama.cpp assumes hidden/heads otherwise
        writer.add_key_length(_head_dim(config))
        writer.add_value_length(_head_dim(config))
    rope_type = _rope_type(config)
    if rope_type in ("linear", "yarn"):
        writer.add_rope_scaling_type(gguf.RopeScalingType(rope_type))
        writer.add_rope_scaling_factor(float(rope["factor"]))
        if rope_type == "yarn":
            original = rope.get("original_max_position_embeddings", config["max_position_embeddings"])
            writer.add_rope_scaling_orig_ctx_len(original)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)


def _add_tokenizer(writer, model_dir: Path, config: dict, tokenizer: dict, chat_template: str | None) -> None:
    """Vocabulary, token types, merges, special ids and the chat template, as llama.cpp's ``gpt2`` vocab."""
    import gguf

    size = config["vocab_size"]
    added = {token["id"]: token for token in tokenizer.get("added_tokens", [])}
    by_id = {index: token for token, index in tokenizer["model"]["vocab"].items()}
    by_id.update({index: token["content"] for index, token in added.items()})
    if max(by_id) >= size:
        raise ConfigError("format", f"the tokenizer has ids up to {max(by_id)}, past the model's vocab_size {size}")
    tokens, types = [], []
    for index in range(size):
        if index not in by_id:  # the embedding is padded past the tokenizer; llama.cpp names the rows so
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        token = by_id[index]
        tokens.append(token)
        if index not in added:
            types.append(gguf.TokenType.NORMAL)
        elif added[index].get("special") or (token.startswith("<|") and token.endswith("|>")):
            types.append(gguf.TokenType.CONTROL)  # matched whole in text, never printed
        else:
            types.append(gguf.TokenType.USER_DEFINED)  # matched whole, printed
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tokenizer))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=size,
                                special_token_types=("bos", "eos", "unk", "pad"))
    if chat_template is not None:
        special.chat_template = chat_template
    special.add_to_gguf(writer, quiet=True)
    for kind in ("bos", "eos"):  # llama.cpp's default differs by pre-tokenizer: state what the tokenizer does
        if kind not in special.add_special_token:
            getattr(writer, f"add_add_{kind}_token")(False)


def modelfile(gguf_name: str, tokenizer_dir, chat_template: str | None = None) -> str:
    """The text of an Ollama ``Modelfile`` for a GGUF file in the same directory.

    ChatML (``<|im_start|>``) and Llama 3 (``<|start_header_id|>``) templates get a Go
    ``TEMPLATE`` and their end-of-turn ``stop`` tokens; a default system prompt written into a
    ChatML template (SmolLM's, Qwen's) becomes ``SYSTEM``. Any other template is left to Ollama,
    which reads the GGUF's embedded ``tokenizer.chat_template``; a comment says so.

    Args:
        gguf_name: the GGUF file's name, relative to where the Modelfile goes.
        tokenizer_dir: the directory with ``tokenizer_config.json`` (and ``chat_template.jinja``).
        chat_template: the Jinja template to translate; defaults to the tokenizer's.

    Returns:
        The Modelfile's text.
    """
    tokenizer_dir = Path(tokenizer_dir)
    settings = _json(tokenizer_dir / "tokenizer_config.json")
    if chat_template is None:
        jinja = tokenizer_dir / "chat_template.jinja"
        chat_template = settings.get("chat_template") or (jinja.read_text(encoding="utf-8") if jinja.is_file() else "")
    if not isinstance(chat_template, str):  # a list of named templates: the default one
        chat_template = next((t["template"] for t in chat_template if t.get("name") == "default"), "")
    lines = [f"FROM ./{gguf_name}", ""]
    if "<|im_start|>" in chat_template:
        body, stops = _CHATML, ["<|im_start|>", "<|im_end|>"]
        system = re.search(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}<]+?)<\|im_end\|>", chat_template)
        if system:
            lines += [f'SYSTEM """{system[1]}"""', ""]
    elif "<|start_header_id|>" in chat_template:
        body, stops = _LLAMA3, ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    else:
        body, eos = None, settings.get("eos_token")
        stops = [eos.get("content") if isinstance(eos, dict) else eos] if eos else []
        lines += ["# No TEMPLATE (not a ChatML or Llama 3 chat template): "
                  "Ollama uses the GGUF's tokenizer.chat_template", ""]
    if body:
        lines += [f'TEMPLATE """{body}"""', ""]
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    return "\n".join(lines).rstrip() + "\n"


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


# Go templates over Ollama's .Messages; a trailing assistant message is left open (continued), as
# add_generation_prompt does otherwise.
_CHATML = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}<|im_start|>{{ .Role }}
{{ .Content }}
{{- if or (ne .Role "assistant") (not $last) }}<|im_end|>
{{ end }}
{{- if and $last (ne .Role "assistant") }}<|im_start|>assistant
{{ end }}
{{- end }}"""

_LLAMA3 = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}
{{- if or (ne .Role "assistant") (not $last) }}<|eot_id|>
{{- end }}
{{- if and $last (ne .Role "assistant") }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}"""
