"""The paper's table and figures from a set of training runs: ``python -m analysis.report``.

    python -m analysis.report runs/ other_runs/tuberlin_sketchanetwbin_dab --out report/ [--metric final|best]
    result = report(["runs"], "report")   # {"written": [...], "runs": [...], "skipped": [...], "tables": [...]}

Each RUN_DIR is a run folder (``<logdir>/<name>/`` holding ``args.json`` or ``metrics.csv``, as main.py
writes it) or a folder holding run folders at any depth. A run without readable ``args.json``, without a
completed epoch in ``metrics.csv``, or with a corrupt ``metrics.csv`` / ``final.json`` is skipped with its
reason. A run with epochs but no ``final.json`` (still running, or killed) is kept, marked unfinished, its
best and final accuracies taken from ``metrics.csv``. A finished run's best and final top-1 are its
``final.json`` values, unchanged.

Files written under OUT_DIR:

* ``results.csv``: one row per run (name, folder, dataset, model, family, weights, binarizer, bin layers,
  activation, seed, epochs asked and done, finished, best and final val top-1 and top-5, mean training
  seconds per epoch, val images). Floats at full precision (Python's shortest round-trip form, as
  ``json`` writes them), so a finished run's numbers are exactly its ``final.json`` values.
* ``results_table.csv``: the paper-style table in machine-readable form: one row per (metric, method,
  model[, settings]) with ``<dataset>_mean``, ``_std``, ``_n`` and ``_unfinished`` columns per dataset;
  the rows of the ``--metric`` come first, then the same rows for the other metric. Improvement rows
  (method "WBin: XNOR-Net vs DAB-Net", ...) hold DAB-Net minus XNOR-Net in their ``_mean`` columns.
* ``results.md``: the paper-style table of the ``--metric`` (default: final val top-1), the same table
  for the other metric, the per-run table (2 decimals), the skipped runs with their reasons and links
  to the figures.
* ``curves_val_top1.png`` and ``curves_train_loss.png``: val top-1 (%) and train loss (NLL) over the
  epochs of every run, on shared axes.
* ``<run>/alpha_beta.png``, ``<run>/k_over_training.png``, ``<run>/k_across_layers.png`` for each run with
  DAB per-filter statistics (``filters/``), and ``<run>/binarization_rmse.png`` for each run that logged
  binarization losses. ``<run>`` is the run's name with characters other than letters, digits, ``.``,
  ``_``, ``-`` replaced by ``_``, plus ``-2``, ``-3``... when two runs share a name.

The table: one column per dataset; rows grouped by method in the paper's order (Full precision; WBin
XNOR-Net; WBin DAB-Net; FBin XNOR-Net; FBin DAB-Net; Hybrid ...; then the other binarizers), one row per
model family (model_def without its variant tag wbin/fbin/hybrid[v2|v3]/_fp/_1w1a and trailing 18).
Runs that differ only in ``manualSeed`` (same dataset, model_def, weights, binarizer, activation, bin
layers, epochs) form one cell, ``mean ± std (n=K)`` with the sample standard deviation (n - 1), or
``value (n=1)``; a cell holding an unfinished run is marked with a dagger. When one (method, family,
dataset) has several such groups (e.g. two bin ranges), the family gets one row per setting, labelled by
the settings that differ. The improvement row after each DAB-Net group is DAB-Net minus XNOR-Net in
points (signed), per family and dataset where both exist (same weights variant and activation; same
settings where there is a choice).

Weights kind of a run: ``fp`` (no binarized weight, no binarized input); ``wbin`` (binarized weights,
real inputs); ``fbin`` (every binarized conv also has a binarized input: ``binInputs`` covers
``binLayers``, or by name when those are not logged: ``*fbin*``, ``*_1w1a``, ``birealnet*``); ``hybrid``
(``*hybrid*`` models, or ``binInputs`` covering only some binarized convs); ``abin`` (real weights with
binarized inputs, ``--no-binaryWeight`` on an fbin model).

Figure choices (all 6 x 4 in at 100 dpi = 600 x 400 px, rendered on the Agg canvas directly, without
pyplot, so nothing is ever displayed and the process's matplotlib backend is left alone):

* curves: a line per run, named in the legend when there are at most 10 runs; with more, the runs of one
  seed group share a colour and a legend entry ("TU-Berlin sketchanetwbin dab (n=3)"). Linear axes.
* alpha_beta: alpha (solid) and beta (dashed) of 4 filters of the run's middle DAB conv (the middle of
  the DAB layers in conv order), filter indices evenly spaced over the layer (first to last), per epoch.
* k_over_training: K/n of the same filters per epoch, with the layer's mean K/n (black, dotted).
* k_across_layers: box plot of K/n over the filters of each DAB layer at the last logged epoch.
* binarization_rmse: RMSE per layer as bars: input (activation) binarization error of
  ``binarization_losses.json`` and the conv-output error of binarized weights of
  ``weight_binarization_losses.json``, one panel each.
"""

