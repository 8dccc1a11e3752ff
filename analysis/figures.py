"""The report's figures: each one function, registered with the figure registry.

    from analysis.figures import new_figure, register_figure
    from analysis.runs import read_json, run_file

    @register_figure("toy", reads=("toy_log.json",))          # per run: <out>/<run>/toy.png
    def toy(run):
        values = read_json(run_file(run, "toy_log.json"), "toy_log.json")
        fig, ax = new_figure(f"{run['out_name']}: toy", "step", "value")
        ax.plot(values)
        return fig                                              # or None: nothing to draw for this run

A figure declares the run log files it reads (``reads``: paths inside the run folder; a name ending in
"/" is a folder that must hold something) and where it goes: a per-run figure (the default) is drawn for
each run holding at least one of them, into ``<out>/<run>/<output>``; a report figure (``per_run=False``)
is drawn once from all the runs holding one, into ``<out>/<output>``. ``output`` defaults to
``<name>.png``. The draw function returns a matplotlib Figure (or None when there is nothing to draw)
and raises RunError when a file it needs is unreadable: that figure is then left out and listed with the
reason. Every figure is saved at 6 x 4 in and 100 dpi (600 x 400 px) on the Agg canvas, without pyplot,
so nothing is ever displayed and the process's matplotlib backend is left alone.

Readable at any number of runs: legends are LEGEND_FONT points, inside the axes up to LEGEND_INSIDE entries
and beside them beyond; epoch axes have whole-epoch ticks; lines of few points carry markers, so a run of
one epoch shows its points.

The registered figures:

* curves_val_top1, curves_train_loss: val top-1 (%) and train loss (NLL) over the epochs, one line per
  configuration (analysis.runs.config_groups): the mean of its runs (one per seed, duplicates left out) with
  a min-max band (an error bar where there is one epoch), named in the legend by dataset, model, binarizer
  and the settings that tell it from the others ("digits sketchanetwbin dab [epochs=3] (n=3)").
* alpha_beta: alpha (solid) and beta (dashed) of 4 filters of the run's middle DAB conv (the middle of
  the DAB layers in conv order), filter indices evenly spaced over the layer (first to last), per epoch.
* k_over_training: K/n of the same filters per epoch, with the layer's mean K/n (black, dotted).
* k_across_layers: box plot of K/n over the filters of each DAB layer at the last logged epoch.
* binarization_rmse: RMSE per layer as bars: input (activation) binarization error of
  ``binarization_losses.json`` and the conv-output error of binarized weights of
  ``weight_binarization_losses.json``, one panel each.
"""

import math
import os
import re
import zipfile
from dataclasses import dataclass
from typing import Callable

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis.runs import RunError, config_groups, has_file, read_json, run_file, settings_labels

__all__ = ["FIGSIZE", "DPI", "LEGEND_FONT", "LEGEND_INSIDE", "ReportFigure", "register_figure",
           "unregister_figure", "figures", "new_figure", "new_canvas", "draw_figures"]

FIGSIZE, DPI = (6.0, 4.0), 100
FILTERS_SHOWN = 4
LEGEND_FONT = 7     # points, at any number of entries
LEGEND_INSIDE = 4   # entries a legend holds inside the axes; more go beside them
LEGEND_ROWS = 24    # entries per legend column beside the axes
LABEL_CHARS = 44    # a legend label's length before it is cut with "…"
MARKED_POINTS = 30  # lines of at most this many points carry markers


@dataclass(frozen=True)
class ReportFigure:
    """A registered figure: ``draw(run)`` (per run) or ``draw(runs)`` (per report) -> Figure or None."""

    name: str
    draw: Callable
    reads: tuple
    output: str
    per_run: bool

    def wants(self, run):
        """Whether ``run`` logged one of the files this figure reads."""
        return any(has_file(run, name) for name in self.reads)


_REGISTRY = {}


def register_figure(name, *, reads, output=None, per_run=True):
    """A decorator adding its function to the report's figures as ``name`` (see the module docstring).
    ValueError for a name or output file already registered, or no file to read."""
    reads = (reads,) if isinstance(reads, str) else tuple(reads)
    output = output or f"{name}.png"
    if not reads:
        raise ValueError(f"figure {name!r} reads no log file; name the files it draws from in reads=")
    if name in _REGISTRY or any(f.output == output and f.per_run == per_run for f in _REGISTRY.values()):
        raise ValueError(f"figure {name!r} (writing {output}) is registered already; choose another name")

    def add(draw):
        _REGISTRY[name] = ReportFigure(name, draw, reads, output, bool(per_run))
        return draw
    return add


def unregister_figure(name):
    """Remove the figure ``name``; KeyError when it is not registered."""
    del _REGISTRY[name]


