"""Checkpoints that survive a crash, load with ``torch.load(..., weights_only=True)`` and explain a misfit.

A checkpoint is a dict of tensors and plain Python values: ``{epoch, step, model, optimizer, best_acc1,
args, facts, rng, num_classes, in_channels, classes, ...}`` (``args`` the options of the run, ``facts`` what
it resolved from them; both as the caller gives them in ``extra``). It is written to a temporary file ``.tmp-*`` in the
same folder, flushed to disk and moved into place with ``os.replace`` (the folder is synced after the move), so a
run killed mid-write keeps the previous checkpoint; a temporary file left by a kill -9 is removed at the next start
(:func:`remove_stale_temporaries`).

Loading the weights of another configuration (``--pretrained_file``: a stage-1 checkpoint with real
weights into a stage-2 model with binarized ones, or the reverse) maps each layer's plain weight to the
binarized layer's latent weight and back (:func:`adapt_state`).
"""

import math
import os
import random
import tempfile

import numpy as np
import torch

import binarize
from utils.errors import CheckpointError, CheckpointWriteError

TEMP_PREFIX = ".tmp-"
LATENT = ".parametrizations.weight.original"


def atomic_write(path, write):
    """Call ``write(f)`` on a temporary file next to ``path``, flush it to disk and move it into place with
    ``os.replace``: a crash or an error at any point leaves the previous file (or none), never a part of the
    new one. A kill -9 can leave the temporary file (``.tmp-*``) behind: :func:`remove_stale_temporaries`."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1], dir=folder)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make the files private to their writer
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    sync_folder(folder)


def atomic_save(obj, path):
    """``torch.save`` to ``path`` through :func:`atomic_write`; the old file stays on error."""
    atomic_write(path, lambda f: torch.save(obj, f))


def sync_folder(folder):
    """Flush ``folder``'s entries (a file just moved into it) to disk, where the system allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and Windows) cannot sync a folder; the move itself is done
        pass
    finally:
        os.close(fd)


