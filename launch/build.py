"""From flags to the objects of a run: device, data, network, optimizer, loss, teacher, loaded weights.

``main.py`` reads as the script of a run; each step it takes from the command line is one function here.
Every error is a one-line ``UsageError`` (exit status 2).
"""

import argparse
import functools
import hashlib
import json
import os
import subprocess

import torch
from torch import nn
from torch.nn import functional as F

import binarize
import datasets
import models
import opts
from opts import CRITERIA
from utils.errors import UsageError
from utils import dist
from utils.checkpoint import CheckpointError, adapt_state, check_compatible, load_checkpoint, load_model_state

# Flags that must agree between a checkpoint and the run that resumes or evaluates it.
ARCH_KEYS = ("model_def", "binaryWeight", "binLayers", "binarizer", "weightShift", "binActivation", "binInputs")
AMP = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def choose_device(args, cuda_available=None):
    """``(device, amp dtype or None)``; UsageError for what this machine cannot do. ``cuda_available``
    (default: ``torch.cuda.is_available()``) says whether this machine has CUDA. ``--packed on`` runs on
    the CPU (its convs are CPU kernels); ``--packed auto`` runs where ``--device`` says (dense on a GPU)."""
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if args.device == "cuda" and not cuda:
        raise UsageError("CUDA was asked for (--device cuda / --cuda) but is not available; use --device cpu")
    packed = getattr(args, "packed", "off")
    if packed == "on" and args.device == "cuda":
        raise UsageError("--packed on runs its XNOR/popcount convs on the CPU, not on CUDA; drop --device cuda "
                         "(or --cuda), or pass --packed auto to run the model dense on the GPU")
    device = torch.device(args.device if args.device != "auto" else "cuda" if cuda and packed != "on" else "cpu")
    if args.ngpus > 1 and not dist.launched_by_torchrun():
        raise UsageError(f"--ngpus {args.ngpus} is replaced by torchrun: launch "
                         f"'torchrun --nproc_per_node={args.ngpus} main.py ...' instead")
    if args.syncBN and device.type != "cuda":
        raise UsageError("--syncBN needs CUDA (SyncBatchNorm runs on GPUs only); drop --syncBN on CPU")
    if args.amp != "off" and device.type != "cuda":
        raise UsageError(f"--amp {args.amp} needs CUDA; drop --amp on {device.type}")
    return device, AMP[args.amp]


def keep_freed_memory():
    """Have glibc's malloc keep freed memory for reuse instead of returning it to the system.

    A CPU training step allocates and frees activations of tens to hundreds of MB; by default glibc
    maps each with mmap and unmaps it when freed, so every step pays the page faults of touching them
    afresh. Keeping the heap (no mmap, no trimming) made a ResNet-18 step 21% faster on our 2-core CPU
    and the fbin model's extra cost over fp 3x smaller (bench/bench_train.py). Freed memory is not returned
    to the system until the run ends, so the resident size stays near the peak (heap fragmentation can
    add to it). A no-op where malloc is not glibc's.
    """
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def join_processes(device):
    """Join torchrun's process group; returns ``(rank, world, device)`` with this rank's GPU."""
    rank, world, local_rank = dist.init(device.type)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank) if world > 1 else device
        torch.backends.cudnn.benchmark = True
    return rank, world, device


def check_model(args):
    """The checks that need no data, done before reading it (--cachemode writes a cache while reading)."""
    try:
        models.check_input_size(args.model_def, args.inpsize)
    except ValueError as exc:  # the message names the model already
        raise UsageError(f"{exc}; pass an --inpsize in that range") from None
    for path in (args.pretrained_file, args.teacher):
        if path and not os.path.isfile(path):
            raise UsageError(f"{path!r} does not exist; give the path of a checkpoint (.pth) or export (.safetensors)")
    if args.teacher and not args.teacherModel:
        from deploy.export import is_export
        if is_export(args.teacher):
            raise UsageError(f"--teacher {args.teacher!r} is an export (the 1-bit model of --export); --teacher "
                             f"takes a checkpoint (.pth) written by main.py, or with --teacherModel a torchvision "
                             f"state_dict; an export is read by --pretrained_file (to fine-tune or evaluate it) and by "
                             f"--evaluate --packed")


