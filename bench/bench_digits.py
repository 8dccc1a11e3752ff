"""Val accuracy on the embedded digits set, over seeds, for two suites of configurations:

* ``dab`` (default): Sketch-A-Net at 225 px, fp vs wbin/fbin with DAB and XNOR weights, the default
  model and epochs of ``python main.py``;
* ``sdbnn``: ResNet-20 at 32 px, fp vs 1w1a with BNN, sign, SD-BNN and DAB + ASD + EDE, and the SD-BNN
  parts (WSD, ASD, EDE) one at a time on sign weights; every run 10 epochs of Adam at 5e-3 with a
  cosine schedule and batch 32 (SD-BNN's SGD recipe needs hundreds of epochs; 45 steps an epoch do not
  move binary weights far enough at its learning rate).

Runs ``main.main`` for each configuration and seed (logs and checkpoints in a scratch folder) and prints
the mean and the spread of the final and best val top-1.

    python bench/bench_digits.py [--suite dab|sdbnn] [--seeds 1 2 3] [--configs ...] [extra main.py flags after --]
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import main  # noqa: E402

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


def run(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--suite", default="dab", choices=sorted(SUITES))
    parser.add_argument("--configs", nargs="+", default=None, help="default: every configuration of the suite")
    parser.add_argument("--out", default=None, help="keep the run folders here (default: a scratch folder), e.g. "
                                                     "for python -m analysis.report OUT/logs")
    args, extra = parser.parse_known_args(argv)
    configs = SUITES[args.suite]
    chosen = args.configs or list(configs)
    unknown = sorted(set(chosen) - set(configs))
    if unknown:
        parser.error(f"unknown configurations {unknown} for suite {args.suite}; choose from {list(configs)}")
    extra = [a for a in extra if a != "--"]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = args.out or tmp
        for seed in args.seeds:
            for config in chosen:
                name = f"{config}-seed{seed}"
                argv = configs[config] + ["--manualSeed", str(seed), "--name", name,
                                          "--logdir", os.path.join(scratch, "logs"),
                                          "--store", os.path.join(scratch, "ckpt", name)] + extra
                print(f"== {name}: python main.py {' '.join(argv)}", flush=True)
                if main.main(argv) != 0:
                    raise SystemExit(f"{name} failed")
                with open(os.path.join(scratch, "logs", name, "final.json")) as f:
                    results.setdefault(config, []).append(json.load(f))
    print(f"\nsuite {args.suite}")
    print("config        final val top-1 (mean +- std over seeds)   best val top-1      runs")
    for config, runs in results.items():
        final = [r["final_top1"] for r in runs]
        best = [r["best_top1"] for r in runs]
        spread = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        print(f"{config:12s}  {statistics.mean(final):6.2f} +- {spread(final):4.2f}  "
              f"[{', '.join(f'{v:.2f}' for v in final)}]   {statistics.mean(best):6.2f} +- {spread(best):4.2f}   "
              f"{len(runs)}")
    return results


if __name__ == "__main__":
    run(sys.argv[1:])
