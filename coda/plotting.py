"""Figures for the workbook: style, deterministic saving, images, maps, curves, sweep figures.

With :mod:`coda.widgets` (the ipywidgets explorers, importable from here too) the only module of
the package that imports matplotlib, inside the functions, so ``import coda.plotting`` is cheap
and has no side effects. The workbook style is applied by an explicit :func:`use_style` call.

Conventions: images are (3, H, W) tensors or (H, W, 3) arrays in [0, 1] (uint8 is accepted);
contribution maps are (H, W) and drawn with a diverging colour map centred at 0
(red = for the class, blue = against it).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

DPI = 150  # every saved figure
CONTRIBUTION_CMAP = "bwr"  # diverging, white at 0
PALETTE = (  # seaborn's "colorblind" palette, without importing seaborn
    "#0173b2", "#de8f05", "#029e73", "#d55e00", "#cc78bc",
    "#ca9161", "#fbafe4", "#949494", "#ece133", "#56b4e9",
)  # fmt: skip
STYLE = {
    "figure.dpi": 100,
    "figure.constrained_layout.use": True,
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "legend.frameon": False,
    "image.interpolation": "nearest",
    "savefig.dpi": DPI,
    "savefig.facecolor": "white",
}


# ----- style and saving (not the lesson: notebooks call these and move on) ---------------


def use_style() -> None:
    """Apply the workbook's matplotlib style (rcParams) and colour cycle. Call once per notebook."""
    import matplotlib as mpl
    from cycler import cycler

    mpl.rcParams.update(STYLE)
    mpl.rcParams["axes.prop_cycle"] = cycler(color=list(PALETTE))


def save_figure(fig, name: str, fig_dir: str | Path = "figures", dpi: int = DPI) -> Path:
    """Save ``fig`` as ``<fig_dir>/<name>.png`` at a fixed dpi, byte-for-byte reproducibly.

    The PNG carries no software version or timestamp (``metadata={"Software": None}``), so
    the same figure gives the same bytes; an existing file with the same bytes is left
    untouched (its modification time does not change either).

    Parameters
    ----------
    fig : a matplotlib ``Figure``.
    name : file name, with or without ``.png``.
    fig_dir : folder, created if needed.
    dpi : resolution (default :data:`DPI`).

    Returns
    -------
    The path of the PNG file.
    """
    path = Path(fig_dir) / (name if name.endswith(".png") else f"{name}.png")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, facecolor="white")
    data = buf.getvalue()
    if not (path.exists() and path.read_bytes() == data):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path


# ----- images and maps ---------------------------------------------------------------------


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x)


def image_hwc(image) -> np.ndarray:
    """An image (3, H, W) or (H, W, 3), float in [0, 1] or uint8 -> (H, W, 3) float in [0, 1]."""
    img = _numpy(image)
    if img.dtype == np.uint8:
        img = img.astype(np.float32) / 255
    if img.ndim != 3:
        raise ValueError(f"expected one image (3, H, W) or (H, W, 3), got shape {img.shape}")
    if img.shape[0] == 3 and img.shape[-1] != 3:
        img = img.transpose(1, 2, 0)
    return np.clip(img, 0, 1)


def show_image(ax, image, title: str | None = None):
    """Draw an image on ``ax`` without axes; returns the ``AxesImage``."""
    im = ax.imshow(image_hwc(image))
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    return im


def symmetric_limit(values, percentile: float = 99.5) -> float:
    """The colour limit ``v`` for a map drawn on [-v, v]: a percentile of ``|values|``.

    A percentile rather than the maximum keeps one extreme pixel from washing out the map.
    Never 0 (an all-zero map gets a tiny limit), so ``-v < v``.
    """
    a = np.abs(_numpy(values)).ravel()
    v = float(np.percentile(a, percentile)) if a.size else 0.0
    return v if v > 0 else 1e-12


