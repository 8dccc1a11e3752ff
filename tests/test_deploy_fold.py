"""Tests of deploy.fold: the Predicate that folds BN, ReLU, Hardtanh and one max-pool in front of a sign into
a per-channel threshold test, checked against the layers applied forward in exact rational arithmetic; the
dataflow trace and find_folds on small models (what folds, what does not: a tensor with two readers, a
module called twice); and fold_model, whose folded model must give exactly the outputs of the model before
folding. The models use dyadic weights (few binary digits) so that every float32 operation of the dense
path is exact, ties at a threshold included, and any difference is a folding bug.
"""

import copy
from fractions import Fraction

import numpy as np
import pytest
import torch
from torch import nn

import binarize
from deploy.fold import AffineFold, Chain, Dataflow, Predicate, find_folds

# -- Predicate against brute force --------------------------------------------------------------------------
CHANNELS, WINDOW, SAMPLES = 16, 3, 24


def random_layers(rng):
    """A random chain of per-channel layers, first to last (the sign follows the last): ("affine", scale,
    shift) with positive, negative and zero scales, ("clamp", low, high), and at most one ("maxpool",)."""
    layers = []
    for _ in range(rng.integers(1, 6)):
        kind = rng.choice(["affine", "affine", "relu", "hardtanh"])
        if kind == "affine":
            scale = rng.normal(size=CHANNELS) * rng.choice([0.5, 2.0])
            scale[rng.random(CHANNELS) < 0.2] = 0.0
            scale[rng.random(CHANNELS) < 0.2] = rng.choice([-2.0, -0.5, 1.0, 4.0])
            shift = rng.normal(size=CHANNELS)
            shift[rng.random(CHANNELS) < 0.3] = 0.0
            layers.append(("affine", scale, shift))
        elif kind == "relu":
            layers.append(("clamp", 0.0, np.inf))
        else:
            low = float(np.float32(rng.uniform(-2, 0))) if rng.random() < 0.5 else -1.0
            layers.append(("clamp", low, float(np.float32(rng.uniform(0, 2))) if rng.random() < 0.5 else 1.0))
    if rng.random() < 0.7:
        layers.insert(rng.integers(0, len(layers) + 1), ("maxpool",))
    return layers


def exact(values):
    """float64 values as exact fractions (object array)."""
    return np.vectorize(Fraction, otypes=[object])(values)


def forward_bits(layers, v):
    """The sign bits (z >= 0) of the layers applied to v [S, C, window] float32, in exact arithmetic; a
    max-pool takes the max over the window, and without one the window must be 1."""
    u = exact(v.astype(np.float64))
    for layer in layers:
        if layer[0] == "affine":
            u = u * exact(layer[1])[None, :, None] + exact(layer[2])[None, :, None]
        elif layer[0] == "clamp":
            u = np.maximum(u, Fraction(layer[1]))
            if np.isfinite(layer[2]):
                u = np.minimum(u, Fraction(layer[2]))
        else:
            u = u.max(axis=2, keepdims=True)
    return (u >= 0)[:, :, 0].astype(bool)


def predicate_of(layers):
    """The Predicate walked back from the sign through ``layers``."""
    predicate = Predicate(CHANNELS)
    for layer in reversed(layers):
        if layer[0] == "affine":
            predicate.through_affine(layer[1], layer[2])
        elif layer[0] == "clamp":
            predicate.through_clamp(layer[1], layer[2])
        else:
            predicate.through_maxpool()
    return predicate


def kernel_bits(predicate, v):
    """What the kernels compute from the kernel form: (v >= threshold) xor invert per pixel, an OR over the
    window, then the flip where post_invert (no flip without a pool)."""
    threshold, invert = predicate.kernel_form()
    assert threshold.dtype == np.float32
    pixel = (v >= threshold[None, :, None]) ^ invert[None, :, None]
    pooled = pixel.any(axis=2)
    return pooled ^ predicate.post_invert[None] if predicate.post_invert is not None else pooled


def probe_values(rng, predicate, layers, window):
    """float32 values [S, C, window]: random ones, the kernel thresholds and their float32 neighbours, signed
    zeros and the clamp bounds."""
    threshold, _ = predicate.kernel_form()
    shape = (SAMPLES, CHANNELS, window)
    level = np.broadcast_to(np.where(np.isfinite(threshold), threshold, 0)[None, :, None], shape)
    bounds = [np.float32(b) for layer in layers if layer[0] == "clamp" for b in layer[1:] if np.isfinite(b)]
    choices = [(rng.normal(size=shape) * 3).astype(np.float32), level, np.nextafter(level, np.float32(-np.inf)),
               np.nextafter(level, np.float32(np.inf)), np.zeros(shape, np.float32),
               np.full(shape, -0.0, np.float32)] + [np.full(shape, b, np.float32) for b in bounds]
    weights = np.array([4, 3, 2, 2, 1, 1] + [1] * len(bounds), float)
    return np.choose(rng.choice(len(choices), size=shape, p=weights / weights.sum()), choices)


