"""Small helpers around the Hugging Face libraries that every layer shares."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet():
    """No per-tensor progress bars from transformers: loads take under a second."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def errors_only():
    """transformers' own log at error level only (a new head's load report says "MISSING": expected)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (the adapter's and a head's initial weights come from it)."""
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)
