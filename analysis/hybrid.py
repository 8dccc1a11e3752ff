"""Hybrid Binary Networks chosen from data: which convs of a trained model keep a full-precision input.

    python -m analysis.hybrid runs/fbin/last.pth --keep 2
    python -m analysis.hybrid runs/fbin/last.pth --budget 1.5 --metric rmse --data_dir ~/data/tuberlin

The planner loads a checkpoint of main.py whose model binarizes the inputs of some convs (an fbin run, or
any ``--binInputs``), measures the input binarization errors of those convs over its val set
(``analysis.binerrors.input_binarization_losses``, the original's ``--calculateBinarizationLosses``), prices
each conv in equivalent MACs, picks the inputs that stay full precision, and prints the plan as a
``--binInputs`` value with the ``main.py`` command that trains the hybrid (Prabhu et al., "Hybrid Binary
Networks", WACV 2018).

Cost convention (XNOR-Net's, as the paper's "equivalent FLOPs" plots use it). A MAC of a conv with
binarized weights AND a binarized input runs as XNOR + popcount and counts 1/64 of a real MAC. Every
other MAC counts fully: a conv with binarized weights but a real input, a conv with real weights (even
behind a sign), a full-precision conv, a Linear layer. The equivalent MACs of a model are the sum over
its convs and Linear layers of MACs x (1/64 if binary else 1); MACs per layer come from a forward of one
sample (``deploy.summary.count_macs``); pooling, BN, ReLU and additions are not counted. Making the input
of a conv with binarized weights real costs ``MACs x 63/64`` more; for a conv with real weights it is free.
Internally costs are exact integers in 1/64 MAC units.

Error metric: any of the three measures (``--metric``); the default is the normalised RMSE ``nrmse``,
``sqrt(mean over samples of ||sign(x) - x||^2 / ||x||^2)``, the error relative to the energy of the
input. It is the measure whose scale matches the scores of the paper's plots (Sketch-A-Net convs 2-7:
7.19 ... 41.40): ``err_1mx2`` = mean |1 - clamp(x, -1, 1)^2| never exceeds 1 and ``rmse`` of
a BN-normalised input stays near 1, so the paper most likely ranked layers by it (an inference: its
selection code is not published). It is largest where the values of x crowd near 0, which is where sign
keeps least of the input relative to its content; ``rmse`` instead grows with |x| far from 1 (the scale
mismatch with sign's unit outputs, which the next BN absorbs), and ``err_1mx2`` only sees the mass of x
inside (-1, 1). None of the three is scale invariant: layers compare on one footing where every sign
reads a BN output (BN(in) -> sign -> conv, as in the DAB, hybrid and XNOR-Net models).

Selection rules, given per-conv rows (conv index, error, MACs, whether its weights are binarized):
* ``--keep N`` (:func:`plan_keep`): the N inputs with the highest error stay real; ties in the error go to
  the cheaper conv (fewer MACs), then to the lower index. 0 <= N <= the number of binarized inputs.
* ``--budget F`` (:func:`plan_budget`): of all sets of real inputs whose model costs at most F times the
  equivalent MACs of the fully binarized model (the checkpoint's, every input binarized; a budget exactly
  met is allowed), the one that minimises the summed error of the inputs that stay binarized, i.e. a 0/1
  knapsack (value: error; weight: the extra cost MACs x 63/64). Ties: the cheaper plan, then the fewer
  real inputs, then the lexicographically smallest sorted list of real conv indices. It is solved exactly:
  the errors are turned into exact integers (a float is a dyadic rational), the three tie rules folded
  into one integer objective with a unique optimum, and a depth-first branch and bound with the
  fractional-knapsack bound (exact integer arithmetic) and dominance between layers (a layer no worse
  and no dearer than another goes real first) finds it; no approximation. Its worst case is exponential,
  but 60 layers take milliseconds to a second, equal layers included. F < 1 is infeasible
  (even the fully binarized model costs 1 x itself): the error names F = 1, the smallest feasible budget.

The hybrid's command (:func:`train_command`) is the source run's whole recipe: the options its checkpoint
records (what main.py resolved from its flags: data, model, binarization, optimisation, distillation,
precision, logging) written back as flags by ``opts.to_argv``, so ``opts.parse`` of the command gives the
source's values, except:
* ``--binInputs``: the plan;
* ``--name``: the planner's ``--name``, else ``<source name>_hybrid_<plan>`` (commas as underscores), so the
  hybrid never lands in the folders of the run it was planned from;
* ``--store``: the planner's ``--store``; else main.py's default for the new name where the source used its
  default (``savedmodels/<name>``), else the folder beside the source's store named after the hybrid;
* ``--logdir``: the planner's ``--logdir``, else the source's (each run logs into its own ``<logdir>/<name>``,
  so the hybrid's logs sit beside its source's, where ``analysis.report`` compares them);
* ``--dataset``/``--data_dir``: the planner's, when given (the data the plan was measured on); another
  dataset drops ``--nClasses`` (its data gives the classes);
* left out (:data:`NOT_REPEATED`), so main.py's defaults hold: how the source was started or what it did
  instead of training (``--resume``, ``--start-epoch``, ``--overwrite``, ``--pretrained``/``--pretrained_file``:
  the hybrid starts from its own initialisation unless a file is added; ``--evaluate``/``--testOnly``,
  ``--export``, ``--summary``, ``--packed``) and ``--ngpus`` (replaced by torchrun; > 1 fails under plain
  python).
The aliases ``opts.to_argv`` writes in their resolved form (``--lr`` as ``--maxlr``, ``--cuda`` as
``--device``, ``--bnnModel`` as ``--binarizer bnn``, ``--binStart``/``--binEnd`` as ``--binLayers``) keep
their meaning but not their spelling. The command is printed as ``python main.py ...``; launch it through
torchrun as the source was, if it was.
"""

