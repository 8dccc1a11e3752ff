"""Bit-aware model summary: what each layer stores, in how many bits, and how many MACs it costs.

    summary = summarize(model, inpsize=225, in_channels=1)   # model as built, binarized or not
    print(format_summary(summary, title="sketchanetwbin ..."))

One row per nn.Conv2d (numbered as --binStart/--binEnd count them) and per nn.Linear, in
``model.modules()`` order, then one row for all BatchNorm affine parameters and one for any other
parameter. A binarized layer stores its weights at 1 bit each plus the per-filter scales its binarizer
keeps in fp32 (its ``scales``): DAB alpha and beta per filter, XNOR one scale, BNN and sign none.
Everything else (conv biases, BN weight and bias, Linear layers, unbinarized convs) counts as 32-bit
parameters. BN running statistics are buffers and are not counted, so the full-precision size is 4
bytes per parameter. Byte counts round each layer's bits up to whole bytes on their own (ceil(n / 8)
bytes), as deploy.export stores them.

MACs come from forward hooks on a dummy batch of 1: a conv costs out_h * out_w * C_out * (C_in / groups)
* kh * kw, a Linear in * out. They are "weight-binary" when the conv's weights are binarized (its
input may be real) and "fully binary" when its input is sign-binarized too (the model's declared
``binary_inputs``): only those can run as XNOR + popcount (deploy.packed's AND + popcount convs).
"""

import copy

from torch import nn
from torch.nn.utils import parametrize

import binarize
from models.blocks import dummy_forward

__all__ = ["summarize", "format_summary", "count_macs"]
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _weight_shape(module):
    if parametrize.is_parametrized(module, "weight"):
        return tuple(module.parametrizations.weight.original.shape)  # reading .weight would run the solve
    return tuple(module.weight.shape)


