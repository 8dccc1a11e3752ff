"""The model tools of main.py, which read no data and train nothing: ``--summary`` (the bit-aware per-layer
table), ``--export`` (the packed 1-bit file of a checkpoint), and the model of ``--packed`` evaluation."""

import os

import torch

import datasets
import models
from utils.errors import UsageError
from launch import build
from launch.folders import check_model_options, compare_options, explicit_options


def run_model_tool(args, given=None):
    """``--summary`` or ``--export``; returns the exit status. ``given``: the options the command line gave
    (``opts.given_options(argv)``), which an export checks against its checkpoint."""
    if args.export:
        return _export(args, given)
    from deploy.summary import format_summary, summarize
    try:
        models.check_input_size(args.model_def, args.inpsize)
    except ValueError as exc:  # the message names the model already
        raise UsageError(f"{exc}; pass an --inpsize in that range") from None
    num_classes, in_channels = datasets.SHAPES[args.dataset]
    num_classes = args.nClasses or num_classes
    model = build.build_network(args, num_classes, in_channels)
    weights = (f"{args.binarizer} weights on convs {args.binStart}..{args.binEnd}" if args.binaryWeight
               else "full-precision weights")
    title = (f"{args.model_def}, {num_classes} classes, {in_channels} channel(s), {args.inpsize}x{args.inpsize}, "
             f"{weights}")
    try:
        summary = summarize(model, args.inpsize, in_channels)
    except RuntimeError as exc:  # a size the model's layers cannot take, past what its family declares
        raise UsageError(f"{args.model_def} cannot run on {args.inpsize}x{args.inpsize} inputs "
                         f"({' '.join(str(exc).split())[:200]}); choose another --inpsize") from None
    print(format_summary(summary, title=title))
    return 0


def _export(args, given=None):
    """Write the export of ``--resume``/``--pretrained_file``: the checkpoint knows its own configuration; a
    model flag given that contradicts it is an error naming both values."""
    from deploy.export import ExportError, export_model, is_export
    source = args.resume or args.pretrained_file
    if os.path.isfile(source) and is_export(source):
        raise UsageError(f"{source!r} is an export already; --export reads a checkpoint (.pth) written by main.py")
    model, saved, state = build.load_checkpoint_model(source)
    stored = {key: getattr(saved, key) for key in build.ARCH_KEYS + ("inpsize",)}
    if state.get("num_classes"):
        stored["nClasses"] = int(state["num_classes"])
    check_model_options(compare_options(stored, args, explicit_options(args, given))[1], source)
    folder = os.path.dirname(os.path.abspath(args.export))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"--export {args.export!r}: {folder!r} is not a writable folder; choose another path")
    config = dict(model_def=saved.model_def, num_classes=state.get("num_classes"), in_channels=state.get("in_channels"),
                  inpsize=saved.inpsize, binLayers=saved.binLayers, binaryWeight=saved.binaryWeight,
                  binarizer=saved.binarizer, binActivation=saved.binActivation, classes=state.get("classes"),
                  dataset=saved.dataset)
    try:
        report = export_model(model, args.export, config)
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    print(_export_line(args.export, saved.model_def, report))
    return 0


def _export_line(path, model_def, report):
    """What an export wrote, and how its size compares with the fp32 state_dict."""
    written = f"wrote {path}: {report['bytes']:,} bytes"
    if not report["layers"]:
        return (f"{written}; this {model_def} has no binarized layer, so every weight is stored at full precision "
                f"and the file is no smaller than the fp32 state_dict ({report['fp32_bytes']:,} bytes; the "
                f"export adds its header); export a model with binarized weights to store them at 1 bit")
    return (f"{written}, {report['ratio']:.2f}x smaller than the fp32 state_dict ({report['fp32_bytes']:,} bytes): "
            f"{report['layers']} binarized layer(s) stored at 1 bit per weight")


def packed_device(args, device=None, cuda_available=None):
    """``(device, note or None)``: where ``--packed`` evaluation runs (:func:`launch.build.choose_device`,
    unless ``device`` is given) and, where that is not what the flags alone suggest, a note saying why."""
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    device = torch.device(device) if device is not None else build.choose_device(args, cuda)[0]
    if args.packed == "on" and cuda and args.device == "auto":
        return device, ("--packed on: the packed XNOR/popcount convs run on the CPU, so this evaluation runs on "
                        "the CPU although CUDA is available (--packed auto runs the model dense on the GPU)")
    if args.packed == "auto" and device.type != "cpu":
        return device, (f"--packed auto on {device}: packed convs run on the CPU only, so every layer runs dense "
                        f"on {device} (--packed on runs them packed on the CPU)")
    return device, None


def load_packed_model(args, say, device=None, cuda_available=None):
    """The export of ``--pretrained_file`` with bit-packed convs (``--packed on``; ``auto`` runs the layers
    the packed kernel does not cover dense, and says which), on the device of :func:`packed_device`."""
    from deploy.export import ExportError
    from deploy.packed import PackedError, PackedUnavailable, load_packed
    device, note = packed_device(args, device, cuda_available)
    if note:
        say(f"note: {note}")
    try:
        model, config, report = load_packed(args.pretrained_file, device, fallback=args.packed == "auto")
    except (ExportError, PackedError, PackedUnavailable) as exc:
        raise UsageError(str(exc)) from None
    if config.get("model_def") != args.model_def:
        raise UsageError(f"{args.pretrained_file!r} holds a {config.get('model_def')}, not a {args.model_def}; drop "
                         f"--model_def (the export names its model)")
    packed = [r for r in report if r["packed"]]
    say(f"packed: {len(packed)} of {len(report)} binarized layers run as XNOR/popcount convs")
    if device.type == "cpu":
        for r in report:
            if not r["packed"]:
                say(f"  dense: {r['name']} ({r['reason']})")
    return model
