"""``python -m models [NAME] [--inpsize N] [--nClasses C] [--channels K] [--binInputs LIST]``: the registry.

Without NAME: one line per registered model with its facts (label, family, variant, whether its weights
and inputs are binarized by default, activation binarizer, default input, convs).

With NAME: its facts on the first line, then one row per nn.Conv2d in the order --binStart/--binEnd count
them: index, module name, shape, whether its input is binarized (as the variant has it, or as
``--binInputs`` sets it), and the spatial size in and out, plus the family's accepted input sizes and the
convs binarized by default (``*``), and for SD-BNN's models a recipe that trains them on the embedded
digits. The model is built on the "meta" device, so even AlexNet costs nothing. A bad name or size
prints one line to stderr and exits with status 2.
"""

import argparse
import sys

import torch

import binarize

from . import build_model, check_input_size, conv_table, digits_recipe, list_models, model_info


def get_parser():
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__.splitlines()[0])
    parser.add_argument("name", nargs="?", default=None,
                        help=f"model name, one of: {', '.join(list_models())} (none: list them all)")
    parser.add_argument("--inpsize", type=int, default=None, help="input side length (default: the family's)")
    parser.add_argument("--nClasses", type=int, default=250, help="number of classes (default: 250)")
    parser.add_argument("--channels", type=int, default=None, help="input channels (default: the family's)")
    parser.add_argument("--binInputs", default=None, metavar="LIST",
                        help="convs whose input is binarized, e.g. 2-5,7 or none (default: the variant's)")
    return parser


def _hw(hw):
    return "x".join(map(str, hw))


def describe(info):
    """The facts of a ModelInfo in words, e.g. "Sketch-A-Net fbin (family sketchanet, variant fbin): by
    default binary weights and sign-binarized inputs at convs 2-7"."""
    weights = "binary" if info.binarized else "real"
    inputs = (f"{info.activation}-binarized inputs at convs {binarize.format_indices(info.binary_inputs)}"
              if info.inputs_binarized else "real inputs")
    return f"{info.label} (family {info.family}, variant {info.variant}): by default {weights} weights and {inputs}"


def format_table(info, rows, inpsize, channels):
    """The printed report: a header line, the column titles and one line per conv."""
    chosen = set(info.bin_layers)
    lines = [f"{info.name}: {describe(info)}; {info.num_convs} convs, input {channels}x{inpsize}x{inpsize} "
             f"(accepts {info.min_inpsize}..{info.max_inpsize}); binarized by default: convs "
             f"{binarize.format_indices(info.bin_layers)} (*)",
             f"{'#':>3}  {'module':<28} {'in->out':>11} {'k/s/p':>8} {'groups':>6} {'bias':>4} "
             f"{'binary input':>12} {'in hw':>9} {'out hw':>9}"]
    for r in rows:
        mark = "*" if r["index"] in chosen else " "
        shape = f"{r['in_channels']}->{r['out_channels']}"
        ksp = f"{r['kernel'][0]}/{r['stride'][0]}/{r['padding'][0]}"
        lines.append(f"{r['index']:>3}{mark} {r['name']:<28} {shape:>11} {ksp:>8} {r['groups']:>6} "
                     f"{'yes' if r['bias'] else 'no':>4} {'yes' if r['binary_input'] else 'no':>12} "
                     f"{_hw(r['input_hw']):>9} {_hw(r['out_hw']):>9}")
    return "\n".join(lines)


def format_registry(names):
    """One line per name: the name, then its facts (``describe``), default input and conv count."""
    width = max(map(len, names))
    lines = []
    for name in names:
        info = model_info(name)
        lines.append(f"{name:<{width}}  {describe(info)}; input {info.default_in_channels}x{info.default_inpsize}"
                     f"x{info.default_inpsize}, {info.num_convs} convs")
    return "\n".join(lines)


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.name is None:
        given = [flag for flag in ("inpsize", "channels", "binInputs") if getattr(args, flag) is not None]
        if given:
            print(f"python -m models: error: --{given[0]} needs a model NAME; give one, e.g. "
                  f"python -m models sketchanetfbin --{given[0]} ...", file=sys.stderr)
            return 2
        print(format_registry(list_models()))
        return 0
    try:
        info = model_info(args.name)
        inpsize = info.default_inpsize if args.inpsize is None else args.inpsize
        channels = info.default_in_channels if args.channels is None else args.channels
        check_input_size(args.name, inpsize)
        bin_inputs = None if args.binInputs is None else binarize.parse_indices(args.binInputs)
        with torch.device("meta"):
            model = build_model(args.name, args.nClasses, in_channels=channels, init=False, bin_inputs=bin_inputs)
        rows = conv_table(model, inpsize, channels)
    except ValueError as err:
        print(f"python -m models: error: {err}", file=sys.stderr)
        return 2
    print(format_table(info, rows, inpsize, channels))
    recipe = digits_recipe(args.name)
    if recipe:
        print(f"digits recipe that trains (SD-BNN's own: bash runx.sh list): python main.py {' '.join(recipe)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
