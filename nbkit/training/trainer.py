"""The decoder recipe's trainer: ``transformers.Trainer`` with nbkit's batches, loss and evaluation.

Batches are padded only as wide as their longest example; the loss is computed from logits
at the target positions only (:func:`head_on_targets`); the dev evaluation is nbkit's own
(:mod:`nbkit.training.dev`); multi-task runs weigh each task's tokens (``TaskLosses``).
"""

from __future__ import annotations

import dataclasses
import math

from .. import distributed
from ..config import TuneConfig
from ..inference import takes_logits_to_keep
from ..models import autocast_precision
from ..runs import Run
from .dev import DevEvaluator, TaskLosses
from .compiling import compile_layers
from .packing import pack
from .speed import Speed


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def collate(pad_id: int, packed: bool = False):
    import torch

    def collate(batch):
        if packed:
            return pack(batch)
        out = _pad(batch)
        if "task" in batch[0]:
            out["task"] = torch.tensor([b["task"] for b in batch], dtype=torch.long)
        return out

    def _pad(batch):
        width = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for i, b in enumerate(batch):  # right padding: only as wide as the longest in the batch
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return collate


def optimizer_name(device: str, quantize: str | None) -> str:
    """Paged 8-bit AdamW for 4-bit bases on CUDA (the QLoRA recipe); plain AdamW elsewhere.

    bitsandbytes' paged optimizers page their states to host memory under pressure; they
    exist for CUDA only.
    """
    import importlib.util

    if device.startswith("cuda") and quantize == "4bit" and importlib.util.find_spec("bitsandbytes"):
        return "paged_adamw_8bit"
    return "adamw_torch"


