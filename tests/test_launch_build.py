"""launch.build, from flags to the objects of a run: every way of loading a trained model gives the same
model (evaluation after --resume, after --pretrained_file of the checkpoint or of its export, and a plain
load_state_dict); a stage-1 checkpoint starts stage 2 whatever binarizers the two stages use; SD-BNN's
recipe pieces (schedules, label smoothing, distillation against its formula, teachers of both kinds, each
new model for an epoch); the saved flags of a checkpoint; and the resolved facts of a run (its model's
binarized layers, its data's fingerprint, the code's version)."""

import argparse
import math
import re
import subprocess
from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import binarize
import datasets
import main
import models
import opts
from tinydata import split_tree
from launch import build
from utils.errors import UsageError
from utils.schedule import lr_at


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("loadpaths")
    data = str(split_tree(root / "data", ["cat", "dog", "fish"], train_per_class=4, val_per_class=3,
                          subdir="tuberlin"))
    common = ["--dataset", "tuberlin", "--data_dir", data, "--testbatchsize", "4", "--workers", "0"]
    argv = common + ["--model_def", "nin", "--inpsize", "32", "--binaryWeight", "--epochs", "2", "--batch-size", "4",
                     "--logdir", str(root / "logs"), "--store", str(root / "ckpt"), "--name", "run"]
    assert main.main(argv) == 0
    return root, common + ["--model_def", "nin", "--inpsize", "32", "--binaryWeight"]


def val_line(capsys, argv):
    assert main.main(argv) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("val: loss"))
    return re.sub(r"\s+", " ", line)


def test_evaluation_is_identical_after_every_load_path(trained, capsys):
    root, common = trained
    last = str(root / "ckpt" / "last.pth")
    resumed = val_line(capsys, common + ["--evaluate", "--resume", last])
    pretrained = val_line(capsys, common + ["--evaluate", "--pretrained_file", last])
    export = str(root / "nin.safetensors")
    assert main.main(["--export", export, "--resume", last]) == 0
    exported = val_line(capsys, common + ["--evaluate", "--pretrained_file", export])
    assert resumed == pretrained == exported
    # and in Python: a plain load_state_dict into a freshly built model gives the same weights and outputs
    model, args, state = build.load_checkpoint_model(last)
    fresh = build.build_network(args, state["num_classes"], state["in_channels"])
    fresh.load_state_dict(state["model"])
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), model(x))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), state["model"].values()))


@pytest.mark.parametrize("stage2", [["--binarizer", "sign", "--weightShift", "wsd"], ["--binarizer", "dab"]])
def test_a_stage_1_checkpoint_starts_stage_2(stage2, tmp_path, capsys):
    data = str(split_tree(tmp_path / "data", ["cat", "dog"], train_per_class=4, val_per_class=2, subdir="tuberlin"))
    common = ["--dataset", "tuberlin", "--data_dir", data, "--model_def", "resnet20_1w1a", "--inpsize", "32",
              "--epochs", "1", "--batch-size", "4", "--testbatchsize", "4", "--workers", "0",
              "--logdir", str(tmp_path / "logs"), "--binActivation", "asd"]
    stage1 = common + ["--no-binaryWeight", "--store", str(tmp_path / "s1"), "--name", "stage1"]
    assert main.main(stage1) == 0
    ckpt = str(tmp_path / "s1" / "last.pth")
    stage2_argv = common + stage2 + ["--store", str(tmp_path / "s2"), "--name", "stage2", "--pretrained_file", ckpt]
    assert main.main(stage2_argv) == 0
    out = capsys.readouterr().out
    assert "real layers of the checkpoint become binarized latent weights here" in out
    first = torch.load(ckpt, weights_only=True)["model"]
    model, args, _ = build.load_checkpoint_model(str(tmp_path / "s2" / "last.pth"))
    layers = binarize.binarized_layers(model)
    assert len(layers) == 18
    # the activation binarizers' (ASD) parameters came from stage 1 and trained on
    assert any(k.endswith("sign.fc1.weight") for k in first)


def test_cosine_and_linear_schedules_go_to_zero_over_the_epochs():
    common = dict(maxlr=0.1, minlr=0.0, decayinterval=50, decaylevel=2, epochs=500)
    cos = [lr_at(e, schedule="cosine", **common) for e in (0, 250, 499)]
    assert cos[0] == 0.1 and cos[1] == pytest.approx(0.05) and cos[2] == pytest.approx(0.1 * (1 + math.cos(
        math.pi * 499 / 500)) / 2)
    lin = [lr_at(e, schedule="linear", **common) for e in (0, 250, 499)]
    assert lin == pytest.approx([0.1, 0.05, 0.1 / 500])


