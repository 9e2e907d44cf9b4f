"""The helpers of the DAU lesson (coda.theory), each against a direct formula or a property.

The statements they make checkable are in docs/method.md#the-dynamic-alignment-unit.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from coda import DynamicAlignment, theory


def test_unit_vectors_have_norm_one_and_the_given_angle():
    angles = torch.tensor([0.0, 30.0, 135.0, -90.0], dtype=torch.float64)
    v = theory.unit_vectors(angles)
    assert v.shape == (4, 2)
    assert_close(v.norm(dim=1), torch.ones(4, dtype=torch.float64))
    assert_close(torch.rad2deg(torch.atan2(v[:, 1], v[:, 0])), angles)


def test_matrix_with_eigenvectors_has_those_eigenpairs():
    V = torch.stack([theory.unit_vectors(20.0), theory.unit_vectors(125.0)], 1)  # not orthogonal
    W = theory.matrix_with_eigenvectors([1.5, -0.7], V)
    assert_close(W @ V, V * torch.tensor([1.5, -0.7], dtype=torch.float64))


@pytest.mark.parametrize("norm", ["l2", "squash"])
def test_dau_of_matrix_is_the_dau_with_weight_w_x(norm):
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(3, 3, generator=gen, dtype=torch.float64)
    x = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    w = x @ W.T  # w(x) = W x
    length = w.norm(dim=1, keepdim=True)
    g = w / length if norm == "l2" else w * length / (1 + length**2)
    assert_close(theory.dau_of_matrix(x, W, norm), (g * x).sum(1))


def test_bilinear_form_is_the_l2_dau_and_bounded_by_the_norm():
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    out = theory.bilinear_form(x, W)
    assert_close(out, theory.dau_of_matrix(x, W, "l2"))
    assert (out.abs() <= x.norm(dim=1) * (1 + 1e-12)).all()


def test_bilinear_form_reaches_plus_and_minus_the_norm_on_eigenvectors():
    v1, v2 = theory.unit_vectors(20.0), theory.unit_vectors(135.0)
    W = theory.matrix_with_eigenvectors([1.5, -0.7], torch.stack([v1, v2], 1))
    x = torch.stack([3 * v1, -v1, 2 * v2])
    assert_close(theory.bilinear_form(x, W), torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64))
    between = theory.unit_vectors(torch.tensor([60.0, 100.0]))  # not eigenvectors
    assert (theory.bilinear_form(between, W).abs() < 1 - 1e-3).all()


def test_gaussian_with_directions_is_seeded_and_varies_along_its_directions():
    X, U = theory.gaussian_with_directions(20_000, stds=[3.0, 1.0], dim=5, seed=2)
    X2, U2 = theory.gaussian_with_directions(20_000, stds=[3.0, 1.0], dim=5, seed=2)
    assert torch.equal(X, X2) and torch.equal(U, U2)
    assert X.shape == (20_000, 5) and U.shape == (5, 2)
    assert_close(U.T @ U, torch.eye(2), atol=1e-5, rtol=0)
    assert_close((X @ U).std(0), torch.tensor([3.0, 1.0]), rtol=0.03, atol=0)
    assert_close(X - (X @ U) @ U.T, torch.zeros_like(X), atol=1e-4, rtol=0)  # no noise: only span(U)


def test_second_moment_is_the_mean_outer_product():
    X = torch.randn(7, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = sum(torch.outer(x, x) for x in X) / 7
    assert_close(theory.second_moment(X), expected)


def test_top_eigenvectors_and_singular_vectors_come_largest_first():
    M = torch.diag(torch.tensor([1.0, 5.0, 3.0], dtype=torch.float64))
    top = theory.top_eigenvectors(M, 2)
    assert_close(top.abs(), torch.eye(3, dtype=torch.float64)[:, [1, 2]])
    Q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64))
    W = Q @ torch.diag(torch.tensor([4.0, 2.0, 0.5], dtype=torch.float64)) @ Q.T
    assert_close(theory.top_singular_vectors(W, 2).abs(), Q[:, :2].abs())


def test_subspace_cosines_measure_principal_angles():
    e = torch.eye(3, dtype=torch.float64)
    rotated = torch.stack([e[0] + e[1], e[0] - e[1]], 1) / math.sqrt(2)  # same span as e0, e1
    assert_close(theory.subspace_cosines(e[:, :2], rotated), torch.ones(2, dtype=torch.float64))
    assert_close(theory.subspace_cosines(e[:, :1], e[:, 1:2]), torch.zeros(1, dtype=torch.float64))
    tilted = (e[:, :1] + e[:, 1:2]) / math.sqrt(2)
    assert_close(theory.subspace_cosines(e[:, :1], tilted), torch.tensor([math.sqrt(0.5)], dtype=torch.float64))


def test_effective_matrix_and_alignment_describe_the_layer():
    torch.manual_seed(5)
    layer = DynamicAlignment(4, 2, rank=2, norm="l2", weight_bias=False).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    W1 = theory.effective_matrix(layer, unit=1)
    assert_close(W1, (layer.B[1].T @ layer.A).detach())
    assert_close(layer(x)[:, 1].detach(), theory.dau_of_matrix(x, W1, "l2"))
    # L2 without bias: the output is ||x|| cos(w(x), x)
    assert_close(layer(x)[:, 0].detach(), x.norm(dim=1) * theory.alignment(layer, x, unit=0))
    w = x @ theory.effective_matrix(layer, unit=0).T
    assert_close(theory.alignment(layer, x), F.cosine_similarity(w, x, dim=-1))


def test_train_dau_is_seeded_leaves_the_global_rng_alone_and_finds_the_principal_direction():
    X, _ = theory.gaussian_with_directions(400, stds=[2.0], dim=8, noise=0.3, seed=0)
    state = torch.get_rng_state()
    layer, losses = theory.train_dau(X, rank=1, steps=150, lr=0.05, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    again, _ = theory.train_dau(X, rank=1, steps=150, lr=0.05, seed=0)
    assert torch.equal(layer.A, again.A) and torch.equal(layer.B, again.B)
    assert len(losses) == 150 and losses[-1] < losses[0]
    untrained, _ = theory.train_dau(X, rank=1, steps=0, seed=0)  # the same initialisation
    principal = theory.top_eigenvectors(theory.second_moment(X), 1)

    def cosine(m):
        return theory.subspace_cosines(theory.top_singular_vectors(theory.effective_matrix(m), 1), principal)[0]

    assert cosine(untrained) < 0.6 and cosine(layer) > 0.99


def test_train_dau_with_a_temperature_minimises_the_bce():
    X, _ = theory.gaussian_with_directions(100, stds=[1.0, 0.5], dim=3, seed=0)
    layer, losses = theory.train_dau(X, rank=2, steps=1, lr=0.0, temperature=10.0, seed=0)
    with torch.no_grad():
        expected = F.binary_cross_entropy_with_logits(layer(X)[:, 0] / 10.0, torch.ones(100))
    assert losses[0] == pytest.approx(expected.item(), rel=1e-5)


def test_bce_alignment_pressure_is_the_relative_slope_of_the_loss():
    cos = torch.linspace(-1, 1, 9, dtype=torch.float64, requires_grad=True)
    x_norm, T = 30.0, 10.0
    loss = F.softplus(-x_norm * cos / T)
    (slope,) = torch.autograd.grad(loss.sum(), cos)
    at_zero = x_norm / T * 0.5  # -d loss / d cos at cos = 0
    assert_close(theory.bce_alignment_pressure(cos.detach(), x_norm, T), -slope / at_zero)
    assert theory.bce_alignment_pressure(torch.tensor(0.0), x_norm, T) == pytest.approx(1.0)
