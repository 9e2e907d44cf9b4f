"""The modules ``CoDAConv2d`` and ``DynamicAlignment``: oracle, explanation mode, dtypes, API."""

import oracle
import pytest
import torch
from torch.testing import assert_close

from coda import CoDAConv2d, DynamicAlignment


def oracle_layer(layer, x, weights_from=None):
    """The oracle applied with ``layer``'s parameters (converted to the published layout)."""
    A, B, b = oracle.to_published(
        layer.A.detach(), layer.B.detach(), None if layer.b is None else layer.b.detach()
    )
    return oracle.coda_conv2d(x, A, B, b, layer.stride, layer.padding, layer.norm, weights_from)


@pytest.mark.parametrize("norm", ["squash", "l2"])
@pytest.mark.parametrize("weight_bias", [True, False])
def test_conv_layer_matches_oracle(norm, weight_bias):
    layer = CoDAConv2d(3, 4, 3, rank=5, stride=2, norm=norm, weight_bias=weight_bias).double()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    assert_close(layer(x), oracle_layer(layer, x), rtol=1e-10, atol=1e-12)


def test_default_padding_keeps_the_size():
    for k in (1, 3, 5):
        assert CoDAConv2d(2, 3, k, rank=2)(torch.rand(1, 2, 6, 5)).shape == (1, 3, 6, 5)


def test_conv_layer_explain_flag_makes_it_linear_at_x0():
    """``explain = True``: out(x0) = W(x0) x0, i.e. sum(grad_out_j * x0) == out_j per unit."""
    layer = CoDAConv2d(2, 3, 3, rank=4).double()
    x0 = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    layer.explain = True
    out = layer(x0)
    jac = torch.autograd.functional.jacobian(layer, x0)  # (1, 3, 4, 5, 1, 2, 4, 5)
    assert_close((jac * x0).sum((-4, -3, -2, -1)), out)
    _, jvp = torch.autograd.functional.jvp(layer, x0, x0)
    assert_close(jvp, out)
    layer.explain = False
    _, jvp_full = torch.autograd.functional.jvp(layer, x0, x0)
    assert not torch.allclose(jvp_full, out)  # the flag is what makes it exact


def test_conv_layer_explain_gradient_is_the_oracle_frozen_map():
    layer = CoDAConv2d(2, 3, 3, rank=4, norm="l2").double()
    x0, x1 = torch.randn(2, 1, 2, 5, 4, dtype=torch.float64)
    layer.explain = True
    _, jvp = torch.autograd.functional.jvp(layer, x0, x1)
    assert_close(jvp, oracle_layer(layer, x1, weights_from=x0))


def test_bfloat16_autocast_is_close_to_float32():
    layer = CoDAConv2d(6, 8, 3, rank=8)
    x = torch.rand(2, 6, 8, 8)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert torch.isfinite(out).all()
    # bfloat16 keeps 8 significant bits (relative rounding 2^-9 ~ 0.002 per operation); after
    # convolutions with ~50-term sums and the norm, a few percent of the output scale is loose
    # but would still catch a wrong formula (errors of order 100%).
    err = (out.float() - expected).abs().max() / expected.abs().max()
    assert err < 0.05


def test_channels_last_and_contiguous_inputs_agree():
    layer = CoDAConv2d(3, 4, 3, rank=5)
    x = torch.rand(2, 3, 6, 7)
    out = layer(x)
    out_cl = layer(x.contiguous(memory_format=torch.channels_last))
    assert_close(out_cl, out)
    assert_close(out.double(), oracle_layer(layer, x.double()), rtol=1e-4, atol=1e-5)  # float32


def test_non_contiguous_input():
    layer = CoDAConv2d(3, 4, 3, rank=5)
    x = torch.rand(2, 7, 6, 3).permute(0, 3, 2, 1)  # (2, 3, 6, 7), strided
    assert_close(layer(x), layer(x.contiguous()))