import argparse
import csv
import json
import math
import os
import re
import statistics
import sys
import zipfile

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = ["ReportError", "report", "find_runs", "read_run", "weights_kind", "family_of", "main"]

FIGSIZE, DPI = (6.0, 4.0), 100
RUN_FIELDS = ["run", "folder", "dataset", "model", "family", "weights", "binarizer", "bin_layers", "activation",
              "seed", "epochs", "epochs_done", "finished", "best_top1", "final_top1", "best_top5", "final_top5",
              "sec_per_epoch", "val_images"]
DATASET_NAMES = {"tuberlin": "TU-Berlin", "sketchyrecognition": "Sketchy", "digits": "digits",
                 "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet12": "ImageNet"}
DATASET_ORDER = ["tuberlin", "sketchyrecognition"]  # the paper's columns first, then alphabetical
FAMILY_NAMES = {"sketchanet": "Sketch-A-Net", "resnet": "ResNet-18", "googlenet": "GoogLeNet",
                "alexnet": "AlexNet", "squeezenet": "SqueezeNet", "resnet20": "ResNet-20",
                "birealnet": "Bi-Real Net-18", "nin": "NIN", "densenet": "DenseNet", "mobilenet": "MobileNet",
                "vgg16_bncifar": "VGG-16 (BN)", "bincifar": "BinCIFAR"}
FAMILY_ORDER = ["sketchanet", "resnet", "googlenet", "alexnet", "squeezenet"]
BINARIZER_NAMES = {"dab": "DAB-Net", "xnor": "XNOR-Net", "bnn": "BNN", "sign": "sign"}
PAPER_BINARIZERS = ["xnor", "dab"]  # the paper's two, in its row order
WEIGHTS_ORDER = {"fp": 0, "wbin": 1, "fbin": 2, "hybrid": 3, "abin": 4}
WEIGHTS_NAMES = {"wbin": "WBin", "fbin": "FBin", "hybrid": "Hybrid", "abin": "ABin"}
FILTERS_SHOWN = 4
MAX_LEGEND = 10  # runs named one by one in the curves' legend; more are named by seed group


class ReportError(ValueError):
    """Nothing to report (no RUN_DIR exists, no readable run), or an output folder that cannot be made."""


class RunError(ValueError):
    """A run (or one of its parts) that cannot be read; the message is the reason it is skipped."""


# ----------------------------------------------------------------------------------------- reading runs

def find_runs(run_dirs):
    """``(run folders, skipped)``: the run folders in or under ``run_dirs`` (sorted, each once) and
    ``[{"path", "reason"}]`` for the arguments that are missing or hold no run."""
    found, seen, skipped = [], set(), []
    for root in run_dirs:
        if not os.path.exists(root):
            skipped.append({"path": root, "reason": "does not exist"})
            continue
        if not os.path.isdir(root):
            skipped.append({"path": root, "reason": "not a folder"})
            continue
        count = 0
        for folder, dirs, files in os.walk(root):
            dirs.sort()
            if "args.json" in files or "metrics.csv" in files:
                dirs[:] = []  # filters/ and the like belong to this run
                count += 1
                key = os.path.realpath(folder)  # a run named twice (itself and its parent) is read once
                if key not in seen:
                    seen.add(key)
                    found.append(os.path.normpath(folder))
        if not count:
            skipped.append({"path": root, "reason": "no run folder (args.json or metrics.csv) in it"})
    return found, skipped


def _read_json(path, what):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunError(f"unreadable {what}: {exc}") from None


def _number(text):
    """A metrics.csv cell as a float; empty -> nan (an optional value not logged)."""
    return float(text) if text.strip() else math.nan


def read_metrics(path):
    """The rows of ``metrics.csv`` as ``{column: float}``, one per epoch (the last row of an epoch logged
    twice, after a resume), sorted by epoch. RunError when it is unreadable or has no row."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if "epoch" not in header or "val_top1" not in header:
                raise RunError("corrupt metrics.csv: no epoch and val_top1 columns in its header")
            by_epoch = {}
            for line, row in enumerate(reader, start=2):
                if None in row or None in row.values():  # more or fewer cells than the header names
                    raise RunError(f"corrupt metrics.csv: line {line} has {len(header)} columns in its header "
                                   f"but not in the row")
                try:
                    values = {key: _number(value) for key, value in row.items()}
                except ValueError:
                    raise RunError(f"corrupt metrics.csv: line {line} holds a value that is not a number") from None
                if math.isnan(values["epoch"]) or math.isnan(values["val_top1"]):
                    raise RunError(f"corrupt metrics.csv: line {line} has no epoch or val_top1")
                by_epoch[int(values["epoch"])] = values
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise RunError(f"unreadable metrics.csv: {exc}") from None
    if not by_epoch:
        raise RunError("no completed epoch in metrics.csv")
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


def family_of(model_def):
    """The model family of a ``--model_def`` name: without its variant tag and trailing 18."""
    family = re.sub(r"wbin|fbin|hybrid(v[23])?", "", model_def)
    family = re.sub(r"(_fp|_1w1a)$", "", family)
    return re.sub(r"18$", "", family) or model_def


def _binarized_by_name(model_def):
    """The original's naming (as opts.binarize_by_default): these models train with binary weights."""
    return any(tag in model_def for tag in ("wbin", "fbin", "hybrid", "1w1a")) or \
        model_def.startswith(("bincifar", "birealnet"))


