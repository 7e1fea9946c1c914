"""``nbkit.evaluate`` and ``nbkit.generate``: measure prompts and tuned runs side by side.

Targets are prompts (zero-/few-shot on the base model) and runs (the prompt a
run was trained with, on its base model with its adapter). Targets that share a
base model share one loaded copy; adapters are swapped onto it, not reloaded.
Each target is scored by its family's predictor (:mod:`nbkit.predict`).
"""

from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

from ..config import DEFAULT_MODEL, data_spec
from ..data import load_data
from ..encoding import encode_contexts
from ..errors import ConfigError, NbkitError
from ..inference import generate as generate_ids
from ..metrics import compute_metrics
from ..models import family_of, load_model
from ..predict import Target, predict, run_model
from ..prompts import Prompt
from ..results import Generations, Report, keep_report
from ..runs import Run
from ..session import get_prompt, get_run
from .harness import lm_eval_task
from .retrieval import evaluate_retrieval
from .targets import as_list, metrics_for, prepared, rows_of, run_task, targets

__all__ = ["evaluate", "evaluate_retrieval", "generate", "lm_eval_task", "metrics_for", "run_task", "score"]


def evaluate(
    prompt: Prompt | str | Sequence | None = None,
    run: Run | str | Sequence | None = None,
    data: Any = None,
    *,
    model: str | None = None,
    split: str = "test",
    metric: str | Sequence[str] | None = None,
    limit: int | None = None,
    scoring: str = "sum",
    batch_size: int = 16,
    base_url: str | None = None,
    cache: bool = True,
    concurrency: int = 8,
    namespace: Mapping[str, Any] | None = None,
    task: str | None = None,
    k: int = 10,
    corpus: Any = None,
):
    """Evaluate prompts and tuned runs on one split; one row per target.

    Args:
        prompt: a prompt, its name, or a list of them (zero-/few-shot on the base model).
        run: a run, its name or directory, or a list (the run's own prompt, with its adapter).
        data: data spec; defaults to the data the (first) run was trained on. A multi-task run is
            evaluated with the prompt of the task trained on this data spec.
        model: base model for prompt targets (runs use the model they were trained on).
        split: which split to score; ``test`` by default.
        metric: for prompts with choices ``accuracy``, ``f1``, ``precision``, ``recall`` (macro;
            default accuracy and f1); for free text ``exact_match``, ``token_f1``, ``rouge1``,
            ``rouge2``, ``rougeL``, ``format`` (one line, no longer than the expected answer), ``perplexity``
            (default exact_match, token_f1, rougeL); on preference data (``chosen`` and ``rejected``
            columns) ``preference_accuracy`` and ``margin``, the default there.
            See :mod:`nbkit.metrics`.
        limit: score only the first ``limit`` rows.
        scoring: ``sum`` (log-likelihood of the label) or ``mean`` (length-normalised).
        batch_size: sequences per forward pass.
        base_url: for ``model="openai:NAME"``: the OpenAI-compatible server (default
            ``$OPENAI_BASE_URL``, else OpenAI). Labels are then chosen by the first token's
            log-probabilities where the server returns them, else from the generated text; the
            report says which, and ``info["api"]`` has requests, tokens, cache hits and latencies.
        cache: answer API requests from the on-disk cache when the same request was sent before.
        concurrency: API requests in flight at once.
        namespace: where a data variable name is looked up.
        task: ``retrieval`` compares the base encoder with embedding runs on a search data set
            (``sample:search``): recall@1, recall@k, MRR and nDCG@k (``k``, over ``corpus``, default
            the data's own documents). A classification run (an encoder with a head) needs no task:
            it is scored like a prompt with choices, so both sit in one table.

    Returns:
        A :class:`nbkit.results.Report`.
    """
    if task not in (None, "retrieval"):
        raise ConfigError("task", f"must be 'retrieval' or left out, got {task!r}")
    if task == "retrieval":
        if prompt:
            raise ConfigError("prompt", "does not go with task='retrieval', which compares encoders (runs)")
        return evaluate_retrieval(run, data if data is not None else "sample:search", model=model, corpus=corpus,
                                  split=split, k=k, limit=limit, namespace=namespace)
    if scoring not in ("sum", "mean"):
        raise ConfigError("scoring", f"must be 'sum' or 'mean', got {scoring!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ConfigError("limit", f"must be a positive integer, got {limit!r}")
    found = targets(prompt, run, model, namespace, data)
    if family_of(model or DEFAULT_MODEL) == "api" and "perplexity" in as_list(metric):
        raise ConfigError("metric", "perplexity needs the model's token probabilities of the expected text; "
                          "API models are scored on their answers")
    if data is None:
        data = next((run_task(t.run)["data"] for t in found if t.run is not None), None)
        if data is None or str(data).startswith("<"):
            raise ConfigError("data", "is needed: which data should the prompts be evaluated on?")
    rows, train_rows, columns = rows_of(data, split, limit, namespace)
    report = score(prepared(found, columns, metric), rows, train_rows, scoring=scoring, batch_size=batch_size,
                   api={"base_url": base_url, "cache": cache, "concurrency": concurrency},
                   info={"data": data_spec(data), "split": split})
    keep_report(report, [t.run for t in found if t.run is not None])
    return report


def score(prepared_targets: Sequence[tuple[Target, Prompt, list[str]]], rows, train_rows, *, scoring: str = "sum",
          batch_size: int = 16, api: Mapping | None = None, info: Mapping | None = None) -> Report:
    """A report of each prepared target's metrics on ``rows``; a target that fails with an unexpected
    error is reported in ``info["errors"]`` and the others are kept (an nbkit error stops everything).

    Args:
        prepared_targets: (target, prompt resolved for the rows, metric names) of each target.
        rows: the rows scored.
        train_rows: where few-shot examples come from.
        scoring, batch_size, api: as :func:`nbkit.predict.predict` takes them.
        info: what the report says of the data (``data``, ``split``).
    """
    import pandas as pd

    results, predictions, errors, seconds, api_stats = {}, {}, {}, {}, {}
    for t, p, names in prepared_targets:
        started = time.monotonic()
        try:
            out = predict(t, p, rows, train_rows, scoring=scoring, batch_size=batch_size,
                          perplexity="perplexity" in names, api=api,
                          preference=bool(set(names) & {"preference_accuracy", "margin"}))
        except NbkitError:
            raise
        except Exception as e:  # keep the finished targets; report this one
            errors[t.label] = f"{type(e).__name__}: {e}"
            continue
        if out.error:  # an API target: the rows answered before a failure are kept, the failure reported
            errors[t.label] = out.error
        if out.stats is not None:
            api_stats[t.label] = {**out.stats, "scoring": out.how}
        results[t.label] = {**compute_metrics(out.frame, names, p.choices), "n": len(out.frame)}
        seconds[t.label] = round(time.monotonic() - started, 2)
        predictions[t.label] = out.frame
    if errors and not results:  # nothing to show: say why instead of an empty table
        raise NbkitError("every target failed: " + "; ".join(f"{label}: {e}" for label, e in errors.items()))
    table = pd.DataFrame.from_dict(results, orient="index")
    table.index.name = "target"
    metric_names = list(dict.fromkeys(m for *_, names in prepared_targets for m in names))
    has_choices = any(p.choices for _, p, _ in prepared_targets)
    info = {
        **dict(info or {}), "rows": len(rows), "metrics": metric_names, "errors": errors, "seconds": seconds,
        "labels": {t.label: p.choices for t, p, _ in prepared_targets if p.choices and t.label in results},
        "scoring": f"label log-likelihood ({scoring})" if has_choices else "chosen vs rejected log-likelihood"
        if any(set(n) & {"preference_accuracy", "margin"} for *_, n in prepared_targets) else "greedy generation",
    }
    if api_stats:  # what the API targets cost, and how their labels were chosen
        info["api"] = api_stats
        if all(t.family == "api" for t, *_ in prepared_targets):
            info["scoring"] = "; ".join(sorted({s["scoring"] for s in api_stats.values()}))
    return Report(table, predictions, info)


def generate(
    prompt: Prompt | str,
    data: Any = None,
    *,
    model: str | None = None,
    adapter: Run | str | None = None,
    split: str = "test",
    limit: int = 5,
    max_new_tokens: int = 64,
    base_url: str | None = None,
    cache: bool = True,
    namespace: Mapping[str, Any] | None = None,
):
    """Render ``prompt`` on ``limit`` rows and generate; with no data, send the text as it is.

    Args:
        prompt: a prompt or its name.
        data: data spec; ``None`` for a template without variables (a chat cell).
        model: base model spec (defaults to the adapter's, else the embedded model).
        adapter: a run whose adapter is applied.
        split: which split the rows come from.
        limit: how many rows.
        max_new_tokens: the longest output.
        base_url: for ``model="openai:NAME"``: the OpenAI-compatible server.
        cache: answer API requests from the on-disk cache when they were sent before.
        namespace: where a data variable name is looked up.

    Returns:
        A :class:`nbkit.results.Generations` with input, output and expected (when known).
    """
    import pandas as pd

    prompt = get_prompt(prompt)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigError("limit", f"must be a positive integer, got {limit!r}")
    if adapter is not None and family_of(model or DEFAULT_MODEL) == "api":
        raise ConfigError("adapter", f"cannot be applied to the API model {model!r}; serve the run with "
                          "`nbkit serve --run RUN` and use --model openai:RUN")
    run = get_run(adapter, namespace) if adapter is not None else None
    quantize, adapter_dir = None, None
    if run is not None:
        if model and model != run.config.get("model"):
            raise ConfigError("model", f"is {model!r} but run {run.name!r} was trained on {run.config.get('model')!r}")
        model, quantize, adapter_dir = run_model(run)
    if data is None:
        if prompt.variables:
            raise ConfigError("data", f"is needed: prompt {prompt.name!r} uses {', '.join(sorted(prompt.variables))}")
        rows, train_rows = [{}], []
    else:
        splits = load_data(data, namespace)
        if split not in splits:
            raise ConfigError("split", f"{split!r} is not in the data; splits: {', '.join(splits)}")
        prompt.check(splits[split].column_names)
        rows, train_rows = list(splits[split])[:limit], list(splits["train"])
    if family_of(model or DEFAULT_MODEL) == "api":
        from ..models.api import ApiModel
        from ..predict.api import chat

        api = ApiModel(model, base_url, cache=cache)
        outputs, model_name = chat(api, prompt, rows, train_rows, max_new_tokens), api.spec
    else:
        loaded = load_model(model or DEFAULT_MODEL, quantize=quantize)
        contexts = encode_contexts(prompt, rows, loaded.tokenizer, train_rows)
        with loaded.adapter(adapter_dir) as lm:
            outputs = generate_ids(lm, loaded.tokenizer, contexts, max_new_tokens=max_new_tokens)
        model_name = loaded.name
    frame = pd.DataFrame({"input": [prompt.render(r) for r in rows], "output": outputs})
    if data is not None and prompt.target is not None or (data is not None and "label" in rows[0]):
        p = prompt.resolve_target(rows[0].keys())
        frame["expected"] = [p.render_target(r) for r in rows]
    label = f"{prompt.name} + {run.name}" if run else prompt.name
    return Generations(frame, label, model_name)
