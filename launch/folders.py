"""Where a run writes, what it starts from and with which configuration, all planned before anything is
written: run folders that are never overwritten by accident, the checkpoint a run resumes from
(``--resume PATH`` or ``--resume auto``), and the options a resumed or evaluated run keeps from it.

A run lives in two folders: ``--logdir/<name>`` (logs) and ``--store`` (checkpoints). A folder pair
*holds a run* when the store has ``last.pth`` or ``best.pth``, or the log folder has ``final.json`` or a
``metrics.csv`` with at least one epoch. A new run refuses such folders (exit 2, before anything is
written) unless ``--overwrite`` replaces them or ``--resume auto`` continues them. A run writes its
starting point as ``last.pth`` before its first log row, so even a run killed in its first epoch holds a
checkpoint that ``--resume auto`` continues; stray files without one are cleared, so logs never mix. A resumed run
continues in the folders its checkpoint records unless ``--name``/``--logdir``/``--store`` say otherwise;
a new ``--name`` alone gets folders of its own (the store beside the old one). ``--overwrite`` refuses to
replace folders that hold a file the run reads (``--pretrained_file``, ``--teacher``, ``--resume``,
``--data_dir``).

A run's configuration is its identity. A resumed run takes the options its checkpoint records (args.json
records the same) for every option the command does not give, and compares those the command gives:

* :data:`FREE` options (how long, where and how verbosely a run goes on) may change at any resume;
* :data:`MODEL` options make another model: they never change (a new run starts from the weights with
  ``--pretrained_file``);
* every other option (learning rate, batch size, the number of processes, ...) changes only when
  ``--allowChange OPTION`` accepts it; :data:`ORDER` options, which decide the samples of each step,
  only at an epoch boundary (a checkpoint taken mid-epoch continues with the steps it began).

``--evaluate`` and ``--export`` take the model from the checkpoint or the export's header; a model
option given that contradicts it is an error naming both values.

The flags are only read: the resolved folders, the checkpoint and the options the run uses live in the
:class:`FolderPlan` (``plan.options``, a namespace like the flags'), and :meth:`FolderPlan.record` puts
the folders into the options a run records (args.json, checkpoints).
"""

import argparse
import csv
import functools
import os
import shutil
from dataclasses import dataclass, field

import binarize
import opts
from launch import build
from utils import dist
from utils.errors import CheckpointError, UsageError
from utils.checkpoint import load_checkpoint, remove_stale_temporaries

LOG_FILES = ("args.json", "metrics.csv", "final.json", "binarization_losses.json",
             "weight_binarization_losses.json")

# Options that cannot change what a run computes: how long it goes on, where it runs, what it prints
# and logs, which command this is. A resume may change them; they are never taken from a checkpoint.
FREE = frozenset((
    "epochs", "workers", "printfreq", "verbose", "tensorboard", "logdir", "name", "store", "device", "cuda",
    "ngpus", "saveEvery", "testbatchsize", "resume", "overwrite", "start_epoch", "evaluate", "testOnly", "summary",
    "export", "packed", "cacheDir", "cachemode", "pretrained", "pretrained_file", "channelsLast",
    "calculateBinarizationLosses", "calculateWeightBinarizationLosses", "allowChange"))
# What the model is: another value is another model, never the same run.
MODEL = tuple(build.ARCH_KEYS) + ("inpsize", "nClasses")
# What decides the samples each step of an epoch sees (world_size: the number of torchrun processes).
ORDER = ("batch_size", "world_size", "manualSeed", "dataset", "data_dir", "fold", "sketchyVariant",
         "sketchyDropInvalid", "skipBadImages")
# What an evaluation reads besides the model: the data and how it is shown to the model.
DATA = ("dataset", "data_dir", "fold", "tenCrop", "dataNorm", "sketchyVariant", "sketchyDropInvalid", "skipBadImages")
# Aliases and derived flags: given on the command line, they set the option they stand for.
ALIASES = {"lr": "maxlr", "cuda": "device", "testOnly": "evaluate", "bnnModel": "binarizer", "binStart": "binLayers",
           "binEnd": "binLayers"}


@dataclass
class FolderPlan:
    """Where a run writes (its resolved name and folders), the checkpoint it starts from, and the options
    it runs with: ``options`` is the command's namespace with the stored configuration of the checkpoint
    (or export) in place of the options the command did not give; ``notes`` say what was taken or
    accepted."""

    name: str
    logdir: str
    store: str
    state: dict = None          # the checkpoint resumed from, if any
    resume_path: str = None
    continues: bool = False     # the checkpoint is this folder pair's own run (else the folders start anew)
    options: argparse.Namespace = None
    notes: list = field(default_factory=list)

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


