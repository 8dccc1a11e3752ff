"""Whole exported models run packed against their dense rebuild, model by model: every registered model
with a binarized input (the original's fbin, hybrid and nin models and SD-BNN's 1w1a ones), with the
weights of its default binarized convs coded by DAB and by XNOR, and BatchNorms whose statistics and
scales are random, negative in some channels and exactly zero in others (such a channel outputs its
shift whatever its input: a sign behind it is constant, +1 where the shift is 0 or positive, -1 where it
is negative). Also: inputs and BNs that hand many signs an exact 0 (sign(0) = +1 on both paths), and
batches of 1 and 3.

Unlike tests/test_deploy_packed.py, whose whole-model tests give the binarized convs dyadic codes, the
codes here are what DAB and XNOR make of each model's own initial weights, so the two paths differ by
float rounding in every layer. A sign input within that rounding of 0 may then come out either way, and
one such flip moves the log-probabilities far beyond REL_TOL. Random BNs leave a few dozen of the sweep's
tens of millions of sign inputs within 1e-6 of 0 (a rewrite of the packed path that rounds otherwise
flipped one of them), so :func:`centre_signs` moves each sign's threshold into a gap of the values it
sees on the test input before the model is exported: no sign input lies within TIE_MARGIN of it, and a
mismatch is a bug, not a tie.
"""

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import binarize
import models
from deploy.export import export_model, load_export
from deploy.packed import load_packed

pytest.importorskip("numba")

NUM_CLASSES = 5
METHODS = ("dab", "xnor")
# Every registered model that binarizes some conv's input by default.
SWEEP = [name for name in models.list_models() if models.model_info(name).binary_inputs]

# The packed and the dense model compute the same function; they differ only in how float32 rounds (the
# packed conv's integer counts times per-filter scales against F.conv2d's sums; BN and the layers after
# them in another memory layout). Measured over the sweep, that moves the log-probabilities by at most
# 2.5e-6 of their largest magnitude. One sign that comes out the other way moves them by 1e-3 to 3e-1 of
# it in most layers (2.5e-4 at the least; measured by flipping one value of one sign in dense models).
# 1e-4 lies 40x above the rounding and below every measured flip that reaches the output; the tests of
# test_deploy_packed.py allow 1e-5, with exactly computed convs.
REL_TOL = 1e-4
# How far (relative to a layer's largest |input|) every sign input stays from 0 after centre_signs: 30x the
# ~3e-7 by which the two paths' sign inputs differ, and far below the ~1e-4 a gap between neighbouring
# values spans, so that centring moves a threshold a few values at most.
TIE_MARGIN = 1e-5
CENTRE_PASSES = 6


def side_of(name):
    """The input side: the model's smallest accepted, at least 32 (the 1w1a and nin models accept down to a
    few pixels, where little is left to compare), at most its default."""
    info = models.model_info(name)
    return min(info.default_inpsize, max(info.min_inpsize, 32))


def images(name, batch, seed):
    """Standard normal images for ``name``: no exact zeros, so no sign sees one unless a BN makes it."""
    side = side_of(name)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, models.model_info(name).default_in_channels, side, side, generator=g)