def figures():
    """The registered figures, in registration order."""
    return list(_REGISTRY.values())


# ---------------------------------------------------------------------------------------------- drawing

def new_canvas(title=None):
    """An empty 6 x 4 in Figure on the Agg canvas, with ``title`` as its suptitle."""
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


def new_figure(title, xlabel, ylabel):
    """``(fig, ax)``: a 6 x 4 in Figure with one gridded axes."""
    fig = new_canvas()
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def _save(fig, path):
    fig.set_size_inches(*FIGSIZE)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=DPI)  # no bbox_inches="tight": every PNG is exactly 600 x 400 px
    return path


def _draw(figure, subject, path, failed):
    """Draw one figure and save it at ``path``: [path], or [] when there is nothing to draw or a file it
    reads is unreadable (then ``failed[reason]`` gets its output name)."""
    try:
        fig = figure.draw(subject)
    except RunError as exc:
        failed.setdefault(str(exc), []).append(figure.output)
        return []
    return [] if fig is None else [_save(fig, path)]


def _skips(folder, failed):
    """One skipped entry per reason, naming every figure it kept from being drawn."""
    return [{"path": folder, "reason": f"{', '.join(outputs)} skipped (run kept in the tables): {reason}"}
            for reason, outputs in failed.items()]


def draw_figures(runs, out_dir):
    """Draw every registered figure of ``runs`` (records with ``out_name`` set) under ``out_dir``.

    Returns ``(paths written, skipped)``: report figures first, then each run's in registration order;
    skipped: ``[{"path": run folder (out_dir for a report figure), "reason"}]`` for figures whose log
    files could not be read, one entry per reason.
    """
    written, skipped, failed = [], [], {}
    for figure in figures():
        if not figure.per_run:
            written += _draw(figure, [run for run in runs if figure.wants(run)],
                             os.path.join(out_dir, figure.output), failed)
    skipped += _skips(out_dir, failed)
    for run in runs:
        failed = {}
        for figure in figures():
            if figure.per_run and figure.wants(run):
                written += _draw(figure, run, os.path.join(out_dir, run["out_name"], figure.output), failed)
        skipped += _skips(run["folder"], failed)
    return written, skipped


def _legend(ax, count, title=None, handles=None):
    """A legend of ``count`` entries in LEGEND_FONT points: inside the axes (where it covers least) up to
    LEGEND_INSIDE entries, else beside them on the right (the axes narrow to make room), in columns of at
    most LEGEND_ROWS entries. ``handles``: the entries, where they are not the labelled artists."""
    style = dict(fontsize=LEGEND_FONT, title=title, title_fontsize=LEGEND_FONT)
    if handles is not None:
        style["handles"] = handles
    if count <= LEGEND_INSIDE:
        return ax.legend(loc="best", **style)
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                     ncol=1 + (count - 1) // LEGEND_ROWS, **style)


def _epoch_axis(ax, epochs):
    """Whole epochs on the x axis (no 1.2, 1.4 ticks), with half an epoch of margin where there are few."""
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if epochs:
        low, high = min(epochs), max(epochs)
        pad = max(0.5, 0.04 * (high - low))
        ax.set_xlim(low - pad, high + pad)


def _marker(count):
    """A marker where a line has few points (a single point without one draws nothing)."""
    return "o" if count <= MARKED_POINTS else None


def _short(text, limit=LABEL_CHARS):
    return text if len(text) <= limit else text[:limit - 1] + "…"


# ------------------------------------------------------------------------------------------------ curves

def _points(run, key):
    return [(row["epoch"], row[key]) for row in run["metrics"] if not math.isnan(row.get(key, math.nan))]


def _group_name(run):
    """What a configuration is at a glance: dataset, model, binarizer, activation."""
    parts = [run["dataset_label"], run["model"]]
    parts += [] if run["binarizer"] == "-" else [run["binarizer"]]
    parts += [] if run["activation"] in ("-", "sign") else [run["activation"]]
    return " ".join(parts)


def _summary(members, key):
    """``(epochs, mean, low, high)`` of ``key`` over the runs ``members``, per epoch any of them logged."""
    by_epoch = {}
    for run in members:
        for epoch, value in _points(run, key):
            by_epoch.setdefault(epoch, []).append(value)
    epochs = sorted(by_epoch)
    return (epochs, [float(np.mean(by_epoch[e])) for e in epochs], [min(by_epoch[e]) for e in epochs],
            [max(by_epoch[e]) for e in epochs])