@pytest.mark.parametrize("seed", range(40))
def test_predicate_matches_the_layers_applied_forward(seed):
    rng = np.random.default_rng(seed)
    layers = random_layers(rng)
    predicate = predicate_of(layers)
    window = WINDOW if any(layer[0] == "maxpool" for layer in layers) else 1
    v = probe_values(rng, predicate, layers, window)
    assert np.array_equal(kernel_bits(predicate, v), forward_bits(layers, v)), layers


def test_predicate_of_single_layers():
    """Hand-checked cases: a negative scale flips the test, a zero scale makes it the shift's sign, a ReLU
    makes z >= 0 always true, a pool in front of a negative scale becomes NOT(OR of >)."""
    predicate = Predicate(4).through_affine([2.0, -2.0, 0.0, 0.0], [-1.0, 1.0, 0.0, -1.0])
    threshold, invert = predicate.kernel_form()
    assert threshold[0] == 0.5 and not invert[0]                     # 2v - 1 >= 0: v >= 0.5
    assert threshold[1] == np.nextafter(np.float32(0.5), np.float32(1)) and invert[1]  # -2v + 1 >= 0: not v > 0.5
    assert threshold[2] == -np.inf and not invert[2]                 # 0 >= 0: always
    assert threshold[3] == -np.inf and invert[3]                     # -1 >= 0: never
    relu = Predicate(1).through_clamp(0.0, np.inf).kernel_form()
    assert relu[0][0] == -np.inf and not relu[1][0]
    pooled = Predicate(1).through_affine([-1.0], [0.0]).through_maxpool()
    assert pooled.post_invert.tolist() == [True] and pooled.kernel_form()[1].tolist() == [False]
    with pytest.raises(ValueError, match="at most one max-pool"):
        pooled.through_maxpool()


# -- find_folds and fold_model on small models --------------------------------------------------------------
pytest.importorskip("numba")
from deploy.packed import BitMaxPool, PackedConv2d, PreSign, SignPack, fold_model  # noqa: E402


def dyadic(rng, shape, step, bound):
    """float32 multiples of ``step`` in [-bound, bound]: sums and products of a few stay exact in float32."""
    count = int(round(bound / step))
    return torch.from_numpy(rng.integers(-count, count + 1, size=shape) * step).float()


def batchnorm(rng, channels):
    """An eval BN with exact float32 arithmetic (eps 0, variances powers of 4): weights of both signs, with
    a zero among them, and means and biases on a coarse grid, so that some inputs land on a threshold."""
    bn = nn.BatchNorm2d(channels, eps=0.0)
    weight = rng.choice([-2.0, -1.5, -1.0, -0.75, -0.5, 0.0, 0.5, 0.75, 1.0, 1.5, 2.0], size=channels)
    weight[:3] = [-1.0, 0.0, 0.0]
    bias = rng.integers(-8, 9, size=channels) / 4
    bias[1:3] = [0.0, -0.5]  # a zero weight: the sign of the bias alone, 0 counting as +1
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(weight))
        bn.bias.copy_(torch.from_numpy(bias))
        bn.running_mean.copy_(dyadic(rng, channels, 0.25, 3))
        bn.running_var.copy_(torch.from_numpy(4.0 ** rng.integers(-1, 2, size=channels)))
    return bn.eval()


def bn_affine(bn):
    """(scale, shift) of an eval BN, in float64."""
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return scale.detach().numpy(), (bn.bias.double() - bn.running_mean.double() * scale).detach().numpy()


def packed_conv(rng, c_in, c_out):
    """A 3x3 PackedConv2d, padding 1, with a code and bias on a grid of 1/4 (exact float32 outputs)."""
    mask = torch.from_numpy(rng.random((c_out, c_in, 3, 3)) < 0.5)
    alpha, beta, bias = (dyadic(rng, c_out, 0.25, 1) for _ in range(3))
    return PackedConv2d(mask, alpha, beta, bias, 1, 1)


