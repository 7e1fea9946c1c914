"""Memory of LoRA training on the CPU: fp32, bf16 and 4-bit QLoRA on the embedded model.

Each variant loads the model and trains a few steps in its own process, so the peak resident
memory is its own. Footprint is the model's parameters and buffers as loaded (with the LoRA
weights), measured when training starts; the peak is the process's high-water mark (loading,
training, everything). The loss columns show each variant learns (the first and the last
steps), since a QLoRA that saves memory and does not learn would be no result.

- ``lora fp32``:  ``nbkit.tune(method="lora")``, what nbkit does on a CPU by default;
- ``lora bf16 autocast``:  the same with ``precision="bf16"`` (fp32 weights, bf16 matmuls);
- ``lora bf16 weights``:  the base loaded in bf16 (``from_pretrained(dtype=torch.bfloat16)``),
  peft LoRA, ``Trainer`` with ``bf16=True``: the plain Transformers + PEFT way, for the footprint;
- ``qlora 4-bit``:  ``nbkit.tune(method="qlora")`` (bitsandbytes NF4, double quantization);
- ``lora fp32, padded``:  ``packing="off"``: each batch padded to its longest example (what
  nbkit does where it cannot pack, and on GPUs), beside the packed rows of the CPU default;
- ``lora fp32, checkpointing``:  ``gradient_checkpointing=True``;
- ``lora fp32, in 2 GiB``:  the first, where the machine says 1.3 GiB are free beside the ~0.6 GiB
  the process holds (Binder's ~2 GB): nbkit turns on checkpointing and returns freed memory at once.

The estimate column is what ``%tune`` printed before training (its whole-process peak); the
estimate/peak ratio is what tests/test_memory.py keeps within 0.75-1.25 on four of these.

    .venv/bin/python bench/memory.py            # 6 steps of 8 intent examples each (~5 min)
    .venv/bin/python bench/memory.py --write    # ... and update bench/README.md
    .venv/bin/python bench/memory.py --quick    # 2 steps each: checks the script runs
    .venv/bin/python bench/memory.py --quick --variants "lora fp32|qlora 4-bit"   # some of them
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

VARIANTS = ["lora fp32", "lora bf16 autocast", "lora bf16 weights", "qlora 4-bit", "lora fp32, padded",
            "lora fp32, checkpointing", "lora fp32, in 2 GiB"]
PROMPT = dict(name="intent", template="Which team should handle this customer message: refund, delivery, account "
                                      "or other?\nMessage: {{ text }}\nTeam:", target="{{ label }}")
BATCH = 8


def _watch(stats: dict):
    """Wrap ``Trainer.train``: the model's footprint and the resident memory when training starts, the losses."""
    import psutil
    import transformers

    original = transformers.Trainer.train

    def train(self, *args, **kwargs):
        stats["footprint_mb"] = self.model.get_memory_footprint() / 2 ** 20
        stats["rss_at_start_mb"] = psutil.Process().memory_info().rss / 2 ** 20
        started = time.perf_counter()
        out = original(self, *args, **kwargs)
        stats["train_seconds"] = time.perf_counter() - started
        stats["losses"] = [h["loss"] for h in self.state.log_history if "loss" in h]
        return out

    transformers.Trainer.train = train


def one(variant: str, steps: int) -> dict:
    import os

    import nbkit

    stats: dict = {}
    _watch(stats)
    _watch_estimate(stats)
    if variant.endswith("in 2 GiB"):
        import nbkit.memory

        nbkit.memory.available_memory = lambda device: int(1.3 * 2 ** 30)
    train = list(nbkit.load_data("sample:intent", split="train"))[:steps * BATCH]
    data = {"train": train, "test": train[:1]}
    prompt = nbkit.Prompt(**PROMPT)
    with tempfile.TemporaryDirectory() as out:
        os.environ["NBKIT_RUNS_DIR"] = out
        if variant == "lora bf16 weights":
            _bf16_weights(prompt, train, out, steps)
        else:
            method = "qlora" if variant.startswith("qlora") else "lora"
            precision = "bf16" if "bf16" in variant else "auto"
            nbkit.tune(prompt, data, method=method, max_steps=steps, batch_size=BATCH, precision=precision,
                       gradient_checkpointing=variant.endswith("checkpointing"), callbacks=[],
                       packing="off" if variant.endswith("padded") else "auto")
    losses = stats.pop("losses")
    return {"variant": variant, "steps": steps, **stats, "first_loss": losses[0], "last_loss": losses[-1],
            "peak_memory_mb": common.peak_rss_mb()}


