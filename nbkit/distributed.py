"""Several processes, one run: what nbkit needs to know under torchrun / accelerate launch.

nbkit does not launch processes or schedule anything: ``torchrun`` or ``accelerate
launch`` start N copies of ``nbkit tune --config job.yaml``, the Hugging Face
``Trainer`` (through Accelerate) does data parallelism, and this module only
answers "which process am I" and lets the processes wait for each other, so that
exactly one of them writes the run directory.

A job's ``batch_size`` is the batch per optimizer step whatever the number of
processes: each process takes ``batch_size / world_size`` rows of every batch
(Accelerate's ``split_batches``), so a job gives the same updates on 1 or N processes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

# Seconds a collective waits for a missing process before failing the job, instead of hanging forever.
TIMEOUT_SECONDS = int(os.environ.get("NBKIT_DDP_TIMEOUT", "600"))


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The process that writes the run directory, logs and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place among the job's processes, from the launcher's environment."""
    return World(rank=int(os.environ.get("RANK", "0")), size=int(os.environ.get("WORLD_SIZE", "1")))


def start(device: str) -> World:
    """Join the job's process group (gloo on CPUs, nccl on GPUs) if launched as several processes.

    Accelerate's ``PartialState`` is the one the Trainer uses, so the group is created once.
    """
    w = world()
    if w.distributed:
        from datetime import timedelta

        from accelerate import PartialState

        PartialState(cpu=device == "cpu", timeout=timedelta(seconds=TIMEOUT_SECONDS))
    return w


def barrier(w: World) -> None:
    """Wait until every process gets here (a no-op in a single process)."""
    if w.distributed:
        from accelerate import PartialState

        PartialState().wait_for_everyone()
