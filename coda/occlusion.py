"""Occlusion attributions of a CoDA-Net by local recomputation: captum's numbers, far fewer FLOPs.

Occlusion (Zeiler and Fergus 2014) slides a ``patch`` x ``patch`` window of zeros over the image
with a ``stride`` and scores every pixel by how much the target logit drops while a window
covers it:

    attribution[c, y, x] = mean over the windows w covering (y, x) of  logit(image) - logit(image with w zeroed)

For a 96 x 96 grid, a 9 x 9 window and stride 2 that is 45 x 45 = 2,025 forward passes of the
whole network per image. But a convolution's output at a position depends only on the input
in its kernel's reach, so zeroing a window changes each layer's output only inside a small
rectangle: the window grown by ``(k - 1) / 2`` per 3 x 3 layer, halved by every stride-2 layer.
A pure CoDA-Net ends in sum pooling (``logit = sum(a_L) / T + b``), so the logit's change is the
change of the last layer's output summed over that rectangle alone:

    logit(image with w zeroed) - logit(image) = (sum over R_L of a_L(occluded) - a_L(original)) / T

:func:`occlusion_classes` runs the network once on the image, keeps every layer's output, and
for each window recomputes only the rectangles: on the 9L-S about 1% of the first layers'
positions and a quarter of the last ones'. The result is captum's ``Occlusion`` with
``sliding_window_shapes=(C, patch, patch)``, ``strides=(C, stride, stride)`` and baseline 0,
equal to float precision (``tests/test_occlusion.py`` checks it against the definition in
float64 and against captum in float32; 13-17x fewer CPU-seconds on a grid,
``benchmarks/bench_occlusion.py``), including
captum's windows: positions ``0, stride, 2 * stride, ...`` until one reaches the last pixel,
the last one cut at the border.

Only pure CoDA-Nets (no conventional stem) take this path (:func:`supports`); the explainers
fall back to captum for the others.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from coda import dau as F_dau
from coda.layers import CoDAConv2d
from coda.models import CoDANet


def supports(model: CoDANet) -> bool:
    """Whether ``model`` is a pure CoDA-Net (every module a :class:`CoDAConv2d`, no stem) whose
    strides are at most their kernels (so every input row is read by some output row)."""
    return (len(model.stem) == 0 and len(model.layers) > 0
            and all(isinstance(m, CoDAConv2d) and m.stride <= m.kernel_size for m in model.layers))


def window_starts(size: int, patch: int, stride: int) -> list[int]:
    """Where captum's occlusion windows start along one axis of ``size`` pixels.

    ``ceil((size - patch) / stride) + 1`` windows at ``0, stride, ...``; the last may stick out
    past the border and is cut there. ``ValueError`` unless ``1 <= stride <= patch <= size``.
    """
    if not 1 <= patch <= size or not 1 <= stride <= patch:
        raise ValueError(f"expected 1 <= stride <= patch <= image size, got stride {stride}, patch {patch}, "
                         f"size {size}")
    return [i * stride for i in range(math.ceil((size - patch) / stride) + 1)]


def affected_range(lo: int, hi: int, layer: CoDAConv2d) -> tuple[int, int]:
    """The output rows ``[out_lo, out_hi)`` of ``layer`` that read any of its input rows ``[lo, hi)``,
    and the input rows those outputs read: ``(out_lo, out_hi), (in_lo, in_hi)``.

    Output row ``i`` reads input rows ``s * i - p ... s * i - p + k - 1`` (kernel k, stride s,
    padding p). Nothing is clipped at the border: rows below 0 or past the end are the layer's
    zero padding on the input side and are masked out on the output side.
    """
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    out_lo, out_hi = -((k - 1 - p - lo) // s), (hi - 1 + p) // s + 1  # ceil((lo + p - k + 1) / s), ...
    return (out_lo, out_hi), (s * out_lo - p, s * (out_hi - 1) - p + k)


def _plan(model: CoDANet, rows: tuple[int, int], cols: tuple[int, int]) -> list:
    """How one window's change travels through the layers: per layer, the input rectangle to
    cut out and the output rectangle that results, ``((in_rows, in_cols), (out_rows, out_cols))``.

    ``rows``, ``cols``: the window in a_0, ``[lo, hi)``.
    """
    steps = []
    for layer in model.layers:
        out_rows, in_rows = affected_range(*rows, layer)
        out_cols, in_cols = affected_range(*cols, layer)
        steps.append(((in_rows, in_cols), (out_rows, out_cols)))
        rows, cols = out_rows, out_cols
    return steps


def _signature(window: tuple, steps: list) -> tuple:
    """What windows must share to be computed in one batch: every rectangle's size and where
    the previous rectangle lies in it (windows differ only in where they are)."""
    (rows, cols), sig = window, []
    for (in_rows, in_cols), (out_rows, out_cols) in steps:
        sig.append((in_rows[1] - in_rows[0], in_cols[1] - in_cols[0], rows[0] - in_rows[0], cols[0] - in_cols[0],
                    out_rows[1] - out_rows[0], out_cols[1] - out_cols[0]))
        rows, cols = out_rows, out_cols
    return tuple(sig)


def _inside(rows: list, cols: list, size: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    """(G, 1, h, w) mask, 1 where a rectangle's position lies inside the ``size`` = (H, W) map."""
    r = torch.tensor([lo for lo, _ in rows], device=like.device)[:, None] + torch.arange(rows[0][1] - rows[0][0],
                                                                                       device=like.device)
    c = torch.tensor([lo for lo, _ in cols], device=like.device)[:, None] + torch.arange(cols[0][1] - cols[0][0],
                                                                                       device=like.device)
    ok = ((r >= 0) & (r < size[0]))[:, :, None] & ((c >= 0) & (c < size[1]))[:, None, :]
    return ok[:, None].to(like.dtype)


