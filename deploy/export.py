"""The 1-bit export format of a binarized model: writing it, and loading it back.

    report = export_model(model, "sketchanet.safetensors", config)  # {"bytes", "fp32_bytes", "ratio"}
    model, config = load_export("sketchanet.safetensors")          # rebuilt from the file alone, in eval
    model, config, report = deploy.packed.load_packed("sketchanetfbin.safetensors")  # AND + popcount convs
    load_export_into(model, "sketchanet.safetensors")               # into a model built from the same flags
    config = read_config("sketchanet.safetensors")                  # the header alone (model_def, inpsize, ...)

The file is a .safetensors file. Each binarized conv ``name`` is stored as its two-value code
``W = beta + (alpha - beta) * e`` per filter:

* ``name.weight.bits``: uint8, the mask e of the whole layer (C_out x C_in/groups x kh x kw values,
  flattened in that order) 8 per byte, least significant bit first: ceil(n / 8) bytes;
* ``name.weight.alpha`` and/or ``name.weight.beta``: the per-filter values the layer's binarizer names
  in its ``scales`` (dtype of the weight): DAB keeps both; XNOR alpha only (beta = -alpha); BNN and sign
  neither (alpha = 1, beta = -1). The binarizer class (``binarize.WEIGHT_BINARIZERS``) encodes and decodes.

Every other entry of ``model.state_dict()`` is stored unchanged (conv biases, BN parameters and running
statistics, unbinarized layers, the parameters of learnable activation binarizers); a binarizer's own
parameters (e.g. a weight shift) are folded into the code and not stored. The header metadata holds the
format tag, the project version, the config passed to :func:`export_model` (one key each, JSON-encoded),
what the model is built from (``bin_inputs``: the convs with a binarized input; ``activations``: index ->
[activation binarizer, its settings]), the binarized layers (``layers``: name -> index, method, shape,
dtype) and a sha256 over the header and every tensor, so a truncated or tampered file is refused with
:class:`ExportError`.

Decoding is exact: the stored alpha and beta are the very values the binarized weight holds, so the
decoded weight equals the exported model's binarized weight bit for bit.
"""

import hashlib
import itertools
import json
import math
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import binarize
import models

__version__ = "0.1.0"

__all__ = ["__version__", "ExportError", "DABInferenceConv2d", "export_model", "load_export", "load_export_into",
           "layer_code", "read_export", "read_config", "is_export", "pack_bits", "unpack_bits"]

FORMAT = "dabnet-packed-1bit/1"  # the tag every export carries since the first one; changing it orphans them
RESERVED = ("format", "dabnet_version", "layers", "sha256", "bin_inputs", "activations")
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ExportError(ValueError):
    """An export that cannot be written, read, verified or loaded into the given model."""


def pack_bits(mask):
    """Bool tensor -> uint8 tensor of ceil(numel / 8) bytes, 8 values per byte, first value in the low bit."""
    return torch.from_numpy(np.packbits(mask.detach().cpu().reshape(-1).numpy(), bitorder="little"))


def unpack_bits(packed, count):
    """Inverse of :func:`pack_bits`: the first ``count`` values, as a flat bool tensor."""
    bits = np.unpackbits(packed.cpu().numpy(), count=count, bitorder="little")
    return torch.from_numpy(bits.astype(bool))


def _method(layer):
    return binarize.WEIGHT_BINARIZERS[layer["method"]]


def _stored(tensors, name, layer):
    """The per-filter tensors a binarized layer stores, by scale name."""
    return {scale: tensors[f"{name}.weight.{scale}"] for scale in _method(layer).scales}


def _scales(tensors, name, layer):
    """Per-filter (alpha, beta) of a binarized layer."""
    return _method(layer).decode_values(_stored(tensors, name, layer), layer["shape"][0], DTYPES[layer["dtype"]])


