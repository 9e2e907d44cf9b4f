"""Small pure helpers for the DAU lesson (notebook 01): toy data, matrices and a toy trainer.

Nothing here is needed to build or train a CoDA-Net; these functions make the statements of
docs/method.md#the-dynamic-alignment-unit checkable on vectors small enough to plot:

* with ``b = 0`` and the L2 norm a DAU computes ``x^T W x / ||W x||`` with ``W = B_j A``;
* that is at most ``||x||``, with equality exactly for eigenvectors of ``W`` with a positive
  eigenvalue;
* maximising a rank-``r`` DAU's mean output over data makes ``W`` span the data's top-``r``
  principal directions;
* dividing the output by a temperature ``T`` before a sigmoid keeps up the pressure to align.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from coda.dau import dau
from coda.layers import DynamicAlignment


def unit_vectors(angles_deg: torch.Tensor | float) -> torch.Tensor:
    """2-D unit vectors at ``angles_deg`` (degrees from the x-axis): (...,) -> (..., 2)."""
    a = torch.deg2rad(torch.as_tensor(angles_deg, dtype=torch.float64))
    return torch.stack([a.cos(), a.sin()], -1)


def matrix_with_eigenvectors(eigenvalues, eigenvectors) -> torch.Tensor:
    """``W = V diag(lambda) V^-1``: a (d, d) matrix with the given real eigen-pairs.

    Parameters
    ----------
    eigenvalues : d values ``lambda_i``.
    eigenvectors : (d, d), column ``i`` is the eigenvector of ``lambda_i`` (need not be
        orthogonal, only linearly independent).
    """
    V = torch.as_tensor(eigenvectors, dtype=torch.float64)
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    return V @ torch.diag(lam) @ torch.linalg.inv(V)


def dau_of_matrix(x: torch.Tensor, W: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """One DAU with bias 0 and dynamic weight ``w(x) = W x``, through :func:`coda.dau.dau`.

    ``W`` is factorised as ``B_j A`` with ``A = W`` and ``B_j = I`` (rank ``d``).
    x : (N, d), W : (d, d) -> (N,) outputs ``g(W x)^T x``.
    """
    d = W.shape[0]
    eye = torch.eye(d, dtype=W.dtype).unsqueeze(0)  # B: (C_out=1, r=d, d)
    return dau(x.to(W.dtype), W, eye, None, norm=norm)[:, 0]


def bilinear_form(x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """The closed form of the L2 DAU with ``b = 0``: ``x^T W x / ||W x||``, (N, d) -> (N,)."""
    Wx = x.to(W.dtype) @ W.T
    return (x.to(W.dtype) * Wx).sum(-1) / Wx.norm(dim=-1)


def gaussian_with_directions(
    n: int, stds, dim: int, noise: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-mean Gaussian data with a few dominant directions.

    ``x = sum_i s_i z_i u_i + noise * e`` with ``z, e`` standard normal and ``u_i`` random
    orthonormal directions.

    Parameters
    ----------
    n : number of points.
    stds : the standard deviations ``s_i`` along the dominant directions (k of them).
    dim : the dimension d >= k.
    noise : standard deviation of isotropic noise added in all d dimensions.
    seed : seed of the generator (no global RNG is touched).

    Returns
    -------
    X : (n, dim) float32 data; U : (dim, k) float32, the directions ``u_i`` as columns.
    """
    g = torch.Generator().manual_seed(seed)
    stds = torch.as_tensor(stds, dtype=torch.float32)
    k = stds.numel()
    Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g))
    U = Q[:, :k]
    X = (torch.randn(n, k, generator=g) * stds) @ U.T + noise * torch.randn(n, dim, generator=g)
    return X, U


def second_moment(X: torch.Tensor) -> torch.Tensor:
    """``E[x x^T]`` estimated from the rows of X: (n, d) -> (d, d)."""
    return X.T @ X / X.shape[0]


def top_eigenvectors(M: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The ``k`` eigenvectors of a symmetric matrix with the largest eigenvalues, (d, k)."""
    _, vecs = torch.linalg.eigh(M)
    return vecs[:, -k:].flip(1)


def top_singular_vectors(W: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The ``k`` leading left singular vectors of ``W`` (a basis of its main output space)."""
    U, _, _ = torch.linalg.svd(W)
    return U[:, :k]


def subspace_cosines(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between span(U) and span(V), largest first.

    U : (d, k), V : (d, k) with orthonormal columns. All ones iff the spans coincide; for
    k = 1 this is ``|cos|`` of the angle between the two vectors.
    """
    return torch.linalg.svdvals(U.T.double() @ V.double())


def effective_matrix(layer: DynamicAlignment, unit: int = 0) -> torch.Tensor:
    """``W_j = B_j A`` of DAU ``unit`` of a vector DA layer, (d, d) (the ``b_j = 0`` part)."""
    return (layer.B[unit].T @ layer.A).detach()


def alignment(layer: DynamicAlignment, X: torch.Tensor, unit: int = 0) -> torch.Tensor:
    """``cos(w_j(x), x)`` for every row of X: how well the dynamic weight aligns, (n,)."""
    with torch.no_grad():
        w = layer.weights(X)[:, unit]
    return F.cosine_similarity(w, X, dim=-1)


def train_dau(
    X: torch.Tensor,
    rank: int,
    steps: int = 300,
    lr: float = 0.02,
    norm: str = "l2",
    weight_bias: bool = False,
    temperature: float | None = None,
    seed: int = 0,
) -> tuple[DynamicAlignment, list[float]]:
    """Train one DAU on the rows of X by full-batch Adam.

    Parameters
    ----------
    X : (n, d) data (the layer is created on its device).
    rank : r, rank of ``W = B A``.
    steps, lr : Adam steps and learning rate.
    norm, weight_bias : passed to :class:`coda.DynamicAlignment`.
    temperature : ``None`` maximises the mean output directly (loss ``-mean DAU(x)``);
        a number ``T`` instead minimises the binary cross-entropy of ``sigmoid(DAU(x) / T)``
        against the target 1 (loss ``mean softplus(-DAU(x) / T)``), as the network's
        output layer does.
    seed : seed of the initialisation (a local generator; the global RNG is restored).

    Returns
    -------
    The trained layer and the loss at every step.
    """
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer = DynamicAlignment(X.shape[1], 1, rank=rank, norm=norm, weight_bias=weight_bias).to(X.device)
    opt = torch.optim.Adam(layer.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        out = layer(X)[:, 0]
        loss = -out.mean() if temperature is None else F.softplus(-out / temperature).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return layer, losses


def bce_alignment_pressure(cos: torch.Tensor, x_norm: float, temperature: float) -> torch.Tensor:
    """``-d loss / d cos`` of ``softplus(-||x|| cos / T)``, relative to its value at cos = 0.

    With the L2 norm the DAU output is ``||x|| cos``; the binary cross-entropy with target 1
    is ``softplus(-||x|| cos / T)``. Its slope in ``cos`` is ``(||x|| / T) sigmoid(-||x|| cos / T)``;
    divided by the slope at ``cos = 0`` this is ``2 sigmoid(-||x|| cos / T)``: how much of the
    initial push to align is left at alignment ``cos``.
    """
    return 2 * torch.sigmoid(-x_norm * cos / temperature)
