"""``nbkit export RUN``: a tuned run as something other tools load without nbkit.

``merge=True`` folds the adapter into the base weights and writes a standalone
model directory (weights + tokenizer) that ``AutoModelForCausalLM`` loads. For a
QLoRA run the 4-bit base is dequantized first, so the adapter is merged into
the very weights it was trained against, not into the original full-precision
ones. The merged model's logits are then compared with the adapter's on
examples from the run's own data, and the difference is reported (and saved
in ``nbkit_export.json``). Without ``merge`` the adapter is copied with the
prompt it was trained with.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, NbkitError
from .runs import Run, write_json
from .session import get_run


@dataclass
class Export:
    """What ``export`` wrote: the folder, whether it is merged, and the largest logit difference found."""

    path: Path
    merged: bool
    max_logit_diff: float | None
    examples: int

    def __repr__(self):
        check = (f", merged logits within {self.max_logit_diff:.2e} of the adapter's on {self.examples} examples"
                 if self.max_logit_diff is not None else "")
        return f"<nbkit.Export {'merged model' if self.merged else 'adapter'} at {self.path}{check}>"


def export(run: Run | str, path: str | os.PathLike, *, merge: bool = True, overwrite: bool = False,
           check_examples: int = 4, namespace=None) -> Export:
    """Write ``run`` to ``path``: a merged standalone model, or the adapter and its prompt.

    Args:
        run: a run, its name or directory.
        path: the folder to create.
        merge: fold the adapter into the base weights (LoRA, DoRA, IA3, QLoRA); learned prompts
            cannot be merged (they are extra input tokens), export them with ``merge=False``.
        overwrite: replace ``path`` if it exists.
        check_examples: how many of the run's training rows the merged model is checked on.

    Returns:
        An :class:`Export`.
    """
    run = get_run(run, namespace)
    path = Path(path)
    if path.exists() and not overwrite:
        raise ConfigError("out", f"{str(path)!r} already exists; pass --overwrite to replace it (it is replaced only "
                          "once the new export is complete), or give another --out")
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if run.is_full_model:  # already a whole model
            shutil.copytree(run.adapter_path, tmp)
            result = Export(path, True, None, 0)
        elif not merge:
            shutil.copytree(run.adapter_path, tmp)
            result = Export(path, False, None, 0)
        else:
            result = _merge(run, tmp, path, check_examples)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left behind
        raise
    write_json(tmp / "nbkit_export.json", {
        "run": run.name, "method": run.config.get("method"), "base_model": run.config.get("model"),
        "merged": result.merged, "max_logit_diff": result.max_logit_diff, "checked_examples": result.examples,
        "prompt": run.prompt,
    })
    old = path.with_name(f".{path.name}.old")
    if path.exists():  # the previous export goes only now that the new one is whole
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return result


def _merge(run: Run, tmp: Path, final: Path, n: int) -> Export:
    import torch
    from peft import PeftConfig, PeftModel

    from .data import load_data
    from .encoding import encode_contexts
    from .methods import get_method
    from .hf import quiet
    from .models import load_model
    from .prompts import Prompt

    method = get_method(run.config.get("method", "lora"))
    if PeftConfig.from_pretrained(str(run.adapter_path)).is_prompt_learning:
        raise ConfigError("merge", f"run {run.name!r} learned a prompt ({method.name}): it is extra input, not a "
                          "weight change, and cannot be merged; export it with --no-merge and load it with peft")
    loaded = load_model(run.config["model"], quantize=method.quantize, fresh=True)
    tok = loaded.tokenizer
    prompt = Prompt.from_dict(run.prompt)
    try:
        rows = list(load_data(run.tasks[0]["data"])["train"])[:n]
        contexts = encode_contexts(prompt, rows, tok, rows)
    except Exception:  # data given as a notebook variable is not around any more: check on the prompt's words
        contexts = [tok(prompt.template, add_special_tokens=False)["input_ids"][:128]]
    if method.quantize:
        # the layout training used (bitsandbytes would otherwise switch to its bf16 CPU inference
        # kernel, which differs from what the adapter was trained against; docs/qlora-cpu.md)
        from .methods.qlora import keep_trainable_layout

        keep_trainable_layout(loaded.model)
    with torch.inference_mode():
        tuned = PeftModel.from_pretrained(loaded.model, str(run.adapter_path)).eval()
        expected = [tuned(input_ids=torch.tensor([c])).logits.float() for c in contexts]
        base = tuned.unload()
        if method.quantize:
            # merge into the weights the adapter was trained against: the dequantized 4-bit ones
            base = base.dequantize(dtype=torch.float32)
            base.config.__dict__.pop("quantization_config", None)
        merged = PeftModel.from_pretrained(base, str(run.adapter_path)).merge_and_unload().eval()
        got = [merged(input_ids=torch.tensor([c])).logits.float() for c in contexts]
    diff = max(float((a - b).abs().max()) for a, b in zip(expected, got))
    scale = max(float(a.abs().max()) for a in expected)
    if diff > 1e-2 * scale:
        raise NbkitError(f"the merged model's logits differ from the adapter's by {diff:.3g} (of {scale:.3g}); "
                         f"nothing was written to {final}")
    with quiet():
        merged.save_pretrained(tmp)
        tok.save_pretrained(tmp)
    return Export(final, True, diff, len(contexts))
