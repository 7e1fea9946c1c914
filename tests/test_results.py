import json

import pandas as pd
import pytest

from nbkit.metrics import compute_metrics, confusion, normalize, per_class, token_f1
from nbkit.results import Report

EXPECTED = ["a", "a", "b", "b", "c"]
PREDICTED = ["a", "b", "b", "b", "a"]


def _frame(expected, predicted, **extra):
    return pd.DataFrame({"expected": expected, "output": predicted,
                         "correct": [normalize(e) == normalize(p) for e, p in zip(expected, predicted)], **extra})


def test_classification_metrics_against_hand_computed_values():
    # a: tp1 fp1 fn1 -> P 1/2 R 1/2 F1 1/2; b: tp2 fp1 fn0 -> P 2/3 R 1 F1 0.8; c: tp0 fn1 -> 0 0 0
    table = per_class(EXPECTED, PREDICTED, ["a", "b", "c"])
    assert table.loc["a"].tolist() == pytest.approx([0.5, 0.5, 0.5, 2])
    assert table.loc["b"].tolist() == pytest.approx([2 / 3, 1.0, 0.8, 2])
    assert table.loc["c"].tolist() == pytest.approx([0.0, 0.0, 0.0, 1])
    assert compute_metrics(_frame(EXPECTED, PREDICTED), ["accuracy", "f1", "precision", "recall"],
                           ["a", "b", "c"]) == pytest.approx(
        {"accuracy": 0.6, "f1": 1.3 / 3, "precision": (0.5 + 2 / 3) / 3, "recall": 0.5})


def test_confusion_counts_expected_by_predicted():
    counts = confusion(EXPECTED, PREDICTED + [], ["a", "b", "c"])
    assert counts.loc["a"].tolist() == [1, 1, 0] and counts.loc["b"].tolist() == [0, 2, 0]
    assert counts.loc["c"].tolist() == [1, 0, 0] and int(counts.values.sum()) == 5
    free = confusion(["a"], ["maybe"], ["a", "b"])  # an output outside the labels gets its own column
    assert list(free.columns) == ["a", "b", "maybe"] and free.loc["a", "maybe"] == 1


def test_question_answering_metrics_use_squad_normalisation():
    assert token_f1("The Eiffel Tower", "eiffel tower!") == 1.0  # articles, case, punctuation ignored
    # 2 shared tokens; precision 2/3, recall 2/2 -> F1 0.8
    assert token_f1("in Paris France", "Paris France") == pytest.approx(0.8)
    assert token_f1("Lyon", "Paris") == 0.0 and token_f1("", "") == 1.0
    frame = _frame(["Paris", "Paris France"], ["paris.", "in Paris France"])
    assert compute_metrics(frame, ["exact_match", "token_f1"]) == pytest.approx({"exact_match": 0.5, "token_f1": 0.9})


def test_rouge_against_hand_computed_values():
    frame = _frame(["the cat sat down"], ["the cat sat"])
    scores = compute_metrics(frame, ["rouge1", "rouge2", "rougeL"])
    # unigrams: P 3/3 R 3/4 -> 6/7; bigrams: P 2/2 R 2/3 -> 0.8; LCS 3: as rouge1
    assert scores == pytest.approx({"rouge1": 6 / 7, "rouge2": 0.8, "rougeL": 6 / 7})
    stemmed = compute_metrics(_frame(["cats running"], ["cat runs"]), ["rouge1"])
    assert stemmed["rouge1"] == pytest.approx(1.0)  # Porter stemming: cats/cat, running/runs -> run


def test_perplexity_is_exp_of_the_mean_token_nll():
    import math

    frame = _frame(["x", "y"], ["x", "y"], nll=[2 * math.log(2), 4 * math.log(2)], tokens=[2, 4])
    assert compute_metrics(frame, ["perplexity"])["perplexity"] == pytest.approx(2.0)


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


def test_report_looks_inside_targets(tmp_path):
    labels = ["a", "b", "c"]
    prompt = _frame(EXPECTED, PREDICTED, input=[f"x{i}" for i in range(5)])
    tuned = _frame(EXPECTED, ["a", "a", "b", "c", "c"], input=[f"x{i}" for i in range(5)])
    frame = pd.DataFrame({"accuracy": [0.6, 0.8], "n": [5, 5]}, index=["p", "p + run"])
    report = Report(frame, {"p": prompt, "p + run": tuned},
                    {"data": "d", "split": "test", "metrics": ["accuracy"], "labels": {"p": labels, "p + run": labels}})
    assert report.per_class("p + run").loc["c", "recall"] == 1.0
    assert report.confusion().loc["c", "a"] == 1  # the first target by default
    d = report.disagreements()  # x1 and x4: only the run right; x3: only the prompt right
    assert d["input"].tolist() == ["x1", "x4", "x3"] and d["right"].tolist() == ["p + run", "p + run", "p"]
    html = report._repr_html_()
    assert html.count("nbkit-confusion") == 2 and "right where <b>p</b> was wrong: 2; the reverse: 1" in html
    saved = report.save(tmp_path, "r")
    lines = (tmp_path / "r-predictions.jsonl").read_text().splitlines()
    assert saved.exists() and len(lines) == 10 and json.loads(lines[-1])["target"] == "p + run"


