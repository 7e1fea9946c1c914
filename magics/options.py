"""The magics' command lines: ``$name`` expansion, value parsers, and each magic's flags.

``%tune``'s flags are built from the declarations they stand for: one per user setting of
:class:`nbkit.config.TuneConfig` (its default and help text come from the field), one per
method option (:func:`nbkit.methods.option_fields`, defaulting to None: the method's own), and
the few that only a notebook has (``--resume``, ``--progress``, ``-o``). ``%evaluate`` flags
that the nbkit function they go to has a default for default to None here, and a flag not
given is not passed, so the function's own default applies (nothing is copied).
"""

from __future__ import annotations

import dataclasses
import re
import shlex

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, argument_group

from nbkit.config import TASKS, default, settings
from nbkit.methods import METHODS, option_fields
from nbkit.objectives import OBJECTIVES, objective_fields


_DOLLAR = re.compile(r"\$(\w+)")


def expand(line: str, namespace) -> str:
    """Replace ``$name`` with the notebook variable's value (quoted if needed).

    IPython's own expansion also rewrites ``{…}``, which would eat Jinja's
    ``{{ label }}``; nbkit expands only ``$name``, so parameterised notebooks can
    write ``--data $data`` and templates keep their braces.
    """
    def value(match):
        name = match.group(1)
        return shlex.quote(str(namespace[name])) if name in namespace else match.group(0)

    return _DOLLAR.sub(value, line)


def split_csv(value: str | None) -> list[str] | None:
    """``a, b,,c`` → ["a", "b", "c"]; nothing → None."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def number_or_name(value: str | None):
    """``0.1`` → 0.1, ``20`` → 20, ``validation`` → "validation"."""
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and number >= 1 else number


def parse_weights(value: str | None) -> list[float] | None:
    """``1,2`` → [1.0, 2.0]; a word that is not a number is a usage error naming --weights."""
    if value is None:
        return None
    try:
        return [float(v) for v in split_csv(value)]
    except ValueError:
        raise UsageError(f"--weights takes comma-separated numbers like 1,2; got {value!r}") from None


def given(args, names) -> dict:
    """The flags among ``names`` the user gave (not None), by name: what a magic passes on."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def arguments(decorators):
    """Apply IPython ``argument``/``argument_group`` decorators from a list, in its order (as if they
    were written one per line above the magic, under ``@magic_arguments()``)."""
    def apply(func):
        for decorator in reversed(list(decorators)):
            func = decorator(func)
        return func

    return apply


def help_first(func):
    """Put what a magic does before its usage in ``%tune?``: IPython's ``magic_arguments`` writes the usage
    block first, under a bare ``::``, and the one-line description and the example after 20 lines of it."""
    doc = func.__doc__ or ""
    if doc.startswith("::"):
        usage, _, rest = doc[2:].strip("\n").partition("\n\n")
        lines = rest.splitlines()
        # the argument groups start at the first unindented "title:" line after the description
        groups = next((i for i, line in enumerate(lines) if re.fullmatch(r"[A-Za-z][\w ,()/-]*:", line)), len(lines))
        func.__doc__ = "\n".join(lines[:groups]).rstrip() + "\n\nUsage::\n\n" + usage + "\n\n" + "\n".join(lines[groups:])
    return func


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def shown(value) -> str:
    """A default as a person reads it: 2e+09, 0.05, all-linear, off; None is the method's choice. A field
    (an option) may say its own in its ``shown`` metadata (``0 on decoders, 0.05 on encoders``)."""
    if isinstance(value, dataclasses.Field):
        return value.metadata.get("shown") or shown(value.default)
    if value is None:
        return "auto"
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help(text: str) -> str:
    return text.replace("%", "%%")  # argparse %-formats help texts


