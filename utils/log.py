"""Run logs under ``--logdir/<name>/``: TensorBoard events, ``metrics.csv``, ``args.json``, per-filter
statistics under ``filters/``, ``final.json``.

* ``args.json``: the options of the run (one key per flag, resolved), and under ``facts`` what the run
  resolved from them (model family, binarized layers, data, world size, code version...), as the caller
  gives them.

* ``metrics.csv``: one row per completed epoch (``CSV_FIELDS``); a resumed run first drops the rows after
  the epoch it resumes from (and any row a crash cut short), so the file reads as one run with no
  duplicated epochs. An epoch is logged before it is checkpointed, so its row survives a crash during the
  checkpoint; the row is then logged again, once, by the run that resumes.
* TensorBoard: scalars per epoch (step = epoch, from 1); a resumed run's writer purges the events after
  the resumed epoch, so TensorBoard shows one run. Histograms ``filters/<tag>/{k_frac,alpha,beta}``.
* ``filters/layers.json``: the binarized layers, ``[{tag, index, name, method, n, filters}]`` (tag
  ``conv02`` for conv 2; a Linear layer's tag is its module name with dots as underscores); and one
  ``filters/epoch_NNNN.npz`` per epoch with ``<tag>_k`` (int32, K of each filter), ``<tag>_alpha`` and
  ``<tag>_beta`` (float32, the two values of each filter's code). They are the statistics of each layer's
  last solve (the evaluation at the end of the epoch), read without solving again.

Every file but the appended ``metrics.csv`` row and the TensorBoard events is written whole or not at all
(a temporary file moved into place); a failed write raises a one-line :class:`CheckpointWriteError`.
"""

import contextlib
import csv
import io
import json
import os
import sys
import time

import numpy as np
from tqdm import tqdm

import binarize
from utils.checkpoint import atomic_write, remove_stale_temporaries
from utils.errors import CheckpointWriteError

CSV_FIELDS = ["epoch", "lr", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
              "best_top1", "seconds", "ede_t", "ede_k"]


@contextlib.contextmanager
def writing(path):
    """Report an OSError while writing ``path`` as a one-line CheckpointWriteError (main.py: exit status 1)."""
    try:
        yield
    except OSError as exc:
        raise CheckpointWriteError(f"could not write {path}: {exc.strerror or exc}; the checkpoints are kept; free "
                                   f"space or fix the folder, then rerun with --resume auto") from None


def layer_tag(index, name):
    """``conv02`` for conv 2; a Linear layer's module name with dots as underscores."""
    return f"conv{index:02d}" if index is not None else name.replace(".", "_")


