"""The functional DAU (``coda.dau``) against the float64 oracle, gradcheck and its properties."""

import oracle
import pytest
import torch
from torch.testing import assert_close

from coda import dau as F_dau

CONV_FUNCTIONS = [F_dau.dau_conv2d, F_dau.dau_conv2d_materialised]
# (kernel_size, stride, padding)
GEOMETRIES = [(3, 1, 1), (3, 2, 1), (3, 1, 0), (3, 2, 0), (1, 1, 0), (1, 2, 0)]


def conv_params(c_in=3, c_out=4, k=3, r=5, bias=True, dtype=torch.float64, scale=1.0):
    """Random package-layout parameters ``A, B, b`` of a CoDA conv layer."""
    A = scale * torch.randn(r, c_in, k, k, dtype=dtype)
    B = torch.randn(c_out, r, c_in, k, k, dtype=dtype) / r**0.5
    b = torch.randn(c_out, c_in, k, k, dtype=dtype) if bias else None
    return A, B, b


def oracle_conv(x, A, B, b, stride, padding, norm, weights_from=None):
    """The oracle layer on package-layout parameters."""
    A_pub, B_pub, b_pub = oracle.to_published(A, B, b)
    return oracle.coda_conv2d(x, A_pub, B_pub, b_pub, stride, padding, norm, weights_from)


# ----- agreement with the oracle ---------------------------------------------------------