def _inputs_by_name(model_def):
    """"all", "some" or "none": which binarized convs have a binarized input, by the model's name."""
    if "hybrid" in model_def:
        return "some"
    if "fbin" in model_def or model_def.endswith("_1w1a") or model_def.startswith("birealnet"):
        return "all"
    return "none"


def weights_kind(args):
    """fp, wbin, fbin, hybrid or abin for a run's args (see the module docstring)."""
    model_def = args["model_def"]
    binary_weight = args.get("binaryWeight")
    if binary_weight is None:
        binary_weight = _binarized_by_name(model_def)
    bin_inputs, bin_layers = args.get("binInputs"), args.get("binLayers")
    if "hybrid" in model_def:
        inputs = "some"
    elif bin_inputs is None:
        inputs = _inputs_by_name(model_def)
    elif not bin_inputs:
        inputs = "none"
    elif bin_layers is not None:
        inputs = "all" if set(bin_layers) <= set(bin_inputs) else "some"
    else:  # binarized inputs named, binarized convs not logged: trust the name
        inputs = "all" if _inputs_by_name(model_def) == "all" else "some"
    if not binary_weight:
        return "fp" if inputs == "none" else "abin"
    return {"all": "fbin", "some": "hybrid", "none": "wbin"}[inputs]


def compact_layers(layers):
    """[2, 3, 4, 5, 9] -> "2-5,9"."""
    layers, parts, i = sorted(set(int(x) for x in layers)), [], 0
    while i < len(layers):
        j = i
        while j + 1 < len(layers) and layers[j + 1] == layers[j] + 1:
            j += 1
        parts.append(str(layers[i]) if i == j else f"{layers[i]}-{layers[j]}")
        i = j + 1
    return ",".join(parts) or "none"


def _bin_layers_text(args, weights):
    if weights in ("fp", "abin"):
        return "-"
    if args.get("binLayers") is not None:
        return compact_layers(args["binLayers"])
    if args.get("binStart") is not None and args.get("binEnd") is not None:
        return f"{args['binStart']}..{args['binEnd']}"
    return "default"


def _variant_name(weights, model_def):
    """"WBin", "FBin", "Hybrid", "Hybrid-v2", ... for the method labels."""
    if weights == "hybrid":
        match = re.search(r"hybrid(v[23])?", model_def)
        return "Hybrid" + (f"-{match.group(1)}" if match and match.group(1) else "")
    return WEIGHTS_NAMES[weights]


def read_run(folder):
    """One run folder -> a run dict (the RUN_FIELDS plus metrics rows and paths of optional files).

    RunError (the reason to skip it) when args.json or metrics.csv is missing, corrupt or empty, or
    final.json is corrupt.
    """
    args_path, final_path = os.path.join(folder, "args.json"), os.path.join(folder, "final.json")
    if not os.path.exists(args_path):
        raise RunError("missing args.json")
    args = _read_json(args_path, "args.json")
    if not isinstance(args, dict):
        raise RunError("corrupt args.json: not a JSON object")
    missing = [key for key in ("dataset", "model_def") if not isinstance(args.get(key), str)]
    if missing:
        raise RunError(f"args.json lacks {', '.join(missing)}")
    if not os.path.exists(os.path.join(folder, "metrics.csv")):
        raise RunError("missing metrics.csv")
    rows = read_metrics(os.path.join(folder, "metrics.csv"))
    final = None
    if os.path.exists(final_path):
        final = _read_json(final_path, "final.json")
        if not isinstance(final, dict) or not all(isinstance(final.get(k), (int, float))
                                                  for k in ("best_top1", "final_top1")):
            raise RunError("corrupt final.json: no best_top1 and final_top1 numbers")

    def column(key):
        return [row[key] for row in rows if key in row and not math.isnan(row[key])]

    top5, seconds = column("val_top5"), column("seconds")
    final = final or {}
    weights = weights_kind(args)
    dataset = "sketchyrecognition" if args["dataset"] == "sketchy" else args["dataset"]
    activation = str(args.get("binActivation") or "sign") if weights in ("fbin", "hybrid", "abin") else "-"
    run = {
        "run": str(args.get("name") or os.path.basename(os.path.abspath(folder))),
        "folder": folder,
        "dataset": dataset,
        "model": args["model_def"],
        "family": family_of(args["model_def"]),
        "weights": weights,
        "binarizer": _binarizer_text(args) if weights not in ("fp", "abin") else "-",
        "bin_layers": _bin_layers_text(args, weights),
        "activation": activation,
        "seed": args.get("manualSeed"),
        "epochs": args.get("epochs"),
        "epochs_done": final.get("epochs_done", len(rows)),
        "finished": bool(final),
        # a finished run: its final.json numbers as they are; else the last and the best epoch logged
        "best_top1": final.get("best_top1", max(column("val_top1"))),
        "final_top1": final.get("final_top1", rows[-1]["val_top1"]),
        "best_top5": final.get("best_top5", max(top5) if top5 else None),
        "final_top5": final.get("final_top5", top5[-1] if top5 else None),
        "sec_per_epoch": sum(seconds) / len(seconds) if seconds else None,
        "val_images": final.get("val_images"),
        "metrics": rows,
        "variant": None if weights == "fp" else _variant_name(weights, args["model_def"]),
    }
    filters = os.path.join(folder, "filters")  # runs of older versions have an empty one without binarized layers
    run["filters"] = filters if os.path.isdir(filters) and os.listdir(filters) else None
    run["losses"] = {}
    for key, name in (("input", "binarization_losses.json"), ("weight", "weight_binarization_losses.json")):
        if os.path.exists(os.path.join(folder, name)):
            run["losses"][key] = os.path.join(folder, name)
    return run


