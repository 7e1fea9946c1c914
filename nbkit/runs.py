"""Run directories: what a tune leaves behind, written so nothing is ever half-done.

``runs/<name>/`` holds:

- ``adapter/``          the adapter in standard PEFT format (``PeftModel.from_pretrained``);
                        written to a temporary folder and renamed into place, so it is
                        either complete or absent
- ``config.json``       the full, validated configuration (sorted keys)
- ``prompt.json``       the prompt it was trained with
- ``data.json``         the data spec, row counts and a fingerprint of the training split
- ``chat.json``         decoder runs: the exact chat template and special tokens it trained with
                        (evaluation, ``nbkit serve`` and exports frame the run's text with these)
- ``tasks.json``        multi-task runs: each task's name, prompt, data spec, weight and rows
- ``metrics.jsonl``     one line per logged step
- ``dev.jsonl``         one line per evaluation on held-out data during training (``--dev``)
- ``status.json``       running / completed / interrupted / failed, with times and the error
- ``checkpoints/``      trainer checkpoints for ``--resume``; removed when the run completes
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Mapping

from .errors import RunExistsError, UnknownNameError, shown_path


def runs_dir() -> Path:
    """Where runs go: ``$NBKIT_RUNS_DIR`` (set by ``nbkit run`` for jobs) or ``./runs``."""
    return Path(os.environ.get("NBKIT_RUNS_DIR", "runs"))


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: a reader sees the old file or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def saved_version(path: str | os.PathLike) -> str:
    """``PATH@STAMP``: what a session caches a run's saved adapter or model under. A run tuned again under
    the same name (``--overwrite``) writes a new folder (a new inode and time), so a model loaded from the
    old one is never served for the new one."""
    resolved = Path(path).resolve()
    try:
        info = resolved.stat()
    except OSError:
        return str(resolved)
    return f"{resolved}@{info.st_ino}-{info.st_mtime_ns}"


class Run:
    """A tuning run, as found on disk.

    Attributes:
        path: the run directory.
        config: the full configuration it was trained with.
        metrics: final metrics (loss, time, tokens/s, trainable parameters, …).
        status: ``running``, ``completed``, ``interrupted`` or ``failed``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @property
    def name(self) -> str:
        return self.path.name

    def _read(self, filename: str, default=None):
        try:
            return json.loads((self.path / filename).read_text())
        except FileNotFoundError:
            return default

    @property
    def config(self) -> dict:
        return self._read("config.json", {})

    @property
    def task(self) -> str:
        """``generation``, ``classification`` or ``embedding``."""
        return self.config.get("task", "generation")

    @property
    def family(self) -> str:
        """The family of the model it tuned: ``decoder``, ``encoder`` or ``seq2seq`` (from its config)."""
        config = self.config
        return config.get("architecture") or ("encoder" if self.task != "generation" else "decoder")

    @property
    def prompt(self) -> dict:
        return self._read("prompt.json", {})

    @property
    def chat(self) -> dict:
        """The chat template and special tokens it trained with (``chat.json``; empty for older runs
        and for encoder runs)."""
        return self._read("chat.json", {})

    @property
    def tasks(self) -> list[dict]:
        """The tasks trained on, each ``name``, ``prompt`` (a dict), ``data`` (spec) and ``weight``.

        A single-task run has one, built from ``prompt.json`` and the config.
        """
        tasks = self._read("tasks.json")
        if tasks is not None:
            return tasks
        prompt = self.prompt
        return [{"name": prompt.get("name"), "prompt": prompt, "data": self.config.get("data"), "weight": 1.0}]

    @property
    def status(self) -> str:
        """``created``, ``running``, ``completed``, ``interrupted`` or ``failed``. A run marked running whose
        process is gone (killed, the machine restarted) reads as ``interrupted``: ``--resume`` continues it."""
        data = self._read("status.json", {})
        status = data.get("status", "unknown")
        if status == "running" and data.get("host") == socket.gethostname() and not _alive(data.get("pid")):
            return "interrupted"
        return status

    @property
    def metrics(self) -> dict:
        return self._read("status.json", {}).get("metrics", {})

    def _read_lines(self, filename: str) -> list[dict]:
        try:
            lines = (self.path / filename).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines if line.strip()]

    @property
    def history(self) -> list[dict]:
        """One row per logged training step: step, epoch, loss, lr, tokens, elapsed."""
        return self._read_lines("metrics.jsonl")

    @property
    def dev_history(self) -> list[dict]:
        """One row per evaluation on the dev data during training (``--dev``)."""
        return self._read_lines("dev.jsonl")

    @property
    def adapter_path(self) -> Path:
        return self.path / "adapter"

    def has_adapter(self) -> bool:
        """Whether training finished and left its result: a peft adapter, or a whole model (``full``)."""
        return any((self.adapter_path / f).exists() for f in ("adapter_config.json", "config.json"))

    @property
    def is_full_model(self) -> bool:
        """A ``full`` fine-tune: ``adapter/`` holds a whole model, loaded instead of the base."""
        return (self.adapter_path / "config.json").exists() and not (self.adapter_path / "adapter_config.json").exists()

    def __repr__(self):
        loss = self.metrics.get("train_loss")
        loss = f", loss {loss:.4f}" if isinstance(loss, float) else ""
        warning = "; did not learn" if str(self.metrics.get("warning", "")).startswith("did not learn") else ""
        return f"<nbkit.Run {self.name} ({self.status}{loss}{warning}) at {shown_path(self.path)}>"

    def _repr_html_(self):
        m, c = self.metrics, self.config
        rows = [
            ("status", self.status), ("path", shown_path(self.path)), ("model", c.get("model")),
            ("method", c.get("method")), ("steps", m.get("steps")),
            ("train loss", _fmt(m.get("train_loss"))), ("time", _fmt(m.get("train_seconds"), "s", digits=1)),
            ("tokens/s", _fmt(m.get("tokens_per_second"), digits=0)),
            ("trainable parameters", f"{m['trainable_parameters']:,}" if "trainable_parameters" in m else None),
            ("peak memory", _fmt(m.get("peak_memory_mb"), " MiB", digits=0)),
        ]
        rows += [(f"train loss of {k.removeprefix('train_loss_')}", _fmt(m[k])) for k in sorted(m)
                 if k.startswith("train_loss_")]  # multi-task: each task's own loss
        dev = next((k for k in m if k.startswith("dev_") and k != "dev_examples"), None)
        if dev:
            rows.append((f"best dev {dev[4:]}", f"{_fmt(m[dev])} at step {m.get('best_step')}"))
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>{html.escape(str(v))}</td></tr>"
            for k, v in rows if v is not None
        )
        return f"<div class='nbkit-run'><b>nbkit run {html.escape(self.name)}</b><table>{body}</table></div>"

    # -- writing (used by training) ---------------------------------------------
    @classmethod
    def check_create(cls, name: str, overwrite: bool = False, resume: bool = False, root: Path | None = None) -> Path:
        """Where :meth:`create` would write, or the error it would raise."""
        path = (root or runs_dir()) / name
        if path.exists() and not resume and not overwrite:
            raise RunExistsError(path)
        if resume and not path.exists():
            root = root or runs_dir()
            on_disk = [p.name for p in root.iterdir() if (p / "config.json").exists()] if root.is_dir() else []
            raise UnknownNameError("run to resume", name, on_disk, "")
        return path

    @classmethod
    def create(cls, name: str, overwrite: bool = False, resume: bool = False, root: Path | None = None) -> "Run":
        """The run directory ``name``, made (or reopened with ``resume``). With ``overwrite`` the run already
        there is set aside, not deleted: :meth:`settle` removes it once the new run has completed, or puts
        it back if the new one does not complete."""
        path = cls.check_create(name, overwrite, resume, root)
        replaced = None
        if path.exists() and not resume:
            replaced = path.with_name(f".{path.name}.replaced-{os.getpid()}")
            shutil.rmtree(replaced, ignore_errors=True)
            os.replace(path, replaced)
        path.mkdir(parents=True, exist_ok=True)
        if replaced is not None:
            (path / REPLACES).write_text(replaced.name)
        return cls(path)

    def settle(self, completed: bool) -> None:
        """The end of an ``overwrite``: a completed run drops the run it replaces; one that did not complete
        is removed and the old run is put back where it was."""
        marker = self.path / REPLACES
        if not marker.exists():
            return
        old = self.path.with_name(marker.read_text().strip())
        if completed:
            marker.unlink()
            shutil.rmtree(old, ignore_errors=True)
        elif old.exists():
            shutil.rmtree(self.path)
            os.replace(old, self.path)

    def discard(self) -> None:
        """Remove a run that failed before it trained (nothing in it is worth keeping), putting back the run
        it was to replace; so a failed start neither loses the old run nor takes a name."""
        if (self.path / REPLACES).exists():
            self.settle(completed=False)
        else:
            shutil.rmtree(self.path, ignore_errors=True)

    def set_status(self, status: str, **extra) -> None:
        """Write ``status.json``; a running run records its process (pid, host) so a dead one is recognised."""
        data = self._read("status.json", {})
        if status == "running":
            extra = {"pid": os.getpid(), "host": socket.gethostname(), **extra}
        data.update(status=status, updated=time.strftime("%Y-%m-%dT%H:%M:%S"), **extra)
        write_json(self.path / "status.json", data)

    def truncate_logs(self, step: int) -> None:
        """Drop the logged steps after ``step`` (a resumed run trains them again and logs them anew)."""
        for filename in ("metrics.jsonl", "dev.jsonl"):
            rows = self._read_lines(filename)
            kept = [r for r in rows if r.get("step", 0) <= step]
            if len(kept) != len(rows):
                tmp = self.path / f".{filename}.tmp"
                tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
                os.replace(tmp, self.path / filename)

    def append_metrics(self, row: Mapping, filename: str = "metrics.jsonl") -> None:
        with open(self.path / filename, "a") as f:
            f.write(json.dumps(dict(row), sort_keys=True) + "\n")

    def drop_checkpoints(self) -> None:
        """Remove ``checkpoints/`` once the adapter is saved: only unfinished runs resume."""
        shutil.rmtree(self.path / "checkpoints", ignore_errors=True)

    def save_adapter(self, model, tokenizer=None) -> None:
        """Save ``model``'s adapter atomically into ``adapter/``.

        For full fine-tuning ``model`` is the whole model and ``tokenizer`` is saved beside it,
        so ``adapter/`` is a model directory any ``from_pretrained`` loads.
        """
        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)

        self.save_folder(write)

    def save_folder(self, write) -> None:
        """``write(folder)`` fills a new folder that then replaces ``adapter/`` in one rename: a crash
        mid-save leaves the old adapter (or none), never half of one."""
        tmp = self.path / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        write(tmp)
        old = self.path / ".adapter.old"
        if self.adapter_path.exists():
            os.replace(self.adapter_path, old)
        os.replace(tmp, self.adapter_path)
        shutil.rmtree(old, ignore_errors=True)


