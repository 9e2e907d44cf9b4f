"""Dynamic alignment layers as ``nn.Module``s: thin wrappers around :mod:`coda.dau`.

Both layers follow torch's argument order (``nn.Linear``, ``nn.Conv2d``) for what torch's
layers have, and take the method's own arguments (``rank``, ``norm``, ``weight_bias``) by
keyword only. Both subclass :class:`ExplainableLayer`, whose explanation mode
(:func:`coda.explanation_mode`) freezes them to the linear map ``x -> W(x) x``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from coda import dau as F_dau


def _check_norm(norm: str) -> str:
    if norm not in F_dau.NORMS:
        raise ValueError(f"norm must be one of {F_dau.NORMS}, got {norm!r}")
    return norm


def _positive_int(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class ExplainableLayer(nn.Module):
    """Base class of the layers that have an explanation mode.

    Such a layer computes ``W(x) x`` with weights ``W(x)`` that depend on its input. While
    ``self.explain`` is True its forward pass must treat ``W(x)`` as a constant: the output is
    unchanged and the gradient with respect to ``x`` is ``W(x)`` itself, so a network of such
    layers is linear in its input (docs/method.md#contributions). :func:`coda.explanation_mode`
    sets ``explain`` on every ``ExplainableLayer`` of a model and restores it afterwards; a new
    layer type takes part by subclassing this class and reading ``self.explain`` in ``forward``.
    """

    def __init__(self):
        super().__init__()
        self.explain = False


class DynamicAlignment(ExplainableLayer):
    """A dynamic alignment (DA) layer on vectors: ``out_j = g(B_j A x + b_j)^T x``.

    Parameters
    ----------
    in_features : d, the input length.
    out_features : number of DAUs.
    rank : r, the shared bottleneck of the dynamic weights (keyword-only).
    norm : ``"squash"`` (|out_j| < ||x||) or ``"l2"`` (out_j = ||x|| cos(w_j, x)).
    weight_bias : whether the dynamic weights have a bias ``b_j`` (the parameter ``b``); the
        output never has a bias.

    Shapes: (N, in_features) -> (N, out_features).
    """

    def __init__(
        self, in_features: int, out_features: int, *, rank: int, norm: str = "squash", weight_bias: bool = True
    ):
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.rank = _positive_int("rank", rank)
        self.norm = _check_norm(norm)
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.empty(out_features, rank, in_features))
        self.b = nn.Parameter(torch.empty(out_features, in_features)) if weight_bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _uniform_(self.A, self.in_features)
        _uniform_(self.B, self.rank)
        if self.b is not None:
            _uniform_(self.b, self.rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F_dau.dau(x, self.A, self.B, self.b, self.norm, detach_weights=self.explain)

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The normalised dynamic weights ``g(w_j(x))``, (N, d) -> (N, out_features, d)."""
        return F_dau.normalise(F_dau.dynamic_weights(x, self.A, self.B, self.b), self.norm)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, rank={self.rank}, norm={self.norm!r}, "
            f"weight_bias={self.b is not None}"
        )


class CoDAConv2d(ExplainableLayer):
    """A convolutional dynamic alignment layer: a DA layer applied to every k x k patch.

    Parameters
    ----------
    in_channels, out_channels : C_in and C_out (the number of DAUs).
    kernel_size : k (square kernels).
    stride : the patch stride.
    padding : zero padding; ``None`` means ``(k - 1) // 2``.
    rank : r, rank of the dynamic weights (the bottleneck ``A``); keyword-only, so that an
        ``nn.Conv2d``-style call ``CoDAConv2d(16, 32, 3, 2)`` cannot set it by accident.
    norm : ``"squash"`` (all published models) or ``"l2"``.
    weight_bias : whether the dynamic weights have a bias ``b_j`` (the parameter ``b``); the
        output never has a bias.

    Parameters (``nn.Parameter``): ``A`` (r, C_in, k, k), ``B`` (C_out, r, C_in, k, k),
    ``b`` (C_out, C_in, k, k) or None. Their count equals the paper's
    ``A`` conv (no bias) plus ``B`` 1x1 conv with bias.

    Shapes: (N, C_in, H, W) -> (N, C_out, H_out, W_out), computed without materialising
    the ``C_out * C_in * k^2`` dynamic weights per position (see :mod:`coda.dau`).
    Set ``explain = True`` (or use :func:`coda.explanation_mode`) to treat the dynamic
    weights as constants. The published checkpoint layout converts to this one in
    :mod:`coda.reference`.

    Example: ``CoDAConv2d(16, 32, 3, 2, rank=8)`` has stride 2 and padding 1.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int | None = None,
        *,
        rank: int,
        norm: str = "squash",
        weight_bias: bool = True,
    ):
        super().__init__()
        self.in_channels = _positive_int("in_channels", in_channels)
        self.out_channels = _positive_int("out_channels", out_channels)
        self.kernel_size = _positive_int("kernel_size", kernel_size)
        self.rank = _positive_int("rank", rank)
        self.stride = _positive_int("stride", stride)
        self.padding = (kernel_size - 1) // 2 if padding is None else padding
        if not isinstance(self.padding, int) or self.padding < 0:
            raise ValueError(f"padding must be None or an int >= 0, got {padding!r}")
        self.norm = _check_norm(norm)
        k = kernel_size
        self.A = nn.Parameter(torch.empty(rank, in_channels, k, k))
        self.B = nn.Parameter(torch.empty(out_channels, rank, in_channels, k, k))
        self.b = nn.Parameter(torch.empty(out_channels, in_channels, k, k)) if weight_bias else None
        self.reset_parameters()

    @property
    def patch_size(self) -> int:
        """d = C_in * k * k, the length of one patch."""
        return self.in_channels * self.kernel_size**2

    def reset_parameters(self) -> None:
        """PyTorch's default conv initialisation of the paper's A and B convolutions."""
        _uniform_(self.A, self.patch_size)
        _uniform_(self.B, self.rank)
        if self.b is not None:
            _uniform_(self.b, self.rank)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F_dau.dau_conv2d(
            x, self.A, self.B, self.b, self.stride, self.padding, self.norm, self.explain
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, rank={self.rank}, "
            f"norm={self.norm!r}, weight_bias={self.b is not None}"
        )


def _uniform_(param: torch.Tensor, fan_in: int) -> None:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for conv weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        param.uniform_(-bound, bound)
