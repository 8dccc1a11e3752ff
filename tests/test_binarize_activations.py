"""Tests of binarize/activations.py: every registered activation binarizer's forward (sign(0) = +1 included),
its backward rule, SD-BNN's activation shift, the activation DAB code, and the registry."""

import pytest
import torch
from torch import nn

import binarize
from binarize import (ACTIVATIONS, ASD, ApproxSign, BinActive, DABActive, activation_class, binary_sign,
                      make_activation)

device_param = pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA not available"))])


def sign_input():
    """[2, 4, 3, 3] with exact zeros (+0.0 and -0.0) among positive and negative values."""
    x = torch.tensor([-1.5, -0.25, 0.0, -0.0, 0.5, 2.0]).repeat(12)[:72].reshape(2, 4, 3, 3)
    return x, x == 0


def asd_input():
    """ASD with its branch's output weights at zero shifts every input by sigmoid(0) = 0.5 exactly, so the
    entries equal to -0.5 reach the sign as exact zeros."""
    x, zeros = sign_input()
    return torch.where(zeros, torch.tensor(-0.5), x), zeros


def dab_input():
    """Channels (-1, 0, 1, 0) at every position: the channel mean is exactly 0, so the entries of channels
    1 and 3 are exact zeros after centring."""
    x = torch.tensor([-1.0, 0.0, 1.0, 0.0]).reshape(1, 4, 1, 1).expand(2, 4, 3, 3).clone()
    return x, x == 0


ZERO_CASES = {"sign": sign_input, "approxsign": sign_input, "asd": asd_input, "dab": dab_input}


def build(name, channels):
    binarizer = make_activation(name, channels)
    if isinstance(binarizer, ASD):
        nn.init.zeros_(binarizer.fc2.weight)
    return binarizer


def test_every_registered_activation_binarizer_has_a_zero_case():
    assert set(ZERO_CASES) == set(ACTIVATIONS) == set(binarize.activation_methods())


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["fp32", "fp64", "bf16"])
def test_an_exact_zero_at_the_threshold_gives_the_upper_value(name, dtype):
    """sign(0) = +1 in every activation binarizer, as for weights: a zero where the sign is taken gives
    the output of a positive input, +1 (the upper mean for the activation DAB), never 0."""
    x, zeros = ZERO_CASES[name]()
    binarizer = build(name, x.shape[1]).to(dtype)
    y = binarizer(x.to(dtype)).detach()
    assert y.dtype == dtype and zeros.any() and (~zeros).any()
    upper = y[zeros]
    assert (upper > 0).all(), f"{name}: a zero input gave {upper.unique().tolist()}"
    assert len(torch.unique(y.reshape(2, -1)[0])) == 2            # still two values per sample
    if ACTIVATIONS[name].packable:
        assert (upper == 1).all() and set(y.unique().tolist()) == {-1.0, 1.0}
    else:
        positive = y[x.to(dtype) > 0]
        assert torch.equal(upper.unique(), positive.unique())     # zeros join the positive entries' group


@device_param
def test_sign_activation_forward_and_straight_through_gradient(device):
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], device=device, requires_grad=True)
    y = BinActive()(x)
    assert y.tolist() == [-1.0, -1.0, -1.0, 1.0, 1.0, 1.0, 1.0]
    y.backward(torch.full_like(x, 2.0))
    assert x.grad.tolist() == [0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0]


@pytest.mark.parametrize("cls,window", [
    (BinActive, lambda x: (x.abs() <= 1).float()),
    (ApproxSign, lambda x: (2 - 2 * x.abs()).clamp(min=0)),
])
def test_activation_backward_rules(cls, window):
    x = torch.tensor([-1.5, -1.0, -0.75, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0], requires_grad=True)
    y = cls()(x)
    assert torch.equal(y, binary_sign(x.detach()))
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


