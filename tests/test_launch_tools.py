"""launch.tools, the commands that read no data: --summary refuses a size its model cannot take in one line;
--export takes the model from its checkpoint (a contradicting model flag is an error naming both values),
says what the size ratio means for a model with no binarized layer, and writes files as readable as a
checkpoint; --packed evaluation picks its device (packed convs on the CPU, dense elsewhere) and says so."""

import os
import stat

import pytest
import torch

import main
import opts
from launch import build, tools
from utils.checkpoint import atomic_save
from utils.errors import UsageError


def given_of(argv):
    """The options ``argv`` gives on the command line, as their dests."""
    flags = {s: a.dest for a in opts.get_parser()._actions for s in a.option_strings}
    return {flags[t.split("=")[0]] for t in argv if t.split("=")[0] in flags}


def saved(path, argv, num_classes=3, in_channels=1):
    """A checkpoint of the model of ``argv`` (freshly initialised), as main.py stores one."""
    args = opts.parse(argv)
    torch.manual_seed(0)
    model = build.build_network(args, num_classes, in_channels)
    atomic_save(dict(model=model.state_dict(), epoch=1, step=0, args=vars(args), num_classes=num_classes,
                     in_channels=in_channels, classes=[str(i) for i in range(num_classes)]), str(path))
    return str(path)


def test_a_summary_at_a_size_the_model_cannot_take_is_one_line_exit_2(capsys):
    assert main.main(["--summary", "--model_def", "sketchanetwbin", "--inpsize", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "225..248, got 32" in err


def test_an_export_of_a_full_precision_model_says_it_has_no_binarized_layer(tmp_path, capsys, monkeypatch):
    source = saved(tmp_path / "fp.pth", ["--model_def", "resnet20_fp", "--inpsize", "16"])
    out = str(tmp_path / "fp.safetensors")
    assert tools.run_model_tool(opts.parse(["--export", out, "--resume", source])) == 0
    line = capsys.readouterr().out.strip()
    assert "no binarized layer" in line and "smaller" not in line.replace("no smaller", "")


def test_an_export_is_written_with_the_mode_of_a_checkpoint(tmp_path):
    source = saved(tmp_path / "bin.pth", ["--model_def", "resnet20_1w1a", "--inpsize", "16"])
    old = os.umask(0o022)
    try:
        out = str(tmp_path / "bin.safetensors")
        assert tools.run_model_tool(opts.parse(["--export", out, "--resume", source])) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o644 == stat.S_IMODE(os.stat(source).st_mode)


def test_an_export_refuses_a_model_flag_that_contradicts_its_checkpoint(tmp_path):
    source = saved(tmp_path / "bin.pth", ["--model_def", "resnet20_1w1a", "--inpsize", "16"])
    out = str(tmp_path / "x.safetensors")
    with pytest.raises(UsageError, match="--model_def nin was given but .* holds --model_def resnet20_1w1a"):
        tools.run_model_tool(opts.parse(["--export", out, "--resume", source, "--model_def", "nin"]))
    argv = ["--export", out, "--resume", source, "--inpsize", "32"]  # 32: the model's default, given explicitly
    with pytest.raises(UsageError) as info:
        tools.run_model_tool(opts.parse(argv), given_of(argv))
    assert "--inpsize 32 was given but" in str(info.value) and "--inpsize 16" in str(info.value)
    assert not os.path.exists(out)
    argv = ["--export", out, "--resume", source, "--inpsize", "16"]
    assert tools.run_model_tool(opts.parse(argv), given_of(argv)) == 0


@pytest.mark.parametrize("packed,device,note", [
    ("on", "cpu", "runs on the CPU although CUDA is available"),
    ("auto", "cuda", "every layer runs dense on cuda"),
    ("off", "cuda", None),
])
def test_packed_evaluation_picks_its_device_on_a_cuda_machine(packed, device, note, tmp_path):
    argv = ["--evaluate", "--pretrained_file", str(tmp_path / "m.safetensors"), "--packed", packed]
    args = opts.parse(argv if packed != "off" else argv[:3])
    assert build.choose_device(args, cuda_available=True)[0].type == device
    chosen, said = tools.packed_device(args, cuda_available=True)
    assert chosen.type == device and (said is None if note is None else note in said)
    assert build.choose_device(args, cuda_available=False)[0].type == "cpu"
    if packed == "on":
        with pytest.raises(UsageError, match="--packed on runs its XNOR/popcount convs on the CPU"):
            build.choose_device(opts.parse(argv + ["--device", "cuda"]), cuda_available=True)


def test_packed_auto_off_the_cpu_loads_the_export_dense_there_and_says_so(tmp_path):
    from deploy.export import export_model
    from deploy.packed import PackedConv2d
    args = opts.parse(["--model_def", "resnet20_1w1a", "--inpsize", "16"])
    model = build.build_network(args, 3, 1)
    path = str(tmp_path / "m.safetensors")
    export_model(model, path, dict(model_def="resnet20_1w1a", num_classes=3, in_channels=1, inpsize=16))
    args = opts.parse(["--model_def", "resnet20_1w1a", "--inpsize", "16", "--evaluate", "--pretrained_file", path,
                       "--packed", "auto"])
    said = []
    loaded = tools.load_packed_model(args, said.append, device="meta")  # any device but the CPU, without a GPU
    assert not any(isinstance(m, PackedConv2d) for m in loaded.modules())
    assert {p.device.type for p in loaded.parameters()} == {"meta"}
    assert any("every layer runs dense on meta" in line for line in said)
