"""The results tables of a set of run records (see analysis.runs): the paper-style table, the paired
comparisons, the configurations, the per-run table, and the files that hold them (``results.csv``,
``results_table.csv``, ``comparisons.csv``, ``results.md``).

The paper-style table: one column per dataset; rows grouped by method in the paper's order (Full
precision; WBin XNOR-Net; WBin DAB-Net; FBin XNOR-Net; FBin DAB-Net; Hybrid ...; then the other
binarizers), one row per model family (the registry's family of the run's model) and recipe. A cell is one
configuration (analysis.runs.configuration: everything in args.json but the seed and what cannot change
results): ``mean ± std (n=K)`` over its runs, one per seed, with the sample standard deviation (n - 1), or
``value (n=1)``; runs repeating a seed of their configuration are duplicates, flagged ("+1 duplicate") and
never counted; a cell holding an unfinished run is marked with a dagger. Configurations are never pooled:
each row's Settings column names the settings in which its configuration differs from the other rows'
(e.g. ``epochs=1, inpsize=8``), so rows of different recipes are told apart. The improvement row after each
DAB-Net row is DAB-Net minus XNOR-Net paired by seed (analysis.stats), where an XNOR-Net configuration equal
but for the weight binarizer exists.
"""

import csv
import json
import os
import statistics

from analysis.runs import DATA_KEYS, DATASET_NAMES, config_groups, settings_labels, value_text
from analysis.stats import PARTS, compare, differing_part

__all__ = ["RUN_FIELDS", "COMPARISON_FIELDS", "method_key", "run_order", "row_kind", "build_table",
           "table_markdown", "write_results_csv", "write_table_csv", "write_comparisons_csv", "write_markdown"]

RUN_FIELDS = ["run", "folder", "dataset", "model", "family", "weights", "binarizer", "bin_layers", "activation",
              "seed", "epochs", "epochs_done", "finished", "best_top1", "final_top1", "best_top5", "final_top5",
              "sec_per_epoch", "val_images", "config", "duplicate_of"]
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
        return (0, 0, "", 0, ("", "")), "Full precision"
    label = f"{run['weights_label']} " + ("real weights" if binarizer == "-"
                                          else BINARIZER_NAMES.get(binarizer, binarizer))
    if activation not in ("-", "sign"):
        label += f" ({activation} activation)"
    paper = binarizer in PAPER_BINARIZERS
    rank = PAPER_BINARIZERS.index(binarizer) if paper else 0
    # (binarizer, activation) as a pair: "sign" sorts before its extensions "sign+wsd", "sign+wsd+ede"
    return (1 if paper else 2, WEIGHTS_ORDER[weights], run["weights_label"], rank, (binarizer, activation)), label


def _family_key(family):
    return (FAMILY_ORDER.index(family) if family in FAMILY_ORDER else len(FAMILY_ORDER), family)


def _dataset_key(dataset):
    return (DATASET_ORDER.index(dataset) if dataset in DATASET_ORDER else len(DATASET_ORDER), dataset)


def run_order(run):
    """Sort key of the runs: dataset, family, method, model, seed, name, folder."""
    seed = run["seed"]
    return (_dataset_key(run["dataset"]), _family_key(run["family"]), method_key(run)[0], run["model"],
            (0, seed, "") if isinstance(seed, int) else (1, 0, str(seed)), run["run"], run["folder"])


def _stats(values):
    """mean, sample std (None for one value) and n."""
    mean = statistics.fmean(values)
    return {"mean": mean, "std": statistics.stdev(values) if len(values) > 1 else None, "n": len(values)}


def row_kind(group):
    """The (method, model family) of a configuration group: the rows of the table that share a label."""
    run = group["runs"][0]
    return method_key(run)[0], run["family"]


def _cell(group, value):
    """A result cell: the statistics of the group's counted runs (one per seed), its duplicates and id."""
    return dict(_stats([run[value] for run in group["runs"]]), duplicates=len(group["duplicates"]),
                unfinished=any(not run["finished"] for run in group["runs"]), config=group["config_id"])


