"""The encoder-decoder family's predictions: greedy text-to-text generation.

The prompt renders the encoder's input (no chat template: these models were not trained on
one) and its ``target`` is what the decoder should write.
"""

from __future__ import annotations

from typing import Sequence

from ..errors import DataError
from ..metrics import normalize
from ..models import pick_device
from ..models.seq2seq import load_seq2seq


def predict_seq2seq(model_spec: str, adapter, prompt, rows: Sequence, batch_size: int = 8):
    """One row per example (input, output, expected, correct), greedy generation."""
    import pandas as pd
    import torch

    if not rows:
        raise DataError(f"no rows to use with prompt {prompt.name!r}")
    device = pick_device("auto")
    net, tokenizer = load_seq2seq(model_spec, adapter, device)
    inputs = [prompt.render(row) for row in rows]
    expected = [prompt.render_target(row) for row in rows]
    longest = max(len(tokenizer(e, add_special_tokens=False)["input_ids"]) for e in expected)
    outputs = []
    with torch.inference_mode():
        for s in range(0, len(inputs), batch_size):
            enc = tokenizer(inputs[s:s + batch_size], padding=True, truncation=True, return_tensors="pt").to(device)
            enc.pop("token_type_ids", None)
            ids = net.generate(**enc, max_new_tokens=longest + 16, do_sample=False, num_beams=1)
            outputs += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    return pd.DataFrame({"input": inputs, "output": outputs, "expected": expected,
                         "correct": [normalize(o) == normalize(e) for o, e in zip(outputs, expected)]})
