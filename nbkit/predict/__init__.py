"""One ``predict`` per model family, each returning the standard frame.

A :class:`Target` is what gets scored: a prompt on a base model, or a run (its prompt, its
base model and its adapter). Its family is decided once, when it is made, and picks the
predictor: every predictor returns one row per example with ``input``, ``output``,
``expected`` and ``correct`` (and ``nll``, ``tokens`` for perplexity), so evaluation, prompt
search and the dev evaluation during training treat every family alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..config import DEFAULT_MODEL
from ..encoding import run_tokenizer
from ..errors import ConfigError
from ..methods import get_method
from ..models import family_of, load_model
from ..prompts import Prompt
from ..runs import Run
from .api import predict as predict_api
from .decoder import predict_decoder, predict_preference
from .encoder import predict_classifier
from .seq2seq import predict_seq2seq


def run_model(run: Run) -> tuple[str, str | None, Any]:
    """(model spec, quantization, adapter directory) that reproduce ``run``.

    A full fine-tune saved a whole model: that directory is the model and there is no adapter.
    """
    if run.is_full_model:
        return str(run.adapter_path), None, None
    config = run.config
    return config.get("model", DEFAULT_MODEL), get_method(config.get("method", "lora")).quantize, run.adapter_path


@dataclass
class Target:
    """A prompt on a base model, or a run with its adapter: one row of a report."""

    label: str
    prompt: Prompt
    run: Run | None
    model: str
    quantize: str | None = None
    adapter: Any = None  # the adapter directory to apply, if any
    family: str = field(default="")

    def __post_init__(self):
        if not self.family:  # a classification run is its own encoder with a head; else the model decides
            is_classifier = self.run is not None and self.run.task == "classification"
            self.family = "encoder" if is_classifier else family_of(self.model)

    @classmethod
    def of_run(cls, run: Run, prompt: Prompt) -> "Target":
        label = f"{prompt.name} + {run.name}"
        if run.task == "classification":
            return cls(label, prompt, run, run.config["model"])
        return cls(label, prompt, run, *run_model(run))


@dataclass
class Prediction:
    """A target's predictions, and how an API target chose its labels, what it cost, what failed."""

    frame: Any
    how: str | None = None
    stats: dict | None = None
    error: str | None = None


def _decoder(target: Target, prompt, rows, train_rows, settings: Mapping) -> Prediction:
    loaded = load_model(target.model, quantize=target.quantize)
    tokenizer = loaded.tokenizer if target.run is None else run_tokenizer(target.run.chat, loaded.tokenizer,
                                                                          target.run.name)
    with loaded.adapter(target.adapter) as lm:
        if settings.get("preference"):
            return Prediction(predict_preference(lm, tokenizer, prompt, rows, train_rows, settings["batch_size"]))
        return Prediction(predict_decoder(lm, tokenizer, prompt, rows, train_rows, settings["scoring"],
                                          settings["batch_size"], perplexity=settings["perplexity"]))


def _encoder(target: Target, prompt, rows, train_rows, settings: Mapping) -> Prediction:
    if target.run is None:
        raise ConfigError("model", f"{target.model!r} is a sentence encoder: it scores a prompt's choices only "
                          "once tuned with a head (%tune --task classification); evaluate that run")
    return Prediction(predict_classifier(target.run, prompt, rows))


def _seq2seq(target: Target, prompt, rows, train_rows, settings: Mapping) -> Prediction:
    return Prediction(predict_seq2seq(target.model, target.adapter, prompt, rows,
                                      batch_size=max(1, settings["batch_size"] // 2)))


def _api(target: Target, prompt, rows, train_rows, settings: Mapping) -> Prediction:
    """The rows answered before a failure are kept (and cached on disk, so a re-run sends only the
    rest); a target none of whose rows was answered raises the error."""
    from ..models.api import ApiModel

    api = ApiModel(target.model, **settings["api"])
    frame, how, errors = predict_api(api, prompt, rows, train_rows)
    if errors and not len(frame):
        raise errors[0]
    failed = f"{len(errors)} of {len(rows)} rows failed: {errors[0]}" if errors else None
    return Prediction(frame, how, api.stats.summary(), failed)


PREDICTORS: dict[str, Callable[..., Prediction]] = {
    "decoder": _decoder, "encoder": _encoder, "seq2seq": _seq2seq, "api": _api,
}


def predict(target: Target, prompt: Prompt, rows, train_rows, *, scoring: str = "sum", batch_size: int = 16,
            perplexity: bool = False, api: Mapping | None = None, preference: bool = False) -> Prediction:
    """``target``'s predictions on ``rows`` (shots drawn from ``train_rows``), by its family's predictor.

    Args:
        target: what to score.
        prompt: its prompt, with the target resolved for these rows.
        rows: the rows to predict.
        train_rows: where few-shot examples come from.
        scoring: ``sum`` or ``mean`` label log-likelihood (decoders).
        batch_size: sequences per forward pass.
        perplexity: also score the expected text's log-likelihood (decoders).
        api: ``base_url``, ``cache``, ``concurrency`` for API targets.
        preference: score each row's ``chosen`` against its ``rejected`` completion (decoders).
    """
    settings = {"scoring": scoring, "batch_size": batch_size, "perplexity": perplexity, "api": dict(api or {}),
                "preference": preference}
    return PREDICTORS[target.family](target, prompt, rows, train_rows, settings)