def _data_text(group):
    """What names a group's data: its fingerprint, else its folder."""
    config = group["config"]
    return value_text(config.get("facts.data_fingerprint", config.get("data_dir")))


def _table_rows(groups):
    """``[(kind, split, {dataset: group})]``: the groups of one method, family and recipe (the configuration
    less its data, DATA_KEYS) side by side; groups that differ only in their data (two copies of one
    dataset) get a row each, ``split`` True."""
    rows = {}
    for group in groups:
        recipe = {key: value for key, value in group["config"].items() if key not in DATA_KEYS}
        key = (row_kind(group), json.dumps(recipe, sort_keys=True, default=str))
        rows.setdefault(key, {}).setdefault(group["runs"][0]["dataset"], []).append(group)
    out = []
    for (kind, _), per_dataset in rows.items():
        depth = max(len(members) for members in per_dataset.values())
        for i in range(depth):
            cells = {dataset: members[i] for dataset, members in per_dataset.items() if i < len(members)}
            out.append((kind, depth > 1, cells))
    return out


def build_table(runs, metric, groups=None):
    """The paper-style table: ``{"datasets": [...], "rows": [...], "metric": metric}``, rows in print order.

    Each row: method, model (family label), settings (the settings in which its configuration differs from
    the other rows', see analysis.runs.settings_labels), kind ("result" or "improvement") and cells
    ``{dataset: cell}``. A result cell: ``{"mean", "std", "n", "duplicates", "unfinished", "config"}`` of
    ``metric`` top-1 over one configuration's runs, one per seed. An improvement cell: the paired comparison
    DAB-Net minus XNOR-Net (analysis.stats): ``{"mean", "std" (of the differences), "n" (pairs), "low",
    "high", "interval", "verdict", "only_a", "only_b", "unfinished"}``. ``groups``: the runs'
    configuration groups (computed when not given).
    """
    groups = config_groups(runs) if groups is None else groups
    labels = settings_labels(groups, kind=row_kind)
    value, rows, titles, families = f"{metric}_top1", [], {}, {}
    for group in groups:
        run = group["runs"][0]
        titles[row_kind(group)[0]] = method_key(run)[1]
        families.setdefault(run["family"], run["family_label"])
    table_rows = sorted(_table_rows(groups), key=lambda r: (r[0][0], _family_key(r[0][1]),
                                                            min(run_order(g["runs"][0]) for g in r[2].values())))
    for mkey in sorted({kind[0] for kind, _, _ in table_rows}):
        results = []
        for (key, family), split, members in table_rows:
            if key != mkey:
                continue
            first = next(iter(members.values()))
            settings = labels[first["config_id"]]
            if split:
                data = ", ".join(sorted({_data_text(g) for g in members.values()}))
                settings = f"{settings}, data={data}" if settings else f"data={data}"
            row = {"method": titles[mkey], "model": families[family], "settings": settings, "kind": "result",
                   "cells": {dataset: _cell(group, value) for dataset, group in members.items()}}
            rows.append(row)
            results.append((row, members))
        rows.extend(_improvement_rows(mkey, results, groups, metric))
    datasets = sorted({run["dataset"] for run in runs}, key=_dataset_key)
    return {"datasets": datasets, "rows": rows, "metric": metric}


def _xnor_of(group, groups):
    """The XNOR-Net group whose configuration differs from ``group``'s in the weight binarizer only."""
    for other in groups:
        if other["runs"][0]["binarizer"] == "xnor" and differing_part(group["config"], other["config"]) \
                == "weight binarizer":
            return other
    return None


