"""runx.sh: every named run's command line (paper grid and SD-BNN table) parses and resolves."""

import os
import shlex
import subprocess

import pytest

import opts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, DRYRUN="1", TUBERLIN_DIR="/data/tub", SKETCHY_DIR="/data/sketchy", CIFAR10_DIR="/data/cifar",
           IMAGENET_DIR="/data/imagenet")


def commands():
    out = subprocess.run(["bash", "runx.sh", "all"], cwd=ROOT, env=ENV, capture_output=True, text=True, check=True)
    return [shlex.split(line) for line in out.stdout.splitlines() if line.strip()]


def test_every_run_is_listed_once_and_prints_one_command():
    names = subprocess.run(["bash", "runx.sh", "list"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert len(names) == len(set(names)) == 36 and len(commands()) == 36
    assert {"cifar10_resnet20_sdbnn", "imagenet_birealnet18_stage2", "tuberlin_sketchanetwbin_dab"} <= set(names)


@pytest.mark.parametrize("argv", commands(), ids=lambda argv: argv[argv.index("--name") + 1])
def test_every_run_parses(argv):
    assert argv[0] == "python3" and argv[1] == "main.py"
    args = opts.parse(argv[2:])
    assert args.resume == "auto" and args.epochs >= 256
    if args.model_def.endswith("_1w1a") or args.model_def == "birealnet18":
        assert (args.binarizer, args.weightShift, args.binActivation, args.backward) == ("sign", "wsd", "asd", "ede")
        assert args.binaryWeight == ("stage1" not in args.name)
    if args.name == "imagenet_birealnet18_stage2":
        assert args.pretrained_file.endswith("stage1/last.pth") and args.teacher.endswith("teacher/best.pth")