def _mask(tensors, name, layer):
    """The mask e of a binarized layer, bool, in the weight's shape."""
    return unpack_bits(tensors[f"{name}.weight.bits"], math.prod(layer["shape"])).reshape(layer["shape"])


def layer_code(tensors, name, layer):
    """``(mask, alpha, beta)`` of the binarized layer ``name`` of an export read by :func:`read_export`:
    the bool mask e in the weight's shape and the per-filter values of its two levels."""
    alpha, beta = _scales(tensors, name, layer)
    return _mask(tensors, name, layer), alpha, beta


def _decode(tensors, name, layer):
    """The dense weight of a binarized layer: per filter, alpha where e is set and beta elsewhere."""
    return _method(layer).decode(_mask(tensors, name, layer), _stored(tensors, name, layer), DTYPES[layer["dtype"]])


def _digest(tensors, header):
    """sha256 over the header (without its own sha256) and every tensor's name, dtype, shape and bytes."""
    h = hashlib.sha256(json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True).encode())
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"\0{key}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _fp32_bytes(state):
    """Size of a state_dict with every floating tensor in fp32."""
    return sum(t.numel() * (4 if t.is_floating_point() else t.element_size()) for t in state.values())


@torch.no_grad()
def export_model(model, path, config):
    """Write ``model`` to ``path`` (.safetensors) with its binarized convs stored at 1 bit per weight.

    ``config`` (model_def, num_classes, in_channels, inpsize, bin range, binarizer, ...) goes into the
    header; :func:`load_export` needs at least model_def, num_classes and in_channels. The file holds what
    the model computes: each binarized layer's code as its forward makes it. Returns ``{"bytes",
    "fp32_bytes", "ratio", "layers"}`` with ratio = fp32_bytes / bytes and fp32_bytes the size of
    ``model.state_dict()`` in fp32.
    """
    clash = sorted(set(config) & set(RESERVED))
    if clash:
        raise ExportError(f"config keys {clash} are reserved in the export header")
    state = model.state_dict()
    binarized = binarize.binarized_layers(model)
    # A binarized layer is stored as its code: its latent and its binarizer's own parameters are left out.
    own = tuple(f"{name}.parametrizations.weight." for _, name, _, _ in binarized)
    tensors = {key: value.detach().cpu().contiguous() for key, value in state.items() if not key.startswith(own)}
    layers = {}
    for index, name, module, binarizer in binarized:
        w_hat = module.weight
        try:
            mask, stored = binarizer.encode(w_hat)
        except ValueError as exc:
            raise ExportError(f"layer {name!r}: {exc} (NaN or a foreign parametrization?); it cannot be exported") \
                from None
        tensors[f"{name}.weight.bits"] = pack_bits(mask)
        for scale, values in stored.items():
            tensors[f"{name}.weight.{scale}"] = values.cpu().contiguous()
        layers[name] = dict(index=index, method=binarizer.name, shape=list(w_hat.shape),
                            dtype=str(w_hat.dtype).removeprefix("torch."))
    activations = {str(index): [b.name, b.settings()] for index, _, _, _, b in binarize.input_binarizers(model)}

    header = {key: json.dumps(value, default=str) for key, value in config.items()}
    header.update(format=FORMAT, dabnet_version=__version__, layers=json.dumps(layers, sort_keys=True),
                  bin_inputs=json.dumps(list(getattr(model, "binary_inputs", ()))),
                  activations=json.dumps(activations, sort_keys=True))
    header["sha256"] = _digest(tensors, header)

    from safetensors.torch import save_file
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=folder)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=header)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as checkpoints: mkstemp's 0600 would make exports private to their writer
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    size = os.path.getsize(path)
    fp32 = _fp32_bytes(state)
    return dict(bytes=size, fp32_bytes=fp32, ratio=fp32 / size, layers=len(layers))


