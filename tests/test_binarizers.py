"""Tests of the binarizer objects: exactness in every precision, per-layer choice, Linear layers, the backward
rules (STE, EDE, ApproxSign) against their formulas, SD-BNN's weight shift (WSD) and activation shift (ASD),
and a toy binarizer that plugs in with one class and one registration."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import binarize
import main
import models
from binarize import (ASD, DAB, XNOR, ApproxSign, BinActive, DABActive, Sign, WeightBinarizer, binarize_layer,
                      binarize_weights, dab, ede_schedule, register_weight_binarizer)
from binarize.functions import dab_with_mask
from tinydata import split_tree
from deploy.export import export_model, load_export
from deploy.summary import summarize

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")


def centred_clamped(shape, seed=0):
    """Latent weights as they are at rest: centred over input channels and clamped."""
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.5
    return (w - w.mean(dim=1, keepdim=True)).clamp(-1, 1)


# ---------------------------------------------------------------- exact in every precision

def test_dab_under_cpu_autocast_equals_the_fp32_solve():
    w = centred_clamped((64, 32, 3, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = dab(w)
    outside = dab(w)
    assert all(torch.equal(a, b) for a, b in zip(inside, outside))


def test_a_binarized_conv_under_cpu_autocast_uses_the_fp32_code():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3)
    binarizer = binarize_layer(conv, "dab")
    code = conv.weight.detach().clone()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = conv.weight.detach().clone()
        k_inside = binarizer.last.k.clone()
    assert inside.dtype == torch.float32 and torch.equal(inside, code)
    assert torch.equal(k_inside, dab(conv.parametrizations.weight.original.detach())[3])


@cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dab_under_cuda_autocast_equals_the_fp32_solve(dtype):
    w = centred_clamped((256, 128, 3, 3)).cuda()
    with torch.autocast("cuda", dtype=dtype):
        inside = dab(w)
    outside = dab(w)
    assert all(torch.equal(a, b) for a, b in zip(inside, outside))
    conv = nn.Conv2d(128, 256, 3).cuda()
    binarize_layer(conv, "dab")
    code = conv.weight.detach().clone()
    with torch.autocast("cuda", dtype=dtype):
        assert torch.equal(conv.weight.detach(), code)


@pytest.mark.parametrize("shape", [(2, 64, 35, 35), (2, 64, 56, 56)])
def test_dab_activation_counts_in_fp32_on_large_fp16_inputs(shape):
    """In fp16 a count above 65504 overflowed: beta became 0 at 35x35 and NaN at 56x56."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).half()
    half = DABActive()(x)
    ref = DABActive()(x.float())  # the same values, counted in fp32 from the start
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert torch.equal(half, ref.half())
    assert (half.float().reshape(2, -1).min(dim=1).values < -0.1).all()  # beta is not 0


# ---------------------------------------------------------------- per-layer choice, Linear layers

def test_a_weight_binarizer_per_conv():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1))
    assert binarize_weights(model, layers={1: "xnor", 2: "dab", 3: "sign"}) == [1, 2, 3]
    kinds = [type(b) for *_, b in binarize.binarized_layers(model)]
    assert kinds == [XNOR, DAB, Sign]
    x = torch.randn(2, 3, 9, 9)
    latents = [m.parametrizations.weight.original.detach() for m in model]
    expected = x
    for conv, latent, solve in zip(model, latents, (binarize.xnor, dab, binarize.bnn)):
        expected = F.conv2d(expected, solve(latent)[0], conv.bias)
    assert torch.allclose(model(x), expected, atol=1e-6)
    assert not Sign.projected  # sign weights keep their latent as it is (SD-BNN), the others project
    with pytest.raises(ValueError, match="unknown weight binarizer 'nope'"):
        binarize_weights(nn.Sequential(nn.Conv2d(3, 3, 1)), layers={1: "nope"})