class RunLogger:
    """Writes one run's logs; a no-op object on non-zero ranks (``enabled=False``).

    ``options``: the run's options (a dict), written to args.json with ``facts`` (a dict, if given) under the
    key ``facts``. ``resume_epoch``: the epoch a resumed run continues after (None for a fresh run, whose
    folder the caller has emptied).
    """

    def __init__(self, folder, options, *, facts=None, tensorboard=True, enabled=True, resume_epoch=None):
        self.folder, self.enabled, self.writer = folder, enabled, None
        if not enabled:
            return
        self.csv_path = os.path.join(folder, "metrics.csv")
        with writing(folder):
            os.makedirs(folder, exist_ok=True)
            for where in (folder, os.path.join(folder, "filters")):
                remove_stale_temporaries(where)
        recorded = dict(options) if facts is None else dict(options, facts=facts)
        self.write_json("args.json", recorded, default=str, sort_keys=True)
        kept = self._rows_up_to(resume_epoch) if resume_epoch is not None else []
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(kept)
        with writing(self.csv_path):
            atomic_write(self.csv_path, lambda f: f.write(text.getvalue().encode()))
        if resume_epoch is not None:
            self._drop_after(resume_epoch)
        if tensorboard:
            from tensorboardX import SummaryWriter
            purge = None if resume_epoch is None else resume_epoch + 1
            # tensorboardX names event files by the second: a suffix keeps a quick restart from reusing one,
            # and puts the files of one second in the order they were written (readers apply a resume's
            # purge in file-name order), so the nanoseconds come before the pid
            self.writer = SummaryWriter(logdir=folder, purge_step=purge,
                                        filename_suffix=f".{time.time_ns()}.{os.getpid()}")

    def _rows_up_to(self, epoch):
        """The complete rows of metrics.csv up to ``epoch`` (a row a crash cut short has fields missing)."""
        if not os.path.exists(self.csv_path):
            return []
        with open(self.csv_path, newline="") as f:
            return [row for row in csv.DictReader(f) if None not in row and None not in row.values()
                    and row.get("epoch", "").isdigit() and int(row["epoch"]) <= epoch]

    def _drop_after(self, epoch):
        """Remove what an interrupted run wrote past ``epoch``: later per-filter files and final.json."""
        filters = os.path.join(self.folder, "filters")
        with writing(self.folder):
            for entry in os.listdir(filters) if os.path.isdir(filters) else ():
                if entry.startswith("epoch_") and entry.endswith(".npz") and int(entry[6:10]) > epoch:
                    os.remove(os.path.join(filters, entry))
            final = os.path.join(self.folder, "final.json")
            if os.path.exists(final):
                os.remove(final)

    def scalars(self, values, step):
        """``values``: {tag: number}, e.g. {"train/loss": 0.3}."""
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def epoch(self, model, step, train_m, val_m, best_top1):
        """Log one finished epoch: scalars (with each binarized layer's mean K/n, alpha, beta and the EDE
        settings), the metrics.csv row and the per-filter statistics of ``model``."""
        values = {"lr": train_m["lr"], "train/loss": train_m["loss"], "train/top1": train_m["top1"],
                  "train/top5": train_m["top5"], "val/loss": val_m["loss"], "val/top1": val_m["top1"],
                  "val/top5": val_m["top5"]}
        if train_m.get("ede_t") != "":
            values.update({"ede/t": train_m["ede_t"], "ede/k": train_m["ede_k"]})
        for s in binarize.layer_stats(model):
            tag = f"binarize/{layer_tag(s['index'], s['name'])}"
            values.update({f"{tag}/k_frac": s["k_frac"], f"{tag}/alpha": s["alpha"], f"{tag}/beta": s["beta"]})
        self.scalars(values, step)
        self.epoch_row(dict(epoch=step, lr=train_m["lr"], train_loss=train_m["loss"], train_top1=train_m["top1"],
                            train_top5=train_m["top5"], val_loss=val_m["loss"], val_top1=val_m["top1"],
                            val_top5=val_m["top5"], best_top1=best_top1, seconds=round(train_m["seconds"], 3),
                            ede_t=train_m.get("ede_t", ""), ede_k=train_m.get("ede_k", "")))
        self.filter_stats(binarize.filter_stats(model), step)
        self.flush()

    def epoch_row(self, row):
        """Append one row to metrics.csv, flushed to disk before the epoch's checkpoint is written."""
        if self.enabled:
            with writing(self.csv_path), open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, CSV_FIELDS).writerow({k: row.get(k, "") for k in CSV_FIELDS})
                f.flush()
                os.fsync(f.fileno())

    def filter_stats(self, stats, step):
        """Write one epoch's per-filter statistics (``binarize.filter_stats(model)``)."""
        if not self.enabled or not stats:
            return
        layers, arrays = [], {}
        for s in stats:
            tag = layer_tag(s["index"], s["name"])
            k = s["k"].numpy().astype(np.int32)
            layers.append(dict(tag=tag, index=s["index"], name=s["name"], method=s["method"], n=int(s["n"]),
                               filters=int(k.shape[0])))
            arrays.update({f"{tag}_k": k, f"{tag}_alpha": s["alpha"].numpy(), f"{tag}_beta": s["beta"].numpy()})
            if self.writer is not None:
                self.writer.add_histogram(f"filters/{tag}/k_frac", k / s["n"], step)
                self.writer.add_histogram(f"filters/{tag}/alpha", arrays[f"{tag}_alpha"], step)
                self.writer.add_histogram(f"filters/{tag}/beta", arrays[f"{tag}_beta"], step)
        folder = os.path.join(self.folder, "filters")  # only runs with binarized layers have one
        path = os.path.join(folder, f"epoch_{step:04d}.npz")
        with writing(path):
            os.makedirs(folder, exist_ok=True)
            data = io.BytesIO()
            np.savez(data, **arrays)
            atomic_write(path, lambda f: f.write(data.getvalue()))
        self.write_json(os.path.join("filters", "layers.json"), layers)

    def write_json(self, name, obj, **dump):
        """Write ``obj`` as ``name`` in the run folder, whole or not at all (``dump``: json.dumps options)."""
        if self.enabled:
            path = os.path.join(self.folder, name)
            with writing(path):
                atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, **dump).encode()))

    def flush(self):
        if self.writer is not None:
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def progress(iterable, *, desc, total, initial=0, enabled=True):
    """A tqdm bar on a terminal; plain (no bar) otherwise, where the caller prints progress lines."""
    show = enabled and sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, initial=initial, disable=not show, leave=False,
                dynamic_ncols=True)
