"""Prompt tuning: a soft prompt of trainable embeddings before the input (Lester et al., 2021), through peft.

``init="text"`` starts the soft prompt from the fixed text of the nbkit prompt
being trained (its template without the ``{{ … }}`` parts), so a hand-written
prompt becomes a soft prompt in one step; ``random`` starts from random
vocabulary embeddings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..checks import positive_int
from .registry import Method, check_virtual_tokens, register_method


@dataclass
class PromptTuningOptions:
    virtual_tokens: int | None = field(
        default=None, metadata={"help": "length of the soft prompt; default: the init text's length, or 20"}
    )
    init: str = field(default="text", metadata={"help": "text (from the prompt's own words) or random"})

    def __post_init__(self):
        positive_int("virtual_tokens", self.virtual_tokens, allow_none=True)
        if self.init not in ("text", "random"):
            raise ConfigError("init", f"must be text or random, got {self.init!r}")


def init_text(template: str) -> str:
    """The fixed words of a Jinja template: variables, tags and comments removed, spaces collapsed."""
    text = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", " ", template, flags=re.S)
    return " ".join(text.split())


def build(model, options: PromptTuningOptions, context):
    from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

    n = options.virtual_tokens
    if options.init == "text":
        text = init_text(context.prompt.template)
        if not text:
            raise ConfigError("init", f"prompt {context.prompt.name!r} has no fixed text to start from; use --init random")
        n = n or len(context.tokenizer(text, add_special_tokens=False)["input_ids"])
        config = PromptTuningConfig(
            task_type="CAUSAL_LM", num_virtual_tokens=n, prompt_tuning_init=PromptTuningInit.TEXT,
            prompt_tuning_init_text=text, tokenizer_name_or_path=context.model_path,
        )
    else:
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=n or 20,
                                    prompt_tuning_init=PromptTuningInit.RANDOM)
    return get_peft_model(model, config)


register_method(Method(
    "prompt-tuning", PromptTuningOptions, build, quantize=None, lr=3e-2, kind="prompt", check=check_virtual_tokens,
    summary="a trainable soft prompt before the input, started from the prompt's own words",
))