def count_macs(model, inpsize, in_channels):
    """``{module name: MACs}`` for every conv and Linear, from a forward of a plain copy of ``model``.

    The dummy forward runs on a deep copy, so whatever the binarizers solve or project stays in the copy.
    The copy keeps its weight parametrizations: removing them would delete the ``weight`` property from
    the parametrized class that the copy shares with ``model`` (torch.nn.utils.parametrize makes one class
    per module, and a deep copy does not copy classes), breaking every later forward of ``model``.
    """
    plain = copy.deepcopy(model)
    macs, hooks = {}, {}
    for name, module in plain.named_modules():
        if isinstance(module, nn.Conv2d):
            def hook(m, args, out, name=name):
                per_output = (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
                macs[name] = macs.get(name, 0) + out[0].numel() * per_output
        elif isinstance(module, nn.Linear):
            def hook(m, args, out, name=name):
                macs[name] = macs.get(name, 0) + out[0].numel() * m.in_features
        else:
            continue
        hooks[module] = hook
    dummy_forward(plain, inpsize, in_channels, hooks)
    return macs


def summarize(model, inpsize, in_channels):
    """The per-layer table and totals of ``model`` for ``in_channels`` x ``inpsize`` x ``inpsize`` inputs.

    Returns ``{"rows": [...], "totals": {...}}``. Each row: index (conv number, None for other layers),
    name, kind (conv, linear, bn, other), shape, weights ("fp" or the binarizer), binary_input, bits
    (1-bit parameters), fp32 (32-bit parameters), params (as in the fp32 model), bytes, fp32_bytes, macs,
    mac_kind ("fp", "w1": binary weights, "w1a1": binary weights and input). ``model`` is not changed.
    """
    binarizers = {name: b for _, name, _, b in binarize.binarized_layers(model)}
    binary_inputs = {index for index, *_ in binarize.input_binarizers(model)}
    macs = count_macs(model, inpsize, in_channels)

    rows, counted = [], set()
    conv_index = 0
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            continue
        is_conv = isinstance(module, nn.Conv2d)
        conv_index += is_conv
        shape = _weight_shape(module)
        n_weights = 1
        for d in shape:
            n_weights *= d
        n_bias = module.bias.numel() if module.bias is not None else 0
        binarizer = binarizers.get(name)
        binary_input = is_conv and conv_index in binary_inputs
        if binarizer is None:
            bits, scales, mac_kind = 0, 0, "fp"
            fp32 = n_weights + n_bias
        else:
            bits, scales = n_weights, len(binarizer.scales) * shape[0]
            fp32 = scales + n_bias
            mac_kind = "w1a1" if binary_input else "w1"
        rows.append(dict(index=conv_index if is_conv else None, name=name, kind="conv" if is_conv else "linear",
                         shape=shape, weights=binarizer.name if binarizer else "fp", binary_input=binary_input,
                         bits=bits, fp32=fp32, scales=scales, params=n_weights + n_bias, macs=macs.get(name, 0),
                         mac_kind=mac_kind))
        counted.update(id(p) for p in module.parameters())  # a binarized layer's latent (and shift) sit in a child

    groups = {"bn": [0, 0], "other": [0, 0]}  # kind -> [parameters, layers]
    for module in model.modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in counted]
        if isinstance(module, (nn.Conv2d, nn.Linear)) or not own:
            continue
        group = groups["bn" if isinstance(module, BATCHNORMS) else "other"]
        group[0] += sum(p.numel() for p in own)
        group[1] += 1
        counted.update(id(p) for p in own)
    for kind, (params, layers) in groups.items():
        if layers:
            label = "BatchNorm weight and bias" if kind == "bn" else "other parameters"
            rows.append(dict(index=None, name=f"{label} ({layers} layers)", kind=kind, shape=None, weights="fp",
                             binary_input=False, bits=0, fp32=params, scales=0, params=params, macs=0,
                             mac_kind="fp"))

    for row in rows:
        row["bytes"] = -(-row["bits"] // 8) + 4 * row["fp32"]
        row["fp32_bytes"] = 4 * row["params"]
    return dict(rows=rows, totals=_totals(rows))


def _totals(rows):
    params = sum(r["params"] for r in rows)
    bits = sum(r["bits"] for r in rows)
    fp32 = sum(r["fp32"] for r in rows)
    scales = sum(r["scales"] for r in rows)
    size = sum(r["bytes"] for r in rows)
    macs = sum(r["macs"] for r in rows)
    w1 = sum(r["macs"] for r in rows if r["mac_kind"] in ("w1", "w1a1"))
    w1a1 = sum(r["macs"] for r in rows if r["mac_kind"] == "w1a1")
    return dict(params=params, binarized_params=bits, fp32_params=fp32, scale_params=scales,
                fp32_bytes=4 * params, bytes=size, ratio=4 * params / size if size else float("nan"),
                macs=macs, weight_binary_macs=w1, binary_macs=w1a1,
                weight_binary_share=w1 / macs if macs else 0.0, binary_share=w1a1 / macs if macs else 0.0)


def _megabytes(n):
    return f"{n / 1e6:.2f} MB"


def format_summary(summary, title=None):
    """The summary as a fixed-width text table followed by its totals."""
    header = ("#", "layer", "weight shape", "W", "input", "1-bit params", "32-bit params", "bytes", "MACs",
              "MAC kind")
    lines = []
    for r in summary["rows"]:
        lines.append((
            "" if r["index"] is None else str(r["index"]), r["name"],
            "" if r["shape"] is None else "x".join(str(d) for d in r["shape"]),
            r["weights"] if r["kind"] in ("conv", "linear") else "",
            ("1-bit" if r["binary_input"] else "fp") if r["kind"] in ("conv", "linear") else "",
            f"{r['bits']:,}", f"{r['fp32']:,}", f"{r['bytes']:,}",
            f"{r['macs']:,}" if r["kind"] in ("conv", "linear") else "",
            {"fp": "fp", "w1": "W1", "w1a1": "W1A1"}[r["mac_kind"]] if r["kind"] in ("conv", "linear") else ""))
    widths = [max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(header)]
    left = {1, 2, 3, 4, 9}

    def fmt(cells):
        return "  ".join(c.ljust(w) if i in left else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    t = summary["totals"]
    out = [title] if title else []
    out += [fmt(header), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines]
    macs = t["macs"]
    out += [
        "",
        f"parameters           {t['params']:,} ({t['binarized_params']:,} binarized to 1 bit, "
        f"{t['params'] - t['binarized_params']:,} kept in fp32)",
        f"stored               {t['binarized_params']:,} x 1 bit + {t['fp32_params']:,} x 32 bits "
        f"(incl. {t['scale_params']:,} per-filter scales)",
        f"full-precision size  {t['fp32_bytes']:,} bytes ({_megabytes(t['fp32_bytes'])}; BN running statistics "
        f"not counted)",
        f"binarized size       {t['bytes']:,} bytes ({_megabytes(t['bytes'])})",
        f"compression          {t['ratio']:.2f}x",
        f"MACs per image       {macs:,}",
        f"  weight-binary      {t['weight_binary_macs']:,} ({100 * t['weight_binary_share']:.1f}%): "
        f"binary weights, any input (W1 + W1A1)",
        f"  fully binary       {t['binary_macs']:,} ({100 * t['binary_share']:.1f}%): binary weights and "
        f"sign-binarized input (W1A1, XNOR + popcount)",
        "(W: weight binarizer; bytes: ceil(1-bit params / 8) + 4 x 32-bit params; 1 MB = 10^6 bytes)",
    ]
    return "\n".join(out)
