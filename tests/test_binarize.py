"""Tests of the binarization engine: exactness of DAB, baselines, gradient rules, attachment."""

import copy
import itertools

import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.nn import functional as F

from binarize import (BinActive, DABActive, binarize_weights, binarized_layers, bnn, conv_layers, dab,
                      layer_stats, project_latent_, xnor)
from binarize.functions import dab_with_mask

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
device_param = pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
        not torch.cuda.is_available(), reason="CUDA not available"))])


def brute_force_error(row):
    """Smallest squared error of any two-value code alpha*e + beta*(1-e), e over all 2^n - 2 proper masks."""
    n = row.numel()
    if n == 1:
        return 0.0
    codes = torch.tensor(list(itertools.product([0.0, 1.0], repeat=n)), dtype=torch.float64)[1:-1]
    w = row.to(torch.float64)
    k = codes.sum(1)
    alpha = codes @ w / k
    beta = (1 - codes) @ w / (n - k)
    approx = codes * alpha[:, None] + (1 - codes) * beta[:, None]
    return ((approx - w) ** 2).sum(1).min().item()


def sq_error(w, w_hat):
    return ((w.double() - w_hat.double()) ** 2).reshape(w.shape[0], -1).sum(1)


def rows_for_brute_force():
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in range(1, 13):
        rows.append(torch.randn(n, generator=gen, dtype=torch.float64))                  # random
        rows.append(torch.randint(-2, 3, (n,), generator=gen).to(torch.float64) * 0.5)   # many ties
        rows.append(torch.full((n,), -0.3, dtype=torch.float64))                          # constant
        rows.append(torch.exp(torch.randn(n, generator=gen, dtype=torch.float64)))       # skewed
    return rows


@pytest.mark.parametrize("row", rows_for_brute_force(), ids=lambda r: f"n{r.numel()}")
def test_dab_error_equals_brute_force_optimum(row):
    w_hat, alpha, beta, k = dab(row[None])
    assert torch.isfinite(w_hat).all() and torch.isfinite(alpha).all() and torch.isfinite(beta).all()
    assert sq_error(row[None], w_hat).item() == pytest.approx(brute_force_error(row), abs=1e-12, rel=1e-9)


def test_dab_paper_conventions_on_a_batch_of_filters():
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(16, 3, 3, 3, generator=gen, dtype=torch.float64)
    w_hat, alpha, beta, k = dab(w)
    assert w_hat.shape == w.shape and alpha.shape == beta.shape == k.shape == (16,)
    assert (alpha >= beta).all() and (k >= 1).all() and (k <= 26).all()
    flat, flat_hat = w.reshape(16, -1), w_hat.reshape(16, -1)
    for i in range(16):
        upper = flat_hat[i] == alpha[i]
        assert upper.sum() == k[i]
        assert torch.allclose(flat[i][upper].mean(), alpha[i])        # alpha: mean of the upper group
        assert torch.allclose(flat[i][~upper].mean(), beta[i])        # beta: mean of the lower group
        assert flat[i][upper].min() >= flat[i][~upper].max()          # the split is on sorted values


def test_dab_worked_example_from_spec():
    w = torch.tensor([[0.5, 0.4, 0.3, 0.05, -0.1, -0.2, -0.3, -0.35, -0.6]], dtype=torch.float64)
    _, alpha, beta, k = dab(w)
    assert k.item() == 4
    assert alpha.item() == pytest.approx(0.3125) and beta.item() == pytest.approx(-0.31)


def test_dab_single_value_and_constant_filters_are_exact():
    w = torch.tensor([[[[0.7]]], [[[-2.0]]]])
    w_hat, alpha, beta, k = dab(w)
    assert torch.equal(w_hat, w) and torch.equal(alpha, w.flatten()) and torch.equal(beta, w.flatten())
    assert k.tolist() == [1, 1]
    const = torch.full((3, 4, 3, 3), 0.25)
    w_hat, alpha, beta, k = dab(const)
    assert torch.equal(w_hat, const) and not torch.isnan(alpha).any() and ((k >= 1) & (k <= 35)).all()
    zeros = torch.zeros(2, 5)
    assert torch.equal(dab(zeros)[0], zeros)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@device_param