import argparse
import math
import os
import shlex
import sys
from fractions import Fraction

import torch
from torch import nn
from torch.utils.data import DataLoader

import binarize
import datasets
import opts
from utils.errors import UsageError
from launch import build
from analysis.binerrors import input_binarization_losses
from deploy.summary import count_macs

__all__ = ["BINARY_MAC_DIVISOR", "METRICS", "PlanError", "layer_costs", "equivalent_macs", "plan_table",
           "plan_keep", "plan_budget", "binarized_inputs", "format_plan", "NOT_REPEATED", "hybrid_name",
           "hybrid_options", "train_command", "plan_from_checkpoint", "get_parser", "main"]

BINARY_MAC_DIVISOR = 64  # a binary MAC (XNOR + popcount) costs 1/64 of a real MAC (XNOR-Net's convention)
METRICS = ("nrmse", "rmse", "err_1mx2")
METRIC_LABELS = {"nrmse": "normalised RMSE", "rmse": "RMSE", "err_1mx2": "mean |1 - clamp(x)^2|"}


class PlanError(ValueError):
    """A plan that cannot be made (bad N or F, a model without binarized inputs): one line, exit status 2."""


# ---------------------------------------------------------------------------------------------- costs

def layer_costs(model, inpsize, in_channels):
    """One row per conv and Linear layer of ``model`` in ``model.modules()`` order: ``{index (conv number, None
    for a Linear), name, kind, macs, binary_weight, binary_input}`` for ``in_channels`` x ``inpsize``^2 inputs."""
    macs = count_macs(model, inpsize, in_channels)
    weights = {name for _, name, _, _ in binarize.binarized_layers(model)}
    inputs = {index for index, *_ in binarize.input_binarizers(model)}
    rows, conv_index = [], 0
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        is_conv = isinstance(module, nn.Conv2d)
        conv_index += is_conv
        rows.append(dict(index=conv_index if is_conv else None, name=name, kind="conv" if is_conv else "linear",
                         macs=int(macs.get(name, 0)), binary_weight=name in weights,
                         binary_input=is_conv and conv_index in inputs))
    return rows


def _units(macs, binary):
    """Cost in 1/64 MAC units (exact integers)."""
    return macs if binary else BINARY_MAC_DIVISOR * macs


