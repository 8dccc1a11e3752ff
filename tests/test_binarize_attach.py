"""Tests of binarize/attach.py: choosing the layers to binarize, attaching weight and activation binarizers,
the projection on attachment, state dicts and copies, the per-layer statistics and the EDE setting."""

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import binarize
import models
from binarize import (ASD, DAB, EDE, XNOR, BinActive, DABActive, Sign, binarize_inputs, binarize_layer,
                      binarize_weights, binary_sign, binarized_layers, conv_layers, dab, filter_stats, format_indices,
                      input_binarizers, layer_stats, parse_indices, project_latent_, resolve_layers, set_ede,
                      set_input_binarizer, weight_binarizer)
from deploy.export import export_model, load_export
from deploy.summary import summarize


def make_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 8, 3), nn.Conv2d(8, 8, 1)),
                         nn.Conv2d(8, 3, 1))


# ---------------------------------------------------------------- which layers

def test_range_selection_is_inclusive_one_based_and_clipped():
    model = make_net()
    assert [i for i, _, _ in conv_layers(model)] == [1, 2, 3, 4]
    assert binarize_weights(model, 2, 3) == [2, 3]
    assert [i for i, *_ in binarized_layers(model)] == [2, 3]
    model = make_net()
    assert binarize_weights(model, 2, 100) == [2, 3, 4]
    model = make_net()
    assert binarize_weights(model, 4, 4, method="xnor") == [4]
    assert isinstance(weight_binarizer(model[3]), XNOR) and weight_binarizer(model[0]) is None


@pytest.mark.parametrize("start,end", [(0, 3), (3, 2), (5, 9), (-1, 2)])
def test_invalid_ranges_raise_with_the_valid_range(start, end):
    model = make_net()
    with pytest.raises(ValueError, match=r"has 4 convs.*binStart <= 4"):
        binarize_weights(model, start, end)
    assert not binarized_layers(model)


def test_unknown_method_and_double_binarization_raise_and_change_nothing():
    model = make_net()
    with pytest.raises(ValueError, match="unknown weight binarizer"):
        binarize_weights(model, 1, 2, method="ternary")
    assert not binarized_layers(model)
    binarize_weights(model, 1, 2)
    with pytest.raises(ValueError, match="already binarized"):
        binarize_weights(model, 2, 3)
    assert [i for i, *_ in binarized_layers(model)] == [1, 2]     # conv 3 was left alone
    with pytest.raises(ValueError, match="only nn.Conv2d and nn.Linear"):
        binarize_layer(nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="no nn.Conv2d layers"):
        binarize_weights(nn.Sequential(nn.Linear(2, 2)), 1, 1)


def test_indices_parse_format_and_resolve():
    assert parse_indices("2-5, 7,3") == [2, 3, 4, 5, 7] and parse_indices("none") == [] == parse_indices(" ")
    assert format_indices([7, 2, 3, 4]) == "2-4,7" and format_indices([]) == "none"
    assert parse_indices(format_indices([1, 3, 4, 5, 9])) == [1, 3, 4, 5, 9]
    with pytest.raises(ValueError, match="empty range"):
        parse_indices("5-3")
    assert resolve_layers(4, {3, 1}) == [1, 3]
    with pytest.raises(ValueError, match=r"\[0, 5\] do not exist: this model has convs 1..4"):
        resolve_layers(4, [0, 2, 5])


