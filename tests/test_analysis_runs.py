"""Tests of analysis.runs: run folders read into records, with what a run was taken from its args.json
facts and the model registry, never from its name."""

import json
import os

import pytest

import models
import opts
from analysis import runs as rr
from test_analysis_report import make_run_tree, write_run


@pytest.fixture
def run_tree(tmp_path):
    """The synthetic runs of test_analysis_report.make_run_tree, in the test's own folder."""
    return make_run_tree(tmp_path)


def test_find_runs_at_any_depth_once_each(run_tree, tmp_path):
    logs, empty, made = run_tree
    found, skipped = rr.find_runs([str(logs), str(made["dab1"]), str(empty), str(tmp_path / "missing"),
                                   str(made["xnor"] / "args.json")])
    assert sorted(found) == sorted(os.path.normpath(str(p)) for p in [*made.values(), logs / "broken"])
    assert {os.path.basename(s["path"]): s["reason"] for s in skipped} == {
        "empty": "no run folder (args.json or metrics.csv) in it", "missing": "does not exist",
        "args.json": "not a folder"}


def test_read_run_record(run_tree):
    _, _, made = run_tree
    run = rr.read_run(str(made["dab1"]))
    assert set(rr.RUN_KEYS) <= set(run)
    info = models.model_info("sketchanetwbin")
    assert (run["run"], run["dataset"], run["dataset_label"], run["model"]) == \
        ("digits_wbin_dab_s1", "digits", "digits", "sketchanetwbin")
    assert (run["family"], run["variant"], run["model_label"]) == (info.family, info.variant, info.label)
    assert run["family_label"] == "Sketch-A-Net"
    assert (run["weights"], run["weights_label"], run["binarizer"], run["bin_layers"], run["activation"]) == \
        ("wbin", "WBin", "dab", "2-4", "-")
    assert (run["seed"], run["epochs"], run["epochs_done"], run["finished"]) == (1, 2, 2, True)
    assert [row["epoch"] for row in run["metrics"]] == [1.0, 2.0]
    assert run["final_top1"] == 55.987654321 and run["val_images"] == 360


def test_unfinished_run_takes_its_numbers_from_metrics(run_tree):
    _, _, made = run_tree
    run = rr.read_run(str(made["unfinished"]))
    assert (run["finished"], run["epochs_done"], run["best_top1"], run["final_top1"]) == (False, 3, 30.0, 25.0)
    assert (run["weights"], run["weights_label"], run["activation"]) == ("fbin", "FBin", "sign")
    assert run["best_top5"] == 60.0 and run["final_top5"] == 55.0


def test_a_metric_logged_twice_keeps_the_last_row(tmp_path):
    folder = write_run(tmp_path, "resumed", filters=False, final=False)
    with open(folder / "metrics.csv", "a") as f:
        f.write("2,1e-3,0.5,60,80,0.5,77.5,90,77.5,2.5,0.1,2.0\n")
    rows = rr.read_metrics(str(folder / "metrics.csv"))
    assert [(row["epoch"], row["val_top1"]) for row in rows] == [(1.0, 40.123456789), (2.0, 77.5)]


@pytest.mark.parametrize("text, reason", [
    ("epoch,val_top1\n1,forty\n", "line 2 holds a value that is not a number"),
    ("epoch,val_top1\n1,2,3\n", "line 2 has 2 columns"),
    ("epoch,loss\n1,2\n", "no epoch and val_top1 columns"),
    ("epoch,val_top1\n,40\n", "line 2 has no epoch or val_top1"),
    ("epoch,val_top1\n", "no completed epoch in metrics.csv"),
])
def test_corrupt_metrics_are_refused_with_the_reason(tmp_path, text, reason):
    path = tmp_path / "metrics.csv"
    path.write_text(text)
    with pytest.raises(rr.RunError, match=reason):
        rr.read_metrics(str(path))


