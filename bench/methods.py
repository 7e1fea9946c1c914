"""Every tuning method on sample:intent: accuracy, trainable parameters, train time, peak memory.

Each method trains in its own process (so peak memory is that method's alone),
with its default options and learning rate, for the same number of epochs,
then is evaluated on the test split (never trained on). The zero-shot prompt
is the baseline row. Runs one method after another, never in parallel: two
trainings on one machine slow each other down and the times would lie.

    .venv/bin/python bench/methods.py                  # all methods, 2 epochs (~30 min on 2 CPU cores)
    .venv/bin/python bench/methods.py --write          # ... and update bench/README.md, README.md, the quickstart
    .venv/bin/python bench/methods.py --quick          # 2 steps each, 8 rows: checks the script runs
    .venv/bin/python bench/methods.py --methods lora --precision bf16 --write
                                                       # lora beside lora with bf16 autocast (own table)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import peak_rss_mb, replace_block, substitute_block  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
METHODS = ["lora", "qlora", "dora", "ia3", "prompt-tuning", "p-tuning", "prefix-tuning", "full"]
PROMPT = dict(
    template="Which team should handle this customer message: refund, delivery, account or other?\n"
             "Message: {{ text }}\nTeam:",
    name="intent", target="{{ label }}", choices=["refund", "delivery", "account", "other"],
)


def one(method: str, epochs: float, quick: bool) -> dict:
    """Train and evaluate one method in this process; the numbers as a dict.

    ``METHOD@PRECISION`` (``lora@bf16``) trains with that precision (nbkit's ``precision=``; the evaluation
    runs as every evaluation does)."""
    import nbkit

    prompt = nbkit.Prompt(**PROMPT)
    limit = 8 if quick else None
    if method == "zero-shot":
        started = time.monotonic()
        report = nbkit.evaluate(prompt, None, "sample:intent", limit=limit)
        row = {"trainable_parameters": 0, "train_seconds": 0.0, "eval_seconds": time.monotonic() - started}
    else:
        steps = {"max_steps": 2} if quick else {"epochs": epochs}
        name, _, precision = method.partition("@")
        run = nbkit.tune(prompt, "sample:intent", method=name, name=method.replace("@", "-"), callbacks=[],
                         precision=precision or "auto", **steps)
        started = time.monotonic()
        report = nbkit.evaluate(None, run, "sample:intent", limit=limit)
        m = run.metrics
        row = {"trainable_parameters": m["trainable_parameters"], "train_seconds": m["train_seconds"],
               "tokens_per_second": m["tokens_per_second"], "final_loss": m["train_loss"],
               "eval_seconds": time.monotonic() - started}
    result = report.frame.iloc[0]
    peak = peak_rss_mb()
    correct = [int(c) for c in next(iter(report.predictions.values()))["correct"]]  # per test row, for McNemar
    return {"method": method, "accuracy": float(result["accuracy"]), "f1": float(result["f1"]),
            "rows": int(result["n"]), "peak_memory_mb": round(peak), "correct": correct, **row}


def against(r: dict, base: dict | None) -> str:
    """``r``'s accuracy minus ``base``'s on the same test rows: paired-bootstrap 95% interval, exact McNemar p."""
    from nbkit import stats

    if base is None or r is base or not r.get("correct") or len(r["correct"]) != len(base.get("correct", [])):
        return "–"
    d = stats.paired_bootstrap(base["correct"], r["correct"], resamples=2000)
    p = stats.mcnemar(base["correct"], r["correct"])["p_value"]
    verdict = "" if stats.distinguishable(d["low"], d["high"], p) else " (not distinguishable)"
    return f"{d['difference']:+.3f} [{d['low']:+.2f}, {d['high']:+.2f}], p = {p:.2g}{verdict}"


def table(rows: list[dict], epochs: float) -> str:
    from nbkit import stats

    lines = [
        "| method | accuracy [95%] | − lora [95%], McNemar p | macro-F1 | trainable parameters | train time | "
        "tokens/s | peak memory |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = next((r for r in rows if r["method"] == "lora"), None)
    for r in rows:
        name, _, precision = r["method"].partition("@")
        label = f"{name}, {precision}" if precision else name
        tps = f"{r['tokens_per_second']:.0f}" if r.get("tokens_per_second") else "–"
        time_ = f"{r['train_seconds']:.0f} s" if r["train_seconds"] else "–"
        low, high = stats.wilson(round(r["accuracy"] * r["rows"]), r["rows"])
        lines.append(f"| {label} | {r['accuracy']:.3f} [{low:.2f}, {high:.2f}] | {against(r, base)} | {r['f1']:.3f} | "
                     f"{r['trainable_parameters']:,} | {time_} | {tps} | {r['peak_memory_mb'] / 1024:.1f} GiB |")
    return "\n".join(lines)


def replace_block_in_notebook(path: Path, marker: str, text: str) -> None:
    """The same in the markdown cells of a notebook (outputs untouched: no re-execution needed)."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    found = False
    for cell in nb.cells:
        replaced = substitute_block(cell.source, marker, text) if cell.cell_type == "markdown" else None
        if replaced is not None:
            cell.source, found = replaced, True
    if not found:
        raise SystemExit(f"{path} has no markdown cell with a <!-- {marker} --> block")
    nbformat.write(nb, path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs per method (default 2)")
    parser.add_argument("--quick", action="store_true", help="2 steps and 8 rows each: does it run?")
    parser.add_argument("--precision", help="also train each method with this precision (bf16, fp16), in rows of "
                        "their own; --write then updates only bench/README.md's precision table")
    parser.add_argument("--write", action="store_true", help="update bench/README.md, README.md and the quickstart")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.epochs, args.quick)), flush=True)
        return 0

    rows = []
    with tempfile.TemporaryDirectory() as runs:
        env = {**os.environ, "NBKIT_RUNS_DIR": runs, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        methods = args.methods.split(",")
        if args.precision:
            methods = [m for name in methods for m in (name, f"{name}@{args.precision}")]
        for method in ["zero-shot"] + methods:
            cmd = [sys.executable, __file__, "--one", method, "--epochs", str(args.epochs)] + (["--quick"] if args.quick else [])
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            found = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not found:
                print(f"{method}: failed\n{done.stderr[-3000:]}", file=sys.stderr)
                return 1
            rows.append(json.loads(found[-1][len("RESULT "):]))
            r = rows[-1]
            print(f"{method:14} accuracy {r['accuracy']:.3f}  train {r['train_seconds']:.0f}s  "
                  f"peak {r['peak_memory_mb']} MiB", file=sys.stderr, flush=True)
    what = "2 steps, 8 test rows" if args.quick else f"{args.epochs:g} epochs"
    text = table(rows, args.epochs) + common.caption(
        args.quick, f"`sample:intent`: {what}; each method's default options and learning rate; accuracy on the "
                    f"{rows[0]['rows']} test rows with its Wilson 95% interval; each method minus lora on the same "
                    "rows, with its paired-bootstrap interval and exact McNemar p (not distinguishable: the interval "
                    "holds 0 or p ≥ 0.05).")
    if args.precision:  # a table of its own, in bench/README.md only
        common.publish(text, args.quick, args.write, "methods-precision-table", f"methods-{args.precision}", rows)
        return 0
    common.publish(text, args.quick, args.write, "methods-table", "methods", rows)
    if args.write and not args.quick:  # the main table also stands in README.md and the quickstart
        replace_block(ROOT / "README.md", "methods-table", text)
        replace_block_in_notebook(ROOT / "notebooks" / "00_quickstart.ipynb", "methods-table", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
