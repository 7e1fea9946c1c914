"""The decoder recipe's callbacks: the Trainer's events as nbkit's, interrupts, the run's end.

:class:`Bridge` turns ``transformers`` callbacks into :mod:`nbkit.events` and the lines of
``metrics.jsonl`` / ``dev.jsonl``; :class:`SoftInterrupt` makes the first Ctrl-C stop at a
step boundary with a checkpoint; :func:`finish` writes the run's final status and metrics.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from .. import distributed, events
from ..config import TuneConfig
from ..runs import Run
from .dev import DevEvaluator, TaskLosses


# what TRL's trainers log beside the loss, by the name nbkit shows: GRPO's mean reward and its spread over the
# step's completions; DPO's / ORPO's / KTO's share of pairs whose chosen completion wins, and its margin
REWARD_LOGS = {"reward": "reward", "reward_std": "reward_std", "rewards/accuracies": "accuracy",
               "rewards/margins": "margin"}


class Terminated(Exception):
    """SIGTERM: a launcher stopping the job (torchrun does when another process failed) or a scheduler."""


class SoftInterrupt:
    """The first Ctrl-C (a kernel interrupt) stops training at the end of the step with a checkpoint;
    a second one interrupts at once. With ``soft=False`` (several processes) the first one does.

    SIGTERM fails the run with a message instead of killing the process silently, so the run is
    marked failed and ``--resume`` continues from its last checkpoint.
    """

    def __init__(self, bridge: "Bridge", soft: bool = True):
        self.bridge, self.soft, self.previous = bridge, soft, {}

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only; Ctrl-C then interrupts at once

        def interrupt(signum, frame):
            if self.bridge.interrupt_requested or not self.soft:
                raise KeyboardInterrupt
            self.bridge.interrupt_requested = True
            self.bridge.emit.on_note("interrupt: stopping after this step and saving a checkpoint "
                                     "(interrupt again to stop at once)")

        def terminate(signum, frame):
            raise Terminated("stopped by SIGTERM (a launcher does this when another process of the job failed; "
                             "schedulers, to stop a job); --resume continues from the last checkpoint")

        self.previous = {signal.SIGINT: signal.signal(signal.SIGINT, interrupt),
                         signal.SIGTERM: signal.signal(signal.SIGTERM, terminate)}
        return self

    def __exit__(self, *exc):
        import signal

        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        return False


def last_checkpoint(run: Run) -> str | None:
    """The newest complete checkpoint of ``run`` (the Trainer writes ``trainer_state.json`` last); newer
    incomplete ones (a process killed while saving) are removed, so ``--resume`` continues from the last
    checkpoint that holds everything."""
    import json
    import shutil

    folder = run.path / "checkpoints"
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[-1])
                   if p.name.rsplit("-", 1)[-1].isdigit() else -1, reverse=True) if folder.is_dir() else []
    for checkpoint in found:
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            return str(checkpoint)
        except (OSError, ValueError):
            shutil.rmtree(checkpoint, ignore_errors=True)  # half written: nothing to resume from
    return None


def check_finite(bridge: "Bridge", run: Run) -> None:
    if bridge.losses and not math.isfinite(bridge.losses[-1]):
        last = last_checkpoint(run)
        kept = f"; the last good checkpoint is kept ({Path(last).name})" if last else ""
        raise FloatingPointError(f"the loss became {bridge.losses[-1]} at step {bridge.step}, training stopped"
                                 f"{kept}. Lower --lr (now {run.config.get('lr')}) and start again")


def finish(run: Run, emit, bridge: "Bridge", status: str, error: str | None = None) -> None:
    elapsed = time.monotonic() - bridge.started if bridge.started else 0.0
    losses = [x for x in bridge.losses if math.isfinite(x)]
    metrics = {
        "steps": bridge.step,
        "train_seconds": round(elapsed, 2),
        "train_loss": final_loss(losses),
        "first_loss": losses[0] if losses else None,
        "tokens_per_second": bridge.tokens_per_second,
        "trainable_parameters": bridge.trainable,
        "total_parameters": bridge.total,
        "truncated": bridge.truncated,
        "examples": bridge.examples,
        "peak_memory_mb": peak_memory_mb(),
    }
    for task, values in bridge.task_losses.items():  # multi-task: each task's loss, first and at the end
        values = [x for x in values if math.isfinite(x)]
        if values:
            metrics[f"first_loss_{task}"], metrics[f"train_loss_{task}"] = values[0], final_loss(values)
    for key, values in bridge.rewards.items():  # the objective's own numbers, first and at the end
        values = [x for x in values if math.isfinite(x)]
        if values:
            metrics[f"first_{key}"], metrics[f"train_{key}"] = values[0], final_loss(values)
    if bridge.evaluations:
        metric = bridge.metric_key
        best = bridge.best_evaluation()
        metrics.update({f"dev_{metric}": best.get(f"eval_{metric}"), "best_step": best.get("step"),
                        "dev_examples": bridge.dev})
    if bridge.world.main:
        run.set_status(status, metrics=metrics, error=error, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        run.settle(completed=status == "completed")
    emit.on_end(events.End(status=status, elapsed=elapsed, steps=bridge.step, metrics=metrics, error=error, run=run))


def final_loss(losses: list[float]) -> float | None:
    """The loss a run ended at: the mean of its last tenth of logged values (one step is noisy)."""
    if not losses:
        return None
    tail = losses[-max(1, len(losses) // 10):]
    return sum(tail) / len(tail)


def peak_memory_mb() -> float:
    """The process's peak resident memory (the high-water mark since it started), in MiB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)