def test_conv_layer_backward_reaches_all_parameters():
    layer = CoDAConv2d(3, 4, 3, rank=5)
    layer(torch.rand(2, 3, 5, 5)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_parameter_count_matches_the_paper_convolutions():
    # A: conv C_in -> r, k x k, no bias; B: 1x1 conv r -> C_out * d with bias.
    c_in, c_out, k, r = 6, 16, 3, 32
    d = c_in * k * k
    layer = CoDAConv2d(c_in, c_out, k, rank=r)
    assert sum(p.numel() for p in layer.parameters()) == r * d + c_out * d * r + c_out * d


def test_extra_repr_shows_rank_and_norm():
    text = repr(CoDAConv2d(3, 4, 3, rank=5, norm="l2"))
    assert "rank=5" in text and "norm='l2'" in text and "weight_bias=True" in text
    text = repr(DynamicAlignment(6, 2, rank=3, weight_bias=False))
    assert "rank=3" in text and "norm='squash'" in text and "weight_bias=False" in text


# ----- the constructor contract: nn.Conv2d's order, the method's arguments keyword-only -------


def test_conv2d_style_call_sets_the_stride_and_padding():
    layer = CoDAConv2d(16, 32, 3, 2, rank=8)
    assert (layer.stride, layer.padding, layer.rank) == (2, 1, 8)
    assert layer(torch.rand(1, 16, 8, 8)).shape == (1, 32, 4, 4)
    assert CoDAConv2d(16, 32, 3, 1, 0, rank=8).padding == 0


def test_rank_is_keyword_only_and_required():
    with pytest.raises(TypeError):
        CoDAConv2d(16, 32, 3, 2)  # nn.Conv2d-style: the 4th argument is the stride, no rank
    with pytest.raises(TypeError):
        CoDAConv2d(16, 32, 3, 1, 1, 8)
    with pytest.raises(TypeError):
        DynamicAlignment(6, 2, 3)


def test_weight_bias_switches_the_bias_of_the_dynamic_weights():
    with_bias, without = CoDAConv2d(3, 4, 3, rank=2), CoDAConv2d(3, 4, 3, rank=2, weight_bias=False)
    assert with_bias.b.shape == (4, 3, 3, 3) and without.b is None
    assert set(with_bias.state_dict()) == {"A", "B", "b"}  # the keys of the shipped checkpoints
    assert set(without.state_dict()) == {"A", "B"}
    assert DynamicAlignment(6, 2, rank=3, weight_bias=False).b is None
    with pytest.raises(TypeError):
        CoDAConv2d(3, 4, 3, rank=2, bias=False)  # the old name is not silently accepted


@pytest.mark.parametrize(
    "kwargs",
    [
        {"in_channels": 0},
        {"out_channels": -1},
        {"kernel_size": 0},
        {"kernel_size": 3.0},
        {"rank": 0},
        {"rank": True},
        {"stride": 0},
        {"padding": -1},
        {"padding": 1.5},
        {"norm": "softmax"},
    ],
)
def test_conv_bad_constructor_args_raise(kwargs):
    args = {"in_channels": 3, "out_channels": 4, "kernel_size": 3, "rank": 2} | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        CoDAConv2d(**args)


@pytest.mark.parametrize("kwargs", [{"in_features": 0}, {"out_features": 2.0}, {"rank": -3}, {"norm": "L2"}])
def test_vector_bad_constructor_args_raise(kwargs):
    args = {"in_features": 3, "out_features": 4, "rank": 2} | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DynamicAlignment(**args)


@pytest.mark.parametrize("norm", ["squash", "l2"])
def test_vector_layer_matches_formula_and_weights(norm):
    layer = DynamicAlignment(5, 3, rank=2, norm=norm).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    w = torch.einsum("jrd,rk,nk->njd", layer.B, layer.A, x) + layer.b  # w_j = B_j A x + b_j
    g = oracle.NORMS[norm](w)
    assert_close(layer.weights(x), g)
    assert_close(layer(x), (g * x[:, None]).sum(-1))


def test_vector_layer_explain_flag_makes_it_linear_at_x0():
    layer = DynamicAlignment(5, 3, rank=2).double()
    x0, x1 = torch.randn(2, 1, 5, dtype=torch.float64)
    layer.explain = True
    _, jvp = torch.autograd.functional.jvp(layer, x0, x1)
    assert_close(jvp, x1 @ layer.weights(x0)[0].T)  # W(x0) x1
