"""The results tables of a set of run records (see analysis.runs): the paper-style table, the per-run
table, and the files that hold them (``results.csv``, ``results_table.csv``, ``results.md``).

The paper-style table: one column per dataset; rows grouped by method in the paper's order (Full
precision; WBin XNOR-Net; WBin DAB-Net; FBin XNOR-Net; FBin DAB-Net; Hybrid ...; then the other
binarizers), one row per model family (the registry's family of the run's model). Runs that differ only
in ``manualSeed`` (same dataset, model, weights, binarizer, activation, bin layers, epochs) form one
cell, ``mean ± std (n=K)`` with the sample standard deviation (n - 1), or ``value (n=1)``; a cell holding
an unfinished run is marked with a dagger. When one (method, family, dataset) has several such groups
(e.g. two bin ranges), the family gets one row per setting, labelled by the settings that differ. The
improvement row after each DAB-Net group is DAB-Net minus XNOR-Net in points (signed), per family and
dataset where both exist (same weights variant and activation; same settings where there is a choice).
"""

import csv
import os
import statistics

from analysis.runs import DATASET_NAMES, setting_of

__all__ = ["RUN_FIELDS", "method_key", "run_order", "build_table", "table_markdown", "write_results_csv",
           "write_table_csv", "write_markdown"]

RUN_FIELDS = ["run", "folder", "dataset", "model", "family", "weights", "binarizer", "bin_layers", "activation",
              "seed", "epochs", "epochs_done", "finished", "best_top1", "final_top1", "best_top5", "final_top5",
              "sec_per_epoch", "val_images"]
DATASET_ORDER = ["tuberlin", "sketchyrecognition"]  # the paper's columns first, then alphabetical
FAMILY_ORDER = ["sketchanet", "resnet", "googlenet", "alexnet", "squeezenet"]
BINARIZER_NAMES = {"dab": "DAB-Net", "xnor": "XNOR-Net", "bnn": "BNN", "sign": "sign"}
PAPER_BINARIZERS = ["xnor", "dab"]  # the paper's two, in its row order
WEIGHTS_ORDER = {"fp": 0, "wbin": 1, "fbin": 2, "hybrid": 3, "abin": 4}
METRIC_NAMES = {"final": "final val top-1 (%, last epoch)", "best": "best val top-1 (%, best epoch)"}


def method_key(run):
    """Sort key and label of a run's method: the paper's rows first, in its order, then the others."""
    weights, binarizer, activation = run["weights"], run["binarizer"], run["activation"]
    if weights == "fp":
        return (0, 0, "", 0, ""), "Full precision"
    label = f"{run['weights_label']} " + ("real weights" if binarizer == "-"
                                          else BINARIZER_NAMES.get(binarizer, binarizer))
    if activation not in ("-", "sign"):
        label += f" ({activation} activation)"
    paper = binarizer in PAPER_BINARIZERS
    rank = PAPER_BINARIZERS.index(binarizer) if paper else 0
    return (1 if paper else 2, WEIGHTS_ORDER[weights], run["weights_label"], rank, binarizer + activation), label


def _family_key(family):
    return (FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER), family)


def _dataset_key(dataset):
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), dataset)


def run_order(run):
    """Sort key of the runs: dataset, family, method, model, seed, name, folder."""
    seed = run["seed"]
    return (_dataset_key(run["dataset"]), _family_key(run["family"]), method_key(run)[0], run["model"],
            (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed)), run["run"], run["folder"])


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


def _group(runs):
    """Seed groups ``{(method key, family, dataset, setting): runs}``, method labels ``{method key: label}``
    and family labels ``{family: label}``."""
    groups, labels, families = {}, {}, {}
    for run in runs:
        key, label = method_key(run)
        labels[key] = label
        families.setdefault(run["family"], run["family_label"])
        groups.setdefault((key, run["family"], run["dataset"], setting_of(run)), []).append(run)
    return groups, labels, families


def _row_settings(per_dataset):
    """The rows of one (method, family): ``(varying settings, [setting or None])``; one row (None) unless a
    dataset holds several seed groups, then one per setting."""
    if not any(len(s) > 1 for s in per_dataset.values()):
        return set(), [None]
    every = [s for ss in per_dataset.values() for s in ss]
    varying = {name for i, name in enumerate(("model", "layers", "epochs")) if len({s[i] for s in every}) > 1}
    return varying, sorted(set(every), key=str)


def _result_row(groups, mkey, family, per_dataset, settings, value):
    """``(cells, members)`` of one result row: the cell per dataset and the seed group's setting it shows."""
    cells, members = {}, {}
    for dataset, options in per_dataset.items():
        chosen = options[0] if settings is None else (settings if settings in options else None)
        if chosen is None:
            continue
        group = groups[(mkey, family, dataset, chosen)]
        cells[dataset] = dict(_stats([run[value] for run in group]), unfinished=any(not r["finished"] for r in group))
        members[dataset] = chosen
    return cells, members


