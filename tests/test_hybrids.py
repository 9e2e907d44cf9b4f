"""ResNet-20 and the hybrids on its stages: layout, parameters, explanations, training.

docs/method.md#interpretable-depth-and-hybrids describes them: ``resnet_stages = d`` makes the
first d stages of ResNet-20 (its first conv counted with stage 1) the embedding, and the CoDA
layers continue the 9L-S layout from layer 2, 5 or 8.
"""

import math

import oracle
import pytest
import torch
from torch import nn
from torch.testing import assert_close

from coda import build_model, contribution_map, contributions, from_reference_state_dict
from coda.checkpoint import load_checkpoint
from coda.evaluate import Grids, cell_sums, localisation_scores
from coda.models import CONFIGS, BasicBlock, CoDANetConfig
from coda.sweeps import layer_explainer
from coda.train import TrainConfig, make_optimizer, train
from tests.test_train import toy_data

EPS32 = torch.finfo(torch.float32).eps
DEPTHS = (1, 2, 3)
# (channels, resolution / input resolution) of the first CoDA layer's input, by d
EMBEDDING = {1: (16, 1), 2: (32, 2), 3: (64, 4)}


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def hybrid(d: int, **overrides):
    return build_model("cifar10-hybrid", resnet_stages=d, rank_factor=8, **overrides)


# ----- layout and parameter counts -----------------------------------------------------------


def test_resnet20_has_he_et_als_parameter_count_plus_the_encoded_input():
    # He et al.'s ResNet-20 with option-A shortcuts, by hand:
    #   conv1 3 -> 16: 3*16*9 = 432, its batch norm 2*16 = 32;
    #   stage 1, 3 blocks of two 16 -> 16 convs and two batch norms: 3 * (2*2304 + 64) = 14,016;
    #   stage 2: 16*32*9 + 32*32*9 + 128 = 13,952, then 2 * (2*9216 + 128) = 37,120: 51,072;
    #   stage 3: 32*64*9 + 64*64*9 + 256 = 55,552, then 2 * (2*36864 + 256) = 147,968: 203,520;
    #   the linear classifier 64*10 + 10 = 650 (here a 1x1 conv with bias before the pooling);
    #   in all 269,722, the known "0.27 M". The input is [x, 1 - x], 6 channels: conv1 has 432 more.
    model = build_model("cifar10-resnet20")
    assert n_params(model) == 269_722 + 432
    assert len(model.layers) == 0 and len(model.stem) == 1 + 9 + 1
    assert sum(isinstance(m, BasicBlock) for m in model.stem) == 9
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 1 + 18 + 1  # 20 weighted layers
    assert model.temperature == 64.0  # sum over 8 x 8 positions / 64: global average pooling
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)


def coda_layer_params(c_in: int, c_out: int, k: int, rank: int) -> int:
    """A (r, C_in k^2) + B (C_out, r, C_in k^2) + b (C_out, C_in k^2)."""
    return c_in * k * k * (rank * (c_out + 1) + c_out)


# ResNet-20 stages with the 6-channel conv1: 864 + 32 + 14,016; + 51,072; + 203,520
EMBEDDING_PARAMS = {1: 14_912, 2: 65_984, 3: 269_504}


@pytest.mark.parametrize(("d", "count"), [(1, 2_019_776), (2, 1_667_648), (3, 281_408)])
def test_hybrid_parameter_counts(d, count):
    nine = CONFIGS["cifar10-9L-S"].replace(rank_factor=8)
    start = (0, 2, 5, 8)[d]
    c_in = (6, *nine.channels)
    coda = sum(coda_layer_params(c_in[i], nine.channels[i], nine.kernel_sizes[i], nine.ranks[i])
               for i in range(start, 9))
    assert EMBEDDING_PARAMS[d] + coda == count
    model = hybrid(d)
    assert n_params(model) == count
    assert n_params(model.stem) == EMBEDDING_PARAMS[d]
    assert [layer.rank for layer in model.layers] == list(nine.ranks[start:])
    assert model.temperature == 1000.0


def test_hybrid_without_resnet_stages_is_the_9L_S():
    assert hybrid(0).config == CONFIGS["cifar10-9L-S"].replace(rank_factor=8)
    assert n_params(hybrid(0)) == 2_034_960