def show_contribution_map(
    ax,
    values,
    percentile: float = 99.5,
    limit: float | None = None,
    cmap: str = CONTRIBUTION_CMAP,
    title: str | None = None,
    colorbar: bool = False,
):
    """Draw a contribution map (H, W) on a diverging colour map centred at 0.

    Parameters
    ----------
    ax : matplotlib axes.
    values : (H, W) map, e.g. :func:`coda.contribution_map` of one image.
    percentile, limit : colour limits are ``[-v, v]`` with ``v = limit`` if given, else the
        ``percentile`` of ``|values|`` (see :func:`symmetric_limit`). Share ``limit``
        between panels that should be comparable.
    cmap : a diverging colour map (white at its centre).
    title : optional axes title.
    colorbar : add a colour bar next to the map.

    Returns
    -------
    The ``AxesImage`` (its ``norm`` has ``vmin == -vmax``).
    """
    m = _numpy(values)
    if m.ndim != 2:
        raise ValueError(f"expected a map (H, W), got shape {m.shape}")
    v = symmetric_limit(m, percentile) if limit is None else float(limit)
    im = ax.imshow(m, cmap=cmap, vmin=-v, vmax=v, interpolation="nearest")
    ax.set_axis_off()
    if title is not None:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return im


CONTRIBUTION_LABEL = "contribution to the logit"


def add_colorbar(axes, image, label: str = CONTRIBUTION_LABEL, shared_limit: bool = True):
    """One colour bar for a group of panels that share a colour scale; returns the ``Colorbar``.

    Parameters
    ----------
    axes : one axes or a sequence (or array) of axes; the bar is drawn to the right of them all
        and takes its space from them.
    image : the ``AxesImage`` of one of the panels (what :func:`show_contribution_map` returns),
        whose colour limits every panel of the group uses.
    label : the bar's label; contribution maps are in logit units (they sum to logit - b0).
    shared_limit : False when the panels of the group have limits of their own (each scaled to its
        own percentile): the bar then shows the colour scale only, ticks at -max, 0 and +max, and
        the label says "per panel".
    """
    axes_list = list(np.ravel(np.asarray(axes, dtype=object)))
    if not axes_list:
        raise ValueError("add_colorbar needs at least one axes")
    fig = axes_list[0].figure
    bar = fig.colorbar(image, ax=axes_list, fraction=0.046 if len(axes_list) == 1 else 0.025, pad=0.02)
    if shared_limit:
        bar.set_label(label)
    else:
        low, high = image.norm.vmin, image.norm.vmax
        bar.set_ticks([low, 0.0, high], labels=["-max", "0", "+max"])
        bar.set_label(f"{label} (scaled per panel)")
    return bar


def weights_to_rgb(weights, images=None, percentile: float = 99.5, background: float = 0.0) -> np.ndarray:
    """Show the dynamic linear weights ``W(x)`` over the encoded input ``[x, 1 - x]`` as colours.

    A pixel contributes ``w[:3] . x + w[3:] . (1 - x) = (w[:3] - w[3:]) . x + sum(w[3:])``, so
    its *effective colour weight* is ``d = w[:3] - w[3:]``: the RGB direction the weight
    "wants to see". The picture uses

    * colour: ``0.5 + 0.5 * d / max_c |d_c|`` per pixel, the preferred colour at full
      saturation (a weight for red gives red, for dark gives black, for bright gives white);
    * opacity: the weight's strength ``||w||`` (over its 6 channels) divided by its
      ``percentile``-th percentile over the image and clipped to [0, 1]; if ``images`` are
      given, pixels whose contribution ``w . [x, 1 - x]`` is not positive are transparent
      (only the evidence *for* the class is shown, as in the paper's figures);

    blended over a grey level ``background`` (0: black).

    Parameters
    ----------
    weights : (6, H, W) or (B, 6, H, W), e.g. :func:`coda.dynamic_linear_weights`.
    images : optional (3, H, W) or (B, 3, H, W) images in [0, 1] that the weights belong to.
    percentile : percentile of the strength that maps to full opacity.
    background : grey level in [0, 1] behind transparent pixels.

    Returns
    -------
    (H, W, 3) or (B, H, W, 3) float array in [0, 1].
    """
    w = _numpy(weights).astype(np.float64)
    single = w.ndim == 3
    if single:
        w = w[None]
    if w.ndim != 4 or w.shape[1] != 6:
        raise ValueError(f"expected weights (6, H, W) or (B, 6, H, W), got shape {_numpy(weights).shape}")
    d = w[:, :3] - w[:, 3:]
    scale = np.abs(d).max(1, keepdims=True)
    colour = 0.5 + 0.5 * d / np.where(scale > 0, scale, 1.0)
    strength = np.sqrt((w**2).sum(1, keepdims=True))
    if images is not None:
        x = _numpy(images).astype(np.float64).reshape(w.shape[0], 3, *w.shape[2:])
        contrib = (w * np.concatenate([x, 1 - x], 1)).sum(1, keepdims=True)
        strength = np.where(contrib > 0, strength, 0.0)
    ref = np.percentile(strength.reshape(len(w), -1), percentile, axis=1).reshape(-1, 1, 1, 1)
    alpha = np.clip(strength / np.where(ref > 0, ref, 1.0), 0, 1)
    rgb = (alpha * colour + (1 - alpha) * background).transpose(0, 2, 3, 1)
    rgb = np.clip(rgb, 0, 1)
    return rgb[0] if single else rgb


