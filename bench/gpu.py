"""LoRA and QLoRA training on a GPU: nbkit beside the Transformers + PEFT recipe, on randomly initialised
Llama-architecture models of ~1B and ~8B parameters.

The issue's GPU benchmark, prepared for a machine with one CUDA GPU. For each model size, method
(``lora``, ``qlora``) and system, one process trains one epoch over the same examples
(``threads`` from bench/train_throughput.py: 1-8 support messages per example, 60-250 tokens) with
the same LoRA (r=8, alpha=16, dropout 0, every linear layer), learning rate and batch size, and
reports real (non-padding) tokens per second, model FLOPs utilisation against a bf16 matmul peak
measured on the same GPU in the same run, and the peak GPU memory (``torch.cuda.max_memory_allocated``).

- ``peft``: the Transformers + PEFT recipe as their documentation shows it: ``Trainer`` with bf16,
  every example padded to ``max_length``, the causal-LM collator; for QLoRA the model loads with
  ``BitsAndBytesConfig`` (NF4, double quantisation, bf16 compute) and goes through
  ``prepare_model_for_kbit_training`` (which turns on activation checkpointing), with the paged
  8-bit AdamW of the QLoRA paper.
- ``nbkit``: ``nbkit.tune(..., model=DIR, method="lora"|"qlora")`` with its defaults on CUDA (bf16
  autocast, length-grouped batches padded to the longest, loss on the completion; paged 8-bit AdamW
  for QLoRA).

The models have the shapes of TinyLlama-1.1B (``1b``) and Llama-3-8B (``8b``) with SmolLM2's
tokenizer (49,152 tokens), random weights (``torch.manual_seed(0)``), written once per run as bf16
safetensors to a temporary directory that every system loads from. Random weights learn nothing
useful; the loss column only shows that every system trained.

The GPU machine has no internet and nothing of this checkout's ``.venv``: carry the tokenizer
(``--prepare`` copies it to ``build/gpu-bench/tokenizer``, 3 MB) and check what is importable there
(``--check``): both systems need nbkit's own dependencies (the rows, prompts and token counts go through
nbkit), so what ``--check`` lists as missing has to be installed there first. Then, on the GPU machine:

    python bench/gpu.py --check                    # torch, CUDA, bitsandbytes, nbkit's imports
    python bench/gpu.py --sizes 1b --write         # ~5 min on an H200; adds 8b with --sizes 1b,8b
    python bench/gpu.py --quick                    # anywhere: a tiny model, a few steps (the CPU here)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import flops  # noqa: E402
import train_throughput as tt  # noqa: E402

SIZES = {  # LlamaConfig fields
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4),  # TinyLlama-1.1B's shape
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8),  # Llama-3-8B's shape
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),  # --quick
}
SYSTEMS = ["peft", "nbkit"]
METHODS = ["lora", "qlora"]
TOKENIZER = common.ROOT / "build" / "gpu-bench" / "tokenizer"
NBKIT_IMPORTS = ["transformers", "peft", "accelerate", "datasets", "jinja2", "pandas", "platformdirs", "yaml",
                 "safetensors", "gguf"]


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def tokenizer_dir() -> Path:
    """The tokenizer the random models use: the carried copy, else the embedded SmolLM2's own."""
    if (TOKENIZER / "tokenizer.json").exists():
        return TOKENIZER
    return Path(common.model_dir())


def prepare() -> None:
    """Copy SmolLM2's tokenizer files where the GPU run looks for them (they travel with the checkout)."""
    source = Path(common.model_dir())
    TOKENIZER.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (source / name).exists():
            shutil.copy(source / name, TOKENIZER / name)
    print(f"copied the tokenizer to {TOKENIZER.relative_to(common.ROOT)}; carry build/gpu-bench to the GPU machine")


