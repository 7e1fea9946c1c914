"""The encoder-decoder recipe (T5, BART): text-to-text tuning on the prompt's input → target.

The prompt renders the encoder's input (no chat template: these models were not trained on
one) and its ``target`` is the decoder's label, so a summarisation prompt looks like
``"summarize: {{ text }}"`` with ``--target "{{ summary }}"``. LoRA adapts the attention
projections (``q``, ``v`` for T5; ``q_proj``, ``v_proj`` for BART; or ``--target-modules``),
or ``full`` trains all weights; through the methods registry, in the plain loop.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from ..config import TuneConfig, data_spec
from ..data import load_data
from ..errors import ConfigError, DataError
from ..hf import set_seed
from ..methods import BuildContext, method_for
from ..models import pick_device
from ..models.seq2seq import fresh_seq2seq
from ..runs import Run, free_name
from ..session import get_prompt, remember_run
from .loop import Loop, check_loop_settings
from .tasks import Task, write_inputs

UNSUPPORTED = ("max_steps", "grad_accum", "dev", "eval_every", "patience", "save_every", "weights",
               "gradient_checkpointing", "precision", "pooling", "corpus")
# LoRA on a small T5 needs a larger step than on a decoder; all weights move at a tenth of it
LR = {"lora": 1e-3, "full": 1e-4}
TARGET_LENGTH = 128  # tokens of the decoder's label; summaries and answers are short


def default_targets(model) -> list[str]:
    """LoRA targets by architecture: T5's ``q``/``v``, BART's and most others' ``q_proj``/``v_proj``."""
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    for pair in (["q", "v"], ["q_proj", "v_proj"]):
        if set(pair) <= names:
            return pair
    raise ConfigError("target_modules", "cannot guess the attention projections of this model; give "
                      "--target-modules, e.g. q,v")


def tune_seq2seq(prompt, data, settings: Mapping[str, Any], options: Mapping[str, Any], *,
                 overwrite: bool = False, namespace=None, callbacks: Sequence = ()) -> Run:
    """Fine-tune an encoder-decoder on ``prompt``'s input → target pairs (teacher-forced cross-entropy
    on the target tokens). Returns the completed run."""
    if isinstance(prompt, (list, tuple)):
        raise ConfigError("prompt", "multi-task training is for decoders; give one prompt")
    prompt = get_prompt(prompt)
    cfg = TuneConfig(prompt=prompt.name, data=data_spec(data), architecture="seq2seq", options=dict(options),
                     **settings)
    check_loop_settings(cfg, UNSUPPORTED, "for encoder-decoder models")
    spec = method_for(cfg.method, "seq2seq", "is not available for encoder-decoder models")
    method_options = spec.make_options(cfg.options, "seq2seq")
    cfg.options, cfg.lr = dataclasses.asdict(method_options), cfg.lr or LR[cfg.method]
    splits = load_data(data, namespace)
    prompt = prompt.resolve_target(splits["train"].column_names)
    prompt.check(splits["train"].column_names)
    rows = list(splits["train"])
    if not rows:
        raise DataError(f"no rows to use with prompt {prompt.name!r}")
    if prompt.shots or prompt.system:
        raise ConfigError("prompt", f"{prompt.name!r} has shots or a system message; an encoder-decoder is tuned on "
                          "the rendered input alone")
    device = pick_device("auto")
    if cfg.name:  # a given name must be free (or replaced) before anything loads; a default one is numbered
        Run.check_create(cfg.name, overwrite=overwrite)
    set_seed(cfg.seed)  # before the LoRA weights are initialised: same seed, same run
    net, tokenizer = fresh_seq2seq(cfg.model, device)
    guess = getattr(method_options, "target_modules", None) == "all-linear"  # left to the architecture
    net = spec.build(net, method_options, BuildContext(tokenizer=tokenizer, prompt=prompt, family="seq2seq",
                                                       task_type="SEQ_2_SEQ_LM",
                                                       default_targets=default_targets(net) if guess else None))
    run = Run.create(cfg.name or free_name(f"{prompt.name}-{cfg.method}"), overwrite=overwrite)
    cfg.name = run.name
    write_inputs(run, cfg, [Task(prompt.name, prompt, cfg.data, 1.0, splits, rows, [])])
    remember_run(run)
    examples = [(prompt.render(row), prompt.render_target(row)) for row in rows]

    def loss_of(batch):
        enc = tokenizer([x for x, _ in batch], padding=True, truncation=True, max_length=cfg.max_length,
                        return_tensors="pt")
        enc.pop("token_type_ids", None)  # a BERT-style tokenizer's; T5 and BART take none
        labels = tokenizer(text_target=[y for _, y in batch], padding=True, truncation=True,
                           max_length=TARGET_LENGTH, return_tensors="pt")["input_ids"]
        labels[labels == tokenizer.pad_token_id] = -100  # padding is not a target
        return net(**enc.to(device), labels=labels.to(device)).loss

    return Loop(run, net, examples, loss_of, cfg, callbacks=callbacks,
                save=lambda r: r.save_adapter(net, tokenizer if spec.kind == "full" else None))()
