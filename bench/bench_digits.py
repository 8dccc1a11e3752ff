"""Val accuracy on the embedded digits set, over seeds, for three suites of configurations:

* ``paper``: the paper's comparison, sized to decide it. Sketch-A-Net at 225 px: fp, wbin and fbin, each
  with DAB-Net and XNOR-Net weights (the default recipe of ``python main.py``, 1 epoch), and SD-BNN's
  ResNet-20 1w1a at 32 px with sign activations and DAB, XNOR or sign weights (Adam 5e-3, cosine,
  batch 32, 8 epochs); 10 seeds each. The report (``python -m analysis.report``) then pairs the runs by
  seed: DAB vs XNOR, DAB vs sign and XNOR vs sign, with 95% intervals and verdicts.
* ``dab``: Sketch-A-Net at 225 px, fp vs wbin/fbin with DAB and XNOR weights, the default model and epochs
  of ``python main.py`` (2), 3 seeds.
* ``sdbnn``: ResNet-20 at 32 px, fp vs 1w1a with BNN, sign, SD-BNN and DAB + ASD + EDE, and the SD-BNN
  parts (WSD, ASD, EDE) one at a time on sign weights; every run 10 epochs of Adam at 5e-3 with a
  cosine schedule and batch 32 (SD-BNN's SGD recipe needs hundreds of epochs; 45 steps an epoch do not
  move binary weights far enough at its learning rate).

How the paper suite was sized (pilot on a 2-core Xeon, AVX-512; two runs at a time, one thread each,
which trains 1.33x faster in all than one run on two threads): an epoch of Sketch-A-Net at 225 px takes
about 60 s on two threads and 90 s on one, an epoch of ResNet-20 at 32 px 9 s and 13.5 s. The
earlier 3-seed, 2-epoch Sketch-A-Net runs put the fbin DAB - XNOR difference at about 3 points with
a per-seed spread of 3-4 points, so 10 pairs give a 95% interval of about +-2.5 points: 10 seeds, and
1 epoch of Sketch-A-Net (2 would double its share of the budget). Budget: 50 Sketch-A-Net runs x 1
epoch + 30 ResNet-20 runs x 8 epochs, planned at about 130 CPU-minutes; the full run took 136
CPU-minutes (2 hours of wall time on 2 cores beside other work). It showed the per-seed spread of a
difference to be larger at 1 epoch (sd 5.3 points for wbin DAB - XNOR, 9.7 for fbin), so 10 seeds
leave the DAB - XNOR comparisons undecided: a 4-point fbin effect would need about 25 seeds.

Every run is a ``python main.py`` child process (``--jobs`` at a time, each with cores / jobs threads),
its logs and checkpoints under ``--out``. A rerun with the same ``--out`` keeps finished runs and
continues unfinished ones (``--resume auto``), so an interrupted suite loses at most the epochs in
flight. Then it prints the mean and spread of final and best val top-1 per configuration and writes the
report (tables, paired comparisons, figures) to ``OUT/report``.

    python bench/bench_digits.py --suite paper --out runs/digits-paper   # or: bash runx.sh digits_paper
    python bench/bench_digits.py [--suite dab|sdbnn|paper] [--seeds 1 2 3] [--configs ...] [--jobs N]
                                 [--out DIR] [-- extra main.py flags]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
MAIN = os.path.join(ROOT, "main.py")

SDBNN_RECIPE = ["--inpsize", "32", "--epochs", "10", "--optimType", "adam", "--maxlr", "5e-3",
                "--learningratescheduler", "cosine", "--batch-size", "32"]
R20 = SDBNN_RECIPE + ["--model_def", "resnet20_1w1a"]
SUITES = {"sdbnn": {
    "fp": SDBNN_RECIPE + ["--model_def", "resnet20_fp"],
    "bnn": R20 + ["--binarizer", "bnn"],
    "sign": R20 + ["--binarizer", "sign"],
    "sign+wsd": R20 + ["--binarizer", "sign", "--weightShift", "wsd"],
    "sign+asd": R20 + ["--binarizer", "sign", "--binActivation", "asd"],
    "sign+ede": R20 + ["--binarizer", "sign", "--backward", "ede"],
    "sdbnn": R20 + ["--binarizer", "sdbnn"],
    "dab+asd+ede": R20 + ["--binarizer", "dab", "--binActivation", "asd", "--backward", "ede"],
}}
CONFIGS = {
    "fp": ["--no-binaryWeight"],
    "wbin-dab": ["--binaryWeight", "--binarizer", "dab"],
    "wbin-xnor": ["--binaryWeight", "--binarizer", "xnor"],
    "fbin-dab": ["--model_def", "sketchanetfbin", "--binaryWeight", "--binarizer", "dab"],
    "fbin-xnor": ["--model_def", "sketchanetfbin", "--binaryWeight", "--binarizer", "xnor"],
}
SUITES["dab"] = CONFIGS
PAPER_R20 = R20 + ["--epochs", "8", "--binActivation", "sign"]
SUITES["paper"] = {
    **{f"sketchanet-{name}": argv + ["--epochs", "1"] for name, argv in CONFIGS.items()},
    "resnet20-dab": PAPER_R20 + ["--binarizer", "dab"],
    "resnet20-xnor": PAPER_R20 + ["--binarizer", "xnor"],
    "resnet20-sign": PAPER_R20 + ["--binarizer", "sign"],
}
DEFAULT_SEEDS = {"paper": list(range(1, 11))}


def _start(name, argv, threads):
    """``python main.py argv`` as a child process on ``threads`` threads."""
    print(f"== {name}: python main.py {' '.join(argv)}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.Popen([sys.executable, MAIN] + argv, env=env), time.perf_counter()


def _jobs(configs, chosen, seeds, scratch, extra):
    """(name, argv) per configuration and seed, seed-major; a finished run (final.json) is left out."""
    jobs = []
    for seed in seeds:
        for config in chosen:
            name = f"{config}-seed{seed}"
            if os.path.exists(os.path.join(scratch, "logs", name, "final.json")):
                print(f"== {name}: finished before, kept", flush=True)
                continue
            resume = ["--resume", "auto"] if os.path.exists(os.path.join(scratch, "logs", name)) else []
            jobs.append((name, configs[config] + ["--manualSeed", str(seed), "--name", name,
                                                  "--logdir", os.path.join(scratch, "logs"),
                                                  "--store", os.path.join(scratch, "ckpt", name)] + resume + extra))
    return jobs


def _run_all(jobs, workers, threads):
    """Train every job, ``workers`` at a time; SystemExit naming the runs that failed."""
    failed, running, pending = [], {}, list(jobs)
    while pending or running:
        while pending and len(running) < workers:
            name, argv = pending.pop(0)
            running[name] = _start(name, argv, threads)
        time.sleep(0.5)
        for name, (child, started) in list(running.items()):
            status = child.poll()
            if status is None:
                continue
            del running[name]
            print(f"== {name}: {'done' if status == 0 else f'failed (exit {status})'} in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
            if status != 0:
                failed.append(name)
    if failed:
        raise SystemExit(f"runs failed: {', '.join(failed)}")


def _summary(suite, chosen, seeds, scratch):
    print(f"\nsuite {suite}")
    print("config              final val top-1 (mean +- std over seeds)   best val top-1      runs")
    results = {}
    for config in chosen:
        runs = []
        for seed in seeds:
            with open(os.path.join(scratch, "logs", f"{config}-seed{seed}", "final.json")) as f:
                runs.append(json.load(f))
        results[config] = runs
        final = [r["final_top1"] for r in runs]
        best = [r["best_top1"] for r in runs]
        spread = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        print(f"{config:18s}  {statistics.mean(final):6.2f} +- {spread(final):4.2f}  "
              f"[{', '.join(f'{v:.2f}' for v in final)}]   {statistics.mean(best):6.2f} +- {spread(best):4.2f}   "
              f"{len(runs)}")
    return results


def run(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="dab", choices=sorted(SUITES))
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="default: 1..10 for the paper suite, 1 2 3 for the others")
    parser.add_argument("--configs", nargs="+", default=None, help="default: every configuration of the suite")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs at a time, each with cores / jobs threads (default: the paper suite one per "
                             "core, the others 1)")
    parser.add_argument("--out", default=None, help="keep the run folders and the report here (default: a scratch "
                                                     "folder, and no report)")
    args, extra = parser.parse_known_args(argv)
    configs = SUITES[args.suite]
    chosen = args.configs or list(configs)
    unknown = sorted(set(chosen) - set(configs))
    if unknown:
        parser.error(f"unknown configurations {unknown} for suite {args.suite}; choose from {list(configs)}")
    seeds = args.seeds or DEFAULT_SEEDS.get(args.suite, [1, 2, 3])
    cores = len(os.sched_getaffinity(0))
    workers = args.jobs or (cores if args.suite == "paper" else 1)
    if workers < 1:
        parser.error("--jobs must be at least 1")
    extra = [a for a in extra if a != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        scratch = args.out or tmp
        start = time.perf_counter()
        _run_all(_jobs(configs, chosen, seeds, scratch, extra), workers, max(1, cores // workers))
        print(f"\nwall time {(time.perf_counter() - start) / 60:.1f} min, {workers} run(s) at a time")
        results = _summary(args.suite, chosen, seeds, scratch)
        if args.out:
            from analysis import report
            report.main([os.path.join(scratch, "logs"), "--out", os.path.join(scratch, "report")])
            print(f"report: {os.path.join(scratch, 'report', 'results.md')}")
    return results


if __name__ == "__main__":
    run(sys.argv[1:])