def equivalent_macs(layers, binary_inputs=None):
    """Equivalent MACs of the model of ``layers`` (rows of :func:`layer_costs`) when the convs in
    ``binary_inputs`` (None: the model's own) have binarized inputs; a Fraction (exact)."""
    if binary_inputs is None:
        binary_inputs = {r["index"] for r in layers if r["binary_input"]}
    binary_inputs = set(binary_inputs)
    units = sum(_units(r["macs"], r["binary_weight"] and r["index"] in binary_inputs) for r in layers)
    return Fraction(units, BINARY_MAC_DIVISOR)


def plan_table(losses, layers, metric="nrmse"):
    """Rows of the plan, one per conv with a binarized input: the losses of ``input_binarization_losses`` joined
    with the costs of :func:`layer_costs`; ``error`` is the ``metric``, ``real_cost`` and ``binary_cost`` the
    conv's equivalent MACs with a real and with a binarized input (Fractions)."""
    if metric not in METRICS:
        raise PlanError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    by_index = {r["index"]: r for r in layers if r["index"] is not None}
    table = []
    for loss in losses:
        layer = by_index[loss["index"]]
        table.append(dict(loss, error=loss[metric], macs=layer["macs"], binary_weight=layer["binary_weight"],
                          real_cost=Fraction(layer["macs"]),
                          binary_cost=Fraction(_units(layer["macs"], layer["binary_weight"]), BINARY_MAC_DIVISOR)))
    return table


# ------------------------------------------------------------------------------------------ selection

def _items(table):
    """``[(index, error, macs, binary_weight)]`` from rows given as dicts (index, error, macs or mac, optional
    binary_weight) or tuples ``(index, error, macs[, binary_weight])``; PlanError for a bad row."""
    items = []
    for row in table:
        if isinstance(row, dict):
            macs = row["macs"] if "macs" in row else row["mac"]
            item = (row["index"], row["error"], macs, row.get("binary_weight", True))
        else:
            item = (*row, True) if len(row) == 3 else tuple(row)
        index, error, macs, binary_weight = item
        if not (isinstance(error, (int, float)) and math.isfinite(error) and error >= 0):
            raise PlanError(f"conv {index}: the error must be a finite number >= 0, got {error!r} (no val images?)")
        if int(macs) != macs or macs < 0:
            raise PlanError(f"conv {index}: MACs must be a whole number >= 0, got {macs!r}")
        items.append((int(index), float(error), int(macs), bool(binary_weight)))
    if len({i for i, *_ in items}) != len(items):
        raise PlanError("the table lists a conv twice")
    return items


def _extra_units(macs, binary_weight):
    """The extra cost, in 1/64 MAC units, of a real input instead of a binarized one."""
    return (BINARY_MAC_DIVISOR - 1) * macs if binary_weight else 0


def plan_keep(table, n):
    """The sorted conv indices whose input stays real under ``--keep n``: the ``n`` highest errors (ties: fewer
    MACs first, then the lower index)."""
    items = _items(table)
    if isinstance(n, bool) or int(n) != n or not 0 <= n <= len(items):
        raise PlanError(f"--keep {n} is out of range: this model has {len(items)} binarized inputs; "
                        f"choose 0 <= N <= {len(items)}")
    ranked = sorted(items, key=lambda it: (-it[1], it[2], it[0]))
    return sorted(it[0] for it in ranked[:int(n)])


def _fraction(value, what):
    try:
        frac = Fraction(str(value)) if isinstance(value, float) else Fraction(value)
    except (TypeError, ValueError, ZeroDivisionError):
        raise PlanError(f"{what} must be a finite number, got {value!r}") from None
    return frac


