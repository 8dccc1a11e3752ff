"""Hybrid Binary Networks: --binInputs rebuilds the original hybrids from their fbin twins, the planner's
choices (analysis.hybrid) on hand-made tables, the error formulas it ranks by, and its CLI end to end."""

import itertools
import random
import re
from fractions import Fraction

import pytest
import torch
from torch import nn

import binarize
import main
import models
from models.__main__ import main as models_cli
from tinydata import split_tree
from analysis import hybrid
from analysis.binerrors import input_binarization_losses

# ------------------------------------------------------------------ the original hybrids from fbin twins

TWINS = {"sketchanethybrid": "sketchanetfbin", "sketchanethybridv2": "sketchanetfbin",
         "resnethybrid18": "resnetfbin18", "resnethybridv218": "resnetfbin18", "resnethybridv318": "resnetfbin18",
         "squeezenethybrid": "squeezenetfbin", "squeezenethybridv2": "squeezenetfbin",
         "squeezenethybridv3": "squeezenetfbin", "alexnethybrid": "alexnetfbin", "alexnethybridv2": "alexnetfbin"}
# How a hybrid differs from its twin rebuilt with the hybrid's binarized inputs (models/*.py VARIANTS):
# SqueezeNet's hybrids keep the bias of Fire2's three convs (2-4), which fbin drops; alexnethybrid has
# Dropout2d(0.1) after pool 5 and after conv 6, where alexnetfbin's p = 0 dropout is left out.
FIRE2_BIASES = {"features.fire2.squeeze.conv.bias": (16,), "features.fire2.expand1x1.conv.bias": (64,),
                "features.fire2.expand3x3.conv.bias": (64,)}
EXTRA_BIASES = {"squeezenethybrid": FIRE2_BIASES, "squeezenethybridv2": FIRE2_BIASES,
                "squeezenethybridv3": FIRE2_BIASES}
EXTRA_DROPOUTS = {"alexnethybrid": {"features.drop5": 0.1, "features.drop6": 0.1}}


def _meta(name, **options):
    with torch.device("meta"):
        return models.build_model(name, 250, init=False, **options)


def _dropouts(model):
    return {n: m.p for n, m in model.named_modules() if isinstance(m, (nn.Dropout, nn.Dropout2d))}


def _modules(model):
    """Every module's name and type, dropouts aside (compared on their own)."""
    return [(n, type(m).__name__) for n, m in model.named_modules() if not isinstance(m, (nn.Dropout, nn.Dropout2d))]


@pytest.mark.parametrize("hybrid_name", list(TWINS))
def test_bin_inputs_rebuild_each_original_hybrid_from_its_fbin_twin(hybrid_name):
    info = models.model_info(hybrid_name)
    original = _meta(hybrid_name)
    rebuilt = _meta(TWINS[hybrid_name], bin_inputs=info.binary_inputs)
    size, channels = info.default_inpsize, info.default_in_channels
    rows_original = models.conv_table(original, size, channels)
    rows_rebuilt = models.conv_table(rebuilt, size, channels)
    biased = {i for i, name, _ in binarize.conv_layers(original) if f"{name}.bias" in EXTRA_BIASES.get(hybrid_name, {})}
    for a, b in zip(rows_original, rows_rebuilt, strict=True):
        if a["index"] in biased:  # the only difference a conv row may show
            assert a["bias"] and not b["bias"], a["index"]
            a, b = dict(a, bias=None), dict(b, bias=None)
        assert a == b
    assert sorted(r["index"] for r in rows_original if r["binary_input"]) == list(info.binary_inputs)
    params_original = {n: tuple(p.shape) for n, p in original.named_parameters()}
    params_rebuilt = {n: tuple(p.shape) for n, p in rebuilt.named_parameters()}
    assert params_original == dict(params_rebuilt, **EXTRA_BIASES.get(hybrid_name, {}))
    assert _modules(original) == _modules(rebuilt)
    assert _dropouts(original) == dict(_dropouts(rebuilt), **EXTRA_DROPOUTS.get(hybrid_name, {}))


# --------------------------------------------------------------------------- choices on hand-made tables

TIES = [(2, 1.0, 100), (3, 2.0, 50), (4, 1.0, 50), (5, 1.0, 50)]  # (index, error, MACs)


