"""Every way of loading a trained model gives the same model: evaluation after --resume, after
--pretrained_file of the checkpoint, after a plain load_state_dict and after --pretrained_file of its export
report identical top-1 and loss; a stage-1 checkpoint (binarized inputs, real weights) starts stage 2
(weights binarized too) whatever binarizers the two stages use."""

import re

import pytest
import torch

import binarize
import main
from tinydata import split_tree
from launch import build


@pytest.fixture(scope="module")
def run(tmp_path_factory):
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


def test_evaluation_is_identical_after_every_load_path(run, capsys):
    root, common = run
    last = str(root / "ckpt" / "last.pth")
    resumed = val_line(capsys, common + ["--evaluate", "--resume", last])
    pretrained = val_line(capsys, common + ["--evaluate", "--pretrained_file", last])
    export = str(root / "nin.safetensors")
    assert main.main(["--export", export, "--resume", last]) == 0
    exported = val_line(capsys, common + ["--evaluate", "--pretrained_file", export])
    assert resumed == pretrained == exported
    # and in Python: a plain load_state_dict into a freshly built model gives the same weights and outputs
    model, args, state = build.from_checkpoint(last)
    fresh = build.network(args, state["num_classes"], state["in_channels"])
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
    model, args, _ = build.from_checkpoint(str(tmp_path / "s2" / "last.pth"))
    layers = binarize.binarized_layers(model)
    assert len(layers) == 18
    # the activation binarizers' (ASD) parameters came from stage 1 and trained on
    assert any(k.endswith("sign.fc1.weight") for k in first)