def plan_budget(table, factor, binary_cost):
    """The sorted conv indices whose input stays real under ``--budget factor``: the set that minimises the summed
    error of the inputs left binarized with ``binary_cost + extra cost <= factor * binary_cost``
    (``binary_cost``: equivalent MACs of the fully binarized model). Exact; ties as in the module docstring."""
    items = _items(table)
    if isinstance(factor, float) and not math.isfinite(factor):
        raise PlanError(f"--budget must be a finite number, got {factor}")
    f = _fraction(factor, "--budget")
    base = _fraction(binary_cost, "the cost of the fully binarized model")
    if base <= 0:
        raise PlanError(f"the fully binarized model must cost more than 0 MACs, got {binary_cost}")
    if f < 1:
        raise PlanError(f"--budget {factor} is infeasible: even the fully binarized model costs 1 x its own "
                        f"equivalent MACs; the smallest feasible budget is --budget 1")
    capacity = math.floor((f - 1) * base * BINARY_MAC_DIVISOR)  # extra 1/64-MAC units allowed (integers)
    return sorted(_knapsack(items, capacity))


def _knapsack(items, capacity):
    """Indices of the best set of real inputs (see the module docstring) within ``capacity`` extra units."""
    # Exact integer values: every float is m / 2^k, so one power of two scales them all to integers.
    fracs = [Fraction(err) for _, err, _, _ in items]
    scale = max((fr.denominator for fr in fracs), default=1)
    values = [int(fr * scale) for fr in fracs]
    weights = [_extra_units(macs, bw) for _, _, macs, bw in items]
    # An input with no error never goes real (it would add cost or count); one that cannot fit neither.
    candidates = [k for k in range(len(items)) if values[k] > 0 and weights[k] <= capacity]
    chosen = [k for k in candidates if weights[k] == 0]  # free and useful: always real
    rest = [k for k in candidates if weights[k] > 0]
    if not rest:
        return [items[k][0] for k in chosen]
    # One objective with a unique maximum: value first, then lower cost, then fewer inputs, then the
    # lexicographically smallest sorted index list (a bit per conv, lower index = higher bit).
    n = len(rest)
    total_weight = sum(weights[k] for k in rest)
    rank = {k: r for r, k in enumerate(sorted(rest, key=lambda k: items[k][0]))}
    objective = {k: ((values[k] * (total_weight + 1) - weights[k]) * (n + 1) - 1) * (1 << n) + (1 << (n - 1 - rank[k]))
                 for k in rest}
    order = sorted(rest, key=lambda k: Fraction(objective[k], weights[k]), reverse=True)
    taken = _branch_and_bound([objective[k] for k in order], [weights[k] for k in order], capacity)
    return [items[k][0] for k in chosen + [order[q] for q in taken]]


def _branch_and_bound(obj, wt, capacity):
    """Positions of the items (objective ``obj``, weight ``wt`` > 0, sorted by decreasing objective per unit of
    weight) whose set has the largest summed objective within ``capacity``; exact.

    An item that is no worse in objective and no heavier than another dominates it (and comes first in this
    order): an optimum that holds the dominated item holds its dominator too, else swapping them would
    improve it. So excluding an item blocks every item it dominates; equal layers (same error and MACs)
    then cost no search."""
    n = len(obj)
    dominated = [[p for p in range(q + 1, n) if obj[q] >= obj[p] and wt[q] <= wt[p]] for q in range(n)]
    blocked = [0] * n  # per item: how many of its dominators are excluded on the current path
    best = [-1, []]
    taken = []

    def bound_exceeds(pos, room, value):
        """Whether the fractional-knapsack bound of the open items from ``pos`` on beats the best value."""
        for j in range(pos, n):
            if blocked[j]:
                continue
            if wt[j] <= room:
                room -= wt[j]
                value += obj[j]
            else:  # value + obj[j] * room / wt[j] > best, in integers
                return value * wt[j] + obj[j] * room > best[0] * wt[j]
        return value > best[0]

    def search(pos, room, value):
        while pos < n and blocked[pos]:
            pos += 1
        if pos == n:
            if value > best[0]:
                best[0], best[1] = value, list(taken)
            return
        if not bound_exceeds(pos, room, value):
            return
        if wt[pos] <= room:
            taken.append(pos)
            search(pos + 1, room - wt[pos], value + obj[pos])
            taken.pop()
        for p in dominated[pos]:
            blocked[p] += 1
        search(pos + 1, room, value)
        for p in dominated[pos]:
            blocked[p] -= 1

    search(0, capacity, 0)
    return best[1]


