"""launch.folders: the folder plan resolves a run's name and folders (flags, else the checkpoint resumed from,
else the defaults) into an object of its own, reads the checkpoint, writes nothing and leaves the parsed
flags as they were; prepare_folders clears a previous run's files and keeps a continued run's."""

import copy
import os

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
