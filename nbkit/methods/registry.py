"""The tuning-method registry: :class:`Method`, :func:`register_method`, :func:`get_method`.

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

from ..checks import options_of
from ..errors import ConfigError, UnknownNameError


FAMILIES = ("decoder", "encoder", "seq2seq")  # the model families a method can train


@dataclass
class BuildContext:
    """What a method may need besides the model: the tokenizer, the prompt, where the base model lives,
    and what the family of the model asks of an adapter (peft's task type, the layers to adapt when the
    options leave it to the family)."""

    tokenizer: Any = None
    prompt: Any = None  # the nbkit Prompt being trained
    model_path: str | None = None
    family: str = "decoder"
    task_type: str | None = "CAUSAL_LM"
    default_targets: Any = None  # None: the options' own (all-linear)


@dataclass(frozen=True)
class Method:
    """A way to tune a model.

    Args:
        name: the ``--method`` value.
        options: dataclass of the method's options (``r``, ``alpha``, ``virtual_tokens``, …).
        build: ``build(model, options, context) -> model`` returning the model to train.
        quantize: what the base model is loaded as (``None``, ``"4bit"``).
        lr: default learning rate, chosen so the defaults learn on a small data set.
        kind: ``adapter`` (peft layers), ``prompt`` (peft learned prompt), ``full`` (every weight;
            the run saves a whole model) or ``setfit`` (a tuned sentence encoder and a logistic head,
            saved as a ``SetFitModel``).
        check: ``check(model_config, options)`` raising :class:`ConfigError` when the method cannot
            work on that architecture; runs before any weights load.
        summary: one line for help texts.
        families: the model families it trains (``decoder``, ``encoder``, ``seq2seq``).
    """

    name: str
    options: type
    build: Callable[[Any, Any, BuildContext], Any]
    quantize: str | None = None
    lr: float = 2e-4
    kind: str = "adapter"
    check: Callable[[Any, Any], None] | None = None
    summary: str = ""
    families: tuple[str, ...] = ("decoder",)

    def make_options(self, values: Mapping[str, Any] | None = None, family: str | None = None):
        """Validated options from ``values``; unknown names raise naming the valid ones. With ``family``, the
        defaults that depend on it are filled in (LoRA's dropout), so the run records what it trained with."""
        options = options_of(self.options, values, f"method {self.name!r}")
        if family is not None and hasattr(options, "for_family"):
            options.for_family(family)
        return options


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry; a second method of the same name is an error, not a replacement."""
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"a tuning method named {method.name!r} is already registered "
                         f"({METHODS[method.name].build.__module__}); pick another name")
    for family in method.families:
        if family not in FAMILIES:
            raise ValueError(f"method {method.name!r} names an unknown model family {family!r}; "
                             f"families: {', '.join(FAMILIES)}")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The method registered as ``name``."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownNameError("method", name, METHODS) from None


def available_methods(family: str | None = None) -> list[str]:
    """The registered methods' names; with ``family``, only those that train that family."""
    return sorted(n for n, m in METHODS.items() if family is None or family in m.families)


def method_for(name: str, family: str, refusal: str) -> Method:
    """The method ``name``, which must train ``family``; ``refusal`` says why not (``does not apply to
    an encoder``), the error adds which methods do."""
    method = get_method(name)
    if family not in method.families:
        raise ConfigError("method", f"{name!r} {refusal}; use one of: {', '.join(available_methods(family))}")
    return method


def check_virtual_tokens(model_config, options) -> None:
    """A learned prompt must leave the model room for the input: its virtual tokens take positions of the
    context window (``--virtual-tokens 100000000`` would try to allocate hundreds of GB)."""
    n = getattr(options, "virtual_tokens", None)
    window = getattr(model_config, "max_position_embeddings", None)
    if n is not None and window and n >= window:
        raise ConfigError("virtual_tokens", f"is {n}, but the model reads at most {window} tokens in all; "
                          f"use far fewer (8-100 is usual)")


def option_fields() -> dict[str, dataclasses.Field]:
    """Every option of every method by name (the first declaration wins), for ``%tune``'s flags."""
    fields: dict[str, dataclasses.Field] = {}
    for method in METHODS.values():
        for f in dataclasses.fields(method.options):
            fields.setdefault(f.name, f)
    return fields