def _watch_estimate(stats: dict) -> None:
    """Keep the estimate ``%tune`` prints (and the plan it chose)."""
    from nbkit.training import decoder

    fit = decoder.fit_memory

    def watch(*args, **kwargs):
        memory = fit(*args, **kwargs)
        stats["estimate_mb"], stats["plan"] = memory.total / 2 ** 20, memory.plan
        return memory

    decoder.fit_memory = watch


def _bf16_weights(prompt, train, out: str, steps: int) -> None:
    """A bf16 base with peft LoRA under Trainer(bf16=True), on nbkit's encoding of the same rows."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

    from nbkit.encoding import training_example
    from nbkit.training.trainer import collate

    path = common.model_dir()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                             task_type="CAUSAL_LM"))
    examples = [training_example(prompt, r, tokenizer, 256)[0] for r in train]
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=5e-4,
                             logging_steps=1, save_strategy="no", report_to="none", bf16=True, use_cpu=True,
                             remove_unused_columns=False)
    Trainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
            data_collator=collate(tokenizer.pad_token_id or tokenizer.eos_token_id)).train()


def render(rows: list[dict], steps: int, quick: bool) -> str:
    lines = ["| variant | model footprint | resident at train start | peak resident | %tune's estimate (÷ peak) "
             "| first → last loss | train time |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        est = f"{r['estimate_mb'] / 1024:.2f} GiB ({r['estimate_mb'] / r['peak_memory_mb']:.2f})" \
            if r.get("estimate_mb") else "—"
        lines.append(f"| {r['variant']} | {r['footprint_mb']:.0f} MiB | {r['rss_at_start_mb'] / 1024:.2f} GiB | "
                     f"{r['peak_memory_mb'] / 1024:.2f} GiB | {est} | {r['first_loss']:.2f} → {r['last_loss']:.2f} | "
                     f"{r['train_seconds']:.0f} s{' (disturbed)' if r['others_cpu'] > common.QUIET else ''} |")
    return "\n".join(lines) + (
        common.caption(quick, f"SmolLM2-135M on the CPU, LoRA r=8 on every linear layer, {steps} steps of {BATCH} sample:intent "
        f"examples, one process per variant."))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, help="training steps per variant (default 6; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="2 steps each: does it run?")
    parser.add_argument("--write", action="store_true", help="update bench/README.md")
    parser.add_argument("--variants", default="|".join(VARIANTS), help="|-separated names of VARIANTS")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    variants = args.variants.split("|")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    if args.write and variants != VARIANTS:
        parser.error("--write replaces the whole table: leave --variants out")
    common.fill(args, args.quick, steps=(6, 2))
    if args.one:
        common.emit(one(args.one, args.steps))
        return 0
    rows = []
    for variant in variants:
        rows.append(common.child(__file__, ["--one", variant, "--steps", str(args.steps)]))
        r = rows[-1]
        print(f"{variant:20} footprint {r['footprint_mb']:5.0f} MiB  peak {r['peak_memory_mb']:5.0f} MiB  "
              f"loss {r['first_loss']:.2f} -> {r['last_loss']:.2f}", file=sys.stderr, flush=True)
    text = render(rows, args.steps, args.quick)
    common.publish(text, args.quick, args.write, "memory-table", "memory", rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
