"""The paper's table and figures from a set of training runs: ``python -m analysis.report``.

    python -m analysis.report runs/ other_runs/tuberlin_sketchanetwbin_dab --out report/ [--metric final|best]
    result = report(["runs"], "report")   # {"written": [...], "runs": [...], "skipped": [...], "tables": [...]}

Each RUN_DIR is a run folder (``<logdir>/<name>/`` holding ``args.json`` or ``metrics.csv``, as main.py
writes it) or a folder holding run folders at any depth. A run without readable ``args.json``, without a
completed epoch in ``metrics.csv``, or with a corrupt ``metrics.csv`` / ``final.json`` is skipped with its
reason. A run with epochs but no ``final.json`` (still running, or killed) is kept, marked unfinished, its
best and final accuracies taken from ``metrics.csv``. A finished run's best and final top-1 are its
``final.json`` values, unchanged. What each run was (family, variant, weights kind, binarizer) comes
from its args.json and the model registry (see analysis.runs).

Runs are grouped by configuration (analysis.runs.configuration: everything in args.json but the seed and
the options that cannot change results, listed in analysis.runs.NOT_CONFIGURATION): only runs that differ in
their seed alone are pooled; a run repeating a seed of its configuration is a duplicate, flagged, never
counted.

Files written under OUT_DIR:

* ``results.csv``: one row per run (name, folder, dataset, model, family, weights, binarizer, bin layers,
  activation, seed, epochs asked and done, finished, best and final val top-1 and top-5, mean training
  seconds per epoch, val images, its configuration's id, and the run it duplicates). Floats at full
  precision (Python's shortest round-trip form, as ``json`` writes them), so a finished run's numbers are
  exactly its ``final.json`` values.
* ``results_table.csv``: the paper-style table (see analysis.tables) in machine-readable form: one row per
  (metric, method, model, settings) with ``<dataset>_mean``, ``_std``, ``_n``, ``_duplicates``,
  ``_unfinished``, ``_low``, ``_high`` and ``_verdict`` columns per dataset; the rows of the ``--metric``
  come first, then the same rows for the other metric. Improvement rows (method "WBin: XNOR-Net vs
  DAB-Net", ...) hold DAB-Net minus XNOR-Net paired by seed: the mean difference, its sd, the pairs, the
  95% interval and the verdict.
* ``comparisons.csv``: every pair of configurations that differ in one part only (weight binarizer,
  activation binarizer, backward rule, weight shift, binarized layers), A - B paired by seed for final and
  best top-1: mean, sd, 95% interval (t from 5 pairs, else bootstrap; the t interval always), verdict, the
  seeds paired and the seeds only one side ran (see analysis.stats).
* ``results.md``: the paper-style table of the ``--metric`` (default: final val top-1) with a Settings
  column, the same table for the other metric, the paired comparisons, the configurations, the per-run
  table (2 decimals), the skipped runs with their reasons and links to the figures.
* the registered figures (see analysis.figures): ``curves_val_top1.png`` and ``curves_train_loss.png``
  over all runs; ``<run>/alpha_beta.png``, ``<run>/k_over_training.png``, ``<run>/k_across_layers.png``
  for each run with DAB per-filter statistics (``filters/``), ``<run>/binarization_rmse.png`` for each run
  that logged binarization losses. ``<run>`` is the run's name with characters other than letters,
  digits, ``.``, ``_``, ``-`` replaced by ``_``, plus ``-2``, ``-3``... when two runs share a name.
"""

import argparse
import os
import re
import sys

from analysis import stats, tables
from analysis.figures import draw_figures
from analysis.runs import RunError, config_groups, find_runs, read_run

__all__ = ["ReportError", "report", "main"]


class ReportError(ValueError):
    """Nothing to report (no RUN_DIR exists, no readable run), or an output folder that cannot be made."""


def _out_names(runs):
    """A distinct, file-system safe folder name per run (its name, then -2, -3... for repeats): ``out_name``."""
    used = {}
    for run in runs:
        base = re.sub(r"[^A-Za-z0-9._-]", "_", run["run"]).strip(".") or "run"
        used[base] = used.get(base, 0) + 1
        run["out_name"] = base if used[base] == 1 else f"{base}-{used[base]}"


