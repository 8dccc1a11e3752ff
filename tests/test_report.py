"""Tests of analysis.report (results tables and figures from run folders), on synthetic run folders."""

import csv
import json
import os
import statistics
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.image import imread

from analysis import report as rp

LAYERS = [(2, 16, 8), (3, 144, 8), (4, 72, 6)]  # (conv index, n, filters)


def write_run(root, name, *, dataset="digits", model_def="sketchanetwbin", binarizer="dab", seed=1, epochs=2,
              val=(40.123456789, 55.987654321), final=True, filters=True, old=False, losses=False, extra=None):
    """A run folder as main.py writes it; ``old``: the format from before filters/ (fewer keys)."""
    folder = root / name
    folder.mkdir(parents=True)
    args = {"dataset": dataset, "model_def": model_def, "binaryWeight": "wbin" in model_def or "fbin" in model_def,
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


@pytest.fixture
def runs(tmp_path):
    """Two DAB seeds and one XNOR run (with filters/), an old-style fp run, an unfinished run, a corrupt
    run and an empty folder, under tmp_path/logs (a sub-folder for depth)."""
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


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_results_csv_equals_final_json(runs, tmp_path):
    logs, empty, made = runs
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
    assert rows["digits_wbin_dab_s1"]["epochs_done"] == "2"
    assert float(rows["digits_wbin_dab_s1"]["sec_per_epoch"]) == pytest.approx(3.0)
    old = rows["digits_fp_old"]
    # an old final.json has no best_top5: it comes from metrics.csv
    assert (old["weights"], old["binarizer"], old["bin_layers"], old["best_top5"]) == ("fp", "-", "-", "100.0")
    running = rows["digits_fbin_dab_running"]
    assert running["finished"] == "no" and running["weights"] == "fbin" and running["activation"] == "sign"
    assert (float(running["best_top1"]), float(running["final_top1"]), running["epochs_done"]) == (30.0, 25.0, "3")
    assert len(result["runs"]) == 5


def test_table_groups_seeds_and_improvement(runs, tmp_path):
    logs, _, _ = runs
    rp.report([logs], tmp_path / "out")
    table = read_csv(tmp_path / "out" / "results_table.csv")
    final_rows = {row["method"]: row for row in table if row["metric"] == "final_top1"}
    assert list(final_rows) == ["Full precision", "WBin XNOR-Net", "WBin DAB-Net", "WBin: XNOR-Net vs DAB-Net",
                                "FBin DAB-Net"]
    dab = final_rows["WBin DAB-Net"]
    values = [55.987654321, 58.0312]
    assert dab["model"] == "Sketch-A-Net"
    assert float(dab["digits_mean"]) == pytest.approx(statistics.fmean(values))
    assert float(dab["digits_std"]) == pytest.approx(statistics.stdev(values))
    assert dab["digits_n"] == "2"
    assert final_rows["WBin XNOR-Net"]["digits_n"] == "1" and final_rows["WBin XNOR-Net"]["digits_std"] == ""
    gain = final_rows["WBin: XNOR-Net vs DAB-Net"]
    assert gain["kind"] == "improvement"
    assert float(gain["digits_mean"]) == pytest.approx(statistics.fmean(values) - 50.1)
    assert final_rows["FBin DAB-Net"]["digits_unfinished"] == "yes"
    best_rows = {row["method"]: row for row in table if row["metric"] == "best_top1"}
    best_gain = float(best_rows["WBin: XNOR-Net vs DAB-Net"]["digits_mean"])
    assert best_gain == pytest.approx(statistics.fmean(values) - 50.1)  # best = last epoch in these runs

    md = (tmp_path / "out" / "results.md").read_text()
    mean, std = statistics.fmean(values), statistics.stdev(values)
    assert f"| WBin DAB-Net | Sketch-A-Net | {mean:.2f} ± {std:.2f} (n=2) |" in md
    assert "| WBin XNOR-Net | Sketch-A-Net | 50.10 (n=1) |" in md
    assert f"*WBin: XNOR-Net vs DAB-Net* | *Sketch-A-Net* | {mean - 50.1:+.2f} |" in md
    assert md.index("Full precision") < md.index("WBin XNOR-Net") < md.index("WBin DAB-Net") < md.index("FBin DAB-Net")
    assert "25.00 (n=1) †" in md


def test_metric_best_leads(runs, tmp_path):
    logs, _, _ = runs
    rp.report([logs], tmp_path / "out", metric="best")
    table = read_csv(tmp_path / "out" / "results_table.csv")
    assert table[0]["metric"] == "best_top1"
    fbin = [row for row in table if row["method"] == "FBin DAB-Net"]
    assert [row["metric"] for row in fbin] == ["best_top1", "final_top1"]
    assert [float(row["digits_mean"]) for row in fbin] == [30.0, 25.0]


def test_skipped_runs_have_reasons(runs, tmp_path):
    logs, empty, _ = runs
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


def test_corrupt_filters_keep_the_run(runs, tmp_path):
    logs, _, made = runs
    (made["xnor"] / "filters" / "layers.json").write_text(json.dumps(
        [{"tag": "conv02", "index": 2, "name": "c", "method": "dab", "n": 16, "filters": 8}]))
    (made["xnor"] / "filters" / "epoch_0002.npz").write_bytes(b"PK\x03\x04 truncated")
    result = rp.report([logs], tmp_path / "out")
    assert "digits_wbin_xnor" in {run["run"] for run in result["runs"]}
    reason = {os.path.basename(s["path"]): s["reason"] for s in result["skipped"]}["digits_wbin_xnor"]
    assert reason.startswith("filter figures skipped") and "epoch_0002.npz" in reason
    assert not (tmp_path / "out" / "digits_wbin_xnor").exists()


def assert_png(path):
    image = imread(path)
    assert image.shape[:2] == (400, 600), path
    assert float(image[..., :3].var()) > 0, path
    assert len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 10, path


def test_figures(runs, tmp_path):
    logs, _, made = runs
    out = tmp_path / "out"
    result = rp.report([logs], out)
    expected = {"curves_val_top1.png", "curves_train_loss.png"}
    for name in ("digits_wbin_dab_s1", "digits_wbin_dab_s2"):  # DAB runs with filters/
        expected |= {f"{name}/{f}" for f in ("alpha_beta.png", "k_over_training.png", "k_across_layers.png")}
    expected.add("digits_wbin_dab_s1/binarization_rmse.png")
    pngs = {os.path.relpath(p, out).replace(os.sep, "/") for p in result["written"] if p.endswith(".png")}
    assert pngs == expected  # no filter figures for XNOR, none for the runs without filters/
    found = {os.path.relpath(os.path.join(d, f), out).replace(os.sep, "/")
             for d, _, files in os.walk(out) for f in files if f.endswith(".png")}
    assert found == expected
    for name in expected:
        assert_png(out / name)
    md = (out / "results.md").read_text()
    assert "(digits_wbin_dab_s1/alpha_beta.png)" in md


def test_weights_kind_and_family():
    def kind(model_def, **args):
        return rp.weights_kind(dict(model_def=model_def, **args))

    assert kind("sketchanet", binaryWeight=False) == "fp"
    assert kind("resnet20_fp") == "fp"
    assert kind("sketchanetwbin", binaryWeight=True) == "wbin"
    assert kind("sketchanetfbin", binaryWeight=True) == "fbin"
    assert kind("resnet20_1w1a") == "fbin" and kind("birealnet18", binaryWeight=True) == "fbin"
    assert kind("sketchanethybridv2", binaryWeight=True) == "hybrid"
    assert kind("sketchanetwbin", binaryWeight=True, binLayers=[2, 3, 4], binInputs=[3]) == "hybrid"
    assert kind("sketchanetwbin", binaryWeight=True, binLayers=[2, 3], binInputs=[2, 3, 4]) == "fbin"
    assert kind("sketchanetfbin", binaryWeight=True, binLayers=[2, 3], binInputs=[]) == "wbin"
    assert kind("sketchanetfbin", binaryWeight=False) == "abin"
    families = {m: rp.family_of(m) for m in ("resnetwbin18", "resnethybridv218", "resnet18", "sketchanetfbin",
                                             "googlenetfbin", "resnet20_1w1a", "resnet20_fp", "birealnet18",
                                             "squeezenethybridv3", "vgg16_bncifar")}
    assert families == {"resnetwbin18": "resnet", "resnethybridv218": "resnet", "resnet18": "resnet",
                        "sketchanetfbin": "sketchanet", "googlenetfbin": "googlenet", "resnet20_1w1a": "resnet20",
                        "resnet20_fp": "resnet20", "birealnet18": "birealnet",
                        "squeezenethybridv3": "squeezenet", "vgg16_bncifar": "vgg16_bncifar"}
    assert rp.compact_layers([9, 2, 3, 4, 5, 7]) == "2-5,7,9"


def test_table_splits_rows_by_setting_and_orders_columns(tmp_path):
    logs = tmp_path / "logs"
    write_run(logs, "a", dataset="sketchy", filters=False, val=(10.0, 11.0))
    write_run(logs, "b", dataset="tuberlin", filters=False, val=(12.0, 13.0))
    write_run(logs, "c", dataset="tuberlin", filters=False, val=(14.0, 15.0), epochs=3,
              extra={"binLayers": [2, 3]})
    write_run(logs, "d", dataset="tuberlin", model_def="resnetwbin18", binarizer="xnor", filters=False,
              val=(1.0, 2.0), extra={"binLayers": [2, 3]})
    table = rp.report([logs], tmp_path / "out")["tables"][0]
    assert table["datasets"] == ["tuberlin", "sketchyrecognition"]
    dab = [(row["model"], row["settings"]) for row in table["rows"] if row["method"] == "WBin DAB-Net"]
    assert dab == [("Sketch-A-Net", "bin 2-3, 3 epochs"), ("Sketch-A-Net", "bin 2-4, 2 epochs")]
    xnor = [row for row in table["rows"] if row["method"] == "WBin XNOR-Net"]
    assert [(row["model"], row["settings"]) for row in xnor] == [("ResNet-18", "")]
    assert not any(row["kind"] == "improvement" for row in table["rows"])  # different families
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| Method | Model | TU-Berlin | Sketchy |" in md


def test_cli(runs, tmp_path, capsys):
    logs, empty, _ = runs
    out = tmp_path / "new" / "out"
    assert rp.main([str(logs), str(empty), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "5 runs (4 finished, 1 unfinished)" in printed
    assert f"skipped {logs / 'broken'}: corrupt metrics.csv" in printed
    assert "results.md" in printed and (out / "results.md").exists()

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


def test_cli_module_entry_point(tmp_path):
    write_run(tmp_path / "logs", "one", filters=False)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ok = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path / "logs" / "one"), "--out",
                         str(tmp_path / "out")], cwd=repo, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "1 runs (1 finished, 0 unfinished)" in ok.stdout
    assert sorted(os.listdir(tmp_path / "out")) == ["curves_train_loss.png", "curves_val_top1.png", "results.csv",
                                                    "results.md", "results_table.csv"]
    bad = subprocess.run([sys.executable, "-m", "analysis.report", str(tmp_path / "missing"), "--out",
                          str(tmp_path / "out2")], cwd=repo, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "Traceback" not in bad.stderr


def test_many_runs_share_a_legend_entry_per_seed_group(tmp_path):
    logs = tmp_path / "logs"
    for seed in range(rp.MAX_LEGEND + 2):
        write_run(logs, f"s{seed}", seed=seed, filters=False, val=(10.0 + seed, 20.0 + seed))
    write_run(logs, "x", binarizer="xnor", filters=False)
    result = rp.report([logs], tmp_path / "out")
    assert len(result["runs"]) == rp.MAX_LEGEND + 3
    assert_png(tmp_path / "out" / "curves_val_top1.png")
    n = rp.MAX_LEGEND + 2
    spread = statistics.stdev([20.0 + seed for seed in range(n)])
    assert f"± {spread:.2f} (n={n})" in (tmp_path / "out" / "results.md").read_text()


def test_report_of_real_runs_of_main(tmp_path):
    """2-epoch runs of main.py (full precision, DAB and XNOR weights) and two SD-BNN-style ablations of one model:
    results.csv equals each final.json, the improvement row is DAB minus XNOR, the parts that change a
    binarizer (shift, EDE) keep runs apart, and every figure is drawn from the logged per-filter statistics."""
    import main
    from tinydata import split_tree
    data = str(split_tree(tmp_path / "data", ["cat", "dog", "fish"], train_per_class=4, val_per_class=2,
                          subdir="tuberlin", size=32))
    common = ["--dataset", "tuberlin", "--data_dir", data, "--inpsize", "32", "--epochs", "2", "--batch-size", "4",
              "--testbatchsize", "4", "--workers", "0", "--logdir", str(tmp_path / "runs")]
    configs = {"nin_fp": ["--model_def", "nin", "--no-binaryWeight"],
               "nin_dab": ["--model_def", "nin", "--binaryWeight", "--binarizer", "dab",
                           "--calculateBinarizationLosses"],
               "nin_xnor": ["--model_def", "nin", "--binaryWeight", "--binarizer", "xnor"],
               "r20_sign": ["--model_def", "resnet20_1w1a", "--binarizer", "sign"],
               "r20_sign_wsd_ede": ["--model_def", "resnet20_1w1a", "--binarizer", "sign", "--weightShift", "wsd",
                                    "--backward", "ede"]}
    for name, extra in configs.items():
        assert main.main(common + extra + ["--name", name, "--store", str(tmp_path / "ckpt" / name)]) == 0
    out = tmp_path / "report"
    result = rp.report([str(tmp_path / "runs")], str(out))
    assert not result["skipped"]  # the fp run has no per-filter statistics, and none are missed
    assert not (tmp_path / "runs" / "nin_fp" / "filters").exists()
    rows = {r["run"]: r for r in read_csv(out / "results.csv")}
    for name in configs:
        final = json.loads((tmp_path / "runs" / name / "final.json").read_text())
        assert float(rows[name]["best_top1"]) == final["best_top1"]
        assert float(rows[name]["final_top1"]) == final["final_top1"]
    assert rows["r20_sign"]["binarizer"] == "sign" and rows["r20_sign_wsd_ede"]["binarizer"] == "sign+wsd+ede"
    md = (out / "results.md").read_text()
    diff = float(rows["nin_dab"]["final_top1"]) - float(rows["nin_xnor"]["final_top1"])
    assert "XNOR-Net vs DAB-Net" in md and f"{diff:+.2f}" in md
    for figure in ("curves_val_top1.png", "curves_train_loss.png", "nin_dab/alpha_beta.png",
                   "nin_dab/k_over_training.png", "nin_dab/k_across_layers.png", "nin_dab/binarization_rmse.png"):
        assert_png(out / figure)