# ----- curves and summaries (also used by the evaluation notebook) --------------------------


def legend_outside(ax, **kwargs):
    """The axes' legend to the right of the axes, top-aligned, so that it never hides data.

    Constrained layout (the workbook style) makes room for it. Returns the ``Legend``.
    """
    return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, **kwargs)


def plot_learning_curves(history: Sequence[Mapping], axes=None, label: str = "", chance: float | None = None):
    """Loss and accuracy per epoch from a training history (:func:`coda.train.train`).

    Parameters
    ----------
    history : one dict per epoch with ``epoch``, ``train_loss`` and (optionally)
        ``train_accuracy``, ``test_accuracy``.
    axes : two axes (loss, accuracy); a new figure if None.
    label : prefix for the legend entries (to overlay several runs).
    chance : draw the chance accuracy as a dashed line.

    Returns
    -------
    The figure.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    ax_loss, ax_acc = axes
    epochs = [h["epoch"] for h in history]
    marker = "o" if len(history) < 15 else None
    prefix = f"{label} " if label else ""
    ax_loss.plot(epochs, [h["train_loss"] for h in history], marker=marker, label=f"{prefix}train")
    ax_loss.set(xlabel="epoch", ylabel="BCE loss", title="Training loss")
    for key, name in (("train_accuracy", "train"), ("test_accuracy", "test")):
        if all(key in h for h in history):
            ax_acc.plot(epochs, [h[key] for h in history], marker=marker, label=f"{prefix}{name}")
    if chance is not None:
        ax_acc.axhline(chance, color="0.5", ls="--", lw=1, label="chance")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy", ylim=(0, 1))
    legend_outside(ax_acc)
    if label:  # one line per run: name the runs (a single run's one loss curve needs no legend)
        legend_outside(ax_loss)
    for ax in axes:
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
    return ax_loss.figure


def plot_per_class_accuracy(per_class: Mapping[str, float], ax=None, chance: float | None = None,
                            title: str = "Per-class test accuracy"):
    """Horizontal bars of accuracy per class (as returned by :func:`coda.train.evaluate_accuracy`)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 0.3 * len(per_class) + 1))
    names = list(per_class)
    values = [per_class[n] for n in names]
    y = np.arange(len(names))[::-1]
    ax.barh(y, values, color=PALETTE[0])
    for yi, v in zip(y, values, strict=True):
        inside = v > 0.85  # write the value inside long bars
        ax.text(v - 0.01 if inside else v + 0.01, yi, f"{v:.2f}", va="center", fontsize=8,
                ha="right" if inside else "left", color="white" if inside else "black")
    if chance is not None:
        ax.axvline(chance, color="0.5", ls="--", lw=1, label="chance")
        legend_outside(ax)
    ax.set(yticks=y, yticklabels=names, xlim=(0, 1), xlabel="accuracy", title=title)
    ax.grid(axis="y", visible=False)
    return ax


