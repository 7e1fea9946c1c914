import json

import pandas as pd
import pytest

from nbkit import load_data
from nbkit.data import available_samples, fingerprint
from nbkit.errors import DataError, UnknownNameError


def test_samples_ship_with_train_and_test():
    assert {"sentiment", "intent"} <= set(available_samples())
    for name, labels in [("sentiment", {"positive", "negative"}), ("intent", {"refund", "delivery", "account", "other"})]:
        data = load_data(f"sample:{name}")
        assert len(data["train"]) >= 150 and len(data["test"]) >= 60
        assert set(data["train"]["label"]) == labels == set(data["test"]["label"])
        assert not set(data["train"]["text"]) & set(data["test"]["text"])


def test_files(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i % 2 else "b"} for i in range(20)]
    pd.DataFrame(rows).to_csv(tmp_path / "d.csv", index=False)
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "d.json").write_text(json.dumps({"train": rows[:15], "test": rows[15:]}))
    pd.DataFrame(rows).to_parquet(tmp_path / "d.parquet")
    for suffix in ("csv", "jsonl", "parquet"):
        data = load_data(str(tmp_path / f"d.{suffix}"))
        assert len(data["train"]) == 16 and len(data["test"]) == 4, suffix
        assert data["train"].column_names == ["text", "label"]
    data = load_data(str(tmp_path / "d.json"))
    assert len(data["train"]) == 15 and len(data["test"]) == 5


def test_split_is_deterministic_and_said_once_with_its_sizes(capsys):
    rows = [{"text": f"t{i}", "label": "x"} for i in range(50)]
    a = load_data(rows, split="test")
    b = load_data(list(rows), split="test")
    assert a["text"] == b["text"] and len(a) == 10
    assert fingerprint(a) == fingerprint(b)
    said = capsys.readouterr().out
    # once, with the row counts, and the warning that 10 test rows measure no closer than 10 points
    assert said.count("has no test split") == 1 and "10 of its 50 rows" in said and "40 train" in said
    assert "one row is 10.0 points" in said
    load_data([{"text": f"u{i}", "label": "x"} for i in range(300)])
    said = capsys.readouterr().out
    assert "60 of its 300 rows" in said and "points" not in said  # enough test rows: no warning


def test_notebook_variables():
    import datasets

    frame = pd.DataFrame({"text": ["a", "b", "c", "d", "e"], "label": list("xyxyx")})
    ds = datasets.Dataset.from_pandas(frame)
    dd = datasets.DatasetDict({"train": ds, "test": ds.select(range(2))})
    namespace = {"frame": frame, "rows": frame.to_dict("records"), "ds": ds, "dd": dd}
    for name in namespace:
        data = load_data(name, namespace)
        assert {"train", "test"} <= set(data), name
    assert len(load_data("dd", namespace, split="test")) == 2


def test_errors_name_what_exists(tmp_path):
    with pytest.raises(UnknownNameError) as e:
        load_data("sample:nope")
    assert "intent" in str(e.value)
    with pytest.raises(UnknownNameError) as e:
        load_data("no_such_variable", {})
    assert "sample:intent" in str(e.value) and "variable" in str(e.value)
    with pytest.raises(DataError, match="not found"):
        load_data(str(tmp_path / "missing.csv"))
    with pytest.raises(DataError, match="empty"):
        load_data([])
    with pytest.raises(DataError, match="DataFrame"):
        load_data("x", {"x": 42})
    with pytest.raises(UnknownNameError, match="split"):
        load_data("sample:intent", split="validation")
