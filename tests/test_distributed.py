"""torchrun with two CPU processes (gloo): one set of logs, identical replicas, exact validation counts."""

import csv
import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from tinydata import split_tree
from conftest import PYTHON_START, subprocess_timeout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args, cwd):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1",
           os.path.join(ROOT, "main.py"), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    # Two processes on one core each: start, gloo rendezvous, one or two tiny epochs.
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=subprocess_timeout(2 * PYTHON_START + 6))


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_process_torchrun_training_and_resume(tmp_path):
    # 5 val images: an odd count, so a padded sampler would count one twice.
    data = split_tree(tmp_path / "data", ["cat", "dog", "hot air balloon"], train_per_class=4,
                      val_per_class=2, subdir="tuberlin")
    os.remove(os.path.join(data, "tuberlin", "val", "dog", "1.png"))
    common = ["--dataset", "tuberlin", "--data_dir", str(data), "--model_def", "nin", "--inpsize", "32",
              "--binaryWeight", "--batch-size", "3", "--testbatchsize", "2", "--workers", "0",
              "--logdir", str(tmp_path / "logs"), "--store", str(tmp_path / "ckpt"), "--name", "ddp"]
    first = torchrun(common + ["--epochs", "1"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "2 processes" in first.stdout
    assert "identical on all 2 ranks: yes" in first.stdout
    assert "5 val images" in first.stdout
    assert first.stdout.count("best val top1") == 1                      # rank 0 alone prints and logs
    events = [f for f in os.listdir(tmp_path / "logs" / "ddp") if f.startswith("events")]
    assert len(events) == 1
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["best.pth", "last.pth"]
    facts = json.loads((tmp_path / "logs" / "ddp" / "args.json").read_text())["facts"]
    assert facts["world_size"] == 2 and facts == torch.load(tmp_path / "ckpt" / "last.pth", weights_only=True)["facts"]

    resumed = torchrun(common + ["--epochs", "2", "--resume", str(tmp_path / "ckpt" / "last.pth")], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "identical on all 2 ranks: yes" in resumed.stdout
    with open(tmp_path / "logs" / "ddp" / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2]
    state = torch.load(tmp_path / "ckpt" / "last.pth", weights_only=True)
    assert state["epoch"] == 2 and not any(k.startswith("module.") for k in state["model"])
