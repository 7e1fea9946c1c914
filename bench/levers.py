"""Each training speed lever of nbkit's LoRA on its own: what a step costs once warm, and what it costs to start.

``bench/train_throughput.py`` compares whole runs against other tools; this script takes nbkit's
run apart. Every variant trains the same LoRA (r 8, alpha 16, every linear layer, lr 5e-4, batch
8) on the same examples as the training table (``intent``: short messages; ``threads``: long,
variable-length ones), in a process of its own, and records the time of every step:

- ``start``: the first two steps (torch.compile compiles there),
- ``step``: the median of the steps after them,
- ``pays from``: with a start above the plain run's, the step count from which the variant's
  whole run is the shorter one.

The variants: nbkit before these changes (LoRA dropout 0.05, peft's LoRA forward, padded batches),
dropout 0 alone, LoRA's low-rank product added in place (nbkit.training.fusing), nbkit's defaults
(those and packed batches, ``packing=auto`` on the CPU), and each further lever on top of the
defaults: bf16 autocast and torch.compile of each layer. peft's forward is not a setting (the fused
one computes the same): its rows undo the fusing in their process.

    .venv/bin/python bench/levers.py               # 2 data sets x 6 variants, 96 examples (~18 min, 2 cores)
    .venv/bin/python bench/levers.py --write       # ... and update bench/README.md
    .venv/bin/python bench/levers.py --quick       # 16 examples of intent: does it run?
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import train_throughput as tt  # noqa: E402

VARIANTS = {  # name: nbkit.tune settings over the training table's LoRA; the first is what nbkit did before
    "before: dropout 0.05, peft's forward, padded": dict(dropout=0.05, fused=False, packing="off"),
    "dropout 0, peft's forward, padded": dict(dropout=0.0, fused=False, packing="off"),
    "dropout 0, fused LoRA, padded": dict(dropout=0.0, packing="off"),
    "defaults: dropout 0, fused LoRA, packed": dict(dropout=0.0),  # packing auto: on on the CPU
    "+ bf16 autocast": dict(dropout=0.0, precision="bf16"),
    "+ torch.compile": dict(dropout=0.0, compile="on"),
}


def one(variant: str, dataset: str, n: int) -> dict:
    """Train ``variant`` on ``n`` examples of ``dataset`` in this process; the time of every step."""
    import os

    import nbkit
    from nbkit.events import Callback

    class Steps(Callback):
        def __init__(self):
            self.elapsed, self.losses = [], []

        def on_step(self, event):
            self.elapsed.append(event.elapsed)
            self.losses.append(event.loss)

    steps = Steps()
    settings = dict(VARIANTS[variant])
    if not settings.pop("fused", True):
        import nbkit.training.decoder

        nbkit.training.decoder.fuse_lora = lambda model: 0  # peft's own LoRA forward
    prompt = nbkit.Prompt(**tt.PROMPTS[dataset])
    train = tt.rows(dataset, n)
    settings = {**dict(method="lora", epochs=1, batch_size=tt.BATCH, max_length=tt.MAX_LENGTH, lr=tt.LR, seed=tt.SEED,
                       r=tt.LORA["r"], alpha=tt.LORA["alpha"], target_modules=tt.LORA["target_modules"],
                       precision="fp32", compile="off"), **settings}
    with tempfile.TemporaryDirectory() as out:
        os.environ["NBKIT_RUNS_DIR"] = out
        nbkit.tune(prompt, {"train": train, "test": train[:1]}, callbacks=[steps], **settings)
    times = [b - a for a, b in zip([0.0] + steps.elapsed, steps.elapsed)]
    return {"variant": variant, "dataset": dataset, "examples": n, "step_times": times, "losses": steps.losses,
            "real_tokens": sum(tt.lengths(dataset, n)), "peak_memory_mb": common.peak_rss_mb()}


def summarise(results: list[dict]) -> list[dict]:
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        base = None
        for variant in VARIANTS:
            found = [r for r in results if r["dataset"] == dataset and r["variant"] == variant]
            if not found:
                continue
            r = found[0]
            times = r["step_times"]
            start, step = sum(times[:2]), statistics.median(times[2:] or times)
            row = {"dataset": dataset, "variant": variant, "start": start, "step": step,
                   "tokens_per_second": r["real_tokens"] / len(times) / step, "final_loss": r["losses"][-1],
                   "peak_memory_mb": r["peak_memory_mb"], "steps": len(times)}
            base = base or row
            row["speedup"] = base["step"] / step
            defaults = next((x for x in rows if x["dataset"] == dataset and x["variant"].startswith("defaults")), None)
            row["pays_from"] = None
            if defaults and row is not defaults and row["start"] > defaults["start"] and step < defaults["step"]:
                # start + (k - 2) * step < start_d + (k - 2) * step_d
                row["pays_from"] = 2 + math.ceil((row["start"] - defaults["start"]) / (defaults["step"] - step))
            rows.append(row)
    return rows


def render(rows: list[dict], n: int, quick: bool) -> str:
    lines = ["| data | variant | start (2 steps) | step, warm | real tokens/s, warm | × before | pays from | "
             "last loss | peak memory |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pays = f"step {r['pays_from']}" if r["pays_from"] else "–"
        lines.append(f"| {r['dataset']} | {r['variant']} | {r['start']:.1f} s | {r['step']:.2f} s | "
                     f"{r['tokens_per_second']:.0f} | {r['speedup']:.2f}x | {pays} | {r['final_loss']:.3f} | "
                     f"{r['peak_memory_mb'] / 1024:.2f} GiB |")
    return "\n".join(lines) + common.caption(
        quick, f"{n} examples, 1 epoch, batch {tt.BATCH}, LoRA r={tt.LORA['r']} alpha={tt.LORA['alpha']:g} all-linear, "
               f"lr {tt.LR:g}, fp32 unless named; one process per row, one after another. Start: the first two steps "
               "(compilation happens there); step, warm: the median of the later steps; × before: the warm step of "
               "the first row over this one; pays from: the run length from which the row's whole run is shorter "
               "than the defaults' (a slower start repaid by faster steps).")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(tt.DATASETS))
    parser.add_argument("--variants", default="|".join(VARIANTS), help="|-separated names of VARIANTS")
    parser.add_argument("--examples", type=int, help="training examples, one epoch (default 96; --quick 16)")
    parser.add_argument("--quick", action="store_true", help="16 examples of intent: does it run?")
    parser.add_argument("--write", action="store_true", help="update bench/README.md")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "DATASET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.fill(args, args.quick, examples=(96, 16))
    if args.one:
        common.emit(one(*args.one, args.examples))
        return 0
    datasets = args.datasets.split(",")[:1] if args.quick else args.datasets.split(",")
    results = []
    for dataset in datasets:
        for variant in args.variants.split("|"):
            r = common.child(__file__, ["--one", variant, dataset, "--examples", str(args.examples)])
            results.append(r)
            print(f"{dataset:8} {variant:22} start {sum(r['step_times'][:2]):6.1f}s  "
                  f"step {statistics.median(r['step_times'][2:] or r['step_times']):5.2f}s", file=sys.stderr, flush=True)
    text = render(summarise(results), args.examples, args.quick)
    common.publish(text, args.quick, args.write, "levers-table", "levers", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