def binarized_inputs(table, real):
    """The conv indices of ``table`` whose input stays binarized when those in ``real`` are made real."""
    real = set(real)
    return sorted(i for i, *_ in _items(table) if i not in real)


# ---------------------------------------------------------------------------------------------- report

def _mega(value):
    return f"{float(value) / 1e6:,.3f} M"


def format_plan(table, real, layers, *, metric, rule, title=None):
    """The printed report: the per-conv table, the ``--binInputs`` value and the equivalent MACs."""
    real = set(real)
    binary = binarized_inputs(table, real)
    plan_cost = equivalent_macs(layers, binary)
    fbin_cost = equivalent_macs(layers, [r["index"] for r in table])
    wbin_cost = equivalent_macs(layers, [])
    lines = [title] if title else []
    lines += [
        f"error metric: {metric} ({METRIC_LABELS[metric]} of the input binarization, over the val set)",
        f"cost: equivalent MACs per image; a MAC with binarized weights and a binarized input (XNOR + popcount) "
        f"counts 1/{BINARY_MAC_DIVISOR} of a real MAC; binarized weights with a real input, real weights and "
        f"Linear layers count fully",
        f"rule: {rule}",
        "",
        f"{'#':>3}  {'conv':<30} {'rmse':>9} {'nrmse':>9} {'|1-x^2|':>9} {'MACs real':>13} {'MACs binary':>13}  input",
    ]
    for r in table:
        state = "real (kept)" if r["index"] in real else "binarized"
        note = "" if r["binary_weight"] else "  (real weights: no saving)"
        lines.append(f"{r['index']:>3}  {r['name']:<30} {r['rmse']:>9.5f} {r['nrmse']:>9.5f} {r['err_1mx2']:>9.5f} "
                     f"{_mega(r['real_cost']):>13} {_mega(r['binary_cost']):>13}  {state}{note}")
    lines += [
        "",
        f"--binInputs {binarize.format_indices(binary)}   (real inputs: convs {binarize.format_indices(sorted(real))})",
        f"equivalent MACs: plan {_mega(plan_cost)} ({float(plan_cost / fbin_cost):.3f} x fully binarized); "
        f"fully binarized (every input binarized, as the checkpoint) {_mega(fbin_cost)}; real inputs everywhere "
        f"(wbin) {_mega(wbin_cost)} ({float(wbin_cost / fbin_cost):.3f} x)",
    ]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------- the hybrid's run

# Options of the source run that the hybrid's command leaves out: they say how that run was started (from
# which checkpoint, over which folders, launched how) or what it did instead of training, not how it trains.
NOT_REPEATED = ("resume", "start_epoch", "overwrite", "pretrained", "pretrained_file", "evaluate", "testOnly",
                "export", "summary", "packed", "ngpus")


def hybrid_name(source_name, bin_inputs):
    """The hybrid's default ``--name``: the source run's name, ``_hybrid_`` and the ``--binInputs`` value with
    its commas as underscores (``tuberlin_sketchanetfbin_dab_hybrid_2_5-7`` for ``2,5-7``)."""
    return f"{source_name}_hybrid_{bin_inputs.replace(',', '_')}"


def _store_beside(source_store, source_name, name):
    """The hybrid's ``--store`` when none is given: main.py's default (None) where the source run used its
    default, else the folder beside the source's store named after the hybrid."""
    if not source_store or os.path.normpath(source_store) == os.path.normpath(os.path.join("savedmodels", source_name)):
        return None
    return os.path.join(os.path.dirname(os.path.normpath(source_store)), os.path.basename(os.path.normpath(name)))


