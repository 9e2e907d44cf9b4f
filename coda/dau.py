"""The Dynamic Alignment Unit (DAU), as pure functions.

A DAU with input ``x`` (a vector of length ``d``; for a convolution, one ``k x k`` patch
of ``C_in`` channels, ``d = C_in * k * k``) computes

    w_j(x) = B_j A x + b_j                  A: (r, d), B_j: (d, r), b_j: (d,)
    DAU_j(x) = g(w_j(x))^T x

where ``g`` rescales the norm of the dynamic weight:

* ``"squash"``: g(u) = ||u||^2 / (1 + ||u||^2) * u / ||u||   (so ||g(u)|| < 1)
* ``"l2"``:     g(u) = u / ||u||                              (so ||g(u)|| = 1)

Because ``g(w)^T x = alpha(||w||) * w^T x`` with a scalar ``alpha``, the output only needs
two numbers per unit and position, never the ``d``-dimensional weight itself
(METHOD.md section 1):

    w_j^T x   = z^T (B_j^T x) + b_j^T x,                        z = A x
    ||w_j||^2 = z^T (B_j^T B_j) z + 2 (B_j^T b_j)^T z + ||b_j||^2

``dau_conv2d`` computes exactly this with ordinary convolutions. ``dau_conv2d_materialised``
is the straightforward formula (build every ``w_j`` at every position); it is the
reference the fast version is benchmarked against.

Parameter layout used throughout the package (chosen so that reshapes are free):

* ``A``: (r, C_in, k, k), the shared bottleneck (a conv weight without bias);
* ``B``: (C_out, r, C_in, k, k), ``B[j, :, ...]`` is ``B_j^T`` reshaped;
* ``b``: (C_out, C_in, k, k) or ``None``, the bias of the dynamic *weights*.

``detach_weights=True`` is "explanation mode": the dynamic weights ``w_j(x)`` and their
norms are treated as constants, so the unit is the linear map ``x -> W(x) x`` whose
gradient is ``W(x)`` itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

NORMS = ("squash", "l2")

# ||w||^2 below this is treated as 0 (a zero weight gives a zero output); keeps sqrt and
# division finite in forward and backward.
_TINY = 1e-12


def norm_factor(norm_sq: torch.Tensor, norm: str) -> torch.Tensor:
    """The scalar ``alpha(||w||)`` with ``g(w) = alpha(||w||) w``.

    Parameters
    ----------
    norm_sq : tensor of any shape, ``||w||^2 >= 0``.
    norm : ``"squash"`` (alpha = ||w|| / (1 + ||w||^2)) or ``"l2"`` (alpha = 1 / ||w||).

    Returns
    -------
    tensor of the same shape. Finite, with finite gradients, also where ``norm_sq == 0``.
    """
    safe = norm_sq.clamp_min(_TINY)
    if norm == "squash":
        return safe.sqrt() / (1.0 + safe)
    if norm == "l2":
        return safe.rsqrt()
    raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def dau(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    b: torch.Tensor | None = None,
    norm: str = "squash",
    detach_weights: bool = False,
) -> torch.Tensor:
    """A dynamic alignment layer on vectors: ``out[n, j] = g(w_j(x_n))^T x_n``.

    Parameters
    ----------
    x : (N, d) inputs.
    A : (r, d) shared bottleneck.
    B : (C_out, r, d); ``B[j]`` is ``B_j^T``.
    b : (C_out, d) or None, bias of the dynamic weights.
    norm : ``"squash"`` or ``"l2"``.
    detach_weights : treat ``g(w_j(x))`` as constant (explanation mode).

    Returns
    -------
    (N, C_out) outputs.
    """
    w = dynamic_weights(x, A, B, b)  # (N, C_out, d)
    alpha = norm_factor(w.pow(2).sum(-1), norm)  # (N, C_out)
    weights = w * alpha.unsqueeze(-1)
    if detach_weights:
        weights = weights.detach()
    return (weights * x.unsqueeze(1)).sum(-1)


def dynamic_weights(
    x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, b: torch.Tensor | None = None
) -> torch.Tensor:
    """The un-normalised dynamic weights ``w_j(x) = B_j A x + b_j`` of a vector DA layer.

    x : (N, d), A : (r, d), B : (C_out, r, d), b : (C_out, d) or None -> (N, C_out, d).
    """
    z = x @ A.T  # (N, r)
    w = torch.einsum("nr,jrd->njd", z, B)
    return w if b is None else w + b


def dau_conv2d(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    b: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    norm: str = "squash",
    detach_weights: bool = False,
) -> torch.Tensor:
    """A CoDA convolution (DA layer on every patch) without materialising the weights.

    Parameters
    ----------
    x : (N, C_in, H, W) input.
    A : (r, C_in, k, k) shared bottleneck.
    B : (C_out, r, C_in, k, k).
    b : (C_out, C_in, k, k) or None.
    stride, padding : as in ``torch.nn.functional.conv2d`` (zero padding).
    norm : ``"squash"`` or ``"l2"``.
    detach_weights : explanation mode (dynamic weights and their norms are constants).

    Returns
    -------
    (N, C_out, H_out, W_out) output, in channels-last memory format.
    """
    c_out, r = B.shape[:2]
    # Channels-last makes the convolutions faster on CPU and lets every output position
    # be one row below: (P, channels) with P = N * H_out * W_out.
    x = x.contiguous(memory_format=torch.channels_last)
    small = A if b is None else torch.cat([A, b])
    za = F.conv2d(x, _channels_last(small), stride=stride, padding=padding)  # z = A x, b_j^T x
    bx = F.conv2d(x, _channels_last(B.flatten(0, 1)), stride=stride, padding=padding)
    n, _, h, w = bx.shape
    za = _rows(za)  # (P, r + C_out)
    z = za[:, :r]
    bx = _rows(bx).unflatten(1, (c_out, r))  # (P, C_out, r): B_j^T x
    z_w = z.detach() if detach_weights else z
    dot = torch.bmm(bx, z_w.unsqueeze(-1)).squeeze(-1)  # w_j^T x, (P, C_out)
    if b is not None:
        dot = dot + za[:, r:]
    alpha = norm_factor(_weight_norm_sq(z, B, b), norm)  # (P, C_out)
    if detach_weights:
        alpha = alpha.detach()
    return (dot * alpha).reshape(n, h, w, c_out).permute(0, 3, 1, 2)


def _channels_last(weight: torch.Tensor) -> torch.Tensor:
    return weight.contiguous(memory_format=torch.channels_last)


def _rows(y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N * H * W, C), one row per position (a view for channels-last)."""
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