def plot_boxes(scores: Mapping[str, Sequence[float]], ax=None, chance: float | None = None,
               published: Mapping[str, float] | None = None, oracle: float | None = None,
               ylabel: str = "score", title: str = "", paired: Mapping[str, float] | None = None,
               paired_label: str = "Ours on the same data"):
    """Box plots of per-example scores by method, with chance and published values.

    The legend sits outside the axes, to the right.

    Parameters
    ----------
    scores : method name -> 1-D scores (e.g. localisation scores of the grid pointing game).
    chance : a dashed horizontal line (e.g. 1/9).
    published : method name -> the published mean; drawn as a diamond on that method's box.
    oracle : a dotted horizontal line: the score of a perfect explanation (1 in the pointing game).
    paired : method name -> the mean of a reference method on the same examples as that method
        (e.g. the CoDA contributions on the same grids, where a method ran on fewer); drawn as a
        square on that method's box, named ``paired_label`` in the legend.
    """
    import matplotlib.pyplot as plt

    names = list(scores)
    if ax is None:
        _, ax = plt.subplots(figsize=(max(4, 0.9 * len(names) + 1), 3.5))
    data = [np.asarray(_numpy(scores[n]), dtype=float).ravel() for n in names]
    ax.boxplot(data, showmeans=True, widths=0.6, flierprops={"markersize": 2, "alpha": 0.4},
               meanprops={"marker": "o", "markerfacecolor": "white", "markeredgecolor": "k"})
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30 if len(names) > 4 else 0)
    if chance is not None:
        ax.axhline(chance, color="0.5", ls="--", lw=1, label="chance")
    if oracle is not None:
        ax.axhline(oracle, color="0.3", ls=":", lw=1, label="oracle")
    if published:
        xs = [i + 1 for i, n in enumerate(names) if n in published]
        ys = [published[n] for n in names if n in published]
        ax.scatter(xs, ys, marker="D", color=PALETTE[3], zorder=3, label="published mean")
    if paired:
        xs = [i + 1 for i, n in enumerate(names) if n in paired]
        ys = [paired[n] for n in names if n in paired]
        ax.scatter(xs, ys, marker="s", facecolor="white", edgecolor=PALETTE[0], linewidth=1.5, zorder=3,
                   label=paired_label)
    if chance is not None or oracle is not None or published or paired:
        legend_outside(ax)
    ax.set(ylabel=ylabel, title=title)
    ax.grid(axis="x", visible=False)
    return ax


REMOVAL_LINESTYLES = ("-", "--", "-.", ":")
REMOVAL_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")


