"""Every command line of the original DAB repository's run scripts (run.sh, run1-5.sh), commented-out
ones included, with only ``--data_dir`` and ``--epochs`` to be replaced.

Running all of them for one epoch needs every class of the dataset on disk (``--nClasses`` is
checked against the data) and ten-crop validation at 224-225 pixels: far more than a CI run can
afford on two cores. ``python tests/original_commands.py`` does exactly that on tiny generated data
(one train and one val image per class); the test suite runs the CIFAR lines and parses the rest.
"""

import os
import pickle
import shlex
import sys
import tempfile
import time

import numpy as np

COMMON = "--learningratescheduler=decayschedular --decaylevel=2 --optimType=adam --weightDecay=0 --binaryWeight"

# (script:line, dataset, command line without the common flags; DATA and EPOCHS are placeholders)
LINES = [
    ("run.sh:1", "--dataset=tuberlin --data_dir=DATA --nClasses=250 --model_def=sketchanetwbin --name=tuberlin_sketchanetwbin_dualbin --epochs=EPOCHS --batch-size=512 --testbatchsize=16 --tenCrop --maxlr=1e-3 --minlr=5e-5 --decayinterval=50 --binStart=2 --binEnd=7 --inpsize=225 --workers=8 --nesterov"),
    ("run.sh:2", "--dataset=tuberlin --data_dir=DATA --nClasses=250 --model_def=resnetwbin18 --name=tuberlin_resnetwbin18_dualbin --epochs=EPOCHS --batch-size=256 --testbatchsize=16 --tenCrop --maxlr=1e-3 --minlr=5e-5 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=8 --nesterov"),
    ("run.sh:3", "--dataset=tuberlin --data_dir=DATA --nClasses=250 --model_def=squeezenetwbin --name=tuberlin_squeezenetwbin_dualbin --epochs=EPOCHS --batch-size=128 --testbatchsize=4 --tenCrop --maxlr=1e-3 --minlr=5e-5 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=8 --nesterov"),
    ("run.sh:5", "--dataset=sketchy --data_dir=DATA --nClasses=125 --model_def=sketchanetwbin --name=sketchy_sketchanetwbin_dualbin --epochs=EPOCHS --batch-size=256 --testbatchsize=16 --tenCrop --maxlr=1e-3 --minlr=5e-5 --decayinterval=50 --binStart=2 --binEnd=7 --inpsize=225 --workers=8 --nesterov"),
    ("run.sh:6", "--dataset=sketchy --data_dir=DATA --nClasses=125 --model_def=resnetwbin18 --name=sketchy_resnetwbin18_dualbin --epochs=EPOCHS --batch-size=128 --testbatchsize=16 --tenCrop --maxlr=1e-3 --minlr=5e-5 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=8 --nesterov"),
    ("run.sh:7", "--dataset=sketchy --data_dir=DATA --nClasses=125 --model_def=squeezenetwbin --name=sketchy_squeezenetwbin_dualbin --epochs=EPOCHS --batch-size=96 --testbatchsize=4 --tenCrop --maxlr=1e-3 --minlr=5e-5 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=8 --nesterov"),
    ("run.sh:9", "--dataset=imagenet12 --data_dir=DATA --nClasses=1000 --model_def=alexnetwbin --name=imagenet_alexnetwbin --epochs=EPOCHS --batch-size=128 --testbatchsize=32 --maxlr=5e-4 --minlr=1e-5 --decayinterval=8 --binStart=2 --binEnd=8 --inpsize=224 --workers=8 --verbose"),
    ("run.sh:10", "--dataset=imagenet12 --data_dir=DATA --nClasses=1000 --model_def=resnetwbin18 --name=imagenet_resnetwbin18 --epochs=EPOCHS --batch-size=128 --testbatchsize=32 --maxlr=5e-4 --minlr=1e-5 --decayinterval=8 --binStart=2 --binEnd=100 --inpsize=224 --workers=8 --verbose"),
    ("run.sh:11", "--dataset=imagenet12 --data_dir=DATA --nClasses=1000 --model_def=squeezenetwbin --name=imagenet_squeezenetwbin --epochs=EPOCHS --batch-size=128 --testbatchsize=32 --maxlr=5e-4 --minlr=1e-5 --decayinterval=8 --binStart=2 --binEnd=100 --inpsize=224 --workers=8 --verbose"),
    ("run1.sh:13", "--dataset=tuberlin --data_dir=DATA --nClasses=250 --model_def=sketchanetwbin --name=tuberlin_sketchanetwbin_dualbin --epochs=EPOCHS --batch-size=512 --testbatchsize=16 --tenCrop --maxlr=5e-4 --minlr=1e-5 --decayinterval=50 --binStart=2 --binEnd=7 --inpsize=225 --workers=8 --nesterov"),
    ("run1.sh:15", "--dataset=tuberlin --data_dir=DATA --nClasses=250 --model_def=resnetwbin18 --name=tuberlin_resnetwbin18_dualbin --epochs=EPOCHS --batch-size=256 --testbatchsize=16 --tenCrop --maxlr=5e-4 --minlr=1e-5 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=8 --nesterov"),
    ("run1.sh:17", "--dataset=tuberlin --data_dir=DATA --nClasses=250 --model_def=squeezenetwbin --name=tuberlin_squeezenetwbin_dualbin --epochs=EPOCHS --batch-size=128 --testbatchsize=4 --tenCrop --maxlr=5e-4 --minlr=1e-5 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=8 --nesterov"),
    ("run2.sh:12", "--dataset=cifar10 --data_dir=DATA --nClasses=10 --model_def=bincifar --name=cifar10_bincifar_dualbin --epochs=EPOCHS --batch-size=256 --testbatchsize=16 --maxlr=2e-3 --minlr=5e-5 --decayinterval=50 --binStart=2 --binEnd=7 --inpsize=225 --workers=2 --nesterov"),
    ("run3.sh:12", "--dataset=sketchyrecognition --data_dir=DATA --nClasses=125 --model_def=sketchanetwbin --name=sketchy_sketchanetwbin_dualbin --epochs=EPOCHS --batch-size=256 --testbatchsize=16 --tenCrop --maxlr=5e-4 --minlr=1e-5 --decayinterval=50 --binStart=2 --binEnd=7 --inpsize=225 --workers=4 --nesterov"),
    ("run3.sh:14", "--dataset=sketchyrecognition --data_dir=DATA --nClasses=125 --model_def=resnetwbin18 --name=sketchy_resnetwbin18_dualbin --epochs=EPOCHS --batch-size=128 --testbatchsize=8 --tenCrop --maxlr=5e-4 --minlr=1e-5 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=4 --nesterov"),
    ("run3.sh:16", "--dataset=sketchyrecognition --data_dir=DATA --nClasses=125 --model_def=squeezenetwbin --name=sketchy_squeezenetwbin_dualbin --epochs=EPOCHS --batch-size=128 --testbatchsize=8 --tenCrop --maxlr=5e-4 --minlr=1e-5 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=4 --nesterov"),
    ("run3.sh:18", "--dataset=cifar10 --data_dir=DATA --nClasses=10 --model_def=bincifar --name=cifar10_bincifar_dualbin --epochs=EPOCHS --batch-size=256 --testbatchsize=16 --maxlr=1e-3 --minlr=5e-5 --decayinterval=50 --binStart=2 --binEnd=7 --inpsize=225 --workers=2 --nesterov"),
    ("run4.sh:13", "--dataset=tuberlin --data_dir=DATA --nClasses=250 --model_def=googlenetfbin --name=tuberlin_googlenetfbin_dualbin_oldactiv --epochs=EPOCHS --batch-size=96 --testbatchsize=4 --tenCrop --maxlr=2e-3 --minlr=1e-4 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=4 --nesterov"),
    ("run4.sh:15", "--dataset=tuberlin --data_dir=DATA --nClasses=250 --model_def=googlenetwbin --name=tuberlin_googlenetwbin_dualbin --epochs=EPOCHS --batch-size=96 --testbatchsize=4 --tenCrop --maxlr=1e-3 --minlr=2e-5 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=4 --nesterov"),
    ("run4.sh:17", "--dataset=sketchyrecognition --data_dir=DATA --nClasses=125 --model_def=googlenetfbin --name=sketchy_googlenetfbin_dualbin_oldactiv --epochs=EPOCHS --batch-size=96 --testbatchsize=4 --tenCrop --maxlr=2e-3 --minlr=1e-4 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=4 --nesterov"),
    ("run4.sh:19", "--dataset=sketchyrecognition --data_dir=DATA --nClasses=125 --model_def=googlenetwbin --name=sketchy_googlenetwbin_dualbin --epochs=EPOCHS --batch-size=128 --testbatchsize=8 --tenCrop --maxlr=1e-3 --minlr=2e-5 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=4 --nesterov"),
    ("run5.sh:12", "--dataset=sketchyrecognition --data_dir=DATA --nClasses=125 --model_def=sketchanetfbin --name=sketchy_sketchanetfbin_dualbin_oldactiv --epochs=EPOCHS --batch-size=256 --testbatchsize=16 --tenCrop --maxlr=5e-4 --minlr=1e-5 --decayinterval=50 --binStart=2 --binEnd=7 --inpsize=225 --workers=4 --nesterov"),
    ("run5.sh:14", "--dataset=sketchyrecognition --data_dir=DATA --nClasses=125 --model_def=resnetfbin18 --name=sketchy_resnetfbin18_dualbin_oldactiv --epochs=EPOCHS --batch-size=128 --testbatchsize=8 --tenCrop --maxlr=5e-4 --minlr=1e-5 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=4 --nesterov"),
    ("run5.sh:16", "--dataset=tuberlin --data_dir=DATA --nClasses=250 --model_def=squeezenetfbin --name=tuberlin_squeezenetfbin_dualbin_oldactiv --epochs=EPOCHS --batch-size=128 --testbatchsize=8 --tenCrop --maxlr=5e-4 --minlr=1e-5 --decayinterval=50 --binStart=2 --binEnd=100 --inpsize=224 --workers=4 --nesterov"),
    ("run5.sh:18", "--dataset=cifar100 --data_dir=DATA --nClasses=100 --model_def=bincifar --name=cifar100_bincifar_dualbin --epochs=EPOCHS --batch-size=256 --testbatchsize=16 --maxlr=1e-3 --minlr=5e-5 --decayinterval=50 --binStart=2 --binEnd=7 --inpsize=225 --workers=2 --nesterov"),
]


