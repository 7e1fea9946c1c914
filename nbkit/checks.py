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


def options_of(options: type, values, owner: str):
    """``options(**values)``, the Nones left to its defaults; a name it does not take is an error naming
    ``owner`` (``method 'lora'``) and the names it takes."""
    import dataclasses

    values = {k: v for k, v in (values or {}).items() if v is not None}
    known = {f.name for f in dataclasses.fields(options)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(unknown[0], f"is not an option of {owner}; it takes: {', '.join(sorted(known)) or 'no options'}")
    return options(**values)
