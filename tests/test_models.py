"""CoDA-Nets: the paper's configurations, the oracle network, hybrids, inputs."""

import math
from pathlib import Path

import oracle
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from coda import CoDAConv2d, build_model
from coda.models import CONFIGS

TINY = CONFIGS["cifar10-tiny"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----- configurations ----------------------------------------------------------------------


def test_cifar10_9L_S_has_the_published_parameter_count_and_scaling():
    model = build_model("cifar10-9L-S")
    assert n_params(model) == 7_782_816
    assert model.temperature == 1000.0
    assert model.logit_bias == pytest.approx(-math.log(9))
    assert [layer.rank for layer in model.layers] == [32, 32, 64, 64, 64, 64, 64, 64, 64]


@pytest.mark.parametrize("rank_factor, count", [(4, 1_076_984), (8, 2_034_960), (16, 3_950_912)])
def test_rank_ablation_parameter_counts(rank_factor, count):
    assert n_params(build_model("cifar10-9L-S", rank_factor=rank_factor)) == count


def test_imagenet100_model_maps_images_to_100_logits():
    model = build_model("imagenet100-9L-L")
    assert model.temperature == 1e5
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 48, 48))  # small image: the model is fully convolutional
    assert logits.shape == (1, 100)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("size", [(32, 32), (96, 96), (20, 36)])
def test_output_shape_for_any_image_size(size):
    model = build_model("cifar10-tiny")
    with torch.no_grad():
        assert model(torch.rand(2, 3, *size)).shape == (2, 10)


def test_temperature_logit_bias_and_overrides():
    model = build_model("cifar10-tiny", temperature=7.0, num_classes=4, norm="l2")
    assert model.temperature == 7.0
    assert model.logit_bias == pytest.approx(math.log(1 / 9))
    assert model.num_classes == 4 and model.layers[-1].out_channels == 4
    assert all(layer.norm == "l2" for layer in model.layers)


def test_zero_activations_give_the_logit_bias():
    # Everything scales with the last layer: zero it and only b0 is left.
    model = build_model("cifar10-tiny")
    with torch.no_grad():
        for p in model.layers[-1].parameters():
            p.zero_()
        logits = model(torch.rand(2, 3, 8, 8))
    assert_close(logits, torch.full((2, 10), math.log(1 / 9)))


def test_unknown_name_or_override_raises():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("cifar10-9L-XL")
    with pytest.raises(ValueError, match="temperatur"):
        build_model("cifar10-tiny", temperatur=10)  # a typo must not be swallowed


@pytest.mark.parametrize("overrides", [{"temperature": 0.0}, {"rank_factor": 0}, {"stem_depth": -1}])
def test_bad_config_values_raise(overrides):
    with pytest.raises(ValueError):
        build_model("cifar10-tiny", **overrides)


def test_print_shows_rank_norm_and_temperature():
    text = repr(build_model("cifar10-tiny"))
    assert "rank=8" in text and "norm='squash'" in text and "temperature=100" in text


# ----- the oracle network ------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["squash", "l2"])
def test_model_matches_the_oracle_network(norm):
    model = build_model("cifar10-tiny", norm=norm, temperature=3.0).double()
    images = torch.rand(2, 3, 8, 6, dtype=torch.float64)
    expected = oracle.network(images, oracle.model_to_published(model), TINY.strides, 3.0, norm)
    assert_close(model(images), expected, rtol=1e-10, atol=1e-12)


# ----- hybrids ------------------------------------------------------------------------------


def test_hybrid_has_a_conventional_stem():
    model = build_model("cifar10-tiny", stem_depth=2)
    assert len(model.stem) == 2
    for block in model.stem:
        assert [type(m) for m in block] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert len(model.layers) == len(TINY.channels) - 2
    assert all(isinstance(layer, CoDAConv2d) for layer in model.layers)
    assert model.layers[0].in_channels == TINY.channels[1]
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 10)


# ----- input checks -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.rand(3, 8, 8), "shape"),
        (torch.rand(1, 1, 3, 8, 8), "shape"),
        (torch.rand(2, 1, 8, 8), r"\(B, 3, H, W\)"),
        (torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8), "floating-point"),
        (torch.full((2, 3, 8, 8), float("nan")), "NaN"),
        (torch.tensor(float("inf")).expand(2, 3, 8, 8), "inf"),
        ([[0.5]], "torch.Tensor"),
        (torch.rand(2, 3, 8, 8) * 1e19, r"values in \[0, 1\] .*got values in \[.*e\+1[89]\]"),
        (-torch.rand(2, 3, 8, 8), r"values in \[0, 1\]"),
        (torch.rand(2, 3, 0, 8), "at least 1 x 1 pixels"),
        (torch.rand(2, 3, 8, 0), "at least 1 x 1 pixels"),
    ],
    ids=["3d", "5d", "channels", "uint8", "nan", "inf", "list", "scaled-1e19", "negative", "height-0", "width-0"],
)
def test_bad_images_raise_a_helpful_error(images, match):
    with pytest.raises(ValueError, match=match):
        build_model("cifar10-tiny")(images)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_images_of_another_float_dtype_are_cast_to_the_model(dtype):
    model = build_model("cifar10-tiny").eval()
    images = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(images.to(dtype).float())
        assert_close(model(images.to(dtype)), expected)
        assert_close(model.double()(images.to(dtype)), expected.double(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"temperature": float("inf")}, "temperature must be a finite number > 0, got inf"),
        ({"temperature": float("nan")}, "temperature must be a finite number > 0"),
        ({"temperature": -1.0}, "temperature must be a finite number > 0"),
        ({"logit_bias": float("nan")}, "logit_bias must be a finite number, got nan"),
        ({"logit_bias": float("-inf")}, "logit_bias must be a finite number"),
        ({"stem_depth": 1.5}, r"stem_depth must be an int in \[0, 5\], got 1.5"),
        ({"stem_depth": True}, "stem_depth must be an int"),
        ({"rank_factor": 2.0}, "rank_factor must be a positive int"),
        ({"in_channels": 0}, "in_channels must be a positive int"),
        ({"num_classes": 0}, "channels must be ints >= 1"),
        ({"strides": (1, 2, 1, 2.5, 1)}, "strides must be ints >= 1"),
    ],
)
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model("cifar10-tiny", **overrides)


def test_package_is_device_agnostic():
    """No hard-coded devices: the device comes from the input or a ``device=`` argument."""
    package = Path(__file__).resolve().parents[1] / "coda"
    sources = sorted(package.rglob("*.py"))
    assert sources, package
    offenders = [
        f"{path.name}:{n}: {line.strip()}"
        for path in sources
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if ".cuda(" in line or "set_device(" in line
    ]
    assert not offenders, offenders
