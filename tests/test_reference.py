"""The authors' published checkpoint layout (docs/method.md#the-published-checkpoint-layout),
converted to and from the package's layers by :mod:`coda.reference`."""

import oracle
import pytest
import torch
from torch.testing import assert_close

from coda import build_model, from_reference_state_dict
from coda.models import CONFIGS
from coda.reference import to_reference_state_dict

TINY = CONFIGS["cifar10-tiny"]


def tiny_reference_state_dict(**kwargs) -> dict[str, torch.Tensor]:
    """Random published-layout layers with the shapes of "cifar10-tiny"."""
    return oracle.random_published_state_dict(
        TINY.in_channels, TINY.channels, TINY.kernel_sizes, TINY.ranks, **kwargs
    )


@pytest.mark.parametrize(
    "indices, prefix",
    [
        (None, ""),
        (None, "module."),
        ([1, 2, 3, 4, 5], ""),
        ([1, 3, 5, 8, 12], "module."),  # "12" < "3" as strings: the order must be numeric
    ],
)
def test_from_reference_state_dict_matches_the_oracle(indices, prefix):
    sd = tiny_reference_state_dict(indices=indices, prefix=prefix)
    model = from_reference_state_dict(sd, "cifar10-tiny").double()
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    expected = oracle.network(images, sd, TINY.strides, TINY.temperature)
    # The state dict holds float32-representable values, so the float64 model is exact.
    assert_close(model(images), expected, rtol=1e-10, atol=1e-12)


def test_reference_state_dict_round_trips():
    sd = tiny_reference_state_dict()
    back = to_reference_state_dict(from_reference_state_dict(sd, "cifar10-tiny"))
    assert back.keys() == sd.keys()
    for key in sd:
        assert torch.equal(back[key].double(), sd[key]), key
    model = build_model("cifar10-tiny")
    again = from_reference_state_dict(to_reference_state_dict(model), "cifar10-tiny")
    for p, q in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)


def test_to_reference_state_dict_matches_the_oracle_layout():
    model = build_model("cifar10-tiny")
    expected = oracle.model_to_published(model)
    got = to_reference_state_dict(model)
    assert got.keys() == expected.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key


def _drop_last_layer(sd):
    last = oracle.layer_keys(sd)[-1]
    return {k: v for k, v in sd.items() if not k.startswith(last)}


def _reshape(sd, suffix, shape):
    """Layer 1 of "cifar10-tiny" (C_in 16, C_out 32, r 16, k 3, d 144) gets a wrong shape."""
    key = oracle.layer_keys(sd)[1] + suffix
    return sd | {key: torch.zeros(shape)}


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (_drop_last_layer, "expected 5 CoDA layers"),
        (lambda sd: sd | {"9.weight_mod.weighting_f.0.weight": torch.zeros(1)}, "expected 5 CoDA layers"),
        (lambda sd: _reshape(sd, "0.weight", (8, 16, 3, 3)), "A has shape"),
        (lambda sd: _reshape(sd, "1.weight", (16 * 144, 16, 1, 1)), "B has shape"),
        (lambda sd: _reshape(sd, "1.bias", (16 * 144,)), "bias has shape"),
        (
            lambda sd: {k: v for k, v in sd.items() if not k.endswith("2.weight_mod.weighting_f.1.bias")},
            "missing",
        ),
    ],
    ids=["too-few-layers", "too-many-layers", "A-shape", "B-shape", "bias-shape", "missing-bias"],
)
def test_bad_reference_state_dict_raises(corrupt, match):
    with pytest.raises(ValueError, match=match):
        from_reference_state_dict(corrupt(tiny_reference_state_dict()), "cifar10-tiny")


def test_reference_state_dict_rejects_hybrids():
    with pytest.raises(ValueError, match="stem_depth"):
        from_reference_state_dict(tiny_reference_state_dict(), "cifar10-tiny", stem_depth=1)