def load_data(args):
    """The datasets of ``args``; UsageError for bad data or a --nClasses that does not match it."""
    try:
        bundle = datasets.build(
            args.dataset, args.data_dir, inpsize=args.inpsize, ten_crop=args.tenCrop, fold=args.fold,
            cachemode=args.cachemode, cache_dir=args.cacheDir, skip_bad_images=args.skipBadImages,
            sketchy_variant=args.sketchyVariant, sketchy_drop_invalid=args.sketchyDropInvalid,
            imagenet_norm=args.dataNorm == "imagenet")
    except datasets.DataError as exc:
        raise UsageError(str(exc)) from None
    if args.nClasses is not None and args.nClasses != bundle.num_classes:
        raise UsageError(f"--nClasses {args.nClasses} does not match the {bundle.num_classes} classes found in "
                         f"{args.data_dir or args.dataset}; pass --nClasses {bundle.num_classes} or omit it")
    return bundle


def build_network(args, num_classes, in_channels, *, init=None):
    """The model of ``args``: built, initialised, its inputs and weights binarized; not moved or wrapped."""
    try:
        model = models.build_model(args.model_def, num_classes, in_channels,
                                   init=args.weight_init if init is None else init, bin_inputs=args.binInputs)
        weight_rule, act_rule = opts.backward_rules(args)
        slots = binarize.input_binarizers(model)
        if any(b.name != args.binActivation or b.surrogate.name != act_rule for *_, b in slots):
            binarize.binarize_inputs(model, args.binActivation, backward=act_rule)
        if args.binaryWeight:
            binarize.binarize_weights(model, layers=args.binLayers, method=args.binarizer, backward=weight_rule,
                                      shift=args.weightShift)
    except ValueError as exc:
        raise UsageError(f"{args.model_def}: {exc}") from None
    return model


def place_model(model, args, device, world):
    """Move ``model`` to ``device`` (channels-last, SyncBatchNorm, DDP as asked); returns ``(model, net)``,
    ``net`` the module to train (the DDP wrapper under torchrun)."""
    model.to(device)
    if args.channelsLast:
        model.to(memory_format=torch.channels_last)
    if args.syncBN and world > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if world == 1:
        return model, model
    ids = [device.index] if device.type == "cuda" else None
    return model, nn.parallel.DistributedDataParallel(model, device_ids=ids)


def make_optimizer(args, params):
    """The ``--optimType`` optimizer at ``--maxlr`` (the schedule sets the rate every epoch)."""
    lr, wd = args.maxlr, args.weightDecay
    if args.optimType == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=args.momentum, nesterov=args.nesterov and args.momentum > 0,
                               weight_decay=wd)
    factories = {"adam": torch.optim.Adam, "adagrad": torch.optim.Adagrad, "adamax": torch.optim.Adamax,
                 "adadelta": torch.optim.Adadelta}
    return factories[args.optimType](params, lr=lr, weight_decay=wd)


class TrainingLoss(nn.Module):
    """The training loss on the model's log-probabilities ``z``: ``-criterion`` (NLL, or cross-entropy with
    ``--labelSmoothing``), and with a teacher the distillation loss of sdbnn.md section 3,
    ``alpha * T^2 * KL(softmax(t / T) || softmax(z / T)) + (1 - alpha) * criterion`` (``t`` the teacher's
    outputs on the same images; log-probabilities and logits give the same softmax)."""

    def __init__(self, criterion="nllloss", label_smoothing=0.0, teacher=None, temperature=1.0, alpha=1.0,
                 amp=None):
        super().__init__()
        self.kind, self.smoothing = CRITERIA[criterion], label_smoothing
        self.teacher, self.temperature, self.alpha, self.amp = teacher, temperature, alpha, amp

    def forward(self, output, target, images):
        if self.kind == "nll":
            loss = F.nll_loss(output, target)
        else:
            loss = F.cross_entropy(output, target, label_smoothing=self.smoothing)
        if self.teacher is None:
            return loss
        with torch.no_grad(), torch.autocast(images.device.type, dtype=self.amp, enabled=self.amp is not None):
            soft = F.softmax(self.teacher(images).float() / self.temperature, dim=1)
        t = self.temperature
        kd = F.kl_div(F.log_softmax(output / t, dim=1), soft, reduction="batchmean") * t * t
        return self.alpha * kd + (1 - self.alpha) * loss if self.alpha < 1 else kd