def _improvement_rows(mkey, results, groups, metric):
    """After a DAB-Net method: per row and dataset, DAB-Net minus XNOR-Net paired by seed (analysis.stats),
    where an XNOR-Net configuration equal but for the weight binarizer exists."""
    paper, _, _, rank, _ = mkey
    if paper != 1 or PAPER_BINARIZERS[rank] != "dab":
        return []
    rows = []
    for row, members in results:
        cells = {}
        for dataset, group in members.items():
            xnor = _xnor_of(group, groups)
            if xnor is not None:
                found = compare(group, xnor, "weight binarizer")
                interval = found[metric]
                cells[dataset] = {"mean": interval["mean"], "std": interval["sd"], "n": interval["n"],
                                  "low": interval["low"], "high": interval["high"], "interval": interval["method"],
                                  "verdict": interval["verdict"], "only_a": found["only_a"],
                                  "only_b": found["only_b"], "unfinished": found["unfinished"]}
        if cells:
            label = row["method"].replace("DAB-Net", "XNOR-Net vs DAB-Net", 1)
            label = label.replace(" ", ": ", 1)  # "WBin: XNOR-Net vs DAB-Net"
            rows.append({"method": label, "model": row["model"], "settings": row["settings"],
                         "kind": "improvement", "cells": cells})
    return rows


# ------------------------------------------------------------------------------------------ as text

VERDICT_WORDS = {"A > B": "{a} > {b}", "A < B": "{a} < {b}"}


def _interval_text(interval, a="A", b="B"):
    """"+1.20 [+0.40, +2.00] (5 pairs, t): A > B"; the verdict alone where there is no interval."""
    if interval["n"] == 0:
        return interval["verdict"]
    verdict = VERDICT_WORDS.get(interval["verdict"], interval["verdict"]).format(a=a, b=b)
    if interval["low"] is None:
        return f"{interval['mean']:+.2f} (1 pair): {verdict}"
    return (f"{interval['mean']:+.2f} [{interval['low']:+.2f}, {interval['high']:+.2f}] ({interval['n']} pairs, "
            f"{interval['interval']}): {verdict}")


def _cell_text(cell, kind):
    if cell is None:
        return "–"
    dagger = " †" if cell["unfinished"] else ""
    if kind == "improvement":
        return _interval_text(cell, "DAB", "XNOR") + dagger
    spread = f" ± {cell['std']:.2f}" if cell["std"] is not None else ""
    duplicates = cell["duplicates"]
    flag = f" +{duplicates} duplicate{'s' if duplicates > 1 else ''}" if duplicates else ""
    return f"{cell['mean']:.2f}{spread} (n={cell['n']}{flag}){dagger}"


def _markdown_table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(x) for x in line) + " |" for line in lines]
    return out


def table_markdown(table):
    """The table as markdown lines: method shown on the first row of its group."""
    header = ["Method", "Model", "Settings"] + [DATASET_NAMES.get(d, d) for d in table["datasets"]]
    lines, previous = [], None
    for row in table["rows"]:
        method, model, settings = row["method"] if row["method"] != previous else "", row["model"], row["settings"]
        previous = row["method"]
        if row["kind"] == "improvement":
            method, model = f"*{method}*" if method else "", f"*{model}*"
        lines.append([method, model, settings or "–"] +
                     [_cell_text(row["cells"].get(d), row["kind"]) for d in table["datasets"]])
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
    """CSV text: floats at full (round-trip) precision, None as empty, lists as space-separated values."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        return " ".join(_csv_value(x) for x in value)
    return repr(value) if isinstance(value, float) else str(value)


def write_results_csv(runs, path):
    """results.csv: one row of RUN_FIELDS per run, floats at full precision (``config``: its configuration's
    id; ``duplicate_of``: for a run repeating a seed of its configuration, the run that counts)."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(RUN_FIELDS)
        for run in runs:
            writer.writerow([_csv_value(run["config_id"] if key == "config" else run.get(key)) for key in RUN_FIELDS])


CELL_PARTS = ("mean", "std", "n", "duplicates", "unfinished", "low", "high", "verdict")


def write_table_csv(tables, path):
    """results_table.csv: the rows of ``tables`` (the first table's datasets) with CELL_PARTS columns per
    dataset (an improvement row: the mean paired difference, the sd of the differences, the number of pairs,
    the 95% interval and the verdict)."""
    datasets = tables[0]["datasets"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["metric", "method", "model", "settings", "kind"] +
                        [f"{d}_{part}" for d in datasets for part in CELL_PARTS])
        for table in tables:
            for row in table["rows"]:
                cells = []
                for d in datasets:
                    cell = row["cells"].get(d) or {}
                    cells += [_csv_value(cell.get(part)) for part in CELL_PARTS]
                writer.writerow([f"{table['metric']}_top1", row["method"], row["model"], row["settings"],
                                 row["kind"]] + cells)


