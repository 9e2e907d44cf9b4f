"""Contributions (docs/method.md#contributions): completeness, the frozen linear map, and the API."""

import oracle
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from coda import (
    CoDAConv2d,
    DynamicAlignment,
    ExplainableLayer,
    build_model,
    contribution_map,
    contributions,
    dynamic_linear_weights,
    explanation_mode,
)
from coda.models import CONFIGS

TINY = CONFIGS["cifar10-tiny"]
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture
def model():
    # T = 10 instead of 100 keeps logit - b0 of a random model well above float32 rounding.
    return build_model("cifar10-tiny", temperature=10.0)


@pytest.fixture
def images():
    return torch.rand(3, 3, 12, 10)


def logits_of(model, images):
    with torch.no_grad():
        return model(images)


def assert_complete(contribs, logit, logit_bias, eps=EPS32):
    """``contribs`` (B, ...) sum over non-batch dims to ``logit - logit_bias`` (B,).

    Two roundings separate them: the logit itself (about ``eps * |logit|``, and b0 = -2.2
    dominates it) and the sum of the contributions (about ``eps * sum|c|`` times a
    small factor). 16 eps of both is tight next to the error of a wrong explanation,
    which is of the order of ``logit - b0`` itself (see ``test_gradient_times_input_is_not_complete``).
    """
    total = contribs.sum(tuple(range(1, contribs.dim())))
    scale = logit.abs() + contribs.abs().sum(tuple(range(1, contribs.dim())))
    err = (total - (logit - logit_bias)).abs()
    assert (err <= 16 * eps * scale).all(), (err, scale)


# ----- completeness ------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [None, *range(len(TINY.channels))])
def test_completeness_at_every_layer(model, images, layer):
    logits = logits_of(model, images)
    for target in (0, 7):
        c = contributions(model, images, target, layer)
        assert c.dtype == torch.float32
        assert_complete(c, logits[:, target], model.logit_bias)


@pytest.mark.parametrize("layer", [None, 2])
def test_completeness_with_one_target_per_example(model, images, layer):
    targets = torch.tensor([3, 0, 9])
    c = contributions(model, images, targets, layer)
    logit = logits_of(model, images).gather(1, targets[:, None])[:, 0]
    assert_complete(c, logit, model.logit_bias)
    assert_close(c, contributions(model, images, [3, 0, 9], layer))  # a list works too


@pytest.mark.parametrize("layer", [None, 0, 3])
def test_completeness_in_float64(layer):
    model = build_model("cifar10-tiny", temperature=10.0).double()
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    c = contributions(model, images, 4, layer)
    assert c.dtype == torch.float64
    logit = logits_of(model, images)[:, 4]
    assert_complete(c, logit, model.logit_bias, eps=torch.finfo(torch.float64).eps)


def test_gradient_times_input_is_not_complete(model, images):
    """Without explanation mode the gradient also moves the weights: completeness fails."""
    a = model.encode(images).requires_grad_()
    logit = model.head(a)[:, 1]
    (grad,) = torch.autograd.grad(logit.sum(), a)
    with pytest.raises(AssertionError):
        assert_complete(a.detach() * grad, logit.detach(), model.logit_bias)


def test_contributions_match_the_oracle_frozen_map(model, images):
    """``W_{1->L}(x0)`` from the package applied to any encoded input ``a1`` equals the
    oracle network whose dynamic weights are frozen at ``x0`` (docs/method.md#contributions)."""
    model = model.double()
    x0 = images.double()
    W = dynamic_linear_weights(model, x0, 5)  # (B, 6, H, W)
    sd = oracle.model_to_published(model)
    a0 = oracle.encode(x0)
    for a1 in (a0, 2 * a0, torch.randn_like(a0)):
        frozen = oracle.head(a1, sd, TINY.strides, model.temperature, frozen_at=a0)[:, 5]
        assert_close((W * a1).sum((1, 2, 3)) / model.temperature, frozen - oracle.LOGIT_BIAS)


def test_dynamic_linear_weights_reproduce_the_logit(model, images):
    W = dynamic_linear_weights(model, images, 2)
    assert W.shape == (3, 6, 12, 10)
    logit = logits_of(model, images)[:, 2]
    assert_complete(W * model.encode(images) / model.temperature, logit, model.logit_bias)
    assert_close(W * model.encode(images) / model.temperature, contributions(model, images, 2))


def test_contribution_map(model, images):
    c = contributions(model, images, 1)
    m = contribution_map(c)
    assert m.shape == (3, 12, 10)
    assert_close(m.sum((1, 2)), c.sum((1, 2, 3)))
    with pytest.raises(ValueError, match="B, C, H, W"):
        contribution_map(m)


# ----- contexts: modes, no_grad, autocast ----------------------------------------------------


@pytest.mark.parametrize("training", [True, False])
def test_mode_is_restored(model, images, training):
    model.train(training)
    contributions(model, images, 0, 1)
    assert model.training is training
    assert all(m.training is training for m in model.modules())
    assert not any(layer.explain for layer in model.layers)