def test_dab_keeps_dtype_and_device_and_is_near_optimal(dtype, device):
    gen = torch.Generator().manual_seed(2)
    w64 = torch.randn(32, 8, 3, 3, generator=gen, dtype=torch.float64) * 0.1
    w = w64.to(device=device, dtype=dtype)
    w_hat, alpha, beta, k = dab(w)
    assert w_hat.dtype == alpha.dtype == beta.dtype == dtype and k.dtype == torch.long
    assert w_hat.device.type == device and w_hat.shape == w.shape
    assert torch.isfinite(w_hat).all()
    # Same inputs in fp64: the low-precision result is optimal up to its own rounding.
    exact = sq_error(w.double().cpu(), dab(w.double().cpu())[0])
    got = sq_error(w.double().cpu(), w_hat.double().cpu())
    tol = {torch.float16: 2e-2, torch.bfloat16: 6e-2}.get(dtype, 1e-6)
    assert (got <= exact * (1 + tol) + 1e-12).all()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=1, max_size=64))
def test_dab_never_worse_than_bwn(values):
    w = torch.tensor([values], dtype=torch.float64)
    err_dab = sq_error(w, dab(w)[0]).item()
    err_bwn = sq_error(w, xnor(w)[0]).item()
    assert err_dab <= err_bwn + 1e-9 * (1 + err_bwn)


def test_xnor_and_bnn_codes():
    w = torch.tensor([[0.5, -0.25, 0.0, -1.0]])
    w_hat, a, b, k = xnor(w)
    assert torch.allclose(a, torch.tensor([0.4375])) and torch.allclose(b, -a)
    assert torch.allclose(w_hat, torch.tensor([[0.4375, -0.4375, 0.4375, -0.4375]]))  # zero -> +a
    assert k.item() == 2
    w_hat, a, b, k = bnn(w)
    assert torch.equal(w_hat, torch.tensor([[1.0, -1.0, 1.0, -1.0]])) and a.item() == 1 and b.item() == -1


def expected_grad_scale(method, w, c_in):
    """The gradient rules of shared/spec/dab.md, written out independently of the engine."""
    flat = w.reshape(w.shape[0], -1)
    n = flat.shape[1]
    inside = (flat.abs() < 1).double()
    centring = 1 - 1 / c_in if c_in > 1 else 1.0
    if method == "bnn":
        return inside.reshape(w.shape)
    if method == "xnor":
        a = flat.abs().mean(1, keepdim=True)
        return (centring * (n * a * inside + 1)).reshape(w.shape)
    _, alpha, beta, k, e = dab_with_mask(w)
    e = e.reshape(w.shape[0], -1).double()
    kk = k.double()[:, None]
    scale = e * (1 / kk + alpha[:, None].abs() * inside) + (1 - e) * (1 / (n - kk) + beta[:, None].abs() * inside)
    return (centring * scale).reshape(w.shape)


