"""Tuning methods: one module each, registered in :mod:`nbkit.methods.registry`.

Adding a method is adding a module that calls ``register_method`` and importing it here;
every model family trains through this registry (a method says which families it fits).
"""

from __future__ import annotations

from . import dora, full, ia3, lora, p_tuning, prefix_tuning, prompt_tuning, qlora, setfit  # noqa: F401  (they register)
from .registry import (FAMILIES, METHODS, BuildContext, Method, available_methods, get_method, method_for,
                       option_fields, register_method)

__all__ = ["FAMILIES", "METHODS", "BuildContext", "Method", "available_methods", "get_method", "method_for",
           "option_fields", "register_method"]