def test_activation_self_distribution_shape_and_threshold():
    torch.manual_seed(6)
    asd = ASD(32, reduction=16)
    assert asd.fc1.weight.shape == (2, 32) and asd.fc2.weight.shape == (32, 2)
    assert asd.fc1.bias is None and asd.fc2.bias is None
    x = torch.randn(3, 32, 5, 5)
    s = asd.shift(x)
    assert s.shape == (3, 32, 1, 1) and ((s > 0) & (s < 1)).all()
    y = asd(x)
    assert torch.equal(y, binary_sign(x + s))
    moved = (x < 0) & (x > -s)  # the threshold sits at -s: these negative inputs now give +1
    assert moved.any() and (y[moved] == 1).all()
    assert ASD(8, reduction=16).fc1.weight.shape == (1, 8)  # at least one hidden unit
    assert ASD(8, init_std=0.0).fc1.weight.abs().sum() == 0
    with pytest.raises(ValueError, match="needs the number of input channels"):
        ASD()


@pytest.mark.parametrize("backward,window", [
    ("approxsign", lambda y: (2 - 2 * y.abs()).clamp(min=0)),   # SD-BNN's ImageNet Bi-Real recipe
    ("ste", lambda y: (y.abs() <= 1).to(y.dtype)),
])
def test_asd_takes_its_backward_rule_at_the_shifted_input(backward, window):
    # The gradient through sign(x + s(x)) is window(x + s) times the incoming gradient, carried back through
    # the shift x + s(x) (whose branch depends on x too): autograd of a function whose derivative is that
    # window at y = x + s(x) gives the reference.
    torch.manual_seed(11)
    asd = ASD(8, reduction=2, backward=backward).double()
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 8, 3, 3, dtype=torch.float64)
    asd(x).backward(g)
    got_x, got_fc = x.grad.clone(), asd.fc1.weight.grad.clone()
    x.grad, asd.fc1.weight.grad, asd.fc2.weight.grad = None, None, None
    y = asd.pre_sign(x)
    w = window(y.detach())
    (g * w * y).sum().backward()  # d/dy of (g * w * y) is g * w, w held fixed
    assert torch.allclose(got_x, x.grad) and torch.allclose(got_fc, asd.fc1.weight.grad)
    assert asd.surrogate.name == backward and got_fc.abs().sum() > 0


def test_dab_activation_is_a_per_sample_two_value_code():
    torch.manual_seed(8)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    y = DABActive()(x)
    centred = (x - x.mean(1, keepdim=True)).detach()
    for i in range(3):
        upper = centred[i] >= 0
        assert torch.allclose(y[i][upper], centred[i][upper].mean().expand(int(upper.sum())))
        assert torch.allclose(y[i][~upper], centred[i][~upper].mean().expand(int((~upper).sum())))
    y.sum().backward()
    assert torch.equal(x.grad, (x.detach().abs() <= 1).float())
    one_channel = torch.randn(2, 1, 3, 3)
    assert torch.equal(DABActive()(one_channel), torch.zeros_like(one_channel))  # everything centres to 0


@pytest.mark.parametrize("shape", [(2, 64, 35, 35), (2, 64, 56, 56)])
def test_dab_activation_counts_in_fp32_on_large_fp16_inputs(shape):
    """In fp16 a count above 65504 overflowed: beta became 0 at 35x35 and NaN at 56x56."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1)).half()
    half = DABActive()(x)
    ref = DABActive()(x.float())  # the same values, counted in fp32 from the start
    assert half.dtype == torch.float16 and torch.isfinite(half).all()
    assert torch.equal(half, ref.half())
    assert (half.float().reshape(2, -1).min(dim=1).values < -0.1).all()  # beta is not 0


def test_activation_lookup_and_keyword_filtering():
    assert activation_class("asd") is ASD and activation_class(DABActive) is DABActive
    with pytest.raises(ValueError, match="unknown activation binarizer 'relu'; choose from approxsign, asd, dab"):
        activation_class("relu")
    asd = make_activation("asd", 16, reduction=4, init_std=0.01, unused=1)
    assert asd.fc1.weight.shape == (4, 16) and asd.settings() == {"reduction": 4}
    sign = make_activation("sign", 16, reduction=4, backward="ede")  # keywords it does not take are dropped
    assert type(sign) is BinActive and sign.surrogate.name == "ede" and sign.settings() == {}