def load_teacher(args, num_classes, in_channels, device):
    """The frozen teacher of ``--teacher`` (our checkpoint, or a torchvision ``--teacherModel`` state_dict)."""
    if not args.teacher:
        return None
    if args.teacherModel:
        import torchvision
        try:
            model = torchvision.models.get_model(args.teacherModel, weights=None, num_classes=num_classes)
            state = torch.load(args.teacher, map_location="cpu", weights_only=True)
            model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
        except (ValueError, RuntimeError, OSError) as exc:
            raise UsageError(f"--teacher {args.teacher!r} with --teacherModel {args.teacherModel}: "
                             f"{' '.join(str(exc).split())}") from None
    else:
        try:
            model, _, _ = load_checkpoint_model(args.teacher)
        except UsageError as exc:
            raise UsageError(f"--teacher: {exc}") from None
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    try:  # a teacher that cannot read this data should say so now, not after an epoch's set-up
        with torch.no_grad():
            out = model(torch.zeros(1, in_channels, args.inpsize, args.inpsize))
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--teacher {args.teacher!r} cannot read {in_channels}-channel {args.inpsize}x"
                         f"{args.inpsize} images ({' '.join(str(exc).split())}); give a teacher for this "
                         f"data") from None
    if out.shape[-1] != num_classes:
        raise UsageError(f"--teacher {args.teacher!r} has {out.shape[-1]} outputs, the data {num_classes} classes")
    return model.to(device)


def read_saved_args(state, path):
    """The resolved flags of the run that wrote checkpoint ``state``, as a new namespace: the current defaults
    for its model, overlaid with what it recorded (a checkpoint from before --binLayers gets them from its
    bin range)."""
    saved = dict(state.get("args") or {})
    if saved.get("model_def") not in models.list_models():
        raise UsageError(f"checkpoint {path!r} does not record a known --model_def ({saved.get('model_def')!r})")
    info = models.model_info(saved["model_def"])
    values = vars(opts.get_parser().parse_args(["--model_def", saved["model_def"]]))
    values.update({k: v for k, v in saved.items() if k in values and v is not None})
    if saved.get("binLayers") is None:
        start, end = values["binStart"] or info.bin_range[0], values["binEnd"] or info.bin_range[1]
        values["binLayers"] = list(range(start, min(end, info.num_convs) + 1))
    values.update(binActivation=values["binActivation"] or info.activation, backward=values["backward"] or "ste",
                  weightShift=None if values["weightShift"] in (None, "none") else values["weightShift"],
                  inpsize=values["inpsize"] or info.default_inpsize)
    return argparse.Namespace(**values)


def load_checkpoint_model(path, device="cpu"):
    """``(model, args, state)``: the model of a checkpoint of main.py, rebuilt from the flags it records and
    loaded with its weights, in eval mode on ``device``."""
    try:
        state = load_checkpoint(path)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    args = read_saved_args(state, path)
    model = build_network(args, state.get("num_classes") or datasets.SHAPES[args.dataset][0],
                          state.get("in_channels") or datasets.SHAPES[args.dataset][1], init=False)
    try:
        load_model_state(model, state["model"], path)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    return model.to(device).eval(), args, state


def load_resumed(model, args, state, path):
    """Load a checkpoint resumed from (exactly this configuration) into ``model``."""
    try:
        check_compatible(state.get("args"), vars(args), path, ARCH_KEYS)
        load_model_state(model, state["model"], path)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None


def load_pretrained(model, args, say):
    """Start from the weights of ``--pretrained_file``: a checkpoint of any configuration of the same
    architecture (stage 1 -> stage 2 of two-stage training), or an export (.safetensors)."""
    path = args.pretrained_file
    if path.endswith(".safetensors"):
        from deploy.export import ExportError, load_export_into, read_config
        try:
            held = read_config(path).get("model_def")
            if held not in (None, args.model_def):
                raise ExportError(f"export {path!r} holds a {held}, not a {args.model_def}; pass --model_def {held} "
                                  f"or another export")
            # Evaluation takes the exported code as is; training keeps the layers binarized (latents projected).
            load_export_into(model, path, keep_latent=not args.evaluate)
        except ExportError as exc:
            raise UsageError(str(exc)) from None
        return
    try:
        state = load_checkpoint(path)
        saved = state.get("args") or {}
        if saved.get("model_def", args.model_def) != args.model_def:
            raise CheckpointError(f"checkpoint {path!r} holds a {saved['model_def']}, not a {args.model_def}; pass "
                                  f"--model_def {saved['model_def']} or another checkpoint")
        adapted, notes, newly = adapt_state(model, state["model"])
        load_model_state(model, adapted, path)
    except CheckpointError as exc:
        raise UsageError(str(exc)) from None
    # Latents that came from a real weight or from another binarizer were never projected by this one:
    # project them now, as binarization does when attached and every training step does after.
    was = saved.get("binarizer") if saved.get("binaryWeight", True) else None
    for _, name, module, binarizer in binarize.binarized_layers(model):
        if name in newly or was != binarizer.method:
            binarizer.project_(module.parametrizations.weight.original)
    for note in notes:
        say(f"note: {path}: {note}")


