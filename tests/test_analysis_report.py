"""Tests of analysis.report (the CLI and what it writes), on synthetic run folders and real runs of main.py.

``write_run``, ``run_tree``, ``read_csv`` and ``assert_png`` are shared with the other tests of analysis/."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

import models
from analysis import figures, report as rp
from conftest import PYTHON_START, subprocess_timeout

LAYERS = [(2, 16, 8), (3, 144, 8), (4, 72, 6)]  # (conv index, n, filters)


def write_run(root, name, *, dataset="digits", model_def="sketchanetwbin", binarizer="dab", seed=1, epochs=2,
              val=(40.123456789, 55.987654321), final=True, filters=True, old=False, losses=False, extra=None):
    """A run folder as main.py writes it; ``old``: the format from before filters/ (fewer keys)."""
    folder = root / name
    folder.mkdir(parents=True)
    args = {"dataset": dataset, "model_def": model_def, "binaryWeight": models.model_info(model_def).binarized,
            "binarizer": binarizer, "binActivation": "sign", "binStart": 2, "binEnd": 4, "manualSeed": seed,
            "epochs": epochs, "name": name, "logdir": str(root), "someNewFlag": [1, 2]}
    if not old:
        args.update(binLayers=[i for i, _, _ in LAYERS], binInputs=None)
    args.update(extra or {})
    (folder / "args.json").write_text(json.dumps(args))
    with open(folder / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["epoch", "lr", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
                    "best_top1", "seconds"] + ([] if old else ["ede_t", "ede_k"]))
        for e, v in enumerate(val, start=1):
            w.writerow([e, 1e-3, 2.0 / e + seed * 0.01, v - 5, v + 20, 1.5 / e, v, min(v + 30, 100.0),
                        max(val[:e]), 1.5 + e] + ([] if old else [0.1, 2.0]))
    if final:
        out = {"best_top1": max(val), "final_top1": val[-1], "final_top5": min(val[-1] + 30, 100.0),
               "val_images": 360}
        if not old:
            out.update(best_top5=min(max(val) + 30, 100.0), epochs_done=len(val))
        (folder / "final.json").write_text(json.dumps(out))
    if filters:
        fdir = folder / "filters"
        fdir.mkdir()
        (fdir / "layers.json").write_text(json.dumps(
            [{"tag": f"conv{i:02d}", "index": i, "name": f"features.conv{i}.conv", "method": binarizer, "n": n,
              "filters": k} for i, n, k in LAYERS]))
        rng = np.random.default_rng(seed)
        for e in range(1, len(val) + 1):
            arrays = {}
            for i, n, k in LAYERS:
                arrays[f"conv{i:02d}_k"] = rng.integers(1, n + 1, size=k).astype(np.int32)
                alpha = rng.uniform(0.05, 0.2, size=k).astype(np.float32)
                arrays[f"conv{i:02d}_alpha"], arrays[f"conv{i:02d}_beta"] = alpha, -alpha * 0.8
            np.savez(fdir / f"epoch_{e:04d}.npz", **arrays)
    if losses:
        (folder / "binarization_losses.json").write_text(json.dumps(
            [{"index": i, "name": f"features.conv{i}.conv", "rmse": 0.1 * i, "nrmse": 0.5, "err_1mx2": 0.2}
             for i, _, _ in LAYERS]))
        (folder / "weight_binarization_losses.json").write_text(json.dumps(
            [{"index": i, "name": f"features.conv{i}.conv", "rmse": 0.05 * i} for i, _, _ in LAYERS]))
    return folder


def make_run_tree(tmp_path):
    """Two DAB seeds and one XNOR run (with filters/), an old-style fp run, an unfinished run, a corrupt
    run and an empty folder, under tmp_path/logs (a sub-folder for depth): ``(logs, empty, {key: folder})``."""
    logs = tmp_path / "logs"
    made = {
        "dab1": write_run(logs / "grid", "digits_wbin_dab_s1", seed=1, val=(40.123456789, 55.987654321),
                          losses=True),
        "dab2": write_run(logs / "grid", "digits_wbin_dab_s2", seed=2, val=(42.5, 58.0312)),
        "xnor": write_run(logs, "digits_wbin_xnor", binarizer="xnor", val=(35.0, 50.1)),
        "old": write_run(logs, "digits_fp_old", model_def="sketchanet", binarizer="dab", val=(60.0, 70.25),
                         filters=False, old=True),
        "unfinished": write_run(logs, "digits_fbin_dab_running", model_def="sketchanetfbin", val=(20.0, 30.0, 25.0),
                                final=False, filters=False, epochs=5),
    }
    broken = logs / "broken"
    broken.mkdir()
    (broken / "args.json").write_text(json.dumps({"dataset": "digits", "model_def": "sketchanetwbin"}))
    (broken / "metrics.csv").write_text("epoch,val_top1\n1,forty\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    return logs, empty, made


@pytest.fixture
def run_tree(tmp_path):
    """make_run_tree in the test's own folder."""
    return make_run_tree(tmp_path)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_png(path):
    """A 600 x 400 PNG with a drawing on it (more than a few colours)."""
    image = imread(path)
    assert image.shape[:2] == (400, 600), path
    assert float(image[..., :3].var()) > 0, path
    assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 10, path