def test_distillation_loss_against_its_formula():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(12, 5))
    images, target = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 4])
    student = F.log_softmax(torch.randn(4, 5), dim=1)
    t = teacher(images).detach()
    for temperature, alpha in ((1.0, 1.0), (4.0, 0.7)):
        loss = build.TrainingLoss("crossentropy", 0.1, teacher, temperature, alpha)(student, target, images)
        p_t = F.softmax(t / temperature, dim=1)
        log_p_s = F.log_softmax(student / temperature, dim=1)
        kl = (p_t * (p_t.log() - log_p_s)).sum(dim=1).mean() * temperature ** 2
        smoothed = 0.9 * F.one_hot(target, 5) + 0.1 / 5
        ce = -(smoothed * F.log_softmax(student, dim=1)).sum(dim=1).mean()
        assert loss.item() == pytest.approx((alpha * kl + (1 - alpha) * ce).item(), rel=1e-6)
    plain = build.TrainingLoss("nllloss")(student, target, images)
    assert plain.item() == pytest.approx(F.nll_loss(student, target).item())


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return str(split_tree(tmp_path_factory.mktemp("recipes"), ["cat", "dog", "fish"], train_per_class=4,
                          val_per_class=2, subdir="tuberlin", size=32))


def common(data, tmp_path, name):
    return ["--dataset", "tuberlin", "--data_dir", data, "--inpsize", "32", "--epochs", "1", "--batch-size", "4",
            "--testbatchsize", "4", "--workers", "0", "--logdir", str(tmp_path / "logs"), "--store",
            str(tmp_path / name), "--name", name]


def test_distillation_from_a_checkpoint_and_from_a_torchvision_state_dict(data, tmp_path, capsys):
    teacher_argv = common(data, tmp_path, "teacher") + ["--model_def", "resnet20_fp"]
    assert main.main(teacher_argv) == 0
    student = common(data, tmp_path, "student") + ["--model_def", "resnet20_1w1a", "--binarizer", "sdbnn",
                                                     "--teacher", str(tmp_path / "teacher" / "last.pth")]
    assert main.main(student) == 0
    tv = torchvision.models.resnet18(num_classes=3)
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    other = common(data, tmp_path, "student2") + ["--model_def", "resnet20_1w1a", "--teacher",
                                                   str(tmp_path / "r18.pth"), "--teacherModel", "resnet18",
                                                   "--kdAlpha", "0.5", "--kdT", "2", "--criterion", "crossentropy"]
    with pytest.raises(RuntimeError):  # torchvision's ResNet takes 3 channels; the tiny sketches have 1
        tv(torch.zeros(1, 1, 32, 32))
    assert main.main(other) == 2
    assert "--teacher" in capsys.readouterr().err
    bad = common(data, tmp_path, "student3") + ["--model_def", "resnet20_1w1a", "--teacher",
                                                 str(tmp_path / "r18.pth"), "--teacherModel", "resnet34"]
    assert main.main(bad) == 2
    assert "resnet34" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["resnet20_1w1a", "resnet20_fp", "vgg_small_1w1a", "vgg_small_fp",
                                  "resnet18_1w1a", "resnet18_cifar_fp", "birealnet18", "birealnet18_fp"])
@pytest.mark.slow
def test_each_sdbnn_model_trains_end_to_end_at_32_px(name, data, tmp_path, capsys):
    argv = common(data, tmp_path, name) + ["--model_def", name]
    if models.model_info(name).binarized:
        argv += ["--binarizer", "sdbnn"]
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    assert "final val top1" in out
    state = torch.load(tmp_path / name / "last.pth", weights_only=True)
    assert state["epoch"] == 1 and state["classes"] == ["cat", "dog", "fish"]


def bundle_of(model_classes, train_targets, val_targets, files=None):
    """A stand-in DataBundle: what resolved_facts and data_fingerprint read."""
    return SimpleNamespace(train=Labelled(train_targets, files), val=Labelled(val_targets, None),
                           classes=model_classes, num_classes=len(model_classes), num_channels=1,
                           description="stand-in")


class Labelled(torch.utils.data.Dataset):
    """Labels (and file names) without images."""

    def __init__(self, targets, files):
        self.targets = list(targets)
        if files is not None:
            self.files = list(files)

    def __len__(self):
        return len(self.targets)


