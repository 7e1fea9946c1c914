"""The benchmark's FLOP counter against a count done by hand (no model, no torch: milliseconds)."""

import sys
from pathlib import Path

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
