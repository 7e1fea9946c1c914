"""Small helpers around the Hugging Face libraries that every layer shares."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def quiet(errors_only: bool = False):
    """No per-tensor progress bars from transformers (loads take under a second); with ``errors_only`` its
    log at error level only too (a new head's load report says "MISSING": expected, it is new)."""
    from transformers.utils import logging as hf_logging

    enabled, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    if errors_only:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
        hf_logging.set_verbosity(level)


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (the adapter's and a head's initial weights come from it)."""
    from transformers import set_seed as hf_set_seed

    hf_set_seed(seed)
