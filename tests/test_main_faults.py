"""main.py under faults: whatever happens to a run, nothing already written is lost, and a resumed run equals an
uninterrupted one bit for bit (CPU).

Signals are sent by the process to itself from inside the training loss at a chosen step, so the stop
happens mid-epoch at a known point. Crashes are injected, not raced: a subprocess dies (kill -9 or
``os._exit``) at a chosen training step, halfway through the n-th checkpoint write or right after it, for
every n; a full disk fails the n-th write of a checkpoint or a log, for every n.
"""

import csv
import errno
import glob
import io
import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import zlib

import numpy as np
import pytest
import torch

import main
from conftest import PYTHON_START, subprocess_timeout
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
@pytest.mark.slow
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
    import csv, io, os, signal, sys
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
    elif mode == "torn":    # die halfway through writing checkpoint file number `at`
        real, saves = checkpoint.torch.save, [0]
        def save(obj, f):
            saves[0] += 1
            if saves[0] == at:
                whole = io.BytesIO()
                real(obj, whole)
                f.write(whole.getvalue()[:len(whole.getvalue()) // 2])
                f.flush()
                os._exit(137)
            real(obj, f)
        checkpoint.torch.save = save
    elif mode == "renamed":  # die right after checkpoint file number `at` is moved into place
        real, moves = os.replace, [0]
        def replace(src, dst):
            real(src, dst)
            if str(dst).endswith(".pth"):
                moves[0] += 1
                if moves[0] == at:
                    os._exit(137)
        os.replace = replace
    else:                   # "rewrite": die when a resumed run starts rewriting metrics.csv
        def writerows(self, rows):
            os._exit(137)
        csv.DictWriter.writerows = writerows
    sys.exit(main.main(sys.argv[3:]))
""")
# One epoch's work in the runs below on the reference machine (see conftest.subprocess_timeout).
EPOCH_SECONDS = 1.0


def crashed(argv, mode, at, epochs=3):
    """Run main.py with ``argv`` in a subprocess that crashes as ``mode`` says at ``at``; its exit status."""
    # The same thread count as this process: float sums may differ between thread counts.
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run([sys.executable, "-c", RUNNER.format(root=ROOT), mode, str(at), *argv], cwd=ROOT,
                          capture_output=True, text=True, env=env,
                          timeout=subprocess_timeout(PYTHON_START + epochs * EPOCH_SECONDS))
    assert proc.returncode in (0, 137, -signal.SIGKILL), proc.stderr[-2000:]
    return proc.returncode


def killed(argv, mode, at):
    assert crashed(argv, mode, at) == -signal.SIGKILL


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


# A learning rate at which epochs 1 and 2 improve val top-1 and epoch 3 does not: the run writes best.pth
# twice, and its best epoch is not its last.
FAULTY = ("--maxlr", "0.005")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The uninterrupted run the crash tests compare with."""
    root = tmp_path_factory.mktemp("reference")
    assert main.main(argv_of(data, root, *FAULTY)) == 0
    with open(root / "logs" / "run" / "metrics.csv") as f:
        top1 = [float(r["val_top1"]) for r in csv.DictReader(f)]
    assert top1[0] < top1[1] and top1[2] < top1[1], f"the reference run no longer has a best epoch 2: {top1}"
    return root


def outcome(root):
    """What a run leaves, less the seconds it took: metrics rows, TensorBoard scalars, per-filter statistics,
    final.json, and the epoch and accuracy best.pth records."""
    run = root / "logs" / "run"
    with open(run / "metrics.csv") as f:
        rows = [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(f)]
    filters = {}
    for path in sorted(glob.glob(str(run / "filters" / "*.npz"))):
        with np.load(path) as arrays:
            filters[os.path.basename(path)] = {k: arrays[k].tobytes() for k in arrays.files}
    best = checkpoint_of(root, "best.pth") or {}
    final = json.loads((run / "final.json").read_text()) if (run / "final.json").exists() else None
    return dict(rows=rows, events=events(root), filters=filters, final=final,
                best=(best.get("epoch"), best.get("best_acc1")))


def checkpoint_of(root, name):
    path = root / "ckpt" / name
    return torch.load(path, map_location="cpu", weights_only=True) if path.exists() else None


def same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def differences(root, reference):
    """What ``root`` ended with that ``reference`` did not: [] when it has the same logs (each epoch once),
    bit-equal last.pth and best.pth, and no temporary file left."""
    got, want = outcome(root), outcome(reference)
    differ = [key for key in want if got[key] != want[key]]
    for name in ("last.pth", "best.pth"):
        mine, theirs = checkpoint_of(root, name), checkpoint_of(reference, name)
        if mine is None or not same_weights(mine["model"], theirs["model"]):
            differ.append(f"{name} weights")
    if glob.glob(str(root / "**" / ".tmp-*"), recursive=True):
        differ.append("temporary files")
    return differ


@pytest.mark.slow
@pytest.mark.parametrize("when", ["torn", "renamed"])
def test_a_crash_at_any_checkpoint_write_then_resume_auto_ends_as_the_uninterrupted_run(when, data, reference,
                                                                                        tmp_path):
    failures = {}
    for n in itertools.count(1):  # the n-th checkpoint write of the run, until the run makes no n-th write
        root = tmp_path / str(n)
        argv = argv_of(data, root, *FAULTY)
        if crashed(argv, when, n) == 0:
            break
        left = glob.glob(str(root / "ckpt" / ".tmp-*"))
        assert len(left) == (when == "torn"), f"write {n}"
        assert main.main(argv + ["--resume", "auto"]) == 0, f"write {n}"
        failures[n] = differences(root, reference)
    assert {n: what for n, what in failures.items() if what} == {}
    assert n > 5  # at least best and last after epochs 1 and 2, and last after epoch 3
    finished = {p: open(p, "rb").read() for p in glob.glob(str(root / "**" / "*"), recursive=True)
                if os.path.isfile(p)}
    assert main.main(argv + ["--resume", "auto"]) == 0  # a finished run: nothing to do, nothing written
    assert {p: open(p, "rb").read() for p in finished} == finished


def no_space(monkeypatch, owner, name, at, partial=b"", counted=lambda *args: True):
    """Make the ``at``-th call of ``owner.name`` that ``counted`` accepts write ``partial`` (to its file argument,
    if any) and fail with ENOSPC."""
    real, calls = getattr(owner, name), [0]

    def failing(*args, **kwargs):
        calls[0] += counted(*args)
        if calls[0] == at and counted(*args):
            for f in args:
                if isinstance(f, io.IOBase):
                    f.write(partial)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)
    monkeypatch.setattr(owner, name, failing)


@pytest.mark.slow
def test_no_space_at_any_checkpoint_write_then_resume_auto_ends_as_the_uninterrupted_run(data, reference, tmp_path,
                                                                                         monkeypatch, capsys):
    failures = {}
    for n in itertools.count(1):
        root = tmp_path / str(n)
        argv = argv_of(data, root, *FAULTY)
        no_space(monkeypatch, checkpoint.torch, "save", n, b"PK partial")
        status = main.main(argv)
        monkeypatch.undo()
        if status == 0:
            break
        err = capsys.readouterr().err.strip()
        assert status == 1 and len(err.splitlines()) == 1 and "No space left on device" in err, f"write {n}: {err}"
        assert not glob.glob(str(root / "ckpt" / ".tmp-*"))
        assert main.main(argv + ["--resume", "auto"]) == 0, f"write {n}"
        failures[n] = differences(root, reference)
    assert {n: what for n, what in failures.items() if what} == {}
    assert n > 5


EPOCH_2 = dict(filters=(np, "savez", 2, lambda *args: True),  # the second epoch's per-filter statistics
               row=(csv.DictWriter, "writerow", 1, lambda writer, row: row.get("epoch") == 2))


@pytest.mark.parametrize("what", list(EPOCH_2))
@pytest.mark.slow
def test_no_space_while_logging_an_epoch_is_one_line_and_resume_auto_logs_it_once(what, data, reference, tmp_path,
                                                                                  monkeypatch, capsys):
    argv = argv_of(data, tmp_path, *FAULTY)
    owner, name, at, counted = EPOCH_2[what]
    no_space(monkeypatch, owner, name, at, counted=counted)
    assert main.main(argv) == 1
    monkeypatch.undo()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "could not write" in err and "No space left on device" in err, err
    assert "--resume auto" in err
    assert torch.load(tmp_path / "ckpt" / "last.pth", weights_only=True)["epoch"] == 1
    assert main.main(argv + ["--resume", "auto"]) == 0
    assert differences(tmp_path, reference) == []


@pytest.mark.slow
def test_a_crash_while_a_resumed_run_rewrites_its_metrics_loses_no_row(data, reference, tmp_path, monkeypatch):
    argv = argv_of(data, tmp_path, *FAULTY)
    stop_at(monkeypatch, 7)  # SIGTERM at epoch 2, step 2
    assert main.main(argv) == 128 + signal.SIGTERM
    monkeypatch.undo()
    assert crashed(argv + ["--resume", "auto"], "rewrite", 0) == 137
    assert epochs_logged(tmp_path) == [1]
    assert main.main(argv + ["--resume", "auto"]) == 0
    assert differences(tmp_path, reference) == []


def test_a_crash_between_writing_and_renaming_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch, capsys):
    argv = argv_of(data, tmp_path, epochs=1)
    assert main.main(argv) == 0
    last = tmp_path / "ckpt" / "last.pth"
    before = last.read_bytes()
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith(".pth"):
            raise OSError(errno.EIO, "Input/output error")
        real(src, dst)
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
@pytest.mark.slow
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
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True,
                          timeout=subprocess_timeout(2 * PYTHON_START + 2 * EPOCH_SECONDS),
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
