"""Interactive explorers for the notebooks (ipywidgets; testable without a browser).

:func:`dau_explorer` (notebook 01): a 2-d DAU, its weight and output as the input turns;
:func:`contribution_explorer` (notebook 03): any image's contributions to any class at any
layer. Each returns the widget and its update function, so tests drive them headlessly. Both
are importable from :mod:`coda.plotting` as well, where the static figures live.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence

import torch

from coda.plotting import PALETTE, _numpy, show_contribution_map, show_image


def _figure_image(fig):
    """An ``ipywidgets.Image`` showing ``fig``, and a function that re-renders it.

    The explorers draw into a plain matplotlib ``Figure`` and ship it as PNG bytes in an
    image widget: no ``Output`` widget capturing display messages, so the explorers behave
    the same in JupyterLab, under papermill and in tests (where nothing is displayed).
    """
    import ipywidgets as widgets

    image = widgets.Image(format="png")

    def show():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, metadata={"Software": None}, facecolor="white")
        image.value = buf.getvalue()

    return image, show


def _default_dau_matrix() -> torch.Tensor:
    from coda.theory import matrix_with_eigenvectors, unit_vectors

    V = torch.stack([unit_vectors(20.0), unit_vectors(125.0)], 1)  # not orthogonal
    return matrix_with_eigenvectors([1.5, -0.7], V)


def dau_explorer(W: torch.Tensor | None = None, angle: float = 60.0, length: float = 1.0,
                 norm: str = "l2") -> tuple[object, Callable[[], dict]]:
    """An interactive 2-D DAU ``x -> g(W x)^T x``: rotate the input, watch the weight align.

    Left: the input ``x``, the normalised dynamic weight ``g(W x)`` and the eigenvectors of
    ``W`` (dashed). Right: ``DAU(x) / ||x||`` for every input direction, with the current
    one marked; it reaches 1 exactly at eigenvectors with a positive eigenvalue (L2 norm).

    Parameters
    ----------
    W : (2, 2) matrix with real eigenvalues; default: eigenvalues 1.5 (at 20 degrees) and
        -0.7 (at 125 degrees).
    angle, length : the initial input direction (degrees) and norm.
    norm : the initial norm, "l2" or "squash".

    Returns
    -------
    ``(widget, update)``: display ``widget`` in a notebook. ``update()`` redraws for the
    current control values and returns the explorer's state dict (``angle``, ``length``,
    ``norm``, ``output``, ``weight``); moving a control calls it, and the same dict is
    updated in place, so ``state = update()`` stays current.
    """
    import ipywidgets as widgets
    from matplotlib.figure import Figure

    from coda.dau import normalise
    from coda.theory import dau_of_matrix, unit_vectors

    W = _default_dau_matrix() if W is None else torch.as_tensor(W, dtype=torch.float64)
    eigvals, eigvecs = torch.linalg.eig(W)
    if eigvals.imag.abs().max() > 1e-9:
        raise ValueError("dau_explorer needs a matrix W with real eigenvalues")
    eigvals, eigvecs = eigvals.real, eigvecs.real
    grid = torch.linspace(0, 360, 721, dtype=torch.float64)

    controls = {
        "angle": widgets.FloatSlider(value=angle, min=0, max=360, step=1, description="angle of x"),
        "length": widgets.FloatLogSlider(value=length, base=10, min=-1, max=1, step=0.05,
                                         description="||x||"),
        "norm": widgets.ToggleButtons(options=["l2", "squash"], value=norm, description="norm g"),
    }
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax_vec, ax_out = fig.subplots(1, 2)
    lim = 1.25
    ax_vec.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title="input and dynamic weight")
    ax_vec.add_artist(_circle(1.0))
    for lam, v in zip(eigvals, eigvecs.T, strict=True):
        v = v / v.norm()
        ax_vec.plot([-lim * v[0], lim * v[0]], [-lim * v[1], lim * v[1]], ls="--", lw=1, color="0.6")
        ax_vec.text(0.8 * v[0], 0.8 * v[1], f"λ = {lam:.2f}", color="0.3", fontsize=8, ha="center",
                    va="center", bbox={"facecolor": "white", "edgecolor": "none", "pad": 1})
    arrows = ax_vec.quiver([0, 0], [0, 0], [1, 0], [0, 1], angles="xy", scale_units="xy", scale=1,
                           color=[PALETTE[0], PALETTE[1]], width=0.012)
    ax_vec.legend(handles=[_patch(PALETTE[0], "x / ||x||"), _patch(PALETTE[1], "g(W x)")],
                  loc="lower left", fontsize=8)
    (curve,) = ax_out.plot(grid, grid * 0, color=PALETTE[2])
    (marker,) = ax_out.plot([angle], [0], "o", color=PALETTE[0], ms=8)
    ax_out.axhline(1, color="0.5", ls=":", lw=1)
    ax_out.axhline(-1, color="0.5", ls=":", lw=1)
    for v in eigvecs.T:
        a = float(torch.rad2deg(torch.atan2(v[1], v[0]))) % 180
        for a_ in (a, a + 180):
            ax_out.axvline(a_, color="0.6", ls="--", lw=1)
    ax_out.set(xlim=(0, 360), ylim=(-1.1, 1.1), xlabel="angle of x (degrees)", ylabel="DAU(x) / ||x||",
               xticks=range(0, 361, 60))
    image, show = _figure_image(fig)
    state: dict = {}

    def update(change=None) -> dict:
        a, r, g = controls["angle"].value, controls["length"].value, controls["norm"].value
        xs = r * unit_vectors(grid)
        curve.set_ydata((dau_of_matrix(xs, W, g) / r).numpy())
        x = r * unit_vectors(a)[None]
        y = float(dau_of_matrix(x, W, g)[0])
        Wx = x @ W.T
        weight = normalise(Wx, g)[0]
        shown_x = x[0] / r
        arrows.set_UVC([float(shown_x[0]), float(weight[0])], [float(shown_x[1]), float(weight[1])])
        marker.set_data([a], [y / r])
        ax_out.set_title(f"DAU(x) = {y:.3f} = {y / r:.3f} ||x||")
        state.update(angle=a, length=r, norm=g, output=y, weight=weight.tolist())
        show()
        return state

    for c in controls.values():
        c.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox(list(controls.values())[:2]), controls["norm"], image]), update


def _circle(radius: float):
    from matplotlib.patches import Circle

    return Circle((0, 0), radius, fill=False, color="0.8", lw=1)


def _patch(color, label: str):
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


def contribution_explorer(model, images: torch.Tensor, labels: torch.Tensor | None = None,
                          classes: Sequence[str] | None = None,
                          percentile: float = 99.5) -> tuple[object, Callable[[], dict]]:
    """Pick an image, a class and a layer; see the exact contributions to that class's logit.

    Parameters
    ----------
    model : a :class:`coda.CoDANet` in eval mode.
    images : (N, 3, H, W) float images in [0, 1] to choose from.
    labels : optional (N,) true labels (adds a "true class" choice).
    classes : class names (default: "class 0", ...).
    percentile : colour limit of the maps (see :func:`show_contribution_map`).

    Returns
    -------
    ``(widget, update)`` as in :func:`dau_explorer`; the state dict holds ``index``,
    ``target``, ``layer`` (-1 = the encoded input), ``map`` (the (H_l, W_l) array shown),
    ``total`` (sum of the contributions) and ``logit``.
    """
    import ipywidgets as widgets
    from matplotlib.figure import Figure

    from coda.explain import contribution_map, contributions

    classes = list(classes) if classes is not None else [f"class {c}" for c in range(model.num_classes)]
    with torch.no_grad():
        logits = model(images)
    predicted = logits.argmax(1)
    class_options = [("predicted class", -1)] + ([("true class", -2)] if labels is not None else [])
    class_options += [(name, c) for c, name in enumerate(classes)]
    layer_options = [] if len(model.stem) else [("input [x, 1-x]", -1)]
    for layer in range(len(model.layers)):
        c, h, w = model.layer_input(images[:1], layer).shape[1:]
        layer_options.append((f"input of CoDA layer {layer + 1} ({c}x{h}x{w})", layer))
    controls = {
        "index": widgets.IntSlider(value=0, min=0, max=len(images) - 1, description="image",
                                   continuous_update=False),
        "target": widgets.Dropdown(options=class_options, value=-1, description="class"),
        "layer": widgets.Dropdown(options=layer_options, value=layer_options[0][1], description="explain"),
    }
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax_img, ax_map = fig.subplots(1, 2)
    image, show = _figure_image(fig)
    state: dict = {}

    def update(change=None) -> dict:
        i, t, layer = controls["index"].value, controls["target"].value, controls["layer"].value
        target = int(predicted[i]) if t == -1 else int(labels[i]) if t == -2 else t
        contribs = contributions(model, images[i : i + 1], target, None if layer == -1 else layer)
        cmap = contribution_map(contribs)[0]
        total = float(contribs.sum())
        for ax in (ax_img, ax_map):
            ax.clear()
        truth = f", true: {classes[int(labels[i])]}" if labels is not None else ""
        show_image(ax_img, images[i], title=f"predicted: {classes[int(predicted[i])]}{truth}")
        show_contribution_map(ax_map, cmap, percentile=percentile,
                              title=f"{classes[target]}: sum {total:.2f} = logit - b0")
        state.update(index=i, target=target, layer=layer, map=_numpy(cmap), total=total,
                     logit=float(logits[i, target]))
        show()
        return state

    for c in controls.values():
        c.observe(update, names="value")
    update()
    return widgets.VBox([widgets.HBox([controls["index"], controls["target"]]), controls["layer"], image]), update