def float_conv(rng, c_in, c_out):
    """A float 3x3 conv, padding 1, with weights and bias on a grid of 1/8 (exact on dyadic inputs)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(dyadic(rng, conv.weight.shape, 0.125, 1))
        conv.bias.copy_(dyadic(rng, c_out, 0.125, 1))
    return conv


def sign():
    """The sign in front of a packed conv, as pack_model leaves it."""
    return PreSign(binarize.activations.BinActive())


def inputs(rng, channels=3):
    """A batch of dyadic inputs [2, channels, 12, 12] with exact zeros among them."""
    return dyadic(rng, (2, channels, 12, 12), 0.25, 2)


def chain_model(rng, first_packed, pool):
    """first conv -> BN -> ReLU -> max-pool (or dropout) -> BN -> Hardtanh -> sign -> packed conv -> BN."""
    first = packed_conv(rng, 3, 16) if first_packed else float_conv(rng, 3, 16)
    middle = nn.MaxPool2d(3, 2, 1) if pool else nn.Dropout(0.5)
    return nn.Sequential(first, batchnorm(rng, 16), nn.ReLU(), middle, batchnorm(rng, 16), nn.Hardtanh(),
                         sign(), packed_conv(rng, 16, 8), batchnorm(rng, 8)).eval()


def plan_of(model, x):
    """find_folds with PackedConv2d as the packed convs and PreSign as the signs."""
    return find_folds(model, x, is_packed=lambda m: isinstance(m, PackedConv2d),
                      is_sign=lambda m: isinstance(m, PreSign))


def assert_folds_exactly(model, x):
    """fold_model leaves the outputs exactly as they were; returns the plan."""
    before = copy.deepcopy(model).eval()
    plan = fold_model(model, x)
    with torch.no_grad():
        want, got = before(x), model(x)
    assert torch.equal(got, want)
    return plan


@pytest.mark.slow
@pytest.mark.parametrize("first_packed", [True, False], ids=["bits", "float"])
@pytest.mark.parametrize("pool", [True, False], ids=["pool", "nopool"])
def test_a_chain_folds_from_bits_or_floats(first_packed, pool):
    rng = np.random.default_rng(first_packed * 2 + pool)
    model, x = chain_model(rng, first_packed, pool), inputs(rng)
    chain, affine = plan_of(model, x)
    assert isinstance(chain, Chain) and isinstance(affine, AffineFold)
    assert (chain.consumer, chain.modules, chain.pool) == ("7", ["1", "2", "3", "4", "5", "6"], "3" if pool else None)
    assert (chain.source, chain.producer) == (("bits", "0") if first_packed else ("float", None))
    predicate = Predicate(16).through_clamp(-1.0, 1.0).through_affine(*bn_affine(model[4]))
    if pool:
        predicate.through_maxpool()
    threshold, invert = predicate.through_clamp(0.0, np.inf).through_affine(*bn_affine(model[1])).kernel_form()
    assert np.array_equal(chain.threshold, threshold) and np.array_equal(chain.invert, invert)
    assert (chain.post_invert is None) == (not pool)
    if pool:
        assert np.array_equal(chain.post_invert, predicate.post_invert) and predicate.post_invert.any()
    assert (affine.conv, affine.bn) == ("7", "8")
    assert np.array_equal(affine.scale, bn_affine(model[8])[0]) and np.array_equal(affine.shift, bn_affine(model[8])[1])


@pytest.mark.slow
@pytest.mark.parametrize("first_packed", [True, False], ids=["bits", "float"])
@pytest.mark.parametrize("pool", [True, False], ids=["pool", "nopool"])
def test_fold_model_keeps_the_outputs_of_a_chain(first_packed, pool):
    rng = np.random.default_rng(10 + first_packed * 2 + pool)
    model, x = chain_model(rng, first_packed, pool), inputs(rng)
    with torch.no_grad():  # the sign's input holds exact ties (zeros) and values of both signs
        z = model[:6](x)
    assert (z == 0).any() and (z > 0).any() and (z < 0).any()
    assert_folds_exactly(model, x)
    kinds = [type(m) for m in model]
    if first_packed:
        pooled = BitMaxPool if pool else nn.Identity
        assert model[0].emits_bits and kinds[1:7] == [nn.Identity, nn.Identity, pooled] + [nn.Identity] * 3
    elif pool:
        assert kinds[1] is SignPack and kinds[2:7] == [nn.Identity] * 5
    else:
        assert kinds[1:7] == [nn.Identity] * 6 and model[7]._in_predicate is not None
    assert kinds[8] is nn.Identity and not model[7].emits_bits


class Residual(nn.Module):
    """packed conv -> BN -> ReLU -> BN -> sign -> packed conv, plus a residual addition of the first conv's
    output (``split`` "conv") or of the ReLU's (``split`` "relu"): that tensor has two readers."""

    def __init__(self, rng, split):
        super().__init__()
        self.split = split
        self.conv0, self.bn1, self.relu = packed_conv(rng, 3, 12), batchnorm(rng, 12), nn.ReLU()
        self.bn2, self.sign, self.conv1 = batchnorm(rng, 12), sign(), packed_conv(rng, 12, 12)

    def forward(self, x):
        y = self.conv0(x)
        h = self.relu(self.bn1(y))
        return self.conv1(self.sign(self.bn2(h))) + (y if self.split == "conv" else h)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["conv", "relu"])
