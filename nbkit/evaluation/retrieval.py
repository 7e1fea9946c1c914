"""Retrieval evaluation: the base encoder and embedding runs ranked on the same queries."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from ..data import load_data
from ..errors import ConfigError, DataError
from ..metrics import retrieval_metrics
from ..models import EncoderModel, load_model
from ..results import Report, keep_report
from ..retrieval import Index, fingerprint, load_corpus, run_key
from ..session import get_run


def evaluate_retrieval(runs=(), data: Any = "sample:search", *, model: str | None = None, corpus: Any = None,
                       split: str = "test", k: int = 10, limit: int | None = None,
                       namespace: Mapping[str, Any] | None = None):
    """recall@1, recall@k, MRR and nDCG@k of the base encoder and each embedding run, side by side.

    The split's rows need ``query`` and ``relevant`` (a document id, or a list of them). The
    corpus defaults to the data's own (``sample:search`` has one).
    """
    import pandas as pd

    runs = [get_run(r, namespace) for r in ([] if runs is None else runs if isinstance(runs, (list, tuple)) else [runs])]
    base = model or (runs[0].config.get("model") if runs else "minilm-l6")
    for run in runs:
        if run.task != "embedding":
            raise ConfigError("run", f"{run.name!r} is not an embedding run; --task retrieval compares encoders")
        if run.config.get("model") != base:
            raise ConfigError("model", f"is {base!r} but run {run.name!r} tuned {run.config.get('model')!r}")
    if not isinstance(k, int) or k < 1:
        raise ConfigError("k", f"must be a positive integer, got {k!r}")
    docs = load_corpus(corpus if corpus is not None else data, namespace)
    rows = list(load_data(data, namespace, split=split))[:limit]
    if not rows or "query" not in rows[0] or "relevant" not in rows[0]:
        have = ", ".join(sorted(rows[0])) if rows else "no rows"
        raise DataError(f"retrieval evaluation needs `query` and `relevant` columns in the {split} split; it has {have}")
    ids = {d["id"] for d in docs}
    relevant = [[str(x) for x in (r["relevant"] if isinstance(r["relevant"], list) else [r["relevant"]])] for r in rows]
    unknown = sorted({x for rel in relevant for x in rel} - ids)
    if unknown:
        raise DataError(f"relevant document(s) {', '.join(unknown[:3])} are not in the corpus")
    queries = [str(r["query"]) for r in rows]
    encoder = load_model(base)
    if not isinstance(encoder, EncoderModel):
        raise ConfigError("model", f"{base!r} is not a sentence encoder; --task retrieval compares encoders")
    results, predictions, seconds = {}, {}, {}
    targets = [(base, None)] + [(f"{base} + {run.name}", run) for run in runs]
    for label, run in targets:
        started = time.monotonic()
        vectors = encoder.encode([d["text"] for d in docs], run=run)
        built = Index(Path("."), docs, vectors, base, run_key(run), fingerprint(docs))
        ranked = [[docs[j]["id"] for j, _ in row] for row in built.top(queries, max(k, 10))]
        results[label] = {**retrieval_metrics(ranked, relevant, k), "n": len(rows)}
        seconds[label] = round(time.monotonic() - started, 2)
        predictions[label] = pd.DataFrame({
            "input": queries, "output": [" ".join(r[:3]) for r in ranked], "expected": [" ".join(r) for r in relevant],
            "correct": [bool(r) and r[0] in rel for r, rel in zip(ranked, relevant)],
        })
    table = pd.DataFrame.from_dict(results, orient="index")
    table.index.name = "target"
    metrics = [m for m in table.columns if m != "n"]
    info = {"data": data if isinstance(data, str) else f"<{type(data).__name__}>", "split": split, "rows": len(rows),
            "metrics": metrics, "errors": {}, "seconds": seconds, "labels": {},
            "scoring": f"cosine similarity of {base} embeddings, {len(docs)} documents", "task": "retrieval"}
    report = Report(table, predictions, info)
    keep_report(report, runs)
    return report