def hybrid_options(source, bin_inputs, *, name=None, logdir=None, store=None, dataset=None, data_dir=None):
    """The options of the run that trains the hybrid, as a dict: ``source`` (the source run's resolved options,
    as its checkpoint records them) with ``--binInputs bin_inputs``, a ``--name`` of its own (``name``, else
    :func:`hybrid_name`), a checkpoint folder of its own (``store``, else :func:`_store_beside`), ``logdir``
    when given (else the source's: the hybrid's logs go beside the source's), the data the plan was measured
    on (``dataset``, whose classes then come from the data, and ``data_dir``, when given), and none of
    :data:`NOT_REPEATED`. Every other option is the source's."""
    options = {key: value for key, value in source.items() if key not in NOT_REPEATED}
    source_name = source.get("name") or f"{source['dataset']}_{source['model_def']}"
    if dataset is not None and dataset != source.get("dataset"):
        options.update(dataset=dataset, nClasses=None)
    if data_dir is not None:
        options["data_dir"] = data_dir
    options["name"] = name or hybrid_name(source_name, bin_inputs)
    options["logdir"] = logdir or source.get("logdir")
    options["store"] = store or _store_beside(source.get("store"), source_name, options["name"])
    options["binInputs"] = binarize.parse_indices(bin_inputs)
    return options


def train_command(source, bin_inputs, **changes):
    """The ``python main.py`` command that trains the hybrid: the flags of :func:`hybrid_options` (``changes``
    are its keyword arguments) as ``opts.to_argv`` writes them. The command is parsed as main.py would parse
    it first, so a --name or --store that main.py refuses is a UsageError here."""
    argv = opts.to_argv(hybrid_options(source, bin_inputs, **changes))
    opts.parse(argv)
    return shlex.join(["python", "main.py", *argv])


# ------------------------------------------------------------------------------------------------- CLI

def get_parser():
    parser = opts.Parser(prog="python -m analysis.hybrid", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="checkpoint of main.py (.pth) of a model with binarized inputs")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--keep", type=int, default=None, metavar="N",
                        help="keep the N inputs with the highest error real")
    choice.add_argument("--budget", type=float, default=None, metavar="F",
                        help="least summed error of the binarized inputs within F x the equivalent MACs of the "
                             "fully binarized model (F >= 1)")
    parser.add_argument("--metric", default="nrmse", choices=METRICS, help="error measure (default: nrmse)")
    g = parser.add_argument_group("the data measured on (also the data of the printed command)")
    g.add_argument("--data_dir", default=None, help="dataset folder (default: the checkpoint's)")
    g.add_argument("--dataset", default=None, choices=datasets.DATASETS, help="dataset (default: the checkpoint's)")
    g = parser.add_argument_group("how to measure")
    g.add_argument("--testbatchsize", type=opts.positive_int, default=64, help="val batch size (default: 64)")
    g.add_argument("--workers", type=int, default=0, help="data-loading worker processes (default: 0)")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to measure")
    g = parser.add_argument_group("the printed command's run")
    g.add_argument("--name", default=None,
                   help="the hybrid's run name (default: <the checkpoint's run name>_hybrid_<--binInputs value>)")
    g.add_argument("--logdir", default=None, help="the hybrid's --logdir (default: the checkpoint's)")
    g.add_argument("--store", default=None,
                   help="the hybrid's checkpoint folder (default: main.py's own for its name, or beside the "
                        "checkpoint's store when that run gave one)")
    return parser


def _device(name):
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("CUDA was asked for (--device cuda) but is not available; use --device cpu")
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def _check_rule(keep, budget, workers):
    if (keep is None) == (budget is None):
        raise PlanError("give one of --keep N or --budget F")
    if workers < 0:
        raise PlanError(f"--workers must be >= 0, got {workers}")


def _val_data(source, dataset, data_dir, in_channels):
    """``(bundle, inpsize, note)``: the val data to measure on (the source's, or ``dataset``/``data_dir``)."""
    args = argparse.Namespace(**source)
    if dataset is not None and dataset != args.dataset:
        args.dataset, args.nClasses = dataset, None  # the labels are not used: any class count will do
    if data_dir is not None:
        args.data_dir = data_dir
    note, native = None, datasets.native_size(args.dataset)
    if native is not None and native != args.inpsize:
        note = (f"note: --inpsize {args.inpsize} does not apply to {args.dataset} (its images are "
                f"{native}x{native}); measuring at {native}")
        args.inpsize = native
    bundle = build.load_data(args)
    if bundle.num_channels != in_channels:
        raise UsageError(f"the val data has {bundle.num_channels} channel(s), the model takes {in_channels}; "
                         f"give the dataset it was trained on")
    return bundle, args.inpsize, note


