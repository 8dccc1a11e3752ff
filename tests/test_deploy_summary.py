"""Tests of deploy.summary: the bit-aware per-layer table (bits stored, bytes, MACs by kind) against values
computed by hand, and ``main.py --summary``."""

import torch
from torch import nn

import binarize
import models
from deploy.summary import count_macs, format_summary, summarize


def build(name, method, num_classes=250, bin_range=None, seed=0):
    torch.manual_seed(seed)
    info = models.model_info(name)
    model = models.build_model(name, num_classes, info.default_in_channels)
    binarize.binarize_weights(model, *(bin_range or info.bin_range), method)
    return model.eval()


def test_count_macs_by_hand_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=4),
                          nn.Flatten(), nn.Linear(8 * 5 * 5, 7))
    binarize.binarize_layer(model[1], "dab")
    latent = model[1].parametrizations.weight.original.clone()
    macs = count_macs(model, inpsize=10, in_channels=3)
    # 10x10 -> 5x5 at stride 2; the grouped conv sees 2 input channels per filter
    assert macs == {"0": 5 * 5 * 8 * 3 * 9, "1": 5 * 5 * 8 * 2 * 9, "3": 200 * 7}
    assert torch.equal(model[1].parametrizations.weight.original, latent)


# Sketch-A-Net, 250 classes, 225 x 225, DAB on convs 2..7, computed by hand from its layer table: spatial
# outputs 71, 31, 15, 15, 15, 1, 1, 1; wbin has no bias on convs 2..7.
# (index, 1-bit params, 32-bit params, bytes, MACs, MAC kind)
SKETCHANET_TABLE = [
    (1, 0, 64 * 15 * 15 + 64, 57_856, 71 * 71 * 64 * 225, "fp"),            # 72,590,400
    (2, 128 * 64 * 25, 2 * 128, 25_600 + 1_024, 31 * 31 * 128 * 1_600, "w1"),  # 196,812,800
    (3, 256 * 128 * 9, 2 * 256, 36_864 + 2_048, 15 * 15 * 256 * 1_152, "w1"),
    (4, 256 * 256 * 9, 2 * 256, 73_728 + 2_048, 15 * 15 * 256 * 2_304, "w1"),
    (5, 256 * 256 * 9, 2 * 256, 73_728 + 2_048, 15 * 15 * 256 * 2_304, "w1"),
    (6, 512 * 256 * 49, 2 * 512, 802_816 + 4_096, 512 * 12_544, "w1"),
    (7, 512 * 512, 2 * 512, 32_768 + 4_096, 512 * 512, "w1"),
    (8, 0, 512 * 250 + 250, 513_000, 512 * 250, "fp"),
]


def test_summary_of_sketchanet_matches_hand_computed_table():
    model = build("sketchanetwbin", "dab")
    latent = {n: c.parametrizations.weight.original.clone() for _, n, c, _ in binarize.binarized_layers(model)}
    summary = summarize(model, 225, 1)
    rows = summary["rows"]
    convs = [r for r in rows if r["kind"] == "conv"]
    got = [(r["index"], r["bits"], r["fp32"], r["bytes"], r["macs"], r["mac_kind"]) for r in convs]
    assert got == SKETCHANET_TABLE
    assert [r["weights"] for r in convs] == ["fp"] + ["dab"] * 6 + ["fp"]
    assert not any(r["binary_input"] for r in convs)
    (bn,) = [r for r in rows if r["kind"] == "bn"]
    assert bn["fp32"] == 2 * (64 + 128 + 3 * 256 + 2 * 512) == 3_968
    t = summary["totals"]
    assert t["params"] == 8_510_714  # Sketch-A-Net's published parameter count at 250 classes
    assert t["binarized_params"] == 8_364_032
    assert t["fp32_bytes"] == 34_042_856
    assert t["bytes"] == 1_045_504 + 4 * (146_682 + 3_840) == 1_647_592  # about 1.64 MB
    assert round(t["ratio"], 1) == 20.7
    assert t["macs"] == 607_991_872
    assert t["weight_binary_macs"] == 535_273_472 and t["binary_macs"] == 0
    for n, c in ((n, c) for _, n, c, _ in binarize.binarized_layers(model)):
        assert torch.equal(c.parametrizations.weight.original, latent[n])  # summarize changed nothing
    text = format_summary(summary, title="t")
    assert text.splitlines()[0] == "t"
    assert "1,647,592" in text and "20.66x" in text and "535,273,472 (88.0%)" in text


def test_summary_counts_fully_binary_macs_and_scales_per_method():
    for method, scales in (("dab", 2), ("xnor", 1), ("bnn", 0)):
        t = summarize(build("sketchanetfbin", method), 225, 1)["totals"]
        assert t["scale_params"] == scales * (128 + 256 * 3 + 512 * 2)
        assert t["binary_macs"] == t["weight_binary_macs"] == 535_273_472
        assert t["binary_share"] == t["weight_binary_share"] == 535_273_472 / t["macs"]


def test_main_summary_prints_table(capsys):
    import main
    argv = ["--summary", "--dataset", "tuberlin", "--model_def", "sketchanetwbin", "--nClasses", "250",
            "--inpsize", "225", "--binaryWeight", "--binStart", "2", "--binEnd", "7", "--binarizer", "dab"]
    assert main.main(argv) == 0
    out = capsys.readouterr().out
    assert "features.conv6.conv" in out and "512x256x7x7" in out
    assert "1,647,592 bytes" in out and "20.66x" in out and "535,273,472 (88.0%)" in out
