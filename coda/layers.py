"""Dynamic alignment layers as ``nn.Module``s: thin wrappers around :mod:`coda.dau`."""

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


class DynamicAlignment(nn.Module):
    """A dynamic alignment (DA) layer on vectors: ``out_j = g(B_j A x + b_j)^T x``.

    Parameters
    ----------
    in_features : d, the input length.
    out_features : number of DAUs.
    rank : r, the shared bottleneck of the dynamic weights.
    norm : ``"squash"`` (|out_j| < ||x||) or ``"l2"`` (out_j = ||x|| cos(w_j, x)).
    bias : whether the dynamic weights have a bias ``b_j``.

    Shapes: (N, in_features) -> (N, out_features).
    """

    def __init__(
        self, in_features: int, out_features: int, rank: int, norm: str = "squash", bias: bool = True
    ):
        super().__init__()
        self.in_features = _positive_int("in_features", in_features)
        self.out_features = _positive_int("out_features", out_features)
        self.rank = _positive_int("rank", rank)
        self.norm = _check_norm(norm)
        self.explain = False
        self.A = nn.Parameter(torch.empty(rank, in_features))
        self.B = nn.Parameter(torch.empty(out_features, rank, in_features))
        self.b = nn.Parameter(torch.empty(out_features, in_features)) if bias else None
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
        w = F_dau.dynamic_weights(x, self.A, self.B, self.b)
        return w * F_dau.norm_factor(w.pow(2).sum(-1, keepdim=True), self.norm)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, rank={self.rank}, norm={self.norm!r}, "
            f"bias={self.b is not None}"
        )


class CoDAConv2d(nn.Module):
    """A convolutional dynamic alignment layer: a DA layer applied to every k x k patch.

    Parameters
    ----------
    in_channels, out_channels : C_in and C_out (the number of DAUs).
    kernel_size : k (square kernels).
    rank : r, rank of the dynamic weights (the 1x1 bottleneck ``A``).
    stride : the patch stride.
    padding : zero padding; ``None`` means ``(k - 1) // 2``.
    norm : ``"squash"`` (all published models) or ``"l2"``.
    bias : whether the dynamic weights have a bias ``b_j`` (the output never has one).

    Parameters (``nn.Parameter``): ``A`` (r, C_in, k, k), ``B`` (C_out, r, C_in, k, k),
    ``b`` (C_out, C_in, k, k) or None. Their count equals the paper's
    ``A`` conv (no bias) plus ``B`` 1x1 conv with bias.

    Shapes: (N, C_in, H, W) -> (N, C_out, H_out, W_out), computed without materialising
    the ``C_out * C_in * k^2`` dynamic weights per position (see :mod:`coda.dau`).
    Set ``explain = True`` (or use :func:`coda.explanation_mode`) to treat the dynamic
    weights as constants.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        rank: int,
        stride: int = 1,
        padding: int | None = None,
        norm: str = "squash",
        bias: bool = True,
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
        self.explain = False
        k = kernel_size
        self.A = nn.Parameter(torch.empty(rank, in_channels, k, k))
        self.B = nn.Parameter(torch.empty(out_channels, rank, in_channels, k, k))
        self.b = nn.Parameter(torch.empty(out_channels, in_channels, k, k)) if bias else None
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
            f"rank={self.rank}, stride={self.stride}, padding={self.padding}, "
            f"norm={self.norm!r}, bias={self.b is not None}"
        )


def _uniform_(param: torch.Tensor, fan_in: int) -> None:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's default for conv weights and biases."""
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        param.uniform_(-bound, bound)
