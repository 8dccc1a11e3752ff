"""bench/bench_digits.py: a suite trains every configuration and seed in child processes, keeps finished runs
on a rerun, and writes the paired report."""

import csv
import os
import subprocess
import sys

import pytest

from conftest import subprocess_timeout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def suite(out, *extra):
    argv = [sys.executable, os.path.join(ROOT, "bench", "bench_digits.py"), "--suite", "paper", "--configs",
            "resnet20-dab", "resnet20-xnor", "--seeds", "1", "2", "--jobs", "2", "--out", str(out), *extra,
            "--", "--epochs", "1", "--inpsize", "8", "--workers", "0"]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=subprocess_timeout(240))


def test_paper_suite_trains_pairs_and_keeps_finished_runs(tmp_path):
    done = suite(tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for config in ("resnet20-dab", "resnet20-xnor"):
        for seed in (1, 2):
            assert os.path.exists(tmp_path / "logs" / f"{config}-seed{seed}" / "final.json")
    assert "resnet20-dab" in done.stdout and "2 run(s) at a time" in done.stdout
    with open(tmp_path / "report" / "comparisons.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows, "DAB and XNOR differ in the weight binarizer alone: one paired comparison"
    assert [(row["part"], row["a"], row["b"], row["pairs"]) for row in rows] == [
        ("weight binarizer", "binarizer=dab", "binarizer=xnor", "2")]
    again = suite(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("finished before, kept") == 4
    assert "python main.py" not in again.stdout


def test_unknown_configuration_is_refused_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_digits.py"), "--suite", "paper",
                           "--configs", "nope", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=subprocess_timeout(30))
    assert done.returncode == 2
    assert "unknown configurations ['nope'] for suite paper" in done.stderr
    assert not os.listdir(tmp_path)