def plot_removal_curves(fractions, curves: Mapping[str, Sequence[float]], ax=None,
                        published: Mapping[str, float] | None = None,
                        ylabel: str = "true-class probability", title: str = "Pixel removal"):
    """Mean probability of the true class while pixels are removed, one curve per method.

    Every method gets its own colour, line style and marker (a sparse marker every few points),
    so that up to ten curves stay apart in print and for colour-blind readers, and a curve that
    coincides with an earlier one (IxG and DeepLIFT on a CoDA-Net) stays visible on top of it:
    its legend entry says which curve it is identical to. The legend sits outside the axes,
    to the right.

    Parameters
    ----------
    fractions : (P,) fraction of pixels removed at every evaluation point.
    curves : method name -> (P,) mean probability.
    published : method name -> the published mean over the curve; shown in the legend next
        to the measured mean (the papers report the mean, not the curve).

    Returns
    -------
    The axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.8))
    x = 100 * np.asarray(_numpy(fractions), dtype=float)
    drawn: dict[str, np.ndarray] = {}
    for i, (name, curve) in enumerate(curves.items()):
        y = np.asarray(_numpy(curve), dtype=float)
        label = f"{name} (mean {y.mean():.3f}"
        if published and name in published:
            label += f"; published {published[name]:.3f}"
        label += ")"
        same = [other for other, seen in drawn.items() if seen.shape == y.shape and np.allclose(seen, y, atol=1e-6)]
        if same:
            label += f"\n  identical to {same[0]}: drawn over it"
        every = max(1, len(x) // 8)
        style = {"color": PALETTE[i % len(PALETTE)], "ls": REMOVAL_LINESTYLES[i % len(REMOVAL_LINESTYLES)],
                 "marker": REMOVAL_MARKERS[i % len(REMOVAL_MARKERS)]}
        ax.plot(x, y, label=label, markevery=(i % every, every), markersize=4, lw=1.4, zorder=2 + i, **style)
        drawn[name] = y
    ax.set(xlabel="pixels removed (%), least important first", ylabel=ylabel, title=title, ylim=(0, 1))
    legend_outside(ax, fontsize=8)
    return ax


# ----- sweeps and interpretable depth (notebooks 03 and 04) ---------------------------------
#
# The sweep figures take result rows, one dict per trained run, as ``coda.sweeps`` writes them
# (``temperature``, ``rank_factor``, ``stem_depth``, ``parameters``, ``test_accuracy``,
# ``localisation_mean``, ``removal_mean``, ...; None where a metric does not apply). The
# per-layer panels take the tick labels from the caller, who knows how the layers are named.

CHANCE_3X3 = 1 / 9  # the grid pointing game's chance level


def _points(rows: Sequence[Mapping], x_key: str, y_key: str) -> tuple[list, list]:
    """(x, y) lists of the rows that have a ``y_key`` value (None: the metric does not apply)."""
    points = [(r[x_key], r[y_key]) for r in rows if r[y_key] is not None]
    return [p[0] for p in points], [p[1] for p in points]


def plot_temperature_sweep(rows: Sequence[Mapping], epochs: int,
                           published_localisation: Mapping[float, float] | None = None,
                           published_removal: Mapping[float, float] | None = None):
    """Test accuracy, localisation and pixel removal against the temperature (three panels).

    Parameters
    ----------
    rows : one dict per run with ``temperature``, ``test_accuracy``, ``localisation_mean`` and
        ``removal_mean``.
    epochs : training epochs of every run (for the title).
    published_localisation, published_removal : ``{T: value}``, the published trend of the
        CoDA contributions (``coda.evaluate.PUBLISHED``), drawn as a dashed line.

    Returns
    -------
    The figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    panels = [("test_accuracy", "test accuracy", None),
              ("localisation_mean", "localisation (mean)", published_localisation),
              ("removal_mean", "pixel removal (mean probability)", published_removal)]
    for ax, (key, label, published) in zip(axes, panels, strict=True):
        ax.plot(*_points(rows, "temperature", key), "o-", label="sweep")
        if published:
            ax.plot(list(published), list(published.values()), "D--", color=PALETTE[3],
                    label="published (9L-S, f = 32, 200 epochs)")
        ax.set(xscale="log", xlabel="temperature T", ylabel=label, ylim=(0, 1))
    axes[1].axhline(CHANCE_3X3, color="0.5", ls=":", lw=1, label="chance (3x3)")
    axes[1].legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.14))  # above the chance line
    fig.suptitle(f"Temperature sweep ({epochs} epochs per run)")
    return fig