def read_runs(run_dirs):
    """``(runs, skipped)``: the readable runs in or under ``run_dirs`` in table order, each with its
    ``out_name`` and ``duplicate_of`` (the ``out_name`` of the run of its configuration and seed that counts,
    or None), and ``[{"path", "reason"}]`` for what was not read. ReportError when no RUN_DIR exists
    or no run is readable."""
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
    runs.sort(key=tables.run_order)
    _out_names(runs)
    for run in runs:
        run["duplicate_of"] = None
    for group in config_groups(runs):
        for duplicate, kept in group["duplicates"]:
            duplicate["duplicate_of"] = kept["out_name"]
    return runs, skipped


def report(run_dirs, out_dir, metric="final"):
    """Read every run in or under ``run_dirs`` and write the tables and figures to ``out_dir``.

    Returns ``{"written": [paths], "runs": [run records], "skipped": [{"path", "reason"}], "tables": [the
    --metric table, the other metric's], "comparisons": [records]}`` (see analysis.tables.build_table and
    comparison_records); a run whose figures could
    not be drawn stays in the tables and is listed in skipped too ("alpha_beta.png skipped ...").
    ReportError when no RUN_DIR exists, no run is readable or ``out_dir`` cannot be made.
    """
    if metric not in ("final", "best"):
        raise ReportError(f"metric must be final or best, got {metric!r}")
    runs, skipped = read_runs(run_dirs)
    out_dir = os.fspath(out_dir)
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot make the output folder {out_dir}: {exc.strerror or exc}") from None
    figures, not_drawn = draw_figures(runs, out_dir)
    skipped += not_drawn
    other = "best" if metric == "final" else "final"
    groups = config_groups(runs)
    results = [tables.build_table(runs, metric, groups), tables.build_table(runs, other, groups)]
    compared = tables.comparison_records(stats.comparisons(groups), groups)
    names = ("results.csv", "results_table.csv", "comparisons.csv", "results.md")
    paths = {name: os.path.join(out_dir, name) for name in names}
    tables.write_results_csv(runs, paths["results.csv"])
    tables.write_table_csv(results, paths["results_table.csv"])
    tables.write_comparisons_csv(compared, paths["comparisons.csv"])
    tables.write_markdown(runs, results, skipped, figures, out_dir, paths["results.md"], compared, groups)
    return {"written": list(paths.values()) + figures, "runs": runs, "skipped": skipped, "tables": results,
            "comparisons": compared}


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and exit status 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def _parser():
    p = _Parser(prog="python -m analysis.report",
                description="Tables (results.md, results.csv, results_table.csv) and figures from training runs.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders, or folders holding them at any depth")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="where to write (created if needed)")
    p.add_argument("--metric", default="final", choices=("final", "best"),
                   help="top-1 of the main table: the last epoch's (final) or the best epoch's")
    return p


def _summary(result, out_dir):
    runs = result["runs"]
    lines = [f"{len(runs)} runs ({sum(r['finished'] for r in runs)} finished, "
             f"{sum(not r['finished'] for r in runs)} unfinished)"]
    lines += [f"skipped {s['path']}: {s['reason']}" for s in result["skipped"]]
    relative = [os.path.relpath(path, out_dir) for path in result["written"]]
    top = [path for path in relative if os.sep not in path]
    per_run = len(result["written"]) - len(top)
    lines.append(f"wrote {len(result['written'])} files to {out_dir}: {', '.join(top)}"
                 + (f" and {per_run} figures in per-run folders" if per_run else ""))
    return "\n".join(lines)


def main(argv=None):
    """The CLI; returns the exit status (0, or 2 with one line on stderr)."""
    p = _parser()
    args = p.parse_args(argv)
    try:
        result = report(args.run_dirs, args.out, metric=args.metric)
    except ReportError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an output file that cannot be written
        print(f"{p.prog}: error: cannot write {exc.filename or args.out}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(_summary(result, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
