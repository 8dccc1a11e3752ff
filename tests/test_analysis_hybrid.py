"""Hybrid Binary Networks: --binInputs rebuilds the original hybrids from their fbin twins, the planner's
choices (analysis.hybrid) on hand-made tables, the costs it prices them by, the command that trains the
hybrid (the source run's whole recipe), and its CLI end to end. The error formulas it ranks by are
tested in test_analysis_binerrors.py."""

import contextlib
import itertools
import os
import random
import re
import shlex
import signal
from fractions import Fraction

import pytest
import torch
from torch import nn

import binarize
import main
import models
import opts
from models.__main__ import main as models_cli
from tinydata import split_tree
from analysis import hybrid

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


@contextlib.contextmanager
def _deadline(seconds):
    """TimeoutError if the block runs longer than ``seconds`` (wall clock; SIGALRM, main thread)."""
    def expire(signum, frame):
        raise TimeoutError(f"still searching after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_budget_on_sixty_equal_layers_takes_the_lowest_indices_without_searching_every_subset():
    # Sixty equal layers: any k of them are equally good, so the tie rule picks convs 2 .. k + 1. Without the
    # dominance between equal layers the search would visit C(60, k) sets (about 1e17 for k = 27); 60 s is
    # thousands of times what the exact search needs, and far less than the enumeration.
    table = [(i, 1.0, 1000) for i in range(2, 62)]
    base = Fraction(60 * 1000, 64)
    with _deadline(60):
        for factor, fit in ((1, 0), (2, 0), (3, 1), (30, 27), (45, 41), (61, 57), (64, 60), (100, 60)):
            # extra room (factor - 1) x base, each real input costs 1000 x 63 / 64: fit = (factor - 1) x 60 / 63
            assert fit == min(60, (factor - 1) * 60 // 63)
            assert hybrid.plan_budget(table, factor, base) == list(range(2, 2 + fit)), factor


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


# ------------------------------------------------------------------------------- the hybrid's command

# What the command changes (every other resolved option is the source run's): the plan, a run name and a
# checkpoint folder of its own, and what said how the source was started or what it did instead of training.
CHANGED = {"binInputs", "name", "store", "resume", "start_epoch", "overwrite", "pretrained", "pretrained_file",
           "evaluate", "testOnly", "export", "summary", "packed", "ngpus"}
# Their values in the hybrid's command, where they do not depend on the case.
STARTS_FRESH = dict(resume=None, start_epoch=None, overwrite=False, pretrained=False, pretrained_file=None,
                    evaluate=False, testOnly=False, export=None, summary=False, packed="off", ngpus=1)
# The recipe the planner's command used to drop (it rebuilt a few flags by hand).
ONCE_DROPPED = {"dataNorm", "edeTmin", "edeTmax", "teacher", "teacherModel", "kdT", "kdAlpha", "amp", "channelsLast",
                "syncBN", "labelSmoothing", "tenCrop", "cachemode", "workers", "logdir", "saveEvery"}
RICH = ("--dataset tuberlin --data_dir /data/tub --nClasses 250 --workers 3 --batch-size 32 --testbatchsize 8 "
        "--tenCrop --inpsize 240 --cachemode --cacheDir /cache --fold 2 --skipBadImages --sketchyVariant "
        "tx_000100000000 --sketchyDropInvalid --dataNorm imagenet --model_def sketchanetfbin --weight_init "
        "--binLayers 2-6 --binarizer xnor --weightShift wsd --binActivation asd --backward ede --edeTmin 0.01 "
        "--edeTmax 5 --calculateBinarizationLosses --calculateWeightBinarizationLosses --epochs 7 --optimType sgd "
        "--criterion crossentropy --labelSmoothing 0.1 --learningratescheduler cosine --maxlr 0.05 --minlr 1e-6 "
        "--decayinterval 3 --decaylevel 4 --momentum 0.8 --nesterov --weightDecay 1e-4 --teacher t.pth "
        "--teacherModel resnet34 --kdT 2 --kdAlpha 0.5 --manualSeed 9 --device cuda --logdir logs "
        "--no-tensorboard --verbose --printfreq 7 --resume auto --saveEvery 5 --amp bf16 --channelsLast --syncBN")
SOURCES = {  # argv of the source run, with the folders its checkpoint records: (name, logdir, store)
    "rich recipe": (RICH, ("src", "logs", "savedmodels/src")),
    "fresh over a run, pretrained": ("--model_def resnetfbin18 --binarizer sdbnn --overwrite --pretrained "
                                     "--pretrained_file w.pth --ngpus 4 --dataset sketchy",
                                     ("sweep/r1", "runs", "/scratch/ckpt/r1")),
    "evaluation and export": ("--model_def nin --binInputs 3-5 --evaluate --pretrained_file m.safetensors --packed "
                              "on --export o.safetensors --summary --binaryWeight --no-binaryWeight", None),
    "resumed at an epoch": ("--model_def sketchanetfbin --resume ckpt.pth --start-epoch 3 --amp fp16",
                            ("digits_sketchanetfbin", "runs", "savedmodels/digits_sketchanetfbin")),
}


def _source(argv, folders):
    options = vars(opts.parse(argv.split()))
    if folders:  # what main.py records: the resolved name and folders
        options.update(zip(("name", "logdir", "store"), folders))
    return options


def _parsed_command(command):
    argv = shlex.split(command)
    assert argv[:2] == ["python", "main.py"]
    return vars(opts.parse(argv[2:]))


def _assert_same_except_changed(parsed, source, changed=CHANGED):
    assert set(parsed) == set(source)  # every option of main.py
    differ = {key: (source[key], parsed[key]) for key in source if key not in changed and parsed[key] != source[key]}
    assert differ == {}


@pytest.mark.parametrize("case", list(SOURCES))
def test_the_command_is_the_source_recipe_with_only_the_planned_changes(case):
    argv, folders = SOURCES[case]
    source = _source(argv, folders)
    parsed = _parsed_command(hybrid.train_command(source, "2,4-5"))
    _assert_same_except_changed(parsed, source)
    assert parsed["binInputs"] == [2, 4, 5]
    assert {key: parsed[key] for key in STARTS_FRESH} == STARTS_FRESH
    source_name = folders[0] if folders else f"{source['dataset']}_{source['model_def']}"
    assert parsed["name"] == f"{source_name}_hybrid_2_4-5" != source["name"]
    if case == "rich recipe":
        defaults = vars(opts.parse(["--model_def", "sketchanetfbin"]))
        assert {key for key in ONCE_DROPPED if source[key] != defaults[key]} == ONCE_DROPPED
    # the checkpoint folder: main.py's default for the new name, or beside a store the source chose
    assert parsed["store"] == ("/scratch/ckpt/r1_hybrid_2_4-5" if case.startswith("fresh") else None)


def test_the_command_takes_the_hybrid_run_and_data_given_to_the_planner():
    source = _source(*SOURCES["rich recipe"])
    command = hybrid.train_command(source, "none", name="exp/hyb", logdir="elsewhere", store="ck/hyb",
                                   data_dir="/new/tub")
    parsed = _parsed_command(command)
    assert (parsed["name"], parsed["logdir"], parsed["store"], parsed["data_dir"]) == \
        ("exp/hyb", "elsewhere", "ck/hyb", "/new/tub")
    assert parsed["binInputs"] == [] and "--binInputs none" in command
    # With every input real, the activation binarizer's options have no effect: the command leaves them out.
    idle = set(opts.idle_options(dict(source, binInputs=[]))) | {"actBackward", "backward"}
    _assert_same_except_changed(parsed, source, CHANGED | {"logdir", "data_dir"} | idle)
    other = _parsed_command(hybrid.train_command(source, "3", dataset="sketchyrecognition"))
    assert other["dataset"] == "sketchyrecognition" and other["nClasses"] is None  # its data gives the classes
    _assert_same_except_changed(other, source, CHANGED | {"dataset", "nClasses"})


def test_a_name_main_py_would_refuse_is_a_usage_error():
    source = _source(*SOURCES["resumed at an epoch"])
    for bad in ("../up", "/abs/name"):
        with pytest.raises(opts.UsageError, match="must be a relative name"):
            hybrid.train_command(source, "2", name=bad)


# --------------------------------------------------------------------------------------- CLI end to end

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A nin trained one epoch on a tiny TU-Berlin tree without binarized inputs ("none"), and one with
    binary weights and inputs 2-8 binarized ("fbin") trained with a recipe far from the defaults, distilled
    from the first."""
    root = tmp_path_factory.mktemp("hybrid")
    data = str(split_tree(root / "data", ["alarm clock", "bear"], train_per_class=3, val_per_class=2,
                          subdir="tuberlin"))
    recipe = ["--optimType", "sgd", "--nesterov", "--maxlr", "0.05", "--weightDecay", "1e-4", "--learningratescheduler",
              "cosine", "--criterion", "crossentropy", "--labelSmoothing", "0.1", "--backward", "ede", "--edeTmin",
              "0.01", "--edeTmax", "5", "--dataNorm", "imagenet", "--manualSeed", "7", "--no-tensorboard",
              "--teacher", str(root / "ckpt" / "none" / "last.pth"), "--kdT", "2", "--kdAlpha", "0.5",
              "--resume", "auto"]
    paths = {}
    for name, extra in (("none", ["--binInputs", "none"]), ("fbin", recipe)):
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
    command = re.search(r"^train the hybrid: (.+)$", out, re.M).group(1)
    parsed, source = _parsed_command(command), torch.load(checkpoints["fbin"], weights_only=True)["args"]
    assert parsed["binInputs"] == binarize.parse_indices(value) and parsed["teacher"] == source["teacher"]
    assert parsed["name"] == f"fbin_hybrid_{value.replace(',', '_')}" and parsed["resume"] is None
    assert parsed["store"] == os.path.join(os.path.dirname(source["store"]), parsed["name"])
    _assert_same_except_changed(parsed, source, {"binInputs", "name", "store", "resume"})
    assert models_cli(["nin", "--binInputs", value]) == 0
    table = capsys.readouterr().out.splitlines()[2:]
    assert [int(line.split()[0].rstrip("*")) for line in table if line.split()[6] == "yes"] == \
        binarize.parse_indices(value)

    out, rows, value, (plan_cost, fbin_cost) = _run_planner(capsys, checkpoints["fbin"], "--budget", "2", "--name",
                                                            "hyb", "--logdir", "hlogs")
    assert "--budget 2:" in out
    parsed = _parsed_command(re.search(r"^train the hybrid: (.+)$", out, re.M).group(1))
    assert (parsed["name"], parsed["logdir"], parsed["binInputs"]) == ("hyb", "hlogs", binarize.parse_indices(value))
    assert parsed["store"] == os.path.join(os.path.dirname(source["store"]), "hyb")
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
        "hybrid name outside the folders": ([ckpt, "--keep", "1", "--name", "../up"], "must be a relative name"),
    }
    for label, (argv, fragment) in cases.items():
        assert hybrid.main(argv) == 2, label
        captured = capsys.readouterr()
        err = captured.err.strip()
        assert len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err, (label, err)
        assert captured.out == "", label
