"""How far the seed alone moves a tuned run: LoRA and prompt tuning on sample:intent, one run per seed.

``nbkit.tune(prompt, "sample:intent", method=M, seeds=[0, 1, 2])`` with the methods table's
settings (bench/methods.py: its prompt, each method's defaults, 2 epochs); the seed sets the
adapter's initialisation, the data order and dropout, nothing else. Each run is scored on the
80 test rows; the table gives each seed's accuracy, the mean, the standard deviation across
seeds and the range, beside the 95% interval of one run on 80 rows (which the seed spread
should be read against).

    .venv/bin/python bench/seeds.py            # ~15 min on 2 CPU cores
    .venv/bin/python bench/seeds.py --write    # ... and update bench/README.md
    .venv/bin/python bench/seeds.py --quick    # 2 seeds, 1 step, 8 rows: does it run?
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from methods import PROMPT  # noqa: E402


def measure(method: str, seeds: list[int], epochs: float, quick: bool) -> dict:
    import os

    import nbkit
    from nbkit.stats import wilson

    os.environ["NBKIT_RUNS_DIR"] = tempfile.mkdtemp(prefix="nbkit-seeds-")
    prompt = nbkit.Prompt(**PROMPT)
    steps = {"max_steps": 1} if quick else {"epochs": epochs}
    runs = nbkit.tune(prompt, "sample:intent", method=method, name=method, seeds=seeds, callbacks=[], **steps)
    report = nbkit.evaluate(None, runs, "sample:intent", limit=8 if quick else None)
    summary = report.seeds("accuracy").iloc[0]
    rows = int(report.frame["n"].iloc[0])
    low, high = wilson(round(summary["accuracy_mean"] * rows), rows)
    return {"seeds": {int(r.config["seed"]): float(report.frame.loc[f"intent + {r.name}", "accuracy"]) for r in runs},
            "mean": float(summary["accuracy_mean"]), "sd": float(summary["accuracy_sd"]),
            "min": float(summary["accuracy_min"]), "max": float(summary["accuracy_max"]), "rows": rows,
            "one_run_interval": [low, high]}


def table(results: dict) -> str:
    seeds = sorted({s for r in results.values() for s in r["seeds"]})
    lines = ["| method | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd | range | 95% interval of one run |",
             "|---|" + "---:|" * len(seeds) + "---:|---:|---:|"]
    for method, r in results.items():
        lines.append(f"| {method} | " + " | ".join(f"{r['seeds'][s]:.3f}" for s in seeds)
                     + f" | {r['mean']:.3f} ± {r['sd']:.3f} | {r['max'] - r['min']:.3f} "
                     f"| [{r['one_run_interval'][0]:.2f}, {r['one_run_interval'][1]:.2f}] |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="lora,prompt-tuning", help="comma-separated methods")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--epochs", type=float, default=2.0, help="epochs per run (default 2, as bench/methods.py)")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 1 step, 8 rows: does it run?")
    parser.add_argument("--write", action="store_true", help="update bench/README.md")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")][:2 if args.quick else None]
    methods = args.methods.split(",")[:1] if args.quick else args.methods.split(",")
    results = {m: measure(m, seeds, args.epochs, args.quick) for m in methods}
    saved = common.ROOT / "bench" / "results" / "seeds.json"
    kept = {} if args.quick or not saved.exists() else \
        {m: {**r, "seeds": {int(k): v for k, v in r["seeds"].items()}}  # (JSON made the seeds strings)
         for m, r in json.loads(saved.read_text()).items() if m not in results}  # methods not rerun this time
    results = kept | results
    what = "1 step, 8 test rows" if args.quick else f"{args.epochs:g} epochs, the 80 test rows"
    text = table(results) + common.caption(
        args.quick, f"`sample:intent`, bench/methods.py's prompt and each method's defaults, {what}; one run per "
                    "seed, nothing else differing" + (f" (the {', '.join(kept)} row{'s' * (len(kept) > 1)} from an "
                    "earlier run, kept in bench/results/seeds.json)." if kept else "."))
    common.publish(text, args.quick, args.write, "seeds-table", "seeds", results)


if __name__ == "__main__":
    main()
