"""Which family a model belongs to, decided in one place.

Every layer that treats families differently (loading, prediction, training, search) asks
:func:`family_of` for a spec, or :attr:`nbkit.runs.Run.family` for a run, instead of
testing names itself.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .embedded import EMBEDDED, ENCODERS

API_PREFIX = "openai:"
FAMILIES = ("decoder", "encoder", "seq2seq", "api")


def family(source: str | os.PathLike) -> str:
    """``encoder``, ``seq2seq`` or ``decoder`` from a model directory's ``config.json``.

    A hub id that is not on disk counts as a decoder (nbkit's default family) unless it names
    an encoder the caller asked for explicitly.
    """
    config = Path(source) / "config.json"
    if not config.exists():
        return "decoder"
    data = json.loads(config.read_text())
    if data.get("is_encoder_decoder"):
        return "seq2seq"
    architectures = data.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "decoder"
    if data.get("model_type") in ("bert", "roberta", "distilbert", "xlm-roberta", "mpnet", "electra",
                                  "deberta", "deberta-v2", "albert", "camembert", "modernbert", "nomic_bert"):
        return "encoder"
    return "encoder" if architectures and not data.get("is_decoder") else "decoder"


def family_of(spec: str) -> str:
    """The one place a model spec's family is decided: ``api`` (``openai:NAME``), ``encoder``,
    ``seq2seq`` or ``decoder``; the embedded models by name, a directory and a hub id (online, or in
    the hub cache) by their ``config.json``; anything else is a decoder."""
    spec = str(spec)
    if spec.startswith(API_PREFIX):
        return "api"
    if spec in ENCODERS:
        return "encoder"
    if spec in EMBEDDED:
        return "decoder"
    path = Path(spec).expanduser()
    if path.is_dir():
        return family(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        try:
            from huggingface_hub import hf_hub_download

            return family(Path(hf_hub_download(spec, "config.json")).parent)
        except Exception:  # offline and not cached, or not a model: nbkit's default family
            return "decoder"
    return "decoder"