def _draw_group(ax, members, key, style, label):
    """The mean of one configuration's runs as a line, their min-max as a band (an error bar at one epoch);
    ``style``: (colour, line style)."""
    colour, line = style
    x, mean, low, high = _summary(members, key)
    ax.plot(x, mean, line, marker=_marker(len(x)), markersize=4, linewidth=1.4, color=colour, label=label)
    if len(members) > 1 and len(x) > 1:
        ax.fill_between(x, low, high, color=colour, alpha=0.2, linewidth=0)
    elif len(members) > 1:
        ax.errorbar(x, mean, yerr=[[m - lo for m, lo in zip(mean, low)], [hi - m for m, hi in zip(mean, high)]],
                    fmt="none", ecolor=colour, capsize=4, linewidth=1.2)


def _curves(runs, key, title, ylabel):
    """One line per configuration of ``key`` (a metrics.csv column) over epochs: the mean of its runs (one per
    seed; duplicates left out) with their min-max band; runs without the column are left out. The legend
    names each configuration by dataset, model, binarizer (in its title where all share them) and the
    settings that tell it from the others."""
    fig, ax = new_figure(title, "epoch", ylabel)
    groups = [g for g in config_groups(runs) if any(_points(run, key) for run in g["runs"])]
    labels = settings_labels(groups, kind=lambda g: _group_name(g["runs"][0]))
    names = {_group_name(g["runs"][0]) for g in groups}
    legend_title = "line: mean over seeds; band: min–max"
    if len(names) == 1:
        legend_title = f"{_short(names.pop())}\n{legend_title}"
    epochs = set()
    for i, group in enumerate(groups):
        members = [run for run in group["runs"] if _points(run, key)]
        epochs |= {epoch for run in members for epoch, _ in _points(run, key)}
        label = ", ".join(part for part in ("" if "\n" in legend_title else _group_name(members[0]),
                                            labels[group["config_id"]]) if part)
        label = _short(label or "mean") + f" (n={len(members)})"
        label += "" if all(run["finished"] for run in members) else " unfinished"
        _draw_group(ax, members, key, (f"C{i % 10}", ("-", "--", ":", "-.")[(i // 10) % 4]), label)
    _epoch_axis(ax, epochs)
    if groups:
        _legend(ax, len(groups), title=legend_title)
    else:
        ax.text(0.5, 0.5, f"no run logged {key}", ha="center", va="center", transform=ax.transAxes)
    return fig


@register_figure("curves_val_top1", reads=("metrics.csv",), per_run=False)
def curves_val_top1(runs):
    """Val top-1 (%) of every configuration over its epochs."""
    return _curves(runs, "val_top1", "Validation top-1 accuracy", "val top-1 (%)")


@register_figure("curves_train_loss", reads=("metrics.csv",), per_run=False)
def curves_train_loss(runs):
    """Train loss (NLL) of every configuration over its epochs."""
    return _curves(runs, "train_loss", "Training loss", "train loss (NLL, nats)")


# --------------------------------------------------------------------------------- per-filter statistics

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


def read_filters(run):
    """The DAB layers and epoch files of a run's ``filters/``: ``(layers, [(epoch, path)])``.

    Layers are layers.json's entries with method "dab" and n > 0 (convs in index order, then the rest).
    RunError when layers.json is corrupt or no epoch file exists.
    """
    folder = run_file(run, "filters/")
    layers = read_json(os.path.join(folder, "layers.json"), "filters/layers.json")
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


def _middle_layer(run):
    """The run's middle DAB layer over training: ``{"layer", "tag", "n", "filters", "epochs", "series"}``
    with 4 filter indices evenly spaced over it; None when the run has no DAB layer."""
    layers, epochs = read_filters(run)
    if not layers:
        return None
    layer = layers[len(layers) // 2]  # neither the first conv nor the last
    tag = layer["tag"]
    keys = [f"{tag}_alpha", f"{tag}_beta", f"{tag}_k"]
    series = [_load_npz(path, keys) for _, path in epochs]
    count = len(series[-1][keys[2]])
    if count == 0 or any(len(s[k]) != count for s in series for k in keys):
        raise RunError(f"filters of {tag} change size across epochs")
    chosen = sorted(set(np.linspace(0, count - 1, min(FILTERS_SHOWN, count)).round().astype(int).tolist()))
    return {"layer": layer, "tag": tag, "n": float(layer["n"]), "filters": chosen,
            "epochs": [epoch for epoch, _ in epochs], "series": series}


@register_figure("alpha_beta", reads=("filters/",))
def alpha_beta(run):
    """alpha (solid, circles) and beta (dashed, squares) of 4 filters of the middle DAB conv, per epoch."""
    mid = _middle_layer(run)
    if mid is None:
        return None
    tag, x = mid["tag"], mid["epochs"]
    fig, ax = new_figure(f"{run['out_name']}: DAB code of {tag} ({mid['layer'].get('name', tag)})", "epoch",
                         "value (weight units)")
    _epoch_axis(ax, x)
    marker = _marker(len(x))
    for i, f in enumerate(mid["filters"]):
        ax.plot(x, [s[f"{tag}_alpha"][f] for s in mid["series"]], "-", marker=marker and "o", markersize=4,
                color=f"C{i}", label=f"filter {f}")
        ax.plot(x, [s[f"{tag}_beta"][f] for s in mid["series"]], "--", marker=marker and "s", markersize=4,
                color=f"C{i}")
    handles = ax.get_legend_handles_labels()[0]
    handles += [Line2D([], [], color="0.3", linestyle="-", marker=marker and "o", markersize=4, label="alpha"),
                Line2D([], [], color="0.3", linestyle="--", marker=marker and "s", markersize=4, label="beta")]
    _legend(ax, len(handles), handles=handles)
    return fig


@register_figure("k_over_training", reads=("filters/",))
def k_over_training(run):
    """K/n of the same filters per epoch, with the layer's mean K/n."""
    mid = _middle_layer(run)
    if mid is None:
        return None
    tag, n, x = mid["tag"], mid["n"], mid["epochs"]
    fig, ax = new_figure(f"{run['out_name']}: K/n of {tag} filters over training", "epoch",
                         "K/n (fraction of weights at alpha)")
    _epoch_axis(ax, x)
    marker = _marker(len(x))
    for i, f in enumerate(mid["filters"]):
        ax.plot(x, [s[f"{tag}_k"][f] / n for s in mid["series"]], "-", marker=marker, markersize=4, color=f"C{i}",
                label=f"filter {f}")
    ax.plot(x, [float(np.mean(s[f"{tag}_k"])) / n for s in mid["series"]], ":", marker=marker and "D",
            markersize=4, color="black", label=f"{tag} mean")
    ax.set_ylim(0, 1.02)
    _legend(ax, len(mid["filters"]) + 1)
    return fig


@register_figure("k_across_layers", reads=("filters/",))
def k_across_layers(run):
    """Box plot of K/n over the filters of each DAB layer at the last logged epoch."""
    layers, epochs = read_filters(run)
    if not layers:
        return None
    last_epoch, last_path = epochs[-1]
    last = _load_npz(last_path, [f"{item['tag']}_k" for item in layers])
    fig, ax = new_figure(f"{run['out_name']}: K/n per layer at epoch {last_epoch}", "layer",
                         "K/n (fraction of weights at alpha)")
    data = [last[f"{item['tag']}_k"] / float(item["n"]) for item in layers]
    ax.boxplot(data, showfliers=True, flierprops={"markersize": 2}, label="filters of the layer")
    ax.set_xticks(range(1, len(layers) + 1), [item["tag"] for item in layers],
                  rotation=90 if len(layers) > 8 else 0, fontsize=7 if len(layers) > 8 else 9)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=LEGEND_FONT, loc="best")
    return fig


# ------------------------------------------------------------------------------------ binarization error

LOSS_PANELS = (("binarization_losses.json", "input (activation) binarization error", "RMSE (input units)"),
               ("weight_binarization_losses.json", "conv output error of binarized weights", "RMSE (output units)"))


def _read_losses(run, name):
    rows = read_json(run_file(run, name), name)
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("rmse"), (int, float))
                                             for r in rows):
        raise RunError(f"corrupt {name}: not a list of layers with rmse")
    return rows


@register_figure("binarization_rmse", reads=tuple(name for name, _, _ in LOSS_PANELS))
def binarization_rmse(run):
    """RMSE per layer, a panel for input and one for weight binarization (those the run logged)."""
    present = [(title, unit, _read_losses(run, name)) for name, title, unit in LOSS_PANELS if has_file(run, name)]
    fig = new_canvas(f"{run['out_name']}: binarization RMSE per layer (val set)")
    for i, (title, unit, rows) in enumerate(present):
        ax = fig.add_subplot(len(present), 1, i + 1)
        labels = [f"conv{r['index']:02d}" if isinstance(r.get("index"), int) else str(r.get("name", "?"))
                  for r in rows]
        ax.bar(range(len(rows)), [r["rmse"] for r in rows], color=f"C{i}", label=title)
        ax.set_xticks(range(len(rows)), labels, rotation=90 if len(rows) > 8 else 0, fontsize=7)
        ax.set_xlabel("layer")
        ax.set_ylabel(unit, fontsize=8)
        ax.legend(fontsize=LEGEND_FONT, loc="best")
        ax.grid(True, axis="y", alpha=0.3)
    return fig
