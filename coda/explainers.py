"""Attribution methods behind one interface: the CoDA contributions and captum's post-hoc methods.

    explain(model, images, target, method) -> attributions

``images`` (B, 3, H, W) in [0, 1]; ``target`` an int or one class per image. The post-hoc
methods (docs/method.md#evaluation-protocols) explain the *full* model, ``model(images) -> logits``, and come
from captum (imported when first used); they return attributions (B, C, H, W) on the raw
image, C = 3, except Grad-CAM (C = 1, one map upsampled to the image size). ``"coda"``
returns the exact contributions over the encoded input ``[x, 1 - x]`` (C = 6), which sum to
``logit - b0``. The metrics in :mod:`coda.metrics` sum every method's attributions over
channels.

| name | paper | what it is |
|---|---|---|
| coda | Ours | ``coda.contributions``: input times the dynamic linear map ``W_{1->L}(x)`` |
| grad | Grad | signed gradient (captum ``Saliency``, ``abs=False``) |
| ixg | IxG | input x gradient |
| intgrad | IntGrad | Integrated Gradients, 20 steps, zero baseline |
| deeplift | DeepLIFT | captum ``DeepLift``, zero baseline |
| gradcam | GCam | ``LayerGradCam`` on the last CoDA layer, ReLU, nearest upsampling |
| occ5, occ9 | Occ5, Occ9 | ``Occlusion``, 5x5 / 9x9 patches, stride 2, baseline 0 (on a pure CoDA-Net computed by :mod:`coda.occlusion`: the same numbers, 13-17x fewer CPU-seconds on a grid) |
| lime | LIME | captum ``Lime`` on 4x4 pixel blocks, 256 samples, ridge surrogate, seeded; the classes of one image share its samples and forward passes (``shared_samples``) |
| guided_backprop | GB | captum ``GuidedBackprop`` |

On a pure CoDA-Net two of these reduce to others, because captum's rules act on modules the
network does not have: ``DeepLift`` replaces the gradient of ReLU/sigmoid/... *modules*, and
``GuidedBackprop`` overrides ReLU modules only. A CoDA-Net has no such module (its
non-linearity is the dynamic weight inside :class:`coda.CoDAConv2d`), so DeepLIFT with a
zero baseline equals Input x Gradient and Guided Backprop equals the plain gradient (the
tests check both) -- as in the paper's numbers, where DeepLIFT and IxG coincide.

RISE is not included: see ``results/README.md`` for why.

Options (``get_explainer("occ5", batch_size=64)``) are checked against each method's
defaults; an unknown option raises ``ValueError``. ``batch_size`` bounds the images in one
forward pass of a post-hoc method (memory), never its result.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch

from coda import occlusion
from coda.explain import check_targets, contributions
from coda.models import CoDANet, check_images

# Largest number of images in one forward (and backward) pass of a post-hoc method. The
# 9L-S network keeps about 50 MB of activations per 96 x 96 grid image for a backward pass.
DEFAULT_BATCH = 32

# captum warnings that say nothing about our use of it
_QUIET = (
    r"Input Tensor \d+ did not already require gradients",
    r"Setting forward, backward hooks and attributes on non-linear",
    r"Setting backward hooks on ReLU activations",
    r"You are providing multiple inputs for Lime",
)

AttributeFn = Callable[..., torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Explainer:
    """An attribution method with its settings.

    Attributes
    ----------
    name : the registry key (``"coda"``, ``"occ5"``, ...).
    label : the method's name in the paper's figures ("Ours", "Occ5", ...).
    function : ``function(model, images, targets, **options) -> attributions`` with
        ``images`` (B, 3, H, W) float32, ``targets`` (B,) long; called in eval mode.
    options : the method's settings, e.g. ``{"n_steps": 20, "batch_size": 32}``.
    classes_function : optional ``(model, image (1, 3, H, W), classes (K,), **options) ->
        (K, C, H, W)``: attributions of one image for several classes that share the
        forward passes (occlusion). Without it, the image is repeated K times.
    post_hoc : False for the model's own explanation (``"coda"``).
    out_channels : the channels C of a post-hoc method's attributions when not those of the
        images (1 for Grad-CAM); gives the shape (0, C, H, W) of an empty batch's result.
    """

    name: str
    label: str
    function: AttributeFn
    options: Mapping = dataclasses.field(default_factory=dict)
    classes_function: AttributeFn | None = None
    post_hoc: bool = True
    out_channels: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def with_options(self, **options) -> Explainer:
        """A copy with some settings changed; names not in ``options`` raise ``ValueError``."""
        unknown = set(options) - set(self.options)
        if unknown:
            raise ValueError(
                f"unknown option(s) {sorted(unknown)} for explainer {self.name!r}; "
                f"it takes {sorted(self.options) or 'none'}"
            )
        return dataclasses.replace(self, options={**self.options, **options})

    def __call__(self, model: CoDANet, images: torch.Tensor, target) -> torch.Tensor:
        """Attributions (B, C, H, W) of ``target`` for ``images`` (B, 3, H, W); see module doc."""
        return self._run(self.function, model, images, target)

    def attribute_classes(self, model: CoDANet, image: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Attributions (K, C, H, W) of one image (1, 3, H, W) for each of ``classes`` (K,)."""
        if image.dim() != 4 or image.shape[0] != 1:
            raise ValueError(f"expected one image (1, 3, H, W), got shape {tuple(image.shape)}")
        classes = torch.as_tensor(classes, device=image.device)
        if self.classes_function is None:
            return self(model, image.expand(len(classes), -1, -1, -1), classes)
        return self._run(self.classes_function, model, image, classes, per_image=False)

    def _run(self, function: AttributeFn, model: CoDANet, images: torch.Tensor, target,
             per_image: bool = True) -> torch.Tensor:
        """Check the arguments, run ``function`` in eval mode and float32, restore the model."""
        if not isinstance(model, CoDANet):
            raise ValueError(f"expected a CoDANet, got {type(model).__name__}")
        check_images(images, model.config.in_channels)
        n_targets = images.shape[0] if per_image else torch.as_tensor(target).numel()
        targets = check_targets(target, n_targets, model.num_classes, images.device)
        if self.post_hoc and (images.shape[0] == 0 or targets.numel() == 0):  # captum fails on empty batches
            channels = self.out_channels or images.shape[1]
            return torch.zeros(targets.numel(), channels, *images.shape[2:], device=images.device)
        was_training = model.training
        model.eval()
        try:
            with torch.autocast(images.device.type, enabled=False), warnings.catch_warnings():
                for message in _QUIET:
                    warnings.filterwarnings("ignore", message=message)
                x = images.detach().to(torch.float32, copy=True)  # captum never sees the caller's tensor
                out = function(model, x, targets, **self.options)
            return out.detach()
        finally:
            model.train(was_training)