def test_a_weight_binarizer_per_conv():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3), nn.Conv2d(8, 4, 1))
    assert binarize_weights(model, layers={1: "xnor", 2: "dab", 3: "sign"}) == [1, 2, 3]
    kinds = [type(b) for *_, b in binarized_layers(model)]
    assert kinds == [XNOR, DAB, Sign]
    x = torch.randn(2, 3, 9, 9)
    latents = [m.parametrizations.weight.original.detach() for m in model]
    expected = x
    for conv, latent, solve in zip(model, latents, (binarize.xnor, dab, binarize.bnn)):
        expected = F.conv2d(expected, solve(latent)[0], conv.bias)
    assert torch.allclose(model(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="unknown weight binarizer 'nope'"):
        binarize_weights(nn.Sequential(nn.Conv2d(3, 3, 1)), layers={1: "nope"})


def test_an_activation_binarizer_per_conv():
    model = models.build_model("sketchanetfbin", 5)
    set_input_binarizer(model, 3, "dab")
    set_input_binarizer(model, 5, "asd", reduction=4)
    kinds = {index: type(b) for index, *_, b in input_binarizers(model)}
    assert kinds == {2: BinActive, 3: DABActive, 4: BinActive, 5: ASD, 6: BinActive, 7: BinActive}
    assert model(torch.randn(2, 1, 225, 225)).shape == (2, 5)
    with pytest.raises(ValueError, match="conv 8 has no binarized input"):
        set_input_binarizer(model, 8, "sign")
    with pytest.raises(ValueError, match=r"convs \[9\] do not exist: this model has convs 1..8"):
        binarize_inputs(model, "sign", [2, 9])
    with pytest.raises(ValueError, match="unknown activation binarizer"):
        binarize_inputs(model, "ternary", [1, 2])
    assert [index for index, *_ in input_binarizers(model)] == [2, 3, 4, 5, 6, 7]  # the refusals changed nothing
    assert binarize_inputs(model, "approxsign", backward=None) == [2, 3, 4, 5, 6, 7]
    assert {type(b).__name__ for *_, b in input_binarizers(model)} == {"ApproxSign"}


def test_binarize_inputs_inserts_an_activation_binarizer_in_front_of_the_convs_of_any_model():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.Conv2d(5, 3, 1))
    x = torch.randn(3, 2, 8, 8)
    assert binarize_inputs(model, "sign") == []  # no binarized input yet: nothing to replace
    assert binarize_inputs(model, "sign", [2, 3]) == [2, 3]
    assert [(i, name) for i, name, *_ in input_binarizers(model)] == [(2, "2"), (3, "3")]
    first = torch.relu(F.conv2d(x, model[0].weight, model[0].bias))
    second = F.conv2d(binary_sign(first), model[2].weight, model[2].bias, padding=1)
    assert torch.equal(model(x), F.conv2d(binary_sign(second), model[3].weight, model[3].bias))
    assert set(model.state_dict()) == {f"{i}.{p}" for i in (0, 2, 3) for p in ("weight", "bias")}  # names kept
    # asked again, the inserted binarizer is replaced, not stacked
    assert binarize_inputs(model, "dab", [3]) == [3] and isinstance(model[3].input_binarizer, DABActive)
    assert [type(b) for *_, b in input_binarizers(model)] == [BinActive, DABActive]


def test_a_torchvision_resnet_gets_binarized_inputs_that_train_copy_and_save():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(8)
    model = torchvision.models.resnet18(num_classes=3)
    assert binarize_inputs(model, "sign") == []
    assert binarize_inputs(model, "asd", [2, 3], backward="approxsign") == [2, 3]
    rows = input_binarizers(model)
    assert [(i, name) for i, name, *_ in rows] == [(2, "layer1.0.conv1"), (3, "layer1.0.conv2")]
    assert all(isinstance(b, ASD) and b.surrogate.name == "approxsign" and b.channels == 64 for *_, b in rows)
    x = torch.randn(2, 3, 32, 32)
    model(x).sum().backward()
    asd = model.layer1[0].conv1.input_binarizer
    assert asd.fc1.weight.grad is not None and asd.fc1.weight.grad.abs().sum() > 0  # it trains with the model
    model.eval()
    out = model(x)
    assert torch.equal(copy.deepcopy(model)(x), out)
    rebuilt = torchvision.models.resnet18(num_classes=3)
    binarize_inputs(rebuilt, "asd", [2, 3])
    rebuilt.load_state_dict(model.state_dict())  # strict: the same keys, the binarizers' included
    assert "layer1.0.conv1.input_binarizer.fc1.weight" in model.state_dict()
    assert torch.equal(rebuilt.eval()(x), out)


