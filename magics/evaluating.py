"""``%evaluate``'s three modes: side by side (the default), ``--search`` and ``--versus``.

Each takes the parsed flags, refuses those of another mode by name, and passes on only the
flags given: a flag left out takes the default of the nbkit function called
(:func:`nbkit.evaluate`, :func:`nbkit.search_prompts`, :func:`nbkit.prompt_vs_finetune`).
"""

from __future__ import annotations

from IPython.core.error import UsageError

from .options import given, number_or_name, split_csv
from .progress import callbacks

# %evaluate flags by the mode they belong to; a flag given in another mode is a usage error
SEARCH_ONLY = ("words", "selection", "formats", "paraphrases", "name", "strategy", "budget", "triggers", "steps")
VERSUS_ONLY = ("approaches", "epochs", "max_steps", "seeds", "progress")
SEARCH_OR_VERSUS = ("shots", "dev")
NOT_VERSUS = ("run", "split", "metric", "scoring", "batch_size", "base_url", "no_cache", "concurrency")
NOT_RETRIEVAL = ("prompt", "metric", "scoring", "base_url", "no_cache")
RETRIEVAL_ONLY = ("k", "corpus")


def refuse(args, parser, names, why: str) -> None:
    """A usage error naming the first of ``names`` given away from its default."""
    for name in names:
        if getattr(args, name) != parser.get_default(name):
            raise UsageError(f"--{name.replace('_', '-')} {why}")


def evaluate_mode(args, parser, namespace):
    """The Report of whichever mode the flags ask for."""
    from nbkit.evaluation import evaluate

    if args.search and args.versus:
        raise UsageError("--search and --versus are two different things; give one")
    if args.task and (args.search or args.versus):
        raise UsageError("--task retrieval does not go with --search or --versus")
    if args.search:
        refuse(args, parser, VERSUS_ONLY, "belongs to --versus")
        return search(args, namespace)
    if args.versus:
        refuse(args, parser, NOT_VERSUS + SEARCH_ONLY, "does not go with --versus")
        return versus(args, namespace)
    refuse(args, parser, SEARCH_ONLY, "belongs to --search")
    refuse(args, parser, SEARCH_OR_VERSUS, "belongs to --search or --versus")
    refuse(args, parser, VERSUS_ONLY, "belongs to --versus")
    common = given(args, ("model", "split", "limit"))
    if args.task == "retrieval":
        refuse(args, parser, NOT_RETRIEVAL, "does not go with --task retrieval")
        return evaluate(None, args.run, args.data, task="retrieval", **common, **given(args, RETRIEVAL_ONLY),
                        namespace=namespace)
    refuse(args, parser, RETRIEVAL_ONLY, "belongs to --task retrieval")
    return evaluate(args.prompt, args.run, args.data, **common,
                    **given(args, ("metric", "scoring", "batch_size", "base_url", "concurrency")),
                    cache=not args.no_cache, namespace=namespace)


def versus(args, namespace):
    """``--versus``: every approach on one prompt, one Report."""
    from nbkit.versus import prompt_vs_finetune

    if not args.prompt or len(args.prompt) > 1:
        raise UsageError("--versus compares the approaches on one --prompt")
    if not args.data:
        raise UsageError("--versus needs --data: its train split tunes and its test split scores")
    if args.epochs is not None and args.max_steps is not None:
        raise UsageError("--versus trains for --epochs or for --max-steps; give one")
    keywords = given(args, ("epochs", "max_steps", "limit"))
    if args.model:
        keywords["model"] = args.model
    if args.shots:
        try:
            keywords["shots"] = int(args.shots)
        except ValueError:
            raise UsageError(f"--versus takes one number of --shots, like 4; got {args.shots!r}") from None
    if split_csv(args.approaches):
        keywords["approaches"] = split_csv(args.approaches)
    if args.dev:
        keywords["dev"] = number_or_name(args.dev)
    if args.seeds is not None:
        if args.seeds < 1:
            raise UsageError(f"--seeds must be a positive number of seeds, got {args.seeds}")
        keywords["seeds"] = list(range(args.seeds))
    return prompt_vs_finetune(args.prompt[0], args.data, **keywords, namespace=namespace,
                              callbacks=callbacks(args.progress, per_run=True))


def search_words(items) -> list[dict]:
    """``--words refund=money,other=misc`` (repeatable) → one {label: word} dict per flag."""
    words = []
    for item in items or []:
        pairs = [p.split("=", 1) for p in split_csv(item)]
        if any(len(p) != 2 for p in pairs):
            raise UsageError(f"--words takes label=word pairs separated by commas; got {item!r}")
        words.append({k.strip(): v.strip() for k, v in pairs})
    return words


def search(args, namespace):
    """``--search``: rank candidate prompts on a dev split, register the best, print what won."""
    from nbkit.search import search_prompts

    if not args.prompt or args.run:
        raise UsageError("--search starts from one or more --prompt (and takes no --run)")
    keywords = given(args, ("paraphrases", "model", "scoring", "name", "batch_size", "strategy", "budget",
                            "triggers", "steps"))
    if args.shots:
        try:
            keywords["shots"] = [int(k) for k in split_csv(args.shots)]
        except ValueError:
            raise UsageError(f"--shots takes comma-separated whole numbers like 0,2,4; got {args.shots!r}") from None
    if split_csv(args.selection):
        keywords["selection"] = split_csv(args.selection)
    if split_csv(args.formats):
        keywords["formats"] = split_csv(args.formats)
    if args.dev:
        keywords["dev"] = number_or_name(args.dev)
    if args.metric:
        keywords["metric"] = args.metric[0]
    report = search_prompts(args.prompt, args.data, words=search_words(args.words), **keywords, namespace=namespace)
    print(f"best of {len(report.frame)} candidates on {report.info['rows']} dev rows: {report.info['best']} "
          f"({report.info['ranked_by']} {report.frame.iloc[0][report.info['ranked_by']]:.3f}), "
          f"registered as prompt {report.best.name!r}")
    return report