def _open(path, tensors=True):
    """``(header, tensors or None)`` of the safetensors file at ``path``; ExportError if it is none."""
    if not os.path.isfile(path):
        raise ExportError(f"export {path!r} does not exist; give a .safetensors file written by --export")
    from safetensors import safe_open
    try:
        with safe_open(path, framework="pt") as f:
            header = f.metadata() or {}
            return header, {key: f.get_tensor(key) for key in f.keys()} if tensors else None
    except Exception as exc:  # safetensors raises its own error types for a truncated or foreign file
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ExportError(f"export {path!r} is truncated or not a safetensors file ({reason}); "
                          f"export the checkpoint again") from None


def _config(path, header):
    """``(config, layers)`` decoded from an export's header."""
    if header.get("format") != FORMAT:
        raise ExportError(f"{path!r} is a safetensors file but not a dabnet export (format "
                          f"{header.get('format')!r}, expected {FORMAT!r})")
    try:
        layers = json.loads(header["layers"])
        config = {k: json.loads(v) for k, v in header.items() if k not in RESERVED}
        for key in ("bin_inputs", "activations"):  # absent in exports written before they were recorded
            if key in header:
                config[key] = json.loads(header[key])
    except (KeyError, ValueError) as exc:
        raise ExportError(f"export {path!r} has a corrupt header ({exc})") from None
    config["dabnet_version"] = header.get("dabnet_version")
    return config, layers


def is_export(path):
    """Whether ``path`` is a file in the export format (its header names the format; nothing is verified)."""
    try:
        header, _ = _open(path, tensors=False)
    except ExportError:
        return False
    return header.get("format") == FORMAT


def read_config(path):
    """The config in the header of the export at ``path`` (model_def, num_classes, in_channels, inpsize,
    binarized layers, ...), read without the tensors; the file is verified when it is loaded
    (:func:`read_export`). ExportError for a file that is not an export."""
    header, _ = _open(path, tensors=False)
    return _config(path, header)[0]


def read_export(path):
    """``(tensors, config, layers)`` of a verified export; one-line :class:`ExportError` otherwise."""
    header, tensors = _open(path)
    config, layers = _config(path, header)
    if header.get("sha256") != _digest(tensors, header):
        raise ExportError(f"export {path!r} fails its sha256 check (the file was changed after export); "
                          f"export the checkpoint again")
    for name, layer in layers.items():
        _check_layer(path, tensors, name, layer)
    return tensors, config, layers


