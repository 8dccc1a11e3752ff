"""Paired comparisons of run configurations: is A better than B, on the seeds both were run with?

    interval = paired_interval([1.2, 0.8, 1.5, 0.9, 1.1])   # {"n", "mean", "sd", "low", "high", "method"}
    verdict(interval)                                         # "A > B"
    found = comparisons(groups)                               # every pair of groups that differ in one part

Two configuration groups (analysis.runs.config_groups) are compared when their configurations differ in
exactly one PART (the weight binarizer, the activation binarizer, the backward rule, the weight shift or
the binarized layers) and in nothing else (dataset, recipe, model and data included). Their runs are paired
by seed (read from args.json); a seed that only one side has is reported as unpaired, never matched with
another. B is the baseline side (BASELINES: XNOR-Net weights for DAB-Net, no weight shift, straight-through
backward, sign activations), so A - B is what the change brings. For each metric (final and best val top-1) the per-seed differences A - B give:

* the mean difference and, with 5 pairs or more, a 95% Student t interval ``mean ± t(0.975, n-1) sd/√n``
  (the t quantile computed here from the closed form of the t distribution for integer degrees of freedom);
* with 2 to 4 pairs, a 95% percentile bootstrap interval of the mean (BOOTSTRAP_RESAMPLES resamples of
  the pairs with the fixed seed BOOTSTRAP_SEED, so a report is reproducible); with so few pairs it is
  indicative only, and the t interval (``t_low``, ``t_high``, always given from 2 pairs) is the cautious one;
* a verdict: "A > B" (the interval lies above 0; below 5 pairs the t interval must too), "A < B" (below
  0), "undecided (CI contains 0)", or
  "undecided (one pair)" / "unpaired (no shared seed)" where no interval exists.
"""

import math
import statistics

import numpy as np

__all__ = ["PARTS", "BASELINES", "BOOTSTRAP_SEED", "BOOTSTRAP_RESAMPLES", "MIN_T_PAIRS", "t_quantile", "paired_interval",
           "verdict", "differing_part", "pair_runs", "compare", "comparisons"]

# The parts a comparison may change, each with the configuration keys (options and "facts.<key>") it owns.
PARTS = {
    "weight binarizer": ("binarizer", "facts.weight_binarizer"),
    "activation binarizer": ("binActivation", "facts.activation_binarizer"),
    "backward rule": ("backward", "edeTmin", "edeTmax", "facts.backward"),
    "weight shift": ("weightShift", "facts.weight_shift"),
    "binarized layers": ("binLayers", "binInputs", "facts.binarized_convs", "facts.binarized_input_convs",
                         "facts.binarized_linears"),
}
_PART_OF = {key: part for part, keys in PARTS.items() for key in keys}
# The side of a comparison that is B (the reference A is measured against), where one side holds it: the
# paper's XNOR-Net baseline, and the settings without SD-BNN's additions.
BASELINES = {"weight binarizer": {"binarizer": "xnor"}, "weight shift": {"weightShift": None},
             "backward rule": {"backward": "ste"}, "activation binarizer": {"binActivation": "sign"}}
BOOTSTRAP_SEED, BOOTSTRAP_RESAMPLES = 2018, 10000
MIN_T_PAIRS = 5  # fewer pairs: the percentile bootstrap decides
LEVEL = 0.95


