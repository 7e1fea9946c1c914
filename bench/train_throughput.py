"""LoRA training throughput: nbkit beside the Transformers + PEFT tutorial recipe and TRL's SFTTrainer.

The same model (the embedded SmolLM2-135M-Instruct, the same safetensors weights for all),
the same examples (the same prompt and completion text), the same LoRA (r=8, alpha=16,
dropout 0 (nbkit's default on decoders, and peft's), every linear layer), the same learning rate (5e-4), batch size (8), max length
(256) and number of examples (one epoch over them). Each baseline is written the way its
documentation shows it:

- tutorial: ``Trainer`` on ``tokenizer(text, padding="max_length", truncation=True)`` with
  ``DataCollatorForLanguageModeling(mlm=False)``: the loss covers the whole text.
- trl: ``SFTTrainer`` on a prompt-completion data set with ``SFTConfig`` defaults (loss on the
  completion only, padding to the longest in the batch; bf16 autocast and activation
  checkpointing, both on by default in TRL). ``trl-fp32`` is the same with those two turned off,
  so that nbkit (fp32, no checkpointing) also meets TRL on equal terms.
- nbkit: ``nbkit.tune(..., method="lora")`` (length-grouped batches, padding to the longest).

Two data sets: ``intent`` (sample:intent, short messages) and ``threads`` (built here from the
same messages: 1-8 messages per example, every message's team as the answer; 60-250 tokens).
Every (system, data set) runs in its own process, the systems alternating, several rounds;
the table shows medians. Real tokens are the examples' own tokens (prompt, completion, end token; the same text
for everyone), counted once, over the time ``Trainer.train`` takes (the median over rounds). MFU: model
FLOPs (bench/flops.py) per second over the measured matmul peak (fp32 GEMM, and bf16).

    .venv/bin/python bench/train_throughput.py                 # 3 rounds, 32 examples (~25 min on 2 cores)
    .venv/bin/python bench/train_throughput.py --write         # ... and update bench/README.md and README.md
    .venv/bin/python bench/train_throughput.py --quick         # 1 round, 16 examples: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import flops  # noqa: E402

SYSTEMS = ["tutorial", "trl", "trl-fp32", "nbkit", "nbkit-bf16"]
BF16 = {"trl", "nbkit-bf16"}  # systems whose matmuls run in bf16 (autocast)
DATASETS = ["intent", "threads"]
TEAMS = "refund, delivery, account or other"
PROMPTS = {
    "intent": dict(name="intent", template=f"Which team should handle this customer message: {TEAMS}?\n"
                                           "Message: {{ text }}\nTeam:", target="{{ label }}"),
    "threads": dict(name="threads", template=f"Each numbered customer message goes to one team: {TEAMS}. "
                                             "Name the team of every message, in order.\n{{ text }}\nTeams:",
                    target="{{ label }}"),
}
LORA = dict(r=8, alpha=16, dropout=0.0, target_modules="all-linear")  # dropout 0: nbkit's default, and peft's
LR, BATCH, MAX_LENGTH, SEED = 5e-4, 8, 256, 0


def rows(dataset: str, n: int) -> list[dict]:
    """``n`` training rows of ``dataset``; ``threads`` is generated from sample:intent, always the same."""
    import nbkit

    train = list(nbkit.load_data("sample:intent", split="train"))
    if dataset == "intent":
        return [{"text": r["text"], "label": r["label"]} for r in train[:n]]
    rng = random.Random(SEED)
    out = []
    for _ in range(n):
        picked = rng.sample(train, rng.randint(1, 8))
        out.append({"text": "\n".join(f"{i + 1}. {r['text']}" for i, r in enumerate(picked)),
                    "label": ", ".join(r["label"] for r in picked)})
    return out


def pairs(dataset: str, n: int, tokenizer) -> list[tuple[str, str]]:
    """(prompt text, completion text without the end token): the text nbkit trains on, for everyone."""
    import nbkit

    prompt = nbkit.Prompt(**PROMPTS[dataset])
    return [(prompt.format(r, tokenizer), prompt.completion(prompt.render_target(r), tokenizer))
            for r in rows(dataset, n)]


def _timed_train(stats: dict):
    """Wrap ``Trainer.train`` (every system goes through it) to time it and keep its logged losses."""
    import transformers

    original = transformers.Trainer.train

    def train(self, *args, **kwargs):
        started = time.perf_counter()
        out = original(self, *args, **kwargs)
        stats.update(train_seconds=time.perf_counter() - started,
                     steps=self.state.global_step,
                     losses=[h["loss"] for h in self.state.log_history if "loss" in h])
        return out

    transformers.Trainer.train = train


def _lora_config():
    from peft import LoraConfig

    return LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                      target_modules=LORA["target_modules"], task_type="CAUSAL_LM")


def run_tutorial(data, out: str, path: str, model=None, **training) -> None:
    """The Transformers + PEFT tutorial: pad every example to max_length, causal-LM collator, Trainer.

    ``model``: the base model already loaded (bench/gpu.py: bf16 or 4-bit on a GPU; default: loaded from
    ``path``); ``training``: more ``TrainingArguments`` (bf16, optim, ...)."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = tokenizer.eos_token
    model = get_peft_model(model if model is not None else AutoModelForCausalLM.from_pretrained(path), _lora_config())
    dataset = Dataset.from_list([{"text": p + c + tokenizer.eos_token} for p, c in data])
    dataset = dataset.map(lambda b: tokenizer(b["text"], padding="max_length", truncation=True,
                                              max_length=MAX_LENGTH), batched=True, remove_columns=["text"])
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, num_train_epochs=1,
                             learning_rate=LR, logging_steps=1, save_strategy="no", report_to="none", seed=SEED,
                             **training)
    Trainer(model=model, args=args, train_dataset=dataset,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False)).train()


