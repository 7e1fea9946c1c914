"""The tuning-method registry.

Each method is one module that calls :func:`register_method`. A method names
its options dataclass (validated in ``__post_init__``), the quantization its
base model needs, its default learning rate, and how it wraps a model for
training. Adding a method is adding a module, not editing an if-chain.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class Method:
    """A way to tune a model.

    Args:
        name: the ``--method`` value.
        options: dataclass of the method's options (``r``, ``alpha``, …).
        build: ``build(model, options) -> model`` returning the trainable (peft) model.
        quantize: what the base model is loaded as (``None``, ``"4bit"``).
        lr: default learning rate, chosen so the defaults learn on a small data set.
        summary: one line for help texts.
    """

    name: str
    options: type
    build: Callable[[Any, Any], Any]
    quantize: str | None = None
    lr: float = 2e-4
    summary: str = ""

    def make_options(self, values: Mapping[str, Any] | None = None):
        """Validated options from ``values``; unknown names raise naming the valid ones."""
        values = {k: v for k, v in (values or {}).items() if v is not None}
        known = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(unknown[0], f"is not an option of method {self.name!r}; it takes: {', '.join(sorted(known))}")
        return self.options(**values)


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The method registered as ``name``."""
    _load_builtin()
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownNameError("method", name, METHODS) from None


def available_methods() -> list[str]:
    _load_builtin()
    return sorted(METHODS)


def _load_builtin() -> None:
    from . import lora, qlora  # noqa: F401  (each registers itself)
