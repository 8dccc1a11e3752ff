"""Command-line options: every flag of the original code in every spelling and value form it accepted,
plus ours.

``get_parser()`` returns the parser (tests and scripts reuse it); ``parse(argv)`` also checks every value
and resolves the defaults that depend on other flags (model input size, the native size of CIFAR,
binarized layers, binarizer parts, the backward rule of each binarized part), and refuses a binarization
flag given explicitly where the model and the other flags leave it without effect (``idle_options``).
Bad values end the program with one line on stderr and exit status 2.
The namespace ``parse`` returns is final: nothing changes it afterwards. The run folders, which may come
from a checkpoint, are resolved by ``launch.folders`` into a plan of their own.
"""

import argparse
import math
import os
import sys

import binarize
import datasets
import models
from utils.errors import UsageError  # noqa: F401  (re-exported: opts.UsageError is public)
from utils.schedule import SCHEDULES

OPTIMIZERS = ("sgd", "adam", "adagrad", "adamax", "adadelta")
# -criterion: the original's choices (only NLL was implemented there) and ours. The models return
# log-probabilities, so nllloss and crossentropy are the same loss; crossentropy also takes
# --labelSmoothing. The others cannot train a classifier from these outputs and are refused.
CRITERIA = {"nllloss": "nll", "crossentropy": "crossentropy"}
REFUSED_CRITERIA = ("tripletmargin", "mse", "hingeembedding", "kldiv")
# --binarizer sdbnn: SD-BNN's binary conv (Xue et al., 2022) as a preset of the separate parts, with EDE for both
# (its CIFAR recipe); its ImageNet recipe adds --weightBackward ste --actBackward approxsign.
PRESETS = {"sdbnn": dict(binarizer="sign", weightShift="wsd", binActivation="asd", backward="ede")}
# Backward rules each part takes: --weightBackward, --actBackward (--backward sets both: the common ones).
WEIGHT_RULES = ("ste", "ede")
ACTIVATION_RULES = ("ste", "ede", "approxsign")
# Options that act on one binarized part only: explicit, they are refused where that part is not binarized.
WEIGHT_PART = ("binarizer", "bnnModel", "weightShift", "weightBackward")
INPUT_PART = ("binActivation", "actBackward")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default, unless it is None (the help then says what applies) or the help already
    names its default."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


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


class BoolFlag(argparse.Action):
    """``--flag``, ``--flag VALUE`` (true/false, as the original's value-taking flags) and ``--no-flag``."""

    def __init__(self, option_strings, dest, default=None, help=None, **kwargs):
        names = list(option_strings) + [f"--no-{s[2:]}" for s in option_strings if s.startswith("--")]
        super().__init__(names, dest, nargs="?", default=default, help=help, metavar="BOOL")

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
        else:
            setattr(namespace, self.dest, True if values is None else _typed(parser, str2bool, values, option_string))


def _typed(parser, convert, value, flag):
    try:
        return convert(value)
    except (argparse.ArgumentTypeError, ValueError) as exc:
        parser.error(f"argument {flag}: {exc}")


def positive_int(value):
    number = int(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def finite_float(value):
    number = float(value)
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return number


def index_list(value):
    """``2-5,7`` -> [2, 3, 4, 5, 7]; ``none`` -> []."""
    try:
        return binarize.parse_indices(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected conv indices and ranges such as 2-5,7 (or none), "
                                         f"got {value!r}") from None


def criterion_name(value):
    lowered = value.strip().lower()
    if lowered in REFUSED_CRITERIA:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not supported (the original accepted it but only ever trained with nllLoss); "
            f"use nllLoss or crossentropy")
    if lowered not in CRITERIA:
        raise argparse.ArgumentTypeError(f"invalid choice {value!r} (choose from nllLoss, crossentropy)")
    return lowered


