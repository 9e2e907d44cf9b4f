"""The authors' published checkpoint layout, converted to and from :class:`coda.CoDAConv2d`.

The published files are ``nn.Sequential`` state dicts with, per CoDA layer ``i``
(docs/method.md#the-published-checkpoint-layout):

* ``i.weight_mod.weighting_f.0.weight``: ``A``, (r, C_in, k, k), a convolution without bias;
* ``i.weight_mod.weighting_f.1.weight``: ``B``, (C_out * d, r, 1, 1), a 1x1 convolution;
* ``i.weight_mod.weighting_f.1.bias``: the weight bias ``b``, (C_out * d,);

where ``d = C_in * k * k`` and output channel ``p * C_out + j`` belongs to patch entry ``p``
(unfold order) of DAU ``j``. :class:`coda.CoDAConv2d` stores ``B`` as (C_out, r, C_in, k, k)
and ``b`` as (C_out, C_in, k, k); the two functions per layer below do the reshapes, the two
per model the key bookkeeping.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from coda.layers import CoDAConv2d
from coda.models import CoDANet, build_model

_REFERENCE_KEY = re.compile(r"^(\d+)\.weight_mod\.weighting_f\.0\.weight$")


def load_reference_layer(layer: CoDAConv2d, A: torch.Tensor, B: torch.Tensor, bias: torch.Tensor) -> None:
    """Copy one layer's published tensors into ``layer`` (which must have a weight bias).

    A : (r, C_in, k, k); B : (C_out * d, r, 1, 1); bias : (C_out * d,). Shapes are checked
    and a mismatch raises ``ValueError``.
    """
    c_out, r, d = layer.out_channels, layer.rank, layer.patch_size
    expected = {"A": ((r, layer.in_channels, layer.kernel_size, layer.kernel_size), A.shape),
                "B": ((c_out * d, r, 1, 1), B.shape),
                "bias": ((c_out * d,), bias.shape)}
    for what, (want, got) in expected.items():
        if tuple(got) != want:
            raise ValueError(f"{what} has shape {tuple(got)}, expected {want}")
    if layer.b is None:
        raise ValueError("the published layers have a weight bias; this layer has weight_bias=False")
    with torch.no_grad():
        layer.A.copy_(A)
        layer.B.copy_(B.reshape(d, c_out, r).permute(1, 2, 0).reshape(layer.B.shape))
        layer.b.copy_(bias.reshape(d, c_out).T.reshape(layer.b.shape))


def reference_layer(layer: CoDAConv2d) -> dict[str, torch.Tensor]:
    """One layer's tensors in the published layout: keys ``0.weight``, ``1.weight`` and, with a
    weight bias, ``1.bias`` (the suffixes after ``i.weight_mod.weighting_f.``); detached copies."""
    c_out, r, d = layer.out_channels, layer.rank, layer.patch_size
    out = {"0.weight": layer.A.detach().clone(),
           "1.weight": layer.B.detach().reshape(c_out, r, d).permute(2, 0, 1).reshape(d * c_out, r, 1, 1).clone()}
    if layer.b is not None:
        out["1.bias"] = layer.b.detach().reshape(c_out, d).T.reshape(-1).clone()
    return out


def from_reference_state_dict(state_dict: Mapping[str, torch.Tensor], name: str, **overrides) -> CoDANet:
    """Build ``name`` (see :func:`coda.build_model`) and load a state dict in the published layout.

    Parameters
    ----------
    state_dict : the authors' keys ``i.weight_mod.weighting_f.{0.weight, 1.weight, 1.bias}``,
        one ``i`` per CoDA layer, in increasing order; a ``module.`` prefix (DataParallel) is
        accepted.
    name, **overrides : the configuration, e.g. ``"cifar10-9L-S", temperature=100``.

    Returns
    -------
    The :class:`coda.CoDANet`. ``ValueError`` if a key is missing or a shape differs.
    """
    model = build_model(name, **overrides)
    if model.config.coda_start:
        raise ValueError(
            f"published checkpoints are pure CoDA-Nets; {name!r} with {overrides} has a conventional stem "
            f"(stem_depth={model.config.stem_depth}, resnet_stages={model.config.resnet_stages}); both must be 0"
        )
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    indices = sorted(int(m.group(1)) for k in sd if (m := _REFERENCE_KEY.match(k)))
    if len(indices) != len(model.layers):
        raise ValueError(
            f"expected {len(model.layers)} CoDA layers for {name!r} in the state dict, found "
            f"{len(indices)} keys like 'i.weight_mod.weighting_f.0.weight'"
        )
    for layer, i in zip(model.layers, indices, strict=True):
        prefix = f"{i}.weight_mod.weighting_f."
        missing = [prefix + k for k in ("1.weight", "1.bias") if prefix + k not in sd]
        if missing:
            raise ValueError(f"layer {i}: missing keys {missing}")
        try:
            load_reference_layer(layer, sd[prefix + "0.weight"], sd[prefix + "1.weight"], sd[prefix + "1.bias"])
        except ValueError as err:
            raise ValueError(f"layer {i}: {err}") from None
    return model


def to_reference_state_dict(model: CoDANet) -> dict[str, torch.Tensor]:
    """The inverse of :func:`from_reference_state_dict` (layers numbered 0, 1, ...)."""
    return {f"{i}.weight_mod.weighting_f.{key}": tensor
            for i, layer in enumerate(model.layers) for key, tensor in reference_layer(layer).items()}