def test_linear_layers_binarize_through_the_same_parametrization(tmp_path):
    torch.manual_seed(3)
    model = models.build_model("resnet20_fp", 4, 1)
    binarize_weights(model, layers=models.model_info("resnet20_1w1a").bin_layers, method="dab")
    fc = binarize_layer(model.fc, "dab")
    rows = model.fc.weight.detach()
    assert all(len(torch.unique(r)) <= 2 for r in rows)
    assert [(i, n) for i, n, *_ in binarized_layers(model)][-1] == (None, "fc")
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


# ---------------------------------------------------------------- projection, state dicts, copies

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


def test_a_deep_copy_has_its_own_latents_and_the_same_outputs():
    torch.manual_seed(6)
    model = make_net()
    binarize_weights(model, 2, 4)
    x = torch.randn(2, 1, 9, 9)
    out = model(x)
    copied = copy.deepcopy(model)
    assert torch.allclose(copied(x), out)
    assert copied[2][0].parametrizations.weight.original is not model[2][0].parametrizations.weight.original


# ---------------------------------------------------------------- statistics and settings

def test_training_step_updates_latent_and_stats_are_readable():
    torch.manual_seed(7)
    model = make_net()
    binarize_weights(model, 2, 4)
    assert filter_stats(model) == [] and all(s["k_frac"] == 0.0 for s in layer_stats(model))  # nothing run yet
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 1, 9, 9)
    model(x).square().mean().backward()
    before = model[2][0].parametrizations.weight.original.detach().clone()
    opt.step()
    assert not torch.equal(before, model[2][0].parametrizations.weight.original)
    model(x)   # solves the projected latents of after the step
    w = model[3].parametrizations.weight.original.detach()
    _, alpha, beta, k = dab(w)
    last = layer_stats(model)[2]
    assert [s["index"] for s in layer_stats(model)] == [2, 3, 4]
    assert last["k_frac"] == pytest.approx(k.float().mean().item() / w[0].numel())
    assert last["alpha"] == pytest.approx(alpha.mean().item()) and last["beta"] == pytest.approx(beta.mean().item())
    per_filter = filter_stats(model)[2]
    assert per_filter["n"] == 8 and torch.equal(per_filter["k"], k) and torch.equal(per_filter["alpha"], alpha)


def test_set_ede_reaches_every_binarizer_that_uses_it():
    model = models.build_model("sketchanetfbin", 5)
    binarize_inputs(model, "sign", [2, 3], backward="ede")
    binarize_weights(model, layers=[2, 3, 4], backward="ede")
    assert set_ede(model, 3.0, 0.5) == 5
    ede = [m.surrogate for m in model.modules() if isinstance(getattr(m, "surrogate", None), EDE)]
    assert len(ede) == 5 and all((s.t, s.k) == (3.0, 0.5) for s in ede)


def test_sdbnn_preset_and_parts_compose():
    import opts
    from launch import build
    args = opts.parse(["--model_def", "resnet20_1w1a", "--binarizer", "sdbnn"])
    assert (args.binarizer, args.weightShift, args.binActivation, args.backward) == ("sign", "wsd", "asd", "ede")
    args = opts.parse(["--model_def", "resnet20_1w1a", "--binarizer", "dab", "--binActivation", "asd",
                       "--backward", "ede"])
    model = build.build_network(args, 10, 1)
    weights = [b for *_, b in binarized_layers(model)]
    acts = [b for *_, b in input_binarizers(model)]
    assert len(weights) == 18 and all(isinstance(b, DAB) and b.surrogate.name == "ede" for b in weights)
    assert len(acts) == 18 and all(isinstance(b, ASD) and b.surrogate.name == "ede" for b in acts)
    assert acts[0].reduction == 16
