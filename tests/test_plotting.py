"""coda.plotting: deterministic figure files, centred colour maps, weight images, headless widgets."""

import subprocess
import sys

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")  # before pyplot: no display in tests

import matplotlib.pyplot as plt  # noqa: E402

import coda  # noqa: E402
from coda import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _figure(seed: int = 0):
    rng = np.random.default_rng(seed)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(4, 2))
    ax1.plot(rng.normal(size=20), label="a")
    ax1.legend()
    plotting.show_contribution_map(ax2, rng.normal(size=(8, 8)), colorbar=True)
    return fig


def test_import_has_no_side_effects():
    """Importing coda (or coda.plotting) neither imports matplotlib nor touches rcParams."""
    code = (
        "import sys, coda, coda.plotting, coda.workbook, coda.theory\n"
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported at import time'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_use_style_is_explicit():
    with matplotlib.rc_context():
        matplotlib.rcParams["axes.spines.top"] = True
        plotting.use_style()
        assert matplotlib.rcParams["axes.spines.top"] is False
        assert matplotlib.rcParams["savefig.dpi"] == plotting.DPI


def test_save_figure_is_byte_deterministic(tmp_path):
    path_a = plotting.save_figure(_figure(), "fig", tmp_path / "a")
    path_b = plotting.save_figure(_figure(), "fig.png", tmp_path / "b")
    assert path_a.name == path_b.name == "fig.png"
    data = path_a.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data == path_b.read_bytes(), "the same figure must give identical bytes"
    assert b"matplotlib" not in data.lower(), "no software version in the metadata"
    different = plotting.save_figure(_figure(seed=1), "other", tmp_path)
    assert different.read_bytes() != data


def test_save_figure_leaves_an_unchanged_file_alone(tmp_path):
    fig = _figure()
    path = plotting.save_figure(fig, "fig", tmp_path)
    before = path.stat().st_mtime_ns
    path.touch()  # any write would change the mtime again
    touched = path.stat().st_mtime_ns
    assert plotting.save_figure(fig, "fig", tmp_path) == path
    assert path.stat().st_mtime_ns == touched >= before


@pytest.mark.parametrize("percentile", [90.0, 99.5, 100.0])
def test_contribution_map_is_centred_at_zero(percentile):
    values = torch.randn(16, 16) * 3 + 1  # skewed: the limits must still be symmetric
    fig, ax = plt.subplots()
    im = plotting.show_contribution_map(ax, values, percentile=percentile)
    vmin, vmax = im.norm.vmin, im.norm.vmax
    assert vmin == -vmax > -np.inf
    assert vmax == pytest.approx(np.percentile(values.abs().numpy(), percentile), rel=1e-6)
    assert im.norm(0.0) == pytest.approx(0.5)  # zero sits in the middle of the colour map
    r, g, b, _ = im.cmap(0.5)
    assert min(r, g, b) > 0.95, "the centre of the colour map is white"


def test_symmetric_limit_of_a_zero_map_is_positive():
    assert plotting.symmetric_limit(np.zeros((4, 4))) > 0


def test_weights_to_rgb_shape_and_range():
    weights = torch.randn(3, 6, 10, 12)
    images = torch.rand(3, 3, 10, 12)
    rgb = plotting.weights_to_rgb(weights, images)
    assert rgb.shape == (3, 10, 12, 3)
    assert rgb.min() >= 0 and rgb.max() <= 1
    single = plotting.weights_to_rgb(weights[0], images[0])
    np.testing.assert_allclose(single, rgb[0])


def test_weights_to_rgb_shows_the_preferred_colour_and_hides_negative_evidence():
    weights = torch.zeros(6, 2, 2)
    weights[0] = 1.0  # "wants red": w[:3] - w[3:] = (1, 0, 0)
    weights[3:] = -0.5  # "wants bright": adds (0.5, 0.5, 0.5) to the effective colour weight
    rgb = plotting.weights_to_rgb(weights, percentile=100, background=0.0)
    assert rgb.shape == (2, 2, 3)
    np.testing.assert_allclose(rgb[0, 0], [1.0, 0.5 + 0.5 * 0.5 / 1.5, 0.5 + 0.5 * 0.5 / 1.5])
    images = torch.zeros(3, 2, 2)  # black pixels: contribution = sum(w[3:]) * 1 < 0
    hidden = plotting.weights_to_rgb(weights, images, background=0.25)
    np.testing.assert_allclose(hidden, 0.25)


def test_weights_to_rgb_rejects_wrong_channels():
    with pytest.raises(ValueError, match="6"):
        plotting.weights_to_rgb(torch.zeros(3, 4, 4))


def test_summary_plots_take_plain_arrays(tmp_path):
    history = [{"epoch": e, "train_loss": 0.3 / e, "train_accuracy": 0.2 * e, "test_accuracy": 0.15 * e}
               for e in (1, 2, 3)]
    fig = plotting.plot_learning_curves(history, chance=0.1)
    assert len(fig.axes) == 2
    ax = plotting.plot_per_class_accuracy({"cat": 0.5, "dog": 0.7}, chance=0.1)
    assert len(ax.patches) == 2
    scores = {"Ours": np.random.default_rng(0).uniform(size=50), "Grad": np.full(50, 0.2)}
    ax = plotting.plot_boxes(scores, chance=1 / 9, oracle=1.0, published={"Ours": 0.912, "missing": 0.5})
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Ours", "Grad"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["chance", "oracle", "published mean"]
    fractions = np.linspace(0, 0.25, 5)
    ax = plotting.plot_removal_curves(fractions, {"Ours": np.linspace(0.9, 0.95, 5)}, published={"Ours": 0.964})
    assert "published 0.964" in ax.get_legend().get_texts()[0].get_text()
    for i, num in enumerate(plt.get_fignums()):
        plotting.save_figure(plt.figure(num), f"summary{i}", tmp_path)
    assert len(list(tmp_path.glob("*.png"))) == 4


def _leaves(widget):
    """All widgets inside a (nested) ipywidgets box, depth first."""
    found = []
    for child in widget.children:
        found += _leaves(child) if hasattr(child, "children") else [child]
    return found


def _controls(widget):
    return [w for w in _leaves(widget) if getattr(w, "description", "")]


def _image(widget):
    (image,) = [w for w in _leaves(widget) if type(w).__name__ == "Image"]
    return image


def test_dau_explorer_updates_headlessly():
    widget, update = plotting.dau_explorer(angle=60.0)
    state = update()
    angle_slider = next(c for c in _controls(widget) if c.description == "angle of x")
    before, picture = state["output"], _image(widget).value
    assert picture[:8] == b"\x89PNG\r\n\x1a\n"
    angle_slider.value = 20.0  # the default W's eigenvector with eigenvalue 1.5
    assert state["angle"] == 20.0
    assert state["output"] != before
    assert _image(widget).value != picture, "the figure is redrawn"
    assert state["output"] == pytest.approx(1.0)  # L2 DAU of a unit eigenvector: ||x||
    norm_toggle = next(c for c in _controls(widget) if c.description == "norm g")
    norm_toggle.value = "squash"
    assert state["norm"] == "squash" and state["output"] < 1.0


def test_contribution_explorer_updates_headlessly():
    torch.manual_seed(0)
    model = coda.build_model("cifar10-tiny").eval()
    images = torch.rand(3, 3, 32, 32)
    widget, update = plotting.contribution_explorer(model, images, torch.tensor([0, 1, 2]))
    state = update()
    assert state["map"].shape == (32, 32)
    assert state["total"] == pytest.approx(state["logit"] - model.logit_bias, abs=1e-4)
    first_map, picture = state["map"].copy(), _image(widget).value
    image_slider, class_menu, layer_menu = _controls(widget)
    image_slider.value = 2
    assert state["index"] == 2 and not np.allclose(state["map"], first_map)
    assert _image(widget).value != picture, "the figure is redrawn"
    class_menu.value = 7
    assert state["target"] == 7
    layer_menu.value = 2  # the input of the third CoDA layer, at a coarser resolution
    assert state["layer"] == 2 and state["map"].shape == (16, 16)
    assert state["total"] == pytest.approx(state["logit"] - model.logit_bias, abs=1e-4)


# ----- the sweep and interpretable-depth figures ----------------------------------------------


def _xy(line):
    return list(line.get_xdata()), list(line.get_ydata())


def _row(**values):
    return {"test_accuracy": 0.7, "localisation_mean": 0.5, "removal_mean": 0.8, "parameters": 1_000_000,
            "localisation_median": 0.52, "n_grids": 100, "epochs": 5} | values


def test_temperature_sweep_draws_the_rows_and_the_published_trend():
    rows = [_row(temperature=10, localisation_mean=0.3), _row(temperature=1000, localisation_mean=0.6,
                                                              removal_mean=None)]
    fig = plotting.plot_temperature_sweep(rows, 5, {10: 0.314, 1000: 0.912}, {10: 0.801})
    acc, loc, removal = fig.axes
    assert _xy(acc.lines[0]) == ([10, 1000], [0.7, 0.7])
    assert _xy(loc.lines[0]) == ([10, 1000], [0.3, 0.6])
    assert _xy(loc.lines[1]) == ([10, 1000], [0.314, 0.912])  # published
    assert _xy(removal.lines[0]) == ([10], [0.8])  # a run without the metric is left out
    assert loc.lines[-1].get_ydata()[0] == pytest.approx(1 / 9)  # chance
    assert len(acc.lines) == 1 and "5 epochs" in fig._suptitle.get_text()


def test_rank_sweep_draws_parameters_in_millions_on_the_rank_factors():
    rows = [_row(rank_factor=f, parameters=p) for f, p in ((4, 1_076_984), (8, 2_034_960))]
    fig = plotting.plot_rank_sweep(rows, [4, 8, 16], epochs=5)
    left, right = fig.axes
    assert _xy(left.lines[0]) == ([4, 8], [0.7, 0.7])
    assert _xy(right.lines[0]) == ([4, 8], [1.076984, 2.03496])
    assert [t.get_text() for t in right.get_xticklabels()] == ["4", "8", "16"]
    assert "T = 1000" in fig._suptitle.get_text()


@pytest.mark.parametrize("medians", [None, [0.5, 0.4]])
def test_layer_localisation_panel(medians):
    _, ax = plt.subplots()
    plotting.plot_layer_localisation(ax, ["input", "L1"], [0.6, 0.5], medians, title="t")
    assert len(ax.lines) == (2 if medians is None else 3)  # the chance line is the last
    assert _xy(ax.lines[0]) == ([0, 1], [0.6, 0.5])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["input", "L1"]
    assert ax.get_ylim() == (0, 1) and ax.get_title() == "t"


def test_interpretable_depth_has_a_panel_for_what_is_given():
    layers = [_row(localisation_mean=0.7), _row(localisation_mean=0.6)]
    hybrids = [_row(stem_depth=1, localisation_mean=0.5), _row(stem_depth=3, localisation_mean=0.4)]
    assert len(plotting.plot_interpretable_depth(["input", "L1"], layers, "m").axes) == 1
    fig = plotting.plot_interpretable_depth(hybrids=hybrids, cnn_rows=[_row(test_accuracy=0.8)],
                                            same_layer=[(1, 0.6), (3, 0.55)])
    (ax,) = fig.axes
    assert _xy(ax.lines[0]) == ([1, 3], [0.5, 0.4])
    assert _xy(ax.lines[2]) == ([1, 3], [0.6, 0.55])  # the pure network from the same layer
    assert ax.lines[3].get_ydata()[0] == 0.8  # the CNN baseline's accuracy
    assert len(plotting.plot_interpretable_depth(["input", "L1"], layers, "m", hybrids).axes) == 2
    with pytest.raises(ValueError, match="nothing to draw"):
        plotting.plot_interpretable_depth()


def test_depth_tradeoff_adds_the_per_layer_panel_when_given():
    hybrids = [_row(stem_depth=0, test_accuracy=0.74), _row(stem_depth=1, test_accuracy=0.75)]
    fig = plotting.plot_depth_tradeoff(hybrids, [_row(test_accuracy=0.82, parameters=1_888_650)])
    assert len(fig.axes) == 2
    acc, loc = fig.axes
    assert _xy(acc.lines[0]) == ([0, 1], [0.74, 0.75])
    assert "1,888,650" in acc.get_legend().get_texts()[1].get_text()
    assert len(loc.lines) == 2  # hybrids and chance; one same-layer point is not a trend
    fig = plotting.plot_depth_tradeoff(hybrids, same_layer=[(0, 0.6), (1, 0.58)], layer_labels=["input", "L1"],
                                       layer_means=[0.7, 0.6], layers_model="m")
    assert len(fig.axes) == 3 and fig.axes[2].get_title() == "every layer of m"
    assert len(fig.axes[1].lines) == 3


def test_explorers_live_in_widgets_and_stay_importable_from_plotting():
    from coda import widgets

    assert plotting.dau_explorer is widgets.dau_explorer
    assert plotting.contribution_explorer is widgets.contribution_explorer
    with pytest.raises(AttributeError):
        plotting.no_such_figure  # noqa: B018


def test_add_colorbar_spans_a_row_with_its_limits():
    fig, axes = plt.subplots(1, 3, figsize=(6, 2))
    maps = np.random.default_rng(0).normal(size=(3, 8, 8))
    limit = plotting.symmetric_limit(maps)
    images = [plotting.show_contribution_map(ax, m, limit=limit) for ax, m in zip(axes, maps, strict=True)]
    bar = plotting.add_colorbar(axes, images[0])
    assert bar.ax.get_ylabel() == plotting.CONTRIBUTION_LABEL
    assert bar.norm.vmin == pytest.approx(-limit) and bar.norm.vmax == pytest.approx(limit)
    assert len(fig.axes) == 4  # three maps and one bar for the row


def test_add_colorbar_per_panel_scale_says_so():
    fig, ax = plt.subplots(figsize=(2, 2))
    image = plotting.show_contribution_map(ax, np.arange(16.0).reshape(4, 4) - 8)
    bar = plotting.add_colorbar(ax, image, shared_limit=False)
    assert "per panel" in bar.ax.get_ylabel()
    assert [t.get_text() for t in bar.ax.get_yticklabels()] == ["-max", "0", "+max"]
    with pytest.raises(ValueError, match="at least one axes"):
        plotting.add_colorbar([], image)


def _legend_is_outside(ax) -> bool:
    """The legend's box lies right of the axes' box (drawn first, so that both have their sizes)."""
    fig = ax.figure
    fig.canvas.draw()
    legend = ax.get_legend()
    box, frame = legend.get_window_extent(), ax.get_window_extent()
    return box.x0 >= frame.x1 - 1 and not box.overlaps(frame)


def test_removal_curves_keep_ten_methods_apart_and_mark_identical_ones():
    fractions = np.linspace(0, 0.25, 129)
    rng = np.random.default_rng(0)
    curves = {f"method {i}": np.clip(0.8 + 0.01 * i + 0.02 * rng.normal(size=129), 0, 1) for i in range(9)}
    curves["copy of method 2"] = curves["method 2"].copy()  # as DeepLIFT repeats IxG on a CoDA-Net
    ax = plotting.plot_removal_curves(fractions, curves)
    styles = [(line.get_color(), line.get_linestyle()) for line in ax.lines]
    assert len(styles) == 10 and len(set(styles)) == 10, styles
    assert len({line.get_color() for line in ax.lines}) == 10  # ten colours as well
    assert len({line.get_marker() for line in ax.lines}) == 10
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "identical to method 2" in texts[-1]
    assert not any("identical" in t for t in texts[:-1])  # the others differ
    assert _legend_is_outside(ax)


def test_summary_legends_sit_outside_the_axes():
    history = [{"epoch": e, "train_loss": 0.3 / e, "train_accuracy": 0.2 * e, "test_accuracy": 0.15 * e}
               for e in (1, 2, 3)]
    ax_loss, ax_acc = plotting.plot_learning_curves(history, chance=0.1).axes
    assert ax_loss.get_legend() is None  # one run, one loss curve: nothing to tell apart
    assert _legend_is_outside(ax_acc)
    ax_loss2, _ = plotting.plot_learning_curves(history, label="live").axes
    assert _legend_is_outside(ax_loss2)
    assert _legend_is_outside(plotting.plot_per_class_accuracy({"cat": 0.5, "dog": 0.95}, chance=0.1))
    scores = {"Ours": np.random.default_rng(0).uniform(size=50), "Grad": np.full(50, 0.2)}
    assert _legend_is_outside(plotting.plot_boxes(scores, chance=1 / 9, oracle=1.0))


def test_boxes_mark_the_paired_reference_on_the_same_data():
    scores = {"Ours": np.full(45, 0.6), "Occ9": np.full(9, 0.9)}
    ax = plotting.plot_boxes(scores, published={"Occ9": 0.84}, paired={"Occ9": 0.83},
                             paired_label="Ours on the same grids")
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert texts == ["published mean", "Ours on the same grids"]
    (marks,) = [c for c in ax.collections if c.get_label() == "Ours on the same grids"]
    assert marks.get_offsets().tolist() == [[2.0, 0.83]]  # on the Occ9 box