def build_table(runs, metric):
    """The paper-style table: ``{"datasets": [...], "rows": [...], "metric": metric}``, rows in print order.

    Each row: method, model (family label), settings (label, empty unless needed), kind ("result" or
    "improvement") and cells ``{dataset: {"mean", "std", "n", "unfinished"}}`` of ``metric`` top-1.
    """
    value = f"{metric}_top1"
    groups, labels, families = _group(runs)
    rows_of = {}  # (method key, family) -> {dataset: [settings]}
    for mkey, family, dataset, settings in groups:
        rows_of.setdefault((mkey, family), {}).setdefault(dataset, []).append(settings)
    rows = []
    for mkey in sorted({mkey for mkey, _ in rows_of}):
        results = {}
        for family in sorted({f for m, f in rows_of if m == mkey}, key=_family_key):
            per_dataset = rows_of[(mkey, family)]
            varying, row_settings = _row_settings(per_dataset)
            for settings in row_settings:
                cells, members = _result_row(groups, mkey, family, per_dataset, settings, value)
                row = {"method": labels[mkey], "model": families[family],
                       "settings": _settings_label(settings, varying) if settings else "",
                       "kind": "result", "cells": cells}
                rows.append(row)
                results[(family, settings)] = (row, members)
        rows.extend(_improvement_rows(mkey, results, groups, value))
    return {"datasets": sorted({run["dataset"] for run in runs}, key=_dataset_key), "rows": rows, "metric": metric}


def _improvement_cells(row, members, xnor_key, family, groups, value):
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
    return cells


def _improvement_rows(mkey, results, groups, value):
    """After a DAB-Net method: DAB-Net minus XNOR-Net per family and dataset where both exist."""
    paper, weights, variant, rank, tag = mkey
    if paper != 1 or PAPER_BINARIZERS[rank] != "dab":
        return []
    activation = tag[len("dab"):]
    xnor_key = (1, weights, variant, PAPER_BINARIZERS.index("xnor"), "xnor" + activation)
    rows = []
    for (family, _), (row, members) in results.items():
        cells = _improvement_cells(row, members, xnor_key, family, groups, value)
        if cells:
            label = row["method"].replace("DAB-Net", "XNOR-Net vs DAB-Net", 1)
            label = label.replace(" ", ": ", 1)  # "WBin: XNOR-Net vs DAB-Net"
            rows.append({"method": label, "model": row["model"], "settings": row["settings"],
                         "kind": "improvement", "cells": cells})
    return rows


# ------------------------------------------------------------------------------------------ as text

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


def write_results_csv(runs, path):
    """results.csv: one row of RUN_FIELDS per run, floats at full precision."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(RUN_FIELDS)
        for run in runs:
            writer.writerow([_csv_value(run[key]) for key in RUN_FIELDS])


def write_table_csv(tables, path):
    """results_table.csv: the rows of ``tables`` (the first table's datasets) with mean, std, n and
    unfinished columns per dataset."""
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
                        [_csv_value(cell[part]) for part in ("mean", "std", "n", "unfinished")]
                writer.writerow([f"{table['metric']}_top1", row["method"], row["model"], row["settings"],
                                 row["kind"]] + cells)


def _runs_markdown(runs):
    header = ["Run", "Folder", "Dataset", "Model", "Weights", "Binarizer", "Bin layers", "Activation", "Seed",
              "Epochs", "Done", "Best top-1", "Final top-1", "Best top-5", "Final top-5", "s/epoch"]
    return _markdown_table(header, [
        [r["run"], f"`{r['folder']}`", r["dataset_label"], r["model"], r["weights"], r["binarizer"],
         r["bin_layers"], r["activation"], _fmt(r["seed"]), f"{r['epochs_done']}/{_fmt(r['epochs'])}",
         "yes" if r["finished"] else "unfinished", _fmt(r["best_top1"]), _fmt(r["final_top1"]),
         _fmt(r["best_top5"]), _fmt(r["final_top5"]), _fmt(r["sec_per_epoch"], 1)] for r in runs])


def write_markdown(runs, tables, skipped, figures, out_dir, path):
    """results.md: the tables, the per-run table, the skipped runs with their reasons and links to the
    figures (paths relative to ``out_dir``)."""
    lines = ["# Results", "",
             f"{len(runs)} runs ({sum(r['finished'] for r in runs)} finished), {len(skipped)} skipped.", ""]
    for i, table in enumerate(tables):
        lines += [f"## {'Table' if i == 0 else 'The same table'}: {METRIC_NAMES[table['metric']]}", ""]
        lines += table_markdown(table) + [""]
    lines += ["Cells: mean ± sample standard deviation (n = runs that differ only in their seed); one run shows "
              "its value with n=1. Italic rows: DAB-Net minus XNOR-Net in points. † a run of the cell is "
              "unfinished (no final.json: its last and best logged epochs).", "", "## Runs", ""]
    lines += _runs_markdown(runs)
    lines += ["", "## Skipped", ""]
    lines += [f"- `{s['path']}`: {s['reason']}" for s in skipped] or ["None."]
    lines += ["", "## Figures", ""]
    lines += [f"- [{os.path.relpath(p, out_dir)}]({os.path.relpath(p, out_dir).replace(os.sep, '/')})"
              for p in figures]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
