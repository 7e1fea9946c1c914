"""Prompts: named Jinja2 templates, rendered safely, formatted for a model.

A :class:`Prompt` holds the instruction template, the template of the expected
completion (``target``), optional label words (``choices``), an optional
system message and a number of few-shot examples. It knows nothing of torch;
``format`` only needs a tokenizer-like object for chat models.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import jinja2
import jinja2.meta
from jinja2.sandbox import SandboxedEnvironment

from .errors import ConfigError, TemplateError

class _BoundedEnvironment(SandboxedEnvironment):
    """Sandboxed: templates come from notebooks and run files that may be shared. Powers are
    intercepted, which also stops Jinja folding ``{{ 9**(9**9) }}`` at compile time (a hang), and a
    power whose result would be huge is refused when it renders."""

    intercepted_binops = frozenset(["**"])

    def call_binop(self, context, operator, left, right):
        if operator == "**" and _too_big(left, right):
            raise jinja2.exceptions.SecurityError(f"{left!r} ** {right!r} is too large to compute")
        return super().call_binop(context, operator, left, right)


def _too_big(base, exponent) -> bool:
    import math

    try:
        return abs(float(exponent)) * math.log2(max(abs(float(base)), 2)) > 4096
    except (TypeError, ValueError, OverflowError):
        return False


# StrictUndefined: a misspelt variable must fail, not render as "".
_ENV = _BoundedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)


def _compile(source: str, what: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise TemplateError(f"{what} has a syntax error on line {e.lineno}: {e.message}", line=e.lineno) from None


def _variables(source: str) -> set[str]:
    return set(jinja2.meta.find_undeclared_variables(_ENV.parse(source)))


@dataclass
class Prompt:
    """A prompt template and what is expected back.

    Args:
        template: Jinja2 text of the instruction, e.g. ``"Review: {{ text }}\\nSentiment:"``.
        name: the name it is registered under.
        target: Jinja2 text of the expected completion, e.g. ``"{{ label }}"``. ``None``
            means ``"{{ label }}"`` when the data has a ``label`` column.
        choices: label words for classification; evaluation scores each one.
        system: a system message (chat models) or preamble (plain models).
        shots: how many solved examples from the training split to show first.
        selection: how they are chosen: ``random``, ``balanced`` (classes in turn, so a few
            shots cover the labels instead of repeating the most common one), or ``nearest``
            (the training examples most similar to the row, by the embedded MiniLM sentence
            encoder's cosine similarity of the rendered instructions; the nearest is shown last).
        chat: use the tokenizer's chat template; ``None`` decides by the tokenizer.
        retrieve: a saved semantic-search index (its directory, from :func:`nbkit.index`):
            each row's ``{{ passages }}`` become the ``k`` documents most similar to its ``query``
            column (default the first of ``question``, ``query``, ``text`` the row has), numbered.
        k: how many passages ``retrieve`` puts in.
        query: the column searched with ``retrieve``.
    """

    template: str
    name: str = "prompt"
    target: str | None = None
    choices: list[str] | None = None
    system: str | None = None
    shots: int = 0
    chat: bool | None = None
    selection: str = "random"
    retrieve: str | None = None
    k: int = 3
    query: str | None = None
    _compiled: Any = field(default=None, init=False, repr=False, compare=False)
    _compiled_target: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        self._check_types()
        self.template = self.template.strip("\n")
        if not self.template.strip():
            raise ConfigError("template", "is empty; write the prompt text in the cell body")
        if not isinstance(self.shots, int) or self.shots < 0:
            raise ConfigError("shots", f"must be a non-negative integer, got {self.shots!r}")
        if self.selection not in SELECTIONS:
            raise ConfigError("selection", f"must be one of {', '.join(SELECTIONS)}, got {self.selection!r}")
        if self.choices is not None:
            self.choices = [str(c).strip() for c in self.choices]
            if len(self.choices) < 2:
                raise ConfigError("choices", f"needs at least two label words, got {self.choices}")
            if any(not c for c in self.choices):
                raise ConfigError("choices", "contains an empty label word")
            dupes = sorted({c for c in self.choices if self.choices.count(c) > 1})
            if dupes:
                raise ConfigError("choices", f"has duplicates: {', '.join(dupes)}")
        self._compiled = _compile(self.template, f"prompt {self.name!r}")
        if self.retrieve is not None:
            if not isinstance(self.retrieve, str):  # an Index object: keep where it is saved
                self.retrieve = str(getattr(self.retrieve, "path", self.retrieve))
            if "passages" not in _variables(self.template):
                raise ConfigError("retrieve", f"is set but the template of prompt {self.name!r} has no "
                                  "{{ passages }} to put the retrieved documents in")
            if not isinstance(self.k, int) or self.k < 1:
                raise ConfigError("k", f"must be a positive integer, got {self.k!r}")
        if self.target is not None:
            self._compiled_target = _compile(self.target, f"target of prompt {self.name!r}")

    def _check_types(self) -> None:
        """Fields of the wrong type (from a job file, say) are errors naming the field, not tracebacks."""
        for name in ("template", "name"):
            if not isinstance(getattr(self, name), str):
                raise ConfigError(name, f"must be text, got {getattr(self, name)!r}")
        for name in ("target", "system", "query"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ConfigError(name, f"must be text, got {getattr(self, name)!r}")
        if isinstance(self.choices, str):  # "yes,no" as on the magic line: two label words, not six letters
            self.choices = [c for c in self.choices.split(",")]
        if self.choices is not None and (not isinstance(self.choices, (list, tuple))
                                         or not all(isinstance(c, (str, int, float)) for c in self.choices)):
            raise ConfigError("choices", f"must be a list of label words (or \"a,b,c\"), got {self.choices!r}")
        if self.chat is not None and not isinstance(self.chat, bool):
            raise ConfigError("chat", f"must be true, false or unset, got {self.chat!r}")
        if "\x00" in self.name:
            raise ConfigError("name", "contains a NUL byte")

    # -- what the template needs -------------------------------------------------
    @property
    def input_columns(self) -> set[str]:
        """Names the template alone reads from each row (the target's not counted; none filled by retrieval)."""
        names = _variables(self.template)
        if self.retrieve is not None:
            names.discard("passages")
            names.add(self._query_column(names))
        return names

    @property
    def variables(self) -> set[str]:
        """Names the template and target read from each row."""
        names = _variables(self.template)
        if self.target is not None:
            names |= _variables(self.target)
        if self.retrieve is not None:  # filled in from the index, not read from the row
            names.discard("passages")
            names.add(self._query_column(names))
        return names

    def _query_column(self, columns) -> str:
        if self.query:
            return self.query
        return next((c for c in ("question", "query", "text") if c in columns), "question")

    def resolve_target(self, columns: Iterable[str]) -> "Prompt":
        """Return a prompt whose ``target`` is set, defaulting to ``{{ label }}`` (``{{ chosen }}`` on
        preference data: SFT on a preference set imitates its chosen completions)."""
        if self.target is not None:
            return self
        if "label" not in columns and {"chosen", "rejected"} <= set(columns):
            return dataclasses.replace(self, target="{{ chosen }}")
        if "label" not in columns:
            raise ConfigError(
                "target", f"is not set for prompt {self.name!r} and the data has no `label` column; "
                f"pass --target with the expected answer, e.g. --target \"{{{{ {sorted(columns)[0] if columns else 'answer'} }}}}\""
            )
        return dataclasses.replace(self, target="{{ label }}")

    def check(self, columns: Iterable[str]) -> None:
        """Raise :class:`TemplateError` naming any variable the data lacks."""
        columns = set(columns)
        missing = sorted(self.variables - columns)
        if missing:
            raise TemplateError(
                f"prompt {self.name!r} uses {{{{ {missing[0]} }}}} but the data has no such column; "
                f"columns: {', '.join(sorted(columns))}",
                variable=missing[0],
            )

    # -- rendering ----------------------------------------------------------------
    def render(self, row: Mapping[str, Any]) -> str:
        """The instruction for one row (no chat formatting, no shots); with ``retrieve``, the passages
        found for the row's query are put in ``{{ passages }}``."""
        if self.retrieve is not None and "passages" not in row:
            column = self._query_column(row)
            if column not in row:
                raise TemplateError(f"prompt {self.name!r} retrieves passages for the row's {column!r} column, "
                                    f"which the row lacks; it has: {', '.join(sorted(row))} (set query=...)",
                                    variable=column)
            row = {**row, "passages": _retrieval("passages")(self.retrieve, str(row[column]), self.k)}
        return self._render(self._compiled, row).strip()

    def render_target(self, row: Mapping[str, Any]) -> str:
        """The expected completion for one row."""
        if self._compiled_target is None:
            raise ConfigError("target", f"is not set for prompt {self.name!r}")
        return self._render(self._compiled_target, row).strip()

    def _render(self, template: jinja2.Template, row: Mapping[str, Any]) -> str:
        try:
            return template.render(**row)
        except jinja2.exceptions.SecurityError as e:
            raise TemplateError(f"prompt {self.name!r}: {e}") from None
        except jinja2.UndefinedError as e:
            variable = str(e.message).split("'")[1] if "'" in str(e.message) else None
            raise TemplateError(
                f"prompt {self.name!r}: {e.message}; the row has: {', '.join(sorted(row))}",
                variable=variable,
            ) from None

    def uses_chat(self, tokenizer) -> bool:
        if self.chat is not None:
            return self.chat
        return getattr(tokenizer, "chat_template", None) is not None

    def format(self, row: Mapping[str, Any], tokenizer=None, shots: Sequence[Mapping] = ()) -> str:
        """The full model input for ``row``: system, solved shots, then the instruction.

        Args:
            row: the example to render.
            tokenizer: its chat template is applied when the prompt uses chat.
            shots: solved examples shown before the row.
        """
        if tokenizer is not None and self.uses_chat(tokenizer):
            return tokenizer.apply_chat_template(self.messages(row, shots), tokenize=False, add_generation_prompt=True)
        parts = [self.system] if self.system else []
        parts += [f"{self.render(s)} {self.render_target(s)}" for s in shots]
        parts.append(self.render(row))
        return "\n\n".join(parts)

    def messages(self, row: Mapping[str, Any], shots: Sequence[Mapping] = ()) -> list[dict]:
        """The chat messages for ``row``: system, each shot as a user/assistant turn, then the instruction."""
        messages = [{"role": "system", "content": self.system}] if self.system else []
        for shot in shots:
            messages.append({"role": "user", "content": self.render(shot)})
            messages.append({"role": "assistant", "content": self.render_target(shot)})
        messages.append({"role": "user", "content": self.render(row)})
        return messages

    def completion(self, text: str, tokenizer=None) -> str:
        """The completion as it follows the formatted input (a space for plain models)."""
        if tokenizer is not None and self.uses_chat(tokenizer):
            return text
        return " " + text

    def shots_for(self, rows: Sequence[Mapping], pool: Sequence[Mapping], seed: int = 0,
                  exclude_self: bool = False) -> list[list]:
        """The shots of each row: drawn from ``pool`` with seed ``seed + i`` for the i-th row, or its
        nearest neighbours in ``pool``. ``exclude_self``: a row is never its own shot (training)."""
        if not self.shots or not pool:
            return [[] for _ in rows]
        if self.selection != "nearest":
            return [self.pick_shots(pool, seed=seed + i, exclude=row if exclude_self else None)
                    for i, row in enumerate(rows)]
        if len(pool) - exclude_self < self.shots:
            raise ConfigError("shots", f"asks for {self.shots} examples but the training split has {len(pool)}")
        found = _retrieval("nearest")([self.render(r) for r in rows], [self.render(r) for r in pool], self.shots,
                        exclude_same=exclude_self)
        return [[pool[j] for j in picked] for picked in found]

    def pick_shots(self, pool: Sequence[Mapping], seed: int = 0, exclude: Mapping | None = None) -> list:
        """``self.shots`` examples drawn deterministically from ``pool`` (``random`` or ``balanced``;
        ``nearest`` depends on the row: :meth:`shots_for`)."""
        if not self.shots:
            return []
        if self.selection == "nearest":
            raise ConfigError("selection", "nearest shots depend on the row; use Prompt.shots_for(rows, pool)")
        candidates = [r for r in pool if r is not exclude and r != exclude]
        if len(candidates) < self.shots:
            raise ConfigError("shots", f"asks for {self.shots} examples but the training split has {len(candidates)}")
        rng = random.Random(seed)
        if self.selection == "random":
            return rng.sample(candidates, self.shots)
        by_class: dict[str, list] = {}
        for r in candidates:  # balanced: one of each class in turn, classes in a seeded order
            by_class.setdefault(self.render_target(r), []).append(r)
        queues = [rng.sample(rows, len(rows)) for _, rows in sorted(by_class.items())]
        rng.shuffle(queues)
        picked = []
        while len(picked) < self.shots:
            for queue in queues:
                if queue and len(picked) < self.shots:
                    picked.append(queue.pop())
        return picked

    # -- persistence --------------------------------------------------------------
    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Prompt":
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], f"is not a prompt field; fields: {', '.join(sorted(known))}")
        return cls(**dict(data))


SELECTIONS = ("random", "balanced", "nearest")


# -- what the prompt layer is handed -----------------------------------------------------------
# Prompts sit below the models and the indexes, so a prompt that retrieves passages or picks its
# nearest shots is handed the two functions that do it (nbkit.retrieval hands them over when it
# is imported, as every layer that renders prompts for a model does), instead of importing upwards.
_RETRIEVAL: dict[str, Any] = {}


def use_retrieval(passages, nearest) -> None:
    """Hand the prompt layer ``passages(index, query, k) -> str`` and
    ``nearest(queries, pool, k, exclude_same) -> [[pool index, ...], ...]``."""
    _RETRIEVAL.update(passages=passages, nearest=nearest)


def _retrieval(what: str):
    if what not in _RETRIEVAL:
        raise ConfigError("retrieve" if what == "passages" else "selection",
                          "needs nbkit's retrieval layer: import nbkit.retrieval (nbkit.index does) first")
    return _RETRIEVAL[what]
