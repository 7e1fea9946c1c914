"""Encoder-decoder models (issue 7, item 6) on a tiny randomly initialised T5 built from a config:
%tune and %evaluate work with them for a text-to-text task (no download)."""

from __future__ import annotations

import pytest

ROWS = [
    {"text": f"The {thing} meeting moved from {a} to {b} because the room was booked.",
     "summary": f"{thing} meeting moved to {b}"}
    for thing, a, b in [("budget", "monday", "tuesday"), ("design", "friday", "thursday"),
                        ("sales", "tuesday", "wednesday"), ("hiring", "thursday", "monday"),
                        ("support", "wednesday", "friday"), ("launch", "monday", "thursday"),
                        ("review", "friday", "tuesday"), ("planning", "tuesday", "monday"),
                        ("security", "thursday", "friday"), ("training", "wednesday", "monday")]
]


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A 2-layer T5 with random weights and the MiniLM WordPiece tokenizer, saved like a checkpoint."""
    import torch
    from transformers import AutoTokenizer, T5Config, T5ForConditionalGeneration

    from nbkit.models import encoder_path

    tokenizer = AutoTokenizer.from_pretrained(encoder_path("minilm-l6"))
    torch.manual_seed(0)
    config = T5Config(vocab_size=tokenizer.vocab_size, d_model=64, d_kv=16, d_ff=128, num_layers=2,
                      num_decoder_layers=2, num_heads=4, pad_token_id=tokenizer.pad_token_id,
                      eos_token_id=tokenizer.sep_token_id, decoder_start_token_id=tokenizer.pad_token_id)
    path = tmp_path_factory.mktemp("tiny-t5")
    T5ForConditionalGeneration(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def test_tiny_t5_is_tuned_and_evaluated_through_the_magics(ip, tiny_t5):
    from nbkit.models import family_of

    def is_seq2seq(spec):
        return family_of(spec) == "seq2seq"

    assert is_seq2seq(tiny_t5) and not is_seq2seq("smollm2-135m")
    ip.user_ns["meetings"] = {"train": ROWS, "test": ROWS[:4]}
    ip.run_cell_magic("prompt", "brief --target '{{ summary }}'", "summarize: {{ text }}")
    ip.run_line_magic("tune", f"--prompt brief --data meetings --model {tiny_t5} --method full --epochs 40 "
                              "--lr 3e-3 --batch-size 5 --warmup 0 --name t5-full --progress none -o full")
    ip.run_line_magic("tune", f"--prompt brief --data meetings --model {tiny_t5} --method lora --epochs 5 "
                              "--name t5-lora --progress none -o lora")
    full, lora = ip.user_ns["full"], ip.user_ns["lora"]
    assert full.config["architecture"] == "seq2seq" and full.is_full_model
    assert (lora.adapter_path / "adapter_config.json").exists()
    assert full.metrics["train_loss"] < full.metrics["first_loss"] / 3
    assert lora.metrics["train_loss"] < lora.metrics["first_loss"]
    report = ip.run_line_magic("evaluate", f"--prompt brief --run t5-full --run t5-lora --model {tiny_t5} "
                                           "--data meetings --split train --metric rougeL --metric exact_match")
    table = report.frame
    print(table)
    assert list(table.index) == ["brief", "brief + t5-full", "brief + t5-lora"]
    # the random model says nothing useful; the fully tuned one learned the training summaries
    assert table.loc["brief + t5-full", "rougeL"] > table.loc["brief", "rougeL"] + 0.5
    with pytest.raises(Exception, match="perplexity is for decoders"):
        ip.run_line_magic("evaluate", f"--prompt brief --model {tiny_t5} --data meetings --metric perplexity")
    with pytest.raises(Exception, match="not available for encoder-decoder"):
        ip.run_line_magic("tune", f"--prompt brief --data meetings --model {tiny_t5} --method prefix-tuning")
