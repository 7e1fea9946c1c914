"""The encoder-decoder family (T5, BART): loaded with ``AutoModelForSeq2SeqLM``.

Any checkpoint ``AutoModelForSeq2SeqLM`` loads works: a local directory, or a hub id such as
``google/flan-t5-small`` or ``facebook/bart-base`` when online.
"""

from __future__ import annotations

from pathlib import Path

from ..hf import quiet
from ..runs import saved_version
from ..session import current


def load_seq2seq(spec: str, adapter: str | Path | None, device: str):
    """(model, tokenizer) of ``spec`` with ``adapter`` applied, on ``device``, once per session."""
    def load():
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        with quiet():
            model = AutoModelForSeq2SeqLM.from_pretrained(spec)
            tokenizer = AutoTokenizer.from_pretrained(spec)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        return model.to(device).eval(), tokenizer

    return current().cached(("seq2seq", str(spec), saved_version(adapter) if adapter else None, device), load)


def fresh_seq2seq(spec: str, device: str):
    """A new copy of ``spec`` and its tokenizer to train (never the session's)."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    with quiet():
        model = AutoModelForSeq2SeqLM.from_pretrained(spec)
        tokenizer = AutoTokenizer.from_pretrained(spec)
    return model.to(device), tokenizer
