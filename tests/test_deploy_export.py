"""Tests of deploy.export: the 1-bit .safetensors export format (writing, verifying, rebuilding a model
from the file alone, loading into a model built from flags), and ``main.py --export`` /
``--pretrained_file X.safetensors``."""

import math
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load, save_file
from torch.nn.utils import parametrize

import binarize
import models
from deploy.export import (DABInferenceConv2d, ExportError, __version__, export_model, layer_code, load_export,
                           load_export_into, pack_bits, read_export, unpack_bits)
from tinydata import split_tree
from utils.checkpoint import atomic_save

# (model_def, binarizer, bin range or None for the family's, input size or None for the smallest valid one)
CASES = [
    # AlexNet's convs 6-8 hold 50M weights whose DAB solve alone takes ~15 s on 2 CPU cores: convs 2..5 only.
    ("alexnetwbin", "dab", (2, 5), None), ("alexnetfbin", "xnor", (2, 5), None),
    ("sketchanetwbin", "dab", None, None), ("sketchanetfbin", "bnn", None, None),
    ("resnetwbin18", "xnor", None, None), ("resnetfbin18", "dab", None, None),
    ("googlenetwbin", "bnn", None, None), ("googlenetfbin", "dab", None, None),
    ("squeezenetwbin", "dab", None, None), ("squeezenetfbin", "xnor", None, None),
    ("bincifar", "dab", None, None), ("bincifarfbin", "dab", None, None),
    ("nin", "dab", None, None), ("densenet", "xnor", None, None), ("mobilenet", "dab", None, None),
    ("vgg16_bncifar", "bnn", None, None),
]


def config_of(name, method, bin_range=None, inpsize=None, num_classes=5, activation="sign"):
    info = models.model_info(name)
    start, end = bin_range or info.bin_range
    return dict(model_def=name, num_classes=num_classes, in_channels=info.default_in_channels,
                inpsize=inpsize or info.min_inpsize, binStart=start, binEnd=end, binaryWeight=True,
                binarizer=method, binActivation=activation)


def build(config, seed=0):
    torch.manual_seed(seed)
    model = models.build_model(config["model_def"], config["num_classes"], config["in_channels"])
    if config["binActivation"] != "sign":
        binarize.binarize_inputs(model, config["binActivation"])
    binarize.binarize_weights(model, config["binStart"], config["binEnd"], config["binarizer"])
    return model.eval()


def reference_and_export(model, config, path, x):
    """Outputs of the binarized model and its export, with one DAB solve per layer."""
    with torch.no_grad(), parametrize.cached():
        ref = model(x)
        report = export_model(model, path, config)
    return ref, report


def sample(config, batch=1, seed=1):
    g = torch.Generator().manual_seed(seed)
    size = config["inpsize"]
    return torch.randn(batch, config["in_channels"], size, size, generator=g)


LARGEST = ("alexnet", "googlenet", "resnet")  # ImageNet-size families: several seconds each on 2 cores


def case_params():
    for case in CASES:
        marks = [pytest.mark.slow] if case[0].startswith(LARGEST) else []
        yield pytest.param(*case, marks=marks, id=f"{case[0]}-{case[1]}")


@pytest.mark.parametrize("name,method,bin_range,inpsize", case_params())
@pytest.mark.slow
def test_export_reload_reproduces_outputs_and_packs_one_bit(name, method, bin_range, inpsize, tmp_path):
    config = config_of(name, method, bin_range, inpsize)
    model = build(config)
    x = sample(config)
    path = str(tmp_path / "m.safetensors")
    ref, report = reference_and_export(model, config, path, x)

    rebuilt, meta = load_export(path)
    with torch.no_grad():
        out = rebuilt(x)
    assert (out - ref).abs().max().item() <= 1e-5
    assert meta["dabnet_version"] == __version__
    assert {k: meta[k] for k in config} == config

    tensors, _, layers = read_export(path)
    binarized = binarize.binarized_layers(model)
    assert sorted(layers) == sorted(n for _, n, _, _ in binarized)
    for _, lname, conv, _ in binarized:
        n = math.prod(conv.parametrizations.weight.original.shape)
        assert tensors[f"{lname}.weight.bits"].numel() == (n + 7) // 8
        assert tensors[f"{lname}.weight.bits"].dtype == torch.uint8
    assert report["bytes"] == os.path.getsize(path)
    assert report["ratio"] == pytest.approx(report["fp32_bytes"] / report["bytes"])


