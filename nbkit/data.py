"""Data specs → ``datasets.DatasetDict`` with ``train`` and ``test`` splits.

A spec is ``sample:NAME`` (shipped in the package), a file (``.csv``,
``.jsonl``, ``.json``, ``.parquet``), a folder of such files named by split
(``train.jsonl``, ``test.jsonl``, …), ``hf:ID[:CONFIG]`` (the hub, when online),
the name of a notebook variable, or the object itself (pandas DataFrame, list
of dicts, ``datasets.Dataset`` or ``DatasetDict``).
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError, DataError, UnknownNameError

FILE_SUFFIXES = (".csv", ".jsonl", ".json", ".parquet")
# A data set without a test split is split like this, always the same way.
TEST_FRACTION, SPLIT_SEED = 0.2, 0


def samples_dir() -> Path:
    return Path(str(resources.files("nbkit") / "samples"))


def available_samples() -> list[str]:
    """Names usable as ``sample:NAME``."""
    return sorted(p.name for p in samples_dir().iterdir() if (p / "train.jsonl").exists())


def load_data(spec: Any, namespace: Mapping[str, Any] | None = None, split: str | None = None):
    """Load a data set from a spec.

    Args:
        spec: ``sample:NAME``, a file path, ``hf:ID[:CONFIG]``, a variable name found in
            ``namespace``, or a DataFrame / list of dicts / ``Dataset`` / ``DatasetDict``.
        namespace: where variable names are looked up (the notebook's user namespace).
        split: return only this split (a ``Dataset``) instead of the ``DatasetDict``.

    Returns:
        A ``DatasetDict`` with at least ``train`` and ``test``, or one split.
    """
    data = _with_test_split(_resolve(spec, namespace or {}), spec)
    for name, part in data.items():
        if len(part) == 0:
            raise DataError(f"the {name!r} split of {_describe(spec)} is empty")
    if split is None:
        return data
    if split not in data:
        raise UnknownNameError("split", split, data.keys())
    return data[split]


def _describe(spec) -> str:
    return repr(spec) if isinstance(spec, str) else f"the {type(spec).__name__} passed in"


def _resolve(spec: Any, namespace: Mapping[str, Any]):
    import datasets

    if not isinstance(spec, str):
        return _from_object(spec, _describe(spec))
    if spec.startswith("sample:"):
        return _from_sample(spec[len("sample:"):])
    if spec.startswith("hf:"):
        return _from_hub(spec[len("hf:"):])
    path = Path(spec).expanduser()
    if path.is_dir() and spec not in namespace:
        return _from_folder(path)
    if path.suffix.lower() in FILE_SUFFIXES:
        if not path.exists():
            raise DataError(f"data file {spec!r} not found (looked in {path.resolve().parent})")
        return datasets.DatasetDict(_read_file(path))
    if spec in namespace:
        return _from_object(namespace[spec], f"variable {spec!r}")
    raise UnknownNameError(
        "data", spec, [f"sample:{s}" for s in available_samples()],
        f"Data can also be a file ({', '.join(FILE_SUFFIXES)}), hf:ID, or the name of a notebook variable",
    )


def _from_sample(name: str):
    import datasets

    folder = samples_dir() / name
    if not (folder / "train.jsonl").exists():
        raise UnknownNameError("sample data set", name, available_samples())
    return datasets.DatasetDict({f.stem: _read_file(f)["train"] for f in sorted(folder.glob("*.jsonl"))})


def _from_folder(folder: Path):
    """A folder whose files are the splits: ``train.jsonl``, ``test.csv``, … (what sample data and job exports hold)."""
    import datasets

    files = sorted(f for f in folder.iterdir() if f.suffix.lower() in FILE_SUFFIXES)
    if not any(f.stem == "train" for f in files):
        raise DataError(f"data folder {str(folder)!r} has no train file; it needs train.jsonl (or .csv, .json, "
                        f".parquet) and optionally test.jsonl; found: {', '.join(f.name for f in files) or 'nothing'}")
    return datasets.DatasetDict({f.stem: _read_file(f)["train"] for f in files})


def save_splits(splits, folder: Path) -> None:
    """Write each split as ``<split>.jsonl`` into ``folder``: what a folder data spec reads back."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        part.to_pandas().to_json(folder / f"{name}.jsonl", orient="records", lines=True, force_ascii=False)


def _from_hub(ident: str):
    import datasets

    repo, _, config = ident.partition(":")
    try:
        return datasets.load_dataset(repo, config or None)
    except Exception as e:  # offline, unknown id, gated: all user-facing
        raise DataError(f"could not load hf:{ident} from the hub ({type(e).__name__}: {e}); it needs network access") from None


def _read_file(path: Path) -> dict:
    import pandas as pd

    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return {"train": _dataset(pd.read_csv(path), repr(str(path)))}
        if suffix == ".jsonl":
            return {"train": _dataset(_jsonl_rows(path), repr(str(path)))}
        if suffix == ".parquet":
            return {"train": _dataset(pd.read_parquet(path), repr(str(path)))}
        content = json.loads(path.read_text())  # .json: a list of records, or {"train": [...], "test": [...]}
    except DataError:
        raise
    except json.JSONDecodeError as e:
        raise DataError(f"{str(path)!r} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except (ValueError, OSError) as e:
        raise DataError(f"could not read {str(path)!r}: {e}") from None
    if isinstance(content, dict) and content and all(isinstance(v, list) for v in content.values()):
        return {k: _dataset(v, f"{str(path)!r}, split {k!r}") for k, v in content.items()}
    if isinstance(content, list):
        return {"train": _dataset(content, repr(str(path)))}
    raise DataError(f"{str(path)!r} holds a JSON {type(content).__name__}; a .json data file is a list of records "
                    '([{"text": ..., "label": ...}, ...]) or splits of them ({"train": [...], "test": [...]})')


def _jsonl_rows(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a line that does not parse is an error naming it."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DataError(f"{str(path)!r} line {number} is not valid JSON: {e.msg} (column {e.colno})") from None
    return rows


def _dataset(rows, what: str):
    """A ``datasets.Dataset`` of a DataFrame or a list of records; records that are not objects, or a column
    whose values change type (an int, then a string), are errors naming the place."""
    import datasets
    import pandas as pd

    if isinstance(rows, pd.DataFrame):  # typed by pandas already: only an object column can mix types
        try:
            return datasets.Dataset.from_pandas(rows, preserve_index=False)
        except (TypeError, ValueError, OverflowError) as e:
            _check_column_types(rows.to_dict("records"), what)
            raise DataError(f"{what}: the rows do not make a table: {type(e).__name__}: {e}") from None
    bad = next((i for i, r in enumerate(rows) if not isinstance(r, Mapping)), None)
    if bad is not None:
        raise DataError(f"{what}: record {bad} is {type(rows[bad]).__name__}, not an object with named fields")
    _check_column_types(rows, what)
    columns = list(dict.fromkeys(k for r in rows for k in r))  # every row's fields; one may lack some
    try:
        return datasets.Dataset.from_dict({c: [r.get(c) for r in rows] for c in columns})
    except (TypeError, ValueError, OverflowError) as e:  # pyarrow's errors are ValueError/TypeError subclasses
        raise DataError(f"{what}: the rows do not make a table: {type(e).__name__}: {e}") from None


def _check_column_types(rows, what: str) -> None:
    kinds: dict[str, tuple[type, int, str]] = {}
    for i, row in enumerate(rows):
        for column, value in row.items():
            if value is None or (isinstance(value, float) and value != value):
                continue  # missing values are allowed in any column
            kind = float if isinstance(value, int) and not isinstance(value, bool) else type(value)
            seen = kinds.setdefault(column, (kind, i, type(value).__name__))
            if seen[0] is not kind:
                raise DataError(f"{what}: column {column!r} holds {seen[2]} in record {seen[1]} but "
                                f"{type(value).__name__} in record {i}; make every value of a column the same type "
                                "(e.g. all strings)")


def _from_object(obj: Any, what: str):
    import datasets
    import pandas as pd

    if isinstance(obj, datasets.DatasetDict):
        return obj
    if isinstance(obj, datasets.Dataset):
        return datasets.DatasetDict({"train": obj})
    if isinstance(obj, pd.DataFrame):
        return datasets.DatasetDict({"train": _dataset(obj, what)})
    if isinstance(obj, (list, tuple)) and all(isinstance(r, Mapping) for r in obj):
        if not obj:
            raise DataError(f"{what} is an empty list")
        return datasets.DatasetDict({"train": _dataset(list(obj), what)})
    if isinstance(obj, Mapping) and obj and all(isinstance(v, (list, pd.DataFrame, datasets.Dataset)) for v in obj.values()):
        return datasets.DatasetDict({k: _from_object(v, f"{what}[{k!r}]")["train"] for k, v in obj.items()})
    raise DataError(
        f"{what} is a {type(obj).__name__}; data must be a pandas DataFrame, a list of dicts, "
        "a datasets.Dataset or DatasetDict"
    )


_SPLIT_SAID: set = set()  # the data sets whose 80/20 split this process has told the user about
FEW_TEST_ROWS = 50  # under this many test rows, one row moves an accuracy by more than two points


def _with_test_split(data, spec=None):
    import datasets

    if "test" in data or "train" not in data:
        if "train" not in data:
            raise DataError(f"the data has no 'train' split; splits: {', '.join(data)}")
        return data
    if len(data["train"]) < 2:
        raise DataError(f"the data has {len(data['train'])} row(s); at least 2 are needed to split off a test set")
    parts = data["train"].train_test_split(test_size=TEST_FRACTION, seed=SPLIT_SEED)
    rows = data["train"]
    said = (_describe(spec), len(rows), json.dumps([rows[0], rows[-1]], sort_keys=True, default=str))
    if said not in _SPLIT_SAID:  # a split made for the user is said once per data set, with its sizes
        _SPLIT_SAID.add(said)
        test = len(parts["test"])
        print(f"nbkit: {said[0]} has no test split: {test} of its {said[1]} rows are held out as the test split "
              f"({TEST_FRACTION:.0%}, rounded up; the same rows every time), {len(parts['train'])} train"
              + (f"; with under {FEW_TEST_ROWS} test rows one row is {100 / test:.1f} points of accuracy: "
                 "pass a test split of your own for a measure closer than that" if test < FEW_TEST_ROWS else ""))
    return datasets.DatasetDict({**data, "train": parts["train"], "test": parts["test"]})


def hold_out(rows: list, size: float | int, seed: int, leaves: str) -> tuple[list, list]:
    """``(kept, held)``: ``size`` rows (a count, or a fraction of ``rows``) held out, chosen by ``seed``.

    ``leaves`` ends the error when nothing would be kept ("nothing would be left to train on").
    """
    import random

    n = int(size) if size >= 1 else max(1, round(size * len(rows)))
    if n >= len(rows):
        raise ConfigError("dev", f"holds out {n} of {len(rows)} training rows; {leaves}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[:n])
    return [r for i, r in enumerate(rows) if i not in held], [rows[i] for i in sorted(held)]


def fingerprint(dataset) -> str:
    """A short content hash of a split, stored with a run to tell what it saw."""
    digest = hashlib.sha256()
    for row in dataset:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:16]