def test_a_tensor_with_two_readers_is_not_folded_through(split):
    rng = np.random.default_rng(20 + (split == "relu"))
    model, x = Residual(rng, split).eval(), inputs(rng)
    plan = plan_of(model, x)
    chain = plan[0]
    assert (chain.consumer, chain.source, chain.producer, chain.pool) == ("conv1", "float", None, None)
    if split == "conv":  # the conv's output stays float for the addition: no bits, no folded BN
        assert chain.modules == ["bn1", "relu", "bn2", "sign"] and len(plan) == 1
    else:
        assert chain.modules == ["bn2", "sign"]
        assert [(f.conv, f.bn) for f in plan[1:]] == [("conv0", "bn1")]
    assert_folds_exactly(model, x)
    assert not model.conv0.emits_bits


def test_dataflow_counts_the_readers_of_each_tensor():
    """The residual addition, called by the container, is a node of its own and a second reader."""
    model = nn.Sequential()
    model.relu, model.bn = nn.ReLU(), nn.BatchNorm2d(2).eval()

    def forward(x):
        y = model.relu(x)
        return model.bn(y) + y
    model.forward = forward
    flow = Dataflow(model, torch.randn(1, 2, 3, 3), lambda m: False)
    names = [node.name for node in flow.nodes]
    assert names[:2] == ["relu", "bn"] and flow.nodes[2].module is None and len(names) == 3
    relu_out, bn_out, sum_out = (node.outputs[0] for node in flow.nodes)
    assert flow.consumers[relu_out] == [1, 2] and flow.consumers[bn_out] == [2]
    assert flow.consumers[sum_out] == ["output"] and flow.calls == {"relu": 1, "bn": 1}


class SharedReLU(nn.Module):
    """packed conv -> BN -> ReLU -> BN -> the same ReLU again -> sign -> packed conv."""

    def __init__(self, rng):
        super().__init__()
        self.conv0, self.bn1, self.relu = packed_conv(rng, 3, 12), batchnorm(rng, 12), nn.ReLU()
        self.bn2, self.sign, self.conv1 = batchnorm(rng, 12), sign(), packed_conv(rng, 12, 8)

    def forward(self, x):
        return self.conv1(self.sign(self.relu(self.bn2(self.relu(self.bn1(self.conv0(x)))))))


@pytest.mark.slow
def test_a_module_called_twice_is_not_folded():
    rng = np.random.default_rng(30)
    model, x = SharedReLU(rng).eval(), inputs(rng)
    chain, affine = plan_of(model, x)
    assert (chain.consumer, chain.source, chain.modules, chain.pool) == ("conv1", "float", ["sign"], None)
    assert np.array_equal(chain.threshold, np.zeros(12, np.float32)) and not chain.invert.any()
    assert (affine.conv, affine.bn) == ("conv0", "bn1")  # read once, by a BN called once
    assert_folds_exactly(model, x)
    assert type(model.relu) is nn.ReLU and type(model.bn2) is nn.BatchNorm2d


@pytest.mark.slow
def test_a_packed_conv_read_only_by_a_bn_folds_it_into_its_scales():
    rng = np.random.default_rng(40)
    model = nn.Sequential(nn.Hardtanh(), sign(), packed_conv(rng, 3, 16), batchnorm(rng, 16), nn.ReLU()).eval()
    x = inputs(rng)
    chain, affine = plan_of(model, x)
    assert (chain.consumer, chain.modules, chain.source) == ("2", ["1"], "float")
    assert (affine.conv, affine.bn) == ("2", "3")
    scale, shift = bn_affine(model[3])
    assert np.array_equal(affine.scale, scale) and np.array_equal(affine.shift, shift)
    assert_folds_exactly(model, x)
    assert type(model[3]) is nn.Identity and type(model[4]) is nn.ReLU