def plot_rank_sweep(rows: Sequence[Mapping], rank_factors: Sequence[int], epochs: int, temperature: float = 1000):
    """Accuracy and localisation (left) and the parameter count (right) against the rank factor.

    Parameters
    ----------
    rows : one dict per run with ``rank_factor``, ``test_accuracy``, ``localisation_mean`` and
        ``parameters``.
    rank_factors : the x ticks (the sweep's values of f; ranks [f, f, 2f x 7]).
    epochs, temperature : of every run (for the title).

    Returns
    -------
    The figure.
    """
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    axes[0].plot(*_points(rows, "rank_factor", "test_accuracy"), "o-", label="test accuracy")
    axes[0].plot(*_points(rows, "rank_factor", "localisation_mean"), "s-", label="localisation (mean)")
    axes[0].axhline(CHANCE_3X3, color="0.5", ls=":", lw=1, label="chance (3x3)")
    axes[0].set(ylim=(0, 1), ylabel="accuracy; localisation (share)")
    axes[0].legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 0.14))  # above the chance line
    f, parameters = _points(rows, "rank_factor", "parameters")
    axes[1].plot(f, [p / 1e6 for p in parameters], "o-")
    axes[1].set(ylabel="parameters (millions)", ylim=(0, None))
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(rank_factors), [str(f) for f in rank_factors])
        ax.minorticks_off()
        ax.set_xlabel("rank factor f (ranks [f, f, 2f x 7])")
    fig.suptitle(f"Rank sweep at T = {temperature:g} ({epochs} epochs per run)")
    return fig


def plot_layer_localisation(ax, labels: Sequence[str], means: Sequence[float],
                            medians: Sequence[float] | None = None, title: str = "",
                            xlabel: str = "layer l (input of CoDA layer l)", ylabel: str = "localisation",
                            chance_label: str | None = None):
    """Localisation of the contributions explained at each layer's input, left to right.

    Parameters
    ----------
    ax : the axes to draw into.
    labels : one tick label per explained layer, in the project's numbering (docs/method.md#layer-numbering:
        "0" is the input of CoDA layer 0, the encoded image of a pure model).
    means, medians : the pointing-game score per layer; medians are drawn only if given.
    chance_label : the legend label of the chance line (None: not in a legend).
    """
    x = range(len(means))
    ax.plot(x, means, "o-", label="mean")
    if medians is not None:
        ax.plot(x, medians, "s--", ms=4, label="median")
    ax.set_xticks(x, list(labels))
    ax.axhline(CHANCE_3X3, color="0.5", ls=":", lw=1, label=chance_label)
    ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(0, 1), title=title)
    return ax


def plot_interpretable_depth(layer_labels: Sequence[str] = (), layer_rows: Sequence[Mapping] = (),
                             layers_model: str = "", hybrids: Sequence[Mapping] = (),
                             cnn_rows: Sequence[Mapping] = (), same_layer: Sequence[tuple[int, float]] = ()):
    """Notebook 03's figure: localisation at every layer's input, and the hybrids' trade-off.

    Parameters
    ----------
    layer_labels, layer_rows : one tick label and one row (``localisation_mean``,
        ``localisation_median``, ``n_grids``) per explained layer of ``layers_model``; no rows,
        no panel.
    hybrids : one row per stem depth (``stem_depth``, ``localisation_mean``, ``test_accuracy``,
        ``epochs``); no rows, no panel.
    cnn_rows : the all-conventional baseline's rows (``test_accuracy``), drawn as a dashed line.
    same_layer : ``(d, localisation)`` of the pure network explained from layer ``d``; drawn
        when there are two or more.

    Returns
    -------
    The figure (one or two panels).
    """
    import matplotlib.pyplot as plt

    panels = [p for p, have in (("layers", layer_rows), ("hybrids", hybrids)) if have]
    if not panels:
        raise ValueError("nothing to draw: no per-layer rows and no hybrids")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.3), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "layers":
            plot_layer_localisation(ax, layer_labels, [r["localisation_mean"] for r in layer_rows],
                                    [r["localisation_median"] for r in layer_rows],
                                    title=f"{layers_model} ({layer_rows[0]['n_grids']} grids)",
                                    chance_label="chance (3x3 grid)")
            ax.legend(fontsize=7)
        else:
            _plot_hybrids(ax, hybrids, cnn_rows, same_layer)
    fig.suptitle("How deep the explanation starts, and what it costs")
    return fig