def _drops(model: CoDANet, padded: list, margins: list, shapes: list, occluded: torch.Tensor,
           windows: list, plans: list, classes: torch.Tensor) -> torch.Tensor:
    """``logit(image) - logit(image with window zeroed)`` for windows that share a signature: (G, K).

    ``padded[l]`` is a_l on the image, zero-padded by ``margins[l]`` on every side, (1, C_l, ., .);
    ``shapes[l]`` its unpadded (H_l, W_l); ``occluded`` the encoding of a zero pixel, (1, C_0, 1, 1);
    ``windows`` the (rows, cols) of each window in a_0, ``plans`` their :func:`_plan`.
    """
    def cut(i: int, rows_cols: list) -> torch.Tensor:
        m = margins[i]
        return torch.cat([padded[i][:, :, r0 + m:r1 + m, c0 + m:c1 + m] for (r0, r1), (c0, c1) in rows_cols])

    rows, cols = zip(*windows, strict=True)
    changed = occluded * _inside(rows, cols, shapes[0], occluded)  # the window, zero past the border
    for i, layer in enumerate(model.layers):
        in_rect = [plan[i][0] for plan in plans]
        x = cut(i, in_rect)
        r, c = rows[0][0] - in_rect[0][0][0], cols[0][0] - in_rect[0][1][0]  # the same for the whole batch
        x[:, :, r:r + changed.shape[2], c:c + changed.shape[3]] = changed
        out = F_dau.dau_conv2d(x, layer.A, layer.B, layer.b, layer.stride, 0, layer.norm, layer.explain)
        rows, cols = zip(*[plan[i][1] for plan in plans], strict=True)
        changed = out * _inside(rows, cols, shapes[i + 1], out)  # positions past the border do not exist
    before = cut(len(model.layers), list(zip(rows, cols, strict=True)))[:, classes].sum((2, 3))
    after = changed[:, classes].sum((2, 3))
    return (before - after) / model.temperature


@torch.no_grad()
def occlusion_classes(model: CoDANet, image: torch.Tensor, classes, patch: int, stride: int,
                      batch_size: int = 256) -> torch.Tensor:
    """Occlusion attributions of one image for several classes, by local recomputation.

    Parameters
    ----------
    model : a pure CoDA-Net (:func:`supports`), evaluated as it is (call ``model.eval()`` first).
    image : (1, C, H, W) in [0, 1].
    classes : (K,) class indices; one pass per window serves all of them.
    patch, stride : the window's side and step in pixels (the paper's Occ9: 9 and 2).
    batch_size : windows computed together (those whose rectangles have the same shapes).

    Returns
    -------
    (K, C, H, W) attributions in the model's dtype, the same for every channel.
    """
    if not supports(model):
        raise ValueError("local occlusion needs a pure CoDA-Net (CoDA layers only, no conventional stem); "
                         "use captum's Occlusion (coda.explainers) for this model")
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"expected one image (1, C, H, W), got shape {tuple(image.shape)}")
    classes = torch.as_tensor(classes, device=image.device).reshape(-1)
    height, width = image.shape[2:]
    acts = [model.encode(image)]  # a_0 (the encoded [x, 1 - x]) ... a_L
    for layer in model.layers:
        acts.append(layer(acts[-1]))
    occluded = model.encode(torch.zeros_like(image[:, :, :1, :1]))  # a zero pixel after encoding: [0, 1]
    shapes = [tuple(a.shape[2:]) for a in acts]

    groups: dict[tuple, list] = {}  # signature -> [(window, plan), ...]
    margins = [0] * len(acts)  # how far rectangles reach past each map's border
    for r0 in window_starts(height, patch, stride):
        for c0 in window_starts(width, patch, stride):
            window = ((r0, r0 + patch), (c0, c0 + patch))  # past the border for the last ones
            plan = _plan(model, *window)
            groups.setdefault(_signature(window, plan), []).append((window, plan))
            for i, rect in enumerate([*(step[0] for step in plan), plan[-1][1]]):
                for (lo, hi), size in zip(rect, shapes[i], strict=True):
                    margins[i] = max(margins[i], -lo, hi - size)
    padded = [F.pad(a, [m] * 4) for a, m in zip(acts, margins, strict=True)]

    total = torch.zeros(len(classes), height, width, dtype=acts[-1].dtype, device=image.device)
    count = torch.zeros(height, width, dtype=acts[-1].dtype, device=image.device)
    for members in groups.values():
        for start in range(0, len(members), batch_size):
            windows, plans = zip(*members[start:start + batch_size], strict=True)
            drops = _drops(model, padded, margins, shapes, occluded, windows, plans, classes)  # (G, K)
            for (rows, cols), drop in zip(windows, drops, strict=True):
                total[:, slice(*rows), slice(*cols)] += drop[:, None, None]
                count[slice(*rows), slice(*cols)] += 1
    attributions = total / count
    return attributions[:, None].expand(-1, image.shape[1], -1, -1).contiguous()
