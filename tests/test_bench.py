"""The benchmark's FLOP counter against a count done by hand (no model, no torch: milliseconds)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import flops  # noqa: E402

# SmolLM2-135M: 30 layers, width 576, MLP 1536, 9 query heads and 3 key/value heads of 64, vocab 49152
SMOLLM2 = flops.Shape(layers=30, hidden=576, intermediate=1536, heads=9, kv_heads=3, vocab=49152)


def test_parameter_counts_by_hand():
    per_layer = 576 * 576 * 2 + 576 * 192 * 2 + 576 * 1536 * 3  # q, o; k, v; gate, up, down
    assert SMOLLM2.linear_params() == 30 * per_layer + 49152 * 576 == 134_479_872
    # the trainable count nbkit reports for LoRA r=8 on all-linear (bench/README.md methods table)
    assert SMOLLM2.lora_params(8) == 30 * 8 * (1152 * 2 + 768 * 2 + 2112 * 3) == 2_442_240


def test_step_flops_by_hand():
    s = 100
    by_hand = s * (4 * 134_479_872 + 6 * 2_442_240) + 12 * 30 * 576 * s * s
    assert flops.lora_step_flops(SMOLLM2, [s], r=8) == by_hand == 57_330_892_800
    assert flops.lora_step_flops(SMOLLM2, [s, s], r=8) == 2 * by_hand
    assert flops.lora_step_flops(SMOLLM2, [], r=8) == 0


def test_head_on_targets_gives_the_same_loss_and_gradients():
    """The speed-up the training benchmark led to (logits only where a target is predicted) changes no number."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from nbkit.training.trainer import head_on_targets

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=101)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    ids = torch.randint(0, 101, (3, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 5:8], labels[1, 9:12], labels[2, 2:4] = ids[0, 5:8], ids[1, 9:12], ids[2, 2:4]  # completions
    mask = torch.ones_like(ids)
    mask[2, 4:] = 0  # a padded row
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    fast = head_on_targets(model, batch)
    assert fast["logits_to_keep"].tolist() == [1, 2, 4, 5, 6, 8, 9, 10]  # positions whose next token is a target

    def loss_and_grads(inputs, **kw):
        model.zero_grad()
        loss = model(**inputs, **kw).loss
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]

    for kw in ({}, {"num_items_in_batch": torch.tensor(8)}):  # mean, and the Trainer's token-count normalisation
        (full, full_grads), (kept, kept_grads) = loss_and_grads(batch, **kw), loss_and_grads(fast, **kw)
        torch.testing.assert_close(kept, full)
        for a, b in zip(kept_grads, full_grads):
            torch.testing.assert_close(a, b)


SMOKE = {  # the CI mode of each script: the smallest sizes that still run every system / variant once
    "train_throughput.py": ["--examples", "2", "--datasets", "threads"],
    "eval_throughput.py": ["--score-rows", "4", "--generate-rows", "2"],
    # nbkit fp32, the bf16 peer recipe, 4-bit, the memory-budget plan (the others are flags of the first)
    "memory.py": ["--steps", "1", "--variants", "lora fp32|lora bf16 weights|qlora 4-bit|lora fp32, in 2 GiB"],
    "latency.py": [],
    "methods.py": ["--methods", "lora", "--precision", "bf16"],
    "profile_step.py": [],
    "encoder_classification.py": ["--sets", "topic", "--systems", "nbkit default,setfit"],  # decoders: methods.py
    "gpu.py": [],  # a tiny random Llama on the CPU: the GPU run's code paths, LoRA and 4-bit QLoRA, both systems
    "formats.py": [],  # 8 rows of one prompt, both formats
    "seeds.py": [],  # LoRA, 2 seeds of 1 step, 8 rows
    "levers.py": ["--examples", "8", "--variants",  # compiling: test_speed.py
                  "dropout 0, peft's forward, padded|dropout 0, fused LoRA, padded|defaults: dropout 0, fused LoRA, packed"],
    "defaults.py": ["--settings", "dropout 0"],  # 2 steps, 8 rows of sample:intent
}
ROWS = {  # what each table must show a row for
    "train_throughput.py": ["tutorial", "trl", "trl-fp32", "nbkit", "nbkit-bf16"],
    "eval_throughput.py": ["label scoring", "generation"],
    "memory.py": ["lora fp32", "lora bf16 weights", "qlora 4-bit", "lora fp32, in 2 GiB"],
    "latency.py": ["`%load_ext nbkit`", "… nbkit's own time beyond generation"],
    "methods.py": ["zero-shot", "lora", "lora, bf16"],
    "profile_step.py": ["matrix products", "LoRA products (rank 8)", "dropout masks (bernoulli)"],
    "gpu.py": ["peft", "nbkit"],
    "encoder_classification.py": ["nbkit default", "setfit"],
    "formats.py": ["topic (02)"],
    "seeds.py": ["lora"],
    "levers.py": ["dropout 0, peft's forward, padded", "dropout 0, fused LoRA, padded",
                  "defaults: dropout 0, fused LoRA, packed"],
    "defaults.py": ["dropout 0"],
}
COLUMN = {"train_throughput.py": 2, "gpu.py": 3, "levers.py": 2, "defaults.py": 2}  # where a table names its rows (default: the first column)


@pytest.mark.slow
@pytest.mark.parametrize("script", list(SMOKE))
def test_benchmark_script_runs_in_quick_mode_and_writes_nothing(script):
    """`make bench`'s scripts still run (CI cannot afford their real sizes: ~65 min). --quick never
    touches bench/README.md, README.md, bench/results/ or the quickstart."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    watched = [root / "bench" / "README.md", root / "README.md", root / "notebooks" / "00_quickstart.ipynb",
               *sorted((root / "bench" / "results").glob("*"))]
    before = {p: p.read_bytes() for p in watched}
    done = subprocess.run([sys.executable, str(root / "bench" / script), "--quick", *SMOKE[script]],
                          capture_output=True, text=True, timeout=600, cwd=root)
    assert done.returncode == 0, done.stderr[-3000:]
    table = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    for row in ROWS[script]:
        assert any(line.split("|")[COLUMN.get(script, 1)].strip() == row for line in table), (row, table)
    assert "quick check, not a result" in done.stdout
    assert {p: p.read_bytes() for p in watched} == before
    assert sorted((root / "bench" / "results").glob("*")) == watched[3:]
