"""SD-BNN's recipe pieces: the cosine and linear schedules, label smoothing, the distillation loss against
its formula, a teacher given as a checkpoint of ours or as a torchvision state_dict, and a short digits run
of each new model at 32 px."""

import math

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

import main
import models
from tinydata import split_tree
from launch import build
from utils.schedule import lr_at


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
def test_each_sdbnn_model_trains_end_to_end_at_32_px(name, data, tmp_path, capsys):
    argv = common(data, tmp_path, name) + ["--model_def", name]
    if models.model_info(name).binarized:
        argv += ["--binarizer", "sdbnn"]
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    assert "final val top1" in out
    state = torch.load(tmp_path / name / "last.pth", weights_only=True)
    assert state["epoch"] == 1 and state["classes"] == ["cat", "dog", "fish"]