def _choose(table, layers, metric, keep, budget):
    """``(real conv indices, the rule in words)`` for ``--keep`` or ``--budget``."""
    if keep is not None:
        return plan_keep(table, keep), (f"--keep {keep}: the {keep} inputs with the highest {metric} stay real "
                                        f"(ties: fewer MACs first, then the lower index)")
    fbin_cost = equivalent_macs(layers, [r["index"] for r in table])
    all_real = Fraction(math.ceil(equivalent_macs(layers, []) / fbin_cost * 1000), 1000)
    rule = (f"--budget {budget:g}: least summed {metric} of the binarized inputs with equivalent MACs <= "
            f"{budget:g} x {_mega(fbin_cost)} = {_mega(budget * fbin_cost)} (exact 0/1 knapsack; ties: cheaper, "
            f"then fewer real inputs, then lower indices); --budget {float(all_real):g} or more keeps every "
            f"input real")
    return plan_budget(table, budget, fbin_cost), rule


def plan_from_checkpoint(checkpoint, *, keep=None, budget=None, metric="nrmse", dataset=None, data_dir=None,
                         testbatchsize=64, workers=0, device="auto", name=None, logdir=None, store=None):
    """Measure the checkpoint's input binarization errors over its val set (or ``dataset``/``data_dir``),
    price them, choose by ``keep`` or ``budget`` and return the printed report, which ends with the command
    that trains the hybrid (:func:`train_command`, with ``name``, ``logdir`` and ``store`` for its run)."""
    _check_rule(keep, budget, workers)
    where = _device(device)
    model, args, state = build.load_checkpoint_model(checkpoint, where)
    source = dict(vars(args))
    slots = binarize.input_binarizers(model)
    if not slots:
        raise PlanError(f"{checkpoint}: its {source['model_def']} has no conv with a binarized input; the planner "
                        f"needs a model trained with binarized inputs (an fbin model, or --binInputs)")
    # Check N, F and the hybrid's flags before the pass over the data (the same checks, on a stand-in plan).
    if keep is not None:
        plan_keep([(index, 0.0, 0) for index, *_ in slots], keep)
    else:
        plan_budget([], budget, 1)
    changes = dict(name=name, logdir=logdir, store=store, dataset=dataset, data_dir=data_dir)
    train_command(source, binarize.format_indices([index for index, *_ in slots]), **changes)
    in_channels = state.get("in_channels") or datasets.SHAPES[source["dataset"]][1]
    bundle, inpsize, note = _val_data(source, dataset, data_dir, in_channels)
    val_loader = DataLoader(bundle.val, batch_size=testbatchsize, shuffle=False, num_workers=workers,
                            pin_memory=where.type == "cuda")
    losses = input_binarization_losses(model, val_loader, where)
    layers = layer_costs(model, inpsize, in_channels)
    table = plan_table(losses, layers, metric)
    real, rule = _choose(table, layers, metric, keep, budget)
    weights = (f"{source['binarizer']} weights on convs {binarize.format_indices(source['binLayers'])}"
               if source["binaryWeight"] else "real weights")
    title = (f"hybrid plan for {checkpoint}: {source['model_def']} ({weights}, {inpsize}x{inpsize}, "
             f"{in_channels} channel(s)); val: {bundle.description}; device {where}")
    report = format_plan(table, real, layers, metric=metric, rule=rule, title=title)
    plan = binarize.format_indices(binarized_inputs(table, real))
    report += f"\ntrain the hybrid: {train_command(source, plan, **changes)}"
    return (note + "\n" if note else "") + report


def main(argv=None):
    """Entry point; returns the exit status (0 done, 2 bad input)."""
    parser = get_parser()
    try:
        options = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a bad flag (2, message already printed)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        print(plan_from_checkpoint(**vars(options)))
    except (UsageError, PlanError) as exc:
        print(f"python -m analysis.hybrid: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
