"""runx.sh: every named run's command line (paper grid and SD-BNN table) parses and resolves to what its
model is; name lookups are never flaky; a dry run runs nothing (not even the planner) whatever data
variable is missing; the planner and the report are called as ``python3 -m analysis.*``.

Every test here starts bash. Those that would run something get a copy of runx.sh and clean.sh in a
temporary folder and a fake ``python3``/``torchrun`` first on PATH that only records its arguments."""

import os
import shlex
import shutil
import stat
import subprocess

import pytest

import models
import opts
from conftest import subprocess_timeout

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = dict(TUBERLIN_DIR="/data/tub", SKETCHY_DIR="/data/sketchy", CIFAR10_DIR="/data/cifar",
            IMAGENET_DIR="/data/imagenet")
TIMEOUT = 5  # seconds (reference machine, see conftest.subprocess_timeout) one runx.sh call may take
# A stand-in for python3 and torchrun: one line per call in $CALLS; as the planner, it prints a plan.
FAKE = """#!/usr/bin/env bash
printf '%s\\n' "$*" >> "$CALLS"
if [[ "$1 $2" == "-m analysis.hybrid" ]]; then
    echo "hybrid plan ..."; echo "--binInputs 3,5-7   (real inputs: convs 2,4)"
fi
"""


def _env(**extra):
    """The environment without any data variable (and without DRYRUN), plus ``extra``."""
    unset = (*DATA, "DRYRUN", "OVERWRITE", "NPROC", "RUN_NAME", "REPORT_DIR", "FOLD", "WORKERS", "TEACHER", "DIGITS_DIR")
    env = {k: v for k, v in os.environ.items() if k not in unset}
    env.update(extra)
    return env


def runx(*argv, cwd=ROOT, **env):
    return subprocess.run(["bash", os.path.join(cwd, "runx.sh"), *argv], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=subprocess_timeout(TIMEOUT))


