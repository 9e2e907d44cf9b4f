"""The attribution methods behind one interface (coda.explainers): shapes, side effects,
completeness of the CoDA contributions, what captum's rules reduce to on a CoDA-Net, and the
seeded LIME with its ridge surrogate."""

import numpy as np
import pytest
import torch

import coda
from coda.explainers import EXPLAINERS, WeightedRidge, block_mask, explain, get_explainer


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1)
    return coda.build_model("cifar10-tiny")


def fast(name: str):
    """The registered explainer with small settings where a method has a cost knob."""
    return get_explainer(name, n_samples=16) if name == "lime" else get_explainer(name)


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_explainer_shape_finite_and_side_effect_free(tiny, name):
    images = torch.rand(2, 3, 16, 16)
    before = images.clone()
    tiny.train()
    out = fast(name)(tiny, images, torch.tensor([1, 7]))
    channels = {"coda": 6, "gradcam": 1}.get(name, 3)
    assert out.shape == (2, channels, 16, 16)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert out.abs().sum() > 0
    assert tiny.training, "the model's mode must be restored"
    tiny.eval()
    assert torch.equal(images, before) and not images.requires_grad and images.grad is None
    assert all(p.grad is None for p in tiny.parameters())


def test_coda_explainer_is_complete(tiny):
    images = torch.rand(3, 3, 16, 16)
    target = torch.tensor([0, 4, 9])
    out = explain(tiny, images, target, "coda")
    logits = tiny(images).gather(1, target[:, None]).squeeze(1)
    torch.testing.assert_close(out.sum((1, 2, 3)), logits - tiny.logit_bias, rtol=1e-4, atol=1e-5)


def test_deeplift_and_guided_backprop_reduce_on_a_codanet(tiny):
    """captum's rules act on ReLU-like modules, which a CoDA-Net does not have."""
    images, target = torch.rand(2, 3, 16, 16), torch.tensor([2, 3])
    torch.testing.assert_close(explain(tiny, images, target, "deeplift"), explain(tiny, images, target, "ixg"),
                               rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(explain(tiny, images, target, "guided_backprop"), explain(tiny, images, target, "grad"))


def test_occlusion_for_several_classes_equals_one_run_per_class(tiny):
    image, classes = torch.rand(1, 3, 16, 16), torch.tensor([3, 0, 8])
    occ = get_explainer("occ5")
    shared = occ.attribute_classes(tiny, image, classes)
    separate = occ(tiny, image.expand(3, -1, -1, -1), classes)
    torch.testing.assert_close(shared, separate)


def test_lime_is_seeded_and_leaves_the_global_rng_alone(tiny):
    images, target = torch.rand(1, 3, 16, 16), 5
    state = torch.get_rng_state()
    a = get_explainer("lime", n_samples=16, seed=3)(tiny, images, target)
    assert torch.equal(torch.get_rng_state(), state)
    b = get_explainer("lime", n_samples=16, seed=3)(tiny, images, target)
    c = get_explainer("lime", n_samples=16, seed=4)(tiny, images, target)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # one value per 4x4 block
    assert torch.equal(a, a[..., ::4, ::4].repeat_interleave(4, -1).repeat_interleave(4, -2))


def test_lime_shares_one_images_samples_and_passes_among_its_classes(tiny):
    """Each class's map is LIME for that class alone with the seed; the passes are made once."""
    image, classes = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.tensor([5, 0, 7])
    lime = get_explainer("lime", n_samples=24, batch_size=8, seed=1)
    passes = []
    hook = tiny.register_forward_hook(lambda module, args, out: passes.append(len(args[0])))
    try:
        shared = lime.attribute_classes(tiny, image, classes)
        assert passes == [8, 8, 8]  # 24 samples, once for all three classes
        passes.clear()
        for k, target in enumerate(classes.tolist()):
            torch.testing.assert_close(shared[k:k + 1], lime(tiny, image, target), rtol=0, atol=1e-6)
        assert len(passes) == 3 * 3
    finally:
        hook.remove()
    # without sharing: the classes are examples of one captum call, each with its own samples
    separate = lime.with_options(shared_samples=False)
    torch.testing.assert_close(separate.attribute_classes(tiny, image, classes),
                               separate(tiny, image.expand(3, -1, -1, -1), classes))
    assert not torch.allclose(separate.attribute_classes(tiny, image, classes)[1:], shared[1:])


def test_lime_surrogate_is_weighted_ridge_regression():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (40, 5), generator=gen).float()
    y = torch.randn(40, generator=gen)
    w = torch.rand(40, generator=gen)
    ridge = WeightedRidge(alpha=0.7)
    ridge.fit([(x[:25], y[:25], w[:25]), (x[25:], y[25:], w[25:])])  # batches, as a DataLoader gives them
    # oracle: the normal equations of the weighted problem, intercept not penalised (numpy, float64)
    X, Y, W = np.c_[x.double().numpy(), np.ones(40)], y.double().numpy(), np.diag(w.double().numpy())
    penalty = np.diag([0.7] * 5 + [0.0])
    beta = np.linalg.solve(X.T @ W @ X + penalty, X.T @ W @ Y)
    torch.testing.assert_close(ridge.representation(), torch.tensor(beta[None, :5], dtype=torch.float32))
    torch.testing.assert_close(ridge(x[:3]).squeeze(1), torch.tensor(X[:3] @ beta, dtype=torch.float32))


def test_block_mask():
    mask = block_mask(4, 6, 2)
    assert mask.shape == (1, 1, 4, 6)
    assert mask[0, 0].tolist() == [[0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2], [3, 3, 4, 4, 5, 5], [3, 3, 4, 4, 5, 5]]


def test_explainer_bad_arguments(tiny):
    with pytest.raises(ValueError, match="unknown explainer 'rise'"):
        get_explainer("rise")
    with pytest.raises(ValueError, match="unknown option"):
        get_explainer("occ5", patch_size=3)
    with pytest.raises(ValueError, match="target must be in"):
        explain(tiny, torch.rand(1, 3, 16, 16), 10, "grad")
    with pytest.raises(ValueError, match="expected images"):
        explain(tiny, torch.rand(1, 6, 16, 16), 0, "grad")


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_an_empty_batch_gives_an_empty_result(tiny, name):
    channels = {"coda": 6, "gradcam": 1}.get(name, 3)
    out = explain(tiny, torch.rand(0, 3, 16, 16), 0, name)
    assert out.shape == (0, channels, 16, 16)
    none = get_explainer(name).attribute_classes(tiny, torch.rand(1, 3, 16, 16), torch.zeros(0, dtype=torch.long))
    assert none.shape == (0, channels, 16, 16)