@pytest.mark.parametrize("args, final, reason", [
    (None, None, "missing args.json"),
    ("[1, 2]", None, "corrupt args.json: not a JSON object"),
    (json.dumps({"dataset": "digits"}), None, "args.json lacks model_def"),
    (json.dumps({"dataset": "digits", "model_def": "sketchanet"}), "{}", "corrupt final.json"),
    (json.dumps({"dataset": "digits", "model_def": "nosuchnet"}), None,
     "model 'nosuchnet' is not in the model registry and args.json holds no facts"),
])
def test_unreadable_runs_say_why(tmp_path, args, final, reason):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.csv").write_text("epoch,val_top1\n1,10\n")
    if args is not None:
        (folder / "args.json").write_text(args)
    if final is not None:
        (folder / "final.json").write_text(final)
    with pytest.raises(rr.RunError) as exc:
        rr.read_run(str(folder))
    assert str(exc.value).startswith(reason)


def test_weights_kind_from_options_and_registry():
    def kind(model_def, **args):
        return rr.weights_kind(dict(model_def=model_def, **args))

    for name in models.list_models():  # an old run that logged no option: the model's own defaults
        info = models.model_info(name)
        expected = ("hybrid" if info.variant.startswith("hybrid") else "fbin") if info.inputs_binarized else "wbin"
        if not info.binarized:
            expected = "abin" if info.inputs_binarized else "fp"
        assert kind(name) == expected, name
    assert kind("sketchanet", binaryWeight=False) == "fp" and kind("resnet20_fp") == "fp"
    assert kind("resnet20_1w1a") == "fbin" and kind("birealnet18", binaryWeight=True) == "fbin"
    assert kind("sketchanet", binaryWeight=True) == "wbin"  # --binaryWeight on a full-precision model
    assert kind("sketchanetwbin", binaryWeight=True) == "wbin"
    assert kind("sketchanetfbin", binaryWeight=True) == "fbin"
    assert kind("sketchanethybridv2", binaryWeight=True) == "hybrid"
    assert kind("sketchanetwbin", binaryWeight=True, binLayers=[2, 3, 4], binInputs=[3]) == "hybrid"
    assert kind("sketchanetwbin", binaryWeight=True, binLayers=[2, 3], binInputs=[2, 3, 4]) == "fbin"
    assert kind("sketchanetwbin", binaryWeight=True, binStart=3, binEnd=4, binInputs=[3]) == "hybrid"
    assert kind("sketchanethybrid", binaryWeight=True, binLayers=[2, 3], binInputs=[2, 3]) == "fbin"
    assert kind("sketchanetfbin", binaryWeight=True, binLayers=[2, 3], binInputs=[]) == "wbin"
    assert kind("sketchanetfbin", binaryWeight=False) == "abin"


def test_method_facts_and_labels_from_options(tmp_path):
    folder = write_run(tmp_path, "ablation", model_def="resnet20_1w1a", binarizer="sign", filters=False,
                       extra={"weightShift": "wsd", "backward": "ede", "binActivation": "asd", "binInputs": None})
    run = rr.read_run(str(folder))
    info = models.model_info("resnet20_1w1a")
    assert (run["family"], run["variant"]) == (info.family, info.variant)
    assert (run["weights"], run["binarizer"], run["activation"]) == ("fbin", "sign+wsd+ede", "asd")
    hybrid = rr.read_run(str(write_run(tmp_path, "h2", model_def="sketchanethybridv2", filters=False,
                                       extra={"binLayers": [2, 3, 4, 5, 6, 7]})))
    assert (hybrid["weights"], hybrid["weights_label"]) == ("hybrid", "Hybrid-v2")


