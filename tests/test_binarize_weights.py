"""Tests of binarize/weights.py: each weight binarizer's forward and gradient rule, the projection of the latent
weights, SD-BNN's weight shift, the stored form of a code, and a toy binarizer that plugs in with one class."""

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import binarize
import main
from binarize import (BNN, DAB, WEIGHT_BINARIZERS, XNOR, Sign, WeightBinarizer, binarize_layer, bnn, dab,
                      make_weight_binarizer, register_weight_binarizer, xnor)
from binarize.functions import dab_with_mask
from deploy.export import load_export
from tinydata import split_tree

device_param = pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA not available"))])


def expected_scale(method, w, c_in, window):
    """The gradient factors of the DAB paper's rules (and the original code's XNOR/BNN rules) with the
    clipped window [|W| < 1] replaced by ``window``, written out independently of the engine."""
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
@pytest.mark.parametrize("c_in", [1, 4])
@device_param
def test_weight_gradient_follows_the_rule_with_each_backward(method, backward, c_in, device):
    torch.manual_seed(4)
    conv = nn.Conv2d(c_in, 6, 3, bias=False).double().to(device)
    with torch.no_grad():
        conv.weight.mul_(3)           # some entries beyond [-1, 1] before the projection
    binarizer = binarize_layer(conv, method, backward=backward)
    t, k = 2.5, 1.3
    binarize.set_ede(conv, t, k)
    x = torch.randn(2, c_in, 7, 7, dtype=torch.float64, device=device)
    out = conv(x)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    latent = conv.parametrizations.weight.original.detach().cpu()
    # the gradient with respect to the binarized weight, computed by a plain conv
    w_hat = conv.weight.detach().requires_grad_(True)
    F.conv2d(x, w_hat).backward(upstream)
    window = (latent.abs() < 1).double() if backward == "ste" else k * t * (1 - torch.tanh(t * latent) ** 2)
    expected = w_hat.grad.cpu() * expected_scale(method, latent, c_in, window)
    assert torch.allclose(conv.parametrizations.weight.original.grad.cpu(), expected, rtol=1e-10, atol=1e-12)
    assert binarizer.surrogate.name == backward


@pytest.mark.parametrize("method,solve", [("dab", dab), ("xnor", xnor), ("bnn", bnn), ("sign", bnn)])
def test_binarized_conv_equals_plain_conv_with_binarized_weights(method, solve):
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    binarizer = binarize_layer(conv, method)
    x = torch.randn(2, 3, 9, 9)
    for mode in ("train", "eval"):
        getattr(conv, mode)()
        out = conv(x)
        latent = conv.parametrizations.weight.original.detach()
        w_hat = solve(latent)[0]
        assert all(len(torch.unique(row)) <= 2 for row in w_hat.reshape(8, -1))
        assert torch.allclose(out, F.conv2d(x, w_hat, conv.bias, padding=1), atol=1e-6)
        assert torch.equal(binarizer.last.k, solve(latent)[3]) and binarizer.last.n == 27


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


def test_forward_never_changes_the_latent_and_every_optimizer_step_projects_it():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    binarize_layer(model[0], "dab")
    binarize_layer(model[1], "xnor")
    x = torch.randn(2, 3, 9, 9)
    latent = model[1].parametrizations.weight.original
    at_rest = latent.detach().clone()
    model(x)
    model.eval()(x)
    assert torch.equal(latent, at_rest)              # forwards, in training or evaluation, leave it alone
    opt = torch.optim.SGD(model.parameters(), lr=500.0)
    model.train()(x).square().mean().backward()
    raw = at_rest - 500.0 * latent.grad               # the plain SGD update: outside [-1, 1] and uncentred
    assert raw.abs().max() > 1
    opt.step()
    assert torch.allclose(latent.detach(), (raw - raw.mean(dim=1, keepdim=True)).clamp(-1, 1), atol=1e-6)
    # a deep copy registers its own latents on its first forward, and its steps project them too
    copied = copy.deepcopy(model)
    opt = torch.optim.SGD(copied.parameters(), lr=5.0)
    copied(x).square().mean().backward()
    opt.step()
    assert copied[1].parametrizations.weight.original.abs().max() <= 1


