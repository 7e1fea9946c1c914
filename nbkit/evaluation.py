"""``nbkit.evaluate`` and ``nbkit.generate``: measure prompts and tuned runs side by side.

Targets are prompts (zero-/few-shot on the base model) and runs (the prompt a
run was trained with, on its base model with its adapter). Targets that share a
base model share one loaded copy; adapters are swapped onto it, not reloaded.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .data import load_data
from .encoding import encode_choice, encode_contexts
from .errors import ConfigError, DataError, NbkitError
from .methods import get_method
from .metrics import CLASSIFICATION, DEFAULTS, GENERATION, compute_metrics, kind_of, normalize
from .api import is_api_model
from .models import DEFAULT_MODEL, load_model
from .prompts import Prompt, get_prompt
from .runs import Run, get_run
from .seq2seq import is_seq2seq, predict as seq2seq_predict



@dataclass
class Target:
    label: str
    prompt: Prompt
    run: Run | None
    model: str
    quantize: str | None
    adapter: Any = None  # the adapter directory to apply, if any


def run_model(run: Run) -> tuple[str, str | None, Any]:
    """(model spec, quantization, adapter directory) that reproduce ``run``.

    A full fine-tune saved a whole model: that directory is the model and there is no adapter.
    """
    if run.is_full_model:
        return str(run.adapter_path), None, None
    config = run.config
    return config.get("model", DEFAULT_MODEL), get_method(config.get("method", "lora")).quantize, run.adapter_path


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def run_task(run: Run, data=None) -> dict:
    """The task of ``run`` to evaluate on ``data``: its only one, or the one trained on that data spec."""
    tasks = run.tasks
    if len(tasks) == 1:
        return tasks[0]
    matching = [t for t in tasks if data is not None and t["data"] == data]
    if len(matching) == 1:
        return matching[0]
    trained = "; ".join(f"{t['name']} on {t['data']}" for t in tasks)
    what = "give --data" if data is None else f"{data!r} is none of them; give one of their data specs"
    raise ConfigError("data", f"picks the task of multi-task run {run.name!r} to evaluate ({trained}): {what}")


def _targets(prompts, runs, model, namespace, data=None) -> list[Target]:
    targets = []
    for p in _as_list(prompts):
        p = get_prompt(p)
        targets.append(Target(p.name, p, None, model or DEFAULT_MODEL, None))
    for r in _as_list(runs):
        run = get_run(r, namespace)
        if not run.has_adapter():
            raise NbkitError(f"run {run.name!r} has no adapter (status: {run.status}); it did not finish training")
        config = run.config
        if config.get("task") == "embedding":
            raise ConfigError("run", f"{run.name!r} tuned an encoder for embeddings; evaluate it with "
                              "--task retrieval (nbkit.evaluate(run=..., task='retrieval'))")
        if config.get("task") == "classification":  # an encoder with a head: its own model, no adapter to swap
            p = Prompt.from_dict(run.prompt)
            targets.append(Target(f"{p.name} + {run.name}", p, run, config["model"], None))
            continue
        if model and model != config.get("model"):
            raise ConfigError("model", f"is {model!r} but run {run.name!r} was trained on {config.get('model')!r}; "
                              "an adapter only fits the base model it was trained with")
        p = Prompt.from_dict(run_task(run, data)["prompt"])
        targets.append(Target(f"{p.name} + {run.name}", p, run, *run_model(run)))
    if not targets:
        raise ConfigError("prompt", "nothing to evaluate: give at least one --prompt or --run")
    return targets


def _metrics_for(prompt: Prompt, metric) -> list[str]:
    kind = kind_of(prompt.choices)
    allowed = CLASSIFICATION if kind == "classification" else GENERATION
    chosen = _as_list(metric) or list(DEFAULTS[kind])
    for m in chosen:
        if m not in allowed:
            what = "a classification prompt (with choices)" if prompt.choices else "a free-text prompt"
            raise ConfigError("metric", f"{m!r} does not fit {what} {prompt.name!r}; use one of: {', '.join(allowed)}")
    return chosen


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
            ``rouge2``, ``rougeL``, ``perplexity`` (default exact_match, token_f1, rougeL).
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
    import pandas as pd

    from .results import Report

    if task not in (None, "retrieval"):
        raise ConfigError("task", f"must be 'retrieval' or left out, got {task!r}")
    if task == "retrieval":
        if prompt:
            raise ConfigError("prompt", "does not go with task='retrieval', which compares encoders (runs)")
        from .encoders import evaluate_retrieval

        return evaluate_retrieval(run, data if data is not None else "sample:search", model=model, corpus=corpus,
                                  split=split, k=k, limit=limit, namespace=namespace)

    if scoring not in ("sum", "mean"):
        raise ConfigError("scoring", f"must be 'sum' or 'mean', got {scoring!r}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ConfigError("limit", f"must be a positive integer, got {limit!r}")
    targets = _targets(prompt, run, model, namespace, data)
    api_options = {"base_url": base_url, "cache": cache, "concurrency": concurrency}
    if is_api_model(model) and "perplexity" in _as_list(metric):
        raise ConfigError("metric", "perplexity needs the model's token probabilities of the expected text; "
                          "API models are scored on their answers")
    if data is None:
        data = next((run_task(t.run)["data"] for t in targets if t.run is not None), None)
        if data is None or str(data).startswith("<"):
            raise ConfigError("data", "is needed: which data should the prompts be evaluated on?")
    splits = load_data(data, namespace)
    if split not in splits:
        raise ConfigError("split", f"{split!r} is not in the data; splits: {', '.join(splits)}")
    rows = list(splits[split])[:limit]
    train_rows = list(splits["train"])
    metric_names: list[str] = []
    prepared = []
    for t in targets:  # check every target before any scoring starts
        p = t.prompt.resolve_target(splits[split].column_names)
        p.check(splits[split].column_names)
        names = _metrics_for(p, metric)
        seq2seq = not is_api_model(t.model) and is_seq2seq(t.model)
        if "perplexity" in names and seq2seq:
            raise ConfigError("metric", "perplexity is for decoders; an encoder-decoder is scored on its generations")
        metric_names += [m for m in names if m not in metric_names]
        prepared.append((t, p, names, seq2seq))

    results, predictions, errors, seconds, api_stats, scoring_how = {}, {}, {}, {}, {}, {}
    for t, p, names, seq2seq in prepared:
        started = time.monotonic()
        if is_api_model(t.model):  # rows answered before a failure are kept, the failure reported
            frame, scoring_how[t.label], api_stats[t.label], failed = _predict_api(t, p, rows, train_rows, api_options)
            if failed:
                errors[t.label] = failed
        else:
            try:
                frame = _predict_local(t, p, rows, train_rows, scoring, batch_size, names, seq2seq)
            except NbkitError:
                raise
            except Exception as e:  # keep the finished targets; report this one
                errors[t.label] = f"{type(e).__name__}: {e}"
                continue
        results[t.label] = {**compute_metrics(frame, names, p.choices), "n": len(frame)}
        seconds[t.label] = round(time.monotonic() - started, 2)
        predictions[t.label] = frame
    table = pd.DataFrame.from_dict(results, orient="index")
    table.index.name = "target"
    info = {
        "data": data if isinstance(data, str) else f"<{type(data).__name__}>", "split": split, "rows": len(rows),
        "metrics": metric_names, "errors": errors, "seconds": seconds,
        "labels": {t.label: p.choices for t, p, *_ in prepared if p.choices and t.label in results},
        "scoring": f"label log-likelihood ({scoring})" if any(p.choices for _, p, *_ in prepared) else "greedy generation",
    }
    if api_stats:  # what the API targets cost, and how their labels were chosen
        info["api"] = {label: {**stats, "scoring": scoring_how[label]} for label, stats in api_stats.items()}
        if all(is_api_model(t.model) for t, *_ in prepared):
            info["scoring"] = "; ".join(sorted(set(scoring_how.values())))
    report = Report(table, predictions, info)
    _save(report, [t.run for t in targets if t.run is not None])
    return report


def _predict_local(t: Target, p: Prompt, rows, train_rows, scoring: str, batch_size: int, names, seq2seq: bool):
    """A local target's predictions: an encoder classifier run, an encoder-decoder, or a decoder (with its
    adapter swapped onto the session's base model)."""
    if t.run is not None and t.run.config.get("task") == "classification":
        from .encoders import predict_classifier

        return predict_classifier(t.run, p, rows)
    if seq2seq:  # T5, BART: greedy text-to-text generation
        return seq2seq_predict(t.model, t.adapter, p, rows, batch_size=max(1, batch_size // 2))
    loaded = load_model(t.model, quantize=t.quantize)
    with loaded.adapter(t.adapter) as lm:
        return _predict(lm, loaded.tokenizer, p, rows, train_rows, scoring, batch_size,
                        perplexity="perplexity" in names)


def _predict_api(target: Target, prompt: Prompt, rows, train_rows, options: Mapping):
    """(frame, how labels were chosen, request statistics, error text) of an API target.

    The rows answered before a failure are kept (and cached on disk, so a re-run sends only the
    rest); a target none of whose rows was answered raises the error.
    """
    from .api import ApiModel, predict

    api = ApiModel(target.model, **options)
    frame, how, errors = predict(api, prompt, rows, train_rows)
    if errors and not len(frame):
        raise errors[0]
    failed = f"{len(errors)} of {len(rows)} rows failed: {errors[0]}" if errors else None
    return frame, how, api.stats.summary(), failed


def _predict(lm, tokenizer, prompt: Prompt, rows, train_rows, scoring: str, batch_size: int,
             perplexity: bool = False):
    """One row per example: input, output, expected, correct (and nll, tokens for perplexity)."""
    import pandas as pd

    from .inference import completion_logprobs, generate, score_choices

    contexts = encode_contexts(prompt, rows, tokenizer, train_rows)
    expected = [prompt.render_target(row) for row in rows]
    if prompt.choices:
        unknown = sorted({e for e in expected if e not in prompt.choices})
        if unknown:
            raise DataError(f"the data has label(s) {', '.join(map(repr, unknown))} that are not among the "
                            f"choices of prompt {prompt.name!r}: {', '.join(prompt.choices)}")
        choice_ids = [encode_choice(prompt, c, tokenizer) for c in prompt.choices]
        empty = [c for c, ids in zip(prompt.choices, choice_ids) if not ids]
        if empty:
            raise ConfigError("choices", f"{empty[0]!r} tokenizes to nothing")
        scores = score_choices(lm, tokenizer.pad_token_id, contexts, choice_ids, batch_size, normalize=scoring == "mean")
        outputs = [prompt.choices[k] for k in scores.argmax(axis=1)]
    else:
        longest = max(len(tokenizer(e, add_special_tokens=False)["input_ids"]) for e in expected)
        outputs = generate(lm, tokenizer, contexts, max_new_tokens=longest + 16, batch_size=max(1, batch_size // 2))
    inputs = [prompt.render(row) for row in rows]
    frame = pd.DataFrame({"input": inputs, "output": outputs, "expected": expected,
                          "correct": [normalize(o) == normalize(e) for o, e in zip(outputs, expected)]})
    if perplexity:  # of the expected text, given the prompt
        targets = [encode_choice(prompt, e, tokenizer) for e in expected]
        frame["nll"] = [-x for x in completion_logprobs(lm, tokenizer.pad_token_id, contexts, targets, batch_size)]
        frame["tokens"] = [len(t) for t in targets]
    return frame


def _save(report, runs: Sequence[Run]) -> None:
    """Keep the report where jobs collect it: each run's folder and ``$NBKIT_JOB_DIR``."""
    for run in runs:
        report.save(run.path / "evaluations")
    if os.environ.get("NBKIT_JOB_DIR"):
        report.save(os.path.join(os.environ["NBKIT_JOB_DIR"], "reports"))


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

    from .inference import generate as generate_ids
    from .results import Generations

    prompt = get_prompt(prompt)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        raise ConfigError("limit", f"must be a positive integer, got {limit!r}")
    if adapter is not None and is_api_model(model):
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
    if is_api_model(model):
        from .api import ApiModel, chat

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