# -- the options of a command, and those a checkpoint or export stores


@functools.lru_cache(maxsize=1)
def _parser():
    return opts.get_parser()


def _flag(key):
    """The flag of option ``key`` as users type it (``batch_size`` -> ``--batch-size``)."""
    if key == "world_size":
        return "--world-size"
    for action in _parser()._actions:
        if action.dest == key and action.option_strings:
            return next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
    return f"--{key}"


def _show(key, value):
    """``key = value`` as flags (``--batch-size 16``, ``--no-binaryWeight``)."""
    if key == "world_size":
        return f"{value} process{'es' if value != 1 else ''}"
    if key in ("binLayers", "binInputs") and value:
        return f"{_flag(key)} {binarize.format_indices(value)}"
    argv = opts.to_argv({key: value}, skip=())
    if argv:
        return " ".join(argv)
    return f"no {_flag(key)}" if value in (False, None) else f"{_flag(key)} {value}"


def explicit_options(args, given=None):
    """The options the command gave: ``given`` (the dests on the command line, ``opts.given_options(argv)``)
    and every option whose value differs from what the same command without it resolves to, so that
    aliases count as the option they set and a preset such as ``--binarizer sdbnn`` as the options it sets."""
    explicit = set(given or ())
    for key in ("model_def", "dataset"):
        if getattr(args, key) != _parser().get_default(key):
            explicit.add(key)
    defaults = vars(opts.resolve(_parser().parse_args(["--model_def", args.model_def, "--dataset", args.dataset]),
                                 notes=[]))
    explicit |= {key for key, value in vars(args).items() if key in defaults and value != defaults[key]}
    return explicit | {ALIASES[key] for key in explicit if key in ALIASES}


def _stored_options(state, path):
    """The options checkpoint ``state`` records, completed where an older checkpoint lacks the resolved form."""
    raw = state.get("args") or {}
    if not raw:
        return {}
    full = vars(build.read_saved_args(state, path))
    keys = set(raw) | {"binLayers", "binActivation", "backward", "inpsize"}
    stored = {key: full[key] for key in keys if key in full}
    if "backward" in raw:  # None where nothing is binarized: read_saved_args's "ste" completes older records only
        stored["backward"] = raw["backward"]
    if state.get("num_classes"):
        stored["nClasses"] = int(state["num_classes"])
    return stored


def _export_options(config):
    """The options an export's header records (the model it holds; the dataset where recorded)."""
    import models
    stored = {key: config[key] for key in ("model_def", "inpsize", "binaryWeight", "binLayers", "binarizer",
                                           "binActivation", "dataset") if config.get(key) is not None}
    if stored.get("model_def") in models.list_models() and config.get("bin_inputs") is not None:
        own = list(models.model_info(stored["model_def"]).binary_inputs)
        stored["binInputs"] = None if list(config["bin_inputs"]) == own else list(config["bin_inputs"])
    if config.get("num_classes"):
        stored["nClasses"] = int(config["num_classes"])
    return stored


def compare_options(stored, args, given):
    """``(taken, changed)`` between the ``stored`` options and the command's ``args``: ``taken`` the options
    the command did not give whose stored value differs, ``changed`` those it gave with another value;
    each ``{key: (stored value, command value)}``. FREE options and aliases are not compared."""
    current = vars(args)
    taken, changed = {}, {}
    for key, value in stored.items():
        if key in FREE or key in ALIASES or key not in current or value == current[key]:
            continue
        if key == "nClasses" and current[key] is None:
            continue  # taken from the data, which must then have the checkpoint's classes
        (changed if key in given else taken)[key] = (value, current[key])
    return taken, changed


def _with_options(args, taken):
    """A copy of ``args`` with the ``taken`` options set to their stored values."""
    values = dict(vars(args), **{key: stored for key, (stored, _) in taken.items()})
    if "binLayers" in taken and values["binLayers"]:
        values["binStart"], values["binEnd"] = values["binLayers"][0], values["binLayers"][-1]
    return argparse.Namespace(**values)


def _taken_note(taken, source):
    if not taken:
        return []
    shown = ", ".join(_show(key, stored) for key, (stored, _) in sorted(taken.items()))
    return [f"note: as {source} records (not given on the command line): {shown}"]


def check_model_options(changed, source):
    """UsageError naming each MODEL option given (``changed``) that contradicts what ``source`` holds."""
    wrong = [f"{_show(key, new)} was given but {source} holds {_show(key, old)}"
             for key, (old, new) in sorted(changed.items()) if key in MODEL]
    if wrong:
        raise UsageError(f"{'; '.join(wrong)}: drop {'that flag' if len(wrong) == 1 else 'those flags'} to use the "
                         f"model as stored")