def test_keep_takes_the_highest_errors_then_the_cheaper_then_the_lower_index():
    assert hybrid.plan_keep(TIES, 0) == []
    assert hybrid.plan_keep(TIES, 1) == [3]
    assert hybrid.plan_keep(TIES, 2) == [3, 4]        # 2, 4 and 5 tie at 1.0: 4 and 5 are cheaper, 4 is lower
    assert hybrid.plan_keep(TIES, 3) == [3, 4, 5]
    assert hybrid.plan_keep(TIES, 4) == [2, 3, 4, 5]
    rows = [dict(index=i, error=e, macs=m) for i, e, m in TIES]
    assert hybrid.plan_keep(rows, 2) == [3, 4]
    assert hybrid.binarized_inputs(TIES, [3, 4]) == [2, 5]
    for bad in (-1, 5):
        with pytest.raises(hybrid.PlanError, match=r"0 <= N <= 4"):
            hybrid.plan_keep(TIES, bad)


def test_budget_exactly_met_is_allowed():
    # Making conv 2 real costs 6400 x 63/64 = 6300 MACs more: F = 2 over a 6300-MAC model is exactly that.
    table = [(2, 1.0, 6400)]
    assert hybrid.plan_budget(table, 2, 6300) == [2]
    assert hybrid.plan_budget(table, 2.0, 6300) == [2]
    assert hybrid.plan_budget(table, 1.999, 6300) == []
    assert hybrid.plan_budget(table, 1.5, 12600) == [2]   # decimal F taken as written, not as its float
    assert hybrid.plan_budget(table, Fraction(3, 2), 12600) == [2]
    assert hybrid.plan_budget(table, 1, 6300) == []       # F = 1: the fully binarized model itself


def test_budget_below_one_names_the_smallest_feasible_factor():
    for bad in (0.99, 0, -2):
        with pytest.raises(hybrid.PlanError, match=r"smallest feasible budget is --budget 1$"):
            hybrid.plan_budget(TIES, bad, 1000)
    with pytest.raises(hybrid.PlanError, match="finite"):
        hybrid.plan_budget(TIES, float("nan"), 1000)


def test_large_budget_keeps_everything_real_and_ties_prefer_cheaper_then_lower():
    base = 1000 + sum(m for _, _, m in TIES) / 64
    wbin = 1000 + sum(m for _, _, m in TIES)
    assert hybrid.plan_budget(TIES, Fraction(wbin) / Fraction(base), base) == [2, 3, 4, 5]
    assert hybrid.plan_budget(TIES, 1000, base) == [2, 3, 4, 5]
    # Room for exactly one 50-MAC input besides conv 3: 2, 4 and 5 tie in error; 4 and 5 are cheaper, 4 lower.
    room = Fraction(2 * 50 * 63, 64)
    assert hybrid.plan_budget(TIES, 1 + room / Fraction(base), base) == [3, 4]
    # Room for 100 MACs: conv 3 alone and 4 + 5 leave the same error binarized; the cheaper plan wins, and at
    # equal cost the one with fewer real inputs.
    factor = 1 + room / Fraction(base)
    assert hybrid.plan_budget([(3, 2.0, 60), (4, 1.0, 50), (5, 1.0, 50)], factor, base) == [3]
    assert hybrid.plan_budget([(3, 2.0, 100), (4, 1.0, 50), (5, 1.0, 50)], factor, base) == [3]
    assert hybrid.plan_budget([(3, 2.0, 101), (4, 1.0, 50), (5, 1.0, 50)], factor, base) == [4, 5]


def test_budget_keeps_inputs_of_real_weight_convs_real_for_free():
    table = [dict(index=2, error=0.5, macs=10**6, binary_weight=False), dict(index=3, error=0.4, macs=10**6)]
    assert hybrid.plan_budget(table, 1, 10**6 + 10**6 / 64) == [2]


def _brute_force(table, factor, base):
    """The rule of the module docstring over every subset: least binarized error, then cost, count, indices."""
    capacity = (Fraction(str(factor)) - 1) * Fraction(base) * 64
    total = sum(Fraction(e) for _, e, _ in table)
    best = None
    for r in range(len(table) + 1):
        for subset in itertools.combinations(table, r):
            extra = sum(63 * m for _, _, m in subset)
            if extra > capacity:
                continue
            key = (total - sum(Fraction(e) for _, e, _ in subset), extra, r, sorted(i for i, _, _ in subset))
            best = key if best is None or key < best else best
    return best[3]