# ----- the methods ---------------------------------------------------------------------------


def _coda(model, images, targets):
    return contributions(model, images, targets)


def _grad(model, images, targets):
    from captum.attr import Saliency

    return Saliency(model).attribute(images.requires_grad_(True), target=targets, abs=False)


def _input_x_gradient(model, images, targets):
    from captum.attr import InputXGradient

    return InputXGradient(model).attribute(images.requires_grad_(True), target=targets)


def _integrated_gradients(model, images, targets, n_steps, batch_size):
    from captum.attr import IntegratedGradients

    return IntegratedGradients(model).attribute(
        images.requires_grad_(True), baselines=torch.zeros_like(images), target=targets,
        n_steps=n_steps, internal_batch_size=max(batch_size, images.shape[0]),  # >= one step of the batch
    )


def _deeplift(model, images, targets):
    from captum.attr import DeepLift

    return DeepLift(model).attribute(images.requires_grad_(True), baselines=torch.zeros_like(images), target=targets)


def _guided_backprop(model, images, targets):
    from captum.attr import GuidedBackprop

    return GuidedBackprop(model).attribute(images.requires_grad_(True), target=targets)


def gradcam_layer(model: CoDANet) -> torch.nn.Module:
    """The layer Grad-CAM explains: the last CoDA layer (the last stem block without one)."""
    return model.layers[-1] if len(model.layers) else model.stem[-1]


def _gradcam(model, images, targets, relu):
    from captum.attr import LayerAttribution, LayerGradCam

    cam = LayerGradCam(model, gradcam_layer(model)).attribute(
        images.requires_grad_(True), target=targets, relu_attributions=relu
    )
    return LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), interpolate_mode="nearest")


def _occlusion(model, images, targets, patch, stride, batch_size):
    if occlusion.supports(model):  # the same numbers as captum's, by local recomputation
        return torch.cat([occlusion.occlusion_classes(model, image[None], target[None], patch, stride, batch_size)
                          for image, target in zip(images, targets, strict=True)]).to(torch.float32)
    return occlusion_captum(model, images, targets, patch, stride, batch_size)


