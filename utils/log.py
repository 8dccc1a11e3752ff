"""Run logs under ``--logdir/<name>/``: TensorBoard events, ``metrics.csv`` and ``args.json``."""

import csv
import json
import os
import sys

from tqdm import tqdm

CSV_FIELDS = ["epoch", "lr", "train_loss", "train_top1", "train_top5", "val_loss", "val_top1", "val_top5",
              "best_top1", "seconds"]


class RunLogger:
    """Writes one run's logs; a no-op object on non-zero ranks (``enabled=False``)."""

    def __init__(self, folder, args_dict, *, tensorboard=True, enabled=True, resume=False):
        self.folder, self.enabled, self.writer = folder, enabled, None
        if not enabled:
            return
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "args.json"), "w") as f:
            json.dump(args_dict, f, indent=2, sort_keys=True)
        self.csv_path = os.path.join(folder, "metrics.csv")
        if not (resume and os.path.exists(self.csv_path)):
            with open(self.csv_path, "w", newline="") as f:
                csv.writer(f).writerow(CSV_FIELDS)
        if tensorboard:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(logdir=folder)

    def scalars(self, values, step):
        """``values``: {tag: number}, e.g. {"train/loss": 0.3}."""
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def epoch_row(self, row):
        if self.enabled:
            with open(self.csv_path, "a", newline="") as f:
                csv.DictWriter(f, CSV_FIELDS).writerow({k: row.get(k, "") for k in CSV_FIELDS})

    def write_json(self, name, obj):
        if self.enabled:
            with open(os.path.join(self.folder, name), "w") as f:
                json.dump(obj, f, indent=2)

    def flush(self):
        if self.writer is not None:
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def progress(iterable, *, desc, total, enabled=True):
    """A tqdm bar on a terminal; plain (no bar) otherwise, where the caller prints summary lines."""
    show = enabled and sys.stderr.isatty()
    return tqdm(iterable, desc=desc, total=total, disable=not show, leave=False, dynamic_ncols=True)
