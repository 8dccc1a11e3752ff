"""End-to-end tests of the training CLI: main.main(argv) on tiny generated data."""

import copy
import csv
import glob
import json
import os

import pytest
import torch

import main
import models
import opts
from tinydata import split_tree

CLASSES = ["alarm clock", "bear"]
# A small, cheap binarized model for the tests of the CLI's mechanics (NIN: 9 convs, sizes 29..32).
FAST = ["--model_def", "nin", "--inpsize", "32", "--binaryWeight"]


@pytest.fixture(scope="module")
def sketches(tmp_path_factory):
    """A tiny TU-Berlin tree in the original's pre-split layout (<data_dir>/tuberlin/{train,val})."""
    root = tmp_path_factory.mktemp("tub")
    return str(split_tree(root, CLASSES, train_per_class=3, val_per_class=2, subdir="tuberlin"))


def base_args(data_dir, tmp_path, *extra, name="run"):
    return ["--dataset", "tuberlin", "--data_dir", data_dir, "--epochs", "1", "--batch-size", "8",
            "--testbatchsize", "4", "--workers", "0", "--logdir", str(tmp_path / "logs"),
            "--store", str(tmp_path / "ckpt"), "--name", name, *extra]


def read_events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(folder)
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


KINDS = {
    "fp": ["--model_def", "sketchanet"],
    "wbin-dab": ["--model_def", "sketchanetwbin", "--binaryWeight", "--binarizer", "dab"],
    "wbin-xnor": ["--model_def", "sketchanetwbin", "--binaryWeight", "--binarizer", "xnor"],
    "wbin-bnn": ["--model_def", "sketchanetwbin", "--binaryWeight", "--bnnModel"],
    "fbin-dab": ["--model_def", "sketchanetfbin", "--binaryWeight"],
}


@pytest.mark.parametrize("ten_crop", [False, True], ids=["center", "tencrop"])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.slow
def test_main_trains_and_logs_end_to_end(kind, ten_crop, sketches, tmp_path, capsys):
    argv = base_args(sketches, tmp_path, *KINDS[kind], "--epochs", "2") + (["--tenCrop"] if ten_crop else [])
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    assert "best val top1" in out and "final val top1" in out
    run_dir = tmp_path / "logs" / "run"
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["val_top1"]) >= 0 and float(r["lr"]) > 0 for r in rows)
    saved = json.loads((run_dir / "args.json").read_text())
    assert saved["model_def"] == KINDS[kind][1] and saved["tenCrop"] == ten_crop
    events = read_events(str(run_dir))
    for tag in ("train/loss", "train/top1", "train/top5", "val/loss", "val/top1", "val/top5", "lr"):
        assert len(events[tag]) == 2, tag
    binarized = kind != "fp"
    assert ("binarize/conv02/k_frac" in events) == binarized
    if binarized:
        assert 0 < events["binarize/conv07/k_frac"][-1] < 1
        assert events["binarize/conv02/alpha"][-1] > events["binarize/conv02/beta"][-1]
    for name in ("last.pth", "best.pth"):
        state = torch.load(tmp_path / "ckpt" / name, map_location="cpu", weights_only=True)
        assert {"epoch", "model", "optimizer", "best_acc1", "args", "rng"} <= set(state)
    assert torch.load(tmp_path / "ckpt" / "last.pth", weights_only=True)["epoch"] == 2