def _weight_norm_sq(z: torch.Tensor, B: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``||w_j||^2 = ||B_j z + b_j||^2`` through the r x r Gram matrices.

    z : (P, r) rows of ``A x``; returns (P, C_out). With ``z1 = [z, 1]`` and
    ``M_j = [B_j, b_j]``: ``||w_j||^2 = z1^T (M_j^T M_j) z1``, one matmul and one
    batched dot product, ``C_out * (r + 1)^2`` multiply-adds per position.
    """
    c_out, r = B.shape[:2]
    M = B.flatten(2)  # (C_out, r, d): rows are the columns of B_j
    if b is not None:
        M = torch.cat([M, b.flatten(1).unsqueeze(1)], 1)  # (C_out, r + 1, d)
        z = torch.cat([z, torch.ones_like(z[:, :1])], 1)  # (P, r + 1)
    m = M.shape[1]
    gram = (M @ M.transpose(1, 2)).transpose(0, 1).reshape(m, c_out * m)  # (m, C_out * m)
    gz = (z @ gram.to(z.dtype)).unflatten(1, (c_out, m))  # (P, C_out, m)
    norm_sq = torch.bmm(gz, z.unsqueeze(-1).to(gz.dtype)).squeeze(-1)
    # Rounding can make a (mathematically >= 0) tiny result negative.
    return norm_sq.clamp_min(0.0)


def dau_conv2d_materialised(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    b: torch.Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    norm: str = "squash",
    detach_weights: bool = False,
) -> torch.Tensor:
    """The same layer the straightforward way: build all ``C_out * d`` weights per position.

    Unfolds the patches, produces every dynamic weight with a 1x1 convolution of ``z``,
    multiplies, sums and rescales. Same arguments and result as :func:`dau_conv2d`; it
    needs ``C_out * C_in * k^2`` numbers per output pixel and is kept as the baseline
    that the benchmark and the first lesson compare against.
    """
    n, _, h, w = x.shape
    c_out, r, c_in, k, _ = B.shape
    d = c_in * k * k
    patches = F.unfold(x, k, padding=padding, stride=stride)  # (N, d, L)
    h_out = (h + 2 * padding - k) // stride + 1
    w_out = (w + 2 * padding - k) // stride + 1
    z = F.conv2d(x, A, stride=stride, padding=padding)  # (N, r, H_out, W_out)
    weight_1x1 = B.flatten(2).permute(0, 2, 1).reshape(c_out * d, r, 1, 1)
    bias = None if b is None else b.reshape(c_out * d)
    weights = F.conv2d(z, weight_1x1, bias).reshape(n, c_out, d, h_out * w_out)
    weights = weights * norm_factor(weights.pow(2).sum(2, keepdim=True), norm)
    if detach_weights:
        weights = weights.detach()
    out = (weights * patches.unsqueeze(1)).sum(2)
    return out.reshape(n, c_out, h_out, w_out)