@pytest.mark.parametrize("method", ["dab", "xnor", "bnn"])
@pytest.mark.parametrize("c_in", [1, 4])
@device_param
def test_gradient_reaching_latent_weight_follows_the_rule(method, c_in, device):
    torch.manual_seed(3)
    conv = nn.Conv2d(c_in, 6, 3, bias=False).double().to(device)
    with torch.no_grad():
        conv.weight.mul_(4)           # some entries beyond [-1, 1] before the projection
    binarize_weights(conv, 1, 1, method=method)
    x = torch.randn(2, c_in, 7, 7, dtype=torch.float64, device=device)
    out = conv(x)                     # first forward projects the latent weight (centre, clamp)
    upstream = torch.randn_like(out)
    out.backward(upstream)
    latent = conv.parametrizations.weight.original
    # The gradient with respect to the binarized weight, computed by a plain conv.
    w_hat = conv.weight.detach().requires_grad_(True)
    F.conv2d(x, w_hat).backward(upstream)
    expected = w_hat.grad * expected_grad_scale(method, latent.detach(), c_in).to(device)
    assert torch.allclose(latent.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method", ["dab", "xnor", "bnn"])
def test_binarized_conv_equals_plain_conv_with_binarized_weights(method):
    torch.manual_seed(4)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    binarize_weights(conv, 1, 1, method=method)
    x = torch.randn(2, 3, 9, 9)
    for mode in ("train", "eval"):
        getattr(conv, mode)()
        out = conv(x)
        latent = conv.parametrizations.weight.original.detach()
        w_hat = {"dab": dab, "xnor": xnor, "bnn": bnn}[method](latent)[0]
        assert len(torch.unique(w_hat.reshape(8, -1)[0])) <= 2
        assert torch.allclose(out, F.conv2d(x, w_hat, conv.bias, padding=1), atol=1e-6)


def test_projection_centres_over_input_channels_and_clamps_when_attached():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3), nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        for m in model:
            m.weight.mul_(20)
    before = [m.weight.detach().clone() for m in model]
    binarize_weights(model, 1, 3)
    latents = [m.parametrizations.weight.original.detach() for m in model]
    # C_in == 1: no centring (it would zero the filter), only the clamp.
    assert torch.equal(latents[0], before[0].clamp(-1, 1))
    assert latents[0].abs().sum() > 0
    # Otherwise: centre over the input channels first, then clamp to [-1, 1].
    for w, lat in zip(before[1:], latents[1:]):
        assert torch.allclose(lat, (w - w.mean(dim=1, keepdim=True)).clamp(-1, 1), atol=1e-6)
        assert lat.abs().max() <= 1 and (lat.abs() == 1).any()   # the clamp did act
    # project_latent_ applies the same projection on demand.
    with torch.no_grad():
        model[1].parametrizations.weight.original.copy_(before[1])
    project_latent_(model)
    assert torch.allclose(model[1].parametrizations.weight.original,
                          (before[1] - before[1].mean(dim=1, keepdim=True)).clamp(-1, 1), atol=1e-6)


def test_forward_never_changes_the_latent_and_every_optimizer_step_projects_it():
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3))
    binarize_weights(model, 1, 2)
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


def test_loading_a_state_dict_gives_identical_latents_and_outputs():
    torch.manual_seed(9)
    model = make_net()
    binarize_weights(model, 2, 4)
    opt = torch.optim.Adam(model.parameters(), lr=0.3)
    x = torch.randn(2, 1, 9, 9)
    for _ in range(3):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    clone = make_net()
    binarize_weights(clone, 2, 4)
    clone.load_state_dict(model.state_dict())
    for a, b in zip(model.state_dict().values(), clone.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(clone.eval()(x), model.eval()(x))
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), clone.state_dict().values()))


def make_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 1)),
                         nn.Conv2d(8, 3, 1))


def test_range_selection_is_inclusive_one_based_and_clipped():
    model = make_net()
    assert [i for i, _, _ in conv_layers(model)] == [1, 2, 3, 4]
    assert binarize_weights(model, 2, 3) == [2, 3]
    assert [i for i, *_ in binarized_layers(model)] == [2, 3]
    model = make_net()
    assert binarize_weights(model, 2, 100) == [2, 3, 4]
    model = make_net()
    assert binarize_weights(model, 4, 4, method="xnor") == [4]


@pytest.mark.parametrize("start,end", [(0, 3), (3, 2), (5, 9), (-1, 2)])
def test_invalid_ranges_raise_with_the_valid_range(start, end):
    model = make_net()
    with pytest.raises(ValueError, match=r"has 4 convs.*binStart <= 4"):
        binarize_weights(model, start, end)
    assert not binarized_layers(model)


def test_unknown_method_and_double_binarization_raise():
    model = make_net()
    with pytest.raises(ValueError, match="unknown weight binarizer"):
        binarize_weights(model, 1, 2, method="ternary")
    assert not binarized_layers(model)
    binarize_weights(model, 1, 2)
    with pytest.raises(ValueError, match="already binarized"):
        binarize_weights(model, 2, 3)