def test_export_keeps_activation_binarizer_and_loads_into_a_binarized_model(tmp_path):
    config = config_of("nin", "dab", activation="dab")
    model = build(config)
    x = sample(config)
    path = str(tmp_path / "m.safetensors")
    ref, _ = reference_and_export(model, config, path, x)

    rebuilt, _ = load_export(path)
    assert any(isinstance(m, binarize.DABActive) for m in rebuilt.modules())
    target = build(config, seed=5)  # other weights, same flags: what main.py --pretrained_file builds
    load_export_into(target, path)
    assert binarize.binarized_layers(target) == []  # fixed decoded weights: exact, not re-solved
    with torch.no_grad():
        assert torch.equal(rebuilt(x), ref)
        assert torch.equal(target.eval()(x), ref)


def test_load_export_into_keep_latent_stays_binarized_with_projected_latents(tmp_path):
    config = config_of("densenet", "dab")
    model = build(config)
    x = sample(config)
    path = str(tmp_path / "m.safetensors")
    ref, _ = reference_and_export(model, config, path, x)
    target = build(config, seed=5)
    load_export_into(target, path, keep_latent=True)
    layers = binarize.binarized_layers(target)
    assert len(layers) == 6
    # each latent is the decoded code, projected as every training step leaves a latent (centred over the
    # input channels, clamped): fine-tuning starts at rest, not from a latent no step could have left
    decoded = dict(load_export(path)[0].named_modules())
    for _, name, conv, binarizer in layers:
        expected = decoded[name].weight.detach().clone()
        binarizer.project_(expected)
        assert torch.equal(conv.parametrizations.weight.original, expected)
        assert not torch.equal(expected, decoded[name].weight)  # a DAB code is not at rest: projection moved it


def test_load_export_into_refuses_another_configuration(tmp_path):
    config = config_of("densenet", "dab")
    model = build(config)
    path = str(tmp_path / "m.safetensors")
    reference_and_export(model, config, path, sample(config))
    wider = build(dict(config, binStart=1))
    with pytest.raises(ExportError, match="binarized here but full precision in the export"):
        load_export_into(wider, path)
    other_method = build(dict(config, binarizer="xnor"))
    with pytest.raises(ExportError, match="pass --binarizer dab"):
        load_export_into(other_method, path)
    other_classes = build(dict(config, num_classes=7))
    with pytest.raises(ExportError, match="does not fit this model"):
        load_export_into(other_classes, path)


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    config = config_of("densenet", "dab")
    path = str(tmp_path_factory.mktemp("export") / "densenet.safetensors")
    model = build(config)
    reference_and_export(model, config, path, sample(config))
    with open(path, "rb") as f:
        return f.read()


def flip_last_byte(data):
    return data[:-1] + bytes([data[-1] ^ 0x01])


def edit_header(data):
    return data.replace(b'"num_classes":"5"', b'"num_classes":"6"', 1)


