"""The model tools of main.py, which read no data and train nothing: ``--summary`` (the bit-aware per-layer
table), ``--export`` (the packed 1-bit file of a checkpoint), and the model of ``--packed`` evaluation."""

import os

import datasets
from utils.errors import UsageError
from launch import build


def run_model_tool(args):
    """``--summary`` or ``--export``; returns the exit status."""
    if args.export:
        return _export(args)
    from deploy.summary import format_summary, summarize
    num_classes, in_channels = datasets.SHAPES[args.dataset]
    num_classes = args.nClasses or num_classes
    model = build.build_network(args, num_classes, in_channels)
    weights = (f"{args.binarizer} weights on convs {args.binStart}..{args.binEnd}" if args.binaryWeight
               else "full-precision weights")
    title = (f"{args.model_def}, {num_classes} classes, {in_channels} channel(s), {args.inpsize}x{args.inpsize}, "
             f"{weights}")
    print(format_summary(summarize(model, args.inpsize, in_channels), title=title))
    return 0


def _export(args):
    """Write the export of ``--resume``/``--pretrained_file``: the checkpoint knows its own configuration."""
    from deploy.export import ExportError, export_model
    source = args.resume or args.pretrained_file
    model, saved, state = build.load_checkpoint_model(source)
    folder = os.path.dirname(os.path.abspath(args.export))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise UsageError(f"--export {args.export!r}: {folder!r} is not a writable folder; choose another path")
    config = dict(model_def=saved.model_def, num_classes=state.get("num_classes"), in_channels=state.get("in_channels"),
                  inpsize=saved.inpsize, binLayers=saved.binLayers, binaryWeight=saved.binaryWeight,
                  binarizer=saved.binarizer, binActivation=saved.binActivation, classes=state.get("classes"))
    try:
        report = export_model(model, args.export, config)
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {args.export}: {report['bytes']:,} bytes, {report['ratio']:.2f}x smaller than the fp32 "
          f"state_dict ({report['fp32_bytes']:,} bytes)")
    return 0


def load_packed_model(args, say):
    """The export of ``--pretrained_file`` with bit-packed convs (``--packed on``; ``auto`` runs the layers
    the packed kernel does not cover dense, and says which)."""
    from deploy.export import ExportError
    from deploy.packed import PackedError, PackedUnavailable, load_packed
    try:
        model, config, report = load_packed(args.pretrained_file, fallback=args.packed == "auto")
    except (ExportError, PackedError, PackedUnavailable) as exc:
        raise UsageError(str(exc)) from None
    if config.get("model_def") != args.model_def:
        raise UsageError(f"{args.pretrained_file!r} holds a {config.get('model_def')}; pass --model_def "
                         f"{config.get('model_def')} (the data pipeline follows it)")
    packed = [r for r in report if r["packed"]]
    say(f"packed: {len(packed)} of {len(report)} binarized layers run as XNOR/popcount convs")
    for r in report:
        if not r["packed"]:
            say(f"  dense: {r['name']} ({r['reason']})")
    return model
