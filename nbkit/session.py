"""The session: everything a notebook's nbkit calls share, in one object.

A :class:`Session` owns the registries (prompts by name, runs made or opened) and every
cache of loaded things (base models of each family, classifier and encoder-decoder runs,
semantic-search indexes, the nearest-shot encoder), and the API keys given with
``%nbkit login`` (memory only). ``%%prompt``, ``%tune`` and ``%evaluate`` in one kernel
share :func:`current`; nothing else in nbkit keeps state between calls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Mapping

from .errors import NbkitError, UnknownNameError
from .prompts import Prompt
from .runs import Run, runs_dir


@dataclass
class Session:
    """Registries and caches of one notebook session.

    Attributes:
        prompts: prompts by name (``%%prompt`` defines, ``%tune``/``%evaluate`` look up).
        runs: runs made or opened in this session, by name.
        cache: every loaded model, encoder, classifier run and index, by a key that says what
            it is (``("decoder", spec, quantize, device)``, ``("index", path)``, …).
        keys: API keys by provider, never written anywhere.
    """

    prompts: dict[str, Prompt] = field(default_factory=dict)
    runs: dict[str, Run] = field(default_factory=dict)
    cache: dict[Hashable, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)

    def cached(self, key: Hashable, load: Callable[[], Any], fresh: bool = False):
        """The session's copy of what ``key`` names, loaded with ``load()`` the first time.

        ``fresh`` loads a new copy and keeps it out of the cache (training changes its model). The
        session's own copy is let go first, so that two copies of one model never share the memory
        (on a 2 GB Binder session the second copy of the embedded model is what does not fit); the
        next call without ``fresh`` loads it again, from the disk cache, in seconds.
        """
        if fresh:
            if self.cache.pop(key, None) is not None:
                import gc

                gc.collect()  # the dropped copy's tensors are freed now, before the new copy loads
            return load()
        if key not in self.cache:
            self.cache[key] = load()
        return self.cache[key]

    def loaded(self, kind: str | None = None) -> list:
        """What is loaded, optionally only of one ``kind`` (the first part of its key)."""
        return [v for k, v in self.cache.items() if kind is None or (isinstance(k, tuple) and k[0] == kind)]


_CURRENT = Session()


def current() -> Session:
    """This process's session."""
    return _CURRENT


# -- prompts ------------------------------------------------------------------------------------
def register_prompt(prompt: Prompt) -> Prompt:
    """Make ``prompt`` available by its name for this session."""
    _CURRENT.prompts[prompt.name] = prompt
    return prompt


def get_prompt(prompt: Prompt | str) -> Prompt:
    """A registered prompt by name (or the prompt itself)."""
    if isinstance(prompt, Prompt):
        return prompt
    try:
        return _CURRENT.prompts[prompt]
    except KeyError:
        raise UnknownNameError("prompt", prompt, _CURRENT.prompts,
                               "define it with %%prompt NAME or nbkit.Prompt(...)") from None


# -- runs ---------------------------------------------------------------------------------------
def remember_run(run: Run) -> Run:
    """Keep ``run`` under its name for this session."""
    _CURRENT.runs[run.name] = run
    return run


def available_runs(root: Path | None = None) -> list[str]:
    """Runs on disk under ``root`` (default the runs folder) and those of this session."""
    root = root or runs_dir()
    found = {p.name for p in root.iterdir() if (p / "config.json").exists() and not p.name.startswith(".")} \
        if root.is_dir() else set()
    return sorted(found | set(_CURRENT.runs))


def get_run(spec: Any, namespace: Mapping[str, Any] | None = None) -> Run:
    """A run from a :class:`Run`, a variable name, a run name or a directory."""
    if isinstance(spec, Run):
        return spec
    spec = str(spec)
    namespace = namespace or {}
    if isinstance(namespace.get(spec), Run):
        return namespace[spec]
    if spec in _CURRENT.runs:
        return _CURRENT.runs[spec]
    for path in (runs_dir() / spec, Path(spec).expanduser()):
        if (path / "config.json").exists():
            run = Run(path)
            if not run.has_adapter():
                raise NbkitError(f"run {run.name!r} has no adapter (status: {run.status}); it did not finish training")
            return run
    raise UnknownNameError("run", spec, available_runs(),
                           "A run can also be a run directory or a variable holding a Run")
