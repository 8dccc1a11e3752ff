"""Tests of analysis.stats: the t quantile, paired intervals and verdicts, and the paired comparisons the
report writes for run folders whose answer is known (a clear win, a clear tie, unequal seed sets)."""

import math
import statistics

import pytest

from analysis import report as rp, stats
from test_analysis_report import read_csv, write_run

# two-sided 95% t quantiles t(0.975, df) from a printed table (3 decimals)
T_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 9: 2.262, 10: 2.228, 20: 2.086,
           30: 2.042, 60: 2.000, 120: 1.980}


@pytest.mark.parametrize("df, value", sorted(T_TABLE.items()))
def test_t_quantile_matches_the_table(df, value):
    assert stats.t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)


def test_t_quantile_other_levels_and_bad_input():
    assert stats.t_quantile(0.95, 7) == pytest.approx(1.895, abs=5e-4)
    assert stats.t_quantile(0.995, 3) == pytest.approx(5.841, abs=5e-4)
    assert stats.t_quantile(0.975, 100000) == pytest.approx(1.960, abs=5e-4)  # the normal's
    for p, df in ((0.4, 3), (1.0, 3), (0.975, 0), (0.975, 2.5)):
        with pytest.raises(ValueError):
            stats.t_quantile(p, df)


def test_t_interval_from_five_pairs_is_the_textbook_one():
    diffs = [2.1, 1.7, 2.6, 1.9, 2.4, 2.2]
    interval = stats.paired_interval(diffs)
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = T_TABLE[5] * sd / math.sqrt(6)
    assert (interval["n"], interval["method"]) == (6, "t")
    assert interval["mean"] == pytest.approx(mean) and interval["sd"] == pytest.approx(sd)
    assert interval["low"] == pytest.approx(mean - half, abs=1e-3)
    assert interval["high"] == pytest.approx(mean + half, abs=1e-3)
    assert stats.verdict(interval) == "A > B"
    assert stats.verdict(stats.paired_interval([-d for d in diffs])) == "A < B"


def test_bootstrap_below_five_pairs():
    two = stats.paired_interval([1.0, 3.0])
    # resampling two values: the mean is 1, 2 or 3 with chances 1/4, 1/2, 1/4, so the 2.5 and 97.5
    # percentiles are the two values themselves
    assert (two["method"], two["low"], two["high"]) == ("bootstrap", 1.0, 3.0)
    assert two["t_low"] == pytest.approx(2.0 - T_TABLE[1] * math.sqrt(2) / math.sqrt(2), abs=1e-3)
    four = [0.5, -0.4, 0.3, -0.2]
    interval = stats.paired_interval(four)
    assert interval["method"] == "bootstrap" and min(four) <= interval["low"] < interval["high"] <= max(four)
    assert interval == stats.paired_interval(four)  # a fixed seed: the same interval every time
    assert stats.verdict(interval) == "undecided (CI contains 0)"
    assert stats.verdict(stats.paired_interval([0.7])) == "undecided (one pair)"
    assert stats.verdict(stats.paired_interval([])) == "unpaired (no shared seed)"


def test_a_tie_is_undecided():
    tie = stats.paired_interval([1.0, -1.0, 0.5, -0.5, 0.2, -0.2])
    assert tie["mean"] == pytest.approx(0.0) and tie["low"] < 0 < tie["high"]
    assert stats.verdict(tie) == "undecided (CI contains 0)"


def test_differing_part():
    base = {"binarizer": "dab", "facts.weight_binarizer": "dab", "backward": "ste", "epochs": 2}
    assert stats.differing_part(base, dict(base, binarizer="xnor", **{"facts.weight_binarizer": "xnor"})) == \
        "weight binarizer"
    assert stats.differing_part(base, dict(base, backward="ede", edeTmax=5.0)) == "backward rule"
    assert stats.differing_part(base, dict(base, binarizer="xnor", backward="ede")) is None  # two parts
    assert stats.differing_part(base, dict(base, binarizer="xnor", epochs=3)) is None  # and the recipe
    assert stats.differing_part(base, dict(base)) is None
    assert stats.differing_part(base, dict(base, binLayers=[2, 3])) == "binarized layers"  # absent vs set


def _grid(root, name, binarizer, finals, seeds, extra=None):
    """One run per seed of one configuration, final top-1 ``finals`` (best = final + 1)."""
    for seed, final in zip(seeds, finals):
        write_run(root, f"{name}_s{seed}", binarizer=binarizer, seed=seed, filters=False,
                  val=(final + 1.0, final), extra=extra)