def _check_layer(path, tensors, name, layer):
    """Raise ExportError unless the stored code of ``name`` (mask bytes, scales) has the sizes its shape implies."""
    try:
        shape, method, dtype = [int(d) for d in layer["shape"]], layer["method"], DTYPES[layer["dtype"]]
    except (KeyError, TypeError, ValueError):
        raise ExportError(f"export {path!r}: layer {name!r} has a corrupt description {layer!r}") from None
    if method not in binarize.WEIGHT_BINARIZERS or len(shape) not in (2, 4):
        raise ExportError(f"export {path!r}: layer {name!r} has method {method!r} and shape {shape}; expected one "
                          f"of {', '.join(binarize.weight_methods())} and a conv or Linear weight")
    bits = tensors.get(f"{name}.weight.bits")
    want = -(-math.prod(shape) // 8)
    if bits is None or bits.dtype != torch.uint8 or tuple(bits.shape) != (want,):
        got = None if bits is None else f"{bits.dtype} {tuple(bits.shape)}"
        raise ExportError(f"export {path!r}: layer {name!r} needs {want} mask bytes for shape {shape}, "
                          f"found {got}")
    for scale in binarize.WEIGHT_BINARIZERS[method].scales:
        t = tensors.get(f"{name}.weight.{scale}")
        if t is None or t.dtype != dtype or tuple(t.shape) != (shape[0],):
            got = None if t is None else f"{t.dtype} {tuple(t.shape)}"
            raise ExportError(f"export {path!r}: layer {name!r} needs {scale} as {dtype} ({shape[0]},), "
                              f"found {got}")


def _plain_state(tensors, layers):
    """The export as a plain state_dict: binarized layers decoded from their code to ``name.weight``."""
    code = {f"{name}.weight.{part}" for name, layer in layers.items() for part in ("bits",) + _method(layer).scales}
    state = {k: v for k, v in tensors.items() if k not in code}
    for name, layer in layers.items():
        state[f"{name}.weight"] = _decode(tensors, name, layer)
    return state


def load_export_into(model, path, *, keep_latent=False):
    """Load the export at ``path`` into ``model``, built with the flags the export was made from.

    Layers binarized in the export get the decoded weight; everything else loads as from a state_dict.
    A layer binarized in ``model`` (parametrized) cannot take the code as its latent and reproduce it
    exactly: the forward re-solves it, and the re-solved group means differ from the stored ones by float
    rounding. So by default its parametrization is removed and the decoded weight becomes a fixed plain
    weight: the forward reproduces the exported model exactly (for evaluation). ``keep_latent=True``
    instead keeps the parametrization and sets the latent to the decoded code, projected as every training
    step leaves a latent (centred over input channels and clamped, where the binarizer projects), for
    fine-tuning from an export: training starts from a latent it could have reached, and the first forward
    matches the export only approximately (the binarizer's own parameters, not stored in an export, keep
    their values). Raises ExportError if the export does not fit ``model``.
    """
    tensors, _, layers = read_export(path)
    _load_state(model, path, tensors, layers, keep_latent)
    if keep_latent:
        binarize.project_latent_(model)
    return model


def _load_state(model, path, tensors, layers, keep_latent, assign=False):
    state = _plain_state(tensors, layers)
    in_model = {name: b for _, name, _, b in binarize.binarized_layers(model)}
    for name, binarizer in in_model.items():
        if name not in layers:
            raise ExportError(f"export {path!r} does not fit this model: conv {name!r} is binarized here but full "
                              f"precision in the export; check --binaryWeight, --binStart and --binEnd")
        if binarizer.method != layers[name]["method"]:
            raise ExportError(f"export {path!r} does not fit this model: conv {name!r} uses {binarizer.method} here "
                              f"but {layers[name]['method']} in the export; pass --binarizer "
                              f"{layers[name]['method']}")
    own = {key: value for key, value in model.state_dict().items()
           if any(key.startswith(f"{name}.parametrizations.weight.") for name in in_model)}
    if keep_latent:
        for name in in_model:
            state[f"{name}.parametrizations.weight.original"] = state.pop(f"{name}.weight")
        state.update({k: v for k, v in own.items() if not k.endswith(".original")})
    expected = {}
    for key, value in model.state_dict().items():
        if key in own and not keep_latent:
            if key.endswith(".parametrizations.weight.original"):
                expected[key.removesuffix(".parametrizations.weight.original") + ".weight"] = tuple(value.shape)
            continue
        expected[key] = tuple(value.shape)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        detail = (f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}" if unexpected
                  else f"{wrong[0]!r} is {tuple(state[wrong[0]].shape)} in the export, {expected[wrong[0]]} here")
        raise ExportError(f"export {path!r} does not fit this model ({detail}); check --model_def, --nClasses and "
                          f"the input channels")
    if not keep_latent:
        for _, name, conv, _ in binarize.binarized_layers(model):
            parametrize.remove_parametrizations(conv, "weight", leave_parametrized=False)
    model.load_state_dict(state, assign=assign)
    return model