@pytest.mark.parametrize("damage,message", [
    (lambda d: d[: len(d) // 2], "truncated or not a safetensors file"),
    (lambda d: d[:-1], "truncated or not a safetensors file"),
    (lambda d: d[:6], "truncated or not a safetensors file"),
    (flip_last_byte, "fails its sha256 check"),
    (edit_header, "fails its sha256 check"),
], ids=["half", "last-byte-missing", "header-cut", "tensor-bit-flipped", "header-edited"])
def test_damaged_export_is_refused_with_one_line(small_export, damage, message, tmp_path):
    damaged = damage(small_export)
    assert damaged != small_export
    path = tmp_path / "bad.safetensors"
    path.write_bytes(damaged)
    with pytest.raises(ExportError, match=message) as info:
        load_export(str(path))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("edit", ["shorten", "flip"])
def test_rewritten_mask_is_refused(small_export, edit, tmp_path):
    """A well-formed safetensors file whose mask bytes were changed after export (header kept) is refused."""
    path = tmp_path / "good.safetensors"
    path.write_bytes(small_export)
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata()
    tensors = load(small_export)
    key = next(k for k in tensors if k.endswith(".weight.bits"))
    tensors[key] = tensors[key][:-1].clone() if edit == "shorten" else tensors[key] ^ 1
    save_file(tensors, str(tmp_path / "edited.safetensors"), metadata=header)
    with pytest.raises(ExportError, match="fails its sha256 check") as info:
        read_export(str(tmp_path / "edited.safetensors"))
    assert "\n" not in str(info.value)


def test_foreign_safetensors_and_missing_file_are_refused(tmp_path):
    save_file({"w": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ExportError, match="not a dabnet export"):
        read_export(str(tmp_path / "other.safetensors"))
    with pytest.raises(ExportError, match="does not exist"):
        read_export(str(tmp_path / "none.safetensors"))


def test_layer_code_and_read_contents_rebuild_the_same_model(small_export, tmp_path):
    path = str(tmp_path / "m.safetensors")
    with open(path, "wb") as f:
        f.write(small_export)
    contents = read_export(path)
    tensors, config, layers = contents
    assert config["model_def"] == "densenet" and len(layers) == 6
    from_file, _ = load_export(path)
    from_contents, _ = load_export(path, contents=contents)
    modules = dict(from_file.named_modules())
    for name, layer in layers.items():
        mask, alpha, beta = layer_code(tensors, name, layer)
        weight = modules[name].weight
        assert mask.dtype == torch.bool and mask.shape == weight.shape and 0 < mask.sum() < mask.numel()
        per_filter = (-1,) + (1,) * (weight.dim() - 1)
        assert torch.equal(torch.where(mask, alpha.view(per_filter), beta.view(per_filter)), weight)
    file_state, contents_state = from_file.state_dict(), from_contents.state_dict()
    assert file_state.keys() == contents_state.keys()
    assert all(torch.equal(file_state[k], contents_state[k]) for k in file_state)


@pytest.mark.parametrize("count", [1, 7, 8, 9, 1000])
def test_pack_bits_round_trip_and_size(count):
    mask = torch.rand(count, generator=torch.Generator().manual_seed(count)) > 0.5
    packed = pack_bits(mask)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(count / 8)
    assert torch.equal(unpack_bits(packed, count), mask)


@pytest.mark.parametrize("c_in,c_out,kernel,stride,padding,dilation,groups,bias", [
    (3, 8, 3, 1, 1, 1, 1, False), (6, 4, 5, 2, 2, 1, 2, True), (8, 8, 3, 1, 2, 2, 8, False),
    (16, 12, (3, 1), (2, 1), 0, 1, 4, True), (5, 7, 1, 1, 0, 1, 1, True),
])
def test_dab_inference_form_equals_dense_form(c_in, c_out, kernel, stride, padding, dilation, groups, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(c_in, c_out, kernel, stride, padding, dilation, groups, bias).double()
    w_hat, alpha, beta, k = binarize.dab(conv.weight.detach())
    mask = w_hat == alpha.view(-1, 1, 1, 1)
    assert torch.equal(mask.flatten(1).sum(1), k)
    factored = DABInferenceConv2d.from_conv(conv, mask, alpha, beta)
    assert torch.equal(factored.dense_weight(), w_hat)
    x = torch.randn(2, c_in, 11, 9, dtype=torch.float64)
    dense = torch.nn.functional.conv2d(x, w_hat, conv.bias, stride, padding, dilation, groups)
    torch.testing.assert_close(factored(x), dense, rtol=1e-12, atol=1e-12)
    # fp32 on sign-binarized input, where conv(x, e) only counts: agrees with the dense form to rounding
    signs = torch.sign(x).float()
    conv = conv.float()
    factored32 = DABInferenceConv2d.from_conv(conv, mask, alpha.float(), beta.float())
    dense32 = torch.nn.functional.conv2d(signs, w_hat.float(), conv.bias, stride, padding, dilation, groups)
    torch.testing.assert_close(factored32(signs), dense32, rtol=1e-5, atol=1e-5)


def test_load_export_inference_form_matches_dense_model(tmp_path):
    # MobileNet: real-valued inputs (a sign after a factored conv could flip on rounding) and depthwise convs
    config = config_of("mobilenet", "dab", num_classes=3)
    model = build(config)
    x = sample(config)
    path = str(tmp_path / "m.safetensors")
    ref, _ = reference_and_export(model, config, path, x)
    factored, _ = load_export(path, inference_form=True)
    assert sum(isinstance(m, DABInferenceConv2d) for m in factored.modules()) == 26
    with torch.no_grad():
        out = factored(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def save_checkpoint(model, config, path):
    args = {k: config[k] for k in ("model_def", "binaryWeight", "binStart", "binEnd", "binarizer", "binActivation",
                                   "inpsize")}
    atomic_save(dict(epoch=1, model=model.state_dict(), optimizer={}, best_acc1=0.0, args=args,
                     num_classes=config["num_classes"], in_channels=config["in_channels"]), path)


def test_main_export_of_sketchanetwbin_is_over_20x_smaller(tmp_path, capsys):
    import main
    config = config_of("sketchanetwbin", "dab", num_classes=250, inpsize=225)
    model = build(config)
    x = sample(config)
    with torch.no_grad():
        ref = model(x)  # projects the latent weights, as training does before a checkpoint is written
    save_checkpoint(model, config, str(tmp_path / "last.pth"))
    out = str(tmp_path / "sketchanet.safetensors")
    assert main.main(["--export", out, "--resume", str(tmp_path / "last.pth")]) == 0
    printed = capsys.readouterr().out
    assert "smaller than the fp32 state_dict" in printed
    fp32_bytes = 8_510_714 * 4 + 2 * 1_984 * 4 + 7 * 8  # parameters + BN running mean/var + batch counters
    ratio = fp32_bytes / os.path.getsize(out)
    assert ratio >= 20
    rebuilt, meta = load_export(out)
    assert meta["model_def"] == "sketchanetwbin" and meta["num_classes"] == 250 and meta["binLayers"] == [2, 3, 4, 5, 6, 7]
    with torch.no_grad():
        assert (rebuilt(x) - ref).abs().max().item() <= 1e-5


def test_main_evaluates_an_export_like_its_checkpoint(tmp_path, capsys):
    import main
    data = str(split_tree(tmp_path / "data", ["alarm clock", "bear"], train_per_class=1, val_per_class=2,
                          subdir="tuberlin"))
    # convs 2..5 only: conv 6's 6.4M weights would be solved four times for nothing
    config = config_of("sketchanetwbin", "dab", (2, 5), num_classes=2, inpsize=225)
    model = build(config)
    with torch.no_grad():
        model(sample(config, batch=1))
    save_checkpoint(model, config, str(tmp_path / "last.pth"))
    export = str(tmp_path / "m.safetensors")
    assert main.main(["--export", export, "--resume", str(tmp_path / "last.pth")]) == 0
    common = ["--evaluate", "--dataset", "tuberlin", "--data_dir", data, "--model_def", "sketchanetwbin",
              "--workers", "0", "--testbatchsize", "4", "--binStart", "2", "--binEnd", "5"]
    capsys.readouterr()
    assert main.main(common + ["--resume", str(tmp_path / "last.pth")]) == 0
    from_checkpoint = [line for line in capsys.readouterr().out.splitlines() if line.startswith("val:")]
    assert main.main(common + ["--pretrained_file", export]) == 0
    from_export = [line for line in capsys.readouterr().out.splitlines() if line.startswith("val:")]
    assert from_checkpoint and from_export == from_checkpoint

    with open(export, "r+b") as f:  # a damaged export: one line on stderr, exit status 2
        f.truncate(os.path.getsize(export) - 100)
    assert main.main(common + ["--pretrained_file", export]) == 2
    err = capsys.readouterr().err.strip()
    assert "truncated" in err and len(err.splitlines()) == 1