def _plot_hybrids(ax, hybrids: Sequence[Mapping], cnn_rows: Sequence[Mapping], same_layer) -> None:
    """Localisation and accuracy of the hybrids against the stem depth (notebook 03)."""
    depths = [r["stem_depth"] for r in hybrids]
    ax.plot(depths, [r["localisation_mean"] for r in hybrids], "o-", label="localisation (hybrid)")
    ax.plot(depths, [r["test_accuracy"] for r in hybrids], "s-", label="test accuracy")
    if len(same_layer) >= 2:
        ax.plot(*zip(*same_layer, strict=True), "^--", color="0.35", label="localisation, no stem, from layer d")
    for r in cnn_rows:
        ax.axhline(r["test_accuracy"], color="0.4", ls="--", lw=1, label="accuracy of the CNN baseline")
    ax.set_xticks(depths)
    ax.set(xlabel="stem depth d (conventional layers)", ylabel="localisation; accuracy (share)",
           title=f"hybrids ({hybrids[0]['epochs']} epochs each)")
    ax.axhline(CHANCE_3X3, color="0.5", ls=":", lw=1, label="chance (3x3 grid)")
    ax.set_ylim(0, 1)
    # The legend goes between the curves and the chance line, where nothing is drawn.
    ax.legend(fontsize=7, loc="lower center", bbox_to_anchor=(0.5, 0.14), ncol=2)


def plot_depth_tradeoff(hybrids: Sequence[Mapping], baselines: Sequence[Mapping] = (),
                        same_layer: Sequence[tuple[int, float]] = (), layer_labels: Sequence[str] = (),
                        layer_means: Sequence[float] = (), layers_model: str = ""):
    """Notebook 04's figure: accuracy and localisation against the stem depth of the hybrids.

    Parameters
    ----------
    hybrids : one row per stem depth (``stem_depth``, ``test_accuracy``, ``localisation_mean``).
    baselines : the all-conventional CNN's rows (``test_accuracy``, ``parameters``), dashed.
    same_layer : ``(d, localisation)`` of the pure network explained from layer ``d``; drawn
        when there are two or more.
    layer_labels, layer_means, layers_model : a third panel, the localisation at every layer's
        input of ``layers_model``, when given.

    Returns
    -------
    The figure (two or three panels).
    """
    import matplotlib.pyplot as plt

    n_panels = 2 + bool(len(layer_means))
    fig, axes = plt.subplots(1, n_panels, figsize=(4 * n_panels, 3.4), squeeze=False)
    ax_acc, ax_loc = axes[0, :2]
    depths = [r["stem_depth"] for r in hybrids]
    ax_acc.plot(*_points(hybrids, "stem_depth", "test_accuracy"), "o-", label="hybrid (stem + CoDA)")
    for r in baselines:
        ax_acc.axhline(r["test_accuracy"], color="0.4", ls="--", lw=1, label=f"CNN baseline ({r['parameters']:,} par.)")
    ax_acc.set(xlabel="stem depth (conventional layers)", ylabel="test accuracy", ylim=(0, 1))
    ax_acc.set_xticks(depths)
    ax_acc.legend(fontsize=8)
    ax_loc.plot(*_points(hybrids, "stem_depth", "localisation_mean"), "o-", label="hybrid, from its first CoDA layer")
    if len(same_layer) >= 2:
        ax_loc.plot(*zip(*same_layer, strict=True), "^--", color="0.35", label="no stem, explained from layer d")
    ax_loc.axhline(CHANCE_3X3, color="0.5", ls=":", lw=1, label="chance (3x3)")
    ax_loc.set_xticks(depths)
    ax_loc.set(xlabel="stem depth", ylabel="localisation (mean)", ylim=(0, 1), title="explained at the first CoDA layer")
    ax_loc.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 0.14))
    if len(layer_means):
        plot_layer_localisation(axes[0, 2], layer_labels, layer_means, title=f"every layer of {layers_model}",
                                xlabel="explained input", ylabel="localisation (mean)")
    fig.suptitle("Interpretable depth: accuracy and localisation against the conventional part's depth")
    return fig


def __getattr__(name: str):
    """The interactive explorers, importable from here as before (they live in :mod:`coda.widgets`)."""
    if name in ("dau_explorer", "contribution_explorer"):
        from coda import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
