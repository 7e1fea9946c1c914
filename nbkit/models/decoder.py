"""The decoder family: causal language models, with adapters swapped onto one loaded base.

A spec is an embedded model's name (``smollm2-135m``), a local directory or a hub id.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

from ..errors import NbkitError, UnknownNameError
from ..hf import quiet
from ..runs import saved_version
from .devices import compute_dtype, quantization_config, under_fsdp
from .embedded import EMBEDDED, ENCODERS, embedded_path


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
        "model", spec, [*EMBEDDED, *ENCODERS], "A model can also be a local directory or a hub id like org/name"
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
        where = str(Path(path).resolve())
        key = saved_version(where)  # an adapter saved again under the same path loads anew
        kind = peft_type(where)
        if isinstance(self.model, PeftModel) and peft_type_of(self.model) != kind:
            # peft keeps one kind of tuner per model (LoRA and IA3 layers, or a learned prompt):
            # take the current kind off, keeping the base's own weights, and load the new kind
            self.model = self.model.unload() if not self.model.active_peft_config.is_prompt_learning \
                else self.model.base_model
            self._adapters.clear()
        if key not in self._adapters:
            name = f"a{len(self._adapters)}"
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(where, adapter_name=name)
            else:
                self.model = PeftModel.from_pretrained(self.model, where, adapter_name=name)
            self.model.eval()
            self._adapters[key] = name
        self.model.set_adapter(self._adapters[key])
        yield self.model


def peft_type(adapter_dir: str) -> str:
    """The peft type an adapter directory holds (LORA, IA3, PROMPT_TUNING, …); DoRA counts as LoRA."""
    return json.loads((Path(adapter_dir) / "adapter_config.json").read_text()).get("peft_type", "LORA")


def peft_type_of(model) -> str:
    peft_type = model.active_peft_config.peft_type
    return getattr(peft_type, "value", str(peft_type))


def load_decoder(spec: str, quantize: str | None, device: str) -> Model:
    """A decoder and its tokenizer, on ``device``, optionally quantized (4-bit NF4 or 8-bit)."""
    name, source = resolve(spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": compute_dtype(device)}
    if quantize:
        kwargs["quantization_config"] = quantization_config(quantize, device)
        if not under_fsdp():  # under FSDP the Trainer places (and shards) the model
            kwargs["device_map"] = {"": device}
    try:
        with quiet():
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise NbkitError(f"could not load model {spec!r}: {e}") from None
    if not quantize:
        model.to(device)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return Model(name, model, tokenizer, device, quantize)


def load_tokenizer(spec: str):
    """The tokenizer of a decoder spec alone (no weights), with a pad token as :func:`load_decoder` sets it."""
    from transformers import AutoTokenizer

    _, source = resolve(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as e:
        raise NbkitError(f"could not load the tokenizer of {spec!r}: {e}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def model_config(spec: str):
    """The model's configuration and where it lives, without loading weights."""
    from transformers import AutoConfig

    _, source = resolve(spec)
    try:
        return AutoConfig.from_pretrained(source), source
    except OSError as e:
        raise NbkitError(f"could not load model {spec!r}: {e}") from None