# -- a resume: what may change


def _allowed(args):
    """The options ``--allowChange`` accepts, normalised (``batch-size``, ``batch_size`` -> ``batchsize``);
    UsageError for a name a resume does not compare."""
    norm = lambda key: key.lstrip("-").replace("-", "").replace("_", "").lower()  # noqa: E731
    names = [part for entry in (getattr(args, "allowChange", None) or []) for part in str(entry).split(",") if part]
    comparable = {norm(action.dest): action.dest for action in _parser()._actions
                  if action.dest not in FREE and action.dest not in ALIASES and action.option_strings}
    comparable[norm("world_size")] = "world_size"
    allowed = set()
    for name in names:
        key = comparable.get(norm(name))
        if key is None or key in MODEL:
            why = "is the model itself" if key in MODEL else "is not an option a resume compares"
            raise UsageError(f"--allowChange {name}: {why}; name options such as batch-size, world-size or maxlr")
        allowed.add(key)
    return allowed


def _world_sizes(state):
    """``(processes that wrote ``state``, processes of this run)``; the first None when not recorded."""
    facts = state.get("facts") or {}
    stored = facts.get("world_size") or (len(state["rng_ranks"]) if state.get("rng_ranks") else None)
    current = int(os.environ["WORLD_SIZE"]) if dist.launched_by_torchrun() else 1
    return (None if stored is None else int(stored)), current


def check_resume(changed, state, path, args):
    """UsageError, one line naming each change of ``changed`` (:func:`compare_options`, plus the number of
    processes) that resuming ``state`` cannot take and the flag that would accept it; else the notes of the
    changes ``--allowChange`` accepted."""
    changed = dict(changed)
    stored_world, world = _world_sizes(state)
    if stored_world is not None and stored_world != world:
        changed["world_size"] = (stored_world, world)
    allowed = _allowed(args)
    step = int(state.get("step") or 0) if args.start_epoch is None else 0
    where = f"step {step} of epoch {int(state.get('epoch') or 0) + 1}"
    problems, accepted = [], []
    for key, (old, new) in sorted(changed.items()):
        change = f"{_show(key, old)} -> {_show(key, new)}"
        flag = _flag(key).lstrip("-")
        if key in MODEL:
            problems.append(f"{change} makes another model (start a new run from these weights with "
                            f"--pretrained_file {path} and another --name)")
        elif key in ORDER and step:
            problems.append(f"{change} cannot change mid-epoch (the checkpoint is at {where}; finish the epoch "
                            f"with {_show(key, old)}, then resume with --allowChange {flag})")
        elif key not in allowed:
            problems.append(f"{change} needs --allowChange {flag}")
        else:
            accepted.append(change)
    if problems:
        raise UsageError(f"resuming {path}, written by a run of another configuration: {'; '.join(problems)}")
    return [f"note: --allowChange: {change} from here on" for change in accepted]


# -- the plan


def _load(path, flag):
    """The checkpoint at ``path`` for ``flag``; UsageError (an export is named as such)."""
    try:
        return load_checkpoint(path)
    except CheckpointError as exc:
        if os.path.isfile(path) and _is_export(path):
            raise UsageError(f"{flag} {path!r} is an export (the 1-bit model of --export), which holds no training "
                             f"state; {flag} takes a checkpoint (.pth) written by main.py; an export is read by "
                             f"--pretrained_file (to fine-tune or evaluate it) and by --evaluate --packed") from None
        raise UsageError(f"{exc}" + (" (found by --resume auto)" if flag == "--resume auto" else "")) from None


def _renamed_store(saved, new_name):
    """The store of a run renamed to ``new_name``: beside the old one where its folder carries the old name,
    else the default ``savedmodels/<name>``."""
    old, name = os.path.normpath(saved.get("store")), os.path.normpath(saved.get("name") or "")
    if name and old.endswith(os.sep + name):
        return os.path.join(old[:-len(name)], new_name)
    return os.path.join("savedmodels", new_name)


def _folders(args, saved):
    """``(name, logdir, store)``: the flags, else those the checkpoint resumed from records (a new --name
    gets a store of its own), else the defaults."""
    name = args.name or saved.get("name") or f"{args.dataset}_{args.model_def}"
    store = args.store
    if store is None and saved.get("store"):
        store = saved["store"] if name == saved.get("name") else _renamed_store(saved, name)
    return name, args.logdir or saved.get("logdir") or "runs", store or os.path.join("savedmodels", name)


