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
(docs/method.md#computing-a-coda-layer-without-its-weights):

    w_j^T x   = z^T (B_j^T x) + b_j^T x,                        z = A x
    ||w_j||^2 = z^T (B_j^T B_j) z + 2 (B_j^T b_j)^T z + ||b_j||^2

``dau_conv2d`` computes exactly this with ordinary convolutions. ``dau_conv2d_materialised``
is the straightforward formula (build every ``w_j`` at every position); it is the
reference the fast version is benchmarked against. The quadratic forms ``z1^T G_j z1``
have a hand-written backward pass that avoids a matrix product autograd would repeat; it
is exact to second order (gradgradcheck).

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


def normalise(w: torch.Tensor, norm: str, dim: int = -1) -> torch.Tensor:
    """The rescaled dynamic weights ``g(w) = alpha(||w||) w``.

    Parameters
    ----------
    w : tensor of weight vectors, each one along ``dim`` (e.g. (N, C_out, d) with ``dim=-1``).
    norm : ``"squash"`` or ``"l2"`` (see :func:`norm_factor`).
    dim : the dimension that holds the entries of one weight vector.

    Returns
    -------
    tensor of the shape of ``w``; every vector has norm < 1 (squash) or 1 (l2, w != 0).
    """
    return w * norm_factor(w.pow(2).sum(dim, keepdim=True), norm)


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
    weights = normalise(dynamic_weights(x, A, B, b), norm)  # (N, C_out, d)
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
    small = _channels_last(A if b is None else torch.cat([A, b]))  # z = A x and b_j^T x
    big = _channels_last(B.flatten(0, 1))  # B_j^T x
    gram = _stacked_gram(B, b)
    # The images are processed in groups whose (P, C_out * r) tensors stay at a few MB:
    # large temporaries are mapped afresh by the C allocator at every step (page faults
    # cost more than the arithmetic on them), small ones are reused.
    h_out = (x.shape[2] + 2 * padding - A.shape[-1]) // stride + 1
    w_out = (x.shape[3] + 2 * padding - A.shape[-1]) // stride + 1
    group = max(1, _GROUP_ELEMENTS // (h_out * w_out * c_out * r))
    outs = [
        _dau_conv2d_group(xg, small, big, gram, r, b is not None, stride, padding, norm, detach_weights)
        for xg in x.split(group)
    ]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


# Elements of the largest per-group tensor (B_j^T x of every position): 16 MB in float32.
_GROUP_ELEMENTS = 1 << 22


def _dau_conv2d_group(
    x: torch.Tensor,
    small: torch.Tensor,
    big: torch.Tensor,
    gram: torch.Tensor,
    r: int,
    has_bias: bool,
    stride: int,
    padding: int,
    norm: str,
    detach_weights: bool,
) -> torch.Tensor:
    """:func:`dau_conv2d` on one group of images, with the weights already laid out.

    x : (N, C_in, H, W) channels-last; small : (r [+ C_out], C_in, k, k), ``A`` [and ``b``];
    big : (C_out * r, C_in, k, k), ``B``; gram : (m, C_out * m) from :func:`_stacked_gram`.
    Returns (N, C_out, H_out, W_out).
    """
    za = F.conv2d(x, small, stride=stride, padding=padding)
    bx = F.conv2d(x, big, stride=stride, padding=padding)
    n, c_out_r, h, w = bx.shape
    c_out = c_out_r // r
    za = _rows(za)  # (P, r + C_out)
    z = za[:, :r]
    bx = _rows(bx).unflatten(1, (c_out, r))  # (P, C_out, r): B_j^T x
    z_w = z.detach() if detach_weights else z
    dot = _Contraction.apply(bx, z_w)  # w_j^T x, (P, C_out)
    if has_bias:
        dot = dot + za[:, r:]
        z = torch.cat([z, torch.ones_like(z[:, :1])], 1)  # z1 = [z, 1], (P, r + 1)
    norm_sq, _ = _QuadraticForms.apply(z, gram.to(z.dtype))  # ||w_j||^2, (P, C_out)
    # Rounding can make a (mathematically >= 0) tiny result negative.
    alpha = norm_factor(norm_sq.clamp_min(0.0), norm)
    if detach_weights:
        alpha = alpha.detach()
    return (dot * alpha).reshape(n, h, w, c_out).permute(0, 3, 1, 2)


def _channels_last(weight: torch.Tensor) -> torch.Tensor:
    return weight.contiguous(memory_format=torch.channels_last)


def _rows(y: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N * H * W, C), one row per position (a view for channels-last)."""
    return y.permute(0, 2, 3, 1).reshape(-1, y.shape[1])


def _stacked_gram(B: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """The Gram matrices of the dynamic weights, side by side: (m, C_out * m).

    With ``z1 = [z, 1]`` and ``M_j = [B_j, b_j]`` (``z`` and ``B_j`` alone without bias,
    m = r + 1 or r): ``||w_j||^2 = ||M_j z1||^2 = z1^T G_j z1`` with ``G_j = M_j^T M_j``,
    so the norms of all ``C_out`` weights at a position cost ``C_out * m^2`` multiply-adds
    instead of ``C_out * C_in * k^2 * r``. Block ``j`` of the result is ``G_j``.
    """
    c_out = B.shape[0]
    M = B.flatten(2)  # (C_out, r, d): rows are the columns of B_j
    if b is not None:
        M = torch.cat([M, b.flatten(1).unsqueeze(1)], 1)  # (C_out, r + 1, d)
    m = M.shape[1]
    return (M @ M.transpose(1, 2)).transpose(0, 1).reshape(m, c_out * m)


def _contract(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``out[p, j] = sum_a y[p, j, a] z[p, a]``: y (P, C, m), z (P, m) -> (P, C).

    Computed as the batched row-times-matrix product (P, 1, m) @ (P, m, C), reading ``y``
    transposed in place. On a CPU this is several times faster than the mathematically
    equal matrix-times-column product ``bmm(y, z[..., None])`` (measured: 3.1 against 14.8 ms
    for P = 1024, C = m = 64 on one AVX2 core), whose many small matrix-vector products
    run far below the machine's rate.
    """
    return torch.bmm(z.unsqueeze(1), y.transpose(1, 2)).squeeze(1)


def _outer(g: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``out[p, j, b] = g[p, j] z[p, b]``: g (P, C), z (P, m) -> (P, C, m), in their dtype.

    In float32 the broadcast product is fastest. In bf16 / fp16 a CPU computes that
    broadcast element by element (measured 4-12x slower than float32 for these shapes on an
    AVX-512 core with native bf16), while the batched outer product ``bmm`` (an inner
    dimension of 1) runs vectorised; both round the exact product once, so they agree bit for
    bit.
    """
    if g.dtype in (torch.bfloat16, torch.float16):
        return torch.bmm(g.unsqueeze(-1), z.unsqueeze(1))
    return g.unsqueeze(-1) * z.unsqueeze(1)


class _Contraction(torch.autograd.Function):
    """``dot[p, j] = sum_a bx[p, j, a] z[p, a]`` (:func:`_contract`) with a backward of the
    same fast shapes: ``grad bx = g z^T`` as a broadcast product and ``grad z[p] =
    g[p]^T bx[p]`` as (P, 1, C) @ (P, C, r). (Autograd's backward of ``bmm(bx, z)`` would
    use a matrix-times-column product and a batched outer product, both slow on a CPU.)
    The backward is made of differentiable operations, so second derivatives stay exact.

    bx : (P, C, r); z : (P, r). Returns (P, C).
    """

    @staticmethod
    def forward(ctx, bx: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(bx, z)
        return _contract(bx, z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        bx, z = ctx.saved_tensors
        grad_bx = grad_z = None
        if ctx.needs_input_grad[0]:
            grad_bx = _outer(grad, z.to(grad.dtype)).to(bx.dtype)
        if ctx.needs_input_grad[1]:
            grad_z = torch.bmm(grad.unsqueeze(1), bx.to(grad.dtype)).squeeze(1).to(z.dtype)
        return grad_bx, grad_z


class _QuadraticForms(torch.autograd.Function):
    """``q[p, j] = z[p]^T G_j z[p]`` for symmetric ``G_j``, and ``Gz[p, j] = G_j z[p]``.

    z : (P, m); gram : (m, C * m) with ``gram[:, j*m:(j+1)*m] = G_j``.
    Returns q (P, C) and Gz (P, C, m).

    Because ``G_j`` is symmetric, ``dq/dz = 2 G_j z`` is read off the saved ``Gz``
    instead of being recomputed by a second (P x Cm) @ (Cm x m) matrix product, which is
    what autograd does for ``bmm(z @ gram, z)``. ``Gz`` is returned (and used by the
    backward) only so that second derivatives stay exact; callers ignore it.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, gram: torch.Tensor):
        m = z.shape[1]
        gz = (z @ gram).unflatten(1, (-1, m))  # autocast may compute in bf16
        q = _contract(gz, z.to(gz.dtype))
        ctx.save_for_backward(z, gram, gz)
        ctx.set_materialize_grads(False)
        return q, gz

    @staticmethod
    def backward(ctx, grad_q: torch.Tensor | None, grad_gz: torch.Tensor | None):
        z, gram, gz = ctx.saved_tensors
        zc = z.to(gz.dtype)
        grad_z = torch.zeros_like(zc)
        grad_gram = torch.zeros_like(gram, dtype=gz.dtype)
        if grad_q is not None:
            g = grad_q.to(gz.dtype)
            grad_z = grad_z + 2 * torch.bmm(g.unsqueeze(1), gz).squeeze(1)
            grad_gram = grad_gram + _weighted_outer_sum(zc, g)
        if grad_gz is not None:  # only in second derivatives: Gz = z @ gram
            g = grad_gz.to(gz.dtype).flatten(1)
            grad_z = grad_z + g @ gram.to(gz.dtype).T
            grad_gram = grad_gram + zc.T @ g
        return grad_z.to(z.dtype), grad_gram.to(gram.dtype)


# Rows per block in _weighted_outer_sum: keeps its (rows, C * m) temporary at a few MB, so
# the allocator reuses it instead of mapping fresh pages for a (P, C * m) tensor.
_BLOCK_ELEMENTS = 1 << 21


def _weighted_outer_sum(z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``out[a, j*m + b] = sum_p z[p, a] g[p, j] z[p, b]``: z (P, m), g (P, C) -> (m, C * m).

    The gradient of ``sum_p g[p, j] z[p]^T G_j z[p]`` w.r.t. the stacked ``G_j``, summed
    block by block over rows so that ``g[p, j] z[p, b]`` never exists for all rows at once.
    """
    (n_rows, m), c = z.shape, g.shape[1]
    block = max(1, _BLOCK_ELEMENTS // (c * m))
    out = z.new_zeros(m, c * m, dtype=torch.promote_types(z.dtype, torch.float32))  # bf16 sums in fp32
    for start in range(0, n_rows, block):
        zb, gb = z[start : start + block], g[start : start + block]
        outer = _outer(gb, zb).flatten(1)  # g[p, j] z[p, b], (rows, C * m)
        out = out + (zb.T @ outer).to(out.dtype)
    return out


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
    weights = normalise(weights, norm, dim=2)
    if detach_weights:
        weights = weights.detach()
    out = (weights * patches.unsqueeze(1)).sum(2)
    return out.reshape(n, c_out, h_out, w_out)
