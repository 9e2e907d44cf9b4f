"""Quantitative interpretability (docs/method.md#evaluation-protocols): the grid pointing game and pixel removal.

Localisation ("grid pointing game"): tiles of ``grid_size x grid_size`` confidently and
correctly classified test images of distinct classes; an explanation of one cell's class
should put its positive attribution inside that cell::

    grids = make_grids(model, test_set, n_grids=500)                  # 3x3, 96 x 96 on CIFAR
    result = localisation_scores(model, grids, "coda")                 # scores (500, 9)
    result.mean, result.median

Pixel removal: remove the pixels an explanation deems least important first (both ``x`` and
``1 - x`` set to 0 in the encoded input) and follow the true class's probability::

    result = pixel_removal(model, images, labels, "coda")              # 129 points for 32 x 32
    result.curve, result.mean                                          # the paper's "area"

:class:`Clock` times the attributions (wall-clock and process CPU seconds). This module sits on
the models, the explainers and :mod:`coda.inference`; it imports neither the trainer nor the
shipped models' registry. The command line that runs these metrics over a model, keeps their
results and writes the tables is :mod:`coda.evaluate`.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings

import torch

from coda.data import ImageDataset, to_float
from coda.explainers import Explainer, get_explainer
from coda.inference import predict
from coda.models import CoDANet
from coda.progress import progress_bar

ORDERS = ("least", "most")  # pixel removal: least important first (the paper's), or most


class Clock:
    """Accumulates wall-clock and process CPU seconds over ``with clock:`` blocks.

    CPU time stays meaningful on a shared machine, where wall-clock time depends on the other
    jobs; CUDA work is synchronised before reading the clocks.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> Clock:
        self._sync()
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self._sync()
        self.seconds += time.perf_counter() - self._wall
        self.cpu_seconds += time.process_time() - self._cpu