REPLACES = ".replaces"  # in a run made with overwrite: the folder the replaced run waits in


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return True  # no pid recorded (an older run): trust what it says
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fmt(value, unit: str = "", digits: int = 4):
    if not isinstance(value, (int, float)):
        return None
    return f"{value:.{digits}f}{unit}" if digits else f"{value:,.0f}{unit}"


def safe_name(text: str) -> str:
    """``text`` as a plain folder name: what is not a letter, digit or ``_.+=-`` becomes ``-``, and it
    starts with neither a dot nor a dash (a prompt named ``../../x`` names the run ``x``)."""
    name = re.sub(r"[^\w.+=-]+", "-", str(text)).lstrip(".-")[:100]
    return name or "run"


class Runs(list):
    """The runs of one ``tune(..., seeds=[...])``: one per seed, named ``NAME-s<seed>``; a list of
    :class:`Run` that ``nbkit.evaluate(run=runs)`` scores side by side (``report.seeds()`` summarises)."""

    @property
    def names(self) -> list[str]:
        return [r.name for r in self]

    def __repr__(self):
        return (f"<nbkit.Runs {len(self)} seeds: {', '.join(f'{r.name} ({r.status})' for r in self)}; "
                f"%evaluate --run {' '.join(self.names)}>")


def free_name(base: str, root: Path | None = None) -> str:
    """``base`` made a plain folder name (:func:`safe_name`), or ``base-2``, ``base-3``, … if that is taken."""
    base = safe_name(base)
    root, name, n = root or runs_dir(), base, 1
    while (root / name).exists():
        n += 1
        name = f"{base}-{n}"
    return name