def get_parser():
    """The parser of every flag, in groups (``--help`` lists them so)."""
    p = Parser(prog="main.py", description="Train and evaluate binarized networks: DAB (Prabhu et al., WACV 2018), "
               "its baselines and SD-BNN.", formatter_class=HelpFormatter)
    _data_flags(p.add_argument_group("data"))
    _model_flags(p.add_argument_group("model and binarization"))
    _optimisation_flags(p.add_argument_group("optimisation"))
    _distillation_flags(p.add_argument_group("distillation"))
    _run_flags(p.add_argument_group("run, logs and checkpoints"))
    _speed_flags(p.add_argument_group("speed and scale"))
    _tool_flags(p.add_argument_group("model tools"))
    return p


def _data_flags(g):
    g.add_argument("--dataset", default="digits", choices=datasets.DATASETS,
                   help="dataset; 'digits' is the embedded default (scikit-learn's handwritten digits, no download)")
    g.add_argument("--data_dir", default=None,
                   help="dataset folder (as downloaded, or the original's train/val layout)")
    g.add_argument("--nClasses", type=positive_int, default=None,
                   help="number of classes; checked against the data when given, else taken from it")
    g.add_argument("--workers", type=int, default=2, help="data-loading worker processes")
    g.add_argument("--batch-size", type=positive_int, default=64, help="training batch size (per process)")
    g.add_argument("--testbatchsize", type=positive_int, default=64, help="validation batch size (per process)")
    g.add_argument("--tenCrop", action="store_true",
                   help="validate on ten crops per image, averaging log-probabilities")
    g.add_argument("--inpsize", type=positive_int, default=None,
                   help="input size; default: the model's own (CIFAR is always read at its native 32)")
    g.add_argument("--cachemode", action=BoolFlag, default=False,
                   help="decode and resize every image once into a uint8 cache on disk and train from it")
    g.add_argument("--cacheDir", default=None, help="where --cachemode keeps its cache (default: beside the data)")
    g.add_argument("--fold", type=int, default=1, choices=(1, 2, 3),
                   help="validation fold of the 3-fold split, for datasets without an official split")
    g.add_argument("--skipBadImages", action="store_true",
                   help="skip unreadable or truncated images with a warning instead of stopping")
    g.add_argument("--sketchyVariant", default="tx_000000000000", help="Sketchy rendering variant folder")
    g.add_argument("--sketchyDropInvalid", action="store_true",
                   help="drop the Sketchy sketches listed in info/invalid-*.txt")
    g.add_argument("--dataNorm", default="dataset", choices=("dataset", "imagenet"),
                   help="CIFAR normalisation: the dataset's mean/std, or ImageNet's (SD-BNN's recipe)")