def plan_folders(args, given=None):
    """Resolve ``--resume`` and the run folders, read the checkpoint resumed from (or evaluated) and the
    options the run uses (``given``: the options the command line gave, see :func:`explicit_options`). Writes
    nothing and changes nothing in ``args``; UsageError for folders that hold another run, for a resume
    that would change the run's configuration, for files ``--overwrite`` would delete."""
    state = path = None
    if args.resume and args.resume != "auto":
        state, path = _load(args.resume, "--resume"), args.resume
    plan = FolderPlan(*_folders(args, (state or {}).get("args") or {}))
    found = args.resume == "auto" and os.path.isfile(plan.last_path)
    if found:
        state, path = _load(plan.last_path, "--resume auto"), plan.last_path
    if args.start_epoch and state is None:
        raise UsageError(f"--start-epoch {args.start_epoch} has no checkpoint behind it ({plan.last_path} does not "
                         f"exist); drop --start-epoch to start at epoch 0")
    plan.state, plan.resume_path = state, path
    plan.options, plan.notes = _run_options(args, state, path, explicit_options(args, given))
    if args.evaluate:
        return plan
    _writable(plan.logdir, "--logdir")
    _writable(plan.store, "--store")
    plan.continues = state is not None and (found or _same_file(path, plan.last_path)
                                            or _same_folders(state.get("args") or {}, plan))
    if not plan.continues and holds_run(plan.log_dir, plan.store):
        if not args.overwrite:
            raise UsageError(_held_message(args, plan))
        _check_overwrite(args, plan)
    return plan


def _run_options(args, state, path, given):
    """``(options, notes)`` of the run: for a resume or an evaluation, the stored configuration of what it
    reads in place of the options not ``given``; a training resume checks the given ones (:func:`check_resume`)."""
    if state is not None:
        stored, source = _stored_options(state, path), path
    elif args.evaluate and args.pretrained_file:
        stored, source = _source_options(args.pretrained_file), args.pretrained_file
    else:
        return args, []
    taken, changed = compare_options(stored, args, given)
    if args.evaluate:
        check_model_options(changed, source)
        taken, notes = {key: value for key, value in taken.items() if key in MODEL + DATA}, []
    else:
        notes = check_resume(changed, state, path, args)
    return _with_options(args, taken), _taken_note(taken, source) + notes


def _source_options(path):
    """The stored options of ``--pretrained_file`` (a checkpoint, or an export's header)."""
    from deploy.export import ExportError, read_config
    if _is_export(path):
        try:
            return _export_options(read_config(path))
        except ExportError as exc:
            raise UsageError(str(exc)) from None
    return _stored_options(_load(path, "--pretrained_file"), path)


def _is_export(path):
    """Whether ``path`` names an export: by its .safetensors name, or by its header."""
    from deploy.export import is_export
    return path.endswith(".safetensors") or (os.path.isfile(path) and is_export(path))


def _same_file(path, other):
    return path is not None and os.path.isfile(other) and os.path.samefile(path, other)


def _same_folders(saved, plan):
    """Whether the checkpoint was written by the run that owns ``plan``'s folders."""
    if not saved.get("store"):
        return False
    return (os.path.abspath(saved["store"]) == os.path.abspath(plan.store)
            and os.path.abspath(os.path.join(saved.get("logdir") or "runs", saved.get("name") or ""))
            == os.path.abspath(plan.log_dir))


def _held_message(args, plan):
    """Why a run cannot start in ``plan``'s folders, and what would let it (never a flag the command gave)."""
    held = f"the run folders {plan.log_dir!r} and {plan.store!r} already hold a run ({_describe(plan)})"
    if args.resume == "auto":  # no last.pth to continue from
        return (f"{held} but no {plan.last_path} to continue from; choose another --name, or replace the run: "
                f"--overwrite without --resume")
    if args.resume:
        return (f"{held}; choose another --name for this continuation of {args.resume}, or continue the run "
                f"that is there: --resume auto instead of --resume {args.resume}")
    return f"{held}; pass --resume auto to continue it, --overwrite to replace it, or another --name"


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _check_overwrite(args, plan):
    """UsageError when a file or folder the run reads lies in the run folders ``--overwrite`` replaces."""
    for flag, path in (("--pretrained_file", args.pretrained_file), ("--teacher", args.teacher),
                       ("--resume", args.resume if args.resume != "auto" else None), ("--data_dir", args.data_dir)):
        if path and any(_inside(path, folder) for folder in (plan.log_dir, plan.store)):
            raise UsageError(f"--overwrite would replace the run in {plan.log_dir!r} and {plan.store!r}, and "
                             f"{flag} {path!r} lies there; move it out of the run folders first, or choose "
                             f"another --name")


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
