"""Command-line options: every flag of the original code, same spellings and meanings, plus ours.

``get_parser()`` returns the parser (tests and scripts reuse it); ``parse(argv)`` also resolves the
defaults that depend on other flags (model input size, bin range, binarizer, names and folders).
Bad values end the program with one line on stderr and exit status 2.
"""

import argparse
import sys

import datasets
import models
from binarize import ACTIVATIONS, METHODS
from utils.schedule import SCHEDULES

OPTIMIZERS = ("sgd", "adam", "adagrad", "adamax", "adadelta")
CRITERIA = ("nllloss", "crossentropy")


class UsageError(ValueError):
    """A bad command line or bad input: reported as one line, exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (no usage block) and exit status 2."""

    def error(self, message):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def str2bool(value):
    """The original typed some flags as bool/str; accept the usual spellings."""
    if isinstance(value, bool):
        return value
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "y", "on"):
        return True
    if lowered in ("0", "false", "no", "n", "off", ""):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def positive_int(value):
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def get_parser():
    p = Parser(prog="main.py", description="Train and evaluate DAB-binarized networks (Prabhu et al., WACV 2018).",
               formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="digits", choices=datasets.DATASETS,
                   help="dataset; 'digits' is the embedded default (scikit-learn's handwritten digits, no download)")
    g.add_argument("--data_dir", default=None, help="dataset folder (as downloaded, or the original's train/val layout)")
    g.add_argument("--nClasses", type=positive_int, default=None,
                   help="number of classes; checked against the data when given, else taken from it")
    g.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    g.add_argument("--batch-size", type=positive_int, default=64, help="training batch size (per process)")
    g.add_argument("--testbatchsize", type=positive_int, default=64, help="validation batch size (per process)")
    g.add_argument("--tenCrop", action="store_true", help="validate on ten crops per image, averaging log-probabilities")
    g.add_argument("--inpsize", type=positive_int, default=None, help="input size; default: the model's own")
    g.add_argument("--cachemode", action="store_true",
                   help="decode and resize every image once into a uint8 cache on disk and train from it")
    g.add_argument("--cacheDir", default=None, help="where --cachemode keeps its cache (default: beside the data)")
    g.add_argument("--fold", type=int, default=1, choices=(1, 2, 3),
                   help="validation fold of the 3-fold split, for datasets without an official split")
    g.add_argument("--skipBadImages", action="store_true",
                   help="skip unreadable or truncated images with a warning instead of stopping")
    g.add_argument("--sketchyVariant", default="tx_000000000000", help="Sketchy rendering variant folder")
    g.add_argument("--sketchyDropInvalid", action="store_true",
                   help="drop the Sketchy sketches listed in info/invalid-*.txt")

    g = p.add_argument_group("model and binarization")
    g.add_argument("--model_def", default="sketchanetwbin", choices=models.list_models(), help="architecture")
    g.add_argument("--weight_init", action="store_false",
                   help="pass to DISABLE the original's Kaiming (fan_out) initialisation (store_false, as originally)")
    g.add_argument("--binaryWeight", action=argparse.BooleanOptionalAction, default=None,
                   help="binarize conv weights binStart..binEnd; default: on for the *wbin*/*fbin*/*hybrid*/bincifar "
                        "models, off for the full-precision ones")
    g.add_argument("--binStart", type=int, default=None, help="first binarized conv (1-based); default: the family's")
    g.add_argument("--binEnd", type=int, default=None, help="last binarized conv, clipped; default: the family's")
    g.add_argument("--binarizer", default="dab", choices=METHODS, help="weight binarizer")
    g.add_argument("--bnnModel", action="store_true", help="BNN weights (sign(W)); same as --binarizer bnn")
    g.add_argument("--binActivation", default="sign", choices=tuple(ACTIVATIONS),
                   help="activation binarizer of the *fbin*/*hybrid* models (sign = the original's Active)")
    g.add_argument("--calculateBinarizationLosses", action="store_true",
                   help="report, per binarized conv, the RMS difference between real and binarized outputs on val")

    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=positive_int, default=2, help="number of epochs")
    g.add_argument("--optimType", default="adam", choices=OPTIMIZERS, help="optimizer")
    g.add_argument("-criterion", "--criterion", dest="criterion", default="nllloss", choices=CRITERIA,
                   help="loss on the models' log-probabilities (both choices compute the same NLL)")
    g.add_argument("--learningratescheduler", default="decayschedular", choices=SCHEDULES,
                   help="decayschedular: lr = max(minlr, maxlr / decaylevel^(epoch // decayinterval))")
    g.add_argument("--maxlr", type=float, default=None, help="initial learning rate (default: --lr, else 1e-3)")
    g.add_argument("--lr", type=float, default=None, help="alias of --maxlr, as the original's SGD read it")
    g.add_argument("--minlr", type=float, default=5e-5, help="learning-rate floor")
    g.add_argument("--decayinterval", type=positive_int, default=50, help="epochs between decays")
    g.add_argument("--decaylevel", type=float, default=2.0, help="divisor per decay")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD only)")
    g.add_argument("--weightDecay", type=float, default=0.0, help="weight decay")

    g = p.add_argument_group("run, logs and checkpoints")
    g.add_argument("--name", default=None, help="run name (default: <dataset>_<model_def>)")
    g.add_argument("--manualSeed", type=int, default=123, help="random seed")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    g.add_argument("--cuda", type=str2bool, nargs="?", const=True, default=None,
                   help="original flag: --cuda[=true] means --device cuda, --cuda=false means --device cpu")
    g.add_argument("--ngpus", type=positive_int, default=1,
                   help="replaced by torchrun: launch 'torchrun --nproc_per_node=N main.py ...' for N GPUs")
    g.add_argument("--logdir", default="runs", help="logs go to <logdir>/<name>/")
    g.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=True,
                   help="write TensorBoard event files")
    g.add_argument("--verbose", action="store_true", help="print a line every --printfreq batches")
    g.add_argument("--printfreq", type=positive_int, default=50, help="batches between --verbose lines")
    g.add_argument("--store", default=None, help="checkpoint folder (default: savedmodels/<name>/)")
    g.add_argument("--resume", default=None, help="continue from this checkpoint (model, optimizer, epoch, RNG)")
    g.add_argument("--pretrained", action="store_true", help="start from the weights in --pretrained_file")
    g.add_argument("--pretrained_file", default=None, help="checkpoint or export whose weights to start from")
    g.add_argument("--start-epoch", type=int, default=None, help="override the epoch to start from (0-based)")
    g.add_argument("--evaluate", action="store_true", help="only evaluate (needs --resume or --pretrained_file)")
    g.add_argument("--testOnly", type=str2bool, nargs="?", const=True, default=False, help="same as --evaluate")

    g = p.add_argument_group("speed and scale")
    g.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"),
                   help="CUDA autocast: bf16, or fp16 with a gradient scaler")
    g.add_argument("--channelsLast", action="store_true", help="channels-last memory format (CUDA)")
    g.add_argument("--syncBN", action="store_true", help="SyncBatchNorm across processes under torchrun")

    g = p.add_argument_group("compression")
    g.add_argument("--summary", action="store_true",
                   help="print the bit-aware per-layer summary of the model and exit (no data needed)")
    g.add_argument("--export", default=None, metavar="OUT.safetensors",
                   help="write the packed 1-bit model from --resume or --pretrained_file and exit")
    return p


