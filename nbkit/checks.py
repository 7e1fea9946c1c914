"""Shared validators: each raises a :class:`ConfigError` naming the field and what it takes.

Configs (:mod:`nbkit.config`), method options (:mod:`nbkit.methods`) and the entry points
check their values with these, so one rule reads the same wherever it is broken.
"""

from __future__ import annotations

import math

from .errors import ConfigError


def is_number(value) -> bool:
    """A real int or float (``True`` is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(name: str, value, allow_none: bool = False) -> None:
    """``value`` must be a positive integer (or ``None`` with ``allow_none``)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")


def positive_number(name: str, value, kind=(int, float)) -> None:
    """``value`` must be a positive number of ``kind``."""
    if isinstance(value, bool) or not isinstance(value, kind) or not value > 0:
        raise ConfigError(name, f"must be a positive number, got {value!r}")


def finite(name: str, value) -> None:
    """``value`` must be a finite number (not ``nan`` or ``inf``)."""
    if is_number(value) and not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")


def folder_name(name: str, value) -> None:
    """``value`` must name a folder inside another one: no separators, no leading dot, no NUL."""
    if not isinstance(value, str) or not value or value.startswith(".") or any(c in value for c in "/\\\x00"):
        raise ConfigError(name, f"must be a plain folder name, got {value!r}")