def state_of(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.slow
def test_resume_gives_the_weights_of_an_uninterrupted_run(workers, sketches, tmp_path):
    common = FAST + ["--workers", str(workers), "--batch-size", "4"]
    straight = base_args(sketches, tmp_path / "a", *common, "--epochs", "3")
    assert main.main(straight) == 0
    first = base_args(sketches, tmp_path / "b", *common, "--epochs", "1")
    assert main.main(first) == 0
    resumed = base_args(sketches, tmp_path / "b", *common, "--epochs", "3",
                        "--resume", str(tmp_path / "b" / "ckpt" / "last.pth"))
    assert main.main(resumed) == 0
    a, b = state_of(tmp_path / "a" / "ckpt" / "last.pth"), state_of(tmp_path / "b" / "ckpt" / "last.pth")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    with open(tmp_path / "b" / "logs" / "run" / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]


def test_evaluate_only_reports_and_writes_nothing(sketches, tmp_path, capsys):
    assert main.main(base_args(sketches, tmp_path, *FAST)) == 0
    ckpt = str(tmp_path / "ckpt" / "last.pth")
    before = sorted(glob.glob(str(tmp_path / "**"), recursive=True))
    capsys.readouterr()
    argv = base_args(sketches, tmp_path, *FAST, "--evaluate", "--resume", ckpt, "--tenCrop",
                     "--calculateBinarizationLosses")
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    assert "val: loss" in out and "ten-crop" in out and "conv   8" in out
    assert sorted(glob.glob(str(tmp_path / "**"), recursive=True)) == before
    assert main.main(base_args(sketches, tmp_path, *FAST, "--testOnly", "--pretrained_file", ckpt)) == 0


def test_binarization_losses_are_printed_and_logged(sketches, tmp_path, capsys):
    argv = base_args(sketches, tmp_path, "--model_def", "sketchanethybrid", "--calculateBinarizationLosses",
                     "--calculateWeightBinarizationLosses")
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    assert "input binarization errors" in out and "weight binarization losses" in out
    run = tmp_path / "logs" / "run"
    inputs = json.loads((run / "binarization_losses.json").read_text())
    assert [r["index"] for r in inputs] == [2, 3, 4, 5]          # the hybrid's binarized inputs
    assert all(r["rmse"] > 0 and r["nrmse"] > 0 and 0 <= r["err_1mx2"] <= 1 for r in inputs)
    weights = json.loads((run / "weight_binarization_losses.json").read_text())
    assert [r["index"] for r in weights] == [2, 3, 4, 5, 6, 7]   # every binarized conv
    assert all(r["rmse"] > 0 for r in weights)
    events = read_events(str(run))
    assert "weight_binarization_rmse/conv02" in events and "binarization/conv02/nrmse" in events


@pytest.mark.parametrize("optim", opts.OPTIMIZERS)
def test_every_optimizer_trains(optim, sketches, tmp_path):
    argv = base_args(sketches, tmp_path, *FAST, "--optimType", optim, "--nesterov")
    assert main.main(argv) == 0
    state = torch.load(tmp_path / "ckpt" / "last.pth", weights_only=True)
    assert state["optimizer"]["state"], "the optimizer took no step"


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(sketches, tmp_path, monkeypatch, capsys):
    argv = base_args(sketches, tmp_path, *FAST)
    assert main.main(argv) == 0
    last = tmp_path / "ckpt" / "last.pth"
    good = last.read_bytes()
    monkeypatch.setattr(torch.nn.functional, "nll_loss", lambda x, t, *a, **k: (x * float("nan")).sum())
    assert main.main(argv[:] + ["--epochs", "3", "--resume", str(last)]) == 1
    assert "loss is nan" in capsys.readouterr().err
    assert last.read_bytes() == good


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def error_cases(sketches, tmp_path):
    """(argv, expected fragment of the one-line message) for each kind of bad input."""
    other = tmp_path / "other"
    assert main.main(base_args(sketches, other, "--model_def", "nin", "--inpsize", "32")) == 0
    three = tmp_path / "three"  # a nin with 3 classes, for a class-count mismatch
    three_data = split_tree(tmp_path / "threedata", CLASSES + ["cup"], train_per_class=2, val_per_class=1,
                            subdir="tuberlin")
    assert main.main(base_args(str(three_data), three, *FAST)) == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    blocker = write(tmp_path / "afile", b"x")
    cases = {
        "missing data_dir": (["--data_dir", str(tmp_path / "nope")], "nope"),
        "empty data_dir": (["--data_dir", str(empty)], "empty"),
        "nClasses mismatch": (["--nClasses", "250"], "--nClasses 250"),
        "unknown model": (["--model_def", "sketchynet"], "invalid choice"),
        "bin range outside model": (["--binStart", "10", "--binEnd", "12"], "9 convs"),
        "input size": (["--inpsize", "64"], "29..32"),
        "resume missing": (["--resume", str(tmp_path / "none.pth")], "does not exist"),
        "resume corrupt": (["--resume", write(tmp_path / "bad.pth", b"not a checkpoint")], "not a PyTorch"),
        "resume other model": (["--resume", str(other / "ckpt" / "last.pth")], "another configuration"),
        "unwritable logdir": (["--logdir", os.path.join(blocker, "logs")], "--logdir"),
        "unwritable store": (["--store", os.path.join(blocker, "ckpt")], "--store"),
        "zero batch size": (["--batch-size", "0"], "positive"),
        "negative epochs": (["--epochs", "-1"], "positive"),
        "unknown optimizer": (["--optimType", "rmsprop"], "invalid choice"),
        "unknown schedule": (["--learningratescheduler", "step"], "invalid choice"),
        "ngpus without torchrun": (["--ngpus", "2"], "torchrun"),
        "nan learning rate": (["--maxlr", "nan"], "positive finite"),
        "inf learning rate": (["--lr", "inf"], "positive finite"),
        "negative learning rate": (["--maxlr", "-0.1"], "positive finite"),
        "negative weight decay": (["--weightDecay", "-1e-4"], "--weightDecay"),
        "nan weight decay": (["--weightDecay", "nan"], "--weightDecay"),
        "negative workers": (["--workers", "-3"], "--workers must be >= 0"),
        "negative start epoch": (["--start-epoch", "-5", "--resume", "auto"], "--start-epoch must be >= 0"),
        "start epoch without checkpoint": (["--start-epoch", "99"], "needs a checkpoint"),
        "start epoch, auto, no checkpoint": (["--start-epoch", "3", "--resume", "auto"], "no checkpoint behind it"),
        "name escaping the folders": (["--name", "../../escape"], "relative name"),
        "absolute name": (["--name", "/tmp/abs"], "relative name"),
        "resume a folder": (["--resume", str(tmp_path)], "is a folder"),
        "resume a text file": (["--resume", write(tmp_path / "notes.txt", b"hello\n")], "not a PyTorch checkpoint"),
        "resume truncated": (["--resume", write(tmp_path / "cut.pth", open(other / "ckpt" / "last.pth", "rb")
                                                .read()[:5000])], "truncated or corrupt"),
        "pretrained other class count": (["--nClasses", "2", "--pretrained_file",
                                          str(tmp_path / "three" / "ckpt" / "last.pth")], "[3, 192, 1, 1]"),
        "refused criterion": (["-criterion", "mse"], "only ever trained with nllLoss"),
    }
    if not torch.cuda.is_available():
        cases["cuda absent"] = (["--device", "cuda"], "CUDA")
        cases["syncBN on cpu"] = (["--syncBN"], "--syncBN needs CUDA")
        cases["amp on cpu"] = (["--amp", "bf16"], "needs CUDA")
    return cases


def test_bad_input_gives_one_line_exit_2_and_writes_nothing(sketches, tmp_path, capsys):
    cases = error_cases(sketches, tmp_path / "setup")
    for label, (extra, fragment) in cases.items():
        run_root = tmp_path / label.replace(" ", "_")
        argv = base_args(sketches, run_root, *FAST) + extra
        assert main.main(argv) == 2, label
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, (label, err)
        assert "error" in err and fragment in err, (label, err)
        assert not run_root.exists(), f"{label}: something was written"


def test_argparse_errors_exit_with_status_2(capsys):
    with pytest.raises(SystemExit) as exc:
        opts.parse(["--optimType", "rmsprop"])
    assert exc.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


@pytest.fixture
def few_digits(monkeypatch):
    """scikit-learn's digits cut to their first 30 images (24 train, 6 val), so that a run with the default
    flags takes seconds."""
    import sklearn.datasets
    real = sklearn.datasets.load_digits

    def load_digits(*args, **kwargs):
        full = real(*args, **kwargs)
        full.images, full.target = full.images[:30], full.target[:30]
        return full
    monkeypatch.setattr(sklearn.datasets, "load_digits", load_digits)


@pytest.mark.slow
def test_a_run_with_the_default_flags_trains_a_dab_binarized_sketchanet_on_digits(few_digits, tmp_path, monkeypatch,
                                                                                  capsys):
    monkeypatch.chdir(tmp_path)
    assert main.main([]) == 0
    out = capsys.readouterr().out
    assert "sketchanetwbin (dab weights on convs 2-7, 225x225, 1 channel(s), 10 classes) on digits" in out
    store = os.path.join("savedmodels", "digits_sketchanetwbin")
    assert f"run folder {os.path.join('runs', 'digits_sketchanetwbin')}, checkpoints in {store}" in out
    run = tmp_path / "runs" / "digits_sketchanetwbin"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and [float(r["lr"]) for r in rows] == [1e-3, 1e-3]
    assert glob.glob(str(run / "events.out.tfevents.*"))
    recorded = json.loads((run / "args.json").read_text())
    assert (recorded["name"], recorded["logdir"], recorded["store"]) == ("digits_sketchanetwbin", "runs", store)
    facts = recorded["facts"]
    assert {k: facts[k] for k in ("dataset", "family", "variant", "weights_binarized", "binarized_convs",
                                  "weight_binarizer", "weight_shift", "inputs_binarized", "backward", "inpsize",
                                  "num_classes", "in_channels", "world_size")} == dict(
        dataset="digits", family="sketchanet", variant="wbin", weights_binarized=True,
        binarized_convs=[2, 3, 4, 5, 6, 7], weight_binarizer="dab", weight_shift="none", inputs_binarized=False,
        backward="ste", inpsize=225, num_classes=10, in_channels=1, world_size=1)
    state = torch.load(tmp_path / store / "last.pth", map_location="cpu", weights_only=True)
    assert state["epoch"] == 2 and state["facts"] == facts
    assert "betas" in state["optimizer"]["param_groups"][0]  # Adam


@pytest.fixture
def parsed(monkeypatch):
    """Every namespace opts.parse returns during the test, each with a deep copy of its values as returned."""
    seen, real = [], opts.parse

    def parse(*args, **kwargs):
        namespace = real(*args, **kwargs)
        seen.append((namespace, copy.deepcopy(vars(namespace))))
        return namespace
    monkeypatch.setattr(opts, "parse", parse)
    return seen


def test_a_run_leaves_the_parsed_options_as_parse_returned_them(sketches, tmp_path, monkeypatch, parsed):
    monkeypatch.chdir(tmp_path)  # default name and folders: resolved by the folder plan, not written into args
    fresh = ["--dataset", "tuberlin", "--data_dir", sketches, *FAST, "--batch-size", "8", "--workers", "0"]
    assert main.main(fresh + ["--epochs", "1"]) == 0
    last = tmp_path / "savedmodels" / "tuberlin_nin" / "last.pth"
    assert main.main(fresh + ["--epochs", "2", "--resume", str(last)]) == 0  # folders taken from the checkpoint
    assert main.main(fresh + ["--evaluate", "--resume", str(last)]) == 0
    assert main.main(["--summary", "--dataset", "cifar10", "--model_def", "bincifar", "--inpsize", "225"]) == 0
    assert main.main(["--export", str(tmp_path / "nin.safetensors"), "--resume", str(last)]) == 0
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert len(parsed) == 5
    for namespace, as_returned in parsed:
        assert vars(namespace) == as_returned


def test_args_json_and_every_checkpoint_hold_the_resolved_facts(sketches, tmp_path):
    argv = base_args(sketches, tmp_path, "--model_def", "sketchanethybrid", "--binInputs", "3,4", "--binarizer", "xnor",
                     "--binLayers", "2-5")
    assert main.main(argv) == 0
    facts = json.loads((tmp_path / "logs" / "run" / "args.json").read_text())["facts"]
    assert {k: facts[k] for k in ("model_def", "family", "variant", "label", "binarized_convs", "binarized_linears",
                                  "weight_binarizer", "inputs_binarized", "binarized_input_convs",
                                  "activation_binarizer", "dataset", "num_classes")} == dict(
        model_def="sketchanethybrid", family="sketchanet", variant="hybrid",
        label=models.model_info("sketchanethybrid").label, binarized_convs=[2, 3, 4, 5], binarized_linears=[],
        weight_binarizer="xnor", inputs_binarized=True, binarized_input_convs=[3, 4], activation_binarizer="sign",
        dataset="tuberlin", num_classes=2)
    assert len(facts["data_fingerprint"]) == 16 and facts["code_version"]
    for name in ("last.pth", "best.pth"):
        assert torch.load(tmp_path / "ckpt" / name, weights_only=True)["facts"] == facts
    fp = base_args(sketches, tmp_path / "fp", "--model_def", "sketchanet")
    assert main.main(fp) == 0
    plain = json.loads((tmp_path / "fp" / "logs" / "run" / "args.json").read_text())["facts"]
    assert (plain["weights_binarized"], plain["binarized_convs"], plain["weight_binarizer"], plain["backward"]) == (
        False, [], None, None)
    assert plain["data_fingerprint"] == facts["data_fingerprint"]  # the same files in the same classes


@pytest.mark.slow
def test_a_full_precision_run_continues_with_the_same_command(tmp_path):
    """A run with nothing binarized records no backward rule; rerunning its command with --resume auto
    continues it (the stored None is not read back as the "ste" default of older checkpoints)."""
    argv = ["--model_def", "resnet20_fp", "--inpsize", "8", "--batch-size", "64", "--workers", "0",
            "--logdir", str(tmp_path / "runs"), "--store", str(tmp_path / "ckpt"), "--name", "fp"]
    assert main.main(argv + ["--epochs", "1"]) == 0
    assert main.main(argv + ["--epochs", "2", "--resume", "auto"]) == 0
    with open(tmp_path / "runs" / "fp" / "metrics.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
