"""Tests of binarize/functions.py: the exact DAB solve, its fp64 optimality, the XNOR/BNN baselines, the sign rule."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from binarize import DAB, binary_sign, bnn, dab, xnor
from binarize.functions import dab_with_mask, upper_mask

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


def fp64_optimal_k(weight):
    """K maximising D(K) = u_K^2 / K + (T - u_K)^2 / (n - K), every split tried, all of it in fp64."""
    rows = weight.double().reshape(weight.shape[0], -1)
    n = rows.shape[1]
    upper = rows.sort(dim=1, descending=True).values.cumsum(dim=1)
    total, upper = upper[:, -1:], upper[:, :-1]
    sizes = torch.arange(1, n, dtype=torch.float64)
    objective = upper ** 2 / sizes + (total - upper) ** 2 / (n - sizes)
    return objective.argmax(dim=1) + 1


def sq_error(w, w_hat):
    return ((w.double() - w_hat.double()) ** 2).reshape(w.shape[0], -1).sum(1)


def centred_clamped(shape, seed=0):
    """Latent weights as they are at rest: centred over input channels and clamped."""
    w = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.5
    return (w - w.mean(dim=1, keepdim=True)).clamp(-1, 1)


def rows_for_brute_force():
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in range(1, 13):
        rows.append(torch.randn(n, generator=gen, dtype=torch.float64))                  # random
        rows.append(torch.randint(-2, 3, (n,), generator=gen).to(torch.float64) * 0.5)   # many ties
        rows.append(torch.full((n,), -0.3, dtype=torch.float64))                          # constant
        rows.append(torch.exp(torch.randn(n, generator=gen, dtype=torch.float64)))       # skewed
    return rows


# ---------------------------------------------------------------- optimality

@pytest.mark.parametrize("row", rows_for_brute_force(), ids=lambda r: f"n{r.numel()}")
def test_dab_error_equals_brute_force_optimum(row):
    w_hat, alpha, beta, _ = dab(row[None])
    assert torch.isfinite(w_hat).all() and torch.isfinite(alpha).all() and torch.isfinite(beta).all()
    assert sq_error(row[None], w_hat).item() == pytest.approx(brute_force_error(row), abs=1e-12, rel=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("seed", [0, 1])
def test_k_is_the_fp64_optimum_on_a_512_channel_layer(dtype, seed):
    """D is flat near its maximum: prefix sums rounded in fp32 chose another K in 5-10 of these 64 filters."""
    gen = torch.Generator().manual_seed(seed)
    w = (torch.randn(64, 512, 3, 3, generator=gen, dtype=torch.float64) * 0.05).to(dtype)
    mismatched = (dab(w)[3] != fp64_optimal_k(w)).sum().item()
    assert mismatched == 0, f"K differs from the fp64 optimum in {mismatched} of 64 filters"
    centred = (w - w.mean(dim=1, keepdim=True)).clamp(-1, 1)  # as training holds its latent weights
    assert torch.equal(dab(centred)[3], fp64_optimal_k(centred))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("value,n", [(0.3, 1152), (-0.7, 4608), (1e-3, 9), (0.1, 2)])
def test_a_constant_filter_gives_alpha_equal_beta_and_zero_error(dtype, value, n):
    w = torch.full((3, n), value, dtype=dtype)
    w_hat, alpha, beta, k = dab(w)
    assert torch.equal(alpha, beta), (alpha[0].item(), beta[0].item())
    assert torch.equal(alpha, w[:, 0]) and torch.equal(w_hat, w)
    assert ((k >= 1) & (k < n)).all()


def nearly_constant_rows(dtype):
    """Rows whose group means round close together: constants, a constant plus one ulp, large offsets."""
    gen = torch.Generator().manual_seed(5)
    rows = [torch.full((64, 1152), 0.3, dtype=torch.float64)]
    rows.append(rows[0].clone())
    rows[1][:, ::7] = torch.nextafter(torch.tensor(0.3, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64))
    rows.append(1e4 + torch.randn(64, 300, generator=gen, dtype=torch.float64) * 1e-9)
    rows.append(torch.randn(64, 4608, generator=gen, dtype=torch.float64))
    return [r.to(dtype) for r in rows]


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64],
                         ids=["fp16", "bf16", "fp32", "fp64"])
def test_alpha_is_never_below_beta(dtype):
    for rows in nearly_constant_rows(dtype):
        w_hat, alpha, beta, _ = dab(rows)
        assert (alpha >= beta).all()
        assert torch.equal(w_hat.amax(dim=1), alpha) and torch.equal(w_hat.amin(dim=1), beta)


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


def test_dab_worked_example():
    w = torch.tensor([[0.5, 0.4, 0.3, 0.05, -0.1, -0.2, -0.3, -0.35, -0.6]], dtype=torch.float64)
    _, alpha, beta, k = dab(w)
    assert k.item() == 4
    assert alpha.item() == pytest.approx(0.3125) and beta.item() == pytest.approx(-0.31)


def test_dab_single_value_and_zero_filters_are_exact():
    w = torch.tensor([[[[0.7]]], [[[-2.0]]]])
    w_hat, alpha, beta, k = dab(w)
    assert torch.equal(w_hat, w) and torch.equal(alpha, w.flatten()) and torch.equal(beta, w.flatten())
    assert k.tolist() == [1, 1]
    zeros = torch.zeros(2, 5)
    assert torch.equal(dab(zeros)[0], zeros)


def test_dab_refuses_an_empty_weight():
    with pytest.raises(ValueError, match="at least one value per filter"):
        dab(torch.zeros(3, 0))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64],
                         ids=["fp16", "bf16", "fp32", "fp64"])
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


# ---------------------------------------------------------------- autocast

def test_dab_under_cpu_autocast_equals_the_fp32_solve():
    w = centred_clamped((64, 32, 3, 3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = dab(w)
    outside = dab(w)
    assert inside[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(inside, outside))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dab_under_cuda_autocast_equals_the_fp32_solve(dtype):
    w = centred_clamped((256, 128, 3, 3)).cuda()
    with torch.autocast("cuda", dtype=dtype):
        inside = dab(w)
    outside = dab(w)
    assert all(torch.equal(a, b) for a, b in zip(inside, outside))
    assert torch.equal(outside[3].cpu(), fp64_optimal_k(w.cpu()))


# ---------------------------------------------------------------- the mask and the warm start

def test_the_upper_group_mask_is_the_k_largest_values_with_and_without_ties():
    gen = torch.Generator().manual_seed(12)
    for rows in (torch.randn(64, 300, generator=gen), torch.randint(-4, 5, (64, 37), generator=gen) * 0.25,
                 torch.ones(3, 5)):
        w_hat, alpha, beta, k, mask = dab_with_mask(rows)
        assert mask.shape == rows.shape and mask.dtype == torch.bool
        assert torch.equal(mask.sum(1), k)
        assert torch.equal(w_hat, torch.where(mask, alpha[:, None], beta[:, None]))  # the code holds alpha
        for row, m in zip(rows, mask):
            if (~m).any():
                assert row[m].min() >= row[~m].max()


def test_upper_mask_marks_the_first_k_of_a_permutation():
    order = torch.tensor([[2, 0, 3, 1], [1, 3, 0, 2]])
    mask = upper_mask(order, torch.tensor([1, 3]))
    assert mask.tolist() == [[False, False, True, False], [True, True, False, True]]


def test_a_warm_started_solve_gives_the_same_code_as_a_cold_one():
    """A DAB binarizer re-sorts each layer from its previous solve's permutation; the code must not depend
    on it, ties (many here: values on a grid of 9) included."""
    gen = torch.Generator().manual_seed(11)
    for n in (2, 9, 37, 300):
        binarizer = DAB((64, n))
        binarizer(torch.randn(64, n, generator=gen))                    # leaves an unrelated permutation
        rows = torch.randint(-4, 5, (64, n), generator=gen).float() * 0.25
        warm = binarizer(rows)
        assert torch.equal(warm, dab(rows)[0])
        assert torch.equal(binarizer.last.k, dab(rows)[3])


# ---------------------------------------------------------------- baselines and the sign rule

def test_xnor_and_bnn_codes():
    w = torch.tensor([[0.5, -0.25, 0.0, -1.0]])
    w_hat, a, b, k = xnor(w)
    assert torch.allclose(a, torch.tensor([0.4375])) and torch.allclose(b, -a)
    assert torch.allclose(w_hat, torch.tensor([[0.4375, -0.4375, 0.4375, -0.4375]]))  # zero -> +a
    assert k.item() == 2
    w_hat, a, b, k = bnn(w)
    assert torch.equal(w_hat, torch.tensor([[1.0, -1.0, 1.0, -1.0]])) and a.item() == 1 and b.item() == -1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64],
                         ids=["fp16", "bf16", "fp32", "fp64"])
def test_binary_sign_gives_plus_one_at_zero(dtype):
    x = torch.tensor([-2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0, float("nan")], dtype=dtype)
    y = binary_sign(x)
    assert y.dtype == dtype
    expected = [-1.0, -1.0, 1.0, 1.0, 1.0, 1.0, -1.0] if dtype != torch.float16 else \
        [-1.0, 1.0, 1.0, 1.0, 1.0, 1.0, -1.0]  # 1e-30 underflows to -0.0 / +0.0 in fp16
    assert y.tolist() == expected
