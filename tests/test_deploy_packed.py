"""Tests of deploy.packed: the AND + popcount conv against the dense conv of its decoded weight (every
weight binarizer's code, odd channel counts, padding up to wider than the kernel, stride, kernels 1 to 7,
batches, both memory layouts, inputs of exactly 0), whole exported models run packed against their
dense rebuild (inputs with exact zeros, the digits val set), and the one-line errors and the dense
fallback for exports or environments that cannot run packed.

sign(0) is +1 on both paths: the packing reads an input >= 0 as +1, as binarize's dense sign maps it.

Binary networks amplify float rounding: a dense conv and the packed one round differently, a BN output
within that rounding of 0 takes the other sign, and the flip spreads through the later layers. The
whole-model tests therefore give every binarized filter a dyadic two-value code (multiples of 1/64), so
that both paths compute the binarized convs exactly and any difference is a bug; the realistic DAB codes
are checked layer by layer, each packed conv fed the dense model's own input.
"""

import io
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import binarize
import models
from deploy.export import ExportError, export_model, load_export, read_export
from deploy.packed import PackedConv2d, PackedError, PreSign, load_packed, pack_model, report_line
from conftest import PYTHON_START, subprocess_timeout

pytest.importorskip("numba")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def signs(shape, seed):
    """A random +-1 tensor (no exact zeros)."""
    g = torch.Generator().manual_seed(seed)
    return torch.where(torch.rand(shape, generator=g) > 0.5, 1.0, -1.0)


