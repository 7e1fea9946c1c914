"""The tuning-method registry.

Each method is one module that calls :func:`register_method`. A method names
its options dataclass (validated in ``__post_init__``), the quantization its
base model needs, its default learning rate, what it produces (an adapter on
the layers, a learned prompt, or a whole model) and how it wraps a model for
training. Adding a method is adding a module, not editing an if-chain.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..errors import ConfigError, UnknownNameError


@dataclass
class BuildContext:
    """What a method may need besides the model: the tokenizer, the prompt, where the base model lives."""

    tokenizer: Any = None
    prompt: Any = None  # the nbkit Prompt being trained
    model_path: str | None = None


@dataclass(frozen=True)
class Method:
    """A way to tune a model.

    Args:
        name: the ``--method`` value.
        options: dataclass of the method's options (``r``, ``alpha``, ``virtual_tokens``, …).
        build: ``build(model, options, context) -> model`` returning the model to train.
        quantize: what the base model is loaded as (``None``, ``"4bit"``).
        lr: default learning rate, chosen so the defaults learn on a small data set.
        kind: ``adapter`` (peft layers), ``prompt`` (peft learned prompt) or ``full`` (every weight;
            the run saves a whole model).
        check: ``check(model_config, options)`` raising :class:`ConfigError` when the method cannot
            work on that architecture; runs before any weights load.
        summary: one line for help texts.
    """

    name: str
    options: type
    build: Callable[[Any, Any, BuildContext], Any]
    quantize: str | None = None
    lr: float = 2e-4
    kind: str = "adapter"
    check: Callable[[Any, Any], None] | None = None
    summary: str = ""

    def make_options(self, values: Mapping[str, Any] | None = None):
        """Validated options from ``values``; unknown names raise naming the valid ones."""
        values = {k: v for k, v in (values or {}).items() if v is not None}
        known = {f.name for f in dataclasses.fields(self.options)}
        unknown = sorted(set(values) - known)
        if unknown:
            takes = ", ".join(sorted(known)) or "no options"
            raise ConfigError(unknown[0], f"is not an option of method {self.name!r}; it takes: {takes}")
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


def positive_int(name: str, value, allow_none: bool = False) -> None:
    """Raise a :class:`ConfigError` naming ``name`` unless ``value`` is a positive integer."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")


def _load_builtin() -> None:
    from . import dora, full, ia3, lora, p_tuning, prefix_tuning, prompt_tuning, qlora  # noqa: F401