def _kind(field: dataclasses.Field) -> dict:
    """argparse keywords of a field from its annotation: int and float typed, bool a switch, else text
    (which the magic parses further where it needs to: --dev, --weights)."""
    annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
    parts = {p.strip() for p in annotation.split("|")} - {"None"}
    if parts == {"bool"}:
        return {"action": "store_true"}
    return {"type": {"int": int, "float": float}[parts.pop()]} if parts in ({"int"}, {"float"}) else {}


# how %tune writes the settings whose command-line form differs from the API's
_REPEATED = "; in %tune, repeat the flag: the n-th --data goes with the n-th --prompt"
TUNE_FORMS = {
    "prompt": {"action": "append", "suffix": _REPEATED},
    "data": {"action": "append", "required": True, "suffix": _REPEATED},
    "task": {"choices": TASKS},
    "packing": {"nargs": "?", "const": "on", "metavar": "{auto,on,off}"},  # a bare --packing, as before auto, is on
}
TUNE_PARSERS = {"dev": number_or_name, "weights": parse_weights}  # flag text → the setting's value
NOT_FLAGS = ("prompt", "data", "task")  # settings tune takes by position or by their own keyword


def setting_argument(field: dataclasses.Field):
    """The ``%tune`` flag of a :class:`~nbkit.config.TuneConfig` field: its default and help from there."""
    form = dict(TUNE_FORMS.get(field.name, {}))
    suffix = form.pop("suffix", "")
    keywords = {**_kind(field), **form}
    if "choices" in field.metadata:
        keywords["choices"] = list(field.metadata["choices"])
    if "action" not in keywords or keywords["action"] == "store_true":
        keywords["default"] = default(field.name) if field.default is not dataclasses.MISSING else None
    return argument(flag(field.name), help=_help(field.metadata["help"] + suffix), **keywords)


def method_defaults(name: str) -> str:
    """Which methods take option ``name``, with their defaults: ``8 in lora, dora, qlora``."""
    by_default: dict[str, list[str]] = {}
    for method in METHODS.values():
        for f in dataclasses.fields(method.options):
            if f.name == name:
                by_default.setdefault(shown(f), []).append(method.name)
    return "; ".join(f"{value} in {', '.join(methods)}" for value, methods in by_default.items())


def option_argument(field: dataclasses.Field):
    """The ``%tune`` flag of a method option; None unless given, so a method refuses only what the
    user wrote and the others keep their own defaults."""
    keywords = _kind(field)
    if keywords.get("action") == "store_true":
        keywords = {"action": "store_const", "const": True}
    text = f"{field.metadata.get('help', '')} (default: {method_defaults(field.name)})"
    return argument(flag(field.name), default=None, help=_help(text), **keywords)


def objective_argument(field: dataclasses.Field):
    """The ``%tune`` flag of an objective option (``--beta``, ``--reward``): None unless given."""
    takes = [o.name for o in OBJECTIVES.values() if field.name in {f.name for f in dataclasses.fields(o.options)}]
    text = f"{field.metadata.get('help', '')} (objectives: {', '.join(takes)})"
    return argument(flag(field.name), default=None, help=_help(text), **_kind(field))


def tune_arguments() -> list:
    """``%tune``'s flags: the settings, the method options, then what only the magic does."""
    clash = ({f.name for f in settings()} | set(option_fields())) & set(objective_fields())
    clash |= {f.name for f in settings()} & set(option_fields())
    assert not clash, f"options named like tune settings or each other: {clash}"
    return [
        *(setting_argument(f) for f in settings()),
        argument_group("method options", "each method takes its own (%nbkit methods lists them); one it does "
                                         "not take is an error"),
        *(option_argument(f) for f in option_fields().values()),
        argument_group("objective options", "for --objective dpo, orpo, kto or grpo (%nbkit objectives lists them)"),
        *(objective_argument(f) for f in objective_fields().values()),
        argument_group("notebook"),
        argument("--seeds", type=int, metavar="N",
                 help="train N runs, seeds --seed .. --seed+N-1, named NAME-s<seed> (how far the seed alone moves "
                      "the result: %%evaluate them together)"),
        argument("--resume", action="store_true", help="continue run --name from its last checkpoint"),
        argument("--overwrite", action="store_true", help="replace an existing run of the same name"),
        argument("--export", metavar="FILE.yaml",
                 help="write the validated job to a file instead of training (run it with nbkit tune --config)"),
        argument("--progress", default="auto", choices=["auto", "widget", "plain", "none"],
                 help="live widget, plain lines or nothing (default: widget in Jupyter)"),
        argument("-o", "--output", metavar="VAR", help="bind the Run to VAR"),
    ]