def code_of(method, c_out, c_in, k, seed):
    """(mask, alpha, beta) of a conv weight binarized by ``method``; "arbitrary" draws any alpha, beta."""
    g = torch.Generator().manual_seed(seed)
    if method == "arbitrary":
        mask = torch.rand(c_out, c_in, k, k, generator=g) > 0.5
        return mask, torch.randn(c_out, generator=g), torch.randn(c_out, generator=g)
    conv = nn.Conv2d(c_in, c_out, k, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
    binarize.binarize_layer(conv, method)
    cls = binarize.WEIGHT_BINARIZERS[method]
    with torch.no_grad():
        mask, stored = cls.encode(conv.weight)
    alpha, beta = cls.decode_values(stored, c_out, torch.float32)
    return mask, alpha, beta


CONV_CASES = [  # (method, c_in, c_out, kernel, stride, padding, batch, side)
    ("dab", 64, 64, 3, 1, 1, 1, 12),
    ("xnor", 65, 17, 3, 2, 1, 2, 11),
    ("bnn", 130, 65, 5, 1, 2, 1, 9),
    ("sign", 3, 5, 3, 2, 1, 3, 9),
    ("arbitrary", 130, 40, 1, 1, 0, 2, 7),
    ("dab", 128, 33, 7, 1, 3, 1, 7),
    ("arbitrary", 64, 128, 5, 1, 0, 1, 20),
    ("xnor", 256, 96, 7, 1, 0, 2, 7),
    ("dab", 512, 8, 1, 1, 0, 1, 1),
    ("bnn", 16, 16, 3, 1, 1, 16, 5),
    ("arbitrary", 3, 130, 3, 3, 0, 1, 10),
    ("xnor", 64, 24, 1, 2, 0, 2, 9),  # a strided 1x1 conv packs every second row and column only
    ("arbitrary", 100, 70, 1, 3, 0, 1, 10),
    # fewer than 64 channels: the words of neighbouring taps side by side (3 taps of 16 or 8 channels, 5 of 8)
    ("dab", 32, 32, 3, 1, 1, 2, 8),
    ("xnor", 16, 32, 3, 2, 1, 1, 9),
    ("dab", 8, 8, 5, 1, 2, 1, 7),
    ("sign", 32, 16, 3, 1, 0, 1, 6),
]


def dense_conv(x, conv):
    """F.conv2d in float64 of what ``conv`` stands for: the sign of ``x`` (+1 at 0) times its dense weight."""
    weight, bias = conv.dense_weight().double(), None if conv.bias is None else conv.bias.double()
    return F.conv2d(torch.where(x >= 0, 1.0, -1.0).double(), weight, bias, conv.stride, conv.padding)


def assert_matches_dense(conv, x):
    ref = dense_conv(x, conv)
    tol = 1e-6 * ref.abs().max().item() + 1e-6
    for layout in (torch.contiguous_format, torch.channels_last):
        out = conv(x.contiguous(memory_format=layout))
        assert out.dtype == torch.float32 and out.shape == ref.shape
        assert (out.double() - ref).abs().max().item() <= tol, layout


@pytest.mark.slow
@pytest.mark.parametrize("method, c_in, c_out, k, stride, padding, batch, side", CONV_CASES)
def test_conv_matches_dense(method, c_in, c_out, k, stride, padding, batch, side):
    mask, alpha, beta = code_of(method, c_out, c_in, k, seed=c_in + c_out)
    bias = torch.randn(c_out, generator=torch.Generator().manual_seed(1)) if method == "arbitrary" else None
    conv = PackedConv2d(mask, alpha, beta, bias, stride, padding)
    x = signs((batch, c_in, side, side), seed=k)
    assert_matches_dense(conv, x)
    assert torch.equal(conv(x.contiguous(memory_format=torch.channels_last)), conv(x))  # the other packer
    weight = beta.view(-1, 1, 1, 1) + (alpha - beta).view(-1, 1, 1, 1) * mask
    tol = 1e-6 * conv(x).abs().max().item() + 1e-6
    assert torch.allclose(conv(x), F.conv2d(x, weight, bias, stride, padding), rtol=1e-5, atol=tol)


@pytest.mark.slow
@pytest.mark.parametrize("c_in, k, stride, padding, side", [
    (70, 1, 1, 2, 5),        # every output of the 2-wide border sees only padding
    (65, 3, 2, 4, 6),        # windows wholly in the padding at stride 2
    (64, 1, 2, (3, 1), 7),   # uneven padding: wider than the kernel along the rows only
    (20, 2, 3, 5, 4),        # an even kernel, stride 3
])
def test_padding_wider_than_the_kernel(c_in, k, stride, padding, side):
    """F.conv2d accepts padding wider than the kernel: windows wholly in the padding give the bias."""
    mask, alpha, beta = code_of("arbitrary", 9, c_in, k, seed=c_in)
    bias = torch.randn(9, generator=torch.Generator().manual_seed(2))
    conv = PackedConv2d(mask, alpha, beta, bias, stride, padding)
    x = signs((2, c_in, side, side), seed=c_in)
    assert_matches_dense(conv, x)
    corner = conv(x)[:, :, 0, 0]  # the top-left window lies in the padding in every case above
    assert torch.equal(corner, bias.expand_as(corner))


@pytest.mark.slow
@pytest.mark.parametrize("c_in, k, stride, padding", [(3, 3, 1, 1), (65, 5, 2, 2), (130, 3, 2, 3), (64, 1, 1, 0)])
def test_integer_parts_exact(c_in, k, stride, padding):
    """alpha=1, beta=0 gives conv(x, e) = 2 popcount(b & e) - popcount(e) exactly; alpha=beta=1 boxsum(x)."""
    g = torch.Generator().manual_seed(c_in)
    mask = torch.rand(9, c_in, k, k, generator=g) > 0.3
    x = signs((2, c_in, 8, 8), seed=3)
    ones, zeros = torch.ones(9), torch.zeros(9)
    selected = PackedConv2d(mask, ones, zeros, None, stride, padding)(x)
    assert torch.equal(selected, F.conv2d(x, mask.float(), None, stride, padding))
    box = PackedConv2d(mask, ones, ones, None, stride, padding)(x)
    assert torch.equal(box, F.conv2d(x, torch.ones(9, c_in, k, k), None, stride, padding))


@pytest.mark.slow
def test_state_dict_and_pickle():
    mask, alpha, beta = code_of("dab", 20, 70, 3, seed=5)
    conv = PackedConv2d(mask, alpha, beta, None, 1, 1)
    assert torch.equal(conv.mask(), mask)
    assert torch.equal(conv.dense_weight(), beta.view(-1, 1, 1, 1) + (alpha - beta).view(-1, 1, 1, 1) * mask)
    other = PackedConv2d(torch.zeros_like(mask), alpha, beta, None, 1, 1)
    other.load_state_dict(conv.state_dict())
    assert torch.equal(other.mask(), mask)
    x = signs((1, 70, 6, 6), seed=2)
    assert torch.equal(other(x), conv(x))
    saved = io.BytesIO()
    torch.save(conv, saved)
    saved.seek(0)
    assert torch.equal(torch.load(saved, weights_only=False)(x), conv(x))


@pytest.mark.slow
@pytest.mark.parametrize("c_in, side", [(70, 6), (16, 3), (5, 5)])
def test_zero_input_counts_as_plus_one(c_in, side):
    """sign(0) = +1: an input of exactly 0 (or -0.0) is read as +1, a NaN as -1, in every input dtype."""
    mask, alpha, beta = code_of("arbitrary", 12, c_in, 3, seed=6)
    conv = PackedConv2d(mask, alpha, beta, None, 1, 1)
    x = torch.randint(-1, 2, (2, c_in, side, side)).float()
    x[0, 0, 0, 0], x[1, -1, -1, -1] = 0.0, -0.0
    assert (x == 0).sum() > 0.2 * x.numel()
    assert_matches_dense(conv, x)
    assert torch.equal(conv(x), conv(torch.where(x >= 0, 1.0, -1.0)))
    assert torch.equal(conv(x.to(torch.int8)), conv(x))
    out64 = conv(x.double())
    assert out64.dtype == torch.float64 and torch.equal(out64, conv(x).double())
    nan = x.clone()
    nan[x == 0] = float("nan")
    assert torch.equal(conv(nan), conv(torch.where(x > 0, 1.0, -1.0)))


def test_geometry_errors():
    mask, alpha, beta = code_of("arbitrary", 4, 8, 3, seed=7)
    with pytest.raises(ValueError, match="groups=1"):
        PackedConv2d(mask, alpha, beta, groups=2)
    with pytest.raises(ValueError, match="dilation=1"):
        PackedConv2d(mask, alpha, beta, dilation=2)
    reflect = nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(ValueError, match="zero padding"):
        PackedConv2d.from_conv(reflect, mask, alpha, beta)
    conv = PackedConv2d.from_conv(nn.Conv2d(8, 4, 3, padding="same", bias=False), mask, alpha, beta)
    assert conv.padding == (1, 1)
    with pytest.raises(ValueError, match=r"\[B, 8, H, W\]"):
        conv(torch.ones(1, 7, 5, 5))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        PackedConv2d(mask, alpha, beta)(torch.ones(1, 8, 2, 2))


# -- whole models -----------------------------------------------------------------------------------------

def build(name, method="dab", num_classes=5, activation=None, dyadic=True, bin_range=None, seed=0):
    """A binarized model in eval mode with random BN statistics (so no BN output is exactly 0)."""
    torch.manual_seed(seed)
    info = models.model_info(name)
    model = models.build_model(name, num_classes)
    if activation is not None:
        binarize.binarize_inputs(model, activation)
    binarize.binarize_weights(model, *(bin_range or info.bin_range), method)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        if dyadic:  # two values per filter, multiples of 1/64: the code is the latent itself
            for _, _, module, _ in binarize.binarized_layers(model):
                latent = module.parametrizations.weight.original
                rows = latent.view(latent.shape[0], -1)
                upper = torch.rand(rows.shape, generator=g) < 0.5
                upper[:, 0], upper[:, 1] = True, False
                alpha = torch.randint(1, 33, (rows.shape[0], 1), generator=g) / 64
                beta = -torch.randint(1, 33, (rows.shape[0], 1), generator=g) / 64
                rows.copy_(torch.where(upper, alpha, beta))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.normal_(1, 0.2, generator=g)
                m.bias.normal_(0, 0.5, generator=g)
    return model.eval()


def side_of(name):
    """The input side of the whole-model tests: the model's smallest, at least 32 (at most its default)."""
    info = models.model_info(name)
    return min(info.default_inpsize, max(info.min_inpsize, 32))


def export(model, name, tmp_path, num_classes=5):
    path = os.path.join(tmp_path, f"{name}.safetensors")
    info = models.model_info(name)
    export_model(model, path, dict(model_def=name, num_classes=num_classes, in_channels=info.default_in_channels,
                                   inpsize=side_of(name)))
    return path


def inputs(name, batch=2, seed=0):
    info = models.model_info(name)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, info.default_in_channels, side_of(name), side_of(name), generator=g)