def binarize_by_default(model_def):
    """Names meant to be trained with binary weights (the original's scripts all passed --binaryWeight)."""
    return any(tag in model_def for tag in ("wbin", "fbin", "hybrid")) or model_def.startswith("bincifar")


def resolve(args):
    """Fill in the defaults that depend on other flags; raise UsageError for impossible combinations."""
    info = models.model_info(args.model_def)
    if args.bnnModel:
        args.binarizer = "bnn"
    if args.binaryWeight is None:
        args.binaryWeight = binarize_by_default(args.model_def)
    start, end = info.bin_range
    args.binStart = start if args.binStart is None else args.binStart
    args.binEnd = end if args.binEnd is None else args.binEnd
    if args.inpsize is None:
        args.inpsize = info.default_inpsize
    if args.maxlr is None:
        args.maxlr = args.lr if args.lr is not None else 1e-3
    if args.cuda is not None:
        args.device = "cuda" if args.cuda else "cpu"
    if args.testOnly:
        args.evaluate = True
    if args.name is None:
        args.name = f"{args.dataset}_{args.model_def}"
    if args.store is None:
        args.store = f"savedmodels/{args.name}"
    if args.pretrained and not args.pretrained_file:
        raise UsageError("--pretrained needs --pretrained_file PATH (nothing is downloaded)")
    if args.evaluate and not (args.resume or args.pretrained_file):
        raise UsageError("--evaluate/--testOnly needs --resume PATH or --pretrained_file PATH")
    if args.export and not (args.resume or args.pretrained_file):
        raise UsageError("--export needs --resume PATH or --pretrained_file PATH")
    if args.workers < 0:
        raise UsageError(f"--workers must be >= 0, got {args.workers}")
    if args.maxlr <= 0 or args.minlr < 0 or args.decaylevel <= 0:
        raise UsageError("learning rates must be positive and --decaylevel > 0")
    return args


def parse(argv=None):
    """Parse and resolve; UsageError for inconsistent flags."""
    return resolve(get_parser().parse_args(argv))
