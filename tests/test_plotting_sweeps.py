"""The sweep figures of notebooks 03 and 04: every panel labelled, the project's layer numbering."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from coda import plotting  # noqa: E402


def _row(**values):
    return {"test_accuracy": 0.7, "localisation_mean": 0.5, "removal_mean": 0.8, "parameters": 1_000_000,
            "localisation_median": 0.52, "n_grids": 100, "epochs": 5} | values


def test_every_panel_of_the_sweep_figures_has_both_axis_labels():
    temperature = plotting.plot_temperature_sweep([_row(temperature=10), _row(temperature=1000)], 5)
    rank = plotting.plot_rank_sweep([_row(rank_factor=4), _row(rank_factor=8)], [4, 8], epochs=5)
    layers = [_row(localisation_mean=0.7), _row(localisation_mean=0.6)]
    hybrids = [_row(stem_depth=1), _row(stem_depth=3)]
    depth = plotting.plot_interpretable_depth(["0", "1"], layers, "m", hybrids)
    for fig in (temperature, rank, depth):
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), (fig._suptitle.get_text(), ax.get_title())
        plt.close(fig)


def test_rank_sweep_left_panel_names_both_metrics():
    fig = plotting.plot_rank_sweep([_row(rank_factor=4), _row(rank_factor=8)], [4, 8], epochs=5)
    left = fig.axes[0]
    assert "accuracy" in left.get_ylabel() and "localisation" in left.get_ylabel()
    plt.close(fig)


def test_layer_panel_uses_the_documented_numbering():
    _, ax = plt.subplots()
    plotting.plot_layer_localisation(ax, ["0", "1", "2"], [0.7, 0.6, 0.5])
    assert ax.get_xlabel() == "layer l (input of CoDA layer l)"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    plt.close(ax.figure)