def _bridge_base():
    from transformers import TrainerCallback

    return TrainerCallback


class Bridge(_bridge_base()):
    """Turns the Trainer's callbacks into nbkit events and metrics.jsonl / dev.jsonl lines."""

    def __init__(self, emit, run: Run, cfg: TuneConfig, examples: int, truncated: int, trainable: int, total: int,
                 memory=None, dev_eval: "DevEvaluator | None" = None, world: "distributed.World | None" = None):
        self.emit, self.run, self.cfg = emit, run, cfg
        self.world = world or distributed.World()  # only the main process writes metrics
        self.examples, self.truncated, self.trainable, self.total = examples, truncated, trainable, total
        self.memory, self.dev_eval = memory, dev_eval
        self.dev = len(dev_eval.rows) if dev_eval is not None else 0
        self.losses: list[float] = []
        self.task_losses: dict[str, list[float]] = {}  # multi-task: each task's logged losses
        self.rewards: dict[str, list[float]] = {}  # preference / reward objectives: their logged values
        self.evaluations: list[dict] = []
        self.metric_key = "loss"
        self.step, self.started, self.tokens_per_second = 0, None, 0.0
        self.interrupt_requested = False

    def best_evaluation(self) -> dict:
        key = f"eval_{self.metric_key}"
        pick = max if self.metric_key != "loss" else min
        return pick(self.evaluations, key=lambda e: e.get(key, float("nan")))

    def on_train_begin(self, args, state, control, **kwargs):
        self.started, self.first_step = time.monotonic(), state.global_step
        self.tokens0 = state.num_input_tokens_seen
        self.metric_key = (args.metric_for_best_model or "loss").removeprefix("eval_")
        memory = self.memory
        self.emit.on_begin(events.Begin(
            run_name=self.run.name, run_path=str(self.run.path), model=self.cfg.model, method=self.cfg.method,
            total_steps=state.max_steps, epochs=self.cfg.epochs, examples=self.examples,
            trainable_parameters=self.trainable, total_parameters=self.total, truncated=self.truncated,
            resumed_from=state.global_step, dev_examples=self.dev, processes=self.world.size,
            batch_size=self.cfg.batch_size, grad_accum=self.cfg.grad_accum,
            memory=memory.describe() if memory else None,
            memory_advice=None if memory is None or memory.fits else memory.suggestions(
                self.cfg.method, self.cfg.batch_size, self.cfg.gradient_checkpointing),
        ))

    def _stop_if_asked(self, control):
        if self.interrupt_requested:
            control.should_save = True  # a checkpoint at this step boundary, for --resume
            control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        self._stop_if_asked(control)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        self.step = state.global_step
        elapsed = time.monotonic() - self.started
        done = max(self.step - self.first_step, 1)
        self.tokens_per_second = (state.num_input_tokens_seen - self.tokens0) / max(elapsed, 1e-9)
        loss = float(logs["loss"])
        self.losses.append(loss)
        row = {"step": self.step, "epoch": round(state.epoch or 0, 4), "loss": loss,
               "lr": logs.get("learning_rate", 0.0), "tokens": state.num_input_tokens_seen,
               "elapsed": round(elapsed, 3)}
        tasks = {k.removeprefix(TaskLosses.PREFIX): float(v) for k, v in logs.items()
                 if k.startswith(TaskLosses.PREFIX)}
        for task, value in tasks.items():
            self.task_losses.setdefault(task, []).append(value)
            row[f"loss_{task}"] = value
        rewards = {shown: float(logs[key]) for key, shown in REWARD_LOGS.items() if key in logs}
        for key, value in rewards.items():
            self.rewards.setdefault(key, []).append(value)
        row.update(rewards)
        if self.world.main:
            self.run.append_metrics(row)
        self.emit.on_step(events.Step(
            step=self.step, total_steps=state.max_steps, epoch=row["epoch"], loss=loss, learning_rate=row["lr"],
            tokens_per_second=self.tokens_per_second, elapsed=elapsed,
            eta=elapsed / done * (state.max_steps - self.step), task_losses=tasks or None, rewards=rewards or None,
        ))
        if not math.isfinite(loss):
            control.should_training_stop = True
            control.should_save = False  # never checkpoint broken weights: the last good one stays
            control.should_evaluate = False
        self._stop_if_asked(control)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics:
            return
        row = {"step": state.global_step, **{k: v for k, v in metrics.items() if k.startswith("eval_")}}
        self.evaluations.append(row)
        key = f"eval_{self.metric_key}"
        best = self.best_evaluation() is row
        if self.world.main:
            self.run.append_metrics(row, "dev.jsonl")
        self.emit.on_evaluate(events.Evaluation(
            step=state.global_step, total_steps=state.max_steps, metric=self.metric_key, value=row.get(key),
            loss=row.get("eval_loss"), best=best,
            samples=list(self.dev_eval.last_samples) if self.dev_eval is not None else [],
        ))