def test_budget_matches_a_brute_force_over_all_subsets():
    rng = random.Random(7)
    for trial in range(120):
        n = rng.randint(1, 10)
        indices = sorted(rng.sample(range(2, 40), n))
        if trial % 2:  # tie-heavy: few distinct errors and MACs
            table = [(i, rng.choice([0.0, 0.25, 0.5, 1.0]), rng.choice([0, 64, 128, 640])) for i in indices]
        else:
            table = [(i, rng.random(), rng.randint(0, 10**6)) for i in indices]
        base = sum(m for _, _, m in table) / 64 + rng.randint(0, 10**5) + 1
        factor = rng.choice([1, 1.25, 2, 5, 30, round(1 + 4 * rng.random(), 3)])
        assert hybrid.plan_budget(table, factor, base) == _brute_force(table, factor, base), (table, factor, base)


def test_budget_is_fast_on_sixty_equal_layers():
    table = [(i, 1.0, 1000) for i in range(2, 62)]
    assert hybrid.plan_budget(table, 30, 60 * 1000 / 64) == list(range(2, 2 + 27))  # 29 x 60 / 63 = 27 fit


# ---------------------------------------------------------------------------------- costs and errors

def _tiny(weight_binary=True):
    """conv 1 (real) -> BN -> sign -> conv 2 -> flatten -> Linear, for 1 x 6 x 6 inputs."""
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), binarize.BinActive(), nn.Conv2d(2, 4, 3),
                          nn.Flatten(), nn.Linear(16, 3))
    if weight_binary:
        binarize.binarize_layer(model[3], "dab")
    return model.eval()


def test_equivalent_macs_follow_the_one_in_64_convention():
    layers = hybrid.layer_costs(_tiny(), 6, 1)
    assert [(r["index"], r["macs"], r["binary_weight"], r["binary_input"]) for r in layers] == [
        (1, 2 * 4 * 4 * 9, False, False), (2, 4 * 2 * 2 * 2 * 9, True, True), (None, 16 * 3, False, False)]
    assert hybrid.equivalent_macs(layers) == 288 + Fraction(288, 64) + 48      # fully binary conv 2
    assert hybrid.equivalent_macs(layers, []) == 288 + 288 + 48               # binary weights, real input
    real_weights = hybrid.layer_costs(_tiny(weight_binary=False), 6, 1)
    assert hybrid.equivalent_macs(real_weights) == 288 + 288 + 48             # sign before real weights