def test_results_csv_equals_final_json(run_tree, tmp_path):
    logs, empty, made = run_tree
    result = rp.report([logs, empty], tmp_path / "out")
    rows = {row["run"]: row for row in read_csv(tmp_path / "out" / "results.csv")}
    assert set(rows) == {"digits_wbin_dab_s1", "digits_wbin_dab_s2", "digits_wbin_xnor", "digits_fp_old",
                         "digits_fbin_dab_running"}
    for key in ("dab1", "dab2", "xnor", "old"):
        final_text = (made[key] / "final.json").read_text()
        final = json.loads(final_text)
        row = rows[made[key].name]
        assert row["finished"] == "yes"
        for field in ("best_top1", "final_top1", "final_top5"):
            assert float(row[field]) == final[field]
            assert json.dumps(final[field]) == row[field]  # the same text as final.json's
    assert rows["digits_wbin_dab_s1"]["weights"] == "wbin" and rows["digits_wbin_dab_s1"]["bin_layers"] == "2-4"
    assert rows["digits_wbin_dab_s1"]["family"] == models.model_info("sketchanetwbin").family
    assert rows["digits_wbin_dab_s1"]["epochs_done"] == "2"
    assert float(rows["digits_wbin_dab_s1"]["sec_per_epoch"]) == pytest.approx(3.0)
    old = rows["digits_fp_old"]
    # an old final.json has no best_top5: it comes from metrics.csv
    assert (old["weights"], old["binarizer"], old["bin_layers"], old["best_top5"]) == ("fp", "-", "-", "100.0")
    running = rows["digits_fbin_dab_running"]
    assert running["finished"] == "no" and running["weights"] == "fbin" and running["activation"] == "sign"
    assert (float(running["best_top1"]), float(running["final_top1"]), running["epochs_done"]) == (30.0, 25.0, "3")
    assert len(result["runs"]) == 5
    assert list(rows) == [run["run"] for run in result["runs"]]  # the file keeps the report's run order


def test_metric_best_leads(run_tree, tmp_path):
    logs, _, _ = run_tree
    result = rp.report([logs], tmp_path / "out", metric="best")
    assert [table["metric"] for table in result["tables"]] == ["best", "final"]
    table = read_csv(tmp_path / "out" / "results_table.csv")
    assert table[0]["metric"] == "best_top1"
    fbin = [row for row in table if row["method"] == "FBin DAB-Net"]
    assert [row["metric"] for row in fbin] == ["best_top1", "final_top1"]
    assert [float(row["digits_mean"]) for row in fbin] == [30.0, 25.0]
    md = (tmp_path / "out" / "results.md").read_text()
    assert md.index("## Table: best val top-1") < md.index("## The same table: final val top-1")