def assert_same_outputs(dense, packed_out):
    assert torch.equal(dense.argmax(1), packed_out.argmax(1))
    torch.testing.assert_close(packed_out, dense, rtol=1e-5, atol=1e-5 * dense.abs().max().item())


def count_sign_zeros(model):
    """A list whose one item counts, as ``model`` runs, the inputs of exactly 0 its sign activations see."""
    zeros = [0]

    def count(module, args):
        zeros[0] += int((args[0] == 0).sum())

    for *_, binarizer in binarize.input_binarizers(model):
        assert binarizer.name == "sign"  # its input is what it takes the sign of
        binarizer.register_forward_pre_hook(count)
    return zeros


def zeros_pass_bn(model):
    """Every other channel of each BN maps 0 to exactly 0 (running mean and bias 0): the zeros of the input, of
    a ReLU or of a zero-padded shortcut reach the signs behind it."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean[::2] = 0
                m.bias[::2] = 0
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name, fallback, packed_count, emitting", [("sketchanetfbin", False, 6, 5),
                                                                    ("resnetfbin18", True, 19, 8)])
def test_load_packed_matches_dense(name, fallback, packed_count, emitting, tmp_path):
    path = export(build(name), name, tmp_path)
    dense, _ = load_export(path)
    model, config, report = load_packed(path, fallback=fallback)
    assert config["model_def"] == name and not model.training
    assert sum(row["packed"] for row in report) == packed_count
    assert sum(isinstance(m, PackedConv2d) for m in model.modules()) == packed_count
    # every sign is folded into a packing; Sketch-A-Net's convs 2-6 hand the next one bits through ReLU,
    # max-pool, BN and sign, as does the first conv of each ResNet block (the second feeds a residual sum)
    if name == "sketchanetfbin":  # conv 1's BN, ReLU and pool, and every later BN, fold into bit operations
        assert not any(isinstance(m, (nn.BatchNorm2d, nn.MaxPool2d)) for m in model.modules())
    assert sum(isinstance(m, PreSign) for m in model.modules()) == 0
    assert sum(isinstance(m, PackedConv2d) and m.emits_bits for m in model.modules()) == emitting
    x = inputs(name)
    with torch.no_grad():
        assert_same_outputs(dense(x), model(x))
    if name == "resnetfbin18":  # the classifier (conv 21, fed by the average pool) is binarized, real input
        assert [(row["index"], row["name"]) for row in report if not row["packed"]] == [(21, "fc")]
        assert "conv 21 'fc' (its input is real-valued" in report_line(report)
        with pytest.raises(PackedError) as err:
            load_packed(path)
        message = str(err.value)
        assert "\n" not in message and "conv 21 'fc'" in message and "--packed auto" in message


@pytest.mark.slow
@pytest.mark.parametrize("name, packed_count", [("sketchanetfbin", 6), ("resnetfbin18", 19), ("resnet20_1w1a", 18)])
def test_exact_zeros_give_the_dense_log_probabilities(name, packed_count, tmp_path):
    """One model of each family with binarized inputs, fed images with zero regions through BNs that keep
    zeros: many signs see an exact 0, and the packed model gives the dense log-probabilities."""
    path = export(zeros_pass_bn(build(name)), name, tmp_path)
    dense, _ = load_export(path)
    zeros = count_sign_zeros(dense)
    model, _, report = load_packed(path, fallback=True)
    assert sum(row["packed"] for row in report) == packed_count
    x = inputs(name)
    x[:, :, : x.shape[2] // 2] = 0  # an empty top half, as a sketch's background
    x[torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) < 0.2] = 0
    with torch.no_grad():
        ref, out = F.log_softmax(dense(x), 1), F.log_softmax(model(x), 1)
    assert zeros[0] > 1000
    assert_same_outputs(ref, out)


def calibrate_bn(model, images):
    """BN running statistics from ``images`` (a train-mode pass, cumulative averages); the model back in eval."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(images)
    return model.eval()


