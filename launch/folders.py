"""Where a run writes and how it stops: run folders that are never overwritten by accident, resuming
(``--resume PATH`` or ``--resume auto``), and signals that end a run with a checkpoint.

A run lives in two folders: ``--logdir/<name>`` (logs) and ``--store`` (checkpoints). A folder pair
*holds a run* when the store has ``last.pth`` or ``best.pth``, or the log folder has ``final.json`` or a
``metrics.csv`` with at least one epoch. A new run refuses such folders (exit 2, before anything is
written) unless ``--overwrite`` replaces them or ``--resume auto`` continues them; files left by a run
that never checkpointed (killed in its first epoch) are cleared, so logs never mix. A resumed run
continues in the folders its checkpoint records unless ``--name``/``--logdir``/``--store`` say otherwise.
"""

import csv
import os
import shutil
from dataclasses import dataclass

from utils.errors import CheckpointError, UsageError
from utils.checkpoint import load_checkpoint, remove_stale_temporaries

LOG_FILES = ("args.json", "metrics.csv", "final.json", "binarization_losses.json",
             "weight_binarization_losses.json")


@dataclass
class RunPlan:
    """What a run starts from and where it writes."""

    log_dir: str
    store: str
    state: dict = None          # the checkpoint resumed from, if any
    resume_path: str = None
    continues: bool = False     # the checkpoint is this folder pair's own run (else the folders start anew)

    @property
    def last_path(self):
        return os.path.join(self.store, "last.pth")

    @property
    def best_path(self):
        return os.path.join(self.store, "best.pth")


def _writable(path, flag):
    """UsageError unless ``path`` exists as a writable folder or can be created."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path!r} is not writable ({probe!r} is not a writable folder); choose another path")


def _epochs_logged(log_dir):
    try:
        with open(os.path.join(log_dir, "metrics.csv"), newline="") as f:
            return sum(1 for row in csv.DictReader(f) if row.get("epoch"))
    except (OSError, csv.Error):
        return 0


def holds_run(log_dir, store):
    """True when the folders hold a run (a checkpoint, a finished run or logged epochs)."""
    return (any(os.path.exists(os.path.join(store, f)) for f in ("last.pth", "best.pth"))
            or os.path.exists(os.path.join(log_dir, "final.json")) or _epochs_logged(log_dir) > 0)


def plan_run(args):
    """Resolve ``--resume`` and the run folders, fill in ``args.name``, ``args.logdir``, ``args.store``; read
    the checkpoint resumed from. Writes nothing; UsageError for folders that hold another run."""
    state = path = None
    if args.resume and args.resume != "auto":
        try:
            state = load_checkpoint(args.resume)
        except CheckpointError as exc:
            raise UsageError(str(exc)) from None
        path = args.resume
        saved = state.get("args") or {}
        for key in ("name", "logdir", "store"):  # continue in the run's own folders unless told otherwise
            if getattr(args, key) is None and saved.get(key):
                setattr(args, key, saved[key])
    args.name = args.name or f"{args.dataset}_{args.model_def}"
    args.logdir = args.logdir or "runs"
    args.store = args.store or os.path.join("savedmodels", args.name)
    plan = RunPlan(os.path.join(args.logdir, args.name), args.store)
    if args.resume == "auto" and os.path.isfile(plan.last_path):
        try:
            state = load_checkpoint(plan.last_path)
        except CheckpointError as exc:
            raise UsageError(f"{exc} (found by --resume auto)") from None
        path = plan.last_path
    if args.start_epoch and state is None:
        raise UsageError(f"--start-epoch {args.start_epoch} has no checkpoint behind it ({plan.last_path} does not "
                         f"exist); drop --start-epoch to start at epoch 0")
    plan.state, plan.resume_path = state, path
    if args.evaluate:
        return plan
    _writable(args.logdir, "--logdir")
    _writable(args.store, "--store")
    plan.continues = state is not None and _same_folders(state.get("args") or {}, plan)
    if not plan.continues and not args.overwrite and holds_run(plan.log_dir, plan.store):
        raise UsageError(f"the run folders {plan.log_dir!r} and {plan.store!r} already hold a run ({_describe(plan)}); "
                         f"pass --resume auto to continue it, --overwrite to replace it, or another --name")
    return plan


def _same_folders(saved, plan):
    """Whether the checkpoint was written by the run that owns ``plan``'s folders."""
    if not saved.get("store"):
        return False
    return (os.path.abspath(saved["store"]) == os.path.abspath(plan.store)
            and os.path.abspath(os.path.join(saved.get("logdir") or "runs", saved.get("name") or ""))
            == os.path.abspath(plan.log_dir))


def _describe(plan):
    epochs = _epochs_logged(plan.log_dir)
    done = "finished" if os.path.exists(os.path.join(plan.log_dir, "final.json")) else "not finished"
    return f"{epochs} epoch(s) logged, {done}"


def prepare_folders(plan):
    """Create the run folders; unless the run continues its own, remove a previous run's files (only those
    a run writes) first, so logs never mix; remove temporary checkpoints left by a kill. Rank 0 only."""
    if not plan.continues:
        for name in ("last.pth", "best.pth"):
            _remove(os.path.join(plan.store, name))
        for name in LOG_FILES:
            _remove(os.path.join(plan.log_dir, name))
        if os.path.isdir(plan.log_dir):
            for entry in os.listdir(plan.log_dir):
                if entry.startswith("events.out.tfevents."):
                    _remove(os.path.join(plan.log_dir, entry))
        shutil.rmtree(os.path.join(plan.log_dir, "filters"), ignore_errors=True)
    os.makedirs(plan.log_dir, exist_ok=True)
    os.makedirs(plan.store, exist_ok=True)
    return remove_stale_temporaries(plan.store)


def _remove(path):
    if os.path.isfile(path):
        os.remove(path)
