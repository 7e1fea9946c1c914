"""Intervals and paired tests against hand-computed values and scipy's implementations (no model: milliseconds)."""

from __future__ import annotations

import pytest

from nbkit import stats


def test_wilson_by_hand_and_against_scipy():
    from scipy.stats import binomtest

    low, high = stats.wilson(8, 10)  # p = 0.8, z = 1.96: (0.8 + 0.192) / 1.384 -+ 1.96 * sqrt(0.016 + 0.0096) / 1.384
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    for correct, n in [(0, 40), (31, 40), (40, 40), (63, 80), (700, 1000)]:
        ci = binomtest(correct, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert stats.wilson(correct, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert stats.wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        stats.wilson(11, 10)


def test_an_interval_shrinks_as_rows_grow():
    widths = [high - low for low, high in (stats.wilson(round(0.78 * n), n) for n in (40, 80, 320, 1280))]
    assert widths == sorted(widths, reverse=True) and widths[0] > 0.2 > 0.05 > widths[-1]
    values = [1.0, 0.0, 0.5, 0.25] * 10
    small, large = stats.bootstrap(values), stats.bootstrap(values * 20)
    assert small[0] < large[0] < 0.4375 < large[1] < small[1]


def test_bootstrap_matches_scipys_percentile_bootstrap_and_is_repeatable():
    import numpy as np
    from scipy.stats import bootstrap

    values = np.random.default_rng(3).random(200) ** 2
    ours = stats.bootstrap(values, resamples=5000)
    theirs = bootstrap((values,), np.mean, n_resamples=5000, method="percentile", random_state=1).confidence_interval
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.01)
    assert stats.bootstrap(values) == stats.bootstrap(values)  # a fixed seed: the same report twice


def test_mcnemar_is_scipys_exact_binomial_test_on_the_discordant_rows():
    from scipy.stats import binomtest

    a = [True] * 50 + [True] * 3 + [False] * 12 + [False] * 15  # 50 both right, 3 only a, 12 only b, 15 neither
    b = [True] * 50 + [False] * 3 + [True] * 12 + [False] * 15
    result = stats.mcnemar(a, b)
    assert (result["only_a"], result["only_b"]) == (3, 12)
    assert result["p_value"] == pytest.approx(binomtest(3, 15, 0.5).pvalue, abs=1e-12)
    assert stats.mcnemar(a, a)["p_value"] == 1.0  # no discordant rows: nothing to tell apart
    with pytest.raises(ValueError, match="same rows"):
        stats.mcnemar(a, b[:-1])


def test_paired_bootstrap_of_a_difference():
    a = [1.0] * 60 + [0.0] * 20
    b = [1.0] * 60 + [1.0] * 15 + [0.0] * 5  # b right on 15 rows a got wrong
    result = stats.paired_bootstrap(a, b)
    assert result["difference"] == pytest.approx(15 / 80)
    assert 0 < result["low"] < 15 / 80 < result["high"] and result["p_value"] < 0.01
    tie = stats.paired_bootstrap(a, a[::-1])  # the same accuracy, on different rows
    assert tie["low"] < 0 < tie["high"] and tie["p_value"] > 0.5


def test_rows_needed_against_the_textbook_sample_size():
    # two proportions, 0.8 vs 0.9, two-sided 5%, power 80%: 199 per group (Fleiss, without continuity correction)
    assert stats.rows_needed(0.8, 0.9) == 199
    assert stats.rows_needed(0.775, 0.787) > 10_000  # the methods table's one-row gap
    assert stats.rows_needed(0.4, 0.8) < stats.rows_needed(0.7, 0.8)
    with pytest.raises(ValueError):
        stats.rows_needed(0.5, 0.5)


def _report(a_correct, b_correct):
    import pandas as pd

    from nbkit.results import Report

    labels = ["x", "y"]
    expected = [labels[i % 2] for i in range(len(a_correct))]
    other = {"x": "y", "y": "x"}

    def frame(correct):
        outputs = [e if c else other[e] for e, c in zip(expected, correct)]
        return pd.DataFrame({"input": [f"row {i}" for i in range(len(correct))], "output": outputs,
                             "expected": expected, "correct": list(correct)})

    predictions = {"base": frame(a_correct), "tuned": frame(b_correct)}
    table = pd.DataFrame({"accuracy": [sum(a_correct) / len(a_correct), sum(b_correct) / len(b_correct)]},
                         index=["base", "tuned"])
    return Report(table, predictions, {"metrics": ["accuracy", "f1"], "labels": {"base": labels, "tuned": labels}})


def test_report_compare_tests_two_targets_on_the_same_rows():
    from scipy.stats import binomtest

    a = [True] * 50 + [True] * 3 + [False] * 12 + [False] * 15
    b = [True] * 50 + [False] * 3 + [True] * 12 + [False] * 15
    table = _report(a, b).compare()
    acc = table.loc["accuracy"]
    assert acc["base"] == 53 / 80 and acc["tuned"] == 62 / 80 and acc["difference"] == pytest.approx(9 / 80)
    assert acc["test"] == "McNemar" and acc["only_a/only_b"] == "3/12" and acc["rows"] == 80
    assert acc["p_value"] == pytest.approx(binomtest(3, 15, 0.5).pvalue)
    assert acc["low"] > 0 and acc["verdict"] == "tuned better"
    assert table.loc["f1", "test"] == "paired bootstrap" and table.loc["f1", "difference"] > 0
    # one row apart on 80: the interval holds 0, and the verdict says so
    close = _report(a, a[:-1] + [True]).compare(metric="accuracy").loc["accuracy"]
    assert close["low"] <= 0 <= close["high"] and close["verdict"] == "not distinguishable at this size"
    with pytest.raises(ValueError, match="same rows"):
        _mismatched(a, b).compare()


def _mismatched(a, b):
    report = _report(a, b)
    report.predictions["tuned"] = report.predictions["tuned"].iloc[:-1]
    return report


def test_vectorised_macro_scores_equal_per_class_on_every_resample():
    import numpy as np

    from nbkit.metrics import macro_resampled, per_class

    rng = np.random.default_rng(5)
    labels = ["a", "b", "c"]
    expected = list(rng.choice(labels, 60))
    predicted = [e if rng.random() < 0.7 else str(rng.choice(labels)) for e in expected]
    draws = rng.integers(0, 60, size=(20, 60))
    for name in ("precision", "recall", "f1"):
        fast = macro_resampled(name, expected, predicted, labels, draws)
        slow = [per_class([expected[i] for i in d], [predicted[i] for i in d], labels)[name].mean() for d in draws]
        assert fast == pytest.approx(slow)


def test_report_intervals_per_target():
    from scipy.stats import binomtest

    a = [True] * 62 + [False] * 18
    table = _report(a, a[::-1]).intervals()
    ci = binomtest(62, 80).proportion_ci(method="wilson")
    assert table.loc["base", "accuracy"] == 62 / 80
    assert (table.loc["base", "accuracy_low"], table.loc["base", "accuracy_high"]) == pytest.approx((ci.low, ci.high))
    assert table.loc["base", "f1_low"] < table.loc["base", "f1"] < table.loc["base", "f1_high"]
    assert list(table.columns) == ["accuracy", "accuracy_low", "accuracy_high", "f1", "f1_low", "f1_high"]


def test_seed_groups_and_report_seeds_summarise_one_run_per_seed():
    """Targets named NAME-s<seed> (tune(seeds=...)) are grouped; the summary is the mean, the sample
    standard deviation and the range across them; a lone -s0 or an unrelated target is no group."""
    import pandas as pd

    from nbkit.results import Report
    from nbkit.stats import seed_groups

    labels = ["intent", "intent + lora-s0", "intent + lora-s1", "intent + lora-s2", "intent + pt-s0", "x-s1-b"]
    assert seed_groups(labels) == {"intent + lora-s*": labels[1:4]}
    frame = pd.DataFrame({"accuracy": [0.3, 0.7, 0.75, 0.8, 0.6, 0.5], "n": [40] * 6}, index=labels)
    report = Report(frame, {}, {"metrics": ["accuracy"], "data": "d", "split": "test"})
    row = report.seeds().loc["intent + lora-s*"]
    assert row["seeds"] == 3 and row["accuracy_mean"] == pytest.approx(0.75)
    assert row["accuracy_sd"] == pytest.approx(0.05) and (row["accuracy_min"], row["accuracy_max"]) == (0.7, 0.8)
    assert "Across seeds" in repr(report) and "Across seeds" in report._repr_html_()
    assert len(Report(frame.iloc[:2], {}, {"metrics": ["accuracy"]}).seeds()) == 0


def test_seeds_are_checked_before_anything_trains(monkeypatch, tmp_path):
    from nbkit import training
    from nbkit.errors import ConfigError, RunExistsError
    from nbkit.prompts import Prompt

    monkeypatch.setattr(training, "tune_decoder", lambda *a, **k: pytest.fail("trained before the checks"))
    prompt = Prompt("{{ text }}", name="p", target="{{ label }}")
    for bad in ([], [0, 0], [-1], "012", [True], 3):
        with pytest.raises(ConfigError, match="seeds"):
            training.tune(prompt, "sample:intent", seeds=bad)
    with pytest.raises(ConfigError, match="not both"):
        training.tune(prompt, "sample:intent", seeds=[0, 1], seed=5)
    with pytest.raises(ConfigError, match="a job file holds one run"):
        training.tune(prompt, "sample:intent", seeds=[0, 1], export=tmp_path / "job.yaml")
    from nbkit.runs import runs_dir

    (runs_dir() / "p-lora-s1").mkdir(parents=True)
    with pytest.raises(RunExistsError):
        training.tune(prompt, "sample:intent", seeds=[0, 1])


def test_a_difference_is_distinguishable_only_when_interval_and_p_agree():
    from nbkit import stats

    # 4 rows right only for b, none only for a: the bootstrap interval misses 0, McNemar's exact p is 0.125
    a, b = [1] * 36 + [0] * 4, [1] * 40
    d, p = stats.paired_bootstrap(a, b, resamples=2000), stats.mcnemar(a, b)["p_value"]
    assert d["low"] > 0 and p == pytest.approx(0.125)
    assert not stats.distinguishable(d["low"], d["high"], p)
    assert stats.distinguishable(0.02, 0.2, 0.01) and not stats.distinguishable(-0.01, 0.2, 0.01)
    assert stats.distinguishable(0.02, 0.2, float("nan"))  # no p: the interval decides