def argv_for(line, data_dir, epochs, logdir, store):
    """The command line with only --data_dir and --epochs replaced (and the output folders pointed
    at a scratch directory, which the original wrote next to the code)."""
    text = line.replace("DATA", shlex.quote(str(data_dir))).replace("EPOCHS", str(epochs))
    return shlex.split(text) + shlex.split(COMMON) + ["--logdir", str(logdir), "--store", str(store)]


def dataset_of(line):
    return line.split("--dataset=")[1].split()[0]


def classes_of(line):
    return int(line.split("--nClasses=")[1].split()[0])


def fake_cifar(root, hundred, per_class=1):
    """torchvision's on-disk CIFAR format with ``per_class`` images of each class per split."""
    rng = np.random.default_rng(0)
    classes = 100 if hundred else 10
    folder = os.path.join(root, "cifar-100-python" if hundred else "cifar-10-batches-py")
    os.makedirs(folder, exist_ok=True)
    label_key = "fine_labels" if hundred else "labels"
    labels = [c for c in range(classes) for _ in range(per_class)]
    names = ["train", "test"] if hundred else [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), label_key: labels}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f)
    meta = {"fine_label_names": [f"c{i}" for i in range(100)]} if hundred else \
        {"label_names": [f"c{i}" for i in range(10)]}
    with open(os.path.join(folder, "meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump(meta, f)
    return root


def tiny_data(dataset, classes, root):
    """One train and one val image per class in the layout the line's dataset reads (made once)."""
    if os.path.isdir(root):
        return root
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from tinydata import split_tree
    names = [f"class {i:04d}" for i in range(classes)]
    if dataset == "cifar10":
        return fake_cifar(root, False)
    if dataset == "cifar100":
        return fake_cifar(root, True)
    if dataset in ("sketchy", "sketchyrecognition"):
        return split_tree(root, names, 1, 1, size=24, subdir="sketchy_recognition")
    if dataset == "imagenet12":
        return split_tree(root, [f"n{i:08d}" for i in range(classes)], 1, 1, size=24)
    return split_tree(root, names, 1, 1, size=24, subdir="tuberlin")


def run_all():
    """Run every line for one epoch on tiny data; print one result line per command line."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import main
    failures = 0
    with tempfile.TemporaryDirectory() as scratch:
        for label, line in LINES:
            data = tiny_data(dataset_of(line), classes_of(line),
                             os.path.join(scratch, f"{dataset_of(line)}-{classes_of(line)}"))
            start = time.perf_counter()
            code = main.main(argv_for(line, data, 1, os.path.join(scratch, "logs"), os.path.join(scratch, "ckpt")))
            failures += code != 0
            print(f"== {label}: exit {code} in {time.perf_counter() - start:.0f}s", flush=True)
    print(f"{len(LINES) - failures} passed, {failures} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(run_all())
