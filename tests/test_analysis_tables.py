"""Tests of analysis.tables: the paper-style table (seed groups, improvement rows, settings rows) and the
files that hold the tables."""

import statistics

import pytest

from analysis import report as rp, tables
from test_analysis_report import make_run_tree, read_csv, write_run

DAB_VALUES = [55.987654321, 58.0312]  # final top-1 of the two DAB seeds of run_tree


@pytest.fixture
def run_tree(tmp_path):
    """The synthetic runs of test_analysis_report.make_run_tree, in the test's own folder."""
    return make_run_tree(tmp_path)


def test_table_groups_seeds_and_improvement(run_tree):
    logs, _, _ = run_tree
    runs, _ = rp.read_runs([logs])
    table = tables.build_table(runs, "final")
    rows = {row["method"]: row for row in table["rows"]}
    assert list(rows) == ["Full precision", "WBin XNOR-Net", "WBin DAB-Net", "WBin: XNOR-Net vs DAB-Net",
                          "FBin DAB-Net"]
    dab = rows["WBin DAB-Net"]
    assert (dab["model"], dab["kind"], dab["settings"]) == ("Sketch-A-Net", "result", "")
    cell = dab["cells"]["digits"]
    assert cell["mean"] == pytest.approx(statistics.fmean(DAB_VALUES))
    assert cell["std"] == pytest.approx(statistics.stdev(DAB_VALUES))
    assert (cell["n"], cell["unfinished"]) == (2, False)
    assert rows["WBin XNOR-Net"]["cells"]["digits"]["std"] is None
    gain = rows["WBin: XNOR-Net vs DAB-Net"]
    assert gain["kind"] == "improvement"
    assert gain["cells"]["digits"]["mean"] == pytest.approx(statistics.fmean(DAB_VALUES) - 50.1)
    assert rows["FBin DAB-Net"]["cells"]["digits"]["unfinished"] is True
    best = {row["method"]: row for row in tables.build_table(runs, "best")["rows"]}
    assert best["FBin DAB-Net"]["cells"]["digits"]["mean"] == 30.0  # its best epoch, not its last (25.0)


def test_table_files(run_tree, tmp_path):
    logs, _, _ = run_tree
    rp.report([logs], tmp_path / "out")
    table = read_csv(tmp_path / "out" / "results_table.csv")
    final_rows = {row["method"]: row for row in table if row["metric"] == "final_top1"}
    dab = final_rows["WBin DAB-Net"]
    assert float(dab["digits_mean"]) == pytest.approx(statistics.fmean(DAB_VALUES))
    assert float(dab["digits_std"]) == pytest.approx(statistics.stdev(DAB_VALUES))
    assert (dab["digits_n"], dab["digits_unfinished"]) == ("2", "no")
    assert final_rows["WBin XNOR-Net"]["digits_n"] == "1" and final_rows["WBin XNOR-Net"]["digits_std"] == ""
    assert final_rows["FBin DAB-Net"]["digits_unfinished"] == "yes"
    assert final_rows["WBin: XNOR-Net vs DAB-Net"]["kind"] == "improvement"
    best_rows = {row["method"]: row for row in table if row["metric"] == "best_top1"}
    best_gain = float(best_rows["WBin: XNOR-Net vs DAB-Net"]["digits_mean"])
    assert best_gain == pytest.approx(statistics.fmean(DAB_VALUES) - 50.1)  # best = last epoch in these runs

    md = (tmp_path / "out" / "results.md").read_text()
    mean, std = statistics.fmean(DAB_VALUES), statistics.stdev(DAB_VALUES)
    assert f"| WBin DAB-Net | Sketch-A-Net | {mean:.2f} ± {std:.2f} (n=2) |" in md
    assert "| WBin XNOR-Net | Sketch-A-Net | 50.10 (n=1) |" in md
    assert f"*WBin: XNOR-Net vs DAB-Net* | *Sketch-A-Net* | {mean - 50.1:+.2f} |" in md
    assert md.index("Full precision") < md.index("WBin XNOR-Net") < md.index("WBin DAB-Net") < md.index("FBin DAB-Net")
    assert "25.00 (n=1) †" in md
    assert "| digits_wbin_dab_s1 |" in md and "| 2/2 | yes | 55.99 | 55.99 |" in md


def test_table_splits_rows_by_setting_and_orders_columns(tmp_path):
    logs = tmp_path / "logs"
    write_run(logs, "a", dataset="sketchy", filters=False, val=(10.0, 11.0))
    write_run(logs, "b", dataset="tuberlin", filters=False, val=(12.0, 13.0))
    write_run(logs, "c", dataset="tuberlin", filters=False, val=(14.0, 15.0), epochs=3,
              extra={"binLayers": [2, 3]})
    write_run(logs, "d", dataset="tuberlin", model_def="resnetwbin18", binarizer="xnor", filters=False,
              val=(1.0, 2.0), extra={"binLayers": [2, 3]})
    runs, _ = rp.read_runs([logs])
    table = tables.build_table(runs, "final")
    assert table["datasets"] == ["tuberlin", "sketchyrecognition"]
    dab = [(row["model"], row["settings"]) for row in table["rows"] if row["method"] == "WBin DAB-Net"]
    assert dab == [("Sketch-A-Net", "bin 2-3, 3 epochs"), ("Sketch-A-Net", "bin 2-4, 2 epochs")]
    xnor = [row for row in table["rows"] if row["method"] == "WBin XNOR-Net"]
    assert [(row["model"], row["settings"]) for row in xnor] == [("ResNet-18", "")]
    assert not any(row["kind"] == "improvement" for row in table["rows"])  # different families
    assert "| Method | Model | TU-Berlin | Sketchy |" in "\n".join(tables.table_markdown(table))


def test_improvement_needs_the_same_activation_and_family(tmp_path):
    logs = tmp_path / "logs"
    write_run(logs, "dab_sign", model_def="sketchanetfbin", filters=False, val=(10.0, 20.0))
    write_run(logs, "xnor_sign", model_def="sketchanetfbin", binarizer="xnor", filters=False, val=(10.0, 15.0))
    write_run(logs, "dab_asd", model_def="sketchanetfbin", filters=False, val=(10.0, 30.0),
              extra={"binActivation": "asd"})
    runs, _ = rp.read_runs([logs])
    rows = tables.build_table(runs, "final")["rows"]
    assert [(row["method"], row["kind"]) for row in rows] == [
        ("FBin XNOR-Net", "result"), ("FBin DAB-Net (asd activation)", "result"), ("FBin DAB-Net", "result"),
        ("FBin: XNOR-Net vs DAB-Net", "improvement")]  # no XNOR-Net run with asd activations: no gain row
    assert rows[3]["cells"]["digits"]["mean"] == pytest.approx(5.0)


def test_other_binarizers_follow_the_paper_rows(tmp_path):
    logs = tmp_path / "logs"
    write_run(logs, "sign", model_def="sketchanetwbin", binarizer="sign", filters=False)
    write_run(logs, "dab", model_def="sketchanetwbin", filters=False)
    write_run(logs, "fp", model_def="sketchanet", filters=False)
    runs, _ = rp.read_runs([logs])
    assert [run["run"] for run in runs] == ["fp", "dab", "sign"]  # run_order: fp, the paper's rows, the others
    methods = [row["method"] for row in tables.build_table(runs, "final")["rows"]]
    assert methods == ["Full precision", "WBin DAB-Net", "WBin sign"]