def test_hybrid_explained_in_eval_mode_without_touching_batch_statistics(images):
    model = build_model("cifar10-tiny", stem_depth=2, temperature=10.0).train()
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    c = contributions(model, images, 6, layer=0)
    assert model.training
    for k, v in stats.items():
        assert torch.equal(model.state_dict()[k], v), k
    logit = logits_of(model.eval(), images)[:, 6]  # contributions explain the eval-mode logit
    assert_complete(c, logit, model.logit_bias)


def test_hybrid_has_no_input_contributions(images):
    model = build_model("cifar10-tiny", stem_depth=2)
    with pytest.raises(ValueError, match="layer=0"):
        contributions(model, images, 0)


def test_works_under_no_grad(model, images):
    logits = logits_of(model, images)
    with torch.no_grad():
        c_input = contributions(model, images, 3)
        c_layer = contributions(model, images, 3, 2)
    assert_complete(c_input, logits[:, 3], model.logit_bias)
    assert_complete(c_layer, logits[:, 3], model.logit_bias)


def test_exact_in_float32_under_bf16_autocast(model, images):
    logits = logits_of(model, images)  # float32, outside autocast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        c = contributions(model, images, 8, 1)
    assert c.dtype == torch.float32
    assert_complete(c, logits[:, 8], model.logit_bias)


# ----- the caller's tensors and the model are left alone ---------------------------------------


@pytest.mark.parametrize("requires_grad", [False, True])
def test_callers_tensor_and_parameters_untouched(model, images, requires_grad):
    x = images.clone().requires_grad_(requires_grad)
    contributions(model, x, 2)
    dynamic_linear_weights(model, x, 2)
    assert torch.equal(x, images)
    assert x.requires_grad is requires_grad and x.grad is None
    assert all(p.grad is None for p in model.parameters())


def test_explanation_mode_restores_flags_after_an_exception_and_when_nested():
    net = nn.Sequential(
        CoDAConv2d(2, 3, 3, rank=2), DynamicAlignment(4, 2, rank=2), CoDAConv2d(3, 2, 1, rank=2)
    )
    net[2].explain = True
    before = [m.explain for m in net]
    with pytest.raises(RuntimeError, match="boom"):
        with explanation_mode(net):
            assert all(m.explain for m in net)
            raise RuntimeError("boom")
    assert [m.explain for m in net] == before
    with explanation_mode(net):
        with explanation_mode(net[:2]):
            assert all(m.explain for m in net)
        assert all(m.explain for m in net)  # the inner exit keeps the outer state
    assert [m.explain for m in net] == before


class NormScaling(ExplainableLayer):
    """A toy dynamic linear layer: ``y = ||x|| x``, i.e. ``W(x) = ||x|| I``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.norm(dim=-1, keepdim=True)
        return (scale.detach() if self.explain else scale) * x


def test_explanation_mode_switches_any_explainable_layer_and_nothing_else():
    layer, plain = NormScaling(), nn.Linear(4, 4)
    plain.explain = False  # an attribute of the same name on another module is left alone
    net = nn.Sequential(plain, layer).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    with explanation_mode(net):
        assert layer.explain and not plain.explain
        frozen = plain(x).detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(layer(frozen).sum(), frozen)
    assert not layer.explain
    assert_close(grad, frozen.norm(dim=-1, keepdim=True).expand(3, 4).detach())  # the frozen W(x)
    (full,) = torch.autograd.grad(layer(frozen).sum(), frozen)
    assert not torch.allclose(full, grad)


# ----- bad arguments ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [10, -1, 1.0, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([[1], [2], [3]]), [1, 2], True, None, "cat",
     [1, "a", 2]],
    ids=["too-large", "negative", "float", "float-tensor", "2d", "wrong-length", "bool", "none", "str", "mixed-list"],
)
def test_bad_target_raises(model, images, target):
    with pytest.raises(ValueError, match="target"):
        contributions(model, images, target)


@pytest.mark.parametrize("layer", [len(TINY.channels), -1, True, 1.0])
def test_bad_layer_raises(model, images, layer):
    with pytest.raises(ValueError, match="layer"):
        contributions(model, images, 0, layer)


def test_bad_images_raise(model):
    with pytest.raises(ValueError, match="shape"):
        contributions(model, torch.rand(3, 8, 8), 0)


def test_numpy_images_raise_a_helpful_error(model, images):
    with pytest.raises(ValueError, match="expected images as a torch.Tensor, got ndarray"):
        contributions(model, images.numpy(), 0)


def test_contributions_work_under_no_grad_and_inference_mode(model, images):
    expected, deep = contributions(model, images, 3), contributions(model, images, 3, layer=1)
    with torch.no_grad():
        assert_close(contributions(model, images, 3), expected)
    with torch.inference_mode():
        inside = images.clone()  # an inference tensor
        assert_close(contributions(model, inside, 3), expected)
        assert_close(contributions(model, inside, 3, layer=1), deep)
