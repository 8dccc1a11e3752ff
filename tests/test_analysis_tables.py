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
    assert (dab["model"], dab["kind"], dab["settings"]) == ("Sketch-A-Net", "result", "epochs=2")
    assert rows["FBin DAB-Net"]["settings"] == "epochs=5"  # the unfinished run asked for 5 epochs
    cell = dab["cells"]["digits"]
    assert cell["mean"] == pytest.approx(statistics.fmean(DAB_VALUES))
    assert cell["std"] == pytest.approx(statistics.stdev(DAB_VALUES))
    assert (cell["n"], cell["duplicates"], cell["unfinished"]) == (2, 0, False)
    assert rows["WBin XNOR-Net"]["cells"]["digits"]["std"] is None
    gain = rows["WBin: XNOR-Net vs DAB-Net"]["cells"]["digits"]
    assert rows["WBin: XNOR-Net vs DAB-Net"]["kind"] == "improvement"
    # paired by seed: XNOR-Net ran seed 1 only, so DAB-Net's seed 1 is the one pair and seed 2 is unpaired
    assert gain["mean"] == pytest.approx(DAB_VALUES[0] - 50.1)
    assert (gain["n"], gain["only_a"], gain["only_b"], gain["verdict"]) == (1, [2], [], "undecided (one pair)")
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
    assert (dab["digits_n"], dab["digits_duplicates"], dab["digits_unfinished"]) == ("2", "0", "no")
    assert final_rows["WBin XNOR-Net"]["digits_n"] == "1" and final_rows["WBin XNOR-Net"]["digits_std"] == ""
    assert final_rows["FBin DAB-Net"]["digits_unfinished"] == "yes"
    gain_row = final_rows["WBin: XNOR-Net vs DAB-Net"]
    assert (gain_row["kind"], gain_row["digits_n"], gain_row["digits_verdict"]) == \
        ("improvement", "1", "undecided (one pair)")
    best_rows = {row["method"]: row for row in table if row["metric"] == "best_top1"}
    best_gain = float(best_rows["WBin: XNOR-Net vs DAB-Net"]["digits_mean"])
    assert best_gain == pytest.approx(DAB_VALUES[0] - 50.1)  # best = last epoch in these runs

    md = (tmp_path / "out" / "results.md").read_text()
    mean, std = statistics.fmean(DAB_VALUES), statistics.stdev(DAB_VALUES)
    assert "| Method | Model | Settings | digits |" in md
    assert f"| WBin DAB-Net | Sketch-A-Net | epochs=2 | {mean:.2f} ± {std:.2f} (n=2) |" in md
    assert "| WBin XNOR-Net | Sketch-A-Net | epochs=2 | 50.10 (n=1) |" in md
    assert f"*WBin: XNOR-Net vs DAB-Net* | *Sketch-A-Net* | epochs=2 | {DAB_VALUES[0] - 50.1:+.2f} (1 pair): " \
           f"undecided (one pair) |" in md
    assert md.index("Full precision") < md.index("WBin XNOR-Net") < md.index("WBin DAB-Net") < md.index("FBin DAB-Net")
    assert "25.00 (n=1) †" in md
    assert "| digits_wbin_dab_s1 |" in md and "| 2/2 | yes | 55.99 | 55.99 |" in md
    runs = {row["run"]: row for row in read_csv(tmp_path / "out" / "results.csv")}
    assert runs["digits_wbin_dab_s1"]["config"] == runs["digits_wbin_dab_s2"]["config"] != \
        runs["digits_wbin_xnor"]["config"]
    assert f"`{runs['digits_wbin_dab_s1']['config']}`" in md  # the configurations section names them


def test_recipes_are_never_pooled_and_duplicates_never_counted(tmp_path):
    """The issue's report: an SD-BNN recipe (5e-3, cosine, batch 32) pooled with Adam 1e-3 / batch 64 as
    "28.89 ± 29.07 (n=2)", and two copies of one seed as "9.17 ± 0.00 (n=2)"."""
    logs = tmp_path / "logs"
    sdbnn = {"maxlr": 1e-3, "batch_size": 64, "learningratescheduler": "decayschedular", "weightShift": "wsd",
             "binActivation": "asd", "backward": "ede"}
    write_run(logs, "r20_sdbnn", model_def="resnet20_1w1a", binarizer="sign", filters=False, val=(5.0, 9.17),
              extra=sdbnn)
    write_run(logs, "r20_sdbnn_again", model_def="resnet20_1w1a", binarizer="sign", filters=False,
              val=(5.0, 9.17), extra=sdbnn)
    write_run(logs, "r20_sdbnn_recipe", model_def="resnet20_1w1a", binarizer="sign", filters=False,
              val=(30.0, 48.6), extra=dict(sdbnn, maxlr=5e-3, batch_size=32, learningratescheduler="cosine"))
    runs, _ = rp.read_runs([logs])
    assert {run["run"]: run["duplicate_of"] for run in runs} == {
        "r20_sdbnn": None, "r20_sdbnn_again": "r20_sdbnn", "r20_sdbnn_recipe": None}
    rows = [row for row in tables.build_table(runs, "final")["rows"] if row["kind"] == "result"]
    cells = {row["settings"]: row["cells"]["digits"] for row in rows}
    assert set(cells) == {"batch_size=64, learningratescheduler=decayschedular, maxlr=0.001",
                          "batch_size=32, learningratescheduler=cosine, maxlr=0.005"}
    first = cells["batch_size=64, learningratescheduler=decayschedular, maxlr=0.001"]
    assert (first["mean"], first["std"], first["n"], first["duplicates"]) == (9.17, None, 1, 1)
    assert cells["batch_size=32, learningratescheduler=cosine, maxlr=0.005"]["mean"] == 48.6
    markdown = "\n".join(tables.table_markdown(tables.build_table(runs, "final")))
    assert "9.17 (n=1 +1 duplicate)" in markdown and "n=2" not in markdown


def test_rows_of_other_recipes_say_how_they_differ(tmp_path):
    """An fp run at 8 px for 1 epoch is never set silently beside binary runs at 16 and 32 px."""
    logs = tmp_path / "logs"
    write_run(logs, "fp", model_def="sketchanet", filters=False, epochs=1, val=(10.0,), extra={"inpsize": 8})
    write_run(logs, "b16", filters=False, extra={"inpsize": 16})
    write_run(logs, "b32", filters=False, extra={"inpsize": 32})
    runs, _ = rp.read_runs([logs])
    rows = [(row["method"], row["settings"]) for row in tables.build_table(runs, "final")["rows"]]
    assert rows == [("Full precision", "epochs=1, inpsize=8"), ("WBin DAB-Net", "epochs=2, inpsize=16"),
                    ("WBin DAB-Net", "epochs=2, inpsize=32")]


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
    dab = [(row["model"], row["settings"], sorted(row["cells"])) for row in table["rows"]
           if row["method"] == "WBin DAB-Net"]
    # one recipe on two datasets shares a row; the other recipe has its own
    assert dab == [("Sketch-A-Net", "bin layers=2-4, epochs=2", ["sketchyrecognition", "tuberlin"]),
                   ("Sketch-A-Net", "bin layers=2-3, epochs=3", ["tuberlin"])]
    xnor = [row for row in table["rows"] if row["method"] == "WBin XNOR-Net"]
    assert [(row["model"], row["settings"]) for row in xnor] == [("ResNet-18", "bin layers=2-3, epochs=2")]
    assert not any(row["kind"] == "improvement" for row in table["rows"])  # different families
    assert "| Method | Model | Settings | TU-Berlin | Sketchy |" in "\n".join(tables.table_markdown(table))


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