# ------------------------------------------------------------------------------------ paired comparisons

COMPARISON_FIELDS = ["dataset", "model", "part", "a_config", "b_config", "a_method", "b_method", "a", "b",
                     "settings", "pairs", "seeds", "only_a_seeds", "only_b_seeds", "unfinished"] + \
    [f"{metric}_{part}" for metric in ("final", "best")
     for part in ("mean", "sd", "low", "high", "interval", "t_low", "t_high", "verdict")]


def _side_text(found, side):
    """What one side of a comparison sets in its part: "binarizer=dab" (options; facts where no option)."""
    config, other = found[side]["config"], found["b" if side == "a" else "a"]["config"]
    keys = sorted(key for key in PARTS[found["part"]] if config.get(key, ...) != other.get(key, ...))
    shown = [key for key in keys if not key.startswith("facts.")] or keys
    return ", ".join(f"{key}={value_text(config.get(key))}" for key in shown)


def _comparison_record(found, labels):
    a, b = found["a"], found["b"]
    record = {"dataset": a["runs"][0]["dataset"], "model": a["runs"][0]["family_label"], "part": found["part"],
              "a_config": a["config_id"], "b_config": b["config_id"], "a_method": method_key(a["runs"][0])[1],
              "b_method": method_key(b["runs"][0])[1], "a": _side_text(found, "a"), "b": _side_text(found, "b"),
              "settings": labels.get(a["config_id"], ""), "pairs": found["pairs"], "seeds": found["seeds"],
              "only_a_seeds": found["only_a"], "only_b_seeds": found["only_b"], "unfinished": found["unfinished"]}
    for metric in ("final", "best"):
        interval = found[metric]
        record.update({f"{metric}_{part}": interval[part] for part in ("mean", "sd", "low", "high", "t_low",
                                                                        "t_high", "verdict")})
        record[f"{metric}_interval"] = interval["method"]
    return record


def comparison_records(comparisons, groups):
    """The comparisons of analysis.stats as flat records (COMPARISON_FIELDS)."""
    labels = settings_labels(groups, kind=row_kind)
    return [_comparison_record(found, labels) for found in comparisons]


