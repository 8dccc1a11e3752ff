"""Where a run writes: run folders that are never overwritten by accident, and what it resumes from
(``--resume PATH`` or ``--resume auto``), planned before anything is written.

A run lives in two folders: ``--logdir/<name>`` (logs) and ``--store`` (checkpoints). A folder pair
*holds a run* when the store has ``last.pth`` or ``best.pth``, or the log folder has ``final.json`` or a
``metrics.csv`` with at least one epoch. A new run refuses such folders (exit 2, before anything is
written) unless ``--overwrite`` replaces them or ``--resume auto`` continues them; files left by a run
that never checkpointed (killed in its first epoch) are cleared, so logs never mix. A resumed run
continues in the folders its checkpoint records unless ``--name``/``--logdir``/``--store`` say otherwise.

The flags are only read: the resolved name and folders live in the :class:`FolderPlan`, and
:meth:`FolderPlan.record` puts them into the options a run records (args.json, checkpoints).
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
class FolderPlan:
    """Where a run writes (its resolved name and folders) and the checkpoint it starts from."""

    name: str
    logdir: str
    store: str
    state: dict = None          # the checkpoint resumed from, if any
    resume_path: str = None
    continues: bool = False     # the checkpoint is this folder pair's own run (else the folders start anew)

    @property
    def log_dir(self):
        return os.path.join(self.logdir, self.name)

    @property
    def last_path(self):
        return os.path.join(self.store, "last.pth")

    @property
    def best_path(self):
        return os.path.join(self.store, "best.pth")

    def record(self, options):
        """``options`` (a dict of flags) with the resolved ``name``, ``logdir`` and ``store``: what a run
        records, so that its checkpoint names the folders it owns."""
        return dict(options, name=self.name, logdir=self.logdir, store=self.store)


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


def plan_folders(args):
    """Resolve ``--resume`` and the run folders (name, logdir and store: the flags, else those the checkpoint
    resumed from records, else the defaults) and read the checkpoint resumed from. Writes nothing and
    changes nothing in ``args``; UsageError for folders that hold another run."""
    state = path = None
    folders = dict(name=args.name, logdir=args.logdir, store=args.store)
    if args.resume and args.resume != "auto":
        try:
            state = load_checkpoint(args.resume)
        except CheckpointError as exc:
            raise UsageError(str(exc)) from None
        path = args.resume
        saved = state.get("args") or {}
        for key in folders:  # continue in the run's own folders unless told otherwise
            if folders[key] is None and saved.get(key):
                folders[key] = saved[key]
    name = folders["name"] or f"{args.dataset}_{args.model_def}"
    plan = FolderPlan(name, folders["logdir"] or "runs", folders["store"] or os.path.join("savedmodels", name))
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
    _writable(plan.logdir, "--logdir")
    _writable(plan.store, "--store")
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