def check() -> dict:
    """What the machine has: the device, bitsandbytes, and which of nbkit's imports are missing."""
    import torch

    found = {"torch": torch.__version__, "device": device(),
             "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
             "bitsandbytes": importlib.util.find_spec("bitsandbytes") is not None,
             "missing for nbkit": [m for m in NBKIT_IMPORTS if importlib.util.find_spec(m) is None],
             "tokenizer": str(tokenizer_dir())}
    return found


def make_model(size: str, folder: Path):
    """A randomly initialised bf16 Llama of ``size`` saved to ``folder`` with the tokenizer; (config, parameters)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir())
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=2048, tie_word_embeddings=False,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **SIZES[size])
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)  # never a full fp32 copy of an 8B model
    try:
        with torch.device(device()):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    parameters = sum(p.numel() for p in model.parameters())
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the children need the memory; this process only writes the weights
    return config, parameters


def run_peft(method: str, path: str, data, out: str) -> None:
    """The Transformers + PEFT recipe (train_throughput's tutorial) on a GPU: bf16; QLoRA: an NF4 load through
    ``prepare_model_for_kbit_training`` and the paged 8-bit AdamW."""
    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cuda = device() == "cuda"
    place = {"device_map": {"": 0}} if cuda else {}
    if method == "qlora":
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                   bnb_4bit_compute_dtype=torch.bfloat16)
        model = prepare_model_for_kbit_training(
            AutoModelForCausalLM.from_pretrained(path, quantization_config=quant, dtype=torch.bfloat16, **place))
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, **place)
    tt.run_tutorial(data, out, path, model=model, bf16=cuda, use_cpu=not cuda,
                    optim="paged_adamw_8bit" if method == "qlora" and cuda else "adamw_torch")


def one(system: str, method: str, path: str, n: int) -> dict:
    """Train ``system`` with ``method`` on the model at ``path`` in this process; its numbers."""
    import torch
    from transformers import AutoTokenizer

    stats: dict = {}
    tt._timed_train(stats)
    with tempfile.TemporaryDirectory() as out:
        os.environ["NBKIT_RUNS_DIR"] = out
        if system == "nbkit":
            tt.run_nbkit("threads", n, model=path, method=method)
        else:  # the same prompt and completion text nbkit trains on
            run_peft(method, path, tt.pairs("threads", n, AutoTokenizer.from_pretrained(path)), out)
    peak = (torch.cuda.max_memory_allocated() / 2 ** 20 if torch.cuda.is_available() else common.peak_rss_mb())
    return {"system": system, "method": method, "examples": n, **stats,
            "final_loss": tt.final_loss(stats.pop("losses")), "peak_memory_mb": peak}


def render(table: list[dict], peak: float, n: int, quick: bool, where: str) -> str:
    lines = ["| model | method | system | real tokens/s | nbkit / this | train time | peak memory | final loss | MFU |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in table:
        if r.get("error"):
            lines.append(f"| {r['size']} | {r['method']} | {r['system']} | {r['error']} | | | | | |")
            continue
        ours = next((t for t in table if t["size"] == r["size"] and t["method"] == r["method"]
                     and t["system"] == "nbkit" and not t.get("error")), None)
        ratio = f"{ours['tokens_per_second'] / r['tokens_per_second']:.2f}x" if ours else "–"
        lines.append(f"| {r['size']} ({r['parameters'] / 1e9:.2f}B) | {r['method']} | {r['system']} | "
                     f"{r['tokens_per_second']:,.0f} | {ratio} | {r['train_seconds']:.1f} s | "
                     f"{r['peak_memory_mb'] / 1024:.2f} GiB | {r['final_loss']:.3f} | {r['mfu']:.1%} |")
    targets = []
    for size in dict.fromkeys(r["size"] for r in table) if where != "the CPU" else ():  # the target is a GPU's
        mem = {r["method"]: r["peak_memory_mb"] for r in table
               if r["size"] == size and r["system"] == "nbkit" and not r.get("error")}
        if "lora" in mem and "qlora" in mem:
            share = mem["qlora"] / mem["lora"]
            targets.append(f"{size}: nbkit's QLoRA peaks at {share:.2f}x its LoRA "
                           f"({'met' if share <= 0.5 else 'MISSED'}: target <= 0.5x)")
    return "\n".join(lines) + common.caption(
        quick, f"{n} examples of `threads`, 1 epoch, batch {tt.BATCH}, LoRA r={tt.LORA['r']} alpha={tt.LORA['alpha']} "
               f"all-linear, lr {tt.LR}, max length {tt.MAX_LENGTH}, on {where}; bf16 matmul peak "
               f"{peak / 1e12:.1f} TFLOP/s (measured in this run). " + " ".join(t + "." for t in targets))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1b", help="1b, 8b (comma-separated; default 1b)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--examples", type=int, help="training examples, one epoch (default 64; --quick 8)")
    parser.add_argument("--quick", action="store_true", help="a tiny model, 8 examples: does it run?")
    parser.add_argument("--write", action="store_true", help="update the GPU block of bench/README.md")
    parser.add_argument("--prepare", action="store_true", help="copy the tokenizer to build/gpu-bench (run here)")
    parser.add_argument("--check", action="store_true", help="print what this machine has for the benchmark")
    parser.add_argument("--one", nargs=3, metavar=("SYSTEM", "METHOD", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    common.fill(args, args.quick, examples=(64, 8))
    if args.prepare:
        prepare()
        return 0
    if args.check:
        print(json.dumps(check(), indent=2))
        return 0
    if args.one:
        common.emit(one(*args.one, args.examples))
        return 0

    found = check()
    print(json.dumps(found), file=sys.stderr, flush=True)
    if found["device"] != "cuda" and not args.quick:
        raise SystemExit("no CUDA device: this benchmark is for a GPU machine (--quick checks it on the CPU)")
    if found["missing for nbkit"]:  # the data, the prompts and the token counts go through nbkit for both systems
        raise SystemExit(f"missing here: {', '.join(found['missing for nbkit'])}; install them (wheels can travel with "
                         "the checkout) and rerun")
    from transformers import AutoTokenizer

    sizes = ["tiny"] if args.quick else args.sizes.split(",")
    peak = flops.matmul_peak("bfloat16", **({"n": 8192, "device": "cuda"} if found["device"] == "cuda" else {}))
    table = []
    for size in sizes:
        with tempfile.TemporaryDirectory() as folder:
            config, parameters = make_model(size, Path(folder))
            real = tt.lengths("threads", args.examples, AutoTokenizer.from_pretrained(folder))
            model_flops = flops.lora_step_flops(flops.Shape.of(config), real, tt.LORA["r"])
            for method in args.methods.split(","):
                for system in args.systems.split(","):
                    row = {"size": size, "method": method, "system": system, "parameters": parameters}
                    if method == "qlora" and not found["bitsandbytes"]:
                        table.append({**row, "error": "bitsandbytes is not installed"})
                        continue
                    try:
                        r = common.child(__file__, ["--one", system, method, folder, "--examples", str(args.examples)])
                    except RuntimeError as e:
                        table.append({**row, "error": str(e).splitlines()[0][:120]})
                        print(e, file=sys.stderr, flush=True)
                        continue
                    r.update(row, tokens_per_second=sum(real) / r["train_seconds"],
                             mfu=model_flops / r["train_seconds"] / peak)
                    table.append(r)
                    print(f"{size} {method:5} {system:5} train {r['train_seconds']:6.1f}s  "
                          f"peak {r['peak_memory_mb']:7.0f} MiB  loss {r['final_loss']:.3f}", file=sys.stderr, flush=True)
    where = found["gpu"] or "the CPU"
    text = render(table, peak, args.examples, args.quick, where)
    common.publish(text, args.quick, args.write, "gpu-table", "gpu", {"machine": found, "peak_bf16": peak, "table": table})
    return 0


if __name__ == "__main__":
    sys.exit(main())