# ----- localisation: the grid pointing game ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Grids:
    """Grids of images of distinct classes for the pointing game.

    Attributes
    ----------
    images : (n, 3, g*H, g*W) uint8 or float; cell ``k`` (row-major: row ``k // g``, column
        ``k % g``) holds one image of class ``classes[:, k]``.
    classes : (n, g*g) long, the class in each cell (distinct within a grid).
    grid_size : g.
    indices : (n, g*g) long, the data-set index of each cell's image, or None.
    n_requested : the number of grids asked for; fewer means the data ran out.
    """

    images: torch.Tensor
    classes: torch.Tensor
    grid_size: int
    indices: torch.Tensor | None = None
    n_requested: int | None = None

    def __post_init__(self):
        n, cells = self.images.shape[0], self.grid_size**2
        if self.images.dim() != 4 or self.images.shape[-1] % self.grid_size or self.images.shape[-2] % self.grid_size:
            raise ValueError(
                f"grid images must be (n, C, g*H, g*W) with g = {self.grid_size}, got {tuple(self.images.shape)}"
            )
        if self.classes.shape != (n, cells):
            raise ValueError(f"classes must have shape ({n}, {cells}), got {tuple(self.classes.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def n_cells(self) -> int:
        return self.grid_size**2

    @property
    def exhausted(self) -> bool:
        """True when the data ran out of confident images before ``n_requested`` grids."""
        return self.n_requested is not None and len(self) < self.n_requested


def _check_grid_args(n_grids: int, grid_size: int, num_classes: int) -> None:
    if not isinstance(grid_size, int) or isinstance(grid_size, bool) or grid_size < 2:
        raise ValueError(f"grid_size must be an int >= 2, got {grid_size!r}")
    if not isinstance(n_grids, int) or isinstance(n_grids, bool) or n_grids < 1:
        raise ValueError(f"n_grids must be an int >= 1, got {n_grids!r}")
    if grid_size**2 > num_classes:
        raise ValueError(
            f"a {grid_size}x{grid_size} grid needs {grid_size**2} distinct classes, the data has {num_classes}"
        )


def confident_queues(logits: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Per class, the indices of correctly classified images with sigmoid(logit) > 0.5.

    Sorted by the class logit, most confident first (ties by index). ``logits`` (N, K),
    ``labels`` (N,). Returns K tensors of indices.
    """
    correct = logits.argmax(1) == labels
    queues = []
    for c in range(logits.shape[1]):
        idx = torch.nonzero(correct & (labels == c)).flatten()
        conf = logits[idx, c]
        order = torch.argsort(conf, descending=True, stable=True)
        idx, conf = idx[order], conf[order]
        queues.append(idx[torch.sigmoid(conf) > 0.5])
    return queues


def sample_grid_indices(logits: torch.Tensor, labels: torch.Tensor, n_grids: int = 500,
                        grid_size: int = 3, seed: int = 0) -> torch.Tensor:
    """Choose the images of each grid (docs/method.md#localisation-the-grid-pointing-game).

    While every class still has an unused correctly classified image with
    sigmoid(logit) > 0.5, sample ``grid_size**2`` distinct classes (a seeded generator)
    and take each one's next most confident image. (For 10 classes and 3x3 grids this is
    the authors' rule "more than 9 classes still available".)

    Parameters
    ----------
    logits : (N, K) logits of the data set; labels : (N,) true classes.

    Returns
    -------
    (n, grid_size**2) long data-set indices, n <= n_grids (fewer when the images run out).
    """
    _check_grid_args(n_grids, grid_size, logits.shape[1])
    if logits.dim() != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"expected logits (N, K) and labels (N,), got {tuple(logits.shape)}, {tuple(labels.shape)}")
    queues = confident_queues(logits.detach().float().cpu(), labels.cpu())
    used = [0] * len(queues)
    generator = torch.Generator().manual_seed(seed)
    rows = []
    while len(rows) < n_grids and all(u < len(q) for u, q in zip(used, queues, strict=True)):
        classes = torch.randperm(len(queues), generator=generator)[: grid_size**2].tolist()
        rows.append([queues[c][used[c]].item() for c in classes])
        for c in classes:
            used[c] += 1
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), grid_size**2)


def tile(images: torch.Tensor, grid_size: int) -> torch.Tensor:
    """(..., g*g, C, H, W) -> (..., C, g*H, g*W); image ``k`` goes to row ``k // g``, column ``k % g``."""
    *lead, cells, c, h, w = images.shape
    if cells != grid_size**2:
        raise ValueError(f"expected {grid_size**2} images per grid, got {cells}")
    x = images.reshape(*lead, grid_size, grid_size, c, h, w)
    x = x.movedim(-3, -5)  # (..., C, g_row, g_col, H, W)
    x = x.transpose(-3, -2)  # (..., C, g_row, H, g_col, W)
    return x.reshape(*lead, c, grid_size * h, grid_size * w)


def cell_sums(maps: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Sum of each cell of maps (B, g*H, g*W) -> (B, g*g), cells row-major as in :func:`tile`."""
    b, gh, gw = maps.shape
    h, w = gh // grid_size, gw // grid_size
    return maps.reshape(b, grid_size, h, grid_size, w).sum((2, 4)).reshape(b, grid_size**2)


def grids_from_logits(logits: torch.Tensor, dataset: ImageDataset, n_grids: int = 500,
                      grid_size: int = 3, seed: int = 0) -> Grids:
    """Build the grids for ``dataset`` given its logits (N, K); see :func:`make_grids`."""
    indices = sample_grid_indices(logits, dataset.labels, n_grids, grid_size, seed)
    if len(indices) < n_grids:
        warnings.warn(
            f"only {len(indices)} of {n_grids} grids: a class ran out of correctly classified images "
            "with sigmoid(logit) > 0.5", stacklevel=2,
        )
    return grids_from_indices(dataset, indices, grid_size, n_grids)


def grids_from_indices(dataset: ImageDataset, indices: torch.Tensor, grid_size: int,
                       n_requested: int | None = None) -> Grids:
    """The grids whose cells hold ``dataset``'s images ``indices`` (n, g*g), e.g. grids drawn
    before (``Grids.indices``), so that another run scores the very same grids."""
    indices = torch.as_tensor(indices, dtype=torch.long)
    if indices.dim() != 2 or indices.shape[1] != grid_size**2:
        raise ValueError(f"expected grid indices (n, {grid_size**2}), got {tuple(indices.shape)}")
    if len(indices) and not (0 <= int(indices.min()) and int(indices.max()) < len(dataset)):
        raise ValueError(f"grid indices in [{int(indices.min())}, {int(indices.max())}] for {len(dataset)} images")
    images = dataset.images[indices.flatten()].reshape(*indices.shape, *dataset.images.shape[1:])
    return Grids(tile(images, grid_size), dataset.labels[indices], grid_size, indices, n_requested)


def make_grids(model: CoDANet, dataset: ImageDataset, n_grids: int = 500, grid_size: int = 3,
               seed: int = 0, batch_size: int = 500) -> Grids:
    """The pointing-game grids of docs/method.md#localisation-the-grid-pointing-game for ``model`` on ``dataset``.

    Parameters
    ----------
    model : ranks the images by its logits (computed in eval mode, fp32).
    dataset : e.g. the CIFAR-10 test set (uint8 images (N, 3, H, W)).
    n_grids : how many grids to make (500 in the paper); fewer are returned, with a
        warning and ``Grids.exhausted`` set, when the confident images run out.
    grid_size : 3 (the paper, 96 x 96 for CIFAR) or 2 (64 x 64), ...
    seed : seeds the class sampling.

    Returns
    -------
    :class:`Grids` with uint8 images (n, 3, g*H, g*W).
    """
    _check_grid_args(n_grids, grid_size, model.num_classes)
    logits = predict(model, dataset.images, batch_size)
    return grids_from_logits(logits, dataset, n_grids, grid_size, seed)


@dataclasses.dataclass(frozen=True)
class LocalisationResult:
    """Pointing-game scores of one method: ``scores`` (n_grids, g*g), one per (grid, cell).

    ``seconds`` and ``cpu_seconds`` are the wall-clock and process CPU time spent computing
    attributions; ``n_attributions`` their number (one per grid and cell).
    """

    method: str
    label: str
    scores: torch.Tensor
    seconds: float = float("nan")
    cpu_seconds: float = float("nan")

    @property
    def n_attributions(self) -> int:
        return self.scores.numel()

    @property
    def mean(self) -> float:
        return self.scores.mean().item() if self.scores.numel() else math.nan

    @property
    def median(self) -> float:
        """The median (the mean of the two middle scores for an even count)."""
        return self.scores.flatten().quantile(0.5).item() if self.scores.numel() else math.nan


def as_explainer(explainer: str | Explainer | object) -> Explainer:
    """A registry name, an :class:`Explainer`, or a plain function ``(model, images, targets)``."""
    if isinstance(explainer, (str, Explainer)):
        return get_explainer(explainer)
    if callable(explainer):
        name = getattr(explainer, "__name__", "custom")
        return Explainer(name, name, lambda model, images, targets: explainer(model, images, targets))
    raise ValueError(f"expected an explainer name, an Explainer or a function, got {type(explainer).__name__}")


def grid_scores(attributions: torch.Tensor, grid_size: int) -> torch.Tensor:
    """Pointing-game scores of one grid.

    Parameters
    ----------
    attributions : (g*g, C, g*H, g*W); row ``k`` explains the class of cell ``k``.

    Returns
    -------
    (g*g,) the positive attribution inside cell ``k`` divided by the total positive
    attribution of row ``k``; 0 where there is no positive attribution at all (an
    explanation that points nowhere scores as badly as one that points elsewhere; this is
    also the authors' convention).
    """
    sums = cell_sums(attributions.sum(1).clamp_min(0), grid_size)
    total = sums.sum(1)
    inside = sums.diagonal()
    return torch.where(total > 0, inside / total.clamp_min(torch.finfo(total.dtype).tiny), torch.zeros_like(total))


def localisation_scores(model: CoDANet, grids: Grids, explainer: str | Explainer | object = "coda",
                        progress: bool = False) -> LocalisationResult:
    """Score ``explainer`` in the pointing game on ``grids``.

    For each grid and cell, the cell's class is explained on the whole grid; the score is the
    share of the positive attribution (summed over channels) that falls inside that cell.
    A perfect explanation scores 1, a uniform one ``1 / grid_size**2`` (chance).

    Parameters
    ----------
    model : the :class:`coda.CoDANet` to explain (its device is used).
    grids : from :func:`make_grids`.
    explainer : a name from ``coda.explainers.EXPLAINERS``, an ``Explainer``, or a function
        ``(model, images (B, 3, h, w), targets (B,)) -> (B, C, h, w)``.

    Returns
    -------
    :class:`LocalisationResult` with ``scores`` (len(grids), grid_size**2) on the CPU.
    """
    explainer = as_explainer(explainer)
    device = next(model.parameters()).device
    scores, clock = [], Clock(device)
    for g in progress_bar(range(len(grids)), f"localisation {explainer.name}", enabled=progress):
        x = grids.images[g : g + 1].to(device)
        x = to_float(x) if x.dtype == torch.uint8 else x.float()
        with clock:
            attributions = explainer.attribute_classes(model, x, grids.classes[g].to(device))
        scores.append(grid_scores(attributions.float(), grids.grid_size).cpu())
    scores = torch.stack(scores) if scores else torch.zeros(0, grids.n_cells)
    return LocalisationResult(explainer.name, explainer.label, scores, clock.seconds, clock.cpu_seconds)


# ----- pixel removal -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RemovalResult:
    """Pixel-removal curves of one method.

    Attributes
    ----------
    probabilities : (N, P) sigmoid probability of each image's true class after removing
        ``n_removed[p]`` pixels.
    n_removed : (P,) pixels removed at each point (0, stride, 2 * stride, ...).
    n_pixels : H * W.
    order : "least" (least important first, the paper's) or "most".
    seconds, cpu_seconds : wall-clock and process CPU time spent computing the N attributions.
    """

    method: str
    label: str
    order: str
    probabilities: torch.Tensor
    n_removed: torch.Tensor
    n_pixels: int
    seconds: float = float("nan")
    cpu_seconds: float = float("nan")

    @property
    def n_attributions(self) -> int:
        return self.probabilities.shape[0]

    @property
    def curve(self) -> torch.Tensor:
        """(P,) mean true-class probability over the images."""
        return self.probabilities.mean(0)

    @property
    def mean(self) -> float:
        """The curve's mean over its points (the number the paper reports)."""
        return self.curve.mean().item()

    @property
    def fraction_removed(self) -> torch.Tensor:
        return self.n_removed.double() / self.n_pixels


def removal_points(n_pixels: int, fraction: float = 0.25, stride: int = 2) -> torch.Tensor:
    """Pixels removed at each evaluation: 0, stride, ... up to ``int(fraction * n_pixels)``.

    (129 points for 32 x 32 images, fraction 0.25, stride 2.)
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        raise ValueError(f"stride must be an int >= 1, got {stride!r}")
    return torch.arange(0, int(fraction * n_pixels) + 1, stride)


def removal_masks(importance: torch.Tensor, n_removed: torch.Tensor, order: str = "least") -> torch.Tensor:
    """Which pixels are kept at each removal level.

    Parameters
    ----------
    importance : (B, H, W) attribution summed over channels.
    n_removed : (P,) pixels to remove.
    order : "least" removes the lowest importance first, "most" the highest (ties: the
        lower pixel index first, so the order is deterministic).

    Returns
    -------
    (B, P, H, W) bool, True where the pixel is kept.
    """
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    b, h, w = importance.shape
    flat = importance.reshape(b, h * w)
    ranking = torch.argsort(flat if order == "least" else -flat, dim=1, stable=True)
    rank = torch.empty_like(ranking).scatter_(1, ranking, torch.arange(h * w, device=flat.device).expand(b, -1))
    return (rank[:, None, :] >= n_removed.to(flat.device)[None, :, None]).reshape(b, -1, h, w)


@torch.no_grad()
def removal_probabilities(model: CoDANet, images: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor,
                          batch_size: int = 256) -> torch.Tensor:
    """True-class probabilities of images with pixels removed in the encoded input.

    Parameters
    ----------
    images : (B, 3, H, W) float in [0, 1]; labels : (B,).
    keep : (B, P, H, W) bool from :func:`removal_masks`; where False, both ``x`` and ``1 - x``
        are set to 0.
    batch_size : images per forward pass (the P levels of an image are stacked).

    Returns
    -------
    (B, P) sigmoid probability of the true class, fp32, model in eval mode.
    """
    b, p = keep.shape[:2]
    was_training = model.training
    model.eval()
    try:
        encoded = model.encode(images.float())  # (B, 6, H, W)
        stacked = (encoded[:, None] * keep[:, :, None]).flatten(0, 1)  # (B*P, 6, H, W)
        targets = labels.repeat_interleave(p)
        with torch.autocast(images.device.type, enabled=False):
            out = [torch.sigmoid(model.head(model.stem(chunk))).gather(1, t[:, None])
                   for chunk, t in zip(stacked.split(batch_size), targets.split(batch_size), strict=True)]
        return torch.cat(out).reshape(b, p)
    finally:
        model.train(was_training)


def pixel_removal(model: CoDANet, images: torch.Tensor, labels: torch.Tensor,
                  explainer: str | Explainer | object = "coda", fraction: float = 0.25, stride: int = 2,
                  order: str = "least", batch_size: int = 32, eval_batch_size: int = 256,
                  progress: bool = False) -> RemovalResult:
    """The pixel-removal curve of ``explainer`` (docs/method.md#pixel-removal).

    Each image's pixels are sorted by the attribution of its true class summed over
    channels and removed in that order (``order="least"``: least important first, the
    paper's protocol), by zeroing both ``x`` and ``1 - x`` in the encoded input.

    Parameters
    ----------
    model : the :class:`coda.CoDANet` (its device is used).
    images : (N, 3, H, W) uint8 or float in [0, 1] (the paper: the first 1024 test images).
    labels : (N,) true classes.
    explainer : as in :func:`localisation_scores`.
    fraction, stride : remove up to ``int(fraction * H * W)`` pixels, evaluating every
        ``stride`` pixels (129 points for 32 x 32, 0.25, 2).
    batch_size : images explained per call; eval_batch_size : images per forward pass when
        evaluating the removal levels.

    Returns
    -------
    :class:`RemovalResult` (probabilities (N, P) on the CPU).
    """
    explainer = as_explainer(explainer)
    if images.dim() != 4 or labels.shape != (images.shape[0],):
        raise ValueError(f"expected images (N, 3, H, W) and labels (N,), got {tuple(images.shape)}, {tuple(labels.shape)}")
    for name, value in (("batch_size", batch_size), ("eval_batch_size", eval_batch_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    n_pixels = images.shape[-2] * images.shape[-1]
    n_removed = removal_points(n_pixels, fraction, stride)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    device = next(model.parameters()).device
    probabilities, clock = [], Clock(device)
    for start in progress_bar(range(0, len(images), batch_size), f"removal {explainer.name}", enabled=progress):
        x = images[start : start + batch_size].to(device)
        x = to_float(x) if x.dtype == torch.uint8 else x.float()
        y = labels[start : start + batch_size].to(device)
        with clock:
            importance = explainer(model, x, y).float().sum(1)
        keep = removal_masks(importance, n_removed, order)
        probabilities.append(removal_probabilities(model, x, y, keep, eval_batch_size).cpu())
    probabilities = torch.cat(probabilities) if probabilities else torch.zeros(0, len(n_removed))
    return RemovalResult(explainer.name, explainer.label, order, probabilities, n_removed, n_pixels, clock.seconds,
                         clock.cpu_seconds)