@pytest.fixture
def sandbox(tmp_path):
    """A copy of runx.sh and clean.sh, and a fake python3/torchrun recording into ``calls``."""
    for name in ("runx.sh", "clean.sh"):
        shutil.copy(os.path.join(ROOT, name), tmp_path / name)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("python3", "torchrun"):
        (bin_dir / name).write_text(FAKE)
        (bin_dir / name).chmod((bin_dir / name).stat().st_mode | stat.S_IXUSR)
    calls = tmp_path / "calls.txt"
    env = dict(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", CALLS=str(calls))
    return tmp_path, calls, env


def _calls(calls):
    return calls.read_text().splitlines() if calls.exists() else []


def _commands(stdout):
    return [shlex.split(line) for line in stdout.splitlines() if line.strip()]


def test_every_run_is_listed_once_and_every_command_resolves_to_its_model():
    names = runx("list").stdout.split()
    assert len(names) == len(set(names)) == 36
    assert {"cifar10_resnet20_sdbnn", "imagenet_birealnet18_stage2", "tuberlin_sketchanetwbin_dab"} <= set(names)
    done = runx("all", DRYRUN="1", **DATA)
    assert done.returncode == 0 and done.stderr == ""
    commands = _commands(done.stdout)
    assert [argv[argv.index("--name") + 1] for argv in commands] == names
    for argv in commands:
        assert argv[:2] == ["python3", "main.py"]
        args = opts.parse(argv[2:])
        info = models.model_info(args.model_def)
        assert args.resume == "auto" and args.epochs >= 256, args.name
        if info.variant == "1w1a":  # SD-BNN's binary conv: EDE on CIFAR-10, Bi-Real's rules on ImageNet
            assert (args.binarizer, args.weightShift, args.binActivation) == ("sign", "wsd", "asd"), args.name
            assert args.binaryWeight == ("stage1" not in args.name), args.name
            imagenet = args.dataset == "imagenet12"
            assert args.weightBackward == (None if "stage1" in args.name else "ste" if imagenet else "ede")
            assert args.actBackward == ("approxsign" if imagenet else "ede"), args.name
        if args.name == "imagenet_birealnet18_stage2":
            assert args.pretrained_file.endswith("stage1/last.pth") and args.teacher.endswith("teacher/best.pth")
        if args.name.startswith(("tuberlin_", "sketchy_")):  # the paper's grid: <dataset>_<family><variant>_<binarizer>
            variant = args.name.split("_")[1][-4:]
            assert args.binaryWeight == info.binarized == (variant in ("wbin", "fbin")), args.name
            assert info.inputs_binarized == (variant == "fbin"), args.name
            assert args.data_dir == DATA["TUBERLIN_DIR" if args.dataset == "tuberlin" else "SKETCHY_DIR"]
            # the model's own facts, as the registry has them
            assert (args.inpsize, args.binLayers) == (info.default_inpsize, list(info.bin_layers)), args.name
            if args.binaryWeight:
                assert args.binarizer == args.name.rsplit("_", 1)[1]


def test_each_binarized_layer_of_the_sdbnn_runs_has_its_recipes_backward_rule():
    import binarize
    from launch import build
    done = runx("all", DRYRUN="1", **DATA)
    runs = {argv[argv.index("--name") + 1]: opts.parse(argv[2:]) for argv in _commands(done.stdout)}
    expected = {  # run -> (weight binarizers, input binarizers) as {(class, rule)}
        "cifar10_resnet20_sdbnn": ({("Sign", "ede")}, {("ASD", "ede")}),
        "cifar10_vgg_small_sdbnn": ({("Sign", "ede")}, {("ASD", "ede")}),
        "cifar10_resnet18_sdbnn": ({("Sign", "ede")}, {("ASD", "ede")}),
        "imagenet_birealnet18_stage1": (set(), {("ASD", "approxsign")}),
        "imagenet_birealnet18_stage2": ({("Sign", "ste")}, {("ASD", "approxsign")}),
    }
    for name, (weights, inputs) in expected.items():
        args = runs[name]
        model = build.build_network(args, 10, 3)
        info = models.model_info(args.model_def)
        weight_rows = binarize.binarized_layers(model)
        input_rows = binarize.input_binarizers(model)
        assert [i for i, *_ in weight_rows] == (list(info.bin_layers) if weights else []), name
        assert [i for i, *_ in input_rows] == list(info.binary_inputs), name
        assert {(type(b).__name__, b.surrogate.name) for *_, b in weight_rows} == weights, name
        assert all(b.shift is not None for *_, b in weight_rows), name  # WSD on every binarized weight
        assert {(type(b).__name__, b.surrogate.name) for *_, b in input_rows} == inputs, name
        assert opts.uses_ede(vars(args)) == name.startswith("cifar10"), name


def test_a_name_lookup_never_fails_under_pipefail():
    # The lookup once piped the run list into 'grep -q', which exits at the first match: the listing then
    # died of SIGPIPE and pipefail turned a known run into "unknown run" about half the time.
    for attempt in range(50):
        done = runx("tuberlin_sketchanetwbin_dab", DRYRUN="1", TUBERLIN_DIR="/x")
        assert done.returncode == 0 and "unknown run" not in done.stderr, (attempt, done.stderr)
        assert "--name tuberlin_sketchanetwbin_dab" in done.stdout
    unknown = runx("tuberlin_sketchanetwbin_nope", DRYRUN="1", TUBERLIN_DIR="/x")
    assert unknown.returncode == 2 and unknown.stderr.strip() == \
        "runx.sh: unknown run 'tuberlin_sketchanetwbin_nope'; see 'bash runx.sh list'"


def test_a_dry_run_of_all_prints_every_command_runs_nothing_and_names_the_missing_data_once(sandbox):
    folder, calls, env = sandbox
    done = runx("all", cwd=str(folder), DRYRUN="1", TUBERLIN_DIR="/data/tub", **env)
    assert done.returncode == 0, done.stderr
    commands = _commands(done.stdout)
    assert len(commands) == 36 and _calls(calls) == [] and not (folder / "textlogs").exists()
    dirs = [argv[argv.index("--data_dir") + 1] for argv in commands]
    assert {"/data/tub", "$SKETCHY_DIR", "$CIFAR10_DIR", "$IMAGENET_DIR"} == set(dirs)
    assert '--data_dir "$SKETCHY_DIR"' in done.stdout  # for the shell to expand, pasted with the variable set
    err = done.stderr.splitlines()
    assert err[0].startswith("runx.sh: dry run: not set: SKETCHY_DIR CIFAR10_DIR IMAGENET_DIR")
    for var in ("SKETCHY_DIR", "CIFAR10_DIR", "IMAGENET_DIR"):
        assert done.stderr.count(var) == 2  # in the list, and on its own line saying what it names
    assert "TUBERLIN_DIR" not in done.stderr


def test_all_without_dry_run_checks_every_data_variable_before_running_anything(sandbox):
    folder, calls, env = sandbox
    done = runx("all", cwd=str(folder), TUBERLIN_DIR="/data/tub", CIFAR10_DIR="/data/cifar", **env)
    assert done.returncode == 2 and _calls(calls) == []
    assert done.stderr.strip() == ("runx.sh all: set SKETCHY_DIR IMAGENET_DIR first (nothing was run); or DRYRUN=1 "
                                   "to print the commands")
    single = runx("sketchy_resnet_fp", cwd=str(folder), **env)
    assert single.returncode == 2 and _calls(calls) == []
    assert single.stderr.strip() == "runx.sh: set SKETCHY_DIR to the Sketchy folder (holding rendered_256x256/)"


def test_a_dry_autohybrid_prints_the_planner_and_does_not_run_it(sandbox):
    folder, calls, env = sandbox
    done = runx("autohybrid", "--budget", "1.5", cwd=str(folder), DRYRUN="1", TUBERLIN_DIR="/data/tub", **env)
    assert done.returncode == 0, done.stderr
    assert _calls(calls) == [] and not (folder / "textlogs").exists()
    fbin, planner, hybrid = _commands(done.stdout)
    assert planner == ["python3", "-m", "analysis.hybrid", "savedmodels/tuberlin_sketchanetfbin_dab/best.pth",
                       "--budget", "1.5"]
    assert fbin[fbin.index("--name") + 1] == "tuberlin_sketchanetfbin_dab"
    assert hybrid[-2:] == ["--binInputs", "$PLAN"] and '--binInputs "$PLAN"' in done.stdout
    assert '"$PLAN" stands for' in done.stderr


def test_autohybrid_trains_fbin_plans_with_analysis_hybrid_then_trains_the_plan(sandbox):
    folder, calls, env = sandbox
    done = runx("autohybrid", cwd=str(folder), TUBERLIN_DIR="/data/tub", **env)
    assert done.returncode == 0, done.stderr
    fbin, planner, hybrid = _calls(calls)
    assert fbin.startswith("main.py --name tuberlin_sketchanetfbin_dab ")
    assert planner == "-m analysis.hybrid savedmodels/tuberlin_sketchanetfbin_dab/best.pth --keep 2"
    assert hybrid.startswith("main.py --name tuberlin_sketchanet_autohybrid_3_5-7 ")
    assert hybrid.endswith(" --binInputs 3,5-7")
    assert "--binInputs 3,5-7" in (folder / "textlogs" / "tuberlin_sketchanetfbin_dab_plan.txt").read_text()


def test_report_calls_analysis_report(sandbox):
    folder, calls, env = sandbox
    assert runx("report", "--metric", "top5", cwd=str(folder), **env).returncode == 0
    assert _calls(calls) == ["-m analysis.report runs --out results --metric top5"]
    dry = runx("report", cwd=str(folder), DRYRUN="1", REPORT_DIR="out", **env)
    assert dry.stdout.strip() == "python3 -m analysis.report runs --out out" and len(_calls(calls)) == 1


def test_digits_paper_runs_the_suite_with_its_flags(sandbox):
    folder, calls, env = sandbox
    dry = runx("digits_paper", "--jobs", "1", cwd=str(folder), DRYRUN="1", **env)
    assert dry.returncode == 0, dry.stderr
    assert _commands(dry.stdout) == [["python3", "bench/bench_digits.py", "--suite", "paper", "--out",
                                      "runs/digits-paper", "--jobs", "1"]]
    assert _calls(calls) == []
    done = runx("digits_paper", cwd=str(folder), DIGITS_DIR="/tmp/suite", **env)
    assert done.returncode == 0, done.stderr
    assert _calls(calls) == ["bench/bench_digits.py --suite paper --out /tmp/suite"]
