"""Preference and reward tuning of a decoder: DPO, ORPO, KTO and GRPO through TRL's trainers.

Everything around the trainer is the decoder recipe's (:mod:`nbkit.training.decoder`): the run
directory, the method's adapter, the progress bridge, resume, the saved adapter. What differs is
here: the rows each objective needs, checked before any weights load and named by row when they
are wrong; the text TRL trains on, framed exactly as nbkit frames a prompt (chat template, end
token); and the TRL trainer with nbkit's ``TrainingArguments``. The reference model of DPO and KTO
is the base with the adapter disabled (TRL does that for a peft model: no second copy of the weights).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from typing import Any, Sequence

from ..config import TuneConfig
from ..encoding import end_text
from ..errors import ConfigError, DataError, install_extra
from ..prompts import Prompt
from .rewards import reward_functions
from .trainer import common_args

TRUE, FALSE = ("true", "yes", "1", "good"), ("false", "no", "0", "bad")


def _text(row: dict, column: str, number: int, split: str) -> str:
    value = row.get(column)
    if value is None:
        raise DataError(f"{split} row {number} has no {column!r}; preference rows need 'chosen' and 'rejected' "
                        f"completions (KTO: 'completion' and a true/false 'label'); the row has: {', '.join(sorted(row))}")
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{split} row {number}: {column!r} is empty; every completion needs text")
    return value


def _label(value, number: int, split: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise DataError(f"{split} row {number}: label {value!r} is not true or false; KTO's label says whether the "
                    "completion is good (true) or bad (false)")


def check_rows(rows: Sequence[dict], data: str, prompt: Prompt, split: str = "train") -> list[dict]:
    """Each row as the objective reads it, every row checked: ``{"row", "chosen", "rejected"}`` for pairs,
    ``{"row", "completion", "label"}`` for KTO (pairs split into one good and one bad), ``{"row", "target"}``
    for rewards. Raises :class:`DataError` naming the first bad row (1-based)."""
    out = []
    for number, row in enumerate(rows, 1):
        if data == "rewards":
            target = prompt.render_target(row) if prompt.target is not None else ""
            out.append({"row": row, "target": target})
        elif data == "unpaired" and "completion" in row:
            out.append({"row": row, "completion": _text(row, "completion", number, split),
                        "label": _label(row.get("label"), number, split)})
        else:
            chosen, rejected = _text(row, "chosen", number, split), _text(row, "rejected", number, split)
            if chosen.strip() == rejected.strip():
                raise DataError(f"{split} row {number}: 'chosen' and 'rejected' are the same text; a preference "
                                "needs two different completions")
            if data == "pairs":
                out.append({"row": row, "chosen": chosen, "rejected": rejected})
            else:
                out += [{"row": row, "completion": chosen, "label": True},
                        {"row": row, "completion": rejected, "label": False}]
    if not out:
        raise DataError(f"the {split} split has no rows to train on")
    return out


def check_prompt(prompt: Prompt, objective: str) -> None:
    if prompt.shots:
        raise ConfigError("shots", f"objective {objective!r} renders each row without shots; register the prompt "
                          "with shots 0 (the completions are what the model learns from)")


def texts(prompt: Prompt, items: list[dict], tokenizer, data: str) -> list[dict]:
    """What TRL trains on: the context as nbkit frames it, each completion with the run's end token."""
    def completion(text):
        return prompt.completion(text, tokenizer) + end_text(tokenizer)

    out = []
    for item in items:
        context = prompt.format(item["row"], tokenizer)
        if data == "pairs":
            out.append({"prompt": context, "chosen": completion(item["chosen"]),
                        "rejected": completion(item["rejected"])})
        elif data == "unpaired":
            out.append({"prompt": context, "completion": completion(item["completion"]), "label": item["label"]})
        else:  # GRPO samples the completions itself; the rewards read the target and the row
            import json

            out.append({"prompt": context, "nbkit_target": item["target"],
                        "nbkit_row": json.dumps(item["row"], default=str)})
    return out