def load_export(path, device="cpu", *, inference_form=False, contents=None):
    """``(model, config)``: the model rebuilt from the export alone, in eval mode on ``device``.

    Binarized convs become plain convs with their decoded weights, or, with ``inference_form=True``,
    :class:`DABInferenceConv2d` modules that run the factored form. ``contents`` is what
    :func:`read_export` returned for ``path``, when the caller has read the file already.
    """
    tensors, config, layers = contents if contents is not None else read_export(path)
    # Built on the meta device and given the export's tensors (no random init of weights that are
    # overwritten anyway); rebuilt for real if the model holds tensors that no state_dict carries.
    model = _rebuild(path, config, device="meta")
    _load_state(model, path, tensors, layers, keep_latent=False, assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        model = _rebuild(path, config, device="cpu")
        _load_state(model, path, tensors, layers, keep_latent=False)
    if inference_form:
        convs = dict(model.named_modules())
        for name, layer in layers.items():
            replacement = DABInferenceConv2d.from_conv(convs[name], *layer_code(tensors, name, layer))
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, replacement)
    return model.to(device).eval(), config


def _rebuild(path, config, device):
    """The model described by an export's header, built without init on ``device``."""
    try:
        with torch.device(device):
            model = models.build_model(config["model_def"], config["num_classes"], config.get("in_channels"),
                                       init=False, bin_inputs=config.get("bin_inputs"))
            if "activations" in config:
                for index, (name, settings) in config["activations"].items():
                    binarize.set_input_binarizer(model, int(index), name, **settings)
            elif (config.get("binActivation") or "sign") != "sign":  # exports from before "activations"
                binarize.binarize_inputs(model, config["binActivation"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ExportError(f"export {path!r}: cannot rebuild the model from its header ({exc})") from None
    return model


class DABInferenceConv2d(nn.Module):
    """A conv with a two-value weight per filter, run in the factored form of the DAB identity.

    With ``W = beta + (alpha - beta) * e`` (e in {0, 1}, alpha and beta per output filter):

        conv(x, W) = beta * boxsum(x) + (alpha - beta) * conv(x, e)

    where boxsum(x) is the conv of x with an all-ones kernel of the filter's shape (same stride,
    padding, dilation and groups), shared by all filters of a group. conv(x, e) only adds inputs under
    the set bits, so on sign-binarized inputs it is a popcount; the dense weight is never formed.
    """

    def __init__(self, mask, alpha, beta, bias=None, stride=1, padding=0, dilation=1, groups=1):
        super().__init__()
        c_out, c_in_per_group, kh, kw = mask.shape
        if c_out % groups:
            raise ValueError(f"{c_out} filters cannot form {groups} groups")
        dtype = alpha.dtype
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.register_buffer("code", mask.to(dtype))
        self.register_buffer("alpha", alpha.detach().clone())
        self.register_buffer("beta", beta.detach().to(dtype).clone())
        self.register_buffer("ones", torch.ones(groups, c_in_per_group, kh, kw, dtype=dtype, device=alpha.device))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_conv(cls, conv, mask, alpha, beta):
        """The factored form of ``conv`` (its geometry and bias) with the code (mask, alpha, beta)."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"DABInferenceConv2d supports zero padding only, not {conv.padding_mode!r}")
        device = conv.weight.device
        return cls(mask.to(device), alpha.to(device), beta.to(device), conv.bias, conv.stride, conv.padding,
                   conv.dilation, conv.groups)

    def dense_weight(self):
        """The weight ``beta + (alpha - beta) * e`` this module stands for."""
        shape = (-1, 1, 1, 1)
        return self.beta.view(shape) + (self.alpha - self.beta).view(shape) * self.code

    def forward(self, x):
        geometry = (self.stride, self.padding, self.dilation, self.groups)
        box = F.conv2d(x, self.ones, None, *geometry)
        if self.groups > 1:
            box = box.repeat_interleave(self.code.shape[0] // self.groups, dim=1)
        selected = F.conv2d(x, self.code, None, *geometry)
        out = torch.addcmul(box * self.beta.view(1, -1, 1, 1), selected, (self.alpha - self.beta).view(1, -1, 1, 1))
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)

    def extra_repr(self):
        c_out, c_in, kh, kw = self.code.shape
        return (f"{c_in * self.groups}, {c_out}, kernel_size={(kh, kw)}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}")
