"""The encoder family's predictions: a classification run's head picks one of its labels."""

from __future__ import annotations

from ..metrics import normalize
from ..models import pick_device
from ..models.encoder import load_classifier


def predict_classifier(run, prompt, rows, batch_size: int = 32):
    """One row per example (input, output, expected, correct), as decoders' evaluation gives."""
    import pandas as pd
    import torch

    device = pick_device("auto")
    net, tokenizer = load_classifier(run, device)
    labels = run.config["labels"]
    inputs = [prompt.render(row) for row in rows]
    outputs = []
    with torch.inference_mode():
        for s in range(0, len(inputs), batch_size):
            enc = tokenizer(inputs[s:s + batch_size], padding=True, truncation=True,
                            max_length=run.config.get("max_length", 128), return_tensors="pt").to(device)
            outputs += [labels[i] for i in net(**enc).logits.argmax(-1).tolist()]
    expected = [prompt.render_target(row) for row in rows]
    return pd.DataFrame({"input": inputs, "output": outputs, "expected": expected,
                         "correct": [normalize(o) == normalize(e) for o, e in zip(outputs, expected)]})