def lengths(examples: list[dict], tokenizer) -> list[int]:
    """Tokens of each example: its prompt and its longer completion."""
    def count(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    return [count(e["prompt"]) + max((count(e[k]) for k in ("chosen", "rejected", "completion") if k in e), default=0)
            for e in examples]


@dataclasses.dataclass
class PreferenceBatches:
    """The examples of a preference or reward run, in the decoder recipe's ``Batches`` shape."""

    examples: list
    truncated: int
    dev: list
    lengths: list  # tokens of each example (the memory estimate's longest)
    dev_eval: Any = None
    task_losses: Any = None

    @classmethod
    def of(cls, task, tokenizer, cfg: TuneConfig, objective, options, namespace=None) -> "PreferenceBatches":
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            raise ConfigError("objective", f"{objective.name!r} trains through TRL, which is not installed: "
                              + install_extra("rl"))
        check_prompt(task.prompt, objective.name)
        train = texts(task.prompt, check_rows(task.train, objective.data, task.prompt), tokenizer, objective.data)
        dev = texts(task.prompt, check_rows(task.dev, objective.data, task.prompt, "dev"), tokenizer,
                    objective.data) if task.dev else []
        if objective.data == "rewards":
            reward_functions(options, task.prompt, namespace)  # a reward that cannot score these rows fails now
            completions = cfg.batch_size * cfg.grad_accum  # per optimizer step: groups of --generations
            if completions % options.generations:
                raise ConfigError("batch_size", f"{cfg.batch_size} x grad_accum {cfg.grad_accum} completions per "
                                  f"step do not split into groups of --generations {options.generations}; use a "
                                  f"multiple of {options.generations}")
            found = [len(tokenizer(e["prompt"], add_special_tokens=False)["input_ids"]) + options.max_new_tokens
                     for e in train]
        else:
            found = lengths(train, tokenizer)
        return cls(train, sum(n > cfg.max_length for n in found), dev, found)


@contextlib.contextmanager
def quiet_datasets():
    from datasets.utils import logging as ds_logging

    enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            ds_logging.enable_progress_bar()


def build_preference_trainer(model, loaded, batches: PreferenceBatches, cfg: TuneConfig, run, spec, objective,
                             options, prompt: Prompt, namespace=None):
    """TRL's trainer for ``objective`` with nbkit's arguments (steps, checkpoints, precision, seed)."""
    from .trainer import schedule

    rows_per_step = len(batches.examples) * (options.generations if objective.data == "rewards" else 1)
    plan = schedule(cfg, rows_per_step, bool(batches.dev))
    args = {**common_args(cfg, run, loaded.device, spec.quantize, plan), "max_length": cfg.max_length}
    if batches.dev:
        greater = objective.data == "rewards"
        args.update(eval_strategy="steps", eval_steps=plan["eval_steps"], load_best_model_at_end=True,
                    metric_for_best_model="reward" if greater else "loss", greater_is_better=greater,
                    per_device_eval_batch_size=cfg.batch_size)
    with quiet_datasets():  # TRL tokenizes with a progress bar per pass over a few hundred rows
        return _trainer(model, loaded, batches, cfg, objective, options, prompt, namespace, args)


def _trainer(model, loaded, batches: PreferenceBatches, cfg: TuneConfig, objective, options, prompt, namespace,
             args: dict):
    import datasets

    train = datasets.Dataset.from_list(batches.examples)
    dev = datasets.Dataset.from_list(batches.dev) if batches.dev else None
    common = dict(model=model, train_dataset=train, eval_dataset=dev, processing_class=loaded.tokenizer)
    name = objective.name
    if name == "dpo":
        from trl import DPOConfig, DPOTrainer

        config = DPOConfig(**args, beta=options.beta, loss_type=[options.loss_type],
                           include_num_input_tokens_seen="non_padding")
        return DPOTrainer(args=config, **common)
    if name == "orpo":
        import warnings

        with warnings.catch_warnings():  # TRL keeps ORPO under trl.experimental and says so on import
            warnings.simplefilter("ignore")
            from trl.experimental.orpo import ORPOConfig, ORPOTrainer
        config = ORPOConfig(**args, beta=options.beta, remove_unused_columns=False)  # its collator reads them
        return ORPOTrainer(args=config, **common)
    if name == "kto":
        from trl import KTOConfig, KTOTrainer

        config = KTOConfig(**args, beta=options.beta, desirable_weight=options.desirable_weight,
                           undesirable_weight=options.undesirable_weight)
        return KTOTrainer(args=config, **common)
    from trl import GRPOConfig, GRPOTrainer

    del args["max_length"]
    generations = options.generations
    config = GRPOConfig(**args, num_generations=generations, max_completion_length=options.max_new_tokens,
                        temperature=options.temperature, beta=options.kl, log_completions=False,
                        generation_batch_size=math.lcm(cfg.batch_size, generations))
    return GRPOTrainer(args=config, reward_funcs=reward_functions(options, prompt, namespace), **common)
