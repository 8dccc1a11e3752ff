"""launch.folders: the folder plan resolves a run's name and folders (flags, else the checkpoint resumed from,
else the defaults) into an object of its own, reads the checkpoint, writes nothing and leaves the parsed
flags as they were; prepare_folders clears a previous run's files and keeps a continued run's."""

import copy
import os
import socket
import subprocess
import sys

import pytest
import torch

import opts
from launch.folders import holds_run, plan_folders, prepare_folders
from utils.checkpoint import atomic_save
from utils.errors import UsageError


def checkpoint(path, **recorded):
    """A minimal checkpoint whose args record ``recorded``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(dict(model={"w": torch.zeros(1)}, epoch=1, args=dict(model_def="nin", **recorded)), str(path))
    return str(path)


def planned(argv):
    """``(plan, whether the namespace was left as parse returned it)``."""
    args = opts.parse(argv)
    before = copy.deepcopy(vars(args))
    plan = plan_folders(args)
    return plan, vars(args) == before


def test_a_fresh_run_gets_the_default_folders_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plan, unchanged = planned(["--model_def", "nin", "--dataset", "tuberlin"])
    assert unchanged and (plan.name, plan.logdir, plan.store) == ("tuberlin_nin", "runs",
                                                                  os.path.join("savedmodels", "tuberlin_nin"))
    assert plan.log_dir == os.path.join("runs", "tuberlin_nin") and plan.last_path.endswith("last.pth")
    assert (plan.state, plan.resume_path, plan.continues) == (None, None, False)
    assert os.listdir(tmp_path) == []
    assert plan.record({"epochs": 3, "name": None}) == dict(epochs=3, name="tuberlin_nin", logdir="runs",
                                                            store=plan.store)


def test_a_resume_continues_in_the_folders_its_checkpoint_records(tmp_path):
    store = tmp_path / "own" / "ckpt"
    last = checkpoint(store / "last.pth", name="mine", logdir=str(tmp_path / "own" / "logs"), store=str(store))
    plan, unchanged = planned(["--model_def", "nin", "--resume", last])
    assert unchanged and (plan.name, plan.logdir, plan.store) == ("mine", str(tmp_path / "own" / "logs"), str(store))
    assert plan.continues and plan.resume_path == last and plan.state["epoch"] == 1
    plan, unchanged = planned(["--model_def", "nin", "--resume", last, "--name", "fork",
                               "--logdir", str(tmp_path / "l"), "--store", str(tmp_path / "s")])
    assert unchanged and (plan.name, plan.store) == ("fork", str(tmp_path / "s")) and not plan.continues


def test_resume_auto_finds_the_last_checkpoint_and_a_new_run_refuses_held_folders(tmp_path):
    folders = ["--model_def", "nin", "--name", "r", "--logdir", str(tmp_path / "logs"), "--store",
               str(tmp_path / "ckpt")]
    plan, _ = planned(folders + ["--resume", "auto"])
    assert plan.state is None  # nothing to resume yet: a fresh start
    last = checkpoint(tmp_path / "ckpt" / "last.pth", name="r", logdir=str(tmp_path / "logs"),
                      store=str(tmp_path / "ckpt"))
    plan, unchanged = planned(folders + ["--resume", "auto"])
    assert unchanged and plan.resume_path == last and plan.continues
    assert holds_run(plan.log_dir, plan.store)
    with pytest.raises(UsageError, match="already hold a run"):
        planned(folders)
    plan, _ = planned(folders + ["--overwrite"])
    (tmp_path / "logs" / "r").mkdir(parents=True)
    (tmp_path / "logs" / "r" / "metrics.csv").write_text("epoch\n1\n")
    prepare_folders(plan)  # --overwrite: the previous run's files go, the folders stay
    assert not os.path.exists(last) and not (tmp_path / "logs" / "r" / "metrics.csv").exists()
    assert (tmp_path / "ckpt").is_dir() and (tmp_path / "logs" / "r").is_dir()


# -- a run's configuration is its identity: what a resume keeps, accepts and refuses


def command(argv, allow=None):
    """``opts.parse(argv)`` with ``--allowChange`` (a list) as ``allow``."""
    args = opts.parse(argv)
    args.allowChange = allow
    return args


def given_of(argv):
    """The options ``argv`` gives on the command line, as their dests."""
    flags = {s: a.dest for a in opts.get_parser()._actions for s in a.option_strings}
    return {flags[t.split("=")[0]] for t in argv if t.split("=")[0] in flags}


def stored_run(tmp_path, argv, step=0, epoch=2, world=1):
    """The folders ``<tmp>/logs/r`` and ``<tmp>/ckpt`` holding a checkpoint of the command ``argv`` (epoch
    ``epoch`` done, ``step`` steps into the next) written by ``world`` processes; returns the folder flags."""
    folders = ["--name", "r", "--logdir", str(tmp_path / "logs"), "--store", str(tmp_path / "ckpt")]
    recorded = vars(opts.parse(argv + folders))
    (tmp_path / "ckpt").mkdir(parents=True, exist_ok=True)
    atomic_save(dict(model={"w": torch.zeros(1)}, epoch=epoch, step=step, args=recorded,
                     facts=dict(world_size=world), rng_ranks=[{}] * world), str(tmp_path / "ckpt" / "last.pth"))
    return folders


NIN = ["--model_def", "nin", "--dataset", "tuberlin"]


def test_mid_epoch_a_new_batch_size_is_refused_even_when_allowed_and_nothing_is_written(tmp_path):
    folders = stored_run(tmp_path, NIN + ["--batch-size", "16"], step=11, epoch=2)
    files = sorted(os.path.join(p, f) for p, _, fs in os.walk(tmp_path) for f in fs)
    for allow in (None, ["batch-size"]):
        with pytest.raises(UsageError) as info:
            plan_folders(command(NIN + folders + ["--batch-size", "32", "--resume", "auto"], allow))
        message = str(info.value)
        assert "\n" not in message and "--batch-size 16 -> --batch-size 32 cannot change mid-epoch" in message
        assert "step 11 of epoch 3" in message
    assert sorted(os.path.join(p, f) for p, _, fs in os.walk(tmp_path) for f in fs) == files


def test_at_an_epoch_boundary_a_new_batch_size_needs_allow_change_once(tmp_path):
    folders = stored_run(tmp_path, NIN + ["--batch-size", "16"])
    argv = NIN + folders + ["--batch-size", "64", "--resume", "auto"]  # 64: the default, given explicitly
    with pytest.raises(UsageError, match="--batch-size 16 -> --batch-size 64 needs --allowChange batch-size"):
        plan_folders(command(argv), given_of(argv))
    plan = plan_folders(command(argv, ["batch-size"]), given_of(argv))
    assert plan.options.batch_size == 64 and any("--batch-size 16 -> --batch-size 64" in n for n in plan.notes)
    assert plan.continues
    # not given, the default is not a change: the run goes on with the batch size it records
    plan = plan_folders(command(NIN + folders + ["--resume", "auto"]), given_of(NIN + folders + ["--resume", "auto"]))
    assert plan.options.batch_size == 16 and any("--batch-size 16" in n for n in plan.notes)


def test_a_changed_learning_rate_is_refused_unless_allowed_and_the_lr_alias_counts(tmp_path):
    folders = stored_run(tmp_path, NIN + ["--maxlr", "0.001"])
    for flag in ("--maxlr", "--lr"):
        with pytest.raises(UsageError, match=r"--maxlr 0.001 -> --maxlr 0.01 needs --allowChange maxlr"):
            plan_folders(command(NIN + folders + [flag, "0.01", "--resume", "auto"]))
    plan = plan_folders(command(NIN + folders + ["--maxlr", "0.01", "--resume", "auto"], ["maxlr"]))
    assert plan.options.maxlr == 0.01


def test_a_resume_keeps_the_stored_options_the_command_does_not_give(tmp_path):
    model = ["--model_def", "resnet20_1w1a", "--dataset", "tuberlin"]
    folders = stored_run(tmp_path, model + ["--inpsize", "16", "--batch-size", "16", "--maxlr", "0.005"])
    args = command(model + folders + ["--resume", "auto"])
    before = copy.deepcopy(vars(args))
    plan = plan_folders(args)
    assert vars(args) == before  # the parsed flags stay as parsed; the plan holds what the run uses
    assert (plan.options.inpsize, plan.options.batch_size, plan.options.maxlr) == (16, 16, 0.005)
    assert any("--inpsize 16" in note for note in plan.notes)
    argv = model + folders + ["--inpsize", "32", "--resume", "auto"]  # 32: the model's default, given explicitly
    with pytest.raises(UsageError, match="--inpsize 16 -> --inpsize 32 makes another model"):
        plan_folders(command(argv), given_of(argv))


def test_options_that_cannot_change_a_run_may_change_at_any_resume(tmp_path):
    folders = stored_run(tmp_path, NIN + ["--epochs", "2"], step=3)
    free = ["--epochs", "9", "--workers", "0", "--printfreq", "7", "--verbose", "--no-tensorboard", "--device", "cpu",
            "--saveEvery", "5", "--testbatchsize", "3", "--resume", "auto"]
    plan = plan_folders(command(NIN + folders + free))
    assert (plan.options.epochs, plan.options.testbatchsize, plan.options.tensorboard) == (9, 3, False)
    assert plan.notes == []


def test_a_mid_epoch_checkpoint_of_one_process_refuses_two_processes_naming_the_world_size(tmp_path, monkeypatch):
    folders = stored_run(tmp_path, NIN, step=4, world=1)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    argv = NIN + folders + ["--resume", "auto"]
    with pytest.raises(UsageError, match="1 process -> 2 processes cannot change mid-epoch"):
        plan_folders(command(argv, ["world-size"]))
    stored_run(tmp_path, NIN, step=0, world=1)
    with pytest.raises(UsageError, match="1 process -> 2 processes needs --allowChange world-size"):
        plan_folders(command(argv))
    assert plan_folders(command(argv, ["world-size"])).continues
    with pytest.raises(UsageError, match="--allowChange model_def: is the model itself"):
        plan_folders(command(argv, ["model_def"]))


@pytest.mark.slow
def test_two_process_torchrun_refuses_a_one_process_mid_epoch_checkpoint_before_writing(tmp_path):
    folders = stored_run(tmp_path, NIN, step=4, world=1)
    before = (tmp_path / "ckpt" / "last.pth").read_bytes()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
           "--master_addr=127.0.0.1", os.path.join(root, "main.py"), *NIN, *folders, "--resume", "auto"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=240,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=root))
    assert proc.returncode != 0
    assert "1 process -> 2 processes cannot change mid-epoch" in proc.stderr
    assert "training data changed" not in proc.stderr and "IndexError" not in proc.stderr
    assert (tmp_path / "ckpt" / "last.pth").read_bytes() == before and not (tmp_path / "logs").exists()


def test_a_new_name_for_a_resumed_run_gets_folders_of_its_own(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    last = checkpoint(tmp_path / "savedmodels" / "A" / "last.pth", name="A", logdir="runs",
                      store=os.path.join("savedmodels", "A"))
    (tmp_path / "runs" / "A").mkdir(parents=True)
    (tmp_path / "runs" / "A" / "metrics.csv").write_text("epoch\n1\n")
    plan = plan_folders(command(["--model_def", "nin", "--resume", os.path.join("savedmodels", "A", "last.pth"),
                                 "--name", "B"]))
    assert (plan.name, plan.log_dir, plan.store) == ("B", os.path.join("runs", "B"), os.path.join("savedmodels", "B"))
    assert not plan.continues and plan.state["epoch"] == 1 and os.path.isfile(last)


def test_a_run_folder_copied_under_the_default_name_continues_with_resume_auto(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint(tmp_path / "savedmodels" / "tuberlin_nin" / "last.pth", name="old", logdir="elsewhere",
               store="gone")
    plan = plan_folders(command(NIN + ["--resume", "auto"]))
    assert plan.continues and plan.resume_path == os.path.join("savedmodels", "tuberlin_nin", "last.pth")
    # held folders with nothing to continue: the message does not ask for the --resume auto it was given
    os.remove(plan.last_path)
    checkpoint(tmp_path / "savedmodels" / "tuberlin_nin" / "best.pth", name="tuberlin_nin")
    with pytest.raises(UsageError) as info:
        plan_folders(command(NIN + ["--resume", "auto"]))
    assert "already hold a run" in str(info.value) and "pass --resume auto" not in str(info.value)


@pytest.mark.parametrize("flag", ["--pretrained_file", "--teacher", "--data_dir"])
def test_overwrite_refuses_to_replace_folders_holding_what_the_run_reads(flag, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    last = checkpoint(tmp_path / "savedmodels" / "X" / "last.pth", name="X", logdir="runs",
                      store=os.path.join("savedmodels", "X"))
    path = os.path.join("savedmodels", "X") if flag == "--data_dir" else os.path.join("savedmodels", "X", "last.pth")
    with pytest.raises(UsageError, match=f"{flag} '{path}' lies there"):
        plan_folders(command(NIN + ["--name", "X", "--overwrite", flag, path]))
    assert os.path.isfile(last)
    plan = plan_folders(command(NIN + ["--name", "Y", "--overwrite", flag, path]))  # other folders: fine
    assert plan.store == os.path.join("savedmodels", "Y")


def test_an_export_given_to_resume_is_named_as_an_export(tmp_path):
    from deploy.export import export_model
    from torch import nn
    path = str(tmp_path / "m.safetensors")
    export_model(nn.Sequential(nn.Conv2d(1, 2, 3)), path, dict(model_def="nin", num_classes=2, in_channels=1))
    with pytest.raises(UsageError) as info:
        plan_folders(command(NIN + ["--resume", path, "--logdir", str(tmp_path), "--store", str(tmp_path / "s")]))
    message = str(info.value)
    assert "is an export" in message and "--pretrained_file" in message and "--evaluate --packed" in message
