"""The plain loop the encoder, classifier and encoder-decoder recipes share.

AdamW with linear warm-up and decay over shuffled batches, a progress event per step,
``metrics.jsonl`` as the decoder recipe writes it, and the same ends: a completed run saves
its adapter (or whole model) atomically; a Ctrl-C marks it interrupted and raises
:class:`TrainingInterrupted`; any failure marks it failed and raises :class:`TrainingFailed`,
exactly as the decoder recipe does.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .. import events
from ..errors import ConfigError, TrainingFailed, TrainingInterrupted
from ..hf import quiet
from ..runs import Run
from .callbacks import final_loss


def shuffled_batches(items: list, batch_size: int, seed: int) -> list[list]:
    """``items`` in a seeded random order, cut into batches of ``batch_size``."""
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [[items[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]


def check_loop_settings(cfg, unsupported: Sequence[str], what: str) -> None:
    """Settings the plain loop has no use for are refused by name, and a batch needs two rows
    (in-batch negatives and a head's gradient both compare rows)."""
    given = [k for k in unsupported if _given(cfg, k)]
    if given:
        raise ConfigError(given[0], f"is not supported {what}")
    if cfg.batch_size < 2:
        raise ConfigError("batch_size", f"must be at least 2, got {cfg.batch_size}")


def _given(cfg, name: str) -> bool:
    value = getattr(cfg, name)
    return {"grad_accum": value != 1, "precision": value != "auto", "gradient_checkpointing": bool(value)}.get(
        name, value is not None)


@dataclass
class Loop:
    """One run of the plain loop.

    Args:
        run: the run directory, already holding its config.
        model: the module to train (its trainable parameters are trained).
        examples: what ``batches(epoch)`` draws from; counted for the progress events.
        loss_of: ``loss_of(batch) -> loss tensor``.
        cfg: the run's :class:`nbkit.config.TuneConfig`.
        save: ``save(run)`` writes the trained adapter or model into ``adapter/``.
        batches: ``batches(epoch) -> list of batches``; default the examples shuffled per epoch.
        callbacks: progress subscribers.
    """

    run: Run
    model: Any
    examples: list
    loss_of: Callable
    cfg: Any
    save: Callable[[Run], None]
    batches: Callable[[int], list] | None = None
    callbacks: Sequence = ()
    facts: dict = field(default_factory=dict)  # extra final metrics (hard negatives, …); save may add to it

    def __call__(self) -> Run:
        emit = events.Emitter(list(self.callbacks))
        started, steps = time.monotonic(), 0
        self.run.set_status("running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
        try:
            metrics = self._train(emit)
            steps = metrics["steps"]
            with quiet():
                self.save(self.run)
            metrics = {**metrics, **self.facts}  # what saving learned too (a setfit head's loss, a warning)
        except KeyboardInterrupt:
            self._end(emit, "interrupted", started, None)
            raise TrainingInterrupted(self.run) from None
        except Exception as e:
            message = str(e) if isinstance(e, FloatingPointError) else f"{type(e).__name__}: {e}"
            self._end(emit, "failed", started, message)
            raise TrainingFailed(self.run, message) from e
        finally:
            self.model.eval()
        self.run.set_status("completed", metrics=metrics, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.run.settle(completed=True)
        emit.on_end(events.End("completed", time.monotonic() - started, steps, metrics=metrics, run=self.run))
        return self.run

    def _end(self, emit, status: str, started: float, error: str | None) -> None:
        steps = len(self.run.history)
        self.run.set_status(status, error=error, metrics={"steps": steps},
                            finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.run.settle(completed=False)
        emit.on_end(events.End(status, time.monotonic() - started, steps, error=error, run=self.run))

    def _train(self, emit) -> dict:
        import torch
        from transformers import get_linear_schedule_with_warmup

        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        params = [p for p in self.model.parameters() if p.requires_grad]
        batches = self.batches or (lambda epoch: shuffled_batches(self.examples, cfg.batch_size, cfg.seed + epoch))
        per_epoch = math.ceil(len(self.examples) / cfg.batch_size)
        steps = max(1, math.ceil(per_epoch * cfg.epochs))
        optimizer = torch.optim.AdamW(params, lr=cfg.lr)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup * steps), steps)
        trainable, total = sum(p.numel() for p in params), sum(p.numel() for p in self.model.parameters())
        emit.on_begin(events.Begin(self.run.name, str(self.run.path), cfg.model, cfg.method, steps, cfg.epochs,
                                   len(self.examples), trainable, total, batch_size=cfg.batch_size))
        started, losses, step, epoch = time.monotonic(), [], 0, 0
        self.model.train()
        while step < steps:
            for batch in batches(epoch)[:steps - step]:
                loss = self.loss_of(batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                losses.append(loss.item())
                elapsed = time.monotonic() - started
                row = {"step": step, "epoch": round(step / per_epoch, 4), "loss": losses[-1],
                       "lr": scheduler.get_last_lr()[0], "elapsed": round(elapsed, 3)}
                self.run.append_metrics(row)
                emit.on_step(events.Step(step, steps, row["epoch"], row["loss"], row["lr"], 0.0, elapsed,
                                         elapsed / step * (steps - step)))
                if not math.isfinite(losses[-1]):
                    raise FloatingPointError(f"the loss became {losses[-1]} at step {step}, training stopped. "
                                             f"Lower --lr (now {cfg.lr}) and start again")
            epoch += 1
        return {"steps": step, "train_loss": final_loss(losses), "first_loss": losses[0],
                "train_seconds": round(time.monotonic() - started, 2), "trainable_parameters": trainable,
                "total_parameters": total, "examples": len(self.examples),
                **self.facts}