def occlusion_captum(model: CoDANet, images: torch.Tensor, targets: torch.Tensor, patch: int, stride: int,
                     batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    """captum's ``Occlusion`` of images (B, C, H, W) for one target each (B,): one forward pass of
    the whole network per window, for any model; (B, C, H, W) float32. The reference that
    :mod:`coda.occlusion` reproduces for pure CoDA-Nets."""
    from captum.attr import Occlusion

    per_eval = max(1, batch_size // images.shape[0])
    with torch.no_grad():
        return Occlusion(model).attribute(
            images, sliding_window_shapes=(images.shape[1], patch, patch), strides=(images.shape[1], stride, stride),
            baselines=0.0, target=targets, perturbations_per_eval=per_eval,
        )


def _occlusion_classes(model, image, classes, patch, stride, batch_size):
    """Occlusion of one image for K classes at once: one forward serves every class."""
    if occlusion.supports(model):
        return occlusion.occlusion_classes(model, image, classes, patch, stride, batch_size).to(torch.float32)
    return occlusion_classes_captum(model, image, classes, patch, stride, batch_size)


def occlusion_classes_captum(model: CoDANet, image: torch.Tensor, classes: torch.Tensor, patch: int, stride: int,
                             batch_size: int = DEFAULT_BATCH) -> torch.Tensor:
    """captum's ``Occlusion`` of one image (1, C, H, W) for K classes: (K, C, H, W), any model.

    The forward function returns the K logits of each perturbed image; captum's ablation
    then gives one attribution map per output, identical to K separate runs.
    """
    from captum.attr import Occlusion

    def logits_of_classes(x):
        return model(x)[:, classes]

    with torch.no_grad():
        out = Occlusion(logits_of_classes).attribute(
            image, sliding_window_shapes=(image.shape[1], patch, patch), strides=(image.shape[1], stride, stride),
            baselines=0.0, perturbations_per_eval=batch_size,
        )
    return out.reshape(len(classes), *image.shape[1:])


def block_mask(height: int, width: int, block: int, device=None) -> torch.Tensor:
    """Feature ids of ``block`` x ``block`` pixel squares, row-major: (1, 1, H, W) long."""
    rows = torch.arange(height, device=device) // block
    cols = torch.arange(width, device=device) // block
    per_row = -(-width // block)
    return (rows[:, None] * per_row + cols[None, :])[None, None]


class WeightedRidge:
    """LIME's surrogate: ridge regression with sample weights and an intercept, in closed form.

    Minimises ``sum_i w_i (y_i - x_i^T beta - c)^2 + alpha ||beta||^2`` (the ``lime`` package's
    default ``Ridge(alpha=1)``). Has the methods of captum's interpretable-model interface
    (``fit``, ``representation``, ``__call__``). captum's own default surrogate needs
    scikit-learn (not a dependency here), and its SGD surrogates stop after 100 steps of
    plain SGD, far from the optimum.
    """

    def __init__(self, alpha: float = 1.0):
        self.alpha = float(alpha)
        self.weight: torch.Tensor | None = None  # (outputs, features)
        self.intercept: torch.Tensor | None = None  # (outputs,)

    def fit(self, train_data) -> dict:
        """Fit on the (x, y, w) batches of ``train_data`` (x: (n, features), y: (n,) or (n, k))."""
        x, y, w = (torch.cat(parts).double() for parts in zip(*train_data, strict=True))
        y, w = y.reshape(len(x), -1), w.reshape(-1)
        x_mean, y_mean = (w / w.sum()) @ x, (w / w.sum()) @ y
        root_w = w.sqrt()[:, None]
        xc, yc = (x - x_mean) * root_w, (y - y_mean) * root_w
        gram = xc.T @ xc + self.alpha * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        beta = torch.linalg.solve(gram, xc.T @ yc)  # (features, outputs)
        self.weight = beta.T.float()
        self.intercept = (y_mean - x_mean @ beta).float()
        return {}

    def representation(self) -> torch.Tensor:
        return self.weight

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.weight.T + self.intercept


def _lime(model, images, targets, n_samples, block, alpha, seed, batch_size, shared_samples=True, forward=None):
    """captum's ``Lime`` of ``images`` (B, C, H, W), one target each, from one seeded RNG stream.

    ``forward``: what captum calls instead of ``model`` (see :func:`_lime_classes`); it then
    returns the explained output itself and ``targets`` are not passed on.
    """
    from captum.attr import Lime

    mask = block_mask(*images.shape[-2:], block, images.device)
    lime = Lime(model if forward is None else forward, interpretable_model=WeightedRidge(alpha))
    with torch.random.fork_rng(devices=[]), torch.no_grad():  # seeded, caller's RNG untouched
        torch.manual_seed(seed)
        return lime.attribute(
            images, target=targets if forward is None else None, baselines=0.0, feature_mask=mask,
            n_samples=n_samples, perturbations_per_eval=batch_size,
        )


class _SharedPasses:
    """The forward function captum's LIME calls, for several classes of one image in turn: the
    first class's run makes the passes and keeps them; the next ones replay them, checking that
    they ask for the same perturbed images, and pick their own class's logit."""

    def __init__(self, model: CoDANet):
        self.model = model
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []  # (perturbed images, logits), in call order
        self.position, self.target = 0, 0

    def start(self, target: int) -> None:
        """Begin the run of class ``target``: replay the recorded passes from the first."""
        self.position, self.target = 0, target

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.position == len(self.batches):
            self.batches.append((x.clone(), self.model(x)))
        seen, logits = self.batches[self.position]
        if not torch.equal(seen, x):
            raise RuntimeError("LIME drew different samples for two classes of one image; cannot share its passes")
        self.position += 1
        return logits[:, self.target]


def _lime_classes(model, image, classes, n_samples, block, alpha, seed, batch_size, shared_samples=True):
    """LIME of one image (1, C, H, W) for K classes: (K, C, H, W).

    LIME's perturbed samples depend on the seed and the image, not on the class, so with
    ``shared_samples`` each class is explained exactly as it would be alone with this seed,
    while the forward passes are made once, for the first class, and their logits reused for
    the others (as the ``lime`` package explains several labels from one set of samples): K
    times fewer passes. Without it, the K classes are K examples of one captum call, each with
    its own samples (the RNG runs on from one to the next), as before the option existed.
    """
    classes = torch.as_tensor(classes).reshape(-1)
    if not shared_samples:
        return _lime(model, image.expand(len(classes), -1, -1, -1), classes, n_samples, block, alpha, seed,
                     batch_size)
    forward = _SharedPasses(model)
    maps = []
    for target in classes.tolist():
        forward.start(target)
        maps.append(_lime(model, image, None, n_samples, block, alpha, seed, batch_size, forward=forward))
    return torch.cat(maps)


# ----- the registry ------------------------------------------------------------------------

EXPLAINERS: dict[str, Explainer] = {
    e.name: e
    for e in (
        Explainer("coda", "Ours", _coda, post_hoc=False),
        Explainer("grad", "Grad", _grad),
        Explainer("ixg", "IxG", _input_x_gradient),
        Explainer("intgrad", "IntGrad", _integrated_gradients, {"n_steps": 20, "batch_size": DEFAULT_BATCH}),
        Explainer("deeplift", "DeepLIFT", _deeplift),
        Explainer("gradcam", "GCam", _gradcam, {"relu": True}, out_channels=1),
        Explainer("occ5", "Occ5", _occlusion, {"patch": 5, "stride": 2, "batch_size": DEFAULT_BATCH},
                  classes_function=_occlusion_classes),
        Explainer("occ9", "Occ9", _occlusion, {"patch": 9, "stride": 2, "batch_size": DEFAULT_BATCH},
                  classes_function=_occlusion_classes),
        Explainer("lime", "LIME", _lime,
                  {"n_samples": 256, "block": 4, "alpha": 1.0, "seed": 0, "batch_size": DEFAULT_BATCH,
                   "shared_samples": True}, classes_function=_lime_classes),
        Explainer("guided_backprop", "GB", _guided_backprop),
    )
}


def implementation(explainer: str | Explainer, model: CoDANet) -> str:
    """What computes ``explainer``'s attributions for ``model``: ``"coda"`` (the contributions),
    ``"coda.occlusion"`` (occlusion of a pure CoDA-Net by local recomputation) or ``"captum"``."""
    explainer = get_explainer(explainer)
    if not explainer.post_hoc:
        return "coda"
    if explainer.function is _occlusion and occlusion.supports(model):
        return "coda.occlusion"
    return "captum"


def get_explainer(name: str | Explainer, **options) -> Explainer:
    """The registered explainer ``name`` (or ``name`` itself), with ``options`` changed."""
    if isinstance(name, Explainer):
        return name.with_options(**options)
    if name not in EXPLAINERS:
        raise ValueError(f"unknown explainer {name!r}; expected one of {sorted(EXPLAINERS)}")
    return EXPLAINERS[name].with_options(**options)


def _layer_contributions(model, images, targets, layer):
    return contributions(model, images, targets, layer=layer)


def layer_explainer(layer: int) -> Explainer:
    """CoDA contributions of the input of CoDA layer ``layer`` (``coda.contributions(..., layer=layer)``),
    as an explainer for the metrics: the interpretable-depth sweep and the hybrids, explained from
    their first CoDA layer (``layer_explainer(0)``)."""
    return Explainer(f"coda-layer{layer}", f"Ours (layer {layer})", _layer_contributions,
                     options={"layer": layer}, post_hoc=False)


def explain(model: CoDANet, images: torch.Tensor, target, method: str | Explainer = "coda") -> torch.Tensor:
    """Attributions of ``target`` for ``images`` by ``method``.

    Parameters
    ----------
    model : a :class:`coda.CoDANet`; put in eval mode while explaining, then restored.
    images : (B, 3, H, W) float in [0, 1]; never modified, no ``.grad`` left anywhere.
    target : an int, or a (B,) integer tensor (one class per image).
    method : a name from ``EXPLAINERS`` or an :class:`Explainer`.

    Returns
    -------
    (B, C, H, W) float32: C = 6 for "coda" (the encoded input), 1 for "gradcam", else 3.
    """
    return get_explainer(method)(model, images, target)