def _t_central(t, df):
    """P(|T| <= t) for Student's t with ``df`` (an integer >= 1) degrees of freedom: the finite series in
    theta = atan(t / sqrt(df)) (odd df: arcs and cosine powers; even df: sine times cosine powers)."""
    theta = math.atan(t / math.sqrt(df))
    sin, cos = math.sin(theta), math.cos(theta)
    if df % 2:
        total, term = 0.0, cos
        for j in range(1, (df - 1) // 2 + 1):  # cos + 2/3 cos^3 + (2*4)/(3*5) cos^5 ... up to cos^(df-2)
            total += term
            term *= cos * cos * (2 * j) / (2 * j + 1)
        return 2.0 / math.pi * (theta + sin * total)
    total, term = 0.0, 1.0
    for j in range(1, df // 2 + 1):  # 1 + 1/2 cos^2 + (1*3)/(2*4) cos^4 ... up to cos^(df-2)
        total += term
        term *= cos * cos * (2 * j - 1) / (2 * j)
    return sin * total


def t_quantile(p, df):
    """The ``p`` quantile (0.5 < p < 1) of Student's t with ``df`` (integer >= 1) degrees of freedom, by
    bisection on the closed-form distribution: t_quantile(0.975, 4) = 2.776..."""
    if not 0.5 < p < 1 or df < 1 or int(df) != df:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and an integer df >= 1, got p={p}, df={df}")
    central = 2 * p - 1
    low, high = 0.0, 1.0
    while _t_central(high, int(df)) < central:
        high *= 2
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if _t_central(middle, int(df)) < central else (low, middle)
        if high - low < 1e-12 * high:
            break
    return (low + high) / 2


def _bootstrap(diffs):
    """(low, high): the 95% percentile bootstrap interval of the mean of ``diffs``, with a fixed seed."""
    values = np.asarray(diffs, dtype=np.float64)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    means = values[rng.integers(0, len(values), size=(BOOTSTRAP_RESAMPLES, len(values)))].mean(axis=1)
    tail = 100 * (1 - LEVEL) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def paired_interval(diffs):
    """The mean of the per-pair differences ``diffs`` with its 95% interval: ``{"n", "mean", "sd", "low",
    "high", "method", "t_low", "t_high"}``; ``method``: "t" (5 pairs or more), "bootstrap" (2 to 4) or None
    (fewer: no interval, low and high None). ``t_low``/``t_high``: the t interval, from 2 pairs."""
    n = len(diffs)
    out = {"n": n, "mean": statistics.fmean(diffs) if n else None, "sd": None, "low": None, "high": None,
           "method": None, "t_low": None, "t_high": None}
    if n < 2:
        return out
    out["sd"] = statistics.stdev(diffs)
    half = t_quantile(1 - (1 - LEVEL) / 2, n - 1) * out["sd"] / math.sqrt(n)
    out["t_low"], out["t_high"] = out["mean"] - half, out["mean"] + half
    if n >= MIN_T_PAIRS:
        out.update(low=out["t_low"], high=out["t_high"], method="t")
    else:
        low, high = _bootstrap(diffs)
        out.update(low=low, high=high, method="bootstrap")
    return out


def verdict(interval):
    """"A > B", "A < B" or "undecided (CI contains 0)" for a :func:`paired_interval`; "undecided (one
    pair)" and "unpaired (no shared seed)" where it has no interval."""
    if interval["n"] == 0:
        return "unpaired (no shared seed)"
    if interval["low"] is None:
        return "undecided (one pair)"
    # Below 5 pairs the bootstrap interval is reported, but a percentile bootstrap of 2-4 values is
    # little more than their range: a verdict also needs the (wider) t interval to exclude 0.
    lows, highs = [interval["low"], interval["t_low"]], [interval["high"], interval["t_high"]]
    if min(lows) > 0:
        return "A > B"
    if max(highs) < 0:
        return "A < B"
    return "undecided (CI contains 0)"


def differing_part(config_a, config_b):
    """The one PART in which two configurations differ, or None (equal, or differing elsewhere or in more)."""
    keys = {key for key in set(config_a) | set(config_b) if config_a.get(key, ...) != config_b.get(key, ...)}
    parts = {_PART_OF.get(key) for key in keys}
    return parts.pop() if len(parts) == 1 and None not in parts else None


def pair_runs(group_a, group_b):
    """``(pairs, only_a, only_b)``: ``[(run of A, run of B)]`` of the seeds both groups have (their counted
    runs, duplicates left out) in A's order, and the runs of the seeds only one side has."""
    seeds_b = {repr(run["seed"]): run for run in group_b["runs"]}
    seeds_a = {repr(run["seed"]) for run in group_a["runs"]}
    pairs = [(run, seeds_b[repr(run["seed"])]) for run in group_a["runs"] if repr(run["seed"]) in seeds_b]
    only_a = [run for run in group_a["runs"] if repr(run["seed"]) not in seeds_b]
    only_b = [run for run in group_b["runs"] if repr(run["seed"]) not in seeds_a]
    return pairs, only_a, only_b


def compare(group_a, group_b, part=None):
    """The paired comparison of A and B: ``{"a", "b" (the groups), "part", "pairs", "seeds", "only_a",
    "only_b" (seeds), "unfinished" (a paired run is), "final", "best"}``, each metric a
    :func:`paired_interval` of A - B (top-1 points) with its ``verdict``."""
    pairs, only_a, only_b = pair_runs(group_a, group_b)
    out = {"a": group_a, "b": group_b, "part": part, "pairs": len(pairs), "seeds": [a["seed"] for a, _ in pairs],
           "only_a": [run["seed"] for run in only_a], "only_b": [run["seed"] for run in only_b],
           "unfinished": any(not run["finished"] for pair in pairs for run in pair)}
    for metric in ("final", "best"):
        interval = paired_interval([a[f"{metric}_top1"] - b[f"{metric}_top1"] for a, b in pairs])
        out[metric] = dict(interval, verdict=verdict(interval))
    return out


def _is_baseline(config, part):
    """Whether ``config`` holds the baseline of ``part`` (BASELINES)."""
    return part in BASELINES and all(config.get(key) == value for key, value in BASELINES[part].items())


def comparisons(groups):
    """Every comparison of two of ``groups`` whose configurations differ in one PART. B is the baseline
    (BASELINES: XNOR-Net weights, no weight shift, straight-through backward, sign activations) where one
    side holds it, else the group that comes first in ``groups`` (the table's order)."""
    found = []
    for j, later in enumerate(groups):
        for earlier in groups[:j]:
            part = differing_part(later["config"], earlier["config"])
            if part is None:
                continue
            a, b = later, earlier
            if _is_baseline(a["config"], part) and not _is_baseline(b["config"], part):
                a, b = b, a
            found.append(compare(a, b, part))
    return found