def _binarizer_text(args):
    """The weight binarizer with the parts that change it: ``sign+wsd+ede`` for SD-BNN's weights (the
    shift and the EDE backward); ``dab`` for the original's setting (no shift, straight-through)."""
    parts = [str(args.get("binarizer") or "dab")]
    if args.get("weightShift") not in (None, "none"):
        parts.append(str(args["weightShift"]))
    if args.get("backward") not in (None, "ste"):
        parts.append(str(args["backward"]))
    return "+".join(parts)


# ---------------------------------------------------------------------------------------------- table

def method_key(run):
    """Sort key and label of a run's method: the paper's rows first, in its order, then the others."""
    weights, binarizer, activation = run["weights"], run["binarizer"], run["activation"]
    if weights == "fp":
        return (0, 0, "", 0, ""), "Full precision"
    label = f"{run['variant']} " + ("real weights" if binarizer == "-" else BINARIZER_NAMES.get(binarizer, binarizer))
    if activation not in ("-", "sign"):
        label += f" ({activation} activation)"
    paper = binarizer in PAPER_BINARIZERS
    rank = PAPER_BINARIZERS.index(binarizer) if paper else 0
    return (1 if paper else 2, WEIGHTS_ORDER[weights], run["variant"], rank, binarizer + activation), label


def _family_key(family):
    return (FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER), family)


def _dataset_key(dataset):
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), dataset)


def _settings(run):
    """What, besides the seed, tells apart two runs of one method, family and dataset."""
    return (run["model"], run["bin_layers"], run["epochs"])


def _settings_label(settings, varying):
    model, layers, epochs = settings
    parts = [model] if "model" in varying else []
    parts += [f"bin {layers}"] if "layers" in varying else []
    parts += [f"{epochs} epochs"] if "epochs" in varying else []
    return ", ".join(parts)


