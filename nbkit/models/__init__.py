"""Models of every family, loaded once per session: one :func:`load_model`, one family decision.

The family of a spec (:func:`family_of`) picks the loader: ``decoder`` (causal LMs, the
embedded SmolLM2), ``encoder`` (sentence encoders, the embedded MiniLM), ``seq2seq`` (T5,
BART) or ``api`` (``openai:NAME``, served elsewhere). Loaded models live in the session's
cache (:mod:`nbkit.session`), so ``%%prompt``, ``%tune`` and ``%evaluate`` share one copy.
"""

from __future__ import annotations

import logging
import warnings

from ..config import DEFAULT_ENCODER, DEFAULT_MODEL
from ..errors import ConfigError
from ..session import current
from .decoder import Model, load_decoder, load_tokenizer, model_config, peft_type, resolve
from .devices import QUANTIZE, autocast_precision, compute_dtype, pick_device, quantization_config, under_fsdp
from .embedded import EMBEDDED, ENCODERS, cache_dir, embedded_gguf, embedded_path, encoder_path
from .encoder import EncoderModel, load_encoder
from .family import API_PREFIX, FAMILIES, family, family_of

# bitsandbytes warns on import (peft imports it) that an optional faster CPU
# inference kernel package is missing; it falls back to its own kernel, and that
# package has no bearing on training (docs/qlora-cpu.md). Keep the noise out of notebooks.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# peft's prefix tuning hands its prefix over as `past_key_values`, which transformers 5.2x renamed
# `cache`; the warning is about peft's call, not the user's code
warnings.filterwarnings("ignore", message=".*`past_key_values` is deprecated.*", category=FutureWarning)

__all__ = [
    "API_PREFIX", "DEFAULT_ENCODER", "DEFAULT_MODEL", "EMBEDDED", "ENCODERS", "EncoderModel", "FAMILIES", "QUANTIZE",
    "Model",
    "autocast_precision", "cache_dir", "compute_dtype", "embedded_gguf", "embedded_path", "encoder_path", "family",
    "family_of", "load_model", "load_tokenizer", "model_config", "peft_type", "pick_device", "quantization_config", "resolve",
    "under_fsdp",
]


def load_model(spec: str = DEFAULT_MODEL, *, quantize: str | None = None, device: str = "auto", fresh: bool = False,
               pooling: str | None = None):
    """Load a model and its tokenizer, once per session.

    Decoders (causal language models) give a :class:`Model`; sentence encoders (``minilm-l6``,
    the embedded all-MiniLM-L6-v2, or a BERT-style directory) give an
    :class:`nbkit.models.encoder.EncoderModel` for embeddings and semantic search.

    Args:
        spec: ``smollm2-135m`` (embedded decoder), ``minilm-l6`` (embedded encoder), a local
            directory or a hub id.
        quantize: ``None``, ``"4bit"`` (bitsandbytes NF4 with double quantization) or ``"8bit"``.
        device: ``auto`` (CUDA, then MPS, then CPU), or a torch device string.
        fresh: load a new copy instead of the session's (training modifies its model).
        pooling: encoders without a sentence-transformers ``modules.json``: ``mean``, ``cls`` or
            ``lasttoken``, how token vectors become one sentence vector.

    Returns:
        A :class:`Model`, or an :class:`nbkit.models.encoder.EncoderModel`.
    """
    quantization_config(quantize, "cpu")  # validate before anything heavy
    device = pick_device(device)
    kind = family_of(spec)
    if kind == "api":
        raise ConfigError("model", f"{spec!r} is served elsewhere; nbkit.evaluate and nbkit.generate send it "
                          "requests (there is nothing to load)")
    if kind == "encoder" or pooling:  # an encoder, or a decoder pooled into sentence vectors
        if quantize:
            raise ConfigError("quantize", f"{spec!r} is a sentence encoder; nbkit loads encoders unquantized")
        return current().cached(("encoder", spec, device, pooling), lambda: load_encoder(spec, device, pooling),
                                fresh)
    return current().cached(("decoder", spec, quantize, device), lambda: load_decoder(spec, quantize, device), fresh)