@pytest.mark.parametrize("argv,expected", [
    (["--model_def", "sketchanet"], dict(family="sketchanet", variant="fp", weights_binarized=False,
                                         binarized_convs=[], weight_binarizer=None, weight_shift=None,
                                         inputs_binarized=False, binarized_input_convs=[], activation_binarizer=None,
                                         backward=None)),
    (["--model_def", "sketchanetfbin", "--binLayers", "3-4"],
     dict(family="sketchanet", variant="fbin", weights_binarized=True, binarized_convs=[3, 4], weight_binarizer="dab",
          weight_shift="none", inputs_binarized=True, binarized_input_convs=[2, 3, 4, 5, 6, 7],
          activation_binarizer="sign", backward="ste")),
    (["--model_def", "resnet20_1w1a", "--binarizer", "sdbnn", "--dataset", "cifar10"],
     dict(family=models.model_info("resnet20_1w1a").family, variant="1w1a", weights_binarized=True,
          binarized_convs=list(range(2, 20)), weight_binarizer="sign", weight_shift="wsd", inputs_binarized=True,
          binarized_input_convs=list(range(2, 20)), activation_binarizer="asd", backward="ede")),
])
def test_resolved_facts_read_the_binarized_layers_from_the_model(argv, expected):
    args = opts.parse(argv)
    model = build.build_network(args, 3, 1)
    bundle = bundle_of(["a", "b", "c"], [0, 1, 2, 2], [1, 0])
    facts = build.resolved_facts(args, model, bundle, 4)
    assert {k: facts[k] for k in expected} == expected
    assert facts["label"] == models.model_info(args.model_def).label and facts["model_def"] == args.model_def
    assert (facts["world_size"], facts["num_classes"], facts["in_channels"]) == (4, 3, 1)
    assert facts["dataset"] == args.dataset and facts["inpsize"] == args.inpsize
    assert facts["data_fingerprint"] == build.data_fingerprint(bundle) and facts["code_version"] == build.code_version()


def test_the_data_fingerprint_follows_classes_labels_and_files(tmp_path):
    def fingerprint(root):
        return build.data_fingerprint(datasets.build("tuberlin", str(root), inpsize=32))
    tree = lambda name, classes: split_tree(tmp_path / name, classes, train_per_class=2, val_per_class=1,  # noqa
                                            subdir="tuberlin")
    first, again = fingerprint(tree("a", ["cat", "dog"])), fingerprint(tree("b", ["cat", "dog"]))
    assert first == again and len(first) == 16  # the same files in the same classes, wherever they are
    assert fingerprint(tree("c", ["cat", "fox"])) != first
    fewer = tree("d", ["cat", "dog"])
    (fewer / "tuberlin" / "train" / "dog" / "1.png").unlink()
    assert fingerprint(fewer) != first
    labels = bundle_of(["a", "b"], [0, 1], [1], files=["x.png", "y.png"])
    assert build.data_fingerprint(bundle_of(["a", "b"], [1, 0], [1], files=["x.png", "y.png"])) != \
        build.data_fingerprint(labels)
    unlabelled = SimpleNamespace(train=torch.utils.data.TensorDataset(torch.zeros(2)), val=labels.val, classes=["a"])
    assert build.data_fingerprint(unlabelled) is None


def test_the_code_version_is_the_checkouts_git_describe(tmp_path, monkeypatch):
    described = subprocess.run(["git", "describe", "--always", "--tags"], cwd=build.ROOT, capture_output=True,
                               text=True)
    build.code_version.cache_clear()
    try:
        if described.returncode == 0:
            assert build.code_version().split("-dirty")[0] == described.stdout.strip()
        monkeypatch.setattr(build, "ROOT", str(tmp_path))  # not a git checkout: the package version
        build.code_version.cache_clear()
        from deploy.export import __version__
        assert build.code_version() == f"dabnet {__version__}"
    finally:
        monkeypatch.undo()
        build.code_version.cache_clear()


def test_saved_flags_fill_in_what_an_older_checkpoint_lacks():
    state = {"args": {"model_def": "sketchanetwbin", "binStart": 3, "binEnd": 5, "binaryWeight": True,
                      "dataset": "tuberlin", "backward": None}}
    args = build.read_saved_args(state, "old.pth")
    assert isinstance(args, argparse.Namespace)
    assert (args.binLayers, args.binActivation, args.backward, args.weightShift, args.inpsize) == (
        [3, 4, 5], "sign", "ste", None, 225)
    assert state["args"] == {"model_def": "sketchanetwbin", "binStart": 3, "binEnd": 5, "binaryWeight": True,
                             "dataset": "tuberlin", "backward": None}
    with pytest.raises(UsageError, match="known --model_def"):
        build.read_saved_args({"args": {"model_def": "nosuchnet"}}, "x.pth")


# -- evaluation honours the stored configuration; latents are projected at load; exports are named as such


def given_of(argv):
    """The options ``argv`` gives on the command line, as their dests."""
    flags = {s: a.dest for a in opts.get_parser()._actions for s in a.option_strings}
    return {flags[t.split("=")[0]] for t in argv if t.split("=")[0] in flags}