def tune_keywords(args) -> dict:
    """:func:`nbkit.tune`'s settings and method options from parsed ``%tune`` flags: every setting,
    and the method options given."""
    keywords = {f.name: getattr(args, f.name) for f in settings() if f.name not in NOT_FLAGS}
    for name, parse in TUNE_PARSERS.items():
        keywords[name] = parse(keywords[name])
    return {**keywords, **given(args, option_fields()), **given(args, objective_fields())}


PROMPT_ARGUMENTS = [
    argument("name", help="name to register the prompt under"),
    argument("--target", help='template of the expected completion, e.g. "{{ label }}"'),
    argument("--choices", help="comma-separated label words for classification"),
    argument("--system", help="system message (chat models) or preamble"),
    argument("--shots", type=int, default=0, help="few-shot examples drawn from the training split"),
    argument("--selection", default="random", choices=["random", "balanced", "nearest"],
             help="how the shots are drawn: random, balanced (each class in turn), or nearest (the training "
                  "examples most similar to the row, by sentence embedding)"),
    argument("--retrieve", metavar="INDEX",
             help="semantic search: fill {{ passages }} with the documents of INDEX (a variable holding "
                  "nbkit.index(...), or a saved index directory) most similar to each row's question"),
    argument("--k", type=int, default=3, help="with --retrieve: how many passages (default 3)"),
    argument("--query", help="with --retrieve: the column to search with (default question, query or text)"),
    argument("--run", action="store_true", help="render and generate on --limit rows of --data"),
    argument("--data", help="data spec: sample:NAME, a file, hf:ID or a variable name"),
    argument("--split", default="test", help="split the --run rows come from (default test)"),
    argument("--limit", type=int, default=5, help="rows to generate on with --run (default 5)"),
    argument("--model", help="model spec (default: the embedded smollm2-135m), or openai:NAME for an API model"),
    argument("--base-url", help="with --model openai:NAME: the OpenAI-compatible server (default $OPENAI_BASE_URL)"),
    argument("--no-cache", action="store_true", help="with an API model: send requests even if answered before"),
    argument("--adapter", help="a run (name, directory or variable) whose adapter to apply"),
    argument("--max-new-tokens", type=int, default=64, help="longest output with --run"),
    argument("-o", "--output", metavar="VAR", help="bind the result (the Prompt, or the generations) to VAR"),
]

