"""Result objects with rich display: :class:`Report` (evaluation) and :class:`Generations`.

Each renders as HTML in JupyterLab, Colab and VS Code, and as plain text
everywhere else. Charts are inline SVG, so saved notebooks show them without a
plotting library or a running kernel.
"""

from __future__ import annotations

import html
import json
import os
import time
from pathlib import Path
from typing import Any, Sequence

class Report:
    """An evaluation: one row per target (prompt, or prompt + run), one column per metric.

    ``per_class()``, ``confusion()`` and ``disagreements()`` look inside; the HTML view shows the
    table, a bar chart, a confusion matrix per classification target and where targets disagree.

    Attributes:
        frame: pandas DataFrame indexed by target; metric columns (``accuracy``, ``f1``, …),
            then ``n`` (examples scored).
        predictions: per target, a DataFrame of input, output, expected and correct.
        info: what was evaluated: data, split, scoring, metrics, seconds per target, and
            the errors of targets that failed.
    """

    def __init__(self, frame, predictions: dict, info: dict):
        self.frame, self.predictions, self.info = frame, predictions, info

    @property
    def metrics(self) -> list[str]:
        return list(self.info.get("metrics", []))

    def __repr__(self):
        # three decimals, as the HTML table: the digits past them differ between runs (sums of log-probabilities)
        table = self.frame.to_string(float_format=lambda v: f"{v:.3f}")
        text = f"nbkit Report on {self.info.get('data')} [{self.info.get('split')}]\n{table}"
        seeds = self.seeds()
        if len(seeds):
            text += f"\nAcross seeds:\n{seeds.to_string()}"
        if self.info.get("api"):
            text += f"\nAPI requests:\n{self.api().to_string()}"
        for target, error in (self.info.get("errors") or {}).items():
            text += f"\n{target} failed: {error}"
        return text

    def api(self):
        """What each API target cost: requests sent, cache hits, tokens in and out, latency percentiles
        (ms) and how its labels were chosen; empty for local targets."""
        import pandas as pd

        frame = pd.DataFrame.from_dict(self.info.get("api", {}), orient="index")
        frame.index.name = "target"
        return frame

    def _target(self, target: str | None) -> str:
        from .errors import UnknownNameError

        names = list(self.predictions)
        if target is None:
            if not names:
                raise UnknownNameError("target", "(any)", names)
            return names[0]
        if target not in self.predictions:
            raise UnknownNameError("target", target, names)
        return target

    def per_class(self, target: str | None = None):
        """Precision, recall, F1 and support per label for ``target`` (default: the first)."""
        from .metrics import per_class

        target = self._target(target)
        frame = self.predictions[target]
        return per_class(list(frame["expected"]), list(frame["output"]), self.info.get("labels", {}).get(target))

    def confusion(self, target: str | None = None):
        """Counts of (expected, predicted) labels for ``target`` (default: the first)."""
        from .metrics import confusion

        target = self._target(target)
        frame = self.predictions[target]
        return confusion(list(frame["expected"]), list(frame["output"]), self.info.get("labels", {}).get(target))

    def disagreements(self, a: str | None = None, b: str | None = None):
        """The examples where exactly one of two targets is right (default: the first and the last).

        Returns a DataFrame with ``input`` (without the words every row's input shares), ``expected``, each
        target's output and ``right`` (which of the two got it), the examples ``a`` got wrong and ``b`` right first.
        """
        import pandas as pd
        from .events import distinct

        names = list(self.predictions)
        a, b = self._target(a), self._target(b if b is not None else names[-1])
        pa, pb = self.predictions[a], self.predictions[b]
        frame = pd.DataFrame({"input": distinct(list(pa["input"])), "expected": pa["expected"], a: pa["output"],
                              b: pb["output"]}, index=pa.index)
        frame["right"] = [b if (not x and y) else a if (x and not y) else None
                          for x, y in zip(pa["correct"], pb["correct"])]
        frame = frame[frame["right"].notna()]
        return frame.sort_values("right", key=lambda col: col != b, kind="stable")

    def intervals(self, metric: str | Sequence[str] | None = None, resamples: int = 1000):
        """Each target's metrics with a 95% interval: a DataFrame indexed by target with ``M``, ``M_low``
        and ``M_high`` per metric. Accuracy and exact match get Wilson's interval; other means over rows
        (token F1, ROUGE) the bootstrap over rows; macro scores and perplexity are recomputed on each
        resample. A fixed seed: the same report gives the same intervals."""
        import numpy as np
        import pandas as pd

        from . import stats
        from .metrics import COMPUTE, PER_ROW, macro_resampled

        wanted = [metric] if isinstance(metric, str) else list(metric or self.metrics)
        table = {}
        for target, frame in self.predictions.items():
            row, n = {}, len(frame)
            labels = self.info.get("labels", {}).get(target)
            for name in wanted:
                value = COMPUTE[name](frame, labels)
                if name in ("accuracy", "exact_match", "preference_accuracy"):
                    low, high = stats.wilson(int(sum(bool(c) for c in frame["correct"])), n)
                elif name in PER_ROW:
                    low, high = stats.bootstrap(PER_ROW[name](frame), resamples)
                elif n:
                    draws = np.random.default_rng(0).integers(0, n, size=(resamples, n))
                    values = (macro_resampled(name, list(frame["expected"]), list(frame["output"]), labels, draws)
                              if name in ("precision", "recall", "f1")
                              else np.array([COMPUTE[name](frame.iloc[d], labels) for d in draws]))
                    low, high = (float(v) for v in np.nanpercentile(values, [2.5, 97.5]))
                else:
                    low = high = float("nan")
                row.update({name: value, f"{name}_low": low, f"{name}_high": high})
            table[target] = row
        frame = pd.DataFrame.from_dict(table, orient="index")
        frame.index.name = "target"
        return frame

    def seeds(self, metric: str | Sequence[str] | None = None):
        """The targets that are one run per seed (``tune(seeds=[...])``: ``NAME-s0``, ``-s1``, …), one row
        per group: how many seeds, and per metric the mean, the standard deviation across seeds (n - 1)
        and the lowest and highest; empty when the report has no such group."""
        import pandas as pd

        from .stats import seed_groups

        wanted = [metric] if isinstance(metric, str) else list(metric or self.metrics)
        rows = {}
        for group, members in seed_groups(list(self.frame.index)).items():
            values, row = self.frame.loc[members], {"seeds": len(members)}
            for name in wanted:
                column = values[name].astype(float)
                row.update({f"{name}_mean": column.mean(), f"{name}_sd": column.std(ddof=1),
                            f"{name}_min": column.min(), f"{name}_max": column.max()})
            rows[group] = row
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "runs"
        return frame

    def compare(self, a: str | None = None, b: str | None = None, metric: str | Sequence[str] | None = None,
                resamples: int = 1000):
        """Whether ``b`` differs from ``a`` (default: the last target against the first) on the rows both
        were scored on, per metric (default: the report's).

        Returns a DataFrame indexed by metric: both values, ``difference`` (b - a), its 95% paired
        interval (``low``, ``high``: the rows resampled together), ``p_value`` (the exact McNemar test
        for accuracy and exact match, on the rows only one of them got right; else the paired
        bootstrap), the ``test`` used, and ``verdict``: which is better, or ``not distinguishable at
        this size`` when the interval holds 0 or p >= 0.05.
        """
        import pandas as pd

        from . import stats
        from .metrics import PER_ROW

        names = list(self.predictions)
        a, b = self._target(a), self._target(b if b is not None else names[-1])
        pa, pb = self.predictions[a], self.predictions[b]
        if len(pa) != len(pb) or list(pa["expected"]) != list(pb["expected"]):
            raise ValueError(f"{a!r} and {b!r} were not scored on the same rows; a paired comparison needs them")
        wanted = [metric] if isinstance(metric, str) else list(metric or self.metrics)
        rows = {}
        for name in wanted:
            if name in PER_ROW:
                ra, rb = PER_ROW[name](pa), PER_ROW[name](pb)
                result = stats.paired_bootstrap(ra, rb, resamples)
                va, vb = (sum(r) / len(r) if r else float("nan") for r in (ra, rb))
            else:  # macro F1, precision, recall, perplexity: recomputed on each resample of the rows
                result = _paired_recomputed(name, pa, pb, self.info.get("labels", {}).get(a), resamples)
                va, vb = result.pop("a"), result.pop("b")
            test, discordant = "paired bootstrap", None
            if name in ("accuracy", "exact_match", "preference_accuracy"):  # the rows only one got right: what disagreements() lists
                exact = stats.mcnemar(list(pa["correct"]), list(pb["correct"]))
                result["p_value"], test, discordant = exact["p_value"], "McNemar", f"{exact['only_a']}/{exact['only_b']}"
            verdict = ("not distinguishable at this size"
                       if not stats.distinguishable(result["low"], result["high"], result["p_value"])
                       else f"{b} better" if (result["difference"] > 0) != (name == "perplexity") else f"{a} better")
            rows[name] = {a: va, b: vb, "difference": result["difference"], "low": result["low"],
                          "high": result["high"], "p_value": result["p_value"], "test": test,
                          "only_a/only_b": discordant, "rows": len(pa), "verdict": verdict}
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "metric"
        return frame

    def _repr_html_(self):
        from .report_views import report_html

        return report_html(self)

    def to_dict(self) -> dict:
        """``info``, ``results`` (the table) and ``intervals`` (each metric's ``M_low`` / ``M_high``, by target)."""
        from .report_views import safe_intervals

        bounds = safe_intervals(self)
        bounds = {} if bounds is None else {str(k): {c: _plain(v) for c, v in row.items() if c.endswith(("_low", "_high"))}
                                            for k, row in bounds.iterrows()}
        return {
            "info": self.info,
            "results": {str(k): {c: _plain(v) for c, v in row.items()} for k, row in self.frame.iterrows()},
            "intervals": bounds,
        }

    def save(self, folder: str | os.PathLike, name: str | None = None) -> Path:
        """Write ``<name>.json`` (info, table, intervals) and ``<name>.csv`` (the table, then each metric's
        ``M_low`` and ``M_high``) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        if name is None:  # time-ordered, and two reports in one second do not collide
            stamp, k = time.strftime("report-%Y%m%d-%H%M%S"), 1
            while (folder / f"{stamp}-{k:02d}.json").exists():
                k += 1
            name = f"{stamp}-{k:02d}"
        path = folder / f"{name}.json"
        saved = self.to_dict()
        path.write_text(json.dumps(saved, indent=2, sort_keys=True, default=str) + "\n")
        import pandas as pd

        bounds = pd.DataFrame.from_dict(saved["intervals"], orient="index").reindex(self.frame.index.astype(str))
        table = self.frame.copy()
        for column in bounds.columns:
            table[column] = bounds[column].to_numpy()
        table.to_csv(folder / f"{name}.csv")
        with open(folder / f"{name}-predictions.jsonl", "w") as f:  # the per-example view, for jobs
            for target, frame in self.predictions.items():
                for row in frame.to_dict(orient="records"):
                    f.write(json.dumps({"target": target, **row}, default=_plain) + "\n")
        return path


def _paired_recomputed(name: str, pa, pb, labels, resamples: int) -> dict:
    """The paired percentile bootstrap of a metric that is not a mean over rows (macro precision, recall,
    F1; perplexity): the metric recomputed on each resample of the rows, both targets on the same draw."""
    import numpy as np

    from .metrics import COMPUTE, macro_resampled

    va, vb = COMPUTE[name](pa, labels), COMPUTE[name](pb, labels)
    n = len(pa)
    if not n:
        return {"a": va, "b": vb, "difference": vb - va, "low": float("nan"), "high": float("nan"),
                "p_value": float("nan")}
    draws = np.random.default_rng(0).integers(0, n, size=(resamples, n))
    if name in ("precision", "recall", "f1"):
        labels = labels or sorted(set(pa["expected"]) | set(pa["output"]) | set(pb["output"]))
        diffs = (macro_resampled(name, list(pb["expected"]), list(pb["output"]), labels, draws)
                 - macro_resampled(name, list(pa["expected"]), list(pa["output"]), labels, draws))
    else:
        diffs = np.array([COMPUTE[name](pb.iloc[d], labels) - COMPUTE[name](pa.iloc[d], labels) for d in draws])
    low, high = np.nanpercentile(diffs, [2.5, 97.5])
    p = min(1.0, 2 * min(float(np.mean(diffs <= 0)), float(np.mean(diffs >= 0))))
    return {"a": va, "b": vb, "difference": vb - va, "low": float(low), "high": float(high), "p_value": p}


def keep_report(report: "Report", runs) -> None:
    """Keep a report where jobs collect it: each evaluated run's ``evaluations/`` and ``$NBKIT_JOB_DIR``."""
    for run in runs:
        report.save(run.path / "evaluations")
    if os.environ.get("NBKIT_JOB_DIR"):
        report.save(os.path.join(os.environ["NBKIT_JOB_DIR"], "reports"))


def _plain(value: Any):
    try:
        return value.item()  # numpy scalar
    except AttributeError:
        return value


class Generations:
    """Outputs of a prompt on some rows: ``frame`` has input, output and (when known) expected."""

    def __init__(self, frame, prompt: str, model: str):
        self.frame, self.prompt, self.model = frame, prompt, model

    @property
    def outputs(self) -> list[str]:
        return list(self.frame["output"])

    def __repr__(self):
        if len(self.frame) == 1 and "expected" not in self.frame:  # a chat cell: just the answer
            return self.frame["output"].iloc[0]
        return self.frame.to_string()

    def _repr_html_(self):
        rows = "".join(
            "<tr>" + "".join(
                f"<td style='text-align:left;white-space:pre-wrap;vertical-align:top'>{html.escape(str(v))}</td>"
                for v in row
            ) + "</tr>"
            for row in self.frame.itertuples(index=False)
        )
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.frame.columns)
        return (f"<div class='nbkit-generations'><b>{html.escape(self.prompt)}</b> on {html.escape(self.model)}"
                f"<table><tr>{head}</tr>{rows}</table></div>")