def _stats(values):
    """mean, sample std (None for one value) and n."""
    mean = statistics.fmean(values)
    return {"mean": mean, "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def build_table(runs, metric):
    """The paper-style table: ``{"datasets": [...], "rows": [...]}`` with the rows in print order.

    Each row: method, model (family label), settings (label, empty unless needed), kind ("result" or
    "improvement") and cells ``{dataset: {"mean", "std", "n", "unfinished"}}`` of ``metric`` top-1.
    """
    value = f"{metric}_top1"
    datasets = sorted({run["dataset"] for run in runs}, key=_dataset_key)
    # cell groups: (method key, family, dataset, settings) -> runs, repeated seeds together
    groups, labels = {}, {}
    for run in runs:
        key, label = method_key(run)
        labels[key] = label
        groups.setdefault((key, run["family"], run["dataset"], _settings(run)), []).append(run)
    # rows of a (method, family): one, or one per setting when a dataset holds several
    rows_of = {}
    for mkey, family, dataset, settings in groups:
        rows_of.setdefault((mkey, family), {}).setdefault(dataset, []).append(settings)
    methods = sorted({mkey for mkey, _ in rows_of})
    rows, results = [], {}
    for mkey in methods:
        for family in sorted({f for m, f in rows_of if m == mkey}, key=_family_key):
            per_dataset = rows_of[(mkey, family)]
            split = any(len(s) > 1 for s in per_dataset.values())
            if split:
                every = [s for ss in per_dataset.values() for s in ss]
                varying = {name for i, name in enumerate(("model", "layers", "epochs"))
                           if len({s[i] for s in every}) > 1}
                row_settings = sorted(set(every), key=str)
            else:
                varying, row_settings = set(), [None]
            for settings in row_settings:
                cells, members = {}, {}
                for dataset, options in per_dataset.items():
                    chosen = options[0] if settings is None else (settings if settings in options else None)
                    if chosen is None:
                        continue
                    group = groups[(mkey, family, dataset, chosen)]
                    cells[dataset] = dict(_stats([run[value] for run in group]),
                                          unfinished=any(not run["finished"] for run in group))
                    members[dataset] = chosen
                row = {"method": labels[mkey], "model": FAMILY_NAMES.get(family, family),
                       "settings": _settings_label(settings, varying) if settings else "",
                       "kind": "result", "cells": cells}
                rows.append(row)
                results[(mkey, family, settings)] = (row, members)
        improvement = _improvement_rows(mkey, results, groups, value)
        rows.extend(improvement)
    return {"datasets": datasets, "rows": rows, "metric": metric}


def _improvement_rows(mkey, results, groups, value):
    """After a DAB-Net method: DAB-Net minus XNOR-Net per family and dataset where both exist."""
    paper, weights, variant, rank, tag = mkey
    if paper != 1 or PAPER_BINARIZERS[rank] != "dab":
        return []
    activation = tag[len("dab"):]
    xnor_key = (1, weights, variant, PAPER_BINARIZERS.index("xnor"), "xnor" + activation)
    rows = []
    for (key, family, settings), (row, members) in results.items():
        if key != mkey:
            continue
        cells = {}
        for dataset, chosen in members.items():
            xnor = [s for (k, f, d, s) in groups if k == xnor_key and f == family and d == dataset]
            # the XNOR-Net run of the same settings, else the only one there is
            other = chosen if chosen in xnor else (xnor[0] if len(xnor) == 1 else None)
            if other is None:
                continue
            xnor_mean = _stats([run[value] for run in groups[(xnor_key, family, dataset, other)]])["mean"]
            cells[dataset] = {"mean": row["cells"][dataset]["mean"] - xnor_mean, "std": None, "n": None,
                              "unfinished": row["cells"][dataset]["unfinished"]}
        if cells:
            label = row["method"].replace("DAB-Net", "XNOR-Net vs DAB-Net", 1)
            label = label.replace(" ", ": ", 1)  # "WBin: XNOR-Net vs DAB-Net"
            rows.append({"method": label, "model": row["model"], "settings": row["settings"],
                         "kind": "improvement", "cells": cells})
    return rows


def _cell_text(cell, kind):
    if cell is None:
        return "–"
    dagger = " †" if cell["unfinished"] else ""
    if kind == "improvement":
        return f"{cell['mean']:+.2f}{dagger}"
    spread = f" ± {cell['std']:.2f}" if cell["std"] is not None else ""
    return f"{cell['mean']:.2f}{spread} (n={cell['n']}){dagger}"


def _markdown_table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(x) for x in line) + " |" for line in lines]
    return out


def table_markdown(table):
    """The table as markdown lines: method shown on the first row of its group."""
    header = ["Method", "Model"] + [DATASET_NAMES.get(d, d) for d in table["datasets"]]
    lines, previous = [], None
    for row in table["rows"]:
        model = row["model"] + (f" [{row['settings']}]" if row["settings"] else "")
        method = row["method"] if row["method"] != previous else ""
        previous = row["method"]
        if row["kind"] == "improvement":
            method, model = f"*{method}*" if method else "", f"*{model}*"
        lines.append([method, model] + [_cell_text(row["cells"].get(d), row["kind"]) for d in table["datasets"]])
    return _markdown_table(header, lines)