# %evaluate: a flag left out is not passed, and nbkit.evaluate, nbkit.search_prompts or
# nbkit.prompt_vs_finetune use their own default (hence default=None where they have one)
EVALUATE_ARGUMENTS = [
    argument("--prompt", action="append", help="a prompt to evaluate (repeatable)"),
    argument("--run", action="append", help="a run to evaluate: name, directory or variable (repeatable)"),
    argument("--data", help="data spec (default: the run's training data)"),
    argument("--split", help="split to evaluate on"),
    argument("--task", choices=["retrieval"],
             help="retrieval: the base encoder and --run embedding runs on a search data set (default "
                  "sample:search): recall@1, recall@k, MRR, nDCG@k"),
    argument("--k", type=int, help="--task retrieval: the cut-off of recall@k and nDCG@k"),
    argument("--corpus", help="--task retrieval: the documents searched (default the data's own)"),
    argument("--metric", action="append",
             help="with choices: accuracy, f1, precision, recall; free text: exact_match, token_f1, rouge1, "
                  "rouge2, rougeL, format, perplexity; preference data: preference_accuracy, margin (repeatable; "
                  "defaults: accuracy,f1 / exact_match,token_f1,rougeL / preference_accuracy,margin)"),
    argument("--limit", type=int, help="evaluate only the first N rows"),
    argument("--model", help="base model for the prompts (default smollm2-135m), or openai:NAME for an API model"),
    argument("--base-url", help="with --model openai:NAME: the OpenAI-compatible server (default $OPENAI_BASE_URL)"),
    argument("--no-cache", action="store_true", help="with an API model: send requests even if answered before"),
    argument("--concurrency", type=int, help="with an API model: requests in flight at once"),
    argument("--scoring", choices=["sum", "mean"],
             help="label log-likelihood: sum, or mean per token (length-normalised)"),
    argument("--batch-size", type=int, help="sequences per forward pass"),
    argument("--search", action="store_true",
             help="search prompts instead: every --prompt x --words x --shots x --selection (x --paraphrases), "
                  "ranked on a dev split, the best registered as --name"),
    argument("--words", action="append", help="--search: label words to try, label=word,label=word (repeatable)"),
    argument("--shots", help="--search: numbers of few-shot examples to try, e.g. 0,2,4; --versus: examples "
                             "in the few-shot prompt, and the most the search tries"),
    argument("--selection", help="--search: how shots are chosen: random, balanced, nearest (comma-separated)"),
    argument("--formats", help="--search: chat (the model's chat template) and/or plain (the text as it is), "
                               "comma-separated; each template is tried in each (default: both, for a model "
                               "with a chat template, on prompts that do not set chat=True/False)"),
    argument("--paraphrases", type=int, help="--search: instruction rewordings to ask the model for"),
    argument("--dev", help="--search, --versus: a split, or a fraction/count of train to rank prompts on"),
    argument("--name", help="--search: name of the best prompt (default <prompt>-best)"),
    argument("--strategy", choices=["grid", "rl", "gradient"],
             help="--search: grid (every candidate), rl (policy gradient over the same edits, --budget prompts) "
                  "or gradient (AutoPrompt trigger tokens, --triggers, --steps)"),
    argument("--budget", type=int, help="--search --strategy rl: prompts sampled"),
    argument("--triggers", type=int, help="--search --strategy gradient: trigger tokens"),
    argument("--steps", type=int, help="--search --strategy gradient: HotFlip steps"),
    argument("--versus", action="store_true",
             help="prompt vs fine-tune: zero-shot, few-shot, searched prompt, prompt-tuning, LoRA and QLoRA on one "
                  "--prompt and the test split, accuracy next to trainable parameters, seconds and peak memory"),
    argument("--approaches",
             help="--versus: which of zero-shot,few-shot,searched,prompt-tuning,lora,qlora to run (default all)"),
    argument("--epochs", type=float, help="--versus: passes over train for each tuned run"),
    argument("--max-steps", type=int, help="--versus: stop each tuned run after this many steps instead"),
    argument("--seeds", type=int, metavar="N",
             help="--versus: run the searched prompt and each tuned run with seeds 0..N-1, rows APPROACH-s<seed>, "
                  "and show each approach's mean and spread across seeds"),
    argument("--progress", default="auto", choices=["auto", "widget", "plain", "none"],
             help="--versus: the tuned runs' progress as a live widget, plain lines or nothing (default: widget "
                  "in Jupyter)"),
    argument("-o", "--output", metavar="VAR", help="bind the Report to VAR"),
]

NBKIT_ARGUMENTS = [
    argument("what", nargs="?", default="list", choices=["list", "help", "methods", "objectives", "samples", "login", "power"],
             help="list (prompts, runs, models), help, methods, samples, login openai (asks for the API key), or "
                  "power P1 P2 (test rows that tell accuracies P1 and P2 apart)"),
    argument("provider", nargs="*", help="with login: openai; with power: two accuracies, e.g. 0.78 0.85"),
]