def _model_flags(g):
    g.add_argument("--model_def", default="sketchanetwbin", choices=models.list_models(), help="architecture")
    g.add_argument("--weight_init", action="store_false",
                   help="pass to DISABLE the original's Kaiming (fan_out) initialisation (store_false, as originally)")
    g.add_argument("--binaryWeight", action=argparse.BooleanOptionalAction, default=None,
                   help="binarize the weights of the chosen convs; default: on for the binarized models (*wbin*, "
                        "*fbin*, *hybrid*, bincifar*, *_1w1a, birealnet18), off for the full-precision ones")
    g.add_argument("--binStart", type=int, default=None, help="first binarized conv (1-based); default: the family's")
    g.add_argument("--binEnd", type=int, default=None, help="last binarized conv, clipped; default: the family's")
    g.add_argument("--binLayers", type=index_list, default=None, metavar="LIST",
                   help="binarized convs as indices and ranges (2-5,7), instead of --binStart/--binEnd")
    g.add_argument("--binInputs", type=index_list, default=None, metavar="LIST",
                   help="convs whose input is binarized (2-5,7; none), replacing the model variant's own")
    g.add_argument("--binarizer", default="dab", choices=binarize.weight_methods() + sorted(PRESETS),
                   help="weight binarizer; sdbnn = SD-BNN's conv: sign weights + wsd, asd activations, ede backward")
    g.add_argument("--bnnModel", action="store_true", help="BNN weights (sign(W)); same as --binarizer bnn")
    g.add_argument("--weightShift", default=None, choices=("none",) + tuple(binarize.WEIGHT_SHIFTS),
                   help="learnable per-filter weight shift before the weight binarizer (SD-BNN's WSD)")
    g.add_argument("--binActivation", default=None, choices=binarize.activation_methods(),
                   help="activation binarizer of the convs with binarized inputs (default: the model's own, "
                        "sign = the original's Active)")
    g.add_argument("--backward", default=None, choices=WEIGHT_RULES,
                   help="backward rule of both binarized parts, weights and inputs: clipped straight-through, or "
                        "IR-Net's EDE (the approxsign activation keeps its own); --weightBackward and --actBackward "
                        "set one part each and win over it")
    g.add_argument("--weightBackward", default=None, choices=WEIGHT_RULES,
                   help="backward rule of the weight binarizer (default: --backward, else ste)")
    g.add_argument("--actBackward", default=None, choices=ACTIVATION_RULES,
                   help="backward rule of the activation binarizer, taken at its shifted input: ste, ede, or "
                        "Bi-Real's approxsign (SD-BNN's ImageNet recipe with asd) (default: --backward, else ste; "
                        "approxsign for the approxsign activation)")
    g.add_argument("--edeTmin", type=finite_float, default=1e-3, help="EDE: t at the first epoch")
    g.add_argument("--edeTmax", type=finite_float, default=10.0, help="EDE: t approached at the last epoch")
    g.add_argument("--calculateBinarizationLosses", action="store_true",
                   help="report, per binarized input, the original's input binarization errors on val")
    g.add_argument("--calculateWeightBinarizationLosses", action="store_true",
                   help="report, per binarized conv, the RMS difference between real and binarized outputs on val")


def _optimisation_flags(g):
    g.add_argument("--epochs", type=positive_int, default=2, help="number of epochs")
    g.add_argument("--optimType", default="adam", choices=OPTIMIZERS, help="optimizer")
    g.add_argument("-criterion", "--criterion", dest="criterion", default="nllloss", type=criterion_name,
                   help="loss on the models' log-probabilities: nllLoss (the original's) or crossentropy")
    g.add_argument("--labelSmoothing", type=finite_float, default=0.0, help="label smoothing of the loss")
    g.add_argument("--learningratescheduler", default="decayschedular", choices=SCHEDULES,
                   help="decayschedular: max(minlr, maxlr / decaylevel^(epoch // decayinterval)); cosine and "
                        "linear: from maxlr to 0 over --epochs; constant: maxlr")
    g.add_argument("--maxlr", type=float, default=None, help="initial learning rate (default: --lr, else 1e-3)")
    g.add_argument("--lr", type=float, default=None, help="alias of --maxlr, as the original's SGD read it")
    g.add_argument("--minlr", type=float, default=5e-5, help="learning-rate floor of decayschedular")
    g.add_argument("--decayinterval", type=positive_int, default=50, help="epochs between decays")
    g.add_argument("--decaylevel", type=float, default=2.0, help="divisor per decay")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum (SGD only)")
    g.add_argument("--weightDecay", type=float, default=0.0, help="weight decay")


def _distillation_flags(g):
    g.add_argument("--teacher", default=None, metavar="PATH",
                   help="teacher: a checkpoint of ours, or with --teacherModel a torchvision state_dict file")
    g.add_argument("--teacherModel", default=None, metavar="NAME",
                   help="torchvision architecture of the --teacher weights (e.g. resnet34); nothing is downloaded")
    g.add_argument("--kdT", type=finite_float, default=1.0, help="distillation temperature T")
    g.add_argument("--kdAlpha", type=finite_float, default=1.0,
                   help="weight of the distillation term: alpha * T^2 KL + (1 - alpha) * cross-entropy")


