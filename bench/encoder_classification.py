"""Encoder classification beside SetFit, and beside the prompted decoder and its LoRA.

On each shipped classification set (train split to learn, test split to score), in a process
of its own each so peak memory is its own:

- ``nbkit default``: ``nbkit.tune(prompt, data, task="classification")`` with no other setting
  (``--method setfit``: the encoder tuned on same/different-label pairs, a logistic head);
- ``nbkit lora head``: ``method="lora"``, the cross-entropy head that was the default before;
- ``setfit``: the ``setfit`` package itself (``Trainer`` with ``num_iterations=5``, one epoch,
  batch 16, its other defaults) on the raw ``text`` column: the peer;
- ``decoder zero-shot`` and ``decoder lora``: the embedded SmolLM2 with the same prompt, label
  scoring, untuned and after LoRA (nbkit's defaults).

    .venv/bin/python bench/encoder_classification.py            # ~25 min on 2 CPU cores
    .venv/bin/python bench/encoder_classification.py --write    # ... and update bench/README.md
    .venv/bin/python bench/encoder_classification.py --quick    # 12 rows, a few steps: does it run?

Accuracy comes with its 95% Wilson interval: on 60-80 test rows one row is 1.3-1.7 points and
an interval is about +-8 points wide, so rows a point or two apart are not told apart.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from nbkit.stats import wilson  # noqa: E402

SETS = {  # the prompt each set is tuned and scored with (the encoder reads it rendered, as a user's would)
    "intent": "Which team should handle this customer message?\nMessage: {{ text }}\nTeam:",
    "topic": "What is this news story about?\nStory: {{ text }}\nTopic:",
    "sentiment": "Is this review positive or negative?\nReview: {{ text }}\nSentiment:",
}
SYSTEMS = ["nbkit default", "nbkit lora head", "setfit", "decoder zero-shot", "decoder lora"]


def rows_of(name: str, quick: bool):
    import nbkit

    splits = nbkit.load_data(f"sample:{name}")
    train, test = list(splits["train"]), list(splits["test"])
    if quick:  # a few rows of each label, so every system still sees every class
        labels = sorted({r["label"] for r in train})
        train = [r for label in labels for r in [x for x in train if x["label"] == label][:3]]
        test = test[:8]
    return train, test


TUNE = {  # what nbkit.tune is given, beside the prompt and the data
    "nbkit default": {"task": "classification"},
    "nbkit lora head": {"task": "classification", "method": "lora"},
    "decoder lora": {},
}


def one(system: str, name: str, quick: bool) -> dict:
    """One system on one set; train seconds are wall time from loading the model to a saved run (the
    setfit package: from ``from_pretrained`` to the end of ``Trainer.train``)."""
    import nbkit

    train, test = rows_of(name, quick)
    choices = sorted({r["label"] for r in train})
    prompt = nbkit.Prompt(SETS[name], name=name, target="{{ label }}", choices=choices)
    data = {"train": train, "test": test}
    if system == "setfit":
        correct, trained = _setfit(train, test, choices, quick)
    else:
        if system == "decoder zero-shot":
            report, trained = nbkit.evaluate(prompt, None, data), 0.0
        else:
            settings = dict(TUNE[system])
            if quick:
                settings.update({"max_steps": 2} if system == "decoder lora" else {"epochs": 0.1})
            started = time.monotonic()
            run = nbkit.tune(prompt, data, name="bench", callbacks=[], overwrite=True, **settings)
            trained = time.monotonic() - started
            report = nbkit.evaluate(None if system == "decoder lora" else prompt, run, data)
        correct = round(float(report.frame.iloc[-1]["accuracy"]) * len(test))
    return {"system": system, "set": name, "correct": correct, "rows": len(test), "train_seconds": trained,
            "peak_memory_mb": round(common.peak_rss_mb())}


def _setfit(train, test, choices, quick: bool) -> tuple[int, float]:
    """The peer, as its README runs it: raw text, ``Trainer`` + ``TrainingArguments``."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from nbkit.models.embedded import encoder_path

    started = time.monotonic()
    model = SetFitModel.from_pretrained(str(encoder_path("minilm-l6")), labels=choices)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(output_dir=out, num_iterations=1 if quick else 5, num_epochs=1, batch_size=16,
                                 seed=0, report_to="none", max_steps=2 if quick else -1)
        Trainer(model=model, args=args, train_dataset=Dataset.from_list(
            [{"text": r["text"], "label": r["label"]} for r in train])).train()
    seconds = time.monotonic() - started
    predicted = model.predict([r["text"] for r in test])
    return sum(p == r["label"] for p, r in zip(predicted, test)), seconds


def table(results: list[dict]) -> str:
    sets = list(dict.fromkeys(r["set"] for r in results))
    lines = ["| system | " + " | ".join(f"`sample:{s}` accuracy" for s in sets) + " | train time (sum) | peak memory |",
             "|---|" + "---:|" * len(sets) + "---:|---:|"]
    for system in dict.fromkeys(r["system"] for r in results):
        mine = {r["set"]: r for r in results if r["system"] == system}
        cells = []
        for s in sets:
            r = mine[s]
            low, high = wilson(r["correct"], r["rows"])
            cells.append(f"{r['correct'] / r['rows']:.3f} ({r['correct']}/{r['rows']}) [{low:.2f}, {high:.2f}]")
        seconds = sum(r["train_seconds"] for r in mine.values())
        peak = max(r["peak_memory_mb"] for r in mine.values())
        lines.append(f"| {system} | " + " | ".join(cells) + f" | {seconds:.0f} s | {peak / 1024:.1f} GiB |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(SETS), help="comma-separated shipped sets")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated systems")
    parser.add_argument("--quick", action="store_true", help="a few rows and steps: does it run?")
    parser.add_argument("--write", action="store_true", help="update bench/README.md")
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        common.emit(one(args.one[0], args.one[1], args.quick))
        return 0
    results = []
    with tempfile.TemporaryDirectory() as runs:
        for name in args.sets.split(","):
            for system in args.systems.split(","):
                flags = ["--one", system, name] + (["--quick"] if args.quick else [])
                r = common.child(__file__, flags, env={"NBKIT_RUNS_DIR": runs})
                results.append(r)
                print(f"{name:10} {system:18} {r['correct']}/{r['rows']}  train {r['train_seconds']:.0f}s  "
                      f"peak {r['peak_memory_mb']} MiB", file=sys.stderr, flush=True)
    what = "a few rows and steps" if args.quick else "each set's whole train split; scored on its test split"
    text = table(results) + common.caption(
        args.quick, f"{what}. Accuracy (correct/rows) [95% Wilson interval]; nbkit's rows use each system's "
                    "defaults, setfit its Trainer with num_iterations=5 on the raw text. Train time: wall seconds "
                    "from loading the model to the trained model, summed over the sets; peak memory: the largest "
                    "resident memory of the sets' processes.")
    common.publish(text, args.quick, args.write, "encoder-classification-table", "encoder_classification", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