def test_report_decides_win_tie_and_unequal_seeds(tmp_path):
    logs = tmp_path / "logs"
    xnor = [50.0, 52.0, 49.0, 51.0, 50.5, 48.0]
    gains = [2.1, 1.7, 2.6, 1.9, 2.4, 2.2]
    _grid(logs, "win_xnor", "xnor", xnor, range(1, 7))
    _grid(logs, "win_dab", "dab", [x + g for x, g in zip(xnor, gains)], range(1, 7))
    tie = [1.0, -1.0, 0.5, -0.5, 0.2, -0.2]
    _grid(logs, "tie_xnor", "xnor", xnor, range(1, 7), extra={"epochs": 3})
    _grid(logs, "tie_dab", "dab", [x + d for x, d in zip(xnor, tie)], range(1, 7), extra={"epochs": 3})
    _grid(logs, "odd_xnor", "xnor", [40.0, 41.0, 42.0], [2, 3, 4], extra={"epochs": 4})
    _grid(logs, "odd_dab", "dab", [45.0, 47.0, 44.0], [1, 2, 3], extra={"epochs": 4})
    result = rp.report([logs], tmp_path / "out")
    rows = {row["settings"]: row for row in read_csv(tmp_path / "out" / "comparisons.csv")}
    assert set(rows) == {"epochs=2", "epochs=3", "epochs=4"}  # the recipes are never compared
    win, even, odd = rows["epochs=2"], rows["epochs=3"], rows["epochs=4"]
    assert (win["part"], win["a"], win["b"], win["pairs"]) == ("weight binarizer", "binarizer=dab",
                                                               "binarizer=xnor", "6")
    mean, half = statistics.fmean(gains), T_TABLE[5] * statistics.stdev(gains) / math.sqrt(6)
    assert float(win["final_mean"]) == pytest.approx(mean)
    assert float(win["final_low"]) == pytest.approx(mean - half, abs=1e-3)
    assert float(win["final_high"]) == pytest.approx(mean + half, abs=1e-3)
    assert (win["final_interval"], win["final_verdict"], win["best_verdict"]) == ("t", "A > B", "A > B")
    assert float(win["best_mean"]) == pytest.approx(mean)
    assert even["final_verdict"] == "undecided (CI contains 0)" and float(even["final_mean"]) == pytest.approx(0)
    # seeds 2 and 3 pair; seed 1 (DAB only) and seed 4 (XNOR only) are unpaired, never matched
    assert (odd["pairs"], odd["seeds"], odd["only_a_seeds"], odd["only_b_seeds"]) == ("2", "2 3", "1", "4")
    assert float(odd["final_mean"]) == pytest.approx(statistics.fmean([47.0 - 40.0, 44.0 - 41.0]))
    assert (odd["final_interval"], odd["final_low"], odd["final_high"]) == ("bootstrap", "3.0", "7.0")
    md = (tmp_path / "out" / "results.md").read_text()
    assert "## Paired comparisons" in md and f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (6 pairs, t): " \
                                              f"A > B" in md
    improvement = {row["settings"]: row for row in result["tables"][0]["rows"] if row["kind"] == "improvement"}
    assert improvement["epochs=2"]["cells"]["digits"]["verdict"] == "A > B"
    assert improvement["epochs=4"]["cells"]["digits"]["n"] == 2
    assert f"{mean:+.2f} [{mean - half:+.2f}, {mean + half:+.2f}] (6 pairs, t): DAB > XNOR" in md


def test_the_baseline_is_b(tmp_path):
    """SD-BNN's additions are A, measured against the setting without them, whatever the table order."""
    logs = tmp_path / "logs"
    for seed in (1, 2):
        write_run(logs, f"sign_s{seed}", model_def="resnet20_1w1a", binarizer="sign", seed=seed, filters=False,
                  val=(5.0, 40.0 + seed), extra={"backward": "ste"})
        write_run(logs, f"wsd_s{seed}", model_def="resnet20_1w1a", binarizer="sign", seed=seed, filters=False,
                  val=(5.0, 43.0 + seed), extra={"weightShift": "wsd", "backward": "ste"})
        write_run(logs, f"ede_s{seed}", model_def="resnet20_1w1a", binarizer="sign", seed=seed, filters=False,
                  val=(5.0, 39.0 + seed), extra={"backward": "ede"})
    result = rp.report([logs], tmp_path / "out")
    found = {row["part"]: row for row in result["comparisons"]}
    assert set(found) == {"weight shift", "backward rule"}  # wsd vs ede changes two parts: not compared
    assert (found["weight shift"]["a"], found["weight shift"]["b"]) == ("weightShift=wsd", "weightShift=none")
    assert found["weight shift"]["final_mean"] == pytest.approx(3.0)
    assert (found["backward rule"]["a"], found["backward rule"]["b"]) == ("backward=ede", "backward=ste")
    assert found["backward rule"]["final_mean"] == pytest.approx(-1.0)
    assert found["backward rule"]["final_verdict"] == "A < B"  # both seeds lose 1 point: bootstrap [-1, -1]


def test_two_pairs_that_agree_in_sign_but_scatter_stay_undecided():
    """The bootstrap of two differences is their range: 1 and 9 would read "A > B" from it alone. The
    t interval from 2 pairs (5 +- 12.71 * 4) contains 0, so the verdict waits for more seeds."""
    interval = stats.paired_interval([1.0, 9.0])
    assert interval["method"] == "bootstrap" and interval["low"] > 0
    assert interval["t_low"] < 0 < interval["t_high"]
    assert stats.verdict(interval) == "undecided (CI contains 0)"
    consistent = stats.paired_interval([4.0, 4.2, 3.9])
    assert stats.verdict(consistent) == "A > B"