def test_saved_facts_win_over_names_and_registry(tmp_path):
    """A run whose args.json holds facts is described by them: here a model name that says fbin, unknown
    to the registry, whose facts say binarized weights with real inputs and SD-BNN's weight parts."""
    facts = {"family": "mystery", "variant": "wbin", "label": "Mystery-Net wbin", "weights_binarized": True,
             "inputs_binarized": False, "weight_binarizer": "sign", "weight_shift": "wsd", "backward": "ede",
             "activation_binarizer": "sign", "world_size": 1, "num_classes": 10}
    folder = write_run(tmp_path, "mysterynet_fbin_dab", model_def="sketchanetwbin", filters=False,
                       extra={"model_def": "mysterynetfbin", "facts": facts, "binLayers": None})
    run = rr.read_run(str(folder))
    assert (run["family"], run["family_label"], run["variant"], run["model_label"]) == \
        ("mystery", "Mystery-Net", "wbin", "Mystery-Net wbin")
    assert (run["weights"], run["weights_label"], run["binarizer"], run["activation"]) == \
        ("wbin", "WBin", "sign+wsd+ede", "-")
    # facts beat the options and the registry for a registered model too
    known = write_run(tmp_path, "known", model_def="sketchanetwbin", binarizer="dab", filters=False,
                      extra={"facts": {"weight_binarizer": "xnor", "family": "sketchanet", "variant": "wbin"}})
    assert rr.read_run(str(known))["binarizer"] == "xnor"
    # binarized inputs chosen on the command line: compared with the binarized convs the facts name
    partial = write_run(tmp_path, "partial", model_def="sketchanetwbin", filters=False,
                        extra={"binLayers": None, "binInputs": [3],
                               "facts": {"binarized_convs": [2, 3, 4], "inputs_binarized": True}})
    assert rr.read_run(str(partial))["weights"] == "hybrid"
    covered = write_run(tmp_path, "covered", model_def="sketchanetwbin", filters=False,
                        extra={"binLayers": None, "binInputs": [3, 4], "facts": {"binarized_convs": [3, 4]}})
    assert rr.read_run(str(covered))["weights"] == "fbin"


def test_compact_layers():
    assert rr.compact_layers([9, 2, 3, 4, 5, 7]) == "2-5,7,9"
    assert rr.compact_layers([]) == "none"


def _resolved(*argv):
    """A run's args.json as main.py writes it: the resolved options of ``argv`` (facts left out)."""
    return dict(vars(opts.parse(["--dataset", "digits", *argv])))


def test_the_configuration_is_everything_but_the_seed_and_what_cannot_change_results():
    base = _resolved("--model_def", "sketchanetwbin", "--epochs", "3")
    config = rr.configuration(base)
    assert "manualSeed" not in config and "name" not in config and "workers" not in config
    assert config["epochs"] == 3 and config["batch_size"] == 64 and config["maxlr"] == 1e-3
    same = dict(base, manualSeed=7, name="other", logdir="elsewhere", store="s", workers=0, device="cpu",
                printfreq=1, verbose=True, tensorboard=False, resume="auto", overwrite=True, saveEvery=5,
                testbatchsize=8, cacheDir="/c", cachemode=True, evaluate=False, channelsLast=True,
                calculateBinarizationLosses=True)
    assert rr.configuration(same) == config
    for change in ({"maxlr": 5e-3}, {"batch_size": 32}, {"learningratescheduler": "cosine"}, {"epochs": 1},
                   {"inpsize": 8}, {"binLayers": [2, 3]}, {"optimType": "sgd"}, {"binarizer": "xnor"}):
        assert rr.configuration(dict(base, **change)) != config, change


def test_not_configuration_names_real_options_and_every_alias():
    dests = {action.dest for action in opts.get_parser()._actions}
    options = {key for key in rr.NOT_CONFIGURATION if not key.startswith("facts.")}
    assert options <= dests, options - dests  # no misspelt option
    assert set(opts.DERIVED) <= options  # the aliases are recorded in their resolved options
    assert all(isinstance(reason, str) and reason for reason in rr.NOT_CONFIGURATION.values())


def test_data_is_named_by_its_fingerprint_else_its_folder():
    base = _resolved("--model_def", "sketchanetwbin")
    here, there = dict(base, data_dir="/a"), dict(base, data_dir="/b")
    assert rr.configuration(here) != rr.configuration(there)  # nothing else names the data
    facts = {"family": "sketchanet", "variant": "wbin", "data_fingerprint": "abc", "code_version": "v1"}
    assert rr.configuration(dict(here, facts=facts)) == \
        rr.configuration(dict(there, facts=dict(facts, code_version="v2-dirty")))
    assert rr.configuration(dict(here, facts=facts)) != rr.configuration(dict(here, facts=dict(facts,
                                                                                               data_fingerprint="d")))