def _run_flags(g):
    g.add_argument("--name", default=None, help="run name (default: <dataset>_<model_def>; a resume: the checkpoint's)")
    g.add_argument("--manualSeed", type=int, default=123, help="random seed")
    g.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where to run")
    g.add_argument("--cuda", type=str2bool, nargs="?", const=True, default=None,
                   help="original flag: --cuda[=true] means --device cuda, --cuda=false means --device cpu")
    g.add_argument("--ngpus", type=positive_int, default=1,
                   help="replaced by torchrun: launch 'torchrun --nproc_per_node=N main.py ...' for N GPUs")
    g.add_argument("--logdir", default=None, help="logs go to <logdir>/<name>/ (default: runs)")
    g.add_argument("--tensorboard", action=BoolFlag, default=True, help="write TensorBoard event files")
    g.add_argument("--verbose", action="store_true", help="also print progress lines on a terminal")
    g.add_argument("--printfreq", type=positive_int, default=50, help="steps between progress lines")
    g.add_argument("--store", default=None, help="checkpoint folder (default: savedmodels/<name>/)")
    g.add_argument("--resume", default=None, metavar="PATH|auto",
                   help="continue from this checkpoint; auto: from <store>/last.pth if it exists, else start fresh")
    g.add_argument("--overwrite", action="store_true", help="replace the run already in the run folders")
    g.add_argument("--allowChange", nargs="+", default=None, metavar="OPTION",
                   help="with --resume: accept a changed recorded option (batch-size, world-size, maxlr, ...); "
                        "batch size, world size and data options only at an epoch boundary")
    g.add_argument("--saveEvery", type=int, default=0, metavar="N",
                   help="also write last.pth every N training steps (mid-epoch; 0: only after each epoch)")
    g.add_argument("--pretrained", action="store_true", help="start from the weights in --pretrained_file")
    g.add_argument("--pretrained_file", default=None, help="checkpoint or export whose weights to start from")
    g.add_argument("--start-epoch", type=int, default=None, help="with --resume: the epoch to continue from (0-based)")
    g.add_argument("--evaluate", action="store_true", help="only evaluate (needs --resume or --pretrained_file)")
    g.add_argument("--testOnly", type=str2bool, nargs="?", const=True, default=False, help="same as --evaluate")


def _speed_flags(g):
    g.add_argument("--amp", default="off", choices=("off", "bf16", "fp16"),
                   help="CUDA autocast: bf16, or fp16 with a gradient scaler")
    g.add_argument("--channelsLast", action="store_true", help="channels-last memory format (CUDA)")
    g.add_argument("--syncBN", action="store_true", help="SyncBatchNorm across processes under torchrun")
    g.add_argument("--packed", default="off", nargs="?", const="on", choices=("off", "on", "auto"),
                   help="evaluate an export with bit-packed XNOR/popcount convs (auto: dense where not covered)")


def _tool_flags(g):
    g.add_argument("--summary", action="store_true",
                   help="print the bit-aware per-layer summary of the model and exit (no data needed)")
    g.add_argument("--export", default=None, metavar="OUT.safetensors",
                   help="write the packed 1-bit model from --resume or --pretrained_file and exit")


def resolve(args, notes=None, given=None):
    """Check every value and fill in the defaults that depend on other flags; UsageError if impossible.

    ``given`` names the options the user gave (their dests, as :func:`given_options` finds them; None: those
    whose value differs from the parser's default): a binarization option given explicitly where the model
    and the other flags leave it without effect is an error (:func:`idle_options`); the defaults are not.
    Notes for the user (an ignored --inpsize, a model the defaults do not train) are appended to ``notes``
    when a list is given."""
    given = _differing_from_defaults(args) if given is None else set(given)
    if "lr" in given:
        given.add("maxlr")
    shown = {dest: getattr(args, dest) for dest in given if hasattr(args, dest)}
    info = models.model_info(args.model_def)
    _resolve_binarization(args, info)
    _resolve_backward(args, info)
    args.inpsize, note = native_input_size(args.dataset, args.inpsize or info.default_inpsize)
    if args.maxlr is None:
        args.maxlr = args.lr if args.lr is not None else 1e-3
    if args.cuda is not None:
        args.device = "cuda" if args.cuda else "cpu"
    if args.testOnly:
        args.evaluate = True
    _check_values(args)
    _check_effects(args, given, shown)
    if args.name is not None:
        _check_name(args.name)
    if notes is not None:
        notes.extend(n for n in (note, _digits_note(args, info, given)) if n)
    return args