def schedule(cfg: TuneConfig, examples: int, dev: bool) -> dict:
    """Steps, evaluation and checkpoint intervals of a run."""
    steps_per_epoch = math.ceil(examples / (cfg.batch_size * cfg.grad_accum))
    total = cfg.max_steps or max(1, math.ceil(steps_per_epoch * cfg.epochs))
    if not dev:
        return {"total": total, "save_steps": cfg.save_every or max(10, total // 4), "eval_steps": None}
    every = cfg.eval_every or max(1, total // 5)
    # best-checkpoint selection needs a checkpoint at every evaluation
    return {"total": total, "save_steps": every, "eval_steps": every}


def checkpointing_args(enabled: bool) -> dict:
    """Activation checkpointing on or off, under the argument name this transformers version uses (TRL's
    configs default it on: nbkit's setting must be said either way)."""
    import transformers

    names = {f.name for f in dataclasses.fields(transformers.TrainingArguments)}
    name = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}} if enabled else {name: False}


def common_args(cfg: TuneConfig, run: Run, device: str, quantize: str | None, plan: dict) -> dict:
    """The ``TrainingArguments`` every decoder run shares, whatever its objective (TRL's configs extend them)."""
    precision = autocast_precision(device) if cfg.precision == "auto" else cfg.precision
    extra = {}
    if distributed.world().distributed:
        extra.update(
            # the batch_size rows of each step are split between the processes: the same updates as one process
            accelerator_config={"split_batches": True},
            ddp_find_unused_parameters=False,
            ddp_timeout=distributed.TIMEOUT_SECONDS,  # a lost process fails the job instead of hanging it
        )
    return dict(
        output_dir=str(run.path / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps or -1,
        learning_rate=cfg.lr,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup,
        weight_decay=0.0,
        logging_steps=1,
        # the Trainer's default hides a NaN/inf loss (it logs the running mean, 0 at first): nbkit must see it
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=plan["save_steps"],  # a few checkpoints to resume from, not one per step
        # with a dev set the best checkpoint is kept besides the last, so --resume still finds the last
        save_total_limit=2 if plan["eval_steps"] else 1,
        report_to="none",
        disable_tqdm=True,
        log_level="error",
        seed=cfg.seed,
        data_seed=cfg.seed,
        dataloader_pin_memory=False,
        use_cpu=device == "cpu",
        optim=optimizer_name(device, quantize),
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        **checkpointing_args(cfg.gradient_checkpointing),
        **extra,
    )


def build_trainer(model, loaded, examples, cfg: TuneConfig, run: Run, spec, dev_eval: "DevEvaluator | None",
                  task_losses: "TaskLosses | None" = None, speed: Speed = Speed()):
    import datasets
    import transformers

    plan = schedule(cfg, len(examples), dev_eval is not None)
    extra_args = {}
    if dev_eval is not None:
        extra_args = dict(
            eval_strategy="steps", eval_steps=plan["eval_steps"], load_best_model_at_end=True,
            metric_for_best_model=dev_eval.metric, greater_is_better=dev_eval.greater_is_better,
        )
    args = transformers.TrainingArguments(
        **common_args(cfg, run, loaded.device, spec.quantize, plan),
        # batches of similar length: padding costs compute on every step
        train_sampling_strategy="group_by_length",
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        **extra_args,
    )
    dataset = datasets.Dataset.from_list(examples)
    trainer = NbkitTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=collate(loaded.tokenizer.pad_token_id, speed.packed),
        eval_dataset=datasets.Dataset.from_list(dev_eval.examples) if dev_eval is not None else None,
    )
    trainer.dev_eval = dev_eval
    trainer.packed = speed.packed
    if speed.compiled:
        compile_layers(model, speed.fallback)
    if task_losses is not None:
        trainer.task_losses = task_losses
        trainer.loss_is_scaled_for_ga = False  # a mean per micro-batch: the Trainer divides by grad_accum
    if dev_eval is not None and cfg.patience:
        trainer.add_callback(transformers.EarlyStoppingCallback(early_stopping_patience=cfg.patience))
    return trainer


def _trainer_base():
    from transformers import Trainer

    return Trainer


class NbkitTrainer(_trainer_base()):
    """``Trainer`` whose evaluation is nbkit's: dev loss, the prompt's metric, and a few generations."""

    dev_eval: "DevEvaluator | None" = None
    task_losses: "TaskLosses | None" = None
    packed = False  # batches are packed rows (nbkit.training.packing)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.task_losses is None or "task" not in inputs:
            if not return_outputs:
                inputs = head_on_targets(self.model, inputs)
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        inputs = dict(inputs)
        task, labels = inputs.pop("task"), inputs.pop("labels")
        outputs = model(**inputs)
        loss = self.task_losses(outputs.logits, labels, task)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if self.task_losses is not None and "loss" in logs:
            logs = {**logs, **self.task_losses.flush()}
        super().log(logs, *args, **kwargs)

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
        metrics = self.dev_eval(self.model, self.data_collator, self.args.per_device_train_batch_size)
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def head_on_targets(model, inputs: dict) -> dict:
    """Ask the model for logits only at the positions that predict a target token.

    The loss covers the completion only, yet a causal LM computes the output head (vocab x width,
    a fifth of SmolLM2's matmul FLOPs) and a vocab-wide softmax at every position, prompt included.
    ``logits_to_keep`` (the positions any row of the batch needs) and ``shift_labels`` (their next
    tokens) make the model's own loss the same number from far fewer logits: measured 17% less time
    per step on sample:intent and 10% less peak memory (bench/README.md). Learned prompts (virtual
    tokens before the input) shift positions, so they keep the plain path.
    """
    labels = inputs.get("labels")
    config = getattr(model, "active_peft_config", None)
    if labels is None or getattr(config, "is_prompt_learning", False) or not keeps_logits(model):
        return inputs
    keep = (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)
    if len(keep) == 0 or len(keep) == labels.shape[1] - 1:
        return inputs
    return {**inputs, "logits_to_keep": keep, "shift_labels": labels[:, keep + 1]}


def keeps_logits(model) -> bool:
    """Whether the (base) model takes ``logits_to_keep`` and computes transformers' causal-LM loss."""
    from transformers.loss.loss_utils import ForCausalLMLoss

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return takes_logits_to_keep(base) and getattr(base, "loss_function", None) is ForCausalLMLoss