def test_an_activation_binarizer_per_conv():
    model = models.build_model("sketchanetfbin", 5)
    binarize.set_input_binarizer(model, 3, "dab")
    binarize.set_input_binarizer(model, 5, "asd", reduction=4)
    kinds = {index: type(b) for index, *_, b in binarize.input_binarizers(model)}
    assert kinds == {2: BinActive, 3: DABActive, 4: BinActive, 5: ASD, 6: BinActive, 7: BinActive}
    assert model(torch.randn(2, 1, 225, 225)).shape == (2, 5)
    with pytest.raises(ValueError, match="conv 8 has no binarized input"):
        binarize.set_input_binarizer(model, 8, "sign")


def test_linear_layers_binarize_through_the_same_parametrization(tmp_path):
    torch.manual_seed(3)
    model = models.build_model("resnet20_fp", 4, 1)
    binarize_weights(model, layers=models.model_info("resnet20_1w1a").bin_layers, method="dab")
    fc = binarize_layer(model.fc, "dab")
    rows = model.fc.weight.detach()
    assert all(len(torch.unique(r)) <= 2 for r in rows)
    assert [(i, n) for i, n, *_ in binarize.binarized_layers(model)][-1] == (None, "fc")
    opt = torch.optim.SGD(model.parameters(), lr=100.0)
    x = torch.randn(2, 1, 32, 32)
    model(x).sum().backward()
    opt.step()
    assert model.fc.parametrizations.weight.original.abs().max() <= 1  # projected after the step
    assert fc.last.k.shape == (4,)
    model.eval()
    path = str(tmp_path / "m.safetensors")
    export_model(model, path, dict(model_def="resnet20_fp", num_classes=4, in_channels=1))
    rebuilt, _ = load_export(path)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
    linear_row = next(r for r in summarize(model, 32, 1)["rows"] if r["name"] == "fc")
    assert linear_row["weights"] == "dab" and linear_row["bits"] == 4 * 64 and linear_row["scales"] == 8


# ---------------------------------------------------------------- backward rules

def test_ede_schedule_matches_sdbnns_checks():
    t, k = ede_schedule(0, 500, 1e-3, 10)
    assert t == pytest.approx(1e-3) and k == pytest.approx(1000)
    first_k1 = next(e for e in range(500) if ede_schedule(e, 500, 1e-3, 10)[1] == 1)
    assert first_k1 == 375 and ede_schedule(374, 500, 1e-3, 10)[1] > 1
    assert ede_schedule(499, 500, 1e-3, 10)[0] == pytest.approx(9.82, abs=0.005)
    assert next(e for e in range(400) if ede_schedule(e, 400, 0.1, 10)[1] == 1) == 200
    assert ede_schedule(399, 400, 0.1, 10)[0] == pytest.approx(9.89, abs=0.005)
    assert [round(ede_schedule(e, 3, 1e-3, 10)[0], 4) for e in range(3)] == [0.001, 0.0215, 0.4642]


def expected_scale(method, w, c_in, window):
    """dab.md's rules with the clipped window [|W| < 1] replaced by ``window``, written out independently."""
    flat = w.reshape(w.shape[0], -1)
    win = window.reshape(flat.shape)
    n = flat.shape[1]
    c = 1 - 1 / c_in if (c_in > 1 and method != "sign") else 1.0
    if method in ("bnn", "sign"):
        return win.reshape(w.shape)
    if method == "xnor":
        return (c * (n * flat.abs().mean(1, keepdim=True) * win + 1)).reshape(w.shape)
    _, alpha, beta, k, e = dab_with_mask(w)
    e = e.reshape(flat.shape).double()
    kk = k.double()[:, None]
    scale = e * (1 / kk + alpha[:, None].abs() * win) + (1 - e) * (1 / (n - kk) + beta[:, None].abs() * win)
    return (c * scale).reshape(w.shape)


