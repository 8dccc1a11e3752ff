"""Tests of analysis.figures: the figure registry (every registered figure is drawn here, as it is) and
the figures of the paper's poster."""

import json
import os
import statistics

import numpy as np
import pytest
from matplotlib.figure import Figure

from analysis import figures, report as rp
from analysis.runs import RunError, read_json, run_file
from test_analysis_report import assert_png, make_run_tree, write_run

REGISTERED = [figure.name for figure in figures.figures()]


@pytest.fixture
def run_tree(tmp_path):
    """The synthetic runs of test_analysis_report.make_run_tree, in the test's own folder."""
    return make_run_tree(tmp_path)


def _outputs(result, out, figure):
    """The files ``figure`` wrote, relative to ``out``."""
    return sorted(os.path.relpath(p, out).replace(os.sep, "/") for p in result["written"]
                  if os.path.basename(p) == figure.output)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """The report of make_run_tree's runs: ``(out folder, result)``."""
    tmp = tmp_path_factory.mktemp("rendered")
    logs, _, _ = make_run_tree(tmp)
    return tmp / "out", rp.report([logs], tmp / "out")


@pytest.mark.parametrize("name", REGISTERED)
def test_every_registered_figure_renders(rendered, name):
    """Each figure draws from the synthetic runs (which log every file main.py writes), only for the runs
    holding a file it reads, as 600 x 400 PNGs with a drawing on them."""
    out, result = rendered
    figure = {f.name: f for f in figures.figures()}[name]
    written = _outputs(result, out, figure)
    assert written, f"{figure.output} was drawn for no run: write the log files it reads ({figure.reads}) in " \
                    f"test_analysis_report.write_run"
    if figure.per_run:
        wanted = {run["out_name"] for run in result["runs"] if figure.wants(run)}
        assert {path.split("/")[0] for path in written} <= wanted
    else:
        assert written == [figure.output]
    for path in written:
        assert_png(out / path)


def test_dab_figures_only_for_dab_runs(rendered):
    out, result = rendered
    expected = {"curves_val_top1.png", "curves_train_loss.png"}
    for name in ("digits_wbin_dab_s1", "digits_wbin_dab_s2"):  # DAB runs with filters/
        expected |= {f"{name}/{f}" for f in ("alpha_beta.png", "k_over_training.png", "k_across_layers.png")}
    expected.add("digits_wbin_dab_s1/binarization_rmse.png")
    pngs = {os.path.relpath(p, out).replace(os.sep, "/") for p in result["written"] if p.endswith(".png")}
    assert pngs == expected  # no filter figures for XNOR, none for the runs without filters/
    found = {os.path.relpath(os.path.join(d, f), out).replace(os.sep, "/")
             for d, _, files in os.walk(out) for f in files if f.endswith(".png")}
    assert found == expected
    assert "(digits_wbin_dab_s1/alpha_beta.png)" in (out / "results.md").read_text()


def test_corrupt_filters_keep_the_run(run_tree, tmp_path):
    logs, _, made = run_tree
    (made["xnor"] / "filters" / "layers.json").write_text(json.dumps(
        [{"tag": "conv02", "index": 2, "name": "c", "method": "dab", "n": 16, "filters": 8}]))
    (made["xnor"] / "filters" / "epoch_0002.npz").write_bytes(b"PK\x03\x04 truncated")
    result = rp.report([logs], tmp_path / "out")
    assert "digits_wbin_xnor" in {run["run"] for run in result["runs"]}
    reasons = [s["reason"] for s in result["skipped"] if os.path.basename(s["path"]) == "digits_wbin_xnor"]
    assert len(reasons) == 1  # one entry per reason, naming every figure it kept out
    assert reasons[0].startswith("alpha_beta.png, k_over_training.png, k_across_layers.png skipped (run kept in "
                                 "the tables)") and "epoch_0002.npz" in reasons[0]
    assert not (tmp_path / "out" / "digits_wbin_xnor").exists()
    assert "digits_wbin_xnor`: alpha_beta.png" in (tmp_path / "out" / "results.md").read_text()