def test_state_dict_round_trip_and_deepcopy():
    torch.manual_seed(6)
    model = make_net()
    binarize_weights(model, 2, 4)
    x = torch.randn(2, 1, 9, 9)
    out = model(x)
    clone = make_net()
    binarize_weights(clone, 2, 4)
    clone.load_state_dict(model.state_dict())
    assert torch.allclose(clone(x), out)
    copied = copy.deepcopy(model)
    assert torch.allclose(copied(x), out)
    assert copied[2][0].parametrizations.weight.original is not model[2][0].parametrizations.weight.original


def test_training_step_updates_latent_and_stats_are_readable():
    torch.manual_seed(7)
    model = make_net()
    binarize_weights(model, 2, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 1, 9, 9)
    model(x).square().mean().backward()
    before = model[2][0].parametrizations.weight.original.detach().clone()
    opt.step()
    assert not torch.equal(before, model[2][0].parametrizations.weight.original)
    stats = layer_stats(model)
    assert [s["index"] for s in stats] == [2, 3, 4]
    w = model[3].parametrizations.weight.original.detach()
    _, alpha, beta, k = dab(w)
    model(x)   # re-projects after the step, re-solves
    w = model[3].parametrizations.weight.original.detach()
    _, alpha, beta, k = dab(w)
    last = layer_stats(model)[2]
    assert last["k_frac"] == pytest.approx(k.float().mean().item() / w[0].numel())
    assert last["alpha"] == pytest.approx(alpha.mean().item()) and last["beta"] == pytest.approx(beta.mean().item())


@device_param
def test_sign_activation_forward_and_straight_through_gradient(device):
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.3, 1.0, 1.5], device=device, requires_grad=True)
    y = BinActive()(x)
    assert torch.equal(y, torch.sign(x.detach()))
    y.backward(torch.full_like(x, 2.0))
    assert torch.equal(x.grad, torch.tensor([0.0, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0], device=device))


def test_dab_activation_is_a_per_sample_two_value_code():
    torch.manual_seed(8)
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    y = DABActive()(x)
    centred = (x - x.mean(1, keepdim=True)).detach()
    for i in range(3):
        pos = centred[i] > 0
        assert torch.allclose(y[i][pos], centred[i][pos].mean().expand(int(pos.sum())))
        assert torch.allclose(y[i][~pos], centred[i][~pos].mean().expand(int((~pos).sum())))
    y.sum().backward()
    assert torch.equal(x.grad, (x.detach().abs() <= 1).float())
    one_channel = torch.randn(2, 1, 3, 3)
    assert torch.equal(DABActive()(one_channel), torch.zeros_like(one_channel))  # no NaN when nothing is positive


def test_a_warm_started_solve_gives_the_same_code_as_a_cold_one():
    """Training re-sorts each layer from the previous step's permutation (about twice as fast); the code
    must not depend on it, ties (many here: values on a grid of 9) included."""
    from binarize.functions import _dab_solve
    gen = torch.Generator().manual_seed(11)
    for n in (2, 9, 37, 300):
        rows = torch.randint(-4, 5, (64, n), generator=gen).float() * 0.25
        hint = torch.stack([torch.randperm(n, generator=gen) for _ in range(64)])
        cold, warm = _dab_solve(rows), _dab_solve(rows, hint)
        assert all(torch.equal(a, b) for a, b in zip(cold[:4], warm[:4]))
        assert torch.equal(rows.gather(1, warm[4]), rows.gather(1, cold[4]))  # both sort the rows


def test_the_upper_group_mask_is_the_first_k_of_the_sort_with_and_without_ties():
    """On the CPU the mask comes from one compare against the K-th largest value, unless equal values
    straddle the split (then from the permutation); both must be the K first of the sort."""
    from binarize.functions import _dab_solve, upper_mask
    gen = torch.Generator().manual_seed(12)
    for rows in (torch.randn(64, 300, generator=gen), torch.randint(-4, 5, (64, 37), generator=gen) * 0.25,
                 torch.ones(3, 5)):
        w_hat, alpha, beta, k, order, mask = _dab_solve(rows)
        assert torch.equal(mask, upper_mask(order, k)) and torch.equal(mask.sum(1), k)
        assert torch.equal(w_hat, torch.where(mask, alpha[:, None], beta[:, None]))  # the code holds alpha