@pytest.mark.parametrize("d", DEPTHS)
def test_the_coda_layers_start_at_the_embeddings_resolution(d):
    model = hybrid(d).eval()
    channels, down = EMBEDDING[d]
    assert len(model.stem) == 1 + 3 * d
    assert model.layers[0].in_channels == channels
    with torch.no_grad():
        a = model.layer_input(torch.rand(2, 3, 16, 16), 0)
        assert a.shape == (2, channels, 16 // down, 16 // down)
        assert model(torch.rand(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("cifar10-hybrid", {"resnet_stages": 4}, r"resnet_stages must be an int in \[0, 3\]"),
        ("cifar10-hybrid", {"resnet_stages": -1}, r"resnet_stages must be an int in \[0, 3\]"),
        ("cifar10-hybrid", {"resnet_stages": 1.0}, "resnet_stages must be an int"),
        ("cifar10-hybrid", {"resnet_stages": True}, "resnet_stages must be an int"),
        ("cifar10-tiny", {"resnet_stages": 1}, "needs the 9L-S layout"),
        ("imagenet100-9L-L", {"resnet_stages": 1}, "needs the 9L-S layout"),
        ("cifar10-hybrid", {"stem_depth": 2}, "stem_depth must be 0"),
        ("cifar10-resnet20", {"resnet_stages": 2}, "stem_depth must be 0"),
        ("cifar10-hybrid-d1", {}, "unknown model"),
        ("cifar10-resnet", {}, "unknown model"),
    ],
)
def test_bad_hybrid_arguments_raise(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, **overrides)


def test_the_config_round_trips_and_older_configs_have_no_resnet_stages():
    config = hybrid(2).config
    assert CoDANetConfig(**config.to_dict()) == config
    old = CONFIGS["cifar10-9L-S"].to_dict()
    del old["resnet_stages"]  # written before the field existed
    assert CoDANetConfig(**old).resnet_stages == 0


def test_the_published_checkpoint_loader_refuses_resnets_and_hybrids():
    for name, overrides in [("cifar10-resnet20", {}), ("cifar10-hybrid", {"resnet_stages": 2, "rank_factor": 4})]:
        with pytest.raises(ValueError, match="published checkpoints are pure CoDA-Nets.*resnet_stages"):
            from_reference_state_dict({}, name, **overrides)


# ----- explanations ------------------------------------------------------------------------------


def assert_complete(contribs, logit, logit_bias, eps):
    """As in tests/test_explain.py: the contributions sum to ``logit - b0`` within 16 eps of
    the magnitudes involved."""
    total = contribs.sum(tuple(range(1, contribs.dim())))
    scale = logit.abs() + contribs.abs().sum(tuple(range(1, contribs.dim())))
    err = (total - (logit - logit_bias)).abs()
    assert (err <= 16 * eps * scale).all(), (err, scale)


@pytest.mark.parametrize("d", DEPTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_contributions_at_layer_0_sum_to_the_logit_minus_the_bias(d, dtype):
    model = hybrid(d, temperature=10.0).to(dtype).eval()  # T = 10: logit - b0 well above rounding
    images = torch.rand(3, 3, 16, 16, dtype=dtype)
    with torch.no_grad():
        logits = model(images)
    channels, down = EMBEDDING[d]
    for target in (0, 7):
        c = contributions(model, images, target, layer=0)
        assert c.shape == (3, channels, 16 // down, 16 // down) and c.dtype == dtype
        assert_complete(c, logits[:, target], model.logit_bias, torch.finfo(dtype).eps)


@pytest.mark.parametrize("d", DEPTHS)
def test_contributions_at_layer_0_are_those_of_the_embeddings_output_in_float64(d):
    """The oracle's frozen linear map of the CoDA layers, applied to the embedding's output:
    the embedding is outside the explained part (its output is the explained input)."""
    model = hybrid(d, temperature=10.0).double().eval()
    images = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        a0 = model.stem(model.encode(images))
    a = a0.clone().requires_grad_(True)
    published = oracle.model_to_published(model)
    strides = [layer.stride for layer in model.layers]
    logits = oracle.head(a, published, strides, model.temperature, frozen_at=a0)
    (grad,) = torch.autograd.grad(logits[:, 3].sum(), a)
    assert_close(contributions(model, images, 3, layer=0), a0 * grad, rtol=1e-10, atol=1e-12)


def test_explaining_a_training_hybrid_uses_and_keeps_the_running_statistics():
    """The embedding runs in eval mode: batch statistics would make the explained input depend
    on the rest of the batch and would move the running statistics."""
    model = hybrid(2, temperature=10.0).eval()
    with torch.no_grad():  # running statistics unlike a fresh batch's, so the two modes differ
        for m in model.stem.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    images = torch.rand(4, 3, 16, 16)
    expected = contributions(model, images, 2, layer=0)
    model.train()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    assert_close(contributions(model, images, 2, layer=0), expected, rtol=0, atol=0)
    assert model.training
    assert all(torch.equal(v, buffers[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_no_pixel_level_contributions_for_hybrids_and_none_for_the_resnet():
    with pytest.raises(ValueError, match="pass layer=0"):
        contributions(hybrid(1), torch.rand(1, 3, 8, 8), 0)
    with pytest.raises(ValueError, match="no CoDA layer"):
        contributions(build_model("cifar10-resnet20"), torch.rand(1, 3, 8, 8), 0, layer=0)


@pytest.mark.parametrize("d", DEPTHS)
def test_localisation_at_the_first_coda_layer_scores_the_coarse_map(d):
    """3 x 3 grids of 8 x 8 images: maps of 24, 12 and 6 positions a side, cells of 8, 4 and 2."""
    model = hybrid(d, temperature=10.0).eval()
    g = torch.Generator().manual_seed(d)
    images = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8, generator=g)
    classes = torch.stack([torch.randperm(10, generator=g)[:9] for _ in range(2)])
    grids = Grids(images, classes, 3)
    result = localisation_scores(model, grids, layer_explainer(0))
    assert result.scores.shape == (2, 9)
    for i in range(2):
        x = images[i : i + 1].float().div(255).expand(9, -1, -1, -1)
        maps = contribution_map(contributions(model, x, classes[i], layer=0)).clamp_min(0)
        assert maps.shape[-1] == 24 // EMBEDDING[d][1]
        sums = cell_sums(maps, 3)
        total = sums.sum(1)  # no positive contribution at all scores 0 (docs of grid_scores)
        assert_close(result.scores[i], torch.where(total > 0, sums.diagonal() / total, 0.0))


# ----- training ----------------------------------------------------------------------------------

SMOKE = dict(epochs=1, batch_size=8, precision="fp32", warmup_epochs=0.5)


def run(cfg, out=None, **kwargs):
    return train(cfg, out, device="cpu", train_data=toy_data(48), test_data=toy_data(20, seed=1),
                 progress=False, **kwargs)


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory):
    """A ResNet-20 after 2 SGD steps on 8 x 8 images: the source of the embeddings below."""
    out = tmp_path_factory.mktemp("resnet20")
    cfg = TrainConfig(model="cifar10-resnet20", optimizer="sgd", lr=0.1, weight_decay=5e-4, **SMOKE)
    model, _ = run(cfg, out, stop_after_steps=2)
    before = build_model("cifar10-resnet20")
    assert not torch.equal(model.stem[0][0].weight, before.stem[0][0].weight), "it trained"
    return out / "last.pt"


def stem_state(state_dict: dict, n_modules: int) -> dict:
    return {k: v for k, v in state_dict.items() if k.startswith("stem.") and int(k.split(".")[1]) < n_modules}


@pytest.mark.parametrize("d", [1, 3])
def test_a_frozen_embedding_stays_bit_identical_while_the_coda_layers_train(resnet_checkpoint, tmp_path, d):
    cfg = TrainConfig(model="cifar10-hybrid", model_overrides={"resnet_stages": d, "rank_factor": 8},
                      embedding_from=str(resnet_checkpoint), freeze_embedding=True, optimizer="adamw",
                      weight_decay=0.05, lr=1e-3, **SMOKE)
    run(cfg, tmp_path, stop_after_steps=2)
    trained = load_checkpoint(tmp_path / "last.pt")["model"]
    source = load_checkpoint(resnet_checkpoint)["model"]
    embedding = stem_state(trained, 1 + 3 * d)
    assert embedding and embedding.keys() == {k for k in trained if k.startswith("stem.")}
    assert all(torch.equal(v, source[k]) for k, v in embedding.items()), "weights and running statistics"
    with torch.random.fork_rng(devices=[]):  # the initialisation coda.train starts from
        torch.manual_seed(cfg.seed)
        start = build_model("cifar10-hybrid", resnet_stages=d, rank_factor=8)
    assert not torch.equal(trained["layers.0.A"], start.layers[0].A), "the CoDA layers train"


def test_a_fine_tuned_embedding_starts_from_the_resnet_and_trains(resnet_checkpoint):
    cfg = TrainConfig(model="cifar10-hybrid", model_overrides={"resnet_stages": 2, "rank_factor": 8},
                      embedding_from=str(resnet_checkpoint), **SMOKE)
    source = stem_state(load_checkpoint(resnet_checkpoint)["model"], 7)
    model, _ = run(cfg, stop_after_steps=1)
    trained = stem_state(model.state_dict(), 7)
    assert trained.keys() == source.keys()
    assert not all(torch.equal(v, source[k]) for k, v in trained.items())
    # one Adam step of lr * warm-up moves each weight by at most about the step size
    step = cfg.lr / (cfg.warmup_epochs * 6)
    assert all((v - source[k]).abs().max() <= 1.01 * step for k, v in trained.items() if v.is_floating_point()
               and "running" not in k)


def test_a_resumed_hybrid_with_a_frozen_embedding_is_bit_identical(resnet_checkpoint, tmp_path):
    cfg = TrainConfig(model="cifar10-hybrid", model_overrides={"resnet_stages": 3, "rank_factor": 8},
                      embedding_from=str(resnet_checkpoint), freeze_embedding=True, optimizer="adamw",
                      weight_decay=0.05, **{**SMOKE, "epochs": 2, "batch_size": 16})
    run(cfg, tmp_path / "whole")
    run(cfg, tmp_path / "resumed", stop_after_steps=2)
    run(cfg, tmp_path / "resumed", stop_after_steps=2)
    run(cfg, tmp_path / "resumed")
    whole, resumed = (load_checkpoint(tmp_path / f / "last.pt") for f in ("whole", "resumed"))
    assert (resumed["epoch"], resumed["step"]) == (2, 0)
    assert all(torch.equal(v, whole["model"][k]) for k, v in resumed["model"].items())
    assert resumed["history"][-1]["train_loss"] == whole["history"][-1]["train_loss"]


def test_the_embedding_needs_a_resnet_source_with_enough_stages(tmp_path):
    small = tmp_path / "small"
    run(TrainConfig(model="cifar10-hybrid", model_overrides={"resnet_stages": 1, "rank_factor": 8}, **SMOKE),
        small, stop_after_steps=1)
    cfg = TrainConfig(model="cifar10-hybrid", model_overrides={"resnet_stages": 2, "rank_factor": 8},
                      embedding_from=str(small / "last.pt"), **SMOKE)
    with pytest.raises(ValueError, match="has 1 ResNet-20 stages .* the model needs 2"):
        run(cfg)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"optimizer": "sgd", "weight_decay": -1e-4}, "weight_decay must be a finite number >= 0"),
        ({"optimizer": "adamw", "weight_decay": math.nan}, "weight_decay must be a finite number >= 0"),
        ({"weight_decay": 1e-4}, "optimizer 'adam' has no weight decay"),
        ({"embedding_from": "cifar10-resnet20-T64"}, "embedding_from needs a hybrid on ResNet-20 stages"),
        ({"model": "cifar10-resnet20", "embedding_from": "x"}, "embedding_from needs a hybrid"),
        ({"model": "cifar10-hybrid", "embedding_from": ""}, "embedding_from must be None or a model name"),
        ({"model": "cifar10-hybrid", "freeze_embedding": True}, "freeze_embedding needs embedding_from"),
        ({"model": "cifar10-hybrid", "embedding_from": "x", "freeze_embedding": 1}, "must be True or False"),
        ({"model": "cifar10-hybrid", "embedding_from": "x", "init_from": "y"}, "exclude each other"),
    ],
)
def test_train_config_rejects_bad_optimiser_and_embedding_values(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


@pytest.mark.parametrize(("name", "kind", "options"), [
    ("adam", torch.optim.Adam, {"weight_decay": 0}),
    ("adamw", torch.optim.AdamW, {"weight_decay": 0.05}),
    ("sgd", torch.optim.SGD, {"weight_decay": 5e-4, "momentum": 0.9, "nesterov": True}),
])
def test_the_optimiser_is_the_one_configured(name, kind, options):
    cfg = TrainConfig(model="cifar10-resnet20", optimizer=name, lr=0.05, weight_decay=options["weight_decay"])
    opt = make_optimizer(cfg, build_model("cifar10-resnet20"))
    assert type(opt) is kind
    assert {k: opt.param_groups[0][k] for k in ("lr", *options)} == {"lr": 0.05, **options}


# ----- what the cards and result tables say ------------------------------------------------------


def test_cards_and_tables_name_the_resnet_stages():
    from coda import cards as C
    from coda.sweeps import stem_text

    table = C._layer_table(hybrid(2).config.to_dict())
    assert "| type | ResNet-20 stage 1 | ResNet-20 stage 1 | ResNet-20 stage 2 | ResNet-20 stage 2 | " \
           "ResNet-20 stage 2 | CoDA | CoDA | CoDA | CoDA |" in table
    assert "| rank | - | - | - | - | - | 16 | 16 | 16 | 16 |" in table
    resnet = C._layer_table(build_model("cifar10-resnet20").config.to_dict())
    assert resnet.count("ResNet-20 stage 3 |") == 3 and "| conv |" in resnet and "a CNN baseline" in resnet
    assert C._n_coda_layers(hybrid(3).config.to_dict()) == 1
    wide = C._layer_table(hybrid(2, resnet_width=4).config.to_dict())  # the stages' channels as built
    assert "| out channels | 64 | 64 | 128 | 128 | 128 | 64 | 64 | 64 | 10 |" in wide and "4 times those channels" in wide
    assert C.network_kind(build_model("cifar10-resnet20", resnet_width=4).config.to_dict()).startswith(
        "ResNet-20 x 4 (every stage 4 times wider) (He et al. 2016), an all-conventional CNN")
    assert C.network_kind(hybrid(2, resnet_width=4).config.to_dict()) == \
        "A hybrid CoDA-Net (the first 2 stage(s) of ResNet-20 x 4 (every stage 4 times wider), CoDA layers)"
    assert C.network_kind(hybrid(2).config.to_dict()) == "A hybrid CoDA-Net (the first 2 stage(s) of ResNet-20, CoDA layers)"
    old = CONFIGS["cifar10-9L-S"].replace(stem_depth=3).to_dict()
    del old["resnet_stages"]  # a card of a model exported before the field existed
    assert C._n_coda_layers(old) == 6
    assert stem_text(hybrid(1).config) == "ResNet-20 stage 1"
    assert stem_text(hybrid(3).config) == "ResNet-20 stages 1-3"
    assert stem_text(CONFIGS["cifar10-9L-S"].replace(stem_depth=3)) == "a 3-block stem"
    text = C._schedule_text({"optimizer": "sgd", "weight_decay": 5e-5, "schedule": "cosine", "lr": 0.5,
                             "warmup_epochs": 1.0, "embedding_from": None})
    assert text.startswith("SGD (Nesterov momentum 0.9), weight decay 5e-05, peak lr 0.5")
    assert C._schedule_text({"schedule": "paper", "lr": 2.5e-4}).startswith("Adam, lr 0.00025")  # older configs


def test_card_names_the_weights_a_continuation_started_from():
    from coda import cards as C
    from coda.train import TrainConfig

    tc = TrainConfig(model="cifar10-resnet20", epochs=30, init_from="cifar10-resnet20-T64").to_dict()
    entry = {"train_config": tc, "epochs": 30, "steps_into_epoch": 0, "history": []}
    assert C._training_text(entry).startswith("30 epochs starting from the weights of `cifar10-resnet20-T64`")
    entry["train_config"] = {**tc, "init_from": None}
    assert C._training_text(entry).startswith("30 epochs, batch 64")


# ----- wider stages: ResNet-20 x k ---------------------------------------------------------------


def resnet_stage_params(width: int, stages: int, in_channels: int = 6) -> int:
    """Conv1 and the basic blocks of ``stages`` stages at 16k, 32k, 64k channels, by hand: each block
    two 3x3 convs without bias and two batch norms (weight and bias); option-A shortcuts are free."""
    channels = [16 * width, 32 * width, 64 * width]
    total = in_channels * channels[0] * 9 + 2 * channels[0]
    c_in = channels[0]
    for c_out in channels[:stages]:
        for _ in range(3):
            total += c_in * c_out * 9 + c_out * c_out * 9 + 4 * c_out
            c_in = c_out
    return total


def test_the_stage_formula_counts_resnet20():
    assert [resnet_stage_params(1, d) for d in DEPTHS] == [EMBEDDING_PARAMS[d] for d in DEPTHS]


@pytest.mark.parametrize("width", [2, 4])
def test_a_wider_resnet20_has_k_times_the_channels_and_its_parameter_count(width):
    model = build_model("cifar10-resnet20", resnet_width=width)
    assert n_params(model) == resnet_stage_params(width, 3) + 64 * width * 10 + 10
    assert model.stem[-1].in_channels == 64 * width and model.stem[-1].out_channels == 10
    with torch.no_grad():
        assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("d", DEPTHS)
def test_a_hybrid_on_wider_stages_feeds_its_first_coda_layer_k_times_the_channels(d):
    width = 2
    model = hybrid(d, resnet_width=width).eval()
    nine = CONFIGS["cifar10-9L-S"].replace(rank_factor=8)
    start = (0, 2, 5, 8)[d]
    c_in = [None] * start + [EMBEDDING[d][0] * width, *nine.channels[start:-1]]
    coda = sum(coda_layer_params(c_in[i], nine.channels[i], nine.kernel_sizes[i], nine.ranks[i]) for i in range(start, 9))
    assert n_params(model.stem) == resnet_stage_params(width, d) and n_params(model) == resnet_stage_params(width, d) + coda
    assert model.config.embedding_channels == EMBEDDING[d][0] * width == model.layers[0].in_channels
    with torch.no_grad():
        a = model.layer_input(torch.rand(2, 3, 16, 16), 0)
    assert a.shape == (2, EMBEDDING[d][0] * width, 16 // EMBEDDING[d][1], 16 // EMBEDDING[d][1])


@pytest.mark.parametrize("d", [1, 3])
def test_contributions_of_a_wide_hybrid_sum_to_the_logit_minus_the_bias(d):
    torch.manual_seed(0)
    model = hybrid(d, resnet_width=2).double().eval()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    target = torch.tensor([3, 7])
    contribs = contributions(model, x, target, layer=0)
    logit = model(x).gather(1, target[:, None])[:, 0]
    assert_close(contribs.sum((1, 2, 3)), logit - model.logit_bias, rtol=1e-10, atol=1e-10)


def test_the_width_is_stored_only_where_it_is_not_1_and_round_trips():
    assert "resnet_width" not in hybrid(2).config.to_dict()  # the configs stored before the field, unchanged
    config = hybrid(2, resnet_width=4).config
    assert config.to_dict()["resnet_width"] == 4 and CoDANetConfig(**config.to_dict()) == config
    assert CoDANetConfig(**hybrid(2).config.to_dict()).resnet_width == 1


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("cifar10-resnet20", {"resnet_width": 0}, "resnet_width must be a positive int"),
        ("cifar10-resnet20", {"resnet_width": 2.0}, "resnet_width must be a positive int"),
        ("cifar10-resnet20", {"resnet_width": True}, "resnet_width must be a positive int"),
        ("cifar10-9L-S", {"resnet_width": 2}, "it needs resnet_stages >= 1"),
    ],
)
def test_bad_widths_raise(name, overrides, message):
    with pytest.raises(ValueError, match=message):
        build_model(name, **overrides)


def test_the_embedding_must_have_the_models_width(resnet_checkpoint):
    cfg = TrainConfig(model="cifar10-hybrid", model_overrides={"resnet_stages": 1, "rank_factor": 8, "resnet_width": 2},
                      embedding_from=str(resnet_checkpoint), **SMOKE)
    with pytest.raises(ValueError, match="has ResNet-20 stages of width 1; the model's are of width 2"):
        run(cfg)
