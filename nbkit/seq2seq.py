"""Encoder-decoder models (T5, BART): tuning and generation for text-to-text tasks.

The prompt renders the encoder's input (no chat template: these models were not trained on
one) and its ``target`` is the decoder's label, so a summarisation prompt looks like
``"summarize: {{ text }}"`` with ``--target "{{ summary }}"``. ``%tune`` trains LoRA on the
attention projections (``q``, ``v`` for T5; ``q_proj``, ``v_proj`` for BART: give
``--target-modules``) or all weights; ``%evaluate`` generates greedily and scores ROUGE,
exact match and token F1 like it does for decoders.

Any checkpoint ``AutoModelForSeq2SeqLM`` loads works: a local directory, or a hub id such as
``google/flan-t5-small`` or ``facebook/bart-base`` when online. The tests use a tiny randomly
initialised T5 built from a config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .errors import ConfigError, DataError

SEQ2SEQ_METHODS = ("lora", "full")
_LOADED: dict[tuple, tuple] = {}


def is_seq2seq(spec: str) -> bool:
    """Whether ``spec`` (a directory, a run's saved model or a hub id) is an encoder-decoder."""
    from .encoders import family_of

    return family_of(spec) == "seq2seq"


def load(spec: str, adapter: str | Path | None = None, device: str | None = None):
    """(model, tokenizer, device) of ``spec`` with ``adapter`` applied, loaded once per session."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from .models import _quiet, pick_device

    device = device or pick_device("auto")
    key = (str(spec), str(adapter) if adapter else None, device)
    if key not in _LOADED:
        with _quiet():
            model = AutoModelForSeq2SeqLM.from_pretrained(spec)
            tokenizer = AutoTokenizer.from_pretrained(spec)
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter))
        _LOADED[key] = (model.to(device).eval(), tokenizer, device)
    return _LOADED[key]


def _check_rows(prompt, rows) -> None:
    if not rows:
        raise DataError(f"no rows to use with prompt {prompt.name!r}")


def tune_seq2seq(prompt, data: Any, *, model: str, method: str = "lora", epochs: float = 3, lr: float | None = None,
                 batch_size: int = 8, max_length: int = 256, target_length: int = 128, warmup: float = 0.1,
                 seed: int = 0, r: int = 8, alpha: float = 16, dropout: float = 0.05, target_modules=None,
                 name: str | None = None, overwrite: bool = False, namespace=None, callbacks=()):
    """Fine-tune an encoder-decoder on ``prompt``'s input → target pairs (teacher-forced cross-entropy
    on the target tokens). Returns the :class:`nbkit.runs.Run`."""
    import torch

    from .data import load_data
    from .encoders import _new_run, train_and_save
    from .models import _quiet, pick_device
    from .prompts import get_prompt
    from .runs import write_json

    if method not in SEQ2SEQ_METHODS:
        raise ConfigError("method", f"{method!r} is not available for encoder-decoder models; use one of: "
                          f"{', '.join(SEQ2SEQ_METHODS)}")
    prompt = get_prompt(prompt)
    splits = load_data(data, namespace)
    columns = splits["train"].column_names
    prompt = prompt.resolve_target(columns)
    prompt.check(columns)
    rows = list(splits["train"])
    _check_rows(prompt, rows)
    if prompt.shots or prompt.system:
        raise ConfigError("prompt", f"{prompt.name!r} has shots or a system message; an encoder-decoder is tuned on "
                          "the rendered input alone")
    device = pick_device("auto")
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers import set_seed

    set_seed(seed)  # before the head and the LoRA weights are initialised: same seed, same run

    with _quiet():
        net = AutoModelForSeq2SeqLM.from_pretrained(model)
        tokenizer = AutoTokenizer.from_pretrained(model)
    net.to(device)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        targets = target_modules or _default_targets(net)
        net = get_peft_model(net, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type="SEQ_2_SEQ_LM",
                                             target_modules=targets))
    lr = lr or (1e-3 if method == "lora" else 1e-4)
    run = _new_run(name, overwrite, f"{prompt.name}-{method}")
    cfg = {"task": "generation", "architecture": "seq2seq", "model": model, "method": method, "epochs": epochs,
           "lr": lr, "batch_size": batch_size, "warmup": warmup, "seed": seed, "max_length": max_length,
           "target_length": target_length, "data": data if isinstance(data, str) else f"<{type(data).__name__}>",
           "options": {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": target_modules}
           if method == "lora" else {}}
    write_json(run.path / "config.json", cfg)
    write_json(run.path / "prompt.json", prompt.to_dict())
    write_json(run.path / "data.json", {"data": cfg["data"], "rows": len(rows)})
    examples = [(prompt.render(row), prompt.render_target(row)) for row in rows]
    params = [p for p in net.parameters() if p.requires_grad]

    def loss_of(batch):
        enc = tokenizer([x for x, _ in batch], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        enc.pop("token_type_ids", None)  # a BERT-style tokenizer's; T5 and BART take none
        labels = tokenizer(text_target=[y for _, y in batch], padding=True, truncation=True,
                           max_length=target_length, return_tensors="pt")["input_ids"]
        labels[labels == tokenizer.pad_token_id] = -100  # padding is not a target
        return net(**enc.to(device), labels=labels.to(device)).loss

    return train_and_save(run, net, tokenizer, params, examples, loss_of, cfg, callbacks)


def _default_targets(model) -> list[str]:
    """LoRA targets by architecture: T5's ``q``/``v``, BART's and most others' ``q_proj``/``v_proj``."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for pair in (["q", "v"], ["q_proj", "v_proj"]):
        if set(pair) <= names:
            return pair
    raise ConfigError("target_modules", "cannot guess the attention projections of this model; give "
                      "--target-modules, e.g. q,v")


def predict(model_spec: str, adapter, prompt, rows: Sequence, batch_size: int = 8):
    """One row per example (input, output, expected, correct), greedy generation."""
    import pandas as pd
    import torch

    from .metrics import normalize

    _check_rows(prompt, rows)
    net, tokenizer, device = load(model_spec, adapter)
    inputs = [prompt.render(row) for row in rows]
    expected = [prompt.render_target(row) for row in rows]
    longest = max(len(tokenizer(e, add_special_tokens=False)["input_ids"]) for e in expected)
    outputs = []
    with torch.inference_mode():
        for s in range(0, len(inputs), batch_size):
            enc = tokenizer(inputs[s:s + batch_size], padding=True, truncation=True, return_tensors="pt").to(device)
            enc.pop("token_type_ids", None)
            ids = net.generate(**enc, max_new_tokens=longest + 16, do_sample=False, num_beams=1)
            outputs += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return pd.DataFrame({"input": inputs, "output": outputs, "expected": expected,
                         "correct": [normalize(o) == normalize(e) for o, e in zip(outputs, expected)]})