def planned_run(argv, capsys):
    """Plan ``argv`` and run it with the options of the plan (as main.main does); returns the output."""
    from launch.folders import plan_folders
    plan = plan_folders(opts.parse(argv), given_of(argv))
    capsys.readouterr()
    assert main.execute(plan.options, plan, torch.device("cpu"), None, None, plan.notes) == 0
    return capsys.readouterr().out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A resnet20_1w1a trained one epoch at 16 px (its default is 32), and the data flags it was trained with."""
    root = tmp_path_factory.mktemp("small")
    data = str(split_tree(root / "data", ["cat", "dog", "fish"], train_per_class=4, val_per_class=3,
                          subdir="tuberlin", size=16))
    common = ["--dataset", "tuberlin", "--data_dir", data, "--testbatchsize", "4", "--workers", "0"]
    assert main.main(common + ["--model_def", "resnet20_1w1a", "--inpsize", "16", "--epochs", "1", "--batch-size",
                               "4", "--logdir", str(root / "logs"), "--store", str(root / "ckpt"), "--name", "s"]) == 0
    return root, common


def test_evaluate_takes_the_model_and_size_from_the_checkpoint_or_the_export(small, capsys):
    root, common = small
    last = str(root / "ckpt" / "last.pth")
    out = planned_run(common + ["--evaluate", "--resume", last], capsys)
    assert "resnet20_1w1a (" in out and "16x16" in out
    resumed = next(re.sub(r"\s+", " ", l) for l in out.splitlines() if l.startswith("val: loss"))
    with pytest.raises(UsageError) as info:
        planned_run(common + ["--evaluate", "--resume", last, "--inpsize", "32"], capsys)
    assert "--inpsize 32 was given but" in str(info.value) and "--inpsize 16" in str(info.value)
    export = str(root / "s.safetensors")
    assert main.main(["--export", export, "--resume", last]) == 0
    out = planned_run(common + ["--evaluate", "--pretrained_file", export], capsys)
    assert "resnet20_1w1a (" in out and "16x16" in out
    assert next(re.sub(r"\s+", " ", l) for l in out.splitlines() if l.startswith("val: loss")) == resumed


def test_pretrained_latents_of_another_binarizer_are_projected_at_load(tmp_path):
    sign = opts.parse(["--model_def", "resnet20_1w1a", "--inpsize", "16", "--binarizer", "sign"])
    torch.manual_seed(0)
    model = build.build_network(sign, 3, 1)
    with torch.no_grad():  # sign never projects its latents: they may sit anywhere
        for _, _, conv, _ in binarize.binarized_layers(model):
            conv.parametrizations.weight.original.copy_(3 * torch.randn_like(conv.parametrizations.weight.original))
    path = tmp_path / "sign.pth"
    torch.save(dict(model=model.state_dict(), args=vars(sign), num_classes=3, in_channels=1), path)
    dab = opts.parse(["--model_def", "resnet20_1w1a", "--inpsize", "16", "--binarizer", "dab", "--pretrained_file",
                      str(path)])
    target = build.build_network(dab, 3, 1)
    build.load_pretrained(target, dab, lambda *a, **k: None)
    raw = model.state_dict()
    layers = binarize.binarized_layers(target)
    assert len(layers) == 18
    for _, name, conv, binarizer in layers:  # each latent is the stored one, projected as dab projects
        expected = raw[f"{name}.parametrizations.weight.original"].clone()
        binarizer.project_(expected)
        assert torch.equal(conv.parametrizations.weight.original, expected)
        assert conv.parametrizations.weight.original.abs().max() <= 1


def test_an_export_given_as_teacher_is_named_as_an_export(tmp_path):
    from deploy.export import export_model
    args = opts.parse(["--model_def", "resnet20_1w1a", "--inpsize", "16"])
    path = str(tmp_path / "t.safetensors")
    export_model(build.build_network(args, 3, 1), path, dict(model_def="resnet20_1w1a", num_classes=3, in_channels=1))
    with pytest.raises(UsageError) as info:
        build.check_model(opts.parse(["--model_def", "resnet20_1w1a", "--inpsize", "16", "--teacher", path]))
    message = str(info.value)
    assert "is an export" in message and "--pretrained_file" in message and "--evaluate --packed" in message
    # fine-tuning from it with another model names the model the export holds, not --binaryWeight
    other = opts.parse(["--model_def", "vgg_small_1w1a", "--pretrained_file", path])
    with pytest.raises(UsageError, match="holds a resnet20_1w1a, not a vgg_small_1w1a; pass --model_def resnet20_1w1a"):
        build.load_pretrained(build.build_network(other, 3, 1), other, print)