def _fmt(value, digits=2):
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _csv_value(value):
    """CSV text: floats at full (round-trip) precision, None as empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return repr(value) if isinstance(value, float) else str(value)


# -------------------------------------------------------------------------------------------- figures

def _figure(title, xlabel, ylabel):
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": every PNG is exactly 600 x 400 px
    return path


def _legend(ax, count):
    ax.legend(fontsize=7 if count <= 8 else 5, ncol=1 if count <= 8 else 2, loc="best")


def _group_label(run):
    """A short name for the runs that differ only in their seed (the legend entry of many runs)."""
    parts = [DATASET_NAMES.get(run["dataset"], run["dataset"]), run["model"]]
    parts += [] if run["binarizer"] == "-" else [run["binarizer"]]
    parts += [] if run["activation"] in ("-", "sign") else [run["activation"]]
    return " ".join(parts)


def plot_curves(runs, key, title, ylabel, path):
    """One line per run of ``key`` (a metrics.csv column) over epochs; runs without it are left out.

    Up to MAX_LEGEND runs: a colour and legend entry per run. More: one colour and one legend entry per
    seed group (dataset, model, binarizer, activation, bin layers, epochs), so the legend stays readable.
    """
    fig, ax = _figure(title, "epoch", ylabel)
    shown = [run for run in runs if any(not math.isnan(row.get(key, math.nan)) for row in run["metrics"])]
    by_group = len(shown) > MAX_LEGEND
    groups = {}
    for run in shown:
        groups.setdefault((_group_label(run), _settings(run), run["weights"]) if by_group else id(run), []).append(run)
    labelled = set()
    for i, (group, members) in enumerate(groups.items()):
        style = ("-", "--", ":", "-.")[(i // 10) % 4]  # the 10 colours of the cycle, then a new line style
        for run in members:
            x, y = zip(*[(row["epoch"], row[key]) for row in run["metrics"] if not math.isnan(row.get(key, math.nan))])
            if by_group:
                label = f"{_group_label(run)} (n={len(members)})"
                label = f"{label} [{run['bin_layers']}, {run['epochs']} ep]" if label in labelled else label
            else:
                label = run["label"] + ("" if run["finished"] else " (unfinished)")
            ax.plot(x, y, style, marker="o" if len(x) < 12 else None, markersize=3, linewidth=1.2,
                    color=f"C{i % 10}", label=label if run is members[0] else None)
            labelled.add(label)
    if shown:
        _legend(ax, len(groups))
    else:
        ax.text(0.5, 0.5, f"no run logged {key}", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def _load_npz(path, keys):
    """{key: array} of ``keys`` from one epoch's npz; RunError when it is unreadable or lacks one."""
    try:
        with np.load(path) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise RunError(f"{os.path.basename(path)} lacks {', '.join(missing)}")
            return {k: np.asarray(data[k], dtype=np.float64) for k in keys}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise RunError(f"unreadable {os.path.basename(path)}: {exc}") from None


def read_filters(folder):
    """The DAB layers and epoch files of a ``filters/`` folder: ``(layers, [(epoch, path)])``.

    Layers are layers.json's entries with method "dab" and n > 0 (convs in index order, then the rest).
    RunError when layers.json is corrupt or no epoch file exists.
    """
    layers = _read_json(os.path.join(folder, "layers.json"), "filters/layers.json")
    if not isinstance(layers, list) or not all(isinstance(x, dict) and "tag" in x and "n" in x for x in layers):
        raise RunError("corrupt filters/layers.json: not a list of layers with tag and n")
    dab = [x for x in layers if x.get("method") == "dab" and x["n"]]
    dab.sort(key=lambda x: (x.get("index") is None, x.get("index") or 0))
    epochs = []
    for name in sorted(os.listdir(folder)):
        match = re.fullmatch(r"epoch_(\d+)\.npz", name)
        if match:
            epochs.append((int(match.group(1)), os.path.join(folder, name)))
    if not epochs:
        raise RunError("no filters/epoch_*.npz")
    return dab, sorted(epochs)


def plot_filters(run, out_folder):
    """alpha_beta.png, k_over_training.png and k_across_layers.png of a DAB run; [] when it has no DAB
    layer. RunError when a filters/ file is unreadable (nothing is written then)."""
    layers, epochs = read_filters(run["filters"])
    if not layers:
        return []
    layer = layers[len(layers) // 2]  # the middle DAB layer: neither the first conv nor the last
    tag, n = layer["tag"], float(layer["n"])
    keys = [f"{tag}_alpha", f"{tag}_beta", f"{tag}_k"]
    series = [_load_npz(path, keys) for _, path in epochs]
    count = len(series[-1][keys[2]])
    if count == 0 or any(len(s[k]) != count for s in series for k in keys):
        raise RunError(f"filters of {tag} change size across epochs")
    chosen = sorted(set(np.linspace(0, count - 1, min(FILTERS_SHOWN, count)).round().astype(int).tolist()))
    x = [epoch for epoch, _ in epochs]
    last = _load_npz(epochs[-1][1], [f"{item['tag']}_k" for item in layers])
    written = []
    os.makedirs(out_folder, exist_ok=True)

    fig, ax = _figure(f"{run['label']}: DAB code of {tag} ({layer.get('name', tag)})", "epoch",
                      "value (weight units)")
    for i, f in enumerate(chosen):
        ax.plot(x, [s[keys[0]][f] for s in series], "-", color=f"C{i}", label=f"filter {f} alpha")
        ax.plot(x, [s[keys[1]][f] for s in series], "--", color=f"C{i}", label=f"filter {f} beta")
    _legend(ax, 2 * len(chosen))
    written.append(_save(fig, os.path.join(out_folder, "alpha_beta.png")))

    fig, ax = _figure(f"{run['label']}: K/n of {tag} filters over training", "epoch",
                      "K/n (fraction of weights at alpha)")
    for i, f in enumerate(chosen):
        ax.plot(x, [s[keys[2]][f] / n for s in series], "-", color=f"C{i}", label=f"filter {f}")
    ax.plot(x, [float(np.mean(s[keys[2]])) / n for s in series], ":", color="black", label=f"{tag} mean")
    ax.set_ylim(0, 1.02)
    _legend(ax, len(chosen) + 1)
    written.append(_save(fig, os.path.join(out_folder, "k_over_training.png")))

    fig, ax = _figure(f"{run['label']}: K/n per layer at epoch {x[-1]}", "layer", "K/n (fraction of weights at alpha)")
    data = [last[f"{item['tag']}_k"] / float(item["n"]) for item in layers]
    ax.boxplot(data, showfliers=True, flierprops={"markersize": 2}, label="filters of the layer")
    ax.set_xticks(range(1, len(layers) + 1), [item["tag"] for item in layers],
                  rotation=90 if len(layers) > 8 else 0, fontsize=7 if len(layers) > 8 else 9)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="best")
    written.append(_save(fig, os.path.join(out_folder, "k_across_layers.png")))
    return written


