"""Retrieval: document collections, semantic-search indexes, and the nearest training rows.

An :class:`Index` is a corpus encoded by one encoder (the base, or one an embedding run
tuned), saved on disk and searched by cosine similarity. Prompts reach it through
:func:`passages` (``%%prompt --retrieve``) and nearest-neighbour shots through
:func:`nearest`; both are handed to :mod:`nbkit.prompts` when this module is imported, so
the prompt layer itself loads no model.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from . import prompts
from .config import DEFAULT_ENCODER
from .data import samples_dir
from .errors import ConfigError, DataError, NbkitError, shown_path
from .models import EncoderModel, load_model
from .runs import runs_dir, write_json
from .session import current, get_run


# -- corpora and pairs ---------------------------------------------------------------------------
def load_corpus(spec: Any, namespace: Mapping[str, Any] | None = None) -> list[dict]:
    """Documents as ``[{"id", "text"}]`` from ``sample:NAME`` (its ``corpus.jsonl``), a ``.jsonl``/``.csv``
    file or a folder holding ``corpus.jsonl``, a notebook variable, or the object itself (a list of
    strings, a list of dicts with ``text`` and optionally ``id`` and ``title``, or a DataFrame).
    A ``title`` is put before the text (``"title. text"``)."""
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
        return f"<nbkit.Index {self.path.name}: {len(self.docs)} documents by {by} at {shown_path(self.path)}>"

    def __len__(self):
        return len(self.docs)

    @property
    def encoder(self) -> EncoderModel:
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

        tmp = self.path.with_name(f".{self.path.name}.tmp")
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
        _check_same(meta, path, model, run_key(run))
        docs = [json.loads(line) for line in (path / "corpus.jsonl").read_text().splitlines() if line.strip()]
        return cls(path, docs, load_file(str(path / "vectors.safetensors"))["vectors"], meta["model"], meta["run"],
                   meta["fingerprint"])


def run_key(run) -> str | None:
    """How an index records the run whose encoder built it: its resolved directory."""
    if run is None:
        return None
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


def fingerprint(docs: Sequence[Mapping]) -> str:
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
    docs = load_corpus(corpus, namespace)
    if run is not None:
        run = get_run(run, namespace)
        model = run.config.get("model", model)
    if name is None:
        name = corpus[len("sample:"):] if isinstance(corpus, str) and corpus.startswith("sample:") else \
            (corpus if isinstance(corpus, str) and corpus.isidentifier() else "corpus")
    path = (run.path / "indexes" if run is not None else runs_dir() / "indexes") / name
    built_by = str(run.path.resolve()) if run is not None else None
    digest = fingerprint(docs)
    if (path / "index.json").exists() and not rebuild:
        meta = json.loads((path / "index.json").read_text())
        _check_same(meta, path, model, built_by)
        if meta["fingerprint"] != digest:
            raise ConfigError("corpus", f"differs from the one indexed at {path}; pass rebuild=True to replace it "
                              "or give another name")
        return _remember(Index.load(path, model, run))
    encoder = load_model(model)
    if not isinstance(encoder, EncoderModel):
        raise ConfigError("model", f"{model!r} is not a sentence encoder; use minilm-l6 or an encoder directory")
    vectors = encoder.encode([d["text"] for d in docs], run=run)
    built = Index(path, docs, vectors, model, built_by, digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    built.save()
    return _remember(built)


def _remember(found: Index) -> Index:
    """Keep the session's copy, so prompts that retrieve from its directory do not reload it."""
    current().cache[("index", str(found.path.resolve()))] = found
    return found


def get_index(spec: Any, namespace: Mapping[str, Any] | None = None) -> Index:
    """An :class:`Index` from itself, a notebook variable holding one, or a saved index directory."""
    if isinstance(spec, Index):
        return spec
    namespace = namespace or {}
    if isinstance(spec, str) and isinstance(namespace.get(spec), Index):
        return namespace[spec]
    for path in (Path(str(spec)).expanduser(), runs_dir() / "indexes" / str(spec)):
        if (path / "index.json").exists():
            return current().cached(("index", str(path.resolve())), lambda: Index.load(path))
    raise NbkitError(f"no index {spec!r}: give a variable holding nbkit.index(...) or a saved index directory")


# -- what prompts are handed -----------------------------------------------------------------------
def passages(index: str, query: str, k: int) -> str:
    """The top ``k`` passages of the saved index ``index`` for ``query``, as numbered lines."""
    return get_index(index).passages(query, k)


def nearest(queries: Sequence[str], pool: Sequence[str], k: int, exclude_same: bool = False,
            encoder: str = DEFAULT_ENCODER) -> list[list[int]]:
    """For each query, the indices of its ``k`` most similar pool texts, least similar first (so the
    nearest ends up next to the query when they are shown in order). With ``exclude_same`` a pool
    text identical to the query is never its own neighbour (a training row is not its own shot).

    Similarity is the cosine of the session's sentence encoder (the embedded all-MiniLM-L6-v2).
    """
    import torch

    model = load_model(encoder)
    q, p = model.encode_cached(queries), model.encode_cached(pool)
    similarity = q @ p.T
    if exclude_same:
        where: dict[str, list[int]] = {}
        for j, text in enumerate(pool):
            where.setdefault(text, []).append(j)
        for i, text in enumerate(queries):
            for j in where.get(text, []):
                similarity[i, j] = float("-inf")
    top = torch.topk(similarity, k, dim=1).indices  # most similar first
    return [list(reversed(row.tolist())) for row in top]


prompts.use_retrieval(passages=passages, nearest=nearest)