@pytest.mark.parametrize("fn", CONV_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("k, stride, padding", GEOMETRIES)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("norm", F_dau.NORMS)
def test_conv_matches_oracle(fn, k, stride, padding, bias, norm):
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)  # non-square on purpose
    A, B, b = conv_params(k=k, bias=bias)
    out = fn(x, A, B, b, stride=stride, padding=padding, norm=norm)
    expected = oracle_conv(x, A, B, b, stride, padding, norm)
    assert out.shape == expected.shape
    # float64 throughout; the only difference is the order of summation.
    assert_close(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fn", CONV_FUNCTIONS, ids=lambda f: f.__name__)
def test_conv_detach_weights_keeps_the_forward_value(fn):
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    A, B, b = conv_params()
    assert_close(fn(x, A, B, b, padding=1, detach_weights=True), fn(x, A, B, b, padding=1))


def test_vector_dau_matches_direct_formula():
    n, d, c_out, r = 4, 6, 3, 2
    x = torch.randn(n, d, dtype=torch.float64)
    A = torch.randn(r, d, dtype=torch.float64)
    B = torch.randn(c_out, r, d, dtype=torch.float64)
    b = torch.randn(c_out, d, dtype=torch.float64)
    for norm, g in oracle.NORMS.items():
        expected = torch.empty(n, c_out, dtype=torch.float64)
        for i in range(n):
            for j in range(c_out):
                w_j = B[j].T @ (A @ x[i]) + b[j]  # B[j] stores B_j^T
                expected[i, j] = g(w_j) @ x[i]
        assert_close(F_dau.dau(x, A, B, b, norm), expected, rtol=1e-12, atol=1e-12)


def test_vector_dau_l2_without_bias_is_a_rayleigh_like_quotient():
    # docs/method.md#the-dynamic-alignment-unit: with b = 0 and the L2 norm, DAU(x) = x^T W x / ||W x||, W = B_j A.
    d, r = 5, 3
    x = torch.randn(7, d, dtype=torch.float64)
    A = torch.randn(r, d, dtype=torch.float64)
    B = torch.randn(1, r, d, dtype=torch.float64)
    W = B[0].T @ A
    Wx = x @ W.T
    expected = (x * Wx).sum(1) / Wx.norm(dim=1)
    assert_close(F_dau.dau(x, A, B, None, "l2")[:, 0], expected)


def test_vector_dau_l2_reaches_the_norm_on_an_eigenvector():
    # W x = lambda x with lambda > 0 gives cos = 1, so DAU(x) = ||x|| (the maximum).
    d = 4
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    W = Q @ torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ Q.T
    x = 2.5 * Q[:, :1].T  # an eigenvector of W, ||x|| = 2.5
    out = F_dau.dau(x, W, torch.eye(d, dtype=torch.float64)[None], None, "l2")  # A = W, B_1 = I
    assert_close(out, torch.tensor([[2.5]], dtype=torch.float64))


def test_unknown_norm_raises():
    with pytest.raises(ValueError, match="norm"):
        F_dau.norm_factor(torch.ones(3), "softmax")


# ----- gradients --------------------------------------------------------------------------


@pytest.mark.parametrize("norm", F_dau.NORMS)
@pytest.mark.parametrize("stride, padding", [(1, 1), (2, 0)])
def test_gradcheck(norm, stride, padding):
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    A, B, b = (t.requires_grad_() for t in conv_params(c_in=2, c_out=2, k=3, r=2))

    def f(x, A, B, b):
        return F_dau.dau_conv2d(x, A, B, b, stride=stride, padding=padding, norm=norm)

    assert torch.autograd.gradcheck(f, (x, A, B, b))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_second_derivatives_are_exact(bias):
    """The hand-written backward passes are themselves differentiable (jvp, Hessians)."""
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    A, B, b = conv_params(c_in=2, c_out=2, k=3, r=2, bias=bias)
    params = [t.requires_grad_() for t in (A, B) + ((b,) if bias else ())]

    def f(x, A, B, *b):
        return F_dau.dau_conv2d(x, A, B, b[0] if b else None, padding=1)

    assert torch.autograd.gradgradcheck(f, (x, *params))


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
def test_image_groups_give_the_same_values_and_gradients(monkeypatch, bias):
    """``dau_conv2d`` splits large batches into groups of images; the split is invisible."""
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    params = [t.requires_grad_() for t in conv_params(bias=bias) if t is not None]
    b = params[2] if bias else None

    def run():
        out = F_dau.dau_conv2d(x, params[0], params[1], b, padding=1)
        grads = torch.autograd.grad(out.pow(2).sum(), [x, *params])
        return out, grads

    whole, whole_grads = run()
    monkeypatch.setattr(F_dau, "_GROUP_ELEMENTS", 2 * 36 * 4 * 5)  # 2 images per group: 2 + 2 + 1
    grouped, grouped_grads = run()
    assert_close(grouped, whole)
    for g, w in zip(grouped_grads, whole_grads, strict=True):
        assert_close(g, w)


def test_weighted_outer_sum_matches_einsum_across_blocks(monkeypatch):
    z, g = torch.randn(11, 4, dtype=torch.float64), torch.randn(11, 3, dtype=torch.float64)
    monkeypatch.setattr(F_dau, "_BLOCK_ELEMENTS", 3 * 4 * 4)  # 4 rows per block: 4 + 4 + 3
    expected = torch.einsum("pa,pj,pb->ajb", z, g, z).reshape(4, 12)
    assert_close(F_dau._weighted_outer_sum(z, g), expected)


@pytest.mark.parametrize("fn", CONV_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("norm", F_dau.NORMS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("zero", ["input", "weights"])
def test_no_nan_at_zero(fn, norm, bias, zero):
    """A zero input, or zero A, B, b (zero dynamic weights): zero output, finite gradients.

    Without a bias a zero input also makes every dynamic weight zero, where ``g`` has its
    singular point (||w|| = 0).
    """
    x = torch.zeros(2, 3, 4, 4) if zero == "input" else torch.rand(2, 3, 4, 4)
    A, B, b = conv_params(dtype=torch.float32, bias=bias)
    if zero == "weights":
        A, B, b = (None if t is None else torch.zeros_like(t) for t in (A, B, b))
    leaves = [t.requires_grad_() for t in (x, A, B, b) if t is not None]
    out = fn(x, A, B, b, padding=1, norm=norm)
    out.sum().backward()
    assert torch.equal(out, torch.zeros_like(out))
    for t in leaves:
        assert torch.isfinite(t.grad).all()


# ----- properties -------------------------------------------------------------------------


@pytest.mark.parametrize("norm", F_dau.NORMS)
@pytest.mark.parametrize("scale", [0.3, 1.0, 30.0])
def test_output_bounded_by_patch_norm(norm, scale):
    """|out_j| < ||patch|| for squash (||g(w)|| < 1) and <= for L2 (||g(w)|| = 1)."""
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    A, B, b = conv_params(scale=scale)
    out = F_dau.dau_conv2d(x, A, B, b, padding=1, norm=norm)
    bound = oracle.patches(x, 3, 1, 1).norm(dim=-1).unsqueeze(1)  # (N, 1, H, W)
    ratio = out.abs() / bound
    if norm == "squash":
        assert ratio.max() < 1
    else:
        assert ratio.max() <= 1 + 1e-12  # cos <= 1 up to float64 rounding


@pytest.mark.parametrize("fn", CONV_FUNCTIONS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("norm", F_dau.NORMS)
def test_explanation_mode_is_the_frozen_linear_map(fn, norm):
    """With detached weights, the Jacobian at x0 is W(x0): J x0 = out and J x1 = W(x0) x1."""
    x0 = torch.randn(1, 2, 4, 3, dtype=torch.float64)
    x1 = torch.randn_like(x0)
    A, B, b = conv_params(c_in=2, c_out=3, r=3)

    def f(x, detach=True):
        return fn(x, A, B, b, stride=1, padding=1, norm=norm, detach_weights=detach)

    J = torch.autograd.functional.jacobian(f, x0).reshape(f(x0).numel(), x0.numel())
    assert_close(J @ x0.flatten(), f(x0).flatten())
    frozen = oracle_conv(x1, A, B, b, 1, 1, norm, weights_from=x0)
    assert_close(J @ x1.flatten(), frozen.flatten())
    # The ordinary Jacobian also differentiates the weights, so it is not W(x0).
    J_full = torch.autograd.functional.jacobian(lambda x: f(x, detach=False), x0)
    assert not torch.allclose(J_full.reshape(J.shape) @ x0.flatten(), f(x0).flatten())


def test_contraction_matches_einsum_with_exact_first_and_second_derivatives():
    bx = torch.randn(5, 3, 4, dtype=torch.float64, requires_grad=True)
    z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(F_dau._Contraction.apply(bx, z), torch.einsum("pja,pa->pj", bx, z))
    assert torch.autograd.gradcheck(F_dau._Contraction.apply, (bx, z))
    assert torch.autograd.gradgradcheck(F_dau._Contraction.apply, (bx, z))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_outer_is_the_broadcast_product_bit_for_bit(dtype):
    # bf16 / fp16 take the batched-outer-product path (bmm, inner dimension 1), float32 and
    # float64 the broadcast product; both round the exact product once.
    g, z = torch.randn(37, 6).to(dtype), torch.randn(37, 5).to(dtype)
    out = F_dau._outer(g, z)
    assert out.dtype == dtype and out.shape == (37, 6, 5)
    assert torch.equal(out, g.unsqueeze(-1) * z.unsqueeze(1))
    assert torch.equal(out.double(), g.double().unsqueeze(-1) * z.double().unsqueeze(1) if dtype == torch.float64
                       else (g.double().unsqueeze(-1) * z.double().unsqueeze(1)).to(dtype).double())


def test_bf16_backward_of_the_contractions_matches_float32():
    # The reduced-precision path of both hand-written backwards (_outer through bmm).
    bx = torch.randn(64, 8, 5, requires_grad=True)
    z = torch.randn(64, 5, requires_grad=True)
    gram = torch.randn(5, 5 * 8)
    gram = (gram.reshape(5, 8, 5) + gram.reshape(5, 8, 5).permute(2, 1, 0)).reshape(5, 40)  # G_j symmetric
    gram.requires_grad_(True)
    grads = {}
    for dtype in (torch.float32, torch.bfloat16):
        out = F_dau._Contraction.apply(bx.to(dtype), z.to(dtype))
        q, _ = F_dau._QuadraticForms.apply(z.to(dtype), gram.to(dtype))
        grads[dtype] = torch.autograd.grad(out.float().sum() + q.float().sum(), [bx, z, gram])
    for g16, g32 in zip(grads[torch.bfloat16], grads[torch.float32], strict=True):
        assert g16.dtype == torch.float32
        assert_close(g16, g32, rtol=0.03, atol=0.03 * g32.abs().max().item())
