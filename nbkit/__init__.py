"""nbkit: adapt language models to tasks by prompting and parameter-efficient fine-tuning.

The public API mirrors the notebook magics one to one. Importing nbkit is
instant: nothing heavy (torch, transformers) is imported until it is used.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "Prompt", "Run", "Report", "tune", "evaluate", "search_prompts", "prompt_vs_finetune", "generate", "export",
    "load_model", "load_data", "index", "lm_eval_task", "load_ipython_extension", "__version__",
]

# name -> module that defines it; resolved on first access (PEP 562)
_LAZY = {
    "Prompt": "prompts", "tune": "training", "TuneConfig": "config", "evaluate": "evaluation",
    "generate": "evaluation", "Report": "results", "Generations": "results", "Run": "runs",
    "load_model": "models", "load_data": "data", "export": "exports", "search_prompts": "search",
    "prompt_vs_finetune": "versus", "index": "retrieval", "Index": "retrieval", "lm_eval_task": "evaluation",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nbkit' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


def load_ipython_extension(ipython):
    """``%load_ext nbkit``: register ``%%prompt``, ``%tune``, ``%evaluate`` and ``%nbkit``."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython):
    from .magics import unload_ipython_extension as unload

    unload(ipython)