def _read_losses(path, what):
    rows = _read_json(path, what)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("rmse"), (int, float))
                                             for r in rows):
        raise RunError(f"corrupt {what}: not a list of layers with rmse")
    return rows


def plot_binarization(run, path):
    """binarization_rmse.png: RMSE per layer, a panel for input and one for weight binarization."""
    panels = [("input", "input (activation) binarization error", "RMSE (input units)"),
              ("weight", "conv output error of binarized weights", "RMSE (output units)")]
    present = [(key, title, unit, _read_losses(run["losses"][key], os.path.basename(run["losses"][key])))
               for key, title, unit in panels if key in run["losses"]]
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    fig.suptitle(f"{run['label']}: binarization RMSE per layer (val set)", fontsize=10)
    for i, (key, title, unit, rows) in enumerate(present):
        ax = fig.add_subplot(len(present), 1, i + 1)
        labels = [f"conv{r['index']:02d}" if isinstance(r.get("index"), int) else str(r.get("name", "?"))
                  for r in rows]
        ax.bar(range(len(rows)), [r["rmse"] for r in rows], color=f"C{i}", label=title)
        ax.set_xticks(range(len(rows)), labels, rotation=90 if len(rows) > 8 else 0, fontsize=7)
        ax.set_xlabel("layer")
        ax.set_ylabel(unit, fontsize=8)
        ax.legend(fontsize=7, loc="best")
        ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------- report

def _folder_names(runs):
    """A distinct, file-system safe folder name per run (its name, then -2, -3... for repeats)."""
    used = {}
    for run in runs:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", run["run"]).strip(".") or "run"
        used[base] = used.get(base, 0) + 1
        run["label"] = base if used[base] == 1 else f"{base}-{used[base]}"


def _run_order(run):
    return (_dataset_key(run["dataset"]), _family_key(run["family"]), method_key(run)[0], run["model"],
            (0, run["seed"], "") if isinstance(run["seed"], int) else (1, 0, str(run["seed"])), run["run"],
            run["folder"])


def _write_results_csv(runs, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(RUN_FIELDS)
        for run in runs:
            writer.writerow([_csv_value(run[key]) for key in RUN_FIELDS])


def _write_table_csv(tables, path):
    datasets = tables[0]["datasets"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "method", "model", "settings", "kind"] +
                        [f"{d}_{part}" for d in datasets for part in ("mean", "std", "n", "unfinished")])
        for table in tables:
            for row in table["rows"]:
                cells = []
                for d in datasets:
                    cell = row["cells"].get(d)
                    cells += ["", "", "", ""] if cell is None else \
                        [_csv_value(cell["mean"]), _csv_value(cell["std"]), _csv_value(cell["n"]),
                         _csv_value(cell["unfinished"])]
                writer.writerow([f"{table['metric']}_top1", row["method"], row["model"], row["settings"],
                                 row["kind"]] + cells)