def native_input_size(dataset, inpsize):
    """``(size, note)``: the size the images of ``dataset`` are read at for a requested ``inpsize``.

    CIFAR's images have one size, and the original ignored --inpsize for them (its CIFAR command lines pass
    225), so they keep it, with a note saying so; elsewhere ``inpsize`` applies and the note is None."""
    native = datasets.native_size(dataset)
    if native is None or inpsize == native:
        return inpsize, None
    return native, (f"note: --inpsize {inpsize} does not apply to {dataset} (its images are {native}x{native}); "
                    f"using {native}, as the original did")


def _resolve_binarization(args, info):
    for key, value in PRESETS.get(args.binarizer, {}).items():
        if key == "binarizer" or getattr(args, key) is None:
            setattr(args, key, value)
    if args.bnnModel:
        args.binarizer = "bnn"
    args.weightShift = None if args.weightShift in (None, "none") else args.weightShift
    args.binActivation = args.binActivation or info.activation
    if args.binaryWeight is None:
        args.binaryWeight = info.binarized
    start, end = info.bin_range
    try:
        if args.binLayers is not None:
            args.binLayers = binarize.resolve_layers(info.num_convs, args.binLayers)
        elif args.binStart is None and args.binEnd is None:
            args.binLayers = list(info.bin_layers)
        else:
            args.binLayers = binarize.resolve_range(info.num_convs, args.binStart or start, args.binEnd or end)
        if args.binInputs is not None:
            args.binInputs = models.check_bin_inputs(args.model_def, args.binInputs)
    except ValueError as exc:
        raise UsageError(f"{args.model_def}: {exc}") from None
    if args.binaryWeight and not args.binLayers:
        raise UsageError("--binLayers none binarizes nothing; drop it or pass --no-binaryWeight")
    args.binStart, args.binEnd = (args.binLayers[0], args.binLayers[-1]) if args.binLayers else (start, end)


def _resolve_backward(args, info):
    """The backward rule of each binarized part: ``weightBackward``, ``actBackward`` (None for a part that is
    not binarized); an explicit part flag wins over ``--backward``, which wins over ste. The approxsign
    activation keeps its own rule. ``args.backward`` becomes the weights' rule (the inputs' where the weights
    are real; None where nothing is binarized)."""
    own = args.binActivation == "approxsign"
    if own and args.actBackward not in (None, "approxsign"):
        raise UsageError(f"the approxsign activation is sign with Bi-Real's backward and takes no --actBackward "
                         f"{args.actBackward}; use --binActivation sign or asd with --actBackward {args.actBackward}")
    weight = args.weightBackward or args.backward or "ste"
    act = "approxsign" if own else args.actBackward or args.backward or "ste"
    args.weightBackward = weight if args.binaryWeight else None
    args.actBackward = act if _input_convs(vars(args), info) else None
    args.backward = args.weightBackward or args.actBackward


def _input_convs(options, info):
    """The convs whose input resolved ``options`` binarize: ``--binInputs``, else the model's own."""
    chosen = options.get("binInputs")
    return list(info.binary_inputs) if chosen is None else list(chosen)


