"""``nbkit export RUN``: a tuned run as something other tools load without nbkit.

``merge=True`` folds the adapter into the base weights and writes a standalone
model directory (weights + tokenizer) that ``AutoModelForCausalLM`` loads. For a
QLoRA run the 4-bit base is dequantized first, so the adapter is merged into
the very weights it was trained against, not into the original full-precision
ones. The merged model's logits are then compared with the adapter's on
examples from the run's own data, and the difference is reported (and saved
in ``nbkit_export.json``). Without ``merge`` the adapter is copied with the
prompt it was trained with. ``format="gguf"`` writes the merged model as one GGUF file
(:mod:`nbkit.gguf_file`: f16 or q8_0, the tokenizer and the run's chat template inside) with an
Ollama ``Modelfile`` beside it, for llama.cpp and Ollama.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError, NbkitError, shown_path
from .runs import Run, write_json
from .session import get_run


@dataclass
class Export:
    """What ``export`` wrote: the folder, whether it is merged, and the largest logit difference found."""

    path: Path
    merged: bool
    max_logit_diff: float | None
    examples: int
    gguf: Path | None = None  # format="gguf": the file, in ``path`` beside its Modelfile

    def __repr__(self):
        check = (f", merged logits within {self.max_logit_diff:.2e} of the adapter's on {self.examples} examples"
                 if self.max_logit_diff is not None else "")
        what = f"GGUF {self.gguf.name}" if self.gguf else "merged model" if self.merged else "adapter"
        return f"<nbkit.Export {what} at {shown_path(self.path)}{check}>"


FORMATS = ("hf", "gguf")


def export(run: Run | str, path: str | os.PathLike, *, merge: bool = True, overwrite: bool = False,
           check_examples: int = 4, format: str = "hf", gguf_type: str = "f16", namespace=None) -> Export:
    """Write ``run`` to ``path``: a merged standalone model, or the adapter and its prompt.

    Args:
        run: a run, its name or directory.
        path: the folder to create.
        merge: fold the adapter into the base weights (LoRA, DoRA, IA3, QLoRA); learned prompts
            cannot be merged (they are extra input tokens), export them with ``merge=False``.
        overwrite: replace ``path`` if it exists.
        check_examples: how many of the run's training rows the merged model is checked on.
        format: ``hf`` (a transformers model directory) or ``gguf`` (one ``.gguf`` file and an
            Ollama ``Modelfile``; merged, a decoder run).
        gguf_type: the GGUF's weight type: ``f16`` or ``q8_0`` (about half the size); also ``f32``, ``bf16``.

    Returns:
        An :class:`Export`.
    """
    run = get_run(run, namespace)
    _check_format(run, format, gguf_type, merge)
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
        if format == "gguf":
            result = _to_gguf(run, tmp, path, result, gguf_type)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written is left behind
        raise
    write_json(tmp / "nbkit_export.json", {
        "run": run.name, "method": run.config.get("method"), "base_model": run.config.get("model"),
        "merged": result.merged, "max_logit_diff": result.max_logit_diff, "checked_examples": result.examples,
        "prompt": run.prompt, "format": format, "gguf_type": gguf_type if format == "gguf" else None,
    })
    old = path.with_name(f".{path.name}.old")
    if path.exists():  # the previous export goes only now that the new one is whole
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return result


def _check_format(run: Run, format: str, gguf_type: str, merge: bool) -> None:
    """``format`` and ``gguf_type`` checked before anything loads."""
    from .gguf_file import GGUF_TYPES, MODEL_TYPES
    from .models import model_config

    if format not in FORMATS:
        raise ConfigError("format", f"must be one of {', '.join(FORMATS)}, got {format!r}")
    if format != "gguf":
        return
    if gguf_type not in GGUF_TYPES:
        raise ConfigError("gguf_type", f"must be one of {', '.join(GGUF_TYPES)}, got {gguf_type!r}")
    if not merge:
        raise ConfigError("merge", "a GGUF file holds a whole model: export it merged (without --no-merge)")
    if run.family != "decoder":
        raise ConfigError("format", f"run {run.name!r} is an {run.family} run; GGUF holds decoder models "
                          "(llama.cpp, Ollama)")
    kind = model_config(run.config.get("model"))[0].model_type if not run.is_full_model else None
    if kind is not None and kind not in MODEL_TYPES:
        raise ConfigError("format", f"run {run.name!r} tuned a {kind} model; the GGUF writer knows "
                          f"{', '.join(MODEL_TYPES)}")


def _to_gguf(run: Run, tmp: Path, final: Path, merged: Export, gguf_type: str) -> Export:
    """The merged model in ``tmp`` turned into ``tmp/<run>-<type>.gguf`` and a Modelfile; the
    transformers files go (a tokenizer.json beside the GGUF would shadow the one inside it)."""
    from .gguf_file import modelfile, write_gguf

    hf = tmp.with_name(tmp.name + ".hf")
    shutil.rmtree(hf, ignore_errors=True)
    os.replace(tmp, hf)
    try:
        tmp.mkdir()
        name = f"{run.name}-{gguf_type}.gguf"
        chat = run.chat.get("chat_template")  # the template it trained with, not whatever the base has now
        write_gguf(hf, tmp / name, dtype=gguf_type, name=run.name, chat_template=chat)
        (tmp / "Modelfile").write_text(modelfile(name, hf, chat_template=chat))
    finally:
        shutil.rmtree(hf, ignore_errors=True)
    return Export(final, True, merged.max_logit_diff, merged.examples, gguf=final / name)


def _merge(run: Run, tmp: Path, final: Path, n: int) -> Export:
    import torch
    from peft import PeftConfig, PeftModel

    from .data import load_data
    from .encoding import encode_contexts, run_tokenizer
    from .methods import get_method
    from .hf import quiet
    from .models import load_model
    from .prompts import Prompt

    method = get_method(run.config.get("method", "lora"))
    if PeftConfig.from_pretrained(str(run.adapter_path)).is_prompt_learning:
        raise ConfigError("merge", f"run {run.name!r} learned a prompt ({method.name}): it is extra input, not a "
                          "weight change, and cannot be merged; export it with --no-merge and load it with peft")
    loaded = load_model(run.config["model"], quantize=method.quantize, fresh=True)
    tok = run_tokenizer(run.chat, loaded.tokenizer, run.name)  # the export carries the template it trained with
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
