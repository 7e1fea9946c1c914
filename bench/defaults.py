"""LoRA's speed settings measured for accuracy: dropout 0.05 or 0, fp32 or bf16 autocast, padded or packed.

Each setting trains LoRA with everything else at nbkit's defaults (two epochs) on every shipped
classification set, plus any ``--data`` you add (a folder of train/test files: defaults should
learn on data nobody tuned them on), and is scored on the whole test split. Each accuracy comes
with its Wilson 95% interval, and each setting's difference from the first setting on the same
rows with its paired-bootstrap interval and exact McNemar p: a default changes only where the
rows support it, or where the difference cannot be told from zero and the change is faster.
Every (setting, data set) runs in a process of its own, one after another.

    .venv/bin/python bench/defaults.py                          # 3 sets x 2 dropouts (~20 min on 2 CPU cores)
    .venv/bin/python bench/defaults.py --settings "dropout 0,dropout 0 + bf16"   # others of SETTINGS
    .venv/bin/python bench/defaults.py --data ~/my-set --write  # ... with a set of yours; update bench/README.md
    .venv/bin/python bench/defaults.py --method qlora --write   # the same for another LoRA method (its own table)
    .venv/bin/python bench/defaults.py --quick                  # 2 steps, 8 rows, one set: does it run?
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import methods  # noqa: E402

PROMPTS = {  # data: (template, choices), the notebooks' prompts (00_quickstart, 02_classification)
    "sample:intent": ("Which team should handle this customer message? Answer refund, delivery, account or other.\n"
                      "Message: {{ text }}\nTeam:", ["refund", "delivery", "account", "other"]),
    "sample:sentiment": ("Is this product review positive or negative?\nReview: {{ text }}\nAnswer:",
                         ["positive", "negative"]),
    "sample:topic": ("Which section of the newspaper does this story belong to: sports, business, science, politics "
                     "or entertainment?\nStory: {{ text }}\nSection:",
                     ["sports", "business", "science", "politics", "entertainment"]),
}
SETTINGS = {  # name: nbkit.tune keywords; the first is the reference the others are compared with
    "dropout 0.05": dict(dropout=0.05, precision="fp32", packing="off"),
    "dropout 0": dict(dropout=0.0, precision="fp32", packing="off"),
    "dropout 0 + packing": dict(dropout=0.0, precision="fp32", packing="on"),
    "dropout 0.05 + packing": dict(dropout=0.05, precision="fp32", packing="on"),
    "dropout 0 + bf16": dict(dropout=0.0, precision="bf16", packing="off"),
}


def prompt_for(data: str):
    """The notebook's prompt of a shipped set; for a folder of yours, a plain one over its text and labels."""
    import nbkit

    if data in PROMPTS:
        template, choices = PROMPTS[data]
    else:
        labels = sorted({r["label"] for r in nbkit.load_data(data, split="train")})
        template, choices = f"Which of {', '.join(labels)} is this?\nText: {{{{ text }}}}\nAnswer:", labels
    return nbkit.Prompt(template, name="p", target="{{ label }}", choices=choices)


def one(setting: str, data: str, method: str, seed: int, quick: bool) -> dict:
    """Train and score one setting of ``method`` on one data set in this process."""
    import nbkit

    prompt = prompt_for(data)
    steps = {"max_steps": 2} if quick else {"epochs": 2}
    run = nbkit.tune(prompt, data, method=method, name="run", callbacks=[], seed=seed, **SETTINGS[setting],
                     **steps)
    report = nbkit.evaluate(None, run, data, limit=8 if quick else None)
    result = report.frame.iloc[0]
    correct = [int(c) for c in next(iter(report.predictions.values()))["correct"]]
    return {"setting": setting, "data": data, "seed": seed, "accuracy": float(result["accuracy"]),
            "rows": int(result["n"]), "train_seconds": run.metrics["train_seconds"], "correct": correct}


def table(results: list[dict]) -> str:
    from nbkit import stats

    names = list(SETTINGS)
    lines = ["| data (test rows) | setting | accuracy [95%] | − first setting [95%], McNemar p | train time |",
             "|---|---|---:|---:|---:|"]
    for data in dict.fromkeys(r["data"] for r in results):
        rows = {r["setting"]: r for r in results if r["data"] == data}
        base = rows.get(names[0])
        for name in names:
            if name not in rows:
                continue
            r = rows[name]
            low, high = stats.wilson(sum(r["correct"]), len(r["correct"]))
            versus = methods.against(r, base)  # the paired test of the methods table
            shown = data if data.startswith("sample:") else "yours: " + Path(data).name
            lines.append(f"| `{shown}` ({r['rows']}) | {name} | {r['accuracy']:.3f} [{low:.2f}, {high:.2f}] | {versus} "
                         f"| {r['train_seconds']:.0f} s |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", action="append", default=[], help="a data set of yours besides the shipped ones "
                        "(a folder with train and test files, columns text and label); repeatable")
    parser.add_argument("--only", help="comma-separated data sets instead of the shipped ones")
    parser.add_argument("--settings", default=",".join(list(SETTINGS)[:2]),
                        help="comma-separated names of SETTINGS (default: the two dropouts)")
    parser.add_argument("--method", default="lora", choices=["lora", "qlora", "dora"],
                        help="the LoRA method whose settings are measured (default lora)")
    parser.add_argument("--quick", action="store_true", help="2 steps and 8 test rows of one set: does it run?")
    parser.add_argument("--write", action="store_true", help="update bench/README.md")
    parser.add_argument("--seed", type=int, default=0, help="the training seed of every run (default 0, nbkit's)")
    parser.add_argument("--one", nargs=4, metavar=("SETTING", "DATA", "METHOD", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        setting, data, method, seed = args.one
        common.emit(one(setting, data, method, int(seed), args.quick))
        return 0
    datas = args.only.split(",") if args.only else list(PROMPTS)
    datas = (datas[:1] if args.quick else datas) + [str(Path(d).expanduser().resolve()) for d in args.data]
    settings = args.settings.split(",")
    results = []
    with tempfile.TemporaryDirectory() as runs:
        for data in datas:
            for setting in settings:
                with tempfile.TemporaryDirectory(dir=runs) as folder:
                    flags = ["--one", setting, data, args.method, str(args.seed)] + (["--quick"] if args.quick else [])
                    r = common.child(__file__, flags, env={"NBKIT_RUNS_DIR": folder})
                results.append(r)
                print(f"{data:18} {setting:28} accuracy {r['accuracy']:.3f}  train {r['train_seconds']:.0f}s",
                      file=sys.stderr, flush=True)
    text = table(results) + common.caption(
        args.quick, f"{args.method} with nbkit's defaults but the setting named, 2 epochs, each set's whole test split; "
                    "accuracy with its Wilson interval, the difference from the first setting on the same rows with "
                    "its paired-bootstrap interval and exact McNemar p (not distinguishable: the interval holds 0 or "
                    "p ≥ 0.05); train time as the run measured it, one process at a time.")
    block, name = ("defaults-table", "defaults") if args.method == "lora" else (f"defaults-{args.method}-table",
                                                                                f"defaults-{args.method}")
    common.publish(text, args.quick, args.write, block, name, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