def test_skipped_runs_have_reasons(run_tree, tmp_path):
    logs, empty, _ = run_tree
    (logs / "no_args").mkdir()
    (logs / "no_args" / "metrics.csv").write_text("epoch,val_top1\n1,10\n")
    (logs / "no_rows").mkdir()
    (logs / "no_rows" / "args.json").write_text(json.dumps({"dataset": "digits", "model_def": "sketchanet"}))
    (logs / "no_rows" / "metrics.csv").write_text("epoch,val_top1\n")
    (logs / "bad_json").mkdir()
    (logs / "bad_json" / "args.json").write_text("{not json")
    result = rp.report([logs, empty, tmp_path / "missing"], tmp_path / "out")
    reasons = {os.path.basename(s["path"]): s["reason"] for s in result["skipped"]}
    assert "corrupt metrics.csv" in reasons["broken"] and "line 2" in reasons["broken"]
    assert reasons["no_args"] == "missing args.json"
    assert reasons["no_rows"] == "no completed epoch in metrics.csv"
    assert reasons["bad_json"].startswith("unreadable args.json")
    assert "no run folder" in reasons["empty"]
    assert reasons["missing"] == "does not exist"
    md = (tmp_path / "out" / "results.md").read_text()
    for name in ("broken", "no_args", "no_rows", "bad_json", "empty"):
        assert f"{name}`: {reasons[name]}" in md
    assert f"5 runs (4 finished), {len(result['skipped'])} skipped." in md


def test_every_figure_is_linked_from_results_md(run_tree, tmp_path):
    logs, _, _ = run_tree
    out = tmp_path / "out"
    result = rp.report([logs], out)
    pngs = [p for p in result["written"] if p.endswith(".png")]
    assert pngs and all(os.path.isfile(p) for p in pngs)
    md = (out / "results.md").read_text()
    for path in pngs:
        relative = os.path.relpath(path, out).replace(os.sep, "/")
        assert f"]({relative})" in md