@pytest.mark.slow
def test_digits_val_set_gives_the_dense_log_probabilities(tmp_path):
    """A Sketch-A-Net fbin exported for the digits (1 channel, 10 classes, 225 px) with BNN weights (+-1, so
    that both paths compute every binary conv exactly) and BN statistics from digits train images, every
    other BN channel passing zeros (so that the ReLUs' zeros reach the signs): over the whole digits val set
    the packed model gives the dense log-probabilities."""
    import datasets
    bundle = datasets.build("digits", None, inpsize=225, augment=False)
    name = "sketchanetfbin"
    torch.manual_seed(0)
    model = models.build_model(name, bundle.num_classes, bundle.num_channels)
    binarize.binarize_weights(model, *models.model_info(name).bin_range, "bnn")
    calibrate_bn(model, torch.stack([bundle.train[i][0] for i in range(0, len(bundle.train), 24)]))
    path = str(tmp_path / "digits.safetensors")
    export_model(zeros_pass_bn(model), path, dict(model_def=name, num_classes=bundle.num_classes,
                                                  in_channels=bundle.num_channels, inpsize=225, dataset="digits"))
    dense, _ = load_export(path)
    zeros = count_sign_zeros(dense)
    packed_net, _, report = load_packed(path)
    assert len(report) == 6 and all(row["packed"] for row in report)
    images = torch.stack([bundle.val[i][0] for i in range(len(bundle.val))])
    assert len(images) == 360
    predicted = []
    with torch.no_grad():
        for batch in images.split(60):
            ref = F.log_softmax(dense(batch), 1)
            assert_same_outputs(ref, F.log_softmax(packed_net(batch), 1))
            predicted += ref.argmax(1).tolist()
    assert zeros[0] > 1000 and len(set(predicted)) > 1  # exact zeros seen, and outputs that vary by image