@pytest.mark.parametrize("method", ["dab", "xnor", "bnn", "sign"])
@pytest.mark.parametrize("backward", ["ste", "ede"])
def test_weight_gradient_follows_the_rule_with_each_backward(method, backward):
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 6, 3, bias=False).double()
    with torch.no_grad():
        conv.weight.mul_(3)
    binarizer = binarize_layer(conv, method, backward=backward)
    t, k = 2.5, 1.3
    binarize.set_ede(conv, t, k)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    out = conv(x)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    latent = conv.parametrizations.weight.original.detach()
    w_hat = conv.weight.detach().requires_grad_(True)
    F.conv2d(x, w_hat).backward(upstream)
    window = (latent.abs() < 1).double() if backward == "ste" else k * t * (1 - torch.tanh(t * latent) ** 2)
    expected = w_hat.grad * expected_scale(method, latent, 4, window)
    assert torch.allclose(conv.parametrizations.weight.original.grad, expected, rtol=1e-10, atol=1e-12)
    assert binarizer.surrogate.name == backward


@pytest.mark.parametrize("cls,window", [
    (BinActive, lambda x: (x.abs() <= 1).float()),
    (ApproxSign, lambda x: (2 - 2 * x.abs()).clamp(min=0)),
])
def test_activation_backward_rules(cls, window):
    x = torch.tensor([-1.5, -1.0, -0.75, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0], requires_grad=True)
    y = cls()(x)
    assert torch.equal(y, torch.sign(x.detach()))
    y.backward(torch.full_like(x, 3.0))
    assert torch.allclose(x.grad, 3.0 * window(x.detach()))


def test_ede_on_a_sign_activation_follows_the_formula():
    act = BinActive(backward="ede")
    binarize.set_ede(nn.Sequential(act), 4.0, 1.0)
    x = torch.linspace(-2, 2, 17, requires_grad=True)
    act(x).sum().backward()
    reference = 4.0 * (1 - torch.tanh(4.0 * x.detach().double()) ** 2)  # fp64: no cancellation near |tanh| = 1
    assert torch.allclose(x.grad.double(), reference, rtol=1e-5, atol=1e-6)  # fp32 tanh: 4 ulp of 1
    with pytest.raises(ValueError, match="approxsign"):
        ApproxSign(backward="ede")


# ---------------------------------------------------------------- SD-BNN's shifts

def test_weight_self_distribution_shift_and_its_gradient():
    torch.manual_seed(5)
    conv = nn.Conv2d(4, 3, 3, bias=False).double()
    binarizer = binarize_layer(conv, "sign", shift="wsd")
    p = binarizer.shift.p
    assert p.shape == (3,) and not p.any()  # init 0: the shift starts at 0.005 m_c
    with torch.no_grad():
        p.copy_(torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64))
    latent = conv.parametrizations.weight.original
    m = latent.detach().mean(dim=(1, 2, 3), keepdim=True)
    shifted = latent.detach() + torch.sigmoid(p.detach()).view(-1, 1, 1, 1) * 0.01 * m
    w_hat = conv.weight
    assert torch.equal(w_hat.detach(), torch.where(shifted >= 0, 1.0, -1.0).double())
    upstream = torch.randn_like(w_hat)
    (w_hat * upstream).sum().backward()
    g = upstream * (shifted.abs() < 1)  # the STE of sign, at the shifted weight
    assert torch.allclose(latent.grad, g)  # m is detached: the shift passes the gradient to w unchanged
    s = torch.sigmoid(p.detach())
    assert torch.allclose(p.grad, (g * (s * (1 - s)).view(-1, 1, 1, 1) * 0.01 * m).sum(dim=(1, 2, 3)))