def run_trl(data, out: str, path: str, defaults: bool = True) -> None:
    """TRL's SFTTrainer on prompt-completion rows, SFTConfig defaults (``defaults=False``: fp32, no checkpointing)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    dataset = Dataset.from_list([{"prompt": p, "completion": c} for p, c in data])
    # TRL turns bf16 on by default and then refuses a machine without a GPU unless told use_cpu
    same = {"use_cpu": True} if defaults else {"use_cpu": True, "bf16": False, "gradient_checkpointing": False}
    args = SFTConfig(output_dir=out, per_device_train_batch_size=BATCH, num_train_epochs=1, learning_rate=LR,
                     max_length=MAX_LENGTH, logging_steps=1, save_strategy="no", report_to="none", seed=SEED, **same)
    SFTTrainer(model=path, args=args, train_dataset=dataset, peft_config=_lora_config()).train()


def run_nbkit(dataset: str, n: int, precision: str = "auto", model: str = "smollm2-135m", method: str = "lora") -> None:
    """``nbkit.tune``; ``precision="bf16"`` is nbkit's own bf16 autocast (its CPU default is fp32)."""
    import nbkit

    prompt = nbkit.Prompt(**PROMPTS[dataset])
    train = rows(dataset, n)  # a test split of its own, or nbkit would hold out a fifth of these
    nbkit.tune(prompt, {"train": train, "test": train[:1]}, model=model, method=method, epochs=1, batch_size=BATCH,
               max_length=MAX_LENGTH, lr=LR, seed=SEED, precision=precision, callbacks=[], r=LORA["r"],
               alpha=LORA["alpha"], dropout=LORA["dropout"], target_modules=LORA["target_modules"])


def one(system: str, dataset: str, n: int) -> dict:
    """Train ``system`` on ``n`` examples of ``dataset`` in this process; its numbers."""
    import os

    from transformers import AutoTokenizer

    stats: dict = {}
    _timed_train(stats)
    path = common.model_dir()
    with tempfile.TemporaryDirectory() as out:
        os.environ["NBKIT_RUNS_DIR"] = out
        if system.startswith("nbkit"):
            run_nbkit(dataset, n, "bf16" if system == "nbkit-bf16" else "auto")
        else:
            data = pairs(dataset, n, AutoTokenizer.from_pretrained(path))
            if system == "tutorial":
                run_tutorial(data, out, path)
            else:
                run_trl(data, out, path, defaults=system == "trl")
    return {"system": system, "dataset": dataset, "examples": n, **stats,
            "final_loss": final_loss(stats.pop("losses")), "peak_memory_mb": common.peak_rss_mb()}