def test_options_a_run_never_uses_do_not_split_it():
    fp = _resolved("--model_def", "sketchanet")
    assert rr.configuration(dict(fp, binarizer="xnor", backward="ede", binLayers=[3])) == rr.configuration(fp)
    wbin = _resolved("--model_def", "sketchanetwbin")
    assert rr.configuration(dict(wbin, binActivation="asd")) == rr.configuration(wbin)  # real inputs
    assert rr.configuration(dict(wbin, backward="ede")) != rr.configuration(wbin)
    fbin = _resolved("--model_def", "sketchanetfbin")
    assert rr.configuration(dict(fbin, binActivation="asd")) != rr.configuration(fbin)


def test_recipes_that_differ_are_never_pooled_and_same_seed_copies_are_duplicates(tmp_path):
    """The issue's case: an SD-BNN run at Adam 1e-3 / batch 64 beside one at 5e-3, cosine, batch 32, and
    two copies of one seed."""
    sdbnn = {"binarizer": "sign", "weightShift": "wsd", "binActivation": "asd", "backward": "ede",
             "maxlr": 1e-3, "batch_size": 64, "learningratescheduler": "decayschedular"}
    recipe = dict(sdbnn, maxlr=5e-3, batch_size=32, learningratescheduler="cosine")
    write_run(tmp_path, "r20_sdbnn", model_def="resnet20_1w1a", filters=False, val=(5.0, 9.17), extra=sdbnn)
    write_run(tmp_path, "r20_sdbnn_copy", model_def="resnet20_1w1a", filters=False, val=(5.0, 9.17), extra=sdbnn)
    write_run(tmp_path, "r20_sdbnn_recipe", model_def="resnet20_1w1a", filters=False, val=(30.0, 49.0),
              extra=recipe)
    write_run(tmp_path, "r20_sdbnn_s2", model_def="resnet20_1w1a", seed=2, filters=False, val=(5.0, 11.0),
              extra=sdbnn)
    runs = [rr.read_run(str(tmp_path / name)) for name in sorted(os.listdir(tmp_path))]
    groups = rr.config_groups(runs)
    assert [[run["run"] for run in g["runs"]] for g in groups] == [["r20_sdbnn", "r20_sdbnn_s2"],
                                                                   ["r20_sdbnn_recipe"]]
    assert [(dup["run"], kept["run"]) for dup, kept in groups[0]["duplicates"]] == [("r20_sdbnn_copy", "r20_sdbnn")]
    assert groups[1]["duplicates"] == []
    labels = rr.settings_labels(groups)
    assert labels[groups[0]["config_id"]] == "batch_size=64, learningratescheduler=decayschedular, maxlr=0.001"
    assert labels[groups[1]["config_id"]] == "batch_size=32, learningratescheduler=cosine, maxlr=0.005"


def test_settings_labels_name_what_differs_and_bin_layers_only_where_weights_are_binarized(tmp_path):
    write_run(tmp_path, "fp", model_def="sketchanet", filters=False, epochs=1, val=(10.0,), extra={"inpsize": 8})
    write_run(tmp_path, "b16", filters=False, extra={"inpsize": 16})
    write_run(tmp_path, "b32", filters=False, extra={"inpsize": 32, "binLayers": [2, 3]})
    groups = rr.config_groups([rr.read_run(str(tmp_path / name)) for name in ("fp", "b16", "b32")])
    labels = [rr.settings_labels(groups)[g["config_id"]] for g in groups]
    assert labels == ["epochs=1, inpsize=8", "bin layers=2-4, epochs=2, inpsize=16",
                      "bin layers=2-3, epochs=2, inpsize=32"]


def test_has_file_and_run_file(run_tree):
    _, _, made = run_tree
    dab, old = rr.read_run(str(made["dab1"])), rr.read_run(str(made["old"]))
    assert rr.has_file(dab, "filters/") and rr.has_file(dab, "filters/layers.json")
    assert rr.has_file(dab, "binarization_losses.json") and not rr.has_file(old, "binarization_losses.json")
    assert not rr.has_file(old, "filters/")
    (made["old"] / "filters").mkdir()
    assert not rr.has_file(old, "filters/")  # an empty filters/ (older versions) holds nothing to draw
    assert rr.run_file(dab, "filters/layers.json") == os.path.join(str(made["dab1"]), "filters", "layers.json")