def backward_rules(args):
    """``(weight rule, activation rule)`` of resolved options (a namespace) or of the flags a checkpoint
    records; older checkpoints record one ``backward`` for both parts (the approxsign activation keeping its
    own). A part that is not binarized gets the shared rule, which nothing then uses."""
    shared = getattr(args, "backward", None) or "ste"
    shared = shared if shared in WEIGHT_RULES else "ste"  # approxsign: the inputs' rule of a run with real weights
    weight = getattr(args, "weightBackward", None) or shared
    own = "approxsign" if getattr(args, "binActivation", None) == "approxsign" else shared
    return weight, getattr(args, "actBackward", None) or own


def uses_ede(options):
    """Whether a binarized part of resolved ``options`` (a dict, e.g. ``vars(args)``) trains with EDE, so its
    schedule runs."""
    if "weightBackward" in options or "actBackward" in options:
        return "ede" in (options.get("weightBackward"), options.get("actBackward"))
    return options.get("backward") == "ede"  # recorded before each part had a flag of its own


def idle_options(options, given=(), preset=None):
    """``{option: why it has no effect}`` for the binarization options of resolved ``options`` (a dict such
    as ``vars(parse(...))``): the weight binarizer's options (:data:`WEIGHT_PART`) where the weights are
    real, the activation binarizer's (:data:`INPUT_PART`) where every input is real, ``--backward`` where no
    part takes its rule (``given``: the options the user gave), EDE's settings where no part uses EDE.
    ``preset``: the --binarizer preset given (it sets both parts, so it acts where either is binarized)."""
    info = models.model_info(options["model_def"])
    weights, inputs = bool(options.get("binaryWeight")), bool(_input_convs(options, info))
    why_weights = ("--no-binaryWeight keeps the weights real" if info.binarized else
                   f"{info.name} trains with real weights (--binaryWeight binarizes them)")
    why_inputs = ("--binInputs none keeps every input real" if options.get("binInputs") == [] else
                  f"{info.name} has no binarized inputs (--binInputs LIST gives it some)")
    idle = {}
    if not weights:
        idle.update(dict.fromkeys(WEIGHT_PART, why_weights))
    if not inputs:
        idle.update(dict.fromkeys(INPUT_PART, why_inputs))
    if preset and (weights or inputs):
        idle.pop("binarizer", None)
    elif preset:
        idle["binarizer"] = f"{why_weights}, and {why_inputs}"
    takers = [weights and "weightBackward" not in given,
              inputs and "actBackward" not in given and options.get("binActivation") != "approxsign"]
    if not any(takers):
        idle["backward"] = _idle_backward(weights, inputs, given, why_weights, why_inputs)
    rules = [options.get(part) or options.get("backward") for part, on in
             (("weightBackward", weights), ("actBackward", inputs)) if on]  # of the parts binarized now
    if "ede" not in rules:
        idle["edeTmin"] = idle["edeTmax"] = ("no binarized part uses EDE (--backward, --weightBackward or "
                                             "--actBackward ede)")
    return idle


def _idle_backward(weights, inputs, given, why_weights, why_inputs):
    """Why --backward sets no rule: each part is real or has its rule from elsewhere."""
    weight_part = "--weightBackward sets the weights' rule" if weights else why_weights
    if not inputs:
        input_part = why_inputs
    elif "actBackward" in given:
        input_part = "--actBackward sets the inputs' rule"
    else:
        input_part = "the approxsign activation keeps its own rule"
    return f"{weight_part}, and {input_part}"


def _check_effects(args, given, shown):
    """UsageError for the first explicit option (``given``; ``shown`` their values as given) that has no
    effect here."""
    preset = shown.get("binarizer") if shown.get("binarizer") in PRESETS else None
    idle = idle_options(vars(args), given, preset)
    for action in get_parser()._actions:
        if action.dest in given and action.dest in idle:
            flag = next(s for s in action.option_strings if s.startswith("--"))
            value = shown.get(action.dest)
            named = flag if value is None or isinstance(value, bool) else f"{flag} {value}"
            raise UsageError(f"{named} has no effect: {idle[action.dest]}; drop it")


