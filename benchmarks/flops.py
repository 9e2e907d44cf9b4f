"""Floating-point operations of a CoDA-Net, counted from its layers (for GFLOP/s figures).

The factorised CoDA layer (``coda.dau.dau_conv2d``) at one output position of a layer with
patch size ``d = C_in k^2``, rank ``r`` and ``C_out`` units does these multiply-adds:

* ``z = A x``: ``r d``; the weight bias ``b_j^T x``: ``C_out d`` (if the layer has one);
* ``B_j^T x`` for every unit: ``C_out r d`` (the dominant term);
* ``w_j^T x = z^T (B_j^T x)``: ``C_out r``;
* ``||w_j||^2 = z1^T G_j z1`` with ``m = r + 1`` (or ``r``): ``C_out m^2`` for ``G_j z1`` and
  ``C_out m`` for the dot with ``z1``.

A multiply-add is 2 FLOPs. A training step costs about 3 forward passes (the backward pass
computes two products per forward product: the gradient of the input and of the weights),
the usual convention; so the paper's 9L-S (1.72 GFLOP forward per 32 x 32 image) costs
about 5.2 GFLOP per training image. Conventional stem blocks count as plain convolutions.
"""

from __future__ import annotations

import torch

from coda.models import CoDANet


def coda_layer_macs(patch_size: int, rank: int, out_channels: int, weight_bias: bool) -> int:
    """Multiply-adds of one factorised CoDA layer at one output position (see the module doc)."""
    d, r, c = patch_size, rank, out_channels
    m = r + 1 if weight_bias else r
    return r * d + c * r * d + c * r + c * m * m + c * m + (c * d if weight_bias else 0)


def forward_flops(model: CoDANet, image_size: int = 32) -> int:
    """FLOPs of one forward pass of ``model`` on one ``image_size`` x ``image_size`` image."""
    positions: dict[torch.nn.Module, int] = {}

    def record(module, _inputs, output):
        positions[module] = output.shape[-2] * output.shape[-1]

    layers = [m for m in model.modules() if _is_coda_layer(m) or isinstance(m, torch.nn.Conv2d)]
    handles = [m.register_forward_hook(record) for m in layers]
    try:
        with torch.no_grad():
            model(torch.rand(1, model.config.in_channels, image_size, image_size,
                             device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    macs = 0
    for m in layers:
        if _is_coda_layer(m):
            macs += positions[m] * coda_layer_macs(m.patch_size, m.rank, m.out_channels, m.b is not None)
        else:  # a convolution of a conventional stem block (CoDA layers hold no nn.Conv2d)
            macs += positions[m] * m.out_channels * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
    return 2 * macs


def training_flops(model: CoDANet, image_size: int = 32) -> int:
    """FLOPs of one training step per image: 3 forward passes (forward, and two for backward)."""
    return 3 * forward_flops(model, image_size)


def _is_coda_layer(module: torch.nn.Module) -> bool:
    return all(hasattr(module, a) for a in ("A", "B", "rank", "patch_size")) and module.A.dim() == 4

