"""Tests of binarize/surrogates.py: the backward windows (STE, IR-Net's EDE, Bi-Real's ApproxSign) against their
formulas, the fused gradient products, the name lookup and IR-Net's EDE schedule."""

import pytest
import torch

from binarize import EDE, STE, SURROGATES, ApproxSignWindow, Surrogate, ede_schedule, make_surrogate

POINTS = [-2.0, -1.0, -0.999, -0.5, -0.0, 0.0, 0.25, 0.999, 1.0, 1.0000001, 3.0]


def test_ste_window_is_open_or_closed_at_one():
    x = torch.tensor(POINTS)
    open_ = STE().window(x)
    closed = STE().window(x, closed=True)
    assert open_.tolist() == [float(abs(v) < 1) for v in x.tolist()]
    assert closed.tolist() == [float(abs(v) <= 1) for v in x.tolist()]
    assert closed[1] == 1 and open_[1] == 0 and closed[9] == 0    # exactly 1 and the next float above it


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("closed", [False, True])
def test_ste_pass_through_equals_grad_times_window(dtype, closed):
    x = torch.tensor(POINTS, dtype=dtype)
    x = x[x.abs() != 1.0000001] if dtype in (torch.float16, torch.bfloat16) else x  # rounds to 1 there
    grad = torch.linspace(-3, 3, x.numel(), dtype=dtype)
    got = STE().pass_through(grad, x, closed=closed)
    assert got.dtype == dtype and torch.equal(got, grad * STE().window(x, closed).to(dtype))
    mixed = STE().pass_through(grad.float(), x, closed=closed)      # a gradient in another dtype
    assert mixed.dtype == torch.float32 and torch.equal(mixed, grad.float() * STE().window(x, closed).float())


def test_ede_window_and_pass_through_follow_irnets_derivative():
    ede = EDE(t=2.5, k=1.3)
    x = torch.linspace(-2, 2, 41, dtype=torch.float64)
    reference = 1.3 * 2.5 * (1 - torch.tanh(2.5 * x) ** 2)
    assert torch.allclose(ede.window(x), reference, rtol=1e-12, atol=1e-15)
    grad = torch.randn(41, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(ede.pass_through(grad, x), grad * reference, rtol=1e-12, atol=1e-15)
    half = ede.pass_through(grad.half(), x.half())
    assert half.dtype == torch.float16 and torch.allclose(half.double(), grad * reference, rtol=2e-2, atol=2e-2)
    assert repr(ede) == "EDE(t=2.5, k=1.3)"


def test_approxsign_window_is_bireals_derivative():
    x = torch.tensor(POINTS)
    expected = [max(0.0, 2 - 2 * abs(v)) for v in x.tolist()]
    assert torch.allclose(ApproxSignWindow().window(x), torch.tensor(expected))
    assert ApproxSignWindow().window(torch.tensor([1.0, -1.0, 0.0])).tolist() == [0.0, 0.0, 2.0]


def test_make_surrogate_by_name_instance_or_default():
    assert isinstance(make_surrogate(None), STE)
    assert {name: type(make_surrogate(name)) for name in SURROGATES} == {
        "ste": STE, "ede": EDE, "approxsign": ApproxSignWindow}
    ede = EDE(t=4.0)
    assert make_surrogate(ede) is ede
    with pytest.raises(ValueError, match="unknown backward rule 'tanh'; choose from ste, ede, approxsign"):
        make_surrogate("tanh")
    with pytest.raises(NotImplementedError):
        Surrogate().window(torch.zeros(1))


def test_ede_schedule_matches_sdbnns_checks():
    t, k = ede_schedule(0, 500, 1e-3, 10)
    assert t == pytest.approx(1e-3) and k == pytest.approx(1000)
    first_k1 = next(e for e in range(500) if ede_schedule(e, 500, 1e-3, 10)[1] == 1)
    assert first_k1 == 375 and ede_schedule(374, 500, 1e-3, 10)[1] > 1
    assert ede_schedule(499, 500, 1e-3, 10)[0] == pytest.approx(9.82, abs=0.005)
    assert next(e for e in range(400) if ede_schedule(e, 400, 0.1, 10)[1] == 1) == 200
    assert ede_schedule(399, 400, 0.1, 10)[0] == pytest.approx(9.89, abs=0.005)
    assert [round(ede_schedule(e, 3, 1e-3, 10)[0], 4) for e in range(3)] == [0.001, 0.0215, 0.4642]


@pytest.mark.parametrize("epoch,epochs,t_min,t_max", [(0, 10, 0, 1), (0, 10, 2, 1), (0, 0, 0.1, 1)])
def test_ede_schedule_refuses_bad_settings(epoch, epochs, t_min, t_max):
    with pytest.raises(ValueError, match="EDE needs 0 < t_min <= t_max and epochs >= 1"):
        ede_schedule(epoch, epochs, t_min, t_max)