def _digits_note(args, info, given):
    """The note of a run of an SD-BNN model with binarized parts on the digits that leaves some flag of the
    digits recipe at main.py's default (the defaults leave such a model near chance there): SD-BNN's own
    recipes, and a digits recipe that trains (``python -m models NAME`` shows it too)."""
    recipe = models.digits_recipe(args.model_def)
    if recipe is None or args.dataset != "digits" or args.backward is None:  # backward None: nothing binarized
        return None
    if given_options(recipe) - {"model_def", "binarizer"} <= given:
        return None
    return (f"note: {args.model_def} is an SD-BNN model, whose own recipes train 400-600 epochs on CIFAR-10 or 256 "
            f"per stage on ImageNet (bash runx.sh list); main.py's defaults (2 epochs of Adam at 1e-3, batch 64) "
            f"leave it near chance on the digits, and this run keeps some of them. A digits recipe that trains: "
            f"python main.py {' '.join(recipe)}")


def _check_values(args):
    checks = [
        (args.workers >= 0, f"--workers must be >= 0, got {args.workers}"),
        (math.isfinite(args.maxlr) and args.maxlr > 0, f"the learning rate (--maxlr/--lr) must be a positive finite "
                                                       f"number, got {args.maxlr}"),
        (math.isfinite(args.minlr) and args.minlr >= 0, f"--minlr must be a finite number >= 0, got {args.minlr}"),
        (math.isfinite(args.decaylevel) and args.decaylevel > 0, f"--decaylevel must be > 0, got {args.decaylevel}"),
        (math.isfinite(args.weightDecay) and args.weightDecay >= 0,
         f"--weightDecay must be a finite number >= 0, got {args.weightDecay}"),
        (math.isfinite(args.momentum) and 0 <= args.momentum < 1, f"--momentum must be in [0, 1), got {args.momentum}"),
        (0 <= args.labelSmoothing < 1, f"--labelSmoothing must be in [0, 1), got {args.labelSmoothing}"),
        (args.labelSmoothing == 0 or args.criterion == "crossentropy",
         "--labelSmoothing needs -criterion crossentropy"),
        (0 < args.edeTmin <= args.edeTmax, f"EDE needs 0 < --edeTmin <= --edeTmax, got {args.edeTmin} and "
                                           f"{args.edeTmax}"),
        (args.kdT > 0 and 0 <= args.kdAlpha <= 1, f"distillation needs --kdT > 0 and 0 <= --kdAlpha <= 1, got "
                                                  f"{args.kdT} and {args.kdAlpha}"),
        (args.teacherModel is None or args.teacher, "--teacherModel needs --teacher PATH (its weights)"),
        (args.saveEvery >= 0, f"--saveEvery must be >= 0, got {args.saveEvery}"),
        (args.start_epoch is None or args.start_epoch >= 0, f"--start-epoch must be >= 0, got {args.start_epoch}"),
        (not args.start_epoch or args.resume, "--start-epoch needs a checkpoint to continue from: pass --resume "
                                              "PATH (a fresh run starts at epoch 0)"),
        (not args.pretrained or args.pretrained_file, "--pretrained needs --pretrained_file PATH (nothing is "
                                                      "downloaded)"),
        (not args.evaluate or args.resume or args.pretrained_file,
         "--evaluate/--testOnly needs --resume PATH or --pretrained_file PATH"),
        (not args.export or args.resume or args.pretrained_file,
         "--export needs --resume PATH or --pretrained_file PATH"),
        (args.packed == "off" or (args.evaluate and (args.pretrained_file or "").endswith(".safetensors")),
         "--packed runs an export: pass --evaluate --pretrained_file MODEL.safetensors"),
        (not (args.resume and args.resume != "auto" and args.pretrained_file),
         "pass --resume PATH or --pretrained_file, not both (--resume auto with --pretrained_file starts from the "
         "file only when the run has no checkpoint yet)"),
        (not (args.overwrite and args.resume and not args.evaluate), "--overwrite starts the run anew; it cannot be "
                                                                     "combined with --resume"),
    ]
    for ok, message in checks:
        if not ok:
            raise UsageError(message)


