"""Where an nbkit LoRA training step spends its time: the profile behind the training table's gaps.

Runs ``nbkit.tune`` exactly as ``bench/train_throughput.py`` does (same prompt, data, LoRA, batch)
under ``torch.profiler`` and groups the operators' self CPU time: the large matrix products
(what the MFU's peak measures), attention, LoRA's small rank-r products, the elementwise work
(norms, activations, dropout, casts, copies), the loss, and the optimizer, over the whole
training loop (model loading and data preparation excluded).

    .venv/bin/python bench/profile_step.py                   # threads, 16 examples (2 steps), ~1 min
    .venv/bin/python bench/profile_step.py --write           # ... and update bench/README.md
    .venv/bin/python bench/profile_step.py --lora-dropout 0 --write    # the same without LoRA dropout
    .venv/bin/python bench/profile_step.py --quick            # one step: checks the script runs
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import train_throughput as tt  # noqa: E402

GROUPS = [  # (group, operator name fragments), first match wins
    ("loss (log-softmax, NLL)", ["log_softmax", "nll_loss", "cross_entropy"]),
    ("attention", ["scaled_dot_product", "flash_attention", "_efficient_attention"]),
    ("dropout masks (bernoulli)", ["bernoulli", "dropout"]),
    ("matrix products", ["aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"]),
    ("optimizer (AdamW)", ["_foreach", "adamw", "aten::lerp", "aten::addcdiv", "aten::addcmul", "aten::sqrt"]),
    ("elementwise (norms, SiLU, dropout, rotary, casts, copies)", [""]),
]


def profile(dataset: str, examples: int) -> dict:
    import torch
    import transformers
    from torch.profiler import ProfilerActivity, profile as torch_profile

    original, recorded = transformers.Trainer.train, {}

    def train(self, *args, **kwargs):  # profile the training loop only, not loading the model and data
        with torch_profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            out = original(self, *args, **kwargs)
        recorded["profiler"], recorded["steps"] = prof, self.state.global_step
        return out

    transformers.Trainer.train = train
    tt.run_nbkit(dataset, examples)
    prof = recorded["profiler"]
    groups: dict = defaultdict(float)
    ops: dict = defaultdict(float)
    total = 0.0
    for event in prof.key_averages(group_by_input_shape=True):
        seconds = event.self_cpu_time_total / 1e6
        if seconds <= 0:
            continue
        total += seconds
        name = event.key.lower()
        group = next(g for g, fragments in GROUPS if any(f.lower() in name for f in fragments))
        if group == "matrix products":
            shapes = [s for s in (event.input_shapes or []) if s]
            small = any(len(s) >= 1 and min(s[-2:] or [0]) <= 16 for s in shapes[:3])  # a rank-r LoRA product
            group = "LoRA products (rank 8)" if small else group
        groups[group] += seconds
        ops[f"{event.key} ({group.split(' ')[0]})"] += seconds
    return {"dataset": dataset, "examples": examples, "profiled_steps": recorded["steps"], "total_seconds": total,
            "groups": dict(groups),
            "top": sorted(ops.items(), key=lambda kv: -kv[1])[:12]}


def render(result: dict, quick: bool = False) -> str:
    order = ["matrix products", "LoRA products (rank 8)", "attention", "loss (log-softmax, NLL)",
             "optimizer (AdamW)", "dropout masks (bernoulli)",
             "elementwise (norms, SiLU, dropout, rotary, casts, copies)"]
    print("top operators:", *(f"  {name}: {seconds:.2f} s" for name, seconds in result["top"]), sep="\n",
          file=sys.stderr)
    lines = ["| where the time goes | self CPU time | share |", "|---|---:|---:|"]
    for group in order:
        seconds = result["groups"].get(group, 0.0)
        lines.append(f"| {group} | {seconds:.2f} s | {seconds / result['total_seconds']:.0%} |")
    return ("\n".join(lines) + common.caption(quick, f"nbkit.tune LoRA (dropout {tt.LORA['dropout']:g}) on `{result['dataset']}`, "
            f"batch {tt.BATCH}, "
            f"{result['profiled_steps']} steps, torch.profiler self CPU time of every "
            f"operator, grouped by name (a product with a dimension <= 16 counts as LoRA's)."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="threads", choices=tt.DATASETS)
    parser.add_argument("--examples", type=int, default=16, help="training examples (batches of 8)")
    parser.add_argument("--lora-dropout", type=float, default=tt.LORA["dropout"],
                        help=f"LoRA dropout (default {tt.LORA['dropout']}, the training benchmark's)")
    parser.add_argument("--quick", action="store_true", help="2 examples, one step: does it run?")
    parser.add_argument("--write", action="store_true", help="update bench/README.md")
    args = parser.parse_args()
    import os
    import tempfile

    tt.LORA["dropout"] = args.lora_dropout
    if args.quick:
        args.examples = 2

    with tempfile.TemporaryDirectory() as out:
        os.environ["NBKIT_RUNS_DIR"] = out
        text = render(profile(args.dataset, args.examples), args.quick)
    common.publish(text, args.quick, args.write,
                   f"profile-{args.dataset}" + ("-no-dropout" if args.lora_dropout == 0 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