def write_comparisons_csv(records, path):
    """comparisons.csv: one row of COMPARISON_FIELDS per comparison, floats at full precision."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(COMPARISON_FIELDS)
        for record in records:
            writer.writerow([_csv_value(record[key]) for key in COMPARISON_FIELDS])


def _comparisons_markdown(records, metric):
    other = "best" if metric == "final" else "final"
    header = ["Dataset", "Model", "Part", "A", "B", "Settings", "Pairs", "Unpaired seeds (A; B)",
              f"{metric} top-1 A − B [95% CI]", f"{other} top-1 A − B [95% CI]"]
    lines = []
    for r in records:
        unpaired = "; ".join(" ".join(str(s) for s in r[k]) or "–" for k in ("only_a_seeds", "only_b_seeds"))
        texts = [_interval_text({"n": r["pairs"], "mean": r[f"{m}_mean"], "low": r[f"{m}_low"],
                                 "high": r[f"{m}_high"], "interval": r[f"{m}_interval"],
                                 "verdict": r[f"{m}_verdict"]}) + (" †" if r["unfinished"] else "")
                 for m in (metric, other)]
        lines.append([DATASET_NAMES.get(r["dataset"], r["dataset"]), r["model"], r["part"],
                      f"{r['a_method']}: {r['a']} (`{r['a_config']}`)",
                      f"{r['b_method']}: {r['b']} (`{r['b_config']}`)",
                      r["settings"] or "–", r["pairs"], unpaired] + texts)
    return _markdown_table(header, lines) if lines else ["No two configurations differ in one part only."]


def _configs_markdown(groups):
    labels = settings_labels(groups, kind=row_kind)
    header = ["Config", "Dataset", "Method", "Model", "Settings", "Seeds (n)", "Duplicates"]
    return _markdown_table(header, [
        [f"`{g['config_id']}`", g["runs"][0]["dataset_label"], method_key(g["runs"][0])[1],
         g["runs"][0]["family_label"], labels[g["config_id"]] or "–",
         f"{' '.join(_fmt(r['seed']) for r in g['runs'])} ({len(g['runs'])})",
         ", ".join(f"{dup['run']} (= {kept['run']})" for dup, kept in g["duplicates"]) or "–"] for g in groups])


def _runs_markdown(runs):
    header = ["Run", "Folder", "Dataset", "Model", "Weights", "Binarizer", "Bin layers", "Activation", "Seed",
              "Epochs", "Done", "Best top-1", "Final top-1", "Best top-5", "Final top-5", "s/epoch", "Config"]
    return _markdown_table(header, [
        [r["run"], f"`{r['folder']}`", r["dataset_label"], r["model"], r["weights"], r["binarizer"],
         r["bin_layers"], r["activation"], _fmt(r["seed"]), f"{r['epochs_done']}/{_fmt(r['epochs'])}",
         "yes" if r["finished"] else "unfinished", _fmt(r["best_top1"]), _fmt(r["final_top1"]),
         _fmt(r["best_top5"]), _fmt(r["final_top5"]), _fmt(r["sec_per_epoch"], 1),
         f"`{r['config_id']}`" + (f" duplicate of {r['duplicate_of']}" if r.get("duplicate_of") else "")]
        for r in runs])


NOTES = ("Cells: mean ± sample standard deviation over the runs of one configuration (everything in args.json "
         "but the seed and the options that cannot change results), one run per seed (n); a run repeating a seed "
         "of its configuration is a duplicate, flagged and not counted. Settings: the settings in which a row's "
         "configuration differs from other rows' (all other settings are equal). Italic rows: DAB-Net minus "
         "XNOR-Net in points, paired by seed: mean difference [95% interval] (pairs, t or bootstrap interval): "
         "verdict. † a run of the cell is unfinished (no final.json: its last and best logged epochs).")
COMPARISON_NOTES = ("Configurations that differ in one part only, A − B in top-1 points over the seeds both ran "
                    "(unpaired seeds are listed, never matched). 95% interval of the mean difference: Student t "
                    "from 5 pairs, else a percentile bootstrap (fixed seed; with so few pairs indicative only, the "
                    "t interval in comparisons.csv is the cautious one). A > B: the interval lies above 0.")


def write_markdown(runs, tables, skipped, figures, out_dir, path, comparisons=(), groups=()):
    """results.md: the tables, the paired comparisons (``comparisons``: comparison_records), the
    configurations (``groups``), the per-run table, the skipped runs with their reasons and links to the
    figures (paths relative to ``out_dir``)."""
    lines = ["# Results", "",
             f"{len(runs)} runs ({sum(r['finished'] for r in runs)} finished), {len(skipped)} skipped.", ""]
    for i, table in enumerate(tables):
        lines += [f"## {'Table' if i == 0 else 'The same table'}: {METRIC_NAMES[table['metric']]}", ""]
        lines += table_markdown(table) + [""]
    lines += [NOTES, "", "## Paired comparisons", "", COMPARISON_NOTES, ""]
    lines += _comparisons_markdown(list(comparisons), tables[0]["metric"])
    lines += ["", "## Configurations", ""] + _configs_markdown(list(groups)) + ["", "## Runs", ""]
    lines += _runs_markdown(runs)
    lines += ["", "## Skipped", ""]
    lines += [f"- `{s['path']}`: {s['reason']}" for s in skipped] or ["None."]
    lines += ["", "## Figures", ""]
    lines += [f"- [{os.path.relpath(p, out_dir)}]({os.path.relpath(p, out_dir).replace(os.sep, '/')})"
              for p in figures]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