def test_cli(run_tree, tmp_path, capsys):
    logs, empty, _ = run_tree
    out = tmp_path / "new" / "out"
    assert rp.main([str(logs), str(empty), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5 runs (4 finished, 1 unfinished)" in printed
    assert f"skipped {logs / 'broken'}: corrupt metrics.csv" in printed
    assert "results.md" in printed and (out / "results.md").exists()
    assert "figures in per-run folders" in printed

    assert rp.main([str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err and "Traceback" not in err

    assert rp.main([str(empty), str(logs / "broken"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no readable run" in err and "corrupt metrics.csv" in err
    assert not (tmp_path / "o2").exists()

    with pytest.raises(SystemExit) as exc:
        rp.main([str(logs), "--out", str(out), "--metric", "worst"])
    assert exc.value.code == 2 and capsys.readouterr().err.count("\n") == 1


def test_unwritable_output_is_one_line(run_tree, tmp_path, capsys):
    logs, _, _ = run_tree
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert rp.main([str(logs), "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot make the output folder" in err


@pytest.mark.slow
@pytest.mark.parametrize("module", ["analysis.report", "utils.report"])
def test_cli_module_entry_points(tmp_path, module):
    write_run(tmp_path / "logs", "one", filters=False)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ok = subprocess.run([sys.executable, "-m", module, str(tmp_path / "logs" / "one"), "--out",
                         str(tmp_path / "out")], cwd=repo, capture_output=True, text=True,
                        timeout=subprocess_timeout(PYTHON_START + 5))
    assert ok.returncode == 0, ok.stderr
    assert "1 runs (1 finished, 0 unfinished)" in ok.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["comparisons.csv", "curves_train_loss.png", "curves_val_top1.png",
                                                    "results.csv", "results.md", "results_table.csv"]
    bad = subprocess.run([sys.executable, "-m", module, str(tmp_path / "missing"), "--out",
                          str(tmp_path / "out2")], cwd=repo, capture_output=True, text=True,
                         timeout=subprocess_timeout(PYTHON_START + 1))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


REAL_RUNS = {"nin_fp": ["--model_def", "nin", "--no-binaryWeight"],
             "nin_dab": ["--model_def", "nin", "--binaryWeight", "--binarizer", "dab", "--calculateBinarizationLosses"],
             "nin_xnor": ["--model_def", "nin", "--binaryWeight", "--binarizer", "xnor"],
             "r20_sign": ["--model_def", "resnet20_1w1a", "--binarizer", "sign"],
             "r20_sign_wsd_ede": ["--model_def", "resnet20_1w1a", "--binarizer", "sign", "--weightShift", "wsd",
                                  "--backward", "ede"]}


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """2-epoch runs of main.py: full precision, DAB and XNOR weights, and two SD-BNN-style ablations."""
    import main
    from tinydata import split_tree
    tmp = tmp_path_factory.mktemp("real")
    data = str(split_tree(tmp / "data", ["cat", "dog", "fish"], train_per_class=4, val_per_class=2,
                          subdir="tuberlin", size=32))
    common = ["--dataset", "tuberlin", "--data_dir", data, "--inpsize", "32", "--epochs", "2", "--batch-size", "4",
              "--testbatchsize", "4", "--workers", "0", "--logdir", str(tmp / "runs")]
    for name, extra in REAL_RUNS.items():
        assert main.main(common + extra + ["--name", name, "--store", str(tmp / "ckpt" / name)]) == 0
    out = tmp / "report"
    return tmp / "runs", out, rp.report([str(tmp / "runs")], str(out))


@pytest.mark.slow
def test_report_of_real_runs_of_main(real_runs):
    """results.csv equals each final.json, the improvement row is DAB minus XNOR, the parts that change a
    binarizer (shift, EDE) keep runs apart, and the filter figures come from the logged statistics."""
    logs, out, result = real_runs
    assert not result["skipped"]  # the fp run has no per-filter statistics, and none are missed
    assert not (logs / "nin_fp" / "filters").exists()
    rows = {r["run"]: r for r in read_csv(out / "results.csv")}
    for name in REAL_RUNS:
        final = json.loads((logs / name / "final.json").read_text())
        assert float(rows[name]["best_top1"]) == final["best_top1"]
        assert float(rows[name]["final_top1"]) == final["final_top1"]
        assert rows[name]["family"] == models.model_info(REAL_RUNS[name][1]).family
    assert rows["r20_sign"]["binarizer"] == "sign" and rows["r20_sign_wsd_ede"]["binarizer"] == "sign+wsd+ede"
    assert rows["nin_dab"]["weights"] == rows["nin_xnor"]["weights"] != "fp"
    md = (out / "results.md").read_text()
    diff = float(rows["nin_dab"]["final_top1"]) - float(rows["nin_xnor"]["final_top1"])
    assert "XNOR-Net vs DAB-Net" in md and f"{diff:+.2f} (1 pair)" in md
    # the one pair of configurations that differ in one part: DAB vs XNOR weights (same seed, same recipe);
    # the SD-BNN ablation changes two parts (shift and backward) and the fp run its weights: not compared
    compared = read_csv(out / "comparisons.csv")
    assert [(row["part"], row["a"], row["b"], row["pairs"], row["seeds"]) for row in compared] == [
        ("weight binarizer", "binarizer=dab", "binarizer=xnor", "1", "123")]
    assert float(compared[0]["final_mean"]) == pytest.approx(diff)
    for figure in ("curves_val_top1.png", "curves_train_loss.png", "nin_dab/alpha_beta.png",
                   "nin_dab/k_over_training.png", "nin_dab/k_across_layers.png", "nin_dab/binarization_rmse.png"):
        assert_png(out / figure)


@pytest.mark.slow
@pytest.mark.parametrize("figure", [f.name for f in figures.figures()])
def test_every_registered_figure_is_drawn_from_real_runs(real_runs, figure):
    """Each registered figure draws from the logs main.py writes (a new figure is tested here as it is)."""
    _, out, result = real_runs
    output = {f.name: f for f in figures.figures()}[figure].output
    drawn = [p for p in result["written"] if os.path.basename(p) == output]
    assert drawn, f"no run of main.py gave {output}"
    for path in drawn:
        assert_png(path)
