"""The decoder recipe: prompt + data + method → a run directory with a trained adapter.

The path reads top to bottom: the tasks and their data are checked, the run directory is
made, a fresh base model loads, the method wraps it, ``transformers.Trainer`` trains it
(:mod:`nbkit.training.trainer`), and the adapter is saved atomically. Progress leaves
through :mod:`nbkit.events`; nothing here draws.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
import warnings
from typing import Any, Mapping, Sequence

from .. import distributed, events
from ..config import TuneConfig, data_spec, pair_tasks, task_names
from ..errors import ConfigError, TrainingFailed, TrainingInterrupted
from ..hf import quiet, set_seed
from ..jobfiles import write_job
from ..memory import estimate_training, release_freed_memory, return_freed_memory_at_once
from ..methods import BuildContext, method_for
from ..models import load_model, load_tokenizer, model_config, pick_device, quantization_config
from ..objectives import get_objective
from ..encoding import chat_facts
from ..runs import Run, free_name, runs_dir, write_json
from ..session import get_prompt, remember_run
from .callbacks import Bridge, SoftInterrupt, Terminated, check_finite, finish, last_checkpoint
from . import packing, speed
from .fusing import fuse_lora
from .dev import DevEvaluator, TaskLosses, TasksEvaluator
from .preference import PreferenceBatches, build_preference_trainer
from .tasks import Task, examples, load_task, write_inputs
from .trainer import build_trainer, count_parameters, schedule


NO_CHECKPOINTING = ("prefix-tuning",)  # measured: its past key values do not survive the recomputation


def decoder_config(prompt, data, settings: Mapping[str, Any], options: Mapping[str, Any]):
    """(config, prompts, data sets) of a decoder run, every setting checked."""
    prompts, datas = pair_tasks(prompt, data)
    prompts = [get_prompt(p) for p in prompts]
    specs = [data_spec(d) for d in datas]
    multi = len(prompts) > 1
    cfg = TuneConfig(prompt=[p.name for p in prompts] if multi else prompts[0].name,
                     data=specs if multi else specs[0], options=dict(options), **settings)
    if cfg.gradient_checkpointing and cfg.method in NO_CHECKPOINTING:
        raise ConfigError("gradient_checkpointing", f"does not work with {cfg.method}: its prefix is a cache the "
                          "recomputed layers cannot replay; leave it off")
    for name in ("pooling", "corpus"):
        if getattr(cfg, name) is not None:
            raise ConfigError(name, "goes with --task embedding (an encoder); a decoder learns the target text")
    return cfg, prompts, datas


def tune_decoder(prompt, data, settings: Mapping[str, Any], options: Mapping[str, Any], *, resume: bool = False,
                 overwrite: bool = False, export=None, namespace=None, callbacks: Sequence = ()):
    """Fine-tune a decoder; see :func:`nbkit.tune` for the settings. Returns the completed run (the job
    file's path with ``export``)."""
    cfg, prompts, datas = decoder_config(prompt, data, settings, options)
    spec = method_for(cfg.method, "decoder", "does not apply to a decoder")
    method_options = spec.make_options(cfg.options, "decoder")
    cfg.options, cfg.lr = dataclasses.asdict(method_options), cfg.lr or spec.lr
    objective = get_objective(cfg.objective)
    objective_options = objective.make_options(cfg.objective_options)
    cfg.objective_options = recorded(objective_options)
    names = task_names([p.name for p in prompts])
    tasks = [load_task(n, p, d, s, w, cfg, namespace)
             for n, p, d, s, (_, _, w) in zip(names, prompts, datas, [data_spec(d) for d in datas], cfg.tasks)]
    if resume and not cfg.name:
        raise ConfigError("name", "is needed with --resume: which run should continue?")
    model_cfg, model_path = model_config(cfg.model)
    if spec.check is not None:
        spec.check(model_cfg, method_options)  # an unfit method fails before any weights load
    quantization_config(spec.quantize, "cpu")  # 4-bit without bitsandbytes fails here, not after loading
    if objective.name != "sft" and len(tasks) > 1:
        raise ConfigError("objective", f"{objective.name!r} trains one prompt on one data set; multi-task runs use sft")
    if objective.name != "sft" and spec.kind == "prompt":  # TRL scores completions by position: virtual tokens shift them
        raise ConfigError("method", f"{cfg.method!r} learns a prompt, and objective {objective.name!r} trains weights of "
                          "the layers: use lora, qlora, dora, ia3 or full")
    tokenizer = load_tokenizer(cfg.model)
    # lengths (and the objective's rows) are checked before weights load too
    batches = Batches.of(tasks, tokenizer, cfg) if objective.name == "sft" else \
        PreferenceBatches.of(tasks[0], tokenizer, cfg, objective, objective_options, namespace)
    if export is not None:
        if callable(getattr(objective_options, "reward_fn", None)):
            raise ConfigError("reward_fn", "a job file cannot hold a function: define it in the job's notebook, or "
                              "train here")
        return write_job(export, cfg.to_dict(), [t.prompt for t in tasks], datas, namespace)
    world = distributed.world()
    check_world(world, cfg, sum(len(t.train) for t in tasks))
    cfg.name = cfg.name or free_name(f"{'+'.join(names)}-{cfg.method}")
    Run.check_create(cfg.name, overwrite=overwrite, resume=resume)  # every process: they fail alike
    emit = events.Emitter(list(callbacks) if world.main else [])  # one process reports
    faster = speed.plan(cfg, spec, objective.name, len(tasks), world.size, model_cfg, steps=schedule(
        cfg, len(batches.examples), batches.dev_eval is not None)["total"], device=pick_device(), emit=emit)
    done = Run(runs_dir() / cfg.name)
    if resume and done.status == "completed":
        emit.on_note(f"run {cfg.name!r} is complete: there is nothing to resume (a new --name trains a new run, "
                     "--overwrite replaces it)")
        return remember_run(done)
    device = process_device(world)
    distributed.start(device)
    loaded = load_model(cfg.model, quantize=spec.quantize, device=device, fresh=True)
    # peft asks the model for the old name of a transformers 5 property; harmless, and not the user's to fix
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    set_seed(cfg.seed)  # the adapter's initial weights come from this seed
    model = spec.build(loaded.model, method_options,
                       BuildContext(tokenizer=loaded.tokenizer, prompt=tasks[0].prompt, model_path=model_path))
    fuse_lora(model)  # LoRA's low-rank product added in place: peft's arithmetic in fewer passes
    trainable, total = count_parameters(model)
    memory = fit_memory(model_cfg, spec, cfg, loaded, trainable, batches.lengths, method_options, emit,
                        packed=faster.packed)
    run = open_run(cfg, tasks, world, loaded.tokenizer, overwrite=overwrite, resume=resume)
    try:
        trainer = build_trainer(model, loaded, batches.examples, cfg, run, spec, batches.dev_eval,
                                batches.task_losses, faster) if objective.name == "sft" else build_preference_trainer(
            model, loaded, batches, cfg, run, spec, objective, objective_options, tasks[0].prompt, namespace)
    except BaseException:
        if world.main and not resume:
            run.discard()  # a run that never trained takes no name and replaces nothing
        raise
    bridge = Bridge(emit, run, cfg, examples=len(batches.examples), truncated=batches.truncated,
                    trainable=trainable, total=total, memory=memory, dev_eval=batches.dev_eval, world=world)
    trainer.add_callback(bridge)
    trainer.remove_callback(transformers_printer())  # it prints every log dict
    try:
        train(trainer, bridge, run, model, loaded, spec, cfg, memory, resume)
    finally:
        del trainer, model, loaded, bridge
        release_freed_memory()  # the model and its activations, now: the Trainer and its callbacks hold each other
        if memory.returns_freed_memory:
            return_freed_memory_at_once(False)  # what comes next (an evaluation) is not slowed by it
    return remember_run(run)


@dataclasses.dataclass
class Batches:
    """The examples a decoder run trains on, with its dev evaluation and multi-task loss."""

    examples: list
    truncated: int
    dev_eval: Any
    task_losses: Any

    @property
    def lengths(self) -> list[int]:
        return [e["length"] for e in self.examples]

    @classmethod
    def of(cls, tasks: list[Task], tokenizer, cfg: TuneConfig) -> "Batches":
        multi = len(tasks) > 1
        found, truncated, evaluators = [], 0, {}
        for i, task in enumerate(tasks):
            task_examples, cut = examples(task.prompt, task.train, tokenizer, cfg)
            for e in task_examples if multi else ():
                e["task"] = i  # the multi-task loss weighs and logs each example by its task
            found += task_examples
            truncated += cut
            if task.dev:
                dev_examples, _ = examples(task.prompt, task.dev, tokenizer, cfg, pool=task.train)
                evaluators[task.name] = DevEvaluator(task.prompt, task.dev, dev_examples, task.train, tokenizer)
        cut_whole = [e for e in found if e["labels"] and e["labels"][0] != -100]
        if cut_whole:  # the answer alone fills max_length: the model would learn it without the prompt
            raise ConfigError("max_length", f"is {cfg.max_length} tokens, which the answers alone fill: the prompt "
                              f"is cut away from {len(cut_whole)} of {len(found)} examples; the longest example needs "
                              f"{max(len(e['input_ids']) for e in found)}; raise --max-length")
        dev_eval = (TasksEvaluator(evaluators) if multi else evaluators[tasks[0].name]) if evaluators else None
        task_losses = TaskLosses([t.name for t in tasks], [t.weight for t in tasks]) if multi else None
        return cls(found, truncated, dev_eval, task_losses)


def open_run(cfg: TuneConfig, tasks: list[Task], world, tokenizer, *, overwrite: bool, resume: bool) -> Run:
    """The run directory, made (or reopened to resume) by the first process; the others wait for it.
    Beside the inputs, ``chat.json``: the chat template and special tokens its text is framed with."""
    distributed.barrier(world)
    if world.main:
        run = Run.create(cfg.name, overwrite=overwrite, resume=resume)
        write_inputs(run, cfg, tasks, resume)
        if not resume:
            write_json(run.path / "chat.json", chat_facts(tokenizer))
    distributed.barrier(world)
    return Run(runs_dir() / cfg.name)


def train(trainer, bridge: Bridge, run: Run, model, loaded, spec, cfg: TuneConfig, memory, resume: bool) -> None:
    """Train to the end, then save the adapter; an interrupt or a failure marks the run and raises."""
    checkpoint = last_checkpoint(run) if resume else None
    if resume and checkpoint is None:
        bridge.emit.on_note(f"run {run.name!r} has no checkpoint yet: it starts from the beginning")
    world = bridge.world
    if resume and world.main:  # the steps after the checkpoint are trained again: log them once
        run.truncate_logs(int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else 0)
    if world.main:
        run.set_status("running", started=time.strftime("%Y-%m-%dT%H:%M:%S"), error=None)
    try:
        # several processes must stop at the same step: there a Ctrl-C stops at once, checkpoints resume
        with SoftInterrupt(bridge, soft=not world.distributed), quiet(), attention(trainer, model):
            trainer.train(resume_from_checkpoint=checkpoint)
        if bridge.interrupt_requested:
            raise KeyboardInterrupt
        check_finite(bridge, run)
        if world.main:
            with quiet():
                run.save_adapter(model, loaded.tokenizer if spec.kind == "full" else None)
            run.drop_checkpoints()  # a completed run has nothing to resume; full-model checkpoints are GBs
    except KeyboardInterrupt:
        finish(run, bridge.emit, bridge, "interrupted")
        raise TrainingInterrupted(run) from None
    except Exception as e:
        message = explain(e, memory, spec, cfg)
        finish(run, bridge.emit, bridge, "failed", message)
        raise TrainingFailed(run, message) from e
    finish(run, bridge.emit, bridge, "completed")


def attention(trainer, model):
    """Packed batches attend with ``nbkit_packed`` while the trainer runs; other runs as they are."""
    return packing.PackedAttention(model) if getattr(trainer, "packed", False) else contextlib.nullcontext()


def recorded(options) -> dict:
    """An objective's options as ``config.json`` keeps them: a reward function by its name."""
    values = dataclasses.asdict(options)
    if callable(values.get("reward_fn")):
        values["reward_fn"] = getattr(values["reward_fn"], "__name__", "function")
    return values


def transformers_printer():
    from transformers.trainer_callback import PrinterCallback

    return PrinterCallback


def process_device(world: "distributed.World") -> str:
    """This process's device: under a multi-GPU launch, the GPU of its local rank."""
    device = pick_device()
    if device == "cuda" and world.distributed:
        return f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    return device


def check_world(world: "distributed.World", cfg: TuneConfig, rows: int) -> None:
    """Settings a multi-process run cannot take, said before any model loads."""
    if not world.distributed:
        return
    if rows < world.size:
        raise ConfigError("data", f"has {rows} training rows for {world.size} processes; use fewer processes")
    if cfg.batch_size % world.size:
        raise ConfigError("batch_size", f"{cfg.batch_size} does not split over {world.size} processes: each takes "
                          f"an equal share of every batch; use a multiple of {world.size}")


def estimate(model_cfg, spec, cfg: TuneConfig, loaded, trainable: int, lengths: list[int], method_options=None,
             *, checkpointing: bool | None = None, low_memory: bool = False, batch_size: int | None = None,
             packed: bool = False):
    """The memory estimate printed before training starts; a packed run's largest row is its longest examples
    end to end."""
    longest = min(max(lengths, default=cfg.max_length), cfg.max_length)
    batch = batch_size or cfg.batch_size
    row = sum(sorted(lengths, reverse=True)[:batch]) if packed and lengths else None  # lengths are cut already
    weight_bytes = 2 if str(getattr(loaded.model, "dtype", "")).endswith(("bfloat16", "float16")) else 4
    return estimate_training(
        model_cfg, method_kind=spec.kind, quantize=spec.quantize, trainable=trainable,
        batch_size=batch, seq_len=longest, weight_bytes=weight_bytes, packed_tokens=row,
        gradient_checkpointing=cfg.gradient_checkpointing if checkpointing is None else checkpointing,
        device=loaded.device, dropout=spec.kind == "adapter" and bool(getattr(method_options, "dropout", 0)),
        low_memory=low_memory,
    )


def memory_plans(cfg: TuneConfig) -> list[dict]:
    """What a CPU run that would not fit tries, in order: gradient checkpointing (not for prefix tuning, whose
    prefix the recomputed layers cannot replay), freed memory returned at once, then micro-batches (half the
    batch, twice the accumulation) down to one example."""
    checkpointing = cfg.gradient_checkpointing or cfg.method not in NO_CHECKPOINTING
    plans = [dict(checkpointing=True)] if checkpointing and not cfg.gradient_checkpointing else []
    plans.append(dict(checkpointing=checkpointing, low_memory=True))
    batch = cfg.batch_size
    while batch % 2 == 0 and batch > 1:
        batch //= 2
        plans.append(dict(checkpointing=checkpointing, low_memory=True, batch_size=batch))
    return plans


def fit_memory(model_cfg, spec, cfg: TuneConfig, loaded, trainable: int, lengths: list[int], method_options, emit,
               packed: bool = False):
    """The run's memory estimate; on the CPU, where the run as asked would not fit (Binder gives ~2 GB), the
    first of :func:`memory_plans` that fits (or the last), said in one line. Checkpointing and returning
    freed memory keep the numbers (checkpointing replays the dropout masks) and cost time; micro-batches keep
    the effective batch, but batches grouped by length differ, so the numbers differ a little."""
    release_freed_memory()  # what an earlier evaluation freed is not the run's to count
    memory = estimate(model_cfg, spec, cfg, loaded, trainable, lengths, method_options, packed=packed)
    if memory.fits or loaded.device != "cpu" or distributed.world().distributed:
        return memory  # several processes would each plan by their own memory, and must not train apart
    for plan in memory_plans(cfg):
        fitted = estimate(model_cfg, spec, cfg, loaded, trainable, lengths, method_options, packed=packed, **plan)
        if fitted.fits:
            break
    what = []
    if plan["checkpointing"] and not cfg.gradient_checkpointing:
        what.append("gradient checkpointing (recomputes activations: ~1.4x the time)")
    if plan.get("low_memory"):
        what.append("freed memory returned at once (~2x the time with checkpointing)")
        return_freed_memory_at_once()
    same = "the same numbers"
    if plan.get("batch_size"):
        accum = cfg.grad_accum * cfg.batch_size // plan["batch_size"]
        what.append(f"micro-batches of {plan['batch_size']} with --grad-accum {accum} (the same effective batch)")
        cfg.batch_size, cfg.grad_accum = plan["batch_size"], accum
        same = "numbers a little different from the run as asked (batches are grouped by length)"
    cfg.gradient_checkpointing = plan["checkpointing"]
    gib = 2 ** 30
    emit.on_note(f"memory: as asked, ~{memory.total / gib:.2f} GiB would not fit in {memory.available / gib:.1f} "
                 f"GiB: training with {', '.join(what)}; {same}")
    return fitted


def explain(error: Exception, memory, spec, cfg: TuneConfig) -> str:
    """A failure as one message; out-of-memory comes with the estimate and what to change."""
    if isinstance(error, (FloatingPointError, Terminated)):  # nbkit's own messages say everything
        return str(error)
    text = f"{type(error).__name__}: {error}"
    if "out of memory" in str(error).lower() or type(error).__name__ == "OutOfMemoryError":
        tips = "; ".join(memory.suggestions(cfg.method, cfg.batch_size, cfg.gradient_checkpointing))
        return f"out of memory: {memory.describe()}. Try: {tips}"
    return text