def _check_name(name):
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or any(part in ("", ".", "..") for part in parts):
        raise UsageError(f"--name {name!r} must be a relative name inside --logdir and --store (no absolute path, "
                         f"no '..', no empty parts); for example --name my_run or --name sweep/run1")


# Options that to_argv leaves out: aliases and derived values (their resolved forms are written instead),
# and --allowChange, which belongs to one resume command, not to the recipe.
DERIVED = ("lr", "cuda", "testOnly", "bnnModel", "binStart", "binEnd", "allowChange")


def to_argv(options, *, skip=DERIVED):
    """The flags that reproduce ``options`` (a resolved configuration, e.g. ``vars(parse(...))`` or a run's
    args.json, whose other keys such as ``facts`` are ignored): ``parse(to_argv(vars(parse(argv))))``
    resolves to the same values, except the aliases (``--lr``, ``--cuda``, ``--testOnly``, ``--bnnModel``)
    whose values went into the options they stand for. Options in ``skip``, options equal to None and
    binarization options without effect (:func:`idle_options`: ``parse`` would refuse them) are left out,
    and ``--backward`` where each part's rule is written. Options holding SD-BNN's three parts, with some
    part binarized, are written ``--binarizer sdbnn`` (so a run with real weights keeps its weight parts)."""
    skip, preset = set(skip), None
    if options.get("model_def") in models.list_models():
        skip |= set(idle_options(options))
        preset = _preset_of(options)
    if "weightBackward" in options or "actBackward" in options:
        skip.add("backward")
    if preset:
        skip |= set(PRESETS[preset]) - {"backward"}
    argv = []
    for action in get_parser()._actions:
        dest = action.dest
        if dest == "binarizer" and preset:
            argv += ["--binarizer", preset]
        elif dest in options and dest not in skip and action.option_strings and dest != "help":
            argv += _flags_of(action, options[dest])
    return argv


def _preset_of(options):
    """The --binarizer preset whose parts ``options`` hold (None if none), where it has an effect."""
    info = models.model_info(options["model_def"])
    if not (options.get("binaryWeight") or _input_convs(options, info)):
        return None
    return next((name for name, parts in PRESETS.items()
                 if all(options.get(k) == v for k, v in parts.items() if k != "backward")), None)


def _flags_of(action, value):
    """The flags that give ``action`` the resolved ``value``."""
    flag = next((s for s in action.option_strings if s.startswith("--")), action.option_strings[0])
    if isinstance(action, argparse._StoreTrueAction):
        return [flag] if value else []
    if isinstance(action, argparse._StoreFalseAction):
        return [] if value else [flag]
    if isinstance(action, (BoolFlag, argparse.BooleanOptionalAction)):
        return [] if value is None else [flag if value else f"--no-{flag[2:]}"]
    if value is None:
        return []
    if action.type is index_list:
        return [flag, ",".join(str(i) for i in value) or "none"]
    return [flag, str(value)]


def given_options(argv=None):
    """The options ``argv`` (default: the command line) gives explicitly, as their dests, whatever their
    values; ``--lr`` counts as ``maxlr`` too."""
    parser = get_parser()
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    given = set(vars(parser.parse_args(argv)))
    return given | {"maxlr"} if "lr" in given else given


def _differing_from_defaults(args):
    """The options of a namespace whose value is not the parser's default (what ``resolve`` takes as given
    when it is not told)."""
    defaults = vars(get_parser().parse_args([]))
    return {dest for dest, value in vars(args).items() if dest in defaults and value != defaults[dest]}


def parse(argv=None, *, notes=None):
    """Parse and resolve ``argv`` (default: the command line); UsageError for inconsistent flags. Notes for
    the user are appended to the list ``notes`` when one is given."""
    return resolve(get_parser().parse_args(argv), notes, given_options(argv))