def final_loss(losses: list[float]) -> float | None:
    """The mean of the last quarter of the logged losses."""
    tail = losses[-max(1, len(losses) // 4):]
    return sum(tail) / len(tail) if tail else None


def lengths(dataset: str, n: int, tokenizer=None) -> list[int]:
    """Real token counts of the examples as nbkit encodes them (prompt, completion, end token), with
    ``tokenizer`` (default: the embedded SmolLM2's)."""
    import nbkit
    from nbkit.encoding import encode

    tokenizer = tokenizer or nbkit.load_model("smollm2-135m").tokenizer
    prompt = nbkit.Prompt(**PROMPTS[dataset])
    return [min(MAX_LENGTH, sum(map(len, encode(prompt, r, tokenizer)))) for r in rows(dataset, n)]


def summarise(results: list[dict], peaks: dict, n: int) -> list[dict]:
    from transformers import AutoConfig

    shape = flops.Shape.of(AutoConfig.from_pretrained(common.model_dir()))
    table = []
    for dataset in DATASETS:
        real = lengths(dataset, n)
        work = flops.lora_step_flops(shape, real, LORA["r"])
        group = [r for r in results if r["dataset"] == dataset]
        for system in SYSTEMS:
            runs, calm = common.quiet([r for r in group if r["system"] == system])
            if not runs:
                continue
            seconds = common.median([r["train_seconds"] for r in runs])
            table.append({
                "dataset": dataset, "system": system, "rounds": len(runs), "disturbed": not calm,
                "others_cpu": common.median([r.get("others_cpu") for r in runs]),
                "tokens_per_second": sum(real) / seconds,
                "train_seconds": seconds, "wall_seconds": common.median([r["wall_seconds"] for r in runs]),
                "peak_memory_mb": common.median([r["peak_memory_mb"] for r in runs]),
                "final_loss": common.median([r["final_loss"] for r in runs]),
                "mfu": work / seconds / peaks["bfloat16" if system in BF16 else "float32"],
                "mfu_dtype": "bf16" if system in BF16 else "fp32",
                "model_tflop": work / 1e12,
            })
        ours = next((t for t in table if t["dataset"] == dataset and t["system"] == "nbkit"), None)
        for t in table:
            if t["dataset"] == dataset and ours:
                t["ratio"] = ours["tokens_per_second"] / t["tokens_per_second"]
    return table


TARGETS = {"tutorial": 2.0, "trl": 2.0, "trl-fp32": 1.6}  # nbkit (its CPU defaults) over each: the aims


def render(table: list[dict], peaks: dict, n: int, rounds: int, quick: bool) -> str:
    lines = ["| data | system | real tokens/s | nbkit / this | target | train time | wall time | peak memory "
             "| final loss | MFU |", "|---|---|---:|---:|---|---:|---:|---:|---:|---:|"]
    for t in table:
        target = TARGETS.get(t["system"])
        verdict = "–" if target is None or "ratio" not in t else (
            f"≥ {target:g}x: {'met' if t['ratio'] >= target else 'MISSED'}")
        if t["dataset"] == "intent" and t["system"] == "tutorial":
            verdict = "(≥ 2x is for threads)"
        ratio = f"{t['ratio']:.2f}x" if "ratio" in t else "–"
        if t["disturbed"]:
            ratio += " (disturbed)"
        lines.append(f"| {t['dataset']} | {t['system']} | {t['tokens_per_second']:.0f} | {ratio} | {verdict} | "
                     f"{t['train_seconds']:.1f} s | {t['wall_seconds']:.0f} s | {t['peak_memory_mb'] / 1024:.2f} GiB | "
                     f"{t['final_loss']:.3f} | {100 * t['mfu']:.1f}% of {t['mfu_dtype']} |")
    return "\n".join(lines) + (
        common.caption(quick, f"{n} examples, 1 epoch, batch {BATCH}, LoRA r={LORA['r']} alpha={LORA['alpha']:g} all-linear, "
        f"lr {LR:g}, max length {MAX_LENGTH}; median of the undisturbed rounds (up to {rounds}) of each row, systems alternating, one process each. "
        f"Matmul peak (2048³ GEMM, best of the measurements before each round): fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, "
        f"bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s. Final loss: mean of the last quarter of steps, on what each "
        f"trains on (the tutorial's covers the prompt too). MFU: model FLOPs per second (bench/flops.py) over the peak "
        f"of the dtype the system's matmuls run in. \"disturbed\": every round of that row had another process "
        f"using over {common.QUIET:.0%} of the cores."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--examples", type=int, help="training examples, one epoch (default 32; --quick 16)")
    parser.add_argument("--rounds", type=int, help="repetitions; the table shows medians (default 3; --quick 1)")
    parser.add_argument("--quick", action="store_true", help="1 round of 16 examples: does it run?")
    parser.add_argument("--write", action="store_true", help="update bench/README.md and README.md")
    parser.add_argument("--more", action="store_true",
                        help="add these runs to those of the last run (bench/results/train_throughput.json, same "
                             "--examples): rerun rows another process disturbed")
    parser.add_argument("--one", nargs=2, metavar=("SYSTEM", "DATASET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.fill(args, args.quick, examples=(32, 16), rounds=(3, 1))
    if args.one:
        common.emit(one(*args.one, args.examples))
        return 0

    peaks = {"float32": 0.0, "bfloat16": 0.0}
    results = []
    if args.more:
        last = json.loads((common.ROOT / "bench" / "results" / "train_throughput.json").read_text())
        results = [r for r in last["runs"] if r["examples"] == args.examples]
        peaks = {d: max(peaks[d], last["peaks"][d]) for d in peaks}
    systems, datasets = args.systems.split(","), args.datasets.split(",")
    for round_ in range(args.rounds):
        # the peak is measured before every round and the best kept: another process on the cores
        # during one measurement would lower it and flatter every MFU
        for d in peaks:
            peaks[d] = max(peaks[d], flops.matmul_peak(d))
        print(f"matmul peak: fp32 {peaks['float32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bfloat16'] / 1e9:.0f} GFLOP/s",
              file=sys.stderr, flush=True)
        for dataset in datasets:
            order = systems[round_ % len(systems):] + systems[:round_ % len(systems)]  # who goes first rotates
            for system in order:
                r = common.child(__file__, ["--one", system, dataset, "--examples", str(args.examples)])
                results.append(r)
                print(f"round {round_ + 1} {dataset:8} {system:9} "
                      f"train {r['train_seconds']:6.1f}s  peak {r['peak_memory_mb']:5.0f} MiB  "
                      f"loss {r['final_loss']:.3f}", file=sys.stderr, flush=True)
    table = summarise(results, peaks, args.examples)
    text = render(table, peaks, args.examples, max(t["rounds"] for t in table), args.quick)
    common.publish(text, args.quick, args.write, "train-table", "train_throughput",
                   {"peaks": peaks, "runs": results, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