def test_sign_weights_are_never_projected():
    torch.manual_seed(9)
    conv = nn.Conv2d(4, 3, 3, bias=False)
    with torch.no_grad():
        conv.weight.mul_(10).add_(0.5)
    before = conv.weight.detach().clone()
    binarize_layer(conv, "sign")
    latent = conv.parametrizations.weight.original
    assert torch.equal(latent.detach(), before)      # neither centred nor clamped when attached
    opt = torch.optim.SGD([latent], lr=100.0)
    conv(torch.randn(2, 4, 6, 6)).sum().backward()
    raw = latent.detach() - 100.0 * latent.grad
    opt.step()
    assert torch.allclose(latent.detach(), raw) and raw.abs().max() > 1
    assert not Sign.projected and DAB.projected and XNOR.projected and BNN.projected


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


# ---------------------------------------------------------------- the stored form

@pytest.mark.parametrize("method,solve", [("dab", dab), ("xnor", xnor), ("bnn", bnn), ("sign", bnn)])
def test_encode_then_decode_gives_the_code_back(method, solve):
    cls = WEIGHT_BINARIZERS[method]
    w = torch.randn(6, 5, 3, 3, generator=torch.Generator().manual_seed(3))
    w_hat, alpha, _, _ = solve(w)
    mask, stored = cls.encode(w_hat)
    assert mask.shape == w.shape and mask.dtype == torch.bool and set(stored) == set(cls.scales)
    assert torch.equal(cls.decode(mask, stored, torch.float32), w_hat)
    if "alpha" in stored:
        assert torch.equal(stored["alpha"], alpha)
    with pytest.raises(ValueError, match=f"two-value {method} code"):
        cls.encode(w)                                 # real weights are not a code


def test_unknown_and_duplicate_weight_binarizers_are_refused():
    with pytest.raises(ValueError, match="unknown weight binarizer 'ternary'; choose from bnn, dab"):
        make_weight_binarizer("ternary", (4, 3, 3, 3))
    with pytest.raises(ValueError, match="unknown weight shift"):
        make_weight_binarizer("dab", (4, 3, 3, 3), shift="nope")
    with pytest.raises(ValueError, match="shape"):
        DAB((4,))

    class Another(WeightBinarizer):
        name = "dab"
    with pytest.raises(ValueError, match="registered twice"):
        register_weight_binarizer(Another)
    assert WEIGHT_BINARIZERS["dab"] is DAB


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


@pytest.mark.slow
def test_a_toy_binarizer_trains_exports_and_summarises(toy_binarizer, tmp_path, capsys):
    data = str(split_tree(tmp_path / "data", ["cat", "dog"], train_per_class=3, val_per_class=2, subdir="tuberlin"))
    argv = ["--dataset", "tuberlin", "--data_dir", data, "--model_def", "nin", "--inpsize", "32", "--binaryWeight",
            "--binarizer", "toy-zerosplit", "--epochs", "1", "--batch-size", "3", "--workers", "0",
            "--logdir", str(tmp_path / "logs"), "--store", str(tmp_path / "ckpt"), "--name", "toy"]
    assert main.main(argv) == 0
    out = str(tmp_path / "toy.safetensors")
    assert main.main(["--export", out, "--resume", str(tmp_path / "ckpt" / "last.pth")]) == 0
    _, config = load_export(out)
    assert config["binarizer"] == "toy-zerosplit"
    assert main.main(["--summary", "--model_def", "nin", "--binaryWeight", "--binarizer", "toy-zerosplit"]) == 0
    printed = capsys.readouterr().out
    assert "toy-zerosplit weights" in printed and " toy-zerosplit " in printed
    assert main.main(argv[:-6] + ["--evaluate", "--pretrained_file", out, "--logdir", str(tmp_path / "l2")]) == 0
    assert math.isfinite(float(capsys.readouterr().out.split("top1")[1].split()[0]))
