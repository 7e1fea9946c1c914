"""The encoder family's predictions: a classification run's head picks one of its labels."""

from __future__ import annotations

from ..errors import DataError
from ..metrics import normalize
from ..models import pick_device
from ..models.encoder import load_classifier, load_setfit


def encoder_inputs(run, prompt, rows) -> list[str]:
    """What the run's encoder reads of each row: the rendered prompt, or the column it was tuned on (``--input``;
    runs from before it existed read the prompt)."""
    column = run.config.get("input") or "prompt"
    if column == "prompt":
        return [prompt.render(row) for row in rows]
    missing = next((i for i, row in enumerate(rows) if column not in row), None)
    if missing is not None:
        raise DataError(f"row {missing} has no {column!r} column, which run {run.name!r} reads (it was tuned "
                        f"with --input {column})")
    return [str(row[column]) for row in rows]


def predict_classifier(run, prompt, rows, batch_size: int = 32):
    """One row per example (input, output, expected, correct), as decoders' evaluation gives."""
    import pandas as pd
    import torch

    device = pick_device("auto")
    labels = run.config["labels"]
    inputs = encoder_inputs(run, prompt, rows)
    outputs = []
    if run.config.get("method") == "setfit":
        model = load_setfit(run, device)
        if inputs:
            outputs = [labels[int(i)] for i in model.predict(inputs, batch_size=batch_size, use_labels=False,
                                                             as_numpy=True, show_progress_bar=False)]
    else:
        net, tokenizer = load_classifier(run, device)
        with torch.inference_mode():
            for s in range(0, len(inputs), batch_size):
                enc = tokenizer(inputs[s:s + batch_size], padding=True, truncation=True,
                                max_length=run.config.get("max_length", 128), return_tensors="pt").to(device)
                outputs += [labels[i] for i in net(**enc).logits.argmax(-1).tolist()]
    expected = [prompt.render_target(row) for row in rows]
    return pd.DataFrame({"input": inputs, "output": outputs, "expected": expected,
                         "correct": [normalize(o) == normalize(e) for o, e in zip(outputs, expected)]})
