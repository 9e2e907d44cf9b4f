"""coda.occlusion: occlusion by local recomputation gives captum's attributions.

The oracle is the definition, in float64: zero each window, run the whole network, average the
logit's drop over the windows that cover each pixel. captum's ``Occlusion`` (what the
explainers use for other models) is checked against it too, in float32.
"""

import pytest
import torch

import coda
from coda import occlusion
from coda.explainers import get_explainer, implementation, occlusion_captum, occlusion_classes_captum
from coda.models import CoDANet, CoDANetConfig


def oracle(model: CoDANet, image: torch.Tensor, classes: torch.Tensor, patch: int, stride: int) -> torch.Tensor:
    """The definition, one full forward pass per window: (K, C, H, W) in the model's dtype."""
    _, channels, height, width = image.shape
    starts = [list(range(0, size - patch + stride, stride)) for size in (height, width)]
    # captum's windows: ceil((size - patch) / stride) + 1 of them, the last cut at the border
    for axis, size in enumerate((height, width)):
        starts[axis] = starts[axis][: -(-(size - patch) // stride) + 1]
    with torch.no_grad():
        logits = model(image)[0, classes]
        total = torch.zeros(len(classes), height, width, dtype=logits.dtype)
        count = torch.zeros(height, width, dtype=logits.dtype)
        for r0 in starts[0]:
            for c0 in starts[1]:
                occluded = image.clone()
                occluded[:, :, r0:r0 + patch, c0:c0 + patch] = 0
                drop = logits - model(occluded)[0, classes]
                total[:, r0:r0 + patch, c0:c0 + patch] += drop[:, None, None]
                count[r0:r0 + patch, c0:c0 + patch] += 1
    return (total / count)[:, None].expand(-1, channels, -1, -1)


def odd_model() -> CoDANet:
    """Kernels 5 and 1, strides 2 and 3, l2 norm: geometry the 9L-S does not exercise."""
    config = CoDANetConfig(channels=(8, 8, 8, 4), kernel_sizes=(5, 3, 3, 1), strides=(2, 1, 3, 1),
                           rank_multipliers=(1, 1, 1, 1), rank_factor=4, temperature=10.0, norm="l2", in_channels=2)
    return CoDANet(config)


CASES = [  # model, image size, patch, stride
    ("tiny", (16, 16), 5, 2),
    ("tiny", (17, 13), 4, 3),  # odd sizes, windows cut at both borders
    ("9L-S", (32, 32), 9, 2),  # the paper's Occ9 on one CIFAR image
    ("9L-S", (20, 24), 5, 5),
    ("odd", (19, 23), 3, 1),
    ("tiny", (8, 8), 8, 1),  # one window: the whole image
]


def model_for(name: str) -> CoDANet:
    torch.manual_seed(3)
    model = {"tiny": lambda: coda.build_model("cifar10-tiny"),
             "9L-S": lambda: coda.build_model("cifar10-9L-S", rank_factor=2, temperature=50.0),
             "odd": odd_model}[name]()
    return model.double().eval()


@pytest.mark.parametrize("name, size, patch, stride", CASES)
def test_local_occlusion_is_the_definition_in_float64(name, size, patch, stride):
    model = model_for(name)
    torch.manual_seed(4)
    image = torch.rand(1, model.config.in_channels, *size, dtype=torch.float64)
    classes = torch.tensor([0, 3, 1])
    ours = occlusion.occlusion_classes(model, image, classes, patch, stride, batch_size=7)
    expected = oracle(model, image, classes, patch, stride)
    assert ours.dtype == torch.float64 and ours.shape == expected.shape
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-12 * scale)


def test_captum_agrees_with_the_definition_in_float32():
    model = model_for("tiny").float()
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    classes = torch.tensor([2, 9])
    expected = oracle(model.double(), image.double(), classes, 5, 2).float()
    model.float()
    scale = expected.abs().max()
    for got in (occlusion_classes_captum(model, image, classes, 5, 2, 16),
                occlusion_captum(model, image.expand(2, -1, -1, -1), classes, 5, 2, 16)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-4 * scale)


def test_the_explainers_use_it_for_a_pure_coda_net_and_captum_otherwise():
    torch.manual_seed(6)
    images = torch.rand(2, 3, 16, 16)
    targets = torch.tensor([4, 7])
    pure = coda.build_model("cifar10-tiny").eval()
    occ5 = get_explainer("occ5")
    local = occ5(pure, images, targets)
    assert local.dtype == torch.float32 and local.shape == (2, 3, 16, 16)
    for i in range(2):
        expected = occlusion.occlusion_classes(pure, images[i:i + 1], targets[i:i + 1], 5, 2).float()
        torch.testing.assert_close(local[i:i + 1], expected)
    torch.testing.assert_close(local, occlusion_captum(pure, images, targets, 5, 2, 32), rtol=0,
                               atol=1e-4 * local.abs().max().item())
    per_class = occ5.attribute_classes(pure, images[:1], targets)
    torch.testing.assert_close(per_class, occlusion_classes_captum(pure, images[:1], targets, 5, 2, 32), rtol=0,
                               atol=1e-4 * per_class.abs().max().item())

    hybrid = coda.build_model("cifar10-hybrid", resnet_stages=1, rank_factor=1).eval()  # a ResNet stem
    assert not occlusion.supports(hybrid) and occlusion.supports(pure)
    assert [implementation(m, pure) for m in ("coda", "grad", "occ9", "lime")] == [
        "coda", "captum", "coda.occlusion", "captum"]
    assert implementation("occ9", hybrid) == "captum"
    torch.testing.assert_close(occ5(hybrid, images, targets), occlusion_captum(hybrid, images, targets, 5, 2, 32))


def test_bad_input_is_refused_with_what_was_expected():
    model = coda.build_model("cifar10-tiny").eval()
    with pytest.raises(ValueError, match="pure CoDA-Net"):
        occlusion.occlusion_classes(coda.build_model("cifar10-hybrid", rank_factor=1), torch.rand(1, 3, 32, 32), [0],
                                    9, 2)
    with pytest.raises(ValueError, match=r"one image \(1, C, H, W\)"):
        occlusion.occlusion_classes(model, torch.rand(2, 3, 16, 16), [0], 5, 2)
    with pytest.raises(ValueError, match="stride <= patch <= image size"):
        occlusion.window_starts(16, 17, 2)
    with pytest.raises(ValueError, match="stride <= patch"):
        occlusion.window_starts(16, 3, 4)
    assert occlusion.window_starts(96, 9, 2)[-1] == 88 and len(occlusion.window_starts(96, 9, 2)) == 45
    assert occlusion.window_starts(8, 8, 1) == [0]