def test_activation_self_distribution_shape_and_threshold():
    torch.manual_seed(6)
    asd = ASD(32, reduction=16)
    assert asd.fc1.weight.shape == (2, 32) and asd.fc2.weight.shape == (32, 2)
    assert asd.fc1.bias is None and asd.fc2.bias is None
    x = torch.randn(3, 32, 5, 5)
    s = asd.shift(x)
    assert s.shape == (3, 32, 1, 1) and ((s > 0) & (s < 1)).all()
    y = asd(x)
    assert torch.equal(y, torch.sign(x + s))
    moved = (x < 0) & (x > -s)  # the threshold sits at -s: these negative inputs now give +1
    assert moved.any() and (y[moved] == 1).all()
    assert ASD(8, reduction=16).fc1.weight.shape == (1, 8)  # at least one hidden unit


def test_sdbnn_preset_and_parts_compose(tmp_path):
    import opts
    args = opts.parse(["--model_def", "resnet20_1w1a", "--binarizer", "sdbnn"])
    assert (args.binarizer, args.weightShift, args.binActivation, args.backward) == ("sign", "wsd", "asd", "ede")
    args = opts.parse(["--model_def", "resnet20_1w1a", "--binarizer", "dab", "--binActivation", "asd",
                       "--backward", "ede"])
    from launch import build
    model = build.network(args, 10, 1)
    weights = [b for *_, b in binarize.binarized_layers(model)]
    acts = [b for *_, b in binarize.input_binarizers(model)]
    assert len(weights) == 18 and all(isinstance(b, DAB) and b.surrogate.name == "ede" for b in weights)
    assert len(acts) == 18 and all(isinstance(b, ASD) and b.surrogate.name == "ede" for b in acts)
    assert acts[0].reduction == 16


# ---------------------------------------------------------------- a toy binarizer plugs in

@pytest.fixture
def toy_binarizer():
    """A new weight binarizer: one class, one registration."""
    @register_weight_binarizer
    class ZeroSplit(WeightBinarizer):
        """Split at 0: the non-negative weights take their mean, the negative ones theirs."""

        name = "toy-zerosplit"
        scales = ("alpha", "beta")

        def solve(self, rows):
            upper = rows >= 0
            k = upper.sum(dim=1)
            alpha = (rows * upper).sum(dim=1) / k.clamp_min(1)
            beta = (rows * ~upper).sum(dim=1) / (rows.shape[1] - k).clamp_min(1)
            return torch.where(upper, alpha[:, None], beta[:, None]), alpha, beta, k

        def grad_scale(self, rows, alpha, beta, k, saved, window):
            return window

        @classmethod
        def code_values(cls, rows):
            return rows.amax(dim=1), rows.amin(dim=1)

    yield ZeroSplit
    del binarize.WEIGHT_BINARIZERS[ZeroSplit.name]


def test_a_toy_binarizer_trains_exports_and_summarises(toy_binarizer, tmp_path, capsys):
    data = str(split_tree(tmp_path / "data", ["cat", "dog"], train_per_class=3, val_per_class=2, subdir="tuberlin"))
    argv = ["--dataset", "tuberlin", "--data_dir", data, "--model_def", "nin", "--inpsize", "32", "--binaryWeight",
            "--binarizer", "toy-zerosplit", "--epochs", "1", "--batch-size", "3", "--workers", "0",
            "--logdir", str(tmp_path / "logs"), "--store", str(tmp_path / "ckpt"), "--name", "toy"]
    assert main.main(argv) == 0
    out = str(tmp_path / "toy.safetensors")
    assert main.main(["--export", out, "--resume", str(tmp_path / "ckpt" / "last.pth")]) == 0
    rebuilt, config = load_export(out)
    assert config["binarizer"] == "toy-zerosplit"
    assert main.main(["--summary", "--model_def", "nin", "--binaryWeight", "--binarizer", "toy-zerosplit"]) == 0
    printed = capsys.readouterr().out
    assert "toy-zerosplit weights" in printed and " toy-zerosplit " in printed
    assert main.main(argv[:-6] + ["--evaluate", "--pretrained_file", out, "--logdir", str(tmp_path / "l2")]) == 0
    assert math.isfinite(float(capsys.readouterr().out.split("top1")[1].split()[0]))