def resolved_facts(args, model, bundle, world):
    """What a training run resolved from its flags, its model, its data and its code, as one JSON-ready dict
    (written to args.json as ``facts`` and stored in every checkpoint).

    ``model`` is the built network (before any DDP wrapper): the binarized convs are read from it, not from
    the flags. Keys: ``model_def``, ``family``, ``variant``, ``label`` (the registry's); ``weights_binarized``,
    ``binarized_convs`` (1-based conv indices), ``binarized_linears`` (module names), ``weight_binarizer``,
    ``weight_shift``; ``inputs_binarized``, ``binarized_input_convs``, ``activation_binarizer``; ``weight_backward``, ``act_backward`` (each part's rule) and ``backward``
    (None where nothing is binarized); ``world_size``, ``dataset``, ``inpsize``, ``num_classes``,
    ``in_channels``, ``data_fingerprint`` (:func:`data_fingerprint`) and ``code_version``
    (:func:`code_version`).
    """
    info = models.model_info(args.model_def)
    weight_layers = binarize.binarized_layers(model)
    input_convs = [row[0] for row in binarize.input_binarizers(model)]
    weights, inputs = bool(weight_layers), bool(input_convs)
    return dict(
        model_def=args.model_def, family=info.family, variant=info.variant, label=info.label,
        weights_binarized=weights, binarized_convs=[i for i, *_ in weight_layers if i is not None],
        binarized_linears=[name for i, name, *_ in weight_layers if i is None],
        weight_binarizer=args.binarizer if weights else None,
        weight_shift=(args.weightShift or "none") if weights else None,
        inputs_binarized=inputs, binarized_input_convs=input_convs,
        activation_binarizer=args.binActivation if inputs else None,
        backward=args.backward if weights or inputs else None,
        weight_backward=args.weightBackward if weights else None,
        act_backward=args.actBackward if inputs else None,
        world_size=int(world), dataset=args.dataset, inpsize=args.inpsize, num_classes=bundle.num_classes,
        in_channels=bundle.num_channels, data_fingerprint=data_fingerprint(bundle), code_version=code_version())


def data_fingerprint(bundle):
    """A short SHA-256 (16 hex digits) of what names the data without reading an image: the class names and,
    for each split, its size, its labels and (image folders) its file names. Two runs with the same
    fingerprint saw the same files in the same classes; the pixels themselves are not hashed. None when a
    split exposes neither labels nor file names."""
    digest = hashlib.sha256(json.dumps([str(c) for c in bundle.classes]).encode())
    for split in (bundle.train, bundle.val):
        targets, files = getattr(split, "targets", None), getattr(split, "files", None)
        if targets is None and files is None:
            return None
        digest.update(json.dumps(dict(size=len(split), targets=None if targets is None else [int(t) for t in targets],
                                      files=None if files is None else [str(f) for f in files])).encode())
    return digest.hexdigest()[:16]


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*command):
    """The output of ``git *command`` in the checkout of this code, or None. Read-only: with
    GIT_OPTIONAL_LOCKS=0, ``git status`` does not refresh the index."""
    try:
        done = subprocess.run(["git", *command], cwd=ROOT, capture_output=True, text=True, timeout=10,
                              env=dict(os.environ, GIT_OPTIONAL_LOCKS="0"))
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def code_version():
    """The version of the code that runs: ``git describe --always --tags`` of its checkout, with ``-dirty``
    when tracked files differ from that commit; where the code is not a git checkout of its own (an
    unpacked copy), ``dabnet <version>`` of the export format's package version."""
    top = _git("rev-parse", "--show-toplevel")
    described = _git("describe", "--always", "--tags") if top and os.path.samefile(top, ROOT) else None
    if described:
        changed = _git("status", "--porcelain", "--untracked-files=no")
        return described + ("-dirty" if changed else "")
    from deploy.export import __version__
    return f"dabnet {__version__}"