@pytest.mark.slow
def test_realistic_codes_layer_by_layer(tmp_path):
    """DAB's own codes (no dyadic values): each packed conv, fed the dense model's input, matches it."""
    name = "sketchanetfbin"
    path = export(build(name, dyadic=False), name, tmp_path)
    dense, _ = load_export(path)
    tensors, _, layers = read_export(path)
    model, _ = load_export(path)
    report = pack_model(model, layers, tensors=tensors)  # packed convs that write floats: no folding
    seen = {}
    convs = dict(dense.named_modules())
    for row in report:
        convs[row["name"]].register_forward_pre_hook(lambda m, args, key=row["name"]: seen.__setitem__(key, args[0]))
    with torch.no_grad():
        dense(inputs(name))
        for row in report:
            conv, x = convs[row["name"]], seen[row["name"]]
            ref = F.conv2d(x.double(), conv.weight.double(), None, conv.stride, conv.padding)
            out = model.get_submodule(row["name"])(x)
            assert (out.double() - ref).abs().max().item() <= 1e-5 * ref.abs().max().item(), row["name"]


# -- errors and the dense fallback ------------------------------------------------------------------------

def test_bad_exports(tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        load_packed(os.path.join(tmp_path, "missing.safetensors"))
    path = export(build("sketchanetfbin"), "sketchanetfbin", tmp_path)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(ExportError):
        load_packed(path)


@pytest.mark.parametrize("name, activation, reason", [
    ("sketchanetwbin", None, "its input is real-valued"),
    ("sketchanetfbin", "dab", "activation binarizer 'dab' is not a sign"),
])
def test_uncovered_layers(name, activation, reason, tmp_path):
    path = export(build(name, activation=activation), name, tmp_path)
    with pytest.raises(PackedError) as err:
        load_packed(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(path)
    assert "6 binarized layer(s) cannot run packed" in message and reason in message and "--packed auto" in message
    model, _, report = load_packed(path, fallback=True)
    assert [row["index"] for row in report] == [2, 3, 4, 5, 6, 7]
    assert not any(row["packed"] for row in report) and all(reason in row["reason"] for row in report)
    dense, _ = load_export(path)
    x = inputs(name)
    with torch.no_grad():
        assert torch.equal(model(x), dense(x))


@pytest.mark.slow
def test_partly_packable_model(tmp_path):
    """Only conv 4 has the (unpackable) dab activation: the other five run packed."""
    name = "sketchanetfbin"
    model = build(name)
    binarize.set_input_binarizer(model, 4, "dab")
    path = export(model, name, tmp_path)
    packed_net, _, report = load_packed(path, fallback=True)
    assert [row["index"] for row in report if not row["packed"]] == [4]
    dense, _ = load_export(path)
    x = inputs(name)
    with torch.no_grad():
        assert_same_outputs(dense(x), packed_net(x))


@pytest.mark.slow
def test_pack_model_reencodes_without_tensors(tmp_path):
    """Without the export's stored code, pack_model re-encodes each layer's weight through its binarizer."""
    name = "sketchanetfbin"
    path = export(build(name, method="xnor"), name, tmp_path)
    _, _, layers = read_export(path)
    dense, _ = load_export(path)
    model, _ = load_export(path)
    report = pack_model(model, layers)
    assert all(row["packed"] for row in report) and len(report) == 6
    assert sum(isinstance(m, PackedConv2d) for m in model.modules()) == 6
    x = inputs(name)
    with torch.no_grad():
        assert_same_outputs(dense(x), model.eval()(x))


def test_non_cpu_device_is_refused(tmp_path):
    path = export(build("sketchanetfbin"), "sketchanetfbin", tmp_path)
    with pytest.raises(PackedError, match="runs on the CPU.*--packed auto"):
        load_packed(path, device="cuda")


WITHOUT_NUMBA = """
import sys
sys.modules["numba"] = None  # import numba now raises ImportError
import torch
from deploy.packed import PackedConv2d, PackedUnavailable, load_packed
try:
    PackedConv2d(torch.ones(4, 8, 3, 3, dtype=torch.bool), torch.ones(4), -torch.ones(4))
except PackedUnavailable as exc:
    print("conv refused:", exc)
try:
    load_packed(sys.argv[1])
except PackedUnavailable:
    print("load refused")
model, _, report = load_packed(sys.argv[1], fallback=True)
print("fallback:", sum(row["packed"] for row in report), len(report),
      sum(isinstance(m, PackedConv2d) for m in model.modules()), sorted({row["reason"] for row in report}))
"""


@pytest.mark.slow
def test_without_numba(tmp_path):
    """Where numba is missing, a packed conv or load is refused in one line and the fallback runs dense."""
    path = export(build("sketchanetfbin"), "sketchanetfbin", tmp_path)
    done = subprocess.run([sys.executable, "-c", WITHOUT_NUMBA, path], cwd=ROOT, capture_output=True, text=True,
                          timeout=subprocess_timeout(PYTHON_START + 5))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stdout
    assert lines[0].startswith("conv refused: packed inference needs numba: pip install numba")
    assert "--packed auto" in lines[0]
    assert lines[1] == "load refused"
    assert lines[2] == "fallback: 0 6 0 ['packed inference needs numba']"


@pytest.mark.slow
def test_main_evaluates_an_export_packed_like_dense(tmp_path, capsys):
    """``main.py --evaluate --pretrained_file X.safetensors --packed``: the same top-1 as the dense export,
    the loss within float rounding; an uncovered layer is refused unless --packed auto."""
    import main
    from tinydata import split_tree
    data = str(split_tree(tmp_path / "data", ["cat", "dog", "fish"], train_per_class=4, val_per_class=3,
                          subdir="tuberlin"))
    common = ["--dataset", "tuberlin", "--data_dir", data, "--model_def", "nin", "--inpsize", "32", "--binaryWeight",
              "--testbatchsize", "4", "--workers", "0"]
    for name, bins in (("inner", []), ("all", ["--binEnd", "100"])):  # "all" also binarizes the classifier
        argv = common + bins + ["--epochs", "1", "--batch-size", "4", "--logdir", str(tmp_path / "logs"),
                                "--store", str(tmp_path / name), "--name", name]
        assert main.main(argv) == 0
        assert main.main(["--export", str(tmp_path / f"{name}.safetensors"), "--resume",
                          str(tmp_path / name / "last.pth")]) == 0
    capsys.readouterr()

    def val(path, *packed):
        assert main.main(common + ["--evaluate", "--pretrained_file", path, *packed]) == 0
        out = capsys.readouterr().out
        line = next(line for line in out.splitlines() if line.startswith("val: loss"))
        return float(line.split()[2]), float(line.split()[4]), out

    dense_loss, dense_top1, _ = val(str(tmp_path / "inner.safetensors"))
    loss, top1, out = val(str(tmp_path / "inner.safetensors"), "--packed", "on")
    assert top1 == dense_top1 and loss == pytest.approx(dense_loss, abs=1e-3)
    assert "packed: 7 of 7 binarized layers" in out
    assert main.main(common + ["--evaluate", "--pretrained_file", str(tmp_path / "all.safetensors"),
                               "--packed", "on"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "conv9" in err and "--packed auto" in err
    dense_loss, dense_top1, _ = val(str(tmp_path / "all.safetensors"))
    loss, top1, out = val(str(tmp_path / "all.safetensors"), "--packed", "auto")
    assert top1 == dense_top1 and loss == pytest.approx(dense_loss, abs=1e-3)
    assert "packed: 7 of 8 binarized layers" in out and "dense: features.conv9.conv" in out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sketchanetfbin", "resnetfbin18", "resnet20_1w1a"])
def test_negative_and_zero_bn_scales_fold_exactly(name, tmp_path):
    """BNs with negative scales (the folded sign test flips, and a max-pool of it becomes an AND) and zero
    scales (the sign behind is a constant: +1 where the shift is >= 0) in every family: packed = dense."""
    model = build(name)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight[::3] *= -1
                m.weight[1::7] = 0
                m.bias[1::14] = 0  # half the zero-scale channels give exactly 0, whose sign is +1
    path = export(model, name, tmp_path)
    dense, _ = load_export(path)
    packed, _, _ = load_packed(path, fallback=True)
    assert any(isinstance(m, PackedConv2d) and m.emits_bits for m in packed.modules()) or name == "resnet20_1w1a"
    x = inputs(name, batch=3)
    with torch.no_grad():
        assert_same_outputs(F.log_softmax(dense(x), 1), F.log_softmax(packed(x), 1))