@pytest.fixture
def toy_figures():
    """A per-run toy figure reading a log file no other figure reads, and a report-wide one; removed after."""
    names = []

    @figures.register_figure("toy_steps", reads=("toy_log.json",))
    def toy_steps(run):
        values = read_json(run_file(run, "toy_log.json"), "toy_log.json")
        if not isinstance(values, list):
            raise RunError("corrupt toy_log.json: not a list")
        fig, ax = figures.new_figure(f"{run['out_name']}: toy", "step", "value")
        ax.plot(values, "o-", label="toy")
        ax.legend()
        return fig
    names.append("toy_steps")

    @figures.register_figure("toy_summary", reads="toy_log.json", output="toy_all.png", per_run=False)
    def toy_summary(runs):
        fig = Figure()  # a figure of any size is saved at 600 x 400
        ax = fig.add_subplot()
        ax.bar(range(len(runs)), [len(read_json(run_file(r, "toy_log.json"), "toy")) for r in runs], color="C3")
        ax.set_title(", ".join(run["run"] for run in runs))
        return fig
    names.append("toy_summary")
    try:
        yield names
    finally:
        for name in names:
            figures.unregister_figure(name)


def test_a_registered_toy_figure_is_drawn_and_removed(toy_figures, tmp_path):
    logs = tmp_path / "logs"
    toy = write_run(logs, "toy_run", filters=False)
    (toy / "toy_log.json").write_text(json.dumps(np.sin(np.linspace(0, 6, 30)).tolist()))
    write_run(logs, "plain_run", filters=False)
    out = tmp_path / "out"
    result = rp.report([logs], out)
    assert [f.name for f in figures.figures()][-2:] == toy_figures
    assert os.path.join(str(out), "toy_run", "toy_steps.png") in result["written"]
    assert_png(out / "toy_run" / "toy_steps.png")
    assert_png(out / "toy_all.png")
    assert not (out / "plain_run").exists()  # it logged no toy_log.json
    md = (out / "results.md").read_text()
    assert "(toy_run/toy_steps.png)" in md and "(toy_all.png)" in md

    (toy / "toy_log.json").write_text(json.dumps({"not": "a list"}))
    result = rp.report([logs], tmp_path / "out2")
    reasons = [s["reason"] for s in result["skipped"]]
    assert "toy_steps.png skipped (run kept in the tables): corrupt toy_log.json: not a list" in reasons
    assert {run["run"] for run in result["runs"]} == {"toy_run", "plain_run"}

    for name in toy_figures:
        figures.unregister_figure(name)
    toy_figures.clear()
    assert not {"toy_steps", "toy_summary"} & {f.name for f in figures.figures()}
    result = rp.report([logs], tmp_path / "out3")
    assert not any("toy" in os.path.basename(p) for p in result["written"])


def test_register_refuses_a_second_figure_of_a_name_or_output():
    first = figures.figures()[0]
    with pytest.raises(ValueError, match="registered already"):
        figures.register_figure(first.name, reads=first.reads)(lambda run: None)
    with pytest.raises(ValueError, match="registered already"):
        figures.register_figure("another", reads=first.reads, output=first.output, per_run=first.per_run)(
            lambda run: None)
    with pytest.raises(ValueError, match="reads no log file"):
        figures.register_figure("nothing", reads=())(lambda run: None)
    assert [f.name for f in figures.figures()] == REGISTERED


# ------------------------------------------------------------------------------- readable at any run count

