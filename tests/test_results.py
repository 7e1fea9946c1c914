import json

import pandas as pd
import pytest

from nbkit.evaluation import compute_metrics, macro_f1, normalize
from nbkit.results import Report


def test_macro_f1_against_hand_computed_values():
    expected = ["a", "a", "b", "b", "c"]
    predicted = ["a", "b", "b", "b", "a"]
    # a: tp1 fp1 fn1 -> 0.5; b: tp2 fp1 fn0 -> 0.8; c: tp0 -> 0
    assert macro_f1(expected, predicted, ["a", "b", "c"]) == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    frame = pd.DataFrame({"expected": expected, "output": predicted,
                          "correct": [e == p for e, p in zip(expected, predicted)]})
    assert compute_metrics(frame, ["accuracy", "f1"], ["a", "b", "c"]) == pytest.approx(
        {"accuracy": 0.6, "f1": 1.3 / 3})


def test_exact_match_forgives_formatting_only():
    assert normalize("  Paris. ") == normalize("paris") and normalize("Paris") != normalize("Lyon")


def test_report_saves_json_and_csv_without_collisions(tmp_path):
    frame = pd.DataFrame({"accuracy": [0.5, 0.9], "n": [10, 10]}, index=["p", "p + run"])
    frame.index.name = "target"
    report = Report(frame, {}, {"data": "sample:intent", "split": "test", "metrics": ["accuracy"]})
    first, second = report.save(tmp_path), report.save(tmp_path)
    assert first != second and sorted(tmp_path.glob("*.json")) == [first, second]
    saved = json.loads(first.read_text())
    assert saved["results"]["p + run"]["accuracy"] == 0.9 and saved["info"]["split"] == "test"
    assert (tmp_path / f"{first.stem}.csv").read_text().startswith("target,accuracy,n")
    html = report._repr_html_()
    assert "nbkit-chart" in html and "0.900" in html and "sample:intent" in repr(report)
