"""The original's run-script command lines work with only --data_dir and --epochs changed.

All of them parse and resolve to a buildable, binarizable model here; the CIFAR lines also run one
epoch. ``python tests/original_commands.py`` runs every line for one epoch (minutes per line on a
CPU: each needs all of its 125-1000 classes and ten-crop validation at 224 pixels).
"""

import pytest

import binarize
import main
import models
import opts
from launch import build
from original_commands import LINES, argv_for, classes_of, dataset_of, tiny_data

CHANNELS = {"cifar10": 3, "cifar100": 3, "imagenet12": 3}


@pytest.mark.parametrize("label,line", LINES, ids=[label for label, _ in LINES])
def test_original_line_parses_and_builds_its_binarized_model(label, line, tmp_path):
    args = opts.parse(argv_for(line, tmp_path, 1, tmp_path / "logs", tmp_path / "ckpt"))
    assert args.binaryWeight and args.binarizer == "dab" and args.learningratescheduler == "decayschedular"
    assert args.optimType == "adam" and args.epochs == 1 and args.nClasses == classes_of(line)
    build.input_size_note(args)
    if args.model_def.startswith("alexnet"):  # 62M parameters: check the pieces, skip building it here
        models.check_input_size(args.model_def, args.inpsize)
        return
    model = build.network(args, args.nClasses, CHANNELS.get(dataset_of(line), 1))
    num_convs = models.model_info(args.model_def).num_convs
    start, end = (int(v) for v in (line.split("--binStart=")[1].split()[0], line.split("--binEnd=")[1].split()[0]))
    assert [i for i, *_ in binarize.binarized_layers(model)] == list(range(start, min(end, num_convs) + 1))


CIFAR_LINES = [(label, line) for label, line in LINES if dataset_of(line).startswith("cifar")]


@pytest.mark.parametrize("label,line", CIFAR_LINES, ids=[label for label, _ in CIFAR_LINES])
def test_original_cifar_line_runs_one_epoch(label, line, tmp_path, capsys):
    data = tiny_data(dataset_of(line), classes_of(line), str(tmp_path / "data"))
    assert main.main(argv_for(line, data, 1, tmp_path / "logs", tmp_path / "ckpt")) == 0
    out = capsys.readouterr().out
    assert "final val top1" in out and "--inpsize 225 does not apply" in out