def _tree(root, kind):
    """Run folders of one of three shapes: "one_epoch" (3 DAB runs, 1 epoch each), "one_run" (a single DAB run
    of 2 epochs) and "twelve" (12 runs: 4 configurations x 3 seeds, 3 epochs); all log every file."""
    if kind == "one_epoch":
        for seed in range(3):
            write_run(root, f"e{seed}", seed=seed, val=(30.0 + seed,), epochs=1, losses=True)
    elif kind == "one_run":
        write_run(root, "solo", losses=True)
    else:
        for i in range(12):
            write_run(root, f"r{i:02d}", seed=i // 4, val=(10.0 + i, 20.0 + i, 25.0 + i), epochs=3, losses=True,
                      binarizer=("dab", "xnor")[i % 2], extra={"maxlr": 1e-3 * (1 + i % 4 // 2)})
    return rp.read_runs([root])[0]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shapes")
    return {kind: _tree(tmp / kind, kind) for kind in ("one_epoch", "one_run", "twelve")}


def _render(fig):
    """The RGB pixels of ``fig`` as the report saves it (600 x 400)."""
    fig.set_size_inches(*figures.FIGSIZE)
    fig.tight_layout()
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def data_pixels(fig):
    """How many pixels inside the axes the data (lines, markers, bands, bars, boxes; not the legend) paint:
    the figure is rendered with and without them."""
    drawn = _render(fig)
    for ax in fig.axes:
        for artist in (*ax.lines, *ax.collections, *ax.patches):
            artist.set_visible(False)
    bare = _render(fig)
    count, height = 0, drawn.shape[0]
    for ax in fig.axes:
        box = ax.get_window_extent()
        rows = slice(max(0, int(height - box.y1)), int(height - box.y0))
        cols = slice(max(0, int(box.x0)), int(box.x1))
        count += int(np.any(drawn[rows, cols] != bare[rows, cols], axis=-1).sum())
    return count


@pytest.mark.parametrize("kind", ["one_epoch", "one_run", "twelve"])
@pytest.mark.parametrize("name", REGISTERED)
def test_every_figure_draws_visible_data(shapes, name, kind):
    """From 1-epoch runs, a single run and 12 runs, each registered figure paints its data (a single point
    drawn as a line without a marker paints nothing)."""
    figure = {f.name: f for f in figures.figures()}[name]
    runs = [run for run in shapes[kind] if figure.wants(run)]
    assert runs, f"the {kind} runs log nothing {name} reads"
    dab = [run for run in runs if run["binarizer"] == "dab"]  # the filter figures draw DAB layers only
    subjects = [runs] if not figure.per_run else [dab[0], dab[-1]]
    for subject in subjects:
        fig = figure.draw(subject)
        assert fig is not None
        assert data_pixels(fig) > 40, (name, kind)


def _legend_fits(fig):
    """The legend's font is LEGEND_FONT or more, it lies inside the figure, and it covers no axes."""
    fig.set_size_inches(*figures.FIGSIZE)
    fig.tight_layout()
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend()
    box, page, axes = legend.get_window_extent(renderer), fig.bbox, ax.get_window_extent(renderer)
    assert all(text.get_fontsize() >= figures.LEGEND_FONT for text in legend.get_texts())
    assert page.x0 - 1 <= box.x0 and box.x1 <= page.x1 + 1 and page.y0 - 1 <= box.y0 and box.y1 <= page.y1 + 1
    return not box.overlaps(axes)


def test_curves_of_many_configurations_keep_a_readable_legend(tmp_path):
    logs = tmp_path / "logs"
    for i in range(12):
        write_run(logs, f"lr{i}", filters=False, val=(10.0 + i, 20.0 + i), extra={"maxlr": 1e-3 * (i + 1)})
    runs, _ = rp.read_runs([logs])
    curves = {f.name: f for f in figures.figures()}["curves_val_top1"]
    fig = curves.draw(runs)
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == len(set(labels)) == 12  # one entry per configuration, each telling it apart
    assert "maxlr=0.005 (n=1)" in labels
    assert fig.axes[0].get_legend().get_title().get_text().startswith("digits sketchanetwbin dab")
    assert _legend_fits(fig)  # beside the axes, not over the curves
    assert data_pixels(fig) > 40


def test_seeds_of_one_configuration_are_a_mean_with_a_band(tmp_path):
    logs = tmp_path / "logs"
    n = 12
    for seed in range(n):
        write_run(logs, f"s{seed}", seed=seed, filters=False, val=(10.0 + seed, 20.0 + seed))
    write_run(logs, "s0_again", seed=0, filters=False, val=(90.0, 95.0))  # a duplicate: not drawn, not counted
    write_run(logs, "x", binarizer="xnor", filters=False)
    runs, _ = rp.read_runs([logs])
    curves = {f.name: f for f in figures.figures()}["curves_val_top1"]
    ax = curves.draw(runs).axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["digits sketchanetwbin xnor (n=1)", f"digits sketchanetwbin dab (n={n})"]
    assert "band: min–max" in ax.get_legend().get_title().get_text()
    mean = [line for line in ax.lines if line.get_label().endswith(f"(n={n})")][0]
    assert list(mean.get_ydata()) == pytest.approx([statistics.fmean(10.0 + s for s in range(n)),
                                                    statistics.fmean(20.0 + s for s in range(n))])
    band = np.concatenate([path.vertices for c in ax.collections for path in c.get_paths()])
    assert band[:, 1].min() == pytest.approx(10.0) and band[:, 1].max() == pytest.approx(20.0 + n - 1)


@pytest.mark.parametrize("epochs", [1, 2, 5])
def test_epoch_axes_have_whole_ticks(tmp_path, epochs):
    logs = tmp_path / "logs"
    write_run(logs, "run", epochs=epochs, val=tuple(10.0 + e for e in range(epochs)))
    runs, _ = rp.read_runs([logs])
    for figure in figures.figures():
        if figure.name in ("curves_val_top1", "curves_train_loss", "alpha_beta", "k_over_training"):
            fig = figure.draw(runs if not figure.per_run else runs[0])
            ax = fig.axes[0]
            low, high = ax.get_xlim()
            ticks = [t for t in ax.get_xticks() if low <= t <= high]
            assert ticks and all(float(t).is_integer() for t in ticks), (figure.name, ticks)
            assert low < 1 and high > epochs  # every epoch lies inside the axes