def test_error_formulas_against_a_direct_computation():
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), binarize.BinActive(), nn.Conv2d(3, 4, 3), nn.ReLU(),
                          nn.BatchNorm2d(4), binarize.BinActive(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        for bn, scale in ((model[0], 0.3), (model[4], 2.5)):  # inputs well inside and well outside [-1, 1]
            bn.weight.uniform_(0.5, 1.5).mul_(scale)
            bn.bias.uniform_(-0.2, 0.2)
    batches = [torch.randn(3, 3, 5, 5) * 2 + 0.3, torch.randn(2, 3, 5, 5)]  # uneven: every sample counts once
    loader = [(x, torch.zeros(len(x), dtype=torch.long)) for x in batches]
    captured = {1: [], 2: []}  # conv index -> inputs of its sign
    hooks = [model[1].register_forward_hook(lambda m, a, o: captured[1].append(a[0].detach().clone())),
             model[5].register_forward_hook(lambda m, a, o: captured[2].append(a[0].detach().clone()))]
    rows = input_binarization_losses(model, loader, torch.device("cpu"))
    for h in hooks:
        h.remove()
    assert [(r["index"], r["name"]) for r in rows] == [(1, "2"), (2, "6")]
    for r in rows:
        x = torch.cat(captured[r["index"]]).double().flatten(1)
        assert len(x) == 5
        mse = (torch.sign(x) - x).square().mean(dim=1)
        assert r["rmse"] == pytest.approx(mse.mean().sqrt().item(), rel=1e-5)
        assert r["nrmse"] == pytest.approx((mse / x.square().mean(dim=1)).mean().sqrt().item(), rel=1e-5)
        assert r["err_1mx2"] == pytest.approx((1 - x.clamp(-1, 1).square()).abs().mean(dim=1).mean().item(),
                                              rel=1e-5)


# --------------------------------------------------------------------------------------- CLI end to end

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A nin trained one epoch on a tiny TU-Berlin tree (binary weights, inputs 2-8 binarized), and one
    without binarized inputs."""
    root = tmp_path_factory.mktemp("hybrid")
    data = str(split_tree(root / "data", ["alarm clock", "bear"], train_per_class=3, val_per_class=2,
                          subdir="tuberlin"))
    paths = {}
    for name, extra in (("fbin", []), ("none", ["--binInputs", "none"])):
        argv = ["--dataset", "tuberlin", "--data_dir", data, "--model_def", "nin", "--inpsize", "32", "--binaryWeight",
                "--epochs", "1", "--batch-size", "8", "--testbatchsize", "4", "--workers", "0",
                "--logdir", str(root / "logs"), "--store", str(root / "ckpt" / name), "--name", name, *extra]
        assert main.main(argv) == 0
        paths[name] = str(root / "ckpt" / name / "last.pth")
    return paths


ROW = re.compile(r"^\s*(\d+)\s+(\S+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d,.]+) M\s+([\d,.]+) M\s+"
                 r"(real \(kept\)|binarized)")


def _run_planner(capsys, *argv):
    assert hybrid.main(list(argv)) == 0
    out = capsys.readouterr().out
    rows = [m.groups() for m in map(ROW.match, out.splitlines()) if m]
    value = re.search(r"^--binInputs (\S+)", out, re.M).group(1)
    costs = re.search(r"equivalent MACs: plan ([\d,.]+) M .*fully binarized .*?\) ([\d,.]+) M", out)
    return out, rows, value, [float(c.replace(",", "")) for c in costs.groups()]


def test_cli_plans_on_a_trained_checkpoint(checkpoints, capsys):
    capsys.readouterr()
    out, rows, value, _ = _run_planner(capsys, checkpoints["fbin"], "--keep", "2")
    assert [int(r[0]) for r in rows] == [2, 3, 4, 5, 6, 7, 8]
    real = sorted(int(r[0]) for r in rows if r[7] != "binarized")
    by_error = sorted(rows, key=lambda r: -float(r[3]))  # nrmse, the default metric
    assert len(real) == 2 and set(real) == {int(r[0]) for r in by_error[:2]}
    assert value == binarize.format_indices(sorted(int(r[0]) for r in rows if r[7] == "binarized"))
    command = re.search(r"^train the hybrid: python main\.py (.+)$", out, re.M).group(1).split()
    assert command[command.index("--model_def") + 1] == "nin" and command[-2:] == ["--binInputs", value]
    assert models_cli(["nin", "--binInputs", value]) == 0
    table = capsys.readouterr().out.splitlines()[2:]
    assert [int(line.split()[0].rstrip("*")) for line in table if line.split()[6] == "yes"] == \
        binarize.parse_indices(value)

    out, rows, value, (plan_cost, fbin_cost) = _run_planner(capsys, checkpoints["fbin"], "--budget", "2")
    assert "--budget 2:" in out
    assert value == binarize.format_indices(sorted(int(r[0]) for r in rows if r[7] == "binarized"))
    assert fbin_cost < plan_cost <= 2 * fbin_cost + 1e-3
    assert models_cli(["nin", "--binInputs", value]) == 0


def test_cli_bad_input_gives_one_line_and_exit_2(checkpoints, tmp_path, capsys):
    capsys.readouterr()
    ckpt = checkpoints["fbin"]
    cases = {
        "neither": ([ckpt], "--keep N or --budget F"),
        "both": ([ckpt, "--keep", "1", "--budget", "2"], "not allowed with"),
        "missing checkpoint": ([str(tmp_path / "none.pth"), "--keep", "1"], "does not exist"),
        "no binarized inputs": ([checkpoints["none"], "--keep", "1"], "no conv with a binarized input"),
        "keep too many": ([ckpt, "--keep", "8"], "0 <= N <= 7"),
        "keep negative": ([ckpt, "--keep", "-1"], "0 <= N <= 7"),
        "budget below 1": ([ckpt, "--budget", "0.5"], "smallest feasible budget is --budget 1"),
        "missing data": ([ckpt, "--keep", "1", "--data_dir", str(tmp_path / "nodata")], "nodata"),
    }
    for label, (argv, fragment) in cases.items():
        assert hybrid.main(argv) == 2, label
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err, (label, err)
        assert captured.out == "", label