def test_disagreements_show_what_differs_and_the_confusion_matrix_whole_labels():
    labels = ["entertainment", "politics"]
    inputs = [f"Which section?\nStory: {story}\nSection:" for story in ("a film opens", "the vote", "tax bill")]
    expected, prompt_out, run_out = labels[:1] + labels[1:] * 2, ["politics"] * 3, ["entertainment"] + ["politics"] * 2
    report = Report(pd.DataFrame({"accuracy": [2 / 3, 1.0], "n": [3, 3]}, index=["p", "p + run"]),
                    {"p": _frame(expected, prompt_out, input=inputs), "p + run": _frame(expected, run_out, input=inputs)},
                    {"data": "d", "split": "test", "metrics": ["accuracy"], "labels": {"p": labels, "p + run": labels}})
    # the prompt's words every row shares are cut, at word boundaries: the story is what a reader compares
    assert report.disagreements()["input"].tolist() == ["…a film opens…"]
    html = report._repr_html_()
    assert ">entertainment</text>" in _drawn(html) and ">entert</text>" not in _drawn(html)  # not cut to six letters
    assert "…a film opens…" in html


def test_reports_show_and_save_each_metrics_interval_and_compare_targets_with_the_first(tmp_path):
    from nbkit import stats

    rng = list(range(40))
    expected = ["a" if i % 2 else "b" for i in rng]
    base = _frame(expected, ["a"] * 40, input=[f"x{i}" for i in rng])  # right on 20 of 40
    tuned = _frame(expected, [e if i < 36 else "c" for i, e in enumerate(expected)], input=[f"x{i}" for i in rng])
    frame = pd.DataFrame({"accuracy": [0.5, 0.9], "n": [40, 40]}, index=["p", "p + run"])
    frame.index.name = "target"
    report = Report(frame, {"p": base, "p + run": tuned},
                    {"data": "d", "split": "test", "metrics": ["accuracy"], "labels": {"p": ["a", "b"], "p + run": ["a", "b"]}})
    low, high = stats.wilson(36, 40)
    html = report._repr_html_()
    assert f"0.900 [{low:.2f}, {high:.2f}]" in html and _drawn(html).count("nbkit-interval") == 2  # an error bar per target
    # against the first target: the paired test's numbers, as compare() gives them
    row = report.compare("p", "p + run", "accuracy").loc["accuracy"]
    assert f"accuracy {row['difference']:+.3f} [{row['low']:+.2f}, {row['high']:+.2f}], McNemar p &lt; 0.001" in html
    assert "p + run better" in html
    saved = json.loads(report.save(tmp_path, "r").read_text())
    assert saved["intervals"]["p + run"] == {"accuracy_low": pytest.approx(low), "accuracy_high": pytest.approx(high)}
    csv = pd.read_csv(tmp_path / "r.csv", index_col="target")
    assert list(csv.columns) == ["accuracy", "n", "accuracy_low", "accuracy_high"]
    assert csv.loc["p", "accuracy_high"] == pytest.approx(stats.wilson(20, 40)[1])


def _drawn(html: str) -> str:
    """The report's HTML with each chart's picture (an ``<img>`` with an SVG data URI) decoded in its place."""
    import base64
    import re

    return re.sub(r"<img class='[^']*' alt='[^']*' src='data:image/svg\+xml;base64,([^']+)'/>",
                  lambda m: base64.b64decode(m.group(1)).decode("utf-8"), html)


def test_charts_are_pictures_an_untrusted_notebook_keeps():
    """JupyterLab's sanitiser (and GitHub's, nbviewer's) drop inline <svg> from an untrusted notebook, so the
    bar chart and the confusion matrices are <img> data URIs, each a well-formed SVG document."""
    import base64
    import re
    import xml.etree.ElementTree as ET

    labels = ["a", "b"]
    frame = pd.DataFrame({"accuracy": [0.6, 0.8], "n": [5, 5]}, index=["p", "p + run"])
    rows = [f"x{i}" for i in range(5)]
    report = Report(frame, {"p": _frame(["a", "b", "a", "b", "a"], ["a", "a", "a", "b", "b"], input=rows),
                            "p + run": _frame(["a", "b", "a", "b", "a"], ["a", "b", "a", "b", "b"], input=rows)},
                    {"data": "d", "split": "test", "metrics": ["accuracy"], "labels": {"p": labels, "p + run": labels}})
    html = report._repr_html_()
    assert "<svg" not in html
    pictures = re.findall(r"<img class='(nbkit-\w+)' alt='([^']*)' src='data:image/svg\+xml;base64,([^']+)'/>", html)
    assert [c for c, _, _ in pictures] == ["nbkit-chart", "nbkit-confusion", "nbkit-confusion"]
    assert pictures[0][1] == "bar chart of accuracy" and pictures[1][1] == "confusion matrix of p"
    for _, _, data in pictures:
        root = ET.fromstring(base64.b64decode(data))
        assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert "0.800" in _drawn(html)  # the bar's value, inside the picture