def remove_stale_temporaries(folder):
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``folder``; returns how many."""
    if not os.path.isdir(folder):
        return 0
    stale = [e for e in os.listdir(folder) if e.startswith(TEMP_PREFIX)]
    for entry in stale:
        os.remove(os.path.join(folder, entry))
    return len(stale)


def _unreadable_reason(path, exc):
    """Why torch.load failed, in words (torch's own messages run over several lines)."""
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"PK") and not head.startswith(b"\x80"):  # neither a zip checkpoint nor a pickle
        return "it is not a PyTorch checkpoint (a text file, or another format)"
    text = " ".join(str(exc).split())
    if "Weights only load failed" in text:
        return "it holds Python objects beyond tensors and plain values, so it is not a dabnet checkpoint"
    return "it is truncated or corrupt (an interrupted copy or write?)"


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint written by :func:`atomic_save`; one-line :class:`CheckpointError` otherwise."""
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a folder, not a file; give the path of a last.pth or "
                              f"best.pth file inside it, or continue a run with --resume auto")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist; give the path of a last.pth or best.pth file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise CheckpointError(f"checkpoint {path!r} cannot be read: {_unreadable_reason(path, exc)}; use another file "
                              f"or start without it") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"checkpoint {path!r} holds no model state; give a file written by main.py")
    return state


def rng_state():
    """Every RNG state a run depends on, as tensors and plain values (weights_only-loadable)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": list(random.getstate()[1]),
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    random.setstate((3, tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_compatible(saved_args, current, path, keys):
    """CheckpointError unless ``saved_args`` (a checkpoint's args) agree with ``current`` (this run's resolved
    options, a dict) on ``keys``. A key the checkpoint does not record (older checkpoints) is not compared.
    """
    saved = saved_args or {}
    for key in keys:
        if key in saved and saved[key] != current.get(key):
            raise CheckpointError(f"checkpoint {path!r} is from another configuration ({key}={saved[key]!r}, this "
                                  f"run has {current.get(key)!r}); pass the same --{key} or another checkpoint")


def _misfit(model, state):
    """One clause naming the first key or shape that differs between ``model`` and ``state``, or None."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    more = lambda items: f" (and {len(items) - 1} more)" if len(items) > 1 else ""  # noqa: E731
    if wrong:
        k = wrong[0]
        return f"{k} is {list(state[k].shape)} in the checkpoint but {list(expected[k])} here{more(wrong)}"
    if missing:
        return f"it lacks {missing[0]}{more(missing)}"
    if unexpected:
        return f"it has {unexpected[0]} that this model lacks{more(unexpected)}"
    return None


def load_model_state(model, state, path, hint="check --model_def, --nClasses, --binaryWeight, --binInputs and the "
                                              "binarized layers"):
    """``model.load_state_dict(state)`` (strict), or a CheckpointError naming the layer and shapes that differ."""
    problem = _misfit(model, state)
    if problem:
        raise CheckpointError(f"checkpoint {path!r} does not fit this model: {problem}; {hint}")
    model.load_state_dict(state)


def adapt_state(model, state):
    """``state`` made to fit ``model`` where the two differ only in which layers are binarized.

    A plain ``X.weight`` loads into a binarized layer's latent ``X.parametrizations.weight.original`` (and
    the reverse); parameters that only a binarizer has (a weight shift, an activation binarizer's
    squeeze-excitation branch) keep the model's own values when the state lacks them, and are dropped
    when the model lacks them. Returns ``(state, notes, newly_binarized)``: one note per kind of change,
    and the layers whose latent came from a plain weight (they need projecting).
    """
    own = model.state_dict()
    binarizer_modules = [name for name, m in model.named_modules()
                         if isinstance(m, (binarize.WeightBinarizer, binarize.ActivationBinarizer))]
    adapted, notes, newly = dict(state), [], []
    for key in own:
        if key.endswith(LATENT) and key not in adapted:
            plain = key[:-len(LATENT)] + ".weight"
            if plain in adapted:
                adapted[key] = adapted.pop(plain)
                newly.append(key[:-len(LATENT)])
        elif key.endswith(".weight") and key not in adapted and key[:-len(".weight")] + LATENT in adapted:
            adapted[key] = adapted.pop(key[:-len(".weight")] + LATENT)
            notes.append("binarized layers of the checkpoint load into real layers here (their latent weights)")
    kept = [k for k in own if k not in adapted and any(k.startswith(m + ".") for m in binarizer_modules)]
    for key in kept:
        adapted[key] = own[key]
    dropped = [k for k in adapted if k not in own and (".parametrizations.weight." in k
                                                       or any(k.startswith(m + ".") for m in binarizer_modules))]
    for key in dropped:
        del adapted[key]
    if newly:
        notes.append(f"{len(newly)} real layers of the checkpoint become binarized latent weights here")
    if kept:
        notes.append(f"{len(kept)} binarizer parameters absent from the checkpoint keep their initial values")
    if dropped:
        notes.append(f"{len(dropped)} binarizer parameters of the checkpoint are not used here")
    return adapted, sorted(set(notes)), newly


class TrainingCheckpoints:
    """The checkpoints of one training run: ``last.pth`` after every epoch (and every ``--saveEvery`` steps or
    when a signal stops the run), ``best.pth`` when val top-1 improves.

    A checkpoint at step s of epoch e (``epoch`` = e epochs done, ``step`` = s) also holds what continues
    the epoch exactly: every rank's RNG states and running sums, the seconds spent, and rank 0's data
    order for the epoch (to detect data that changed since). Every rank calls :meth:`save`; rank 0 writes.

    The order of the writes is what makes a crash at any point recoverable: the caller logs an epoch
    before it saves it (a resumed run drops log rows past its checkpoint), ``best.pth`` is written before
    ``last.pth`` (so ``last.pth`` never records a best accuracy that ``best.pth`` lacks: a run resumed
    from it redoes the epoch and writes ``best.pth`` again), and :meth:`begin` gives a run's folder a
    ``last.pth`` before its first log row.
    """

    def __init__(self, last_path, best_path, model, optimizer, scaler, batches, extra):
        self.last_path, self.best_path = last_path, best_path
        self.model, self.optimizer, self.scaler, self.batches, self.extra = model, optimizer, scaler, batches, extra

    def save(self, epoch, step, best, totals=None, seconds=0.0, is_best=False):
        from utils import dist
        ranks = dist.gather_object(dict(rng=rng_state(), totals=None if totals is None else totals.cpu()))
        state = dict(epoch=epoch, step=step, best_acc1=best["top1"], best_top5=best["top5"], rng=ranks[0]["rng"],
                     rng_ranks=[r["rng"] for r in ranks], totals=[r["totals"] for r in ranks], seconds=seconds,
                     order=self.batches.order().to(torch.int32) if step else None)
        self._write(state, ([self.best_path] if is_best else []) + [self.last_path])

    def begin(self, epoch, step, best, resumed=None):
        """Write the point a run starts from as its ``last.pth``: a fresh run's initial weights (epoch 0),
        or, for a run started from another run's checkpoint ``resumed``, that position as this run's own.
        From then on ``--resume auto`` finds a checkpoint behind every log row, whatever stops the run."""
        if resumed is not None and step:  # mid-epoch: the position (RNG states, running sums) resumed from
            keep = ("rng", "rng_ranks", "totals", "seconds", "order")
            self._write(dict({k: resumed.get(k) for k in keep}, epoch=epoch, step=step, best_acc1=best["top1"],
                             best_top5=best["top5"]), [self.last_path])
        else:
            self.save(epoch, 0, best)

    def _write(self, position, paths):
        """Write the model, optimizer and ``extra`` with ``position`` to each of ``paths`` in turn (rank 0)."""
        from utils import dist
        state = dict(position, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(), **self.extra)
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        if dist.is_main():
            for path in paths:
                try:
                    atomic_save(state, path)
                except OSError as exc:
                    raise CheckpointWriteError(f"could not write {path}: {exc.strerror or exc}; the previous "
                                               f"checkpoint is kept; free space or fix the folder, then rerun with "
                                               f"--resume auto") from None
        dist.barrier()

    def restore(self, state):
        """Load the optimizer (and gradient scaler) of ``state``; returns ``(epochs done, step, best)``."""
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        best = dict(top1=float(state.get("best_acc1", -math.inf)), top5=float(state.get("best_top5", -math.inf)))
        return int(state.get("epoch", 0)), int(state.get("step", 0)), best

    def continue_epoch(self, state, rank):
        """Restore this rank's RNG states of a mid-epoch ``state``; returns its ``(totals, seconds)``."""
        if state.get("order") is not None and rank == 0 and not torch.equal(state["order"].long(),
                                                                            self.batches.order()):
            raise CheckpointError("the training data changed since the checkpoint (the epoch's order differs), so "
                                  "the epoch cannot be resumed exactly; restore the data or start from best.pth")
        ranks = state.get("rng_ranks") or [state["rng"]]
        set_rng_state(ranks[rank] if len(ranks) > rank else ranks[0])
        return state["totals"][rank], float(state.get("seconds", 0.0))
