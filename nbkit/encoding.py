"""Turning (prompt, row) into token ids: one place, shared by training and scoring.

The context (system, shots, instruction, chat markup) and the completion (the
rendered target plus the end-of-turn token) are tokenized separately and
concatenated, so the boundary the model is trained on is exactly the one it is
scored on.
"""

from __future__ import annotations

import copy
import hashlib
import warnings
from typing import Mapping, Sequence

from .errors import ConfigError
from .prompts import Prompt


def end_text(tokenizer) -> str:
    """What ends a completion: the end-of-turn / end-of-sequence token."""
    return tokenizer.eos_token or ""


# -- the chat framing a run trained with ----------------------------------------------------
SPECIAL = ("bos_token", "eos_token", "pad_token")


def chat_facts(tokenizer) -> dict:
    """What a run's text framing depends on, as its ``chat.json`` records it: the exact chat template,
    the special tokens (and their ids) and the text that ends every completion it learned."""
    facts = {"chat_template": getattr(tokenizer, "chat_template", None), "end": end_text(tokenizer)}
    for name in SPECIAL:
        facts[name] = getattr(tokenizer, name, None)
        facts[f"{name}_id"] = getattr(tokenizer, f"{name}_id", None)
    return facts


def _digest(text) -> str:
    return "none" if text is None else hashlib.sha256(str(text).encode()).hexdigest()[:12]


def run_tokenizer(recorded: Mapping | None, tokenizer, run_name: str):
    """The tokenizer to frame ``run_name``'s text with: ``tokenizer`` when it matches what the run
    ``recorded`` (its ``chat.json``; older runs have none), else a copy carrying the recorded chat template.

    A changed chat template is replaced by the recorded one, with a warning naming both; changed
    special tokens (another end token: the run would never stop) are refused.
    """
    if not recorded:
        return tokenizer
    now = chat_facts(tokenizer)
    changed = [k for k in (*SPECIAL, "end") if k in recorded and recorded[k] != now[k]]
    if changed:
        raise ConfigError("model", f"run {run_name!r} was trained with {changed[0]} {recorded[changed[0]]!r}, but "
                          f"the model's tokenizer now has {now[changed[0]]!r}: its answers would not end where it "
                          "learned to end them; use the tokenizer it was trained with")
    if recorded.get("chat_template") == now["chat_template"]:
        return tokenizer
    warnings.warn(f"run {run_name!r} was trained with chat template {_digest(recorded.get('chat_template'))}; the "
                  f"model's tokenizer now has {_digest(now['chat_template'])}: using the recorded one "
                  "(chat.json in the run)", stacklevel=2)
    framed = copy.copy(tokenizer)
    framed.chat_template = recorded.get("chat_template")
    return framed


def encode(prompt: Prompt, row: Mapping, tokenizer, shots: Sequence[Mapping] = (), target: str | None = None):
    """Token ids of the context and of the completion for ``row``.

    Args:
        prompt: the prompt (its target must be set unless ``target`` is given).
        row: the example.
        tokenizer: the model's tokenizer.
        shots: solved examples placed before the row.
        target: the completion text to use instead of the rendered target (a choice).

    Returns:
        ``(context_ids, completion_ids)``; the completion ends with the end token.
    """
    context = prompt.format(row, tokenizer, shots)
    text = prompt.render_target(row) if target is None else target
    completion = prompt.completion(text, tokenizer) + end_text(tokenizer)
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    comp = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return ctx, comp


def encode_context(prompt: Prompt, row: Mapping, tokenizer, shots: Sequence[Mapping] = ()) -> list[int]:
    return tokenizer(prompt.format(row, tokenizer, shots), add_special_tokens=False)["input_ids"]


def encode_contexts(prompt: Prompt, rows: Sequence[Mapping], tokenizer, pool: Sequence[Mapping] = ()) -> list[list[int]]:
    """Context ids of each row, each with its own shots from ``pool`` (:meth:`Prompt.shots_for`)."""
    return [encode_context(prompt, row, tokenizer, shots)
            for row, shots in zip(rows, prompt.shots_for(rows, pool))]


def encode_choice(prompt: Prompt, choice: str, tokenizer) -> list[int]:
    """Ids of one label word as it follows the context (without the end token)."""
    return tokenizer(prompt.completion(choice, tokenizer), add_special_tokens=False)["input_ids"]


def training_example(prompt: Prompt, row: Mapping, tokenizer, max_length: int, shots: Sequence[Mapping] = ()):
    """``input_ids``/``labels`` with the loss on the completion only, and whether it was cut.

    Too-long examples lose the start of their context, never their completion:
    the instruction tail and the answer are what the model must learn.
    """
    ctx, comp = encode(prompt, row, tokenizer, shots)
    truncated = len(ctx) + len(comp) > max_length
    if truncated:
        comp = comp[:max_length]
        ctx = ctx[len(ctx) - (max_length - len(comp)):] if max_length > len(comp) else []
    ids = ctx + comp
    return {"input_ids": ids, "labels": [-100] * len(ctx) + comp, "length": len(ids)}, truncated