def randomise_bn(bn, g, pass_zeros=False):
    """Random running statistics, scales and shifts for one BatchNorm2d, in place.

    Of the channels in random order: a 32nd (at least one) gets scale exactly 0 with shift exactly 0, one
    as many scale 0 with a negative shift, one as many scale 0 with a positive shift, a quarter a negative
    scale; the others a positive one. With ``pass_zeros`` half of the other channels get running mean 0
    and shift 0, so an input of exactly 0 leaves them as exactly 0 (a ReLU's or a zero image's zeros reach
    the sign behind).
    """
    c = bn.num_features
    bn.running_mean.normal_(0, 0.5, generator=g)
    bn.running_var.uniform_(0.25, 4.0, generator=g)
    if bn.weight is None:  # affine=False (nin): statistics only
        return
    sign = torch.where(torch.rand(c, generator=g) < 0.5, -1.0, 1.0)
    scale = 0.5 + torch.rand(c, generator=g)
    shift = sign * (0.1 + 0.5 * torch.rand(c, generator=g))
    order = torch.randperm(c, generator=g)
    k = max(1, c // 32)
    scale[order[:3 * k]] = 0.0
    shift[order[:k]] = 0.0
    shift[order[k:2 * k]] = -shift[order[k:2 * k]].abs()
    shift[order[2 * k:3 * k]] = shift[order[2 * k:3 * k]].abs()
    scale[order[3 * k:3 * k + c // 4]] *= -1
    if pass_zeros:
        rest = order[3 * k:]
        passing = rest[torch.rand(len(rest), generator=g) < 0.5]
        bn.running_mean[passing] = 0.0
        shift[passing] = 0.0
    bn.weight.copy_(scale)
    bn.bias.copy_(shift)


def front_norms(model):
    """The BatchNorm2d layers registered before the first binarized conv (module order is data-flow order
    in these models): the ones that see the image through real-valued layers only."""
    binarized = {id(module) for _, _, module, _ in binarize.binarized_layers(model)}
    norms = []
    for module in model.modules():
        if id(module) in binarized:
            break
        if isinstance(module, nn.BatchNorm2d):
            norms.append(module)
    return norms


def tie_shift(z, frozen):
    """Per channel of a sign's input ``z`` [B, C, H, W], the shift that takes the threshold 0 off its values.

    None when no value lies within TIE_MARGIN of the layer's largest |z| from 0. Else 0 for the channels
    with no such value, the ``frozen`` ones and those holding an exact 0 (which stays: sign(0) = +1 on both
    paths), and for the others minus the middle of the widest gap between consecutive values among the 16
    gaps around 0 (past the smallest and the largest value, a gap of 4 TIE_MARGIN counts too).
    """
    z = z.detach()
    size = z.abs()
    reach = TIE_MARGIN * size.max()
    tiny = (size < reach) & (size > 0)
    if not tiny.any():
        return None
    todo = per_channel_any(tiny) & ~per_channel_any(size == 0) & ~frozen
    if not todo.any():
        return None
    rows = z[:, todo].transpose(0, 1).reshape(int(todo.sum()), -1).sort(dim=1).values
    rows = torch.cat([rows[:, :1] - 4 * reach, rows, rows[:, -1:] + 4 * reach], dim=1)
    first = (rows < 0).sum(1, keepdim=True)  # the index of the first value >= 0
    gaps = (first + torch.arange(-8, 8)).clamp(0, rows.shape[1] - 2)
    low, high = rows.gather(1, gaps), rows.gather(1, gaps + 1)
    widest, best = (high - low).max(1, keepdim=True)
    assert (widest >= 2 * reach).all(), "no gap of 2 TIE_MARGIN among the values around 0"
    delta = torch.zeros(z.shape[1], dtype=z.dtype)
    delta[todo] = -(low.gather(1, best) + high.gather(1, best)).squeeze(1) / 2
    return delta


def per_channel_any(mask):
    """[C]: whether a bool [B, C, H, W] is set anywhere in each channel."""
    return mask.sum(dim=(0, 2, 3)) > 0


def frozen_channels(bn, channels):
    """The channels of ``bn`` (the last BN run before a sign of ``channels`` channels) that centring leaves
    alone: those whose shift is exactly 0. All of them where ``bn`` does not fit the sign."""
    if bn is None or bn.num_features != channels:
        return torch.ones(channels, dtype=torch.bool)
    if bn.bias is None:
        return torch.zeros(channels, dtype=torch.bool)
    return bn.bias == 0


def hook_signs(model, visit):
    """Hooks on ``model`` that hand ``visit(z, bn, own)`` each sign's input ``z``, the last BatchNorm2d run
    before it (None before the first) and whether ``z`` is that BN's output itself; a tensor ``visit``
    returns replaces ``z``. Returns the hook handles."""
    last = {"bn": None, "out": None}

    def remember(bn, args, out):
        last["bn"], last["out"] = bn, out

    def before_sign(binarizer, args):
        z = visit(args[0], last["bn"], args[0] is last["out"])
        return None if z is None else (z,) + tuple(args[1:])

    handles = [m.register_forward_hook(remember) for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    return handles + [binarizer.register_forward_pre_hook(before_sign)
                      for *_, binarizer in binarize.input_binarizers(model)]


def centre_signs(model, x):
    """Shift BNs of ``model`` (in place) so that no input of a sign on ``x`` lies within TIE_MARGIN of 0.

    A sign's input comes from the last BN run before it: its own BN (BN -> sign -> conv), or through
    hardtanh, PReLU or max-pool, or as one term of a residual sum (sign -> conv -> BN), all of which move
    with the BN's shift. A pass shifts that BN per channel by :func:`tie_shift` (through the running mean
    where the BN has no affine shift) and hands the sign the shifted input. Where the sign's input is not
    the BN's output itself, that output may feed other layers too (a residual stream), which see the
    shift on the next pass only: passes repeat until one moves only BNs whose output is the sign's input.
    """
    moved = {"other": 0}

    def visit(z, bn, own):
        delta = tie_shift(z, frozen_channels(bn, z.shape[1]))
        if delta is None or not delta.any():
            return None
        moved["other"] += 0 if own else 1
        if bn.bias is not None:
            bn.bias += delta
        else:
            bn.running_mean -= delta * torch.sqrt(bn.running_var + bn.eps)
        return z + delta.view(1, -1, 1, 1)

    handles = hook_signs(model, visit)
    try:
        with torch.no_grad():
            for _ in range(CENTRE_PASSES):
                moved["other"] = 0
                model(x)
                if not moved["other"]:
                    return
    finally:
        for handle in handles:
            handle.remove()
    raise AssertionError(f"residual streams still move sign inputs after {CENTRE_PASSES} passes")


def exported(name, method, folder, x, *, seed=0, pass_zeros=False):
    """``(dense, packed, report)``: ``name`` with its default binarized convs coded by ``method``, every
    BatchNorm2d randomised (:func:`randomise_bn`) and its signs centred on ``x`` (:func:`centre_signs`),
    exported to ``folder`` and loaded back dense (``load_export``) and packed (``load_packed`` with the
    dense fallback), both in eval mode.

    ``pass_zeros`` makes the :func:`front_norms` keep zeros in half their channels. Not the BNs behind a
    binarized conv: its output is often exactly 0 in real arithmetic (DAB's two values satisfy K alpha +
    (n - K) beta = the filter's sum, about 0 for the centred initial weights, and XNOR's are +-alpha), which
    float32 rounds to about +-1e-7 differently on the two paths; a BN mapping 0 to 0 would put its sign
    threshold on those values, a tie by construction.
    """
    torch.manual_seed(seed)
    info = models.model_info(name)
    model = models.build_model(name, NUM_CLASSES).eval()
    binarize.binarize_weights(model, layers=info.bin_layers, method=method)
    front = {id(bn) for bn in front_norms(model)} if pass_zeros else set()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            randomise_bn(bn, g, pass_zeros=id(bn) in front)
    path = os.path.join(folder, f"{name}-{method}.safetensors")
    with parametrize.cached():  # the binarized weights are solved once, for the passes and the export
        centre_signs(model, x)
        export_model(model, path, dict(model_def=name, num_classes=NUM_CLASSES,
                                       in_channels=info.default_in_channels, inpsize=side_of(name)))
    dense, _ = load_export(path)
    packed, _, report = load_packed(path, fallback=True)
    assert not dense.training and not packed.training
    return dense, packed, report


def log_probs(model, x):
    """log_softmax of ``model``'s output on ``x`` (the models' own outputs are log-probabilities already)."""
    with torch.no_grad():
        return F.log_softmax(model(x), dim=1)


def assert_close(out, ref):
    """``out`` equals the log-probabilities ``ref`` up to float rounding: REL_TOL of their largest magnitude
    (at least log(NUM_CLASSES))."""
    assert out.shape == ref.shape and torch.isfinite(ref).all()
    worst, scale = (out - ref).abs().max().item(), ref.abs().max().item()
    assert worst <= REL_TOL * scale, f"log-probabilities differ by {worst:.3g} (scale {scale:.3g})"


def assert_same_log_probs(dense, packed, x):
    """The packed model gives the dense model's log-probabilities on ``x``."""
    assert_close(log_probs(packed, x), log_probs(dense, x))


def packed_indices(report):
    """The conv indices that ``load_packed``'s report lists as running packed."""
    return {row["index"] for row in report if row["packed"]}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", SWEEP)
def test_model_runs_packed_as_dense(name, method, tmp_path):
    """Every binarized conv fed by a sign runs packed, and the log-probabilities are the dense ones."""
    info = models.model_info(name)
    x = images(name, batch=1, seed=2)
    dense, packed, report = exported(name, method, tmp_path, x)
    assert packed_indices(report), f"no conv of {name} runs packed"
    assert packed_indices(report) == set(info.bin_layers) & set(info.binary_inputs)
    assert_same_log_probs(dense, packed, x)


def count_sign_zeros(model):
    """``[zeros, values]``, counted as ``model`` runs: the inputs of its activation binarizers (signs, whose
    input is what they take the sign of) that are exactly 0, and all of them."""
    counts = [0, 0]

    def count(module, args):
        counts[0] += int((args[0] == 0).sum())
        counts[1] += args[0].numel()

    for *_, binarizer in binarize.input_binarizers(model):
        assert binarizer.name == "sign"
        binarizer.register_forward_pre_hook(count)
    return counts


@pytest.mark.slow
@pytest.mark.parametrize("name, method", [
    ("sketchanetfbin", "dab"),  # BN -> sign -> conv -> ReLU -> max-pool
    ("resnetfbin18", "xnor"),   # BN -> sign -> conv on residual sums
    ("resnet20_1w1a", "dab"),   # sign -> conv -> BN, option-A shortcuts that pad with zeros
])
def test_exact_zeros_run_packed_as_dense(name, method, tmp_path):
    """Images 60% zeros (an empty left half, a fifth of the rest) through BNs that keep zeros and channels of
    scale 0 and shift 0: many signs see an exact 0, and the packed model still gives the dense
    log-probabilities."""
    x = images(name, batch=1, seed=4)
    x[..., : x.shape[-1] // 2] = 0
    x[torch.rand(x.shape, generator=torch.Generator().manual_seed(5)) < 0.2] = 0
    assert (x == 0).float().mean() > 0.55
    dense, packed, report = exported(name, method, tmp_path, x, seed=3, pass_zeros=True)
    assert packed_indices(report)
    counts = count_sign_zeros(dense)
    assert_same_log_probs(dense, packed, x)
    assert counts[0] > max(1000, 0.02 * counts[1]), counts


@pytest.mark.slow
@pytest.mark.parametrize("name, method", [("sketchanetfbin", "xnor"), ("resnet20_1w1a", "dab")])
def test_batches_of_one_and_three(name, method, tmp_path):
    """Three images run packed together and one at a time: each gives the dense model's log-probabilities
    for it."""
    x = images(name, batch=3, seed=7)
    dense, packed, _ = exported(name, method, tmp_path, x, seed=6)
    together = log_probs(packed, x)
    for i in range(3):
        ref = log_probs(dense, x[i:i + 1])
        assert_close(log_probs(packed, x[i:i + 1]), ref)
        assert_close(together[i:i + 1], ref)
