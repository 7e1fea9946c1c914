"""The candidates of a prompt search: templates, label-word sets, variants and paraphrases.

A candidate is a template (a given prompt, or one whose instruction the model reworded),
a verbalizer (``{"positive": "great", "negative": "awful"}``, or the prompt's own choices),
a number of shots and how they are chosen. Everything here builds prompts; nothing scores.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Mapping, Sequence

from ..errors import ConfigError
from ..prompts import Prompt


def check_words(words: Mapping[str, str], base: Prompt, rows) -> dict:
    """A label-word set, checked: a word for every label in ``rows``, each its own and non-empty."""
    if not isinstance(words, Mapping) or not words:
        raise ConfigError("words", f"each set maps labels to words, like {{'positive': 'great'}}; got {words!r}")
    labels = {base.render_target(r) for r in rows}
    missing = sorted(labels - set(words))
    if missing:
        raise ConfigError("words", f"{dict(words)!r} has no word for label(s) {', '.join(missing)}")
    spoken = [str(w).strip() for w in words.values()]
    if len(set(spoken)) != len(spoken) or not all(spoken):
        raise ConfigError("words", f"{dict(words)!r} must give each label its own non-empty word")
    return {str(k): str(v).strip() for k, v in words.items()}


def variant(template: Prompt, verbalizer: dict | None, shots: int, selection: str) -> Prompt:
    """``template`` with ``shots`` examples chosen by ``selection``, its target spoken as ``verbalizer`` says."""
    fields = template.to_dict()
    fields.update(shots=shots, selection=selection)
    if verbalizer is not None:
        # the target speaks the word; the mapping lives in the template, so the prompt stays self-contained
        fields["target"] = "{{ " + json.dumps(verbalizer) + "[" + _target_expression(template) + "] }}"
        fields["choices"] = list(verbalizer.values())
    return Prompt.from_dict(fields)


def _target_expression(p: Prompt) -> str:
    """The Jinja expression of a ``{{ expr }}`` target (``label`` for the default)."""
    found = re.fullmatch(r"\s*\{\{\s*(.+?)\s*\}\}\s*", p.target or "{{ label }}")
    if not found:
        raise ConfigError("words", f"needs a target that is one expression like '{{{{ label }}}}'; prompt "
                          f"{p.name!r} has {p.target!r}")
    return found.group(1)


def words_text(p: Prompt, verbalizer: dict | None) -> str:
    """The label words of a candidate as its table shows them."""
    if verbalizer is None:
        return ", ".join(p.choices) if p.choices else "-"
    return ", ".join(f"{k}→{v}" for k, v in verbalizer.items())


def describe(template: Prompt, origin: str, p: Prompt, verbalizer: dict | None, shots: int, selection: str) -> dict:
    """A candidate's row of the search table, before its scores."""
    return {"prompt": template.name, "template": origin, "words": words_text(p, verbalizer), "shots": shots,
            "selection": selection if shots else "-"}


def grid(templates: Sequence[tuple[Prompt, str]], verbalizers: Sequence[dict | None], shots: Sequence[int],
         selection: Sequence[str]) -> tuple[dict[str, Prompt], dict[str, dict]]:
    """Every candidate: ``(prompts by label c01, c02, ..., their descriptions)``."""
    candidates: dict[str, Prompt] = {}
    described: dict[str, dict] = {}
    for (template, origin), verbalizer, k, how in itertools.product(templates, verbalizers, shots, selection):
        if k == 0 and how != selection[0]:
            continue  # without shots the selection changes nothing
        p = variant(template, verbalizer, k, how)
        label = f"c{len(candidates) + 1:02d}"
        candidates[label] = p
        described[label] = describe(template, origin, p, verbalizer, k, how)
    return candidates, described


FORMATS = ("chat", "plain")  # the model's chat template, or the prompt's text as it is


def with_formats(templates: Sequence[tuple[Prompt, str]], formats: Sequence[str] | None,
                 tokenizer) -> list[tuple[Prompt, str]]:
    """Each template once per format (``chat``: through the chat template; ``plain``: the text as it is),
    its origin naming the format. ``None`` (the default) tries both for a model that has a chat template,
    on each prompt that leaves its framing unset (``chat=None``); a prompt with ``chat=True|False`` keeps it."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if formats is None:
        if not has_template:
            return list(templates)
        return [pair for t, origin in templates for pair in (_framed(t, origin, FORMATS) if t.chat is None
                                                             else [(t, origin)])]
    if "chat" in formats and not has_template:
        raise ConfigError("formats", "the model has no chat template; search the plain format only")
    return [pair for t, origin in templates for pair in _framed(t, origin, formats)]


def _framed(template: Prompt, origin: str, formats: Sequence[str]) -> list[tuple[Prompt, str]]:
    return [(Prompt.from_dict({**template.to_dict(), "chat": f == "chat"}), f"{origin}, {f}") for f in formats]


def instruction_of(p: Prompt) -> str:
    """The fixed instruction: the template's text before the line holding its first variable."""
    head = p.template.split("{{", 1)[0] if "{{" in p.template else p.template
    lines = head.split("\n")
    return "\n".join(lines[:-1]).strip() if "{{" in p.template else head.strip()


def with_instruction(p: Prompt, instruction: str) -> Prompt:
    """``p`` with its instruction replaced by ``instruction``."""
    old = instruction_of(p)
    return Prompt.from_dict({**p.to_dict(), "template": p.template.replace(old, instruction, 1)})


def templates_of(bases: Sequence[Prompt], loaded, paraphrases: int, seed: int) -> list[tuple[Prompt, str]]:
    """``(template, origin)``: each prompt as written, then ``paraphrases`` rewordings of each."""
    templates = [(b, "as written") for b in bases]
    for b in bases:
        for k, text in enumerate(paraphrase(b, loaded, paraphrases, seed=seed)):
            templates.append((with_instruction(b, text), f"paraphrase {k + 1}"))
    return templates


def paraphrase(p: Prompt, loaded, n: int, seed: int = 0) -> list[str]:
    """Up to ``n`` distinct rewordings of ``p``'s instruction, sampled from the model (APE-style)."""
    if n <= 0:
        return []
    instruction = instruction_of(p)
    if not instruction:
        return []
    import torch

    tok = loaded.tokenizer
    request = ("Rewrite the following instruction in different words. Keep its meaning and any answer options. "
               f"Reply with the rewritten instruction only.\n\nInstruction: {instruction}")
    if getattr(tok, "chat_template", None):
        text = tok.apply_chat_template([{"role": "user", "content": request}], tokenize=False, add_generation_prompt=True)
    else:
        text = request + "\nRewritten instruction:"
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"].to(loaded.device)
    torch.manual_seed(seed)
    with torch.inference_mode(), loaded.adapter(None) as lm:  # the base model, not an adapter left on by %evaluate
        out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True,
                          temperature=0.9, top_p=0.95, max_new_tokens=60, num_return_sequences=3 * n,
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    found: list[str] = []
    for row in out[:, ids.shape[1]:]:
        line = tok.decode(row, skip_special_tokens=True).strip().split("\n")[0].strip().strip('"')
        line = re.sub(r"^(rewritten instruction|instruction)\s*:\s*", "", line, flags=re.I)
        if len(line) > 10 and "{{" not in line and line != instruction and line not in found:
            found.append(line)
    return found[:n]
