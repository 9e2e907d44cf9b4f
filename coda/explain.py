"""Exact contributions of a CoDA-Net (docs/method.md#contributions).

In explanation mode the dynamic weights (and their norms) are constants, so every CoDA layer
is the linear map ``a -> W_l(a) a`` and the whole network is

    logit_c - b0 = [W_{1->L}(x) x]_c / T.

The contribution of input dimension ``i`` is ``x_i [W_{1->L}(x)]_{c,i} / T``, which is
``x_i`` times the gradient of ``logit_c`` in explanation mode; the contributions sum
exactly to ``logit_c - b0``. The same holds at the input ``a_l`` of any CoDA layer ``l``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from coda.layers import ExplainableLayer
from coda.models import CoDANet, check_images


@contextlib.contextmanager
def explanation_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Treat the dynamic weights of every :class:`coda.layers.ExplainableLayer` in ``model`` as constants.

    Sets ``explain = True`` on each of them (DA and CoDA layers, and any subclass of
    ``ExplainableLayer``) and restores each layer's previous setting on exit, also when the
    body raises.
    """
    layers = [m for m in model.modules() if isinstance(m, ExplainableLayer)]
    previous = [m.explain for m in layers]
    try:
        for m in layers:
            m.explain = True
        yield model
    finally:
        for m, was in zip(layers, previous, strict=True):
            m.explain = was


def check_targets(target, batch: int, num_classes: int, device: torch.device) -> torch.Tensor:
    """An int or one int per example -> (B,) long tensor, checked against the classes."""
    if target is None or isinstance(target, (str, bytes, float, bool)):
        raise ValueError(f"target must be an int class or one int per example, got {target!r}")
    try:
        t = torch.as_tensor(target, device=device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"target must be an int class or one int per example, got {target!r}") from err
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"target must be an int or integer tensor, got dtype {t.dtype}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"target must be an int or have shape ({batch},), got shape {tuple(t.shape)}")
    if batch and (t.min() < 0 or t.max() >= num_classes):
        raise ValueError(f"target must be in [0, {num_classes - 1}], got values in [{t.min().item()}, {t.max().item()}]")
    return t.long()


def _check_layer(model: CoDANet, layer: int | None) -> None:
    if not isinstance(model, CoDANet):
        raise ValueError(f"expected a CoDANet, got {type(model).__name__}")
    if not len(model.layers):
        raise ValueError("this network has no CoDA layer (an all-conventional CNN): nothing is explained exactly")
    if layer is None:
        if len(model.stem):
            raise ValueError(
                "this hybrid network has a conventional stem, which is not dynamic linear: "
                "contributions are exact only from its first CoDA layer on; pass layer=0"
            )
        return
    n = len(model.layers)
    if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
        raise ValueError(f"layer must be None or an int in [0, {n - 1}], got {layer!r}")


def linear_gradient(model: CoDANet, images: torch.Tensor, target, layer: int | None = None):
    """The explained input and the gradient of the target logit in explanation mode.

    Returns ``(a, grad)``, both (B, C_l, H_l, W_l): ``a`` is the encoded input (``layer``
    None) or the input of CoDA layer ``layer``, and ``grad = [W_{l->L}(x)]_target / T``.
    Runs in eval mode and float32 (autocast off); restores the model's mode.
    """
    _check_layer(model, layer)
    check_images(images, model.config.in_channels)
    was_training = model.training
    model.eval()
    device = images.device
    try:
        # Works under torch.no_grad() and torch.inference_mode() too: the gradient is the explanation.
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False), \
                explanation_mode(model):
            images = images.clone() if images.is_inference() else images  # inference tensors cannot enter autograd
            if layer is None:
                a = model.encode(images)
            else:
                with torch.no_grad():
                    a = model.layer_input(images, layer)
            a = a.detach().requires_grad_(True)
            logits = model.head(a, start=layer or 0)
            t = check_targets(target, images.shape[0], model.num_classes, device)
            (grad,) = torch.autograd.grad(logits.gather(1, t[:, None]).sum(), a)
        return a.detach(), grad.detach()
    finally:
        model.train(was_training)


def contributions(model: CoDANet, images: torch.Tensor, target, layer: int | None = None) -> torch.Tensor:
    """Exact contributions to the target logit.

    Parameters
    ----------
    model : a :class:`coda.CoDANet`.
    images : (B, 3, H, W) float images in [0, 1]; not modified.
    target : an int class, or a (B,) integer tensor (one class per example).
    layer : None for the model's encoded input ``[x, 1 - x]`` (B, 6, H, W), or the 0-based
        index of a CoDA layer, for contributions of that layer's input (B, C_l, H_l, W_l):
        ``layer=l`` is the input of ``model.layers[l]``, counted from 0 among the CoDA layers
        (a hybrid's stem is not counted; docs/method.md#layer-numbering).

    Returns
    -------
    Tensor like the explained input whose sum over all non-batch dimensions equals
    ``logit_target - model.logit_bias`` (to float32 precision).
    """
    a, grad = linear_gradient(model, images, target, layer)
    return a * grad


def contribution_map(contribs: torch.Tensor) -> torch.Tensor:
    """Spatial map: contributions summed over channels, (B, C, H, W) -> (B, H, W)."""
    if contribs.dim() != 4:
        raise ValueError(f"expected contributions (B, C, H, W), got shape {tuple(contribs.shape)}")
    return contribs.sum(1)


def dynamic_linear_weights(model: CoDANet, images: torch.Tensor, target) -> torch.Tensor:
    """Row ``target`` of ``W_{1->L}(x)``: the linear map the model applies to ``x``.

    Returns (B, 6, H, W), over the encoded input ``[x, 1 - x]``, such that
    ``logit_target - b0 = sum(W * [x, 1 - x]) / T`` (the paper's "weights" images).
    """
    _, grad = linear_gradient(model, images, target, None)
    return grad * model.temperature
