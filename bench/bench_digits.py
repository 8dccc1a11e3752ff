"""Val accuracy on the embedded digits set: fp vs wbin/fbin with DAB and XNOR weights, over seeds.

Runs ``main.main`` with the default model and epochs for each configuration and seed (logs and
checkpoints in a scratch folder) and prints the mean and the spread of the final and best val top-1.

    python bench/bench_digits.py [--seeds 1 2 3] [--configs fp wbin-dab ...] [extra main.py flags after --]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import main  # noqa: E402

CONFIGS = {
    "fp": ["--no-binaryWeight"],
    "wbin-dab": ["--binaryWeight", "--binarizer", "dab"],
    "wbin-xnor": ["--binaryWeight", "--binarizer", "xnor"],
    "fbin-dab": ["--model_def", "sketchanetfbin", "--binaryWeight", "--binarizer", "dab"],
    "fbin-xnor": ["--model_def", "sketchanetfbin", "--binaryWeight", "--binarizer", "xnor"],
}


def run(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args, extra = parser.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for seed in args.seeds:
            for config in args.configs:
                name = f"{config}-seed{seed}"
                argv = CONFIGS[config] + ["--manualSeed", str(seed), "--name", name,
                                          "--logdir", os.path.join(scratch, "logs"),
                                          "--store", os.path.join(scratch, "ckpt", name)] + extra
                print(f"== {name}: python main.py {' '.join(argv)}", flush=True)
                if main.main(argv) != 0:
                    raise SystemExit(f"{name} failed")
                with open(os.path.join(scratch, "logs", name, "final.json")) as f:
                    results.setdefault(config, []).append(json.load(f))
    print("\nconfig      final val top-1 (mean +- std over seeds)   best val top-1      runs")
    for config, runs in results.items():
        final = [r["final_top1"] for r in runs]
        best = [r["best_top1"] for r in runs]
        spread = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        print(f"{config:10s}  {statistics.mean(final):6.2f} +- {spread(final):4.2f}  "
              f"[{', '.join(f'{v:.2f}' for v in final)}]   {statistics.mean(best):6.2f} +- {spread(best):4.2f}   "
              f"{len(runs)}")
    return results


if __name__ == "__main__":
    run(sys.argv[1:])
