"""main.py under faults: whatever happens to a run, nothing already written is lost, and a resumed run equals an
uninterrupted one bit for bit (CPU).

Signals are sent by the process to itself from inside the training loss at a chosen step, so the stop
happens mid-epoch at a known point; kill -9 runs in a subprocess that SIGKILLs itself at a chosen step
or in the middle of writing a checkpoint.
"""

import csv
import errno
import glob
import json
import os
import signal
import subprocess
import sys
import textwrap
import zlib

import pytest
import torch

import main
from test_distributed import free_port
from tinydata import split_tree
from launch import build
from utils import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["airplane", "bear", "cup"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """18 training images (3 classes x 6) and 6 val images, in the original's pre-split layout."""
    return str(split_tree(tmp_path_factory.mktemp("faults"), CLASSES, train_per_class=6, val_per_class=2,
                          subdir="tuberlin"))


def argv_of(data, root, *extra, epochs=3, batch=4, workers=0):
    """nin at 32 px (9 convs, binarized 2..8): 4 full batches of 4 plus a tail of 2 per epoch, with dropout."""
    return ["--dataset", "tuberlin", "--data_dir", data, "--model_def", "nin", "--inpsize", "32", "--binaryWeight",
            "--epochs", str(epochs), "--batch-size", str(batch), "--testbatchsize", "4", "--workers", str(workers),
            "--logdir", str(root / "logs"), "--store", str(root / "ckpt"), "--name", "run", *extra]


def weights(root):
    return torch.load(root / "ckpt" / "last.pth", map_location="cpu", weights_only=True)["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    worst = max((x.double() - y.double()).abs().max().item() for x, y in zip(a.values(), b.values()))
    assert worst == 0.0 and all(torch.equal(a[k], b[k]) for k in a)


def epochs_logged(root):
    with open(root / "logs" / "run" / "metrics.csv") as f:
        return [int(r["epoch"]) for r in csv.DictReader(f)]


def events(root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(root / "logs" / "run"))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def stop_at(monkeypatch, step, sig=signal.SIGTERM):
    """Make the training loss send ``sig`` to this process during training step ``step`` (counted over the run)."""
    original = build.TrainingLoss.forward
    calls = [0]

    def forward(self, output, target, images):
        calls[0] += 1
        if calls[0] == step:
            os.kill(os.getpid(), sig)
        return original(self, output, target, images)

    monkeypatch.setattr(build.TrainingLoss, "forward", forward)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """The reference: 3 epochs straight, with 0 and with 2 workers."""
    roots = {}
    for workers in (0, 2):
        root = tmp_path_factory.mktemp(f"straight{workers}")
        assert main.main(argv_of(data, root, workers=workers)) == 0
        roots[workers] = root
    return roots


@pytest.mark.parametrize("sig,workers", [(signal.SIGTERM, 0), (signal.SIGTERM, 2), (signal.SIGUSR1, 0),
                                         (signal.SIGINT, 2)])
def test_signal_mid_epoch_then_resume_auto_equals_the_uninterrupted_run(sig, workers, data, uninterrupted,
                                                                         tmp_path, monkeypatch, capsys):
    argv = argv_of(data, tmp_path, workers=workers)
    stop_at(monkeypatch, 7, sig)  # epoch 2, step 2 of 5
    assert main.main(argv) == 128 + sig
    out = capsys.readouterr().out
    assert f"stopped by {signal.Signals(sig).name} at epoch 2, step 2 of 5" in out and "--resume auto" in out
    state = torch.load(tmp_path / "ckpt" / "last.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)
    monkeypatch.undo()
    assert main.main(argv + ["--resume", "auto"]) == 0
    assert "at epoch 2, step 2 of 5" in capsys.readouterr().out.split("resumed from", 1)[1]  # counted alike
    assert_same_weights(weights(tmp_path), weights(uninterrupted[workers]))
    assert epochs_logged(tmp_path) == [1, 2, 3]
    straight, resumed = events(uninterrupted[workers]), events(tmp_path)
    assert [s for s, _ in resumed["train/loss"]] == [1, 2, 3]
    assert resumed["train/loss"] == straight["train/loss"] and resumed["val/top1"] == straight["val/top1"]
    finals = [json.loads((r / "logs" / "run" / "final.json").read_text()) for r in (tmp_path, uninterrupted[workers])]
    assert finals[0] == finals[1]
    assert not glob.glob(str(tmp_path / "ckpt" / ".tmp-*"))


RUNNER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import main
    from launch import build
    from utils import checkpoint
    mode, at = sys.argv[1], int(sys.argv[2])
    if mode == "step":      # die (kill -9) during training step `at`
        original, calls = build.TrainingLoss.forward, [0]
        def forward(self, *a):
            calls[0] += 1
            if calls[0] == at:
                os.kill(os.getpid(), signal.SIGKILL)
            return original(self, *a)
        build.TrainingLoss.forward = forward
    else:                   # die (kill -9) halfway through writing checkpoint file number `at`
        real, saves = checkpoint.torch.save, [0]
        def save(obj, f):
            saves[0] += 1
            if saves[0] == at:
                f.write(b"PK half a checkpoint")
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            real(obj, f)
        checkpoint.torch.save = save
    sys.exit(main.main(sys.argv[3:]))
""")


def killed(argv, mode, at):
    # The same thread count as this process: float sums may differ between thread counts.
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run([sys.executable, "-c", RUNNER.format(root=ROOT), mode, str(at), *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.mark.slow
def test_kill_9_after_a_save_every_checkpoint_then_resume(data, uninterrupted, tmp_path, capsys):
    argv = argv_of(data, tmp_path, "--saveEvery", "2")
    killed(argv, "step", 9)  # epoch 2, step 4: the last save was at epoch 2, step 2
    state = torch.load(tmp_path / "ckpt" / "last.pth", weights_only=True)
    assert (state["epoch"], state["step"]) == (1, 2)
    assert epochs_logged(tmp_path) == [1]
    assert main.main(argv + ["--resume", "auto"]) == 0
    assert_same_weights(weights(tmp_path), weights(uninterrupted[0]))
    assert epochs_logged(tmp_path) == [1, 2, 3]


@pytest.mark.slow
def test_kill_9_while_writing_a_checkpoint_leaves_nothing_behind(data, uninterrupted, tmp_path):
    argv = argv_of(data, tmp_path)
    killed(argv, "save", 4)  # epoch 1 writes last and best; epoch 2 writes last (3), then best (4) is cut
    leftovers = glob.glob(str(tmp_path / "ckpt" / ".tmp-*"))
    assert len(leftovers) == 1 and os.path.getsize(leftovers[0]) < 100
    assert torch.load(tmp_path / "ckpt" / "last.pth", weights_only=True)["epoch"] == 2
    assert main.main(argv + ["--resume", "auto"]) == 0
    assert not glob.glob(str(tmp_path / "ckpt" / ".tmp-*"))
    assert epochs_logged(tmp_path) == [1, 2, 3]     # epoch 2 was logged before the kill: not twice
    assert_same_weights(weights(tmp_path), weights(uninterrupted[0]))


def test_a_crash_between_writing_and_renaming_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch, capsys):
    argv = argv_of(data, tmp_path, epochs=1)
    assert main.main(argv) == 0
    last = tmp_path / "ckpt" / "last.pth"
    before = last.read_bytes()

    def replace(src, dst):
        raise OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    assert main.main(argv + ["--epochs", "2", "--resume", "auto"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not write" in err and "previous checkpoint is kept" in err
    assert last.read_bytes() == before and not glob.glob(str(tmp_path / "ckpt" / ".tmp-*"))


def test_no_space_left_while_writing_a_checkpoint(data, tmp_path, monkeypatch, capsys):
    argv = argv_of(data, tmp_path, epochs=1)
    assert main.main(argv) == 0
    last = tmp_path / "ckpt" / "last.pth"
    before = last.read_bytes()

    def save(obj, f):
        f.write(b"PK partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(checkpoint.torch, "save", save)
    assert main.main(argv + ["--epochs", "2", "--resume", "auto"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err
    assert last.read_bytes() == before and not glob.glob(str(tmp_path / "ckpt" / ".tmp-*"))


def corrupt_png(path):
    """Rewrite ``path`` so that its PNG chunks still pass PIL's verify() (valid CRCs) but the pixel data
    does not decompress: the file passes the check at start and fails when it is read mid-epoch."""
    raw = bytearray(open(path, "rb").read())
    at = raw.index(b"IDAT")
    length = int.from_bytes(raw[at - 4:at], "big")
    raw[at + 4:at + 4 + length] = bytes((b * 7 + 13) % 256 for b in raw[at + 4:at + 4 + length])
    raw[at + 4 + length:at + 8 + length] = zlib.crc32(bytes(raw[at:at + 4 + length])).to_bytes(4, "big")
    open(path, "wb").write(bytes(raw))


@pytest.mark.parametrize("workers", [0, 2])
def test_a_corrupt_image_met_mid_epoch_names_the_file_and_keeps_the_checkpoint(workers, tmp_path, capsys):
    data = str(split_tree(tmp_path / "data", CLASSES, train_per_class=6, val_per_class=2, subdir="tuberlin"))
    argv = argv_of(data, tmp_path, epochs=1, workers=workers)
    assert main.main(argv) == 0
    last = tmp_path / "ckpt" / "last.pth"
    before = last.read_bytes()
    bad = os.path.join(data, "tuberlin", "train", "bear", "3.png")
    corrupt_png(bad)
    capsys.readouterr()
    assert main.main(argv + ["--epochs", "2", "--resume", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and bad in err and "--skipBadImages" in err, err
    assert last.read_bytes() == before


def test_a_tail_batch_of_one_is_dropped_not_crashed(data, tmp_path, capsys):
    assert main.main(argv_of(data, tmp_path, epochs=2, batch=17)) == 0  # 18 = 17 + 1
    out = capsys.readouterr().out
    assert out.count("it is dropped (BatchNorm needs 2)") == 1
    assert "final val top1" in out


@pytest.mark.slow
def test_a_tail_batch_of_one_under_two_process_torchrun(data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "--master_addr=127.0.0.1", os.path.join(ROOT, "main.py"), *argv_of(data, tmp_path, epochs=1, batch=2)]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]  # 9 images per process: 4 batches of 2 and a 1 dropped
    assert "it is dropped" in proc.stdout and "identical on all 2 ranks: yes" in proc.stdout


def test_rerunning_a_command_refuses_to_overwrite_and_overwrite_replaces(data, tmp_path, capsys):
    argv = argv_of(data, tmp_path, epochs=1)
    assert main.main(argv) == 0
    files = {p: open(p, "rb").read() for p in glob.glob(str(tmp_path / "**" / "*"), recursive=True)
             if os.path.isfile(p)}
    capsys.readouterr()
    assert main.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "already hold a run" in err
    assert "--resume auto" in err and "--overwrite" in err
    assert {p: open(p, "rb").read() for p in files} == files
    assert main.main(argv + ["--overwrite", "--manualSeed", "5"]) == 0
    assert epochs_logged(tmp_path) == [1]
    assert len(glob.glob(str(tmp_path / "logs" / "run" / "events.out.tfevents.*"))) == 1
    assert json.loads((tmp_path / "logs" / "run" / "args.json").read_text())["manualSeed"] == 5


def test_resume_without_name_continues_its_own_run_and_touches_no_other(data, tmp_path, monkeypatch, capsys):
    own = argv_of(data, tmp_path / "mine", epochs=1)
    assert main.main(own) == 0
    other = argv_of(data, tmp_path / "other", epochs=1)
    assert main.main(other) == 0
    untouched = {p: open(p, "rb").read() for p in glob.glob(str(tmp_path / "other" / "**" / "*"), recursive=True)
                 if os.path.isfile(p)}
    monkeypatch.chdir(tmp_path)  # where the default folders (runs/, savedmodels/) would go
    last = tmp_path / "mine" / "ckpt" / "last.pth"
    assert main.main(["--resume", str(last), "--epochs", "2", "--dataset", "tuberlin", "--data_dir", data,
                      "--model_def", "nin", "--inpsize", "32", "--binaryWeight", "--batch-size", "4",
                      "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert f"run folder {tmp_path / 'mine' / 'logs' / 'run'}" in out and f"resumed from {last} after epoch 1" in out
    assert torch.load(last, weights_only=True)["epoch"] == 2
    assert epochs_logged(tmp_path / "mine") == [1, 2]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "savedmodels").exists()
    assert {p: open(p, "rb").read() for p in untouched} == untouched
