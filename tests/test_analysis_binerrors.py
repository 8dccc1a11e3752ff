"""analysis.binerrors: the input and weight binarization errors against a direct computation, and the report
that --calculateBinarizationLosses / --calculateWeightBinarizationLosses print, log and save."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import binarize
from analysis.binerrors import input_binarization_losses, report_losses, weight_binarization_losses

CPU = torch.device("cpu")


def _two_signs():
    """BN -> sign -> conv 1 -> ReLU -> BN -> sign -> conv 2: two convs with binarized inputs, real weights."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), binarize.BinActive(), nn.Conv2d(3, 4, 3), nn.ReLU(),
                          nn.BatchNorm2d(4), binarize.BinActive(), nn.Conv2d(4, 2, 1)).eval()
    with torch.no_grad():
        for bn, scale in ((model[0], 0.3), (model[4], 2.5)):  # inputs well inside and well outside [-1, 1]
            bn.weight.uniform_(0.5, 1.5).mul_(scale)
            bn.bias.uniform_(-0.2, 0.2)
    return model


def _loader():
    """Two uneven batches (3 and 2 samples): a per-batch mean would weight them wrongly."""
    torch.manual_seed(1)
    batches = [torch.randn(3, 3, 5, 5) * 2 + 0.3, torch.randn(2, 3, 5, 5)]
    return [(x, torch.zeros(len(x), dtype=torch.long)) for x in batches]


def _binary_weights():
    """conv 1 (DAB-binarized weights) -> ReLU -> conv 2 (XNOR-binarized weights)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()
    binarize.binarize_layer(model[0], "dab")
    binarize.binarize_layer(model[2], "xnor")
    return model


class Logger:
    """Records what report_losses logs and saves."""

    def __init__(self):
        self.scalars_at, self.files = {}, {}

    def scalars(self, values, step):
        self.scalars_at.setdefault(step, {}).update(values)

    def write_json(self, name, rows):
        self.files[name] = rows


def test_input_errors_match_a_direct_computation_where_every_sample_counts_once():
    model = _two_signs()
    captured = {1: [], 2: []}  # conv index -> inputs of its sign
    hooks = [model[1].register_forward_hook(lambda m, a, o: captured[1].append(a[0].detach().clone())),
             model[5].register_forward_hook(lambda m, a, o: captured[2].append(a[0].detach().clone()))]
    rows = input_binarization_losses(model, _loader(), CPU)
    for h in hooks:
        h.remove()
    assert [(r["index"], r["name"]) for r in rows] == [(1, "2"), (2, "6")]
    for r in rows:
        x = torch.cat(captured[r["index"]]).double().flatten(1)
        assert len(x) == 5
        mse = (torch.sign(x) - x).square().mean(dim=1)
        assert r["rmse"] == pytest.approx(mse.mean().sqrt().item(), rel=1e-5)
        assert r["nrmse"] == pytest.approx((mse / x.square().mean(dim=1)).mean().sqrt().item(), rel=1e-5)
        assert r["err_1mx2"] == pytest.approx((1 - x.clamp(-1, 1).square()).abs().mean(dim=1).mean().item(),
                                              rel=1e-5)
    # The hooks are gone afterwards: a second measurement over the same data gives the same rows.
    assert input_binarization_losses(model, _loader(), CPU) == rows


def test_weight_errors_match_a_direct_computation():
    model = _binary_weights()
    rows = weight_binarization_losses(model, _loader(), CPU)
    assert [(r["index"], r["name"]) for r in rows] == [(1, "0"), (2, "2")]
    squared, count = [0.0, 0.0], [0, 0]
    with torch.no_grad():
        for x, _ in _loader():
            h = x
            for slot, conv in enumerate((model[0], model[2])):
                real = F.conv2d(h, conv.parametrizations.weight.original, conv.bias, conv.stride, conv.padding)
                binary = conv(h)  # the binarized weights, as the model runs
                squared[slot] += (binary - real).double().square().sum().item()
                count[slot] += binary.numel()
                h = torch.relu(binary) if slot == 0 else binary
    for slot, r in enumerate(rows):
        assert r["rmse"] > 0
        assert r["rmse"] == pytest.approx(math.sqrt(squared[slot] / count[slot]), rel=1e-5)


def test_report_measures_only_what_is_asked_and_logs_it_at_the_step():
    model, said = _two_signs(), []
    logger = Logger()
    found = report_losses(model, _loader(), CPU, logger, 7, said.append, inputs=True, weights=False,
                          channels_last=False)
    assert found["weights"] is None and [r["index"] for r in found["inputs"]] == [1, 2]
    assert said[0].startswith("input binarization errors on val") and len(said) == 3
    assert f"{found['inputs'][1]['nrmse']:.6f}" in said[2]
    assert logger.files == {"binarization_losses.json": found["inputs"]}
    assert set(logger.scalars_at) == {7}
    assert logger.scalars_at[7]["binarization/conv02/nrmse"] == found["inputs"][1]["nrmse"]
    assert len(logger.scalars_at[7]) == 2 * 3

    said.clear()
    nothing = report_losses(model, _loader(), CPU, None, 0, said.append, inputs=False, weights=False,
                            channels_last=False)
    assert nothing == {"inputs": None, "weights": None} and said == []


def test_report_of_weight_errors_and_of_a_model_without_binarized_parts():
    said, logger = [], Logger()
    found = report_losses(_binary_weights(), _loader(), CPU, logger, 3, said.append, inputs=True, weights=True,
                          channels_last=False)
    assert found["inputs"] == [] and [r["index"] for r in found["weights"]] == [1, 2]
    assert said[0] == "input binarization errors: no conv of this model has a binarized input"
    assert said[1].startswith("weight binarization losses") and len(said) == 4
    assert logger.files == {"weight_binarization_losses.json": found["weights"]}
    assert logger.scalars_at[3] == {"weight_binarization_rmse/conv01": found["weights"][0]["rmse"],
                                    "weight_binarization_rmse/conv02": found["weights"][1]["rmse"]}

    said.clear()
    real = nn.Sequential(nn.Conv2d(3, 2, 3)).eval()
    found = report_losses(real, _loader(), CPU, Logger(), 0, said.append, inputs=False, weights=True,
                          channels_last=False)
    assert found["weights"] == [] and said == ["weight binarization losses: no binarized conv (pass --binaryWeight)"]


def test_report_takes_no_namespace():
    """The flags come as keyword values: the old call with the parsed flags first no longer binds."""
    with pytest.raises(TypeError):
        report_losses(object(), _two_signs(), _loader(), CPU, None, 0, print)