def _write_markdown(runs, tables, skipped, figures, out_dir, path):
    metric_names = {"final": "final val top-1 (%, last epoch)", "best": "best val top-1 (%, best epoch)"}
    lines = ["# Results", "",
             f"{len(runs)} runs ({sum(r['finished'] for r in runs)} finished), {len(skipped)} skipped.", ""]
    for i, table in enumerate(tables):
        lines += [f"## {'Table' if i == 0 else 'The same table'}: {metric_names[table['metric']]}", ""]
        lines += table_markdown(table)
        lines.append("")
    lines += ["Cells: mean ± sample standard deviation (n = runs that differ only in their seed); one run shows "
              "its value with n=1. Italic rows: DAB-Net minus XNOR-Net in points. † a run of the cell is "
              "unfinished (no final.json: its last and best logged epochs).", "", "## Runs", ""]
    header = ["Run", "Folder", "Dataset", "Model", "Weights", "Binarizer", "Bin layers", "Activation", "Seed",
              "Epochs", "Done", "Best top-1", "Final top-1", "Best top-5", "Final top-5", "s/epoch"]
    lines += _markdown_table(header, [
        [r["run"], f"`{r['folder']}`", DATASET_NAMES.get(r["dataset"], r["dataset"]), r["model"], r["weights"],
         r["binarizer"], r["bin_layers"], r["activation"], _fmt(r["seed"]),
         f"{r['epochs_done']}/{_fmt(r['epochs'])}", "yes" if r["finished"] else "unfinished",
         _fmt(r["best_top1"]), _fmt(r["final_top1"]), _fmt(r["best_top5"]), _fmt(r["final_top5"]),
         _fmt(r["sec_per_epoch"], 1)] for r in runs])
    lines += ["", "## Skipped", ""]
    lines += [f"- `{s['path']}`: {s['reason']}" for s in skipped] or ["None."]
    lines += ["", "## Figures", ""]
    lines += [f"- [{os.path.relpath(p, out_dir)}]({os.path.relpath(p, out_dir).replace(os.sep, '/')})"
              for p in figures]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def report(run_dirs, out_dir, metric="final"):
    """Read every run in or under ``run_dirs`` and write the tables and figures to ``out_dir``.

    Returns ``{"written": [paths], "runs": [run dicts], "skipped": [{"path", "reason"}], "tables": [the
    --metric table, the other metric's]}`` (see :func:`build_table`); a run whose
    figures could not be drawn stays in the tables and is listed in skipped too ("filter figures skipped ...").
    ReportError when no RUN_DIR exists, no run is readable or ``out_dir`` cannot be made.
    """
    if metric not in ("final", "best"):
        raise ReportError(f"metric must be final or best, got {metric!r}")
    run_dirs = [os.fspath(d) for d in run_dirs]
    if not any(os.path.exists(d) for d in run_dirs):
        raise ReportError(f"no such folder: {', '.join(run_dirs) or '(none given)'}")
    folders, skipped = find_runs(run_dirs)
    runs = []
    for folder in folders:
        try:
            runs.append(read_run(folder))
        except RunError as exc:
            skipped.append({"path": folder, "reason": str(exc)})
    if not runs:
        reasons = "; ".join(f"{s['path']}: {s['reason']}" for s in skipped)
        raise ReportError(f"no readable run in {', '.join(run_dirs)} ({reasons})")
    out_dir = os.fspath(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot make the output folder {out_dir}: {exc.strerror or exc}") from None
    runs.sort(key=_run_order)
    _folder_names(runs)

    figures = [plot_curves(runs, "val_top1", "Validation top-1 accuracy", "val top-1 (%)",
                           os.path.join(out_dir, "curves_val_top1.png")),
               plot_curves(runs, "train_loss", "Training loss", "train loss (NLL, nats)",
                           os.path.join(out_dir, "curves_train_loss.png"))]
    for run in runs:
        folder = os.path.join(out_dir, run["label"])
        try:
            if run["filters"]:
                figures += plot_filters(run, folder)
        except RunError as exc:
            skipped.append({"path": run["folder"], "reason": f"filter figures skipped (run kept in the tables): {exc}"})
        try:
            if run["losses"]:
                os.makedirs(folder, exist_ok=True)
                figures.append(plot_binarization(run, os.path.join(folder, "binarization_rmse.png")))
        except RunError as exc:
            skipped.append({"path": run["folder"], "reason": f"binarization_rmse.png skipped (run kept in the tables): "
                                                             f"{exc}"})

    other = "best" if metric == "final" else "final"
    tables = [build_table(runs, metric), build_table(runs, other)]
    paths = {name: os.path.join(out_dir, name) for name in ("results.csv", "results_table.csv", "results.md")}
    _write_results_csv(runs, paths["results.csv"])
    _write_table_csv(tables, paths["results_table.csv"])
    _write_markdown(runs, tables, skipped, figures, out_dir, paths["results.md"])
    return {"written": list(paths.values()) + figures, "runs": runs, "skipped": skipped, "tables": tables}


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and exit status 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv=None):
    """The CLI; returns the exit status (0, or 2 with one line on stderr)."""
    p = _Parser(prog="python -m analysis.report",
                description="Tables (results.md, results.csv, results_table.csv) and figures from training runs.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding them at any depth")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="where to write (created if needed)")
    p.add_argument("--metric", default="final", choices=("final", "best"),
                   help="top-1 of the main table: the last epoch's (final) or the best epoch's")
    args = p.parse_args(argv)
    try:
        result = report(args.run_dirs, args.out, metric=args.metric)
    except ReportError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output file that cannot be written
        print(f"{p.prog}: error: cannot write {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    runs = result["runs"]
    print(f"{len(runs)} runs ({sum(r['finished'] for r in runs)} finished, "
          f"{sum(not r['finished'] for r in runs)} unfinished)")
    for s in result["skipped"]:
        print(f"skipped {s['path']}: {s['reason']}")
    relative = [os.path.relpath(path, args.out) for path in result["written"]]
    top = [path for path in relative if os.sep not in path]
    per_run = len(result["written"]) - len(top)
    print(f"wrote {len(result['written'])} files to {args.out}: {', '.join(top)}"
          + (f" and {per_run} figures in per-run folders" if per_run else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
