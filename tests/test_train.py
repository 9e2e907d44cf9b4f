"""coda.train: schedules, config checks, the training loop, bit-identical resumption.

The runs use the 5-layer "cifar10-tiny" model on a few dozen small synthetic images (the model
is convolutional with sum pooling, so 8x8 images work); one run uses real CIFAR-10 if cached.
"""

import dataclasses
import os
import re
import shlex
import shutil
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

import coda.train as T
from coda.checkpoint import load_checkpoint
from coda.data import PROJECT_ROOT, ImageDataset
from coda.train import TrainConfig, evaluate_accuracy, learning_rate, train

CIFAR_ROOT = Path(os.environ.get("CODA_DATA") or PROJECT_ROOT / "data")
needs_cifar = pytest.mark.skipif(
    not (CIFAR_ROOT / "cifar10" / "train.npz").exists(),
    reason=f"CIFAR-10 cache not found in {CIFAR_ROOT / 'cifar10'} (set CODA_DATA to a folder with cifar10/)",
)
TINY = {"model": "cifar10-tiny", "precision": "fp32", "lr": 1e-3, "warmup_epochs": 0.5}


def toy_data(n: int, size: int = 8, seed: int = 0) -> ImageDataset:
    """``n`` noisy images whose mean colour depends on the label: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    colours = torch.rand(10, 3, 1, 1, generator=g)
    x = colours[labels] + 0.2 * torch.randn(n, 3, size, size, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageDataset(images, labels, tuple(f"class{i}" for i in range(10)))


def run(cfg: TrainConfig, out=None, **kwargs):
    return train(
        cfg,
        out,
        device="cpu",
        train_data=toy_data(48),
        test_data=toy_data(20, seed=1),
        **{"progress": False, **kwargs},
    )


# ----- learning-rate schedules -----------------------------------------------------------------


def test_paper_schedule_divides_by_1_5_every_30_epochs():
    cfg = TrainConfig(schedule="paper", lr=2.5e-4, epochs=200)
    lr = [learning_rate(cfg, epoch * 10 + 5, steps_per_epoch=10) for epoch in range(200)]
    assert lr[0] == lr[29] == 2.5e-4
    assert lr[30] == pytest.approx(2.5e-4 / 1.5) and lr[59] == lr[30]
    assert lr[60] == pytest.approx(2.5e-4 / 1.5**2)
    assert lr[199] == pytest.approx(2.5e-4 / 1.5**6)
    assert learning_rate(cfg, 299, 10) == 2.5e-4 and learning_rate(cfg, 300, 10) < 2.5e-4


def test_cosine_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(schedule="cosine", lr=1e-3, epochs=10, warmup_epochs=2)
    lr = [learning_rate(cfg, step, steps_per_epoch=50) for step in range(500)]
    assert lr[0] == pytest.approx(1e-3 / 100)
    assert lr[99] == pytest.approx(1e-3) and max(lr) == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lr[:99], lr[1:100], strict=True)), "warm-up increases"
    assert all(a >= b for a, b in zip(lr[100:], lr[101:], strict=False)), "then decays"
    assert lr[300] == pytest.approx(0.5e-3), "half-way through the decay: half the peak"
    assert lr[-1] < 1e-3 * 1e-3


def test_cosine_without_warmup_starts_at_peak():
    cfg = TrainConfig(schedule="cosine", lr=1e-3, epochs=3, warmup_epochs=0)
    assert learning_rate(cfg, 0, 10) == pytest.approx(1e-3)


# ----- the config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"schedule": "step"}, "schedule must be one of"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"batch_size": 10, "accumulate": 3}, "multiple of accumulate"),
        ({"accumulate": 0}, "multiple of accumulate"),
        ({"batch_size": 0}, "multiple of accumulate"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"lr": 0.0}, "lr must be a finite number > 0"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
        ({"lr": float("inf")}, "lr must be a finite number > 0"),
        ({"warmup_epochs": float("nan")}, "warmup_epochs must be a finite number >= 0"),
        ({"warmup_epochs": -1.0}, "warmup_epochs must be a finite number >= 0"),
        ({"train_subset": 0}, r"train_subset must be None \(all images\) or an int >= 1, got 0"),
        ({"train_subset": -8}, r"train_subset must be None \(all images\) or an int >= 1, got -8"),
        ({"test_subset": 0}, "test_subset must be None"),
        ({"epochs": 2.5}, "epochs must be an int"),
        ({"batch_size": True}, "batch_size must be an int"),
        ({"model": "resnet50"}, "unknown model 'resnet50'"),
        ({"loss": "mse"}, r"loss must be one of \('bce', 'ce'\), got 'mse'"),
        ({"model_overrides": {"temperature": float("inf")}}, "temperature must be a finite number > 0"),
        ({"model_overrides": {"logit_bias": float("nan")}}, "logit_bias must be a finite number"),
        ({"model_overrides": {"stem_depth": 1.5}}, r"stem_depth must be an int in \[0, 9\], got 1.5"),
        ({"model_overrides": {"temprature": 10.0}}, "unknown config fields"),
    ],
)
def test_config_rejects_bad_values(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**fields)


def test_config_round_trips_through_its_dict():
    cfg = TrainConfig(model_overrides={"temperature": 10.0}, train_subset=100)
    assert TrainConfig(**cfg.to_dict()) == cfg


def test_command_line_of_the_long_cifar_run():
    """The CLI contract a running job relies on: its command must parse to the same config."""
    argv = (
        "--out runs/x --rank-factor 8 --temperature 1000 --epochs 40 --lr 1e-3 --warmup-epochs 1 "
        "--batch-size 64 --data /data --save-every 100"
    ).split()
    cfg, args = T.config_from_args(argv)
    assert cfg == TrainConfig(
        model="cifar10-9L-S",
        model_overrides={"temperature": 1000.0, "rank_factor": 8},
        epochs=40,
        batch_size=64,
        lr=1e-3,
        warmup_epochs=1.0,
    )
    assert (args.out, args.data, args.save_every) == ("runs/x", "/data", 100)


@pytest.mark.parametrize(
    "cfg",
    [
        TrainConfig(),
        TrainConfig(
            model="cifar10-tiny",
            model_overrides={"temperature": 12.5, "norm": "l2", "stem_depth": 1},
            schedule="paper",
            lr=2.5e-4,
            precision="fp32",
            augment=False,
            train_subset=64,
            test_subset=32,
            accumulate=2,
            seed=3,
            warmup_epochs=0.25,
        ),
        TrainConfig(model="cifar10-resnet20", optimizer="sgd", lr=0.5, weight_decay=5e-4),
        TrainConfig(model="cifar10-resnet20", optimizer="sgd", lr=0.1, weight_decay=5e-4, loss="ce"),
        TrainConfig(model="cifar10-resnet20", model_overrides={"resnet_width": 4}, optimizer="sgd", lr=0.1,
                    weight_decay=5e-4, loss="ce"),
        TrainConfig(
            model="cifar10-hybrid",
            model_overrides={"resnet_stages": 2, "rank_factor": 8, "temperature": 1000.0},
            optimizer="adamw",
            weight_decay=0.05,
            embedding_from="runs/cifar10-resnet20/last.pt",
            freeze_embedding=True,
        ),
    ],
)
def test_train_command_parses_back_to_the_config(cfg):
    words = shlex.split(T.train_command(cfg, out="runs/some name"))
    assert words[:3] == ["python", "-m", "coda.train"]
    parsed, args = T.config_from_args(words[3:])
    assert parsed == cfg and args.out == "runs/some name"


def test_train_command_names_the_loss_only_when_it_is_not_the_papers():
    assert "--loss" not in T.train_command(TrainConfig())
    assert T.train_command(TrainConfig(loss="ce")).endswith("--loss ce")


def test_losses_are_bce_on_one_hot_targets_and_softmax_cross_entropy():
    """Both against a float64 oracle written out from their definitions."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 10, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 3, 9, 3, 7])
    onehot = torch.zeros(5, 10, dtype=torch.float64)
    onehot[torch.arange(5), labels] = 1
    p = 1 / (1 + torch.exp(-logits))
    bce = -(onehot * torch.log(p) + (1 - onehot) * torch.log(1 - p)).mean()
    ce = -(logits[torch.arange(5), labels] - torch.log(torch.exp(logits).sum(1))).mean()
    assert T.loss_function("bce")(logits, labels).item() == pytest.approx(bce.item(), rel=1e-12)
    assert T.loss_function("ce")(logits, labels).item() == pytest.approx(ce.item(), rel=1e-12)
    with pytest.raises(ValueError, match="loss must be one of"):
        T.loss_function("hinge")


def test_a_run_trains_with_the_loss_its_config_names():
    """cfg.loss reaches the training loop: a cross-entropy run's first loss is near log(10)
    (the BCE of the same start is near 0.325), and it learns."""
    cfg = TrainConfig(**TINY, epochs=3, batch_size=8, augment=False, loss="ce")
    _, history = run(cfg)
    _, bce_history = run(dataclasses.replace(cfg, loss="bce"))
    assert history[0]["train_loss"] > 4 * bce_history[0]["train_loss"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]


def test_train_command_rejects_overrides_without_an_option():
    with pytest.raises(ValueError, match="num_classes"):
        T.train_command(TrainConfig(model_overrides={"num_classes": 5}))


@pytest.mark.parametrize("warmup_epochs", [0.001, 0.3, 1.0, 2.5])
def test_warmup_never_exceeds_the_peak_rate(warmup_epochs):
    cfg = TrainConfig(lr=2e-3, epochs=4, warmup_epochs=warmup_epochs)
    rates = [learning_rate(cfg, step, 3) for step in range(12)]
    assert max(rates) <= 2e-3
    assert rates[0] == pytest.approx(2e-3 * min(1.0, 1 / (3 * warmup_epochs)))


# ----- the training loop -----------------------------------------------------------------------


def test_tiny_run_learns_and_records_history():
    cfg = TrainConfig(**TINY, epochs=4, batch_size=8, augment=False)
    model, history = run(cfg)
    assert not model.training
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert set(history[0]) == {
        "epoch",
        "lr",
        "train_loss",
        "train_accuracy",
        "test_accuracy",
        "images_per_s",
        "wall_time",
        "cpu_time",
        "precision",
    }
    assert {h["precision"] for h in history} == {"fp32"}
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["wall_time"] > history[0]["wall_time"] > 0


@needs_cifar
def test_tiny_run_on_cifar_subset():
    cfg = TrainConfig(**TINY, epochs=2, batch_size=16, train_subset=64, test_subset=32)
    model, history = train(cfg, device="cpu", data_root=CIFAR_ROOT, progress=False)
    assert len(history) == 2
    assert all(0 <= h["test_accuracy"] <= 1 and h["train_loss"] > 0 for h in history)
    assert 0.2 < history[0]["train_loss"] < 0.5, "BCE starts near 0.325 (logit bias -log 9), no blow-up"


def test_too_few_images_for_one_batch_raises():
    with pytest.raises(ValueError, match="fewer than one batch"):
        train(
            TrainConfig(**TINY, batch_size=64),
            device="cpu",
            train_data=toy_data(10),
            test_data=toy_data(10),
            progress=False,
        )


def test_training_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    run(TrainConfig(**TINY, epochs=1, batch_size=16))
    assert torch.equal(torch.rand(3), expected)


def test_bf16_autocast_runs_on_cpu():
    cfg = TrainConfig(**{**TINY, "precision": "bf16"}, epochs=1, batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # emulated bf16 warns; tests/test_hardware.py checks it
        model, history = run(cfg)
        assert history[0]["precision"] == "bf16"
        assert all(p.dtype == torch.float32 for p in model.parameters()), "weights stay fp32"
        assert torch.isfinite(torch.tensor(history[0]["train_loss"]))
        with T.autocast(torch.device("cpu"), "bf16"):
            assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    with T.autocast(torch.device("cpu"), "fp32"):
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.float32


def test_gradient_accumulation_matches_the_full_batch(tmp_path):
    """Two micro-batches of 8 give (nearly) the same Adam moments and weights as one batch of 16.

    Adam's update hardly depends on the gradient's scale, so the moments (which do) are compared too.
    """
    states = {}
    for accumulate in (1, 2):
        cfg = TrainConfig(**TINY, epochs=1, batch_size=16, accumulate=accumulate)
        run(cfg, tmp_path / str(accumulate), stop_after_steps=2)
        states[accumulate] = load_checkpoint(tmp_path / str(accumulate) / "last.pt")
    one, two = states[1], states[2]
    assert one["step"] == two["step"] == 2
    for key in one["model"]:
        torch.testing.assert_close(two["model"][key], one["model"][key], rtol=1e-4, atol=1e-6)
    for i, s in one["optimizer"]["state"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(two["optimizer"]["state"][i][moment], s[moment], rtol=1e-3, atol=1e-9)


# ----- resumption ------------------------------------------------------------------------------

RESUME = TrainConfig(**TINY, epochs=2, batch_size=8)  # 48 images: 6 steps per epoch, 12 in all


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    _, history = run(RESUME, out)
    return load_checkpoint(out / "last.pt"), history


def assert_same_state(a: dict, b: dict) -> None:
    assert (a["epoch"], a["step"]) == (b["epoch"], b["step"])
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    for i, s in a["optimizer"]["state"].items():
        for name, value in s.items():
            assert torch.equal(value, b["optimizer"]["state"][i][name]), (i, name)
    assert torch.equal(a["generator"], b["generator"])


@pytest.mark.parametrize(
    "stops",
    [(3,), (6,), (4, 5), (1, 5, 1)],
    ids=["mid-epoch", "epoch-boundary", "mid-epoch-twice", "three-stops"],
)
def test_resumed_run_is_bit_identical(uninterrupted, tmp_path, stops):
    expected, expected_history = uninterrupted
    for steps in stops:
        run(RESUME, tmp_path, stop_after_steps=steps)
        partial = load_checkpoint(tmp_path / "last.pt")
        assert partial["epoch"] * 6 + partial["step"] < 12, "the stop really interrupted the run"
    _, history = run(RESUME, tmp_path)
    assert_same_state(load_checkpoint(tmp_path / "last.pt"), expected)
    for key in ("test_accuracy", "lr", "train_loss", "train_accuracy"):  # the resumed epoch counts all its steps
        assert [h[key] for h in history] == [h[key] for h in expected_history], key


def test_stop_at_epoch_boundary_saves_a_finished_epoch(tmp_path):
    run(RESUME, tmp_path, stop_after_steps=6)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert (ckpt["epoch"], ckpt["step"], len(ckpt["history"])) == (1, 0, 1)


def test_resuming_a_finished_run_does_nothing(tmp_path):
    run(RESUME, tmp_path)
    before = load_checkpoint(tmp_path / "last.pt")
    _, history = run(RESUME, tmp_path)
    assert len(history) == 2
    assert_same_state(load_checkpoint(tmp_path / "last.pt"), before)


def test_resuming_with_another_config_raises(tmp_path):
    run(RESUME, tmp_path, stop_after_steps=2)
    with pytest.raises(ValueError, match="different training config"):
        run(TrainConfig(**{**TINY, "lr": 2e-3}, epochs=2, batch_size=8), tmp_path)


def test_resuming_with_fewer_training_images_than_the_checkpoint_step_raises(tmp_path):
    run(RESUME, tmp_path, stop_after_steps=5)  # step 5 of 6 in an epoch of 48 images
    with pytest.raises(ValueError, match="5 of epoch 1, but 16 training images at batch 8 make 2 steps"):
        train(RESUME, tmp_path, device="cpu", train_data=toy_data(16), test_data=toy_data(20, seed=1), progress=False)


def test_checkpoint_keys_are_the_documented_format(tmp_path):
    """The keys a long-running job's resume depends on; change them only with CHECKPOINT_FORMAT."""
    run(RESUME, tmp_path, stop_after_steps=2)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert set(ckpt) == {
        "format",
        "config",
        "model_config",
        "model",
        "optimizer",
        "epoch",
        "step",
        "history",
        "wall_time",
        "cpu_time",
        "generator",
        "epoch_sums",  # added without a format change: older checkpoints resume with zero sums
        "rewarm_from",  # added without a format change (None where absent): see compact_checkpoint
        "restarts",
    }
    assert ckpt["format"] == T.CHECKPOINT_FORMAT and ckpt["config"] == RESUME.to_dict()
    assert (ckpt["epoch"], ckpt["step"]) == (0, 2)


def test_compact_checkpoint_resumes_with_float16_weights_a_fresh_optimiser_and_a_rewarm(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "REWARM_EPOCHS", 1.0)  # a ramp over 6 steps
    run(RESUME, tmp_path / "full", stop_after_steps=4)
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    T.compact_checkpoint(tmp_path / "full" / "last.pt", tmp_path / "compact" / "last.pt")
    compact = load_checkpoint(tmp_path / "compact" / "last.pt")
    assert compact["optimizer"] is None and compact["restarts"] == [{"epoch": 0, "step": 4, "weights": "torch.float16"}]
    for key, value in full["model"].items():
        assert compact["model"][key].dtype == (torch.float16 if value.is_floating_point() else value.dtype)
        assert torch.equal(compact["model"][key], value.to(compact["model"][key].dtype)), key
    for key in ("epoch", "step", "history", "generator", "epoch_sums", "cpu_time", "config"):
        assert str(compact[key]) == str(full[key]), key
    assert (tmp_path / "compact" / "last.pt").stat().st_size < (tmp_path / "full" / "last.pt").stat().st_size / 2

    # Resume from it: the learning rate ramps up again from step 4.
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copyfile(tmp_path / "compact" / "last.pt", tmp_path / folder / "last.pt")
    _, history = run(RESUME, tmp_path / "a", stop_after_steps=2)  # steps 4, 5: the end of epoch 1
    resumed = load_checkpoint(tmp_path / "a" / "last.pt")
    assert resumed["rewarm_from"] == (0, 4) and resumed["optimizer"] is not None
    assert resumed["restarts"] == compact["restarts"]  # carried on by every later checkpoint
    assert history[0]["lr"] == pytest.approx(learning_rate(RESUME, 5, 6) * 2 / 6)  # the epoch's last step
    # After the restart, a stopped and resumed run ends bit-identical to an uninterrupted one.
    run(RESUME, tmp_path / "a")
    run(RESUME, tmp_path / "b")
    assert_same_state(load_checkpoint(tmp_path / "a" / "last.pt"), load_checkpoint(tmp_path / "b" / "last.pt"))


def test_rewarm_factor_ramps_linearly_over_a_quarter_epoch():
    assert T.rewarm_factor(10, None, 100) == 1.0
    assert [T.rewarm_factor(s, 10, 100) for s in (10, 11, 34, 35, 60)] == [1 / 25, 2 / 25, 1.0, 1.0, 1.0]


def test_compact_checkpoint_rejects_other_files_and_weights_that_overflow(tmp_path):
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="expected a coda.train checkpoint"):
        T.compact_checkpoint(tmp_path / "other.pt", tmp_path / "out.pt")
    run(RESUME, tmp_path / "run", stop_after_steps=1)
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    key = next(k for k, v in ckpt["model"].items() if v.is_floating_point())
    ckpt["model"][key] = ckpt["model"][key] + 1e6
    torch.save(ckpt, tmp_path / "big.pt")
    with pytest.raises(ValueError, match=f"weight '{key}' does not fit torch.float16"):
        T.compact_checkpoint(tmp_path / "big.pt", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
    T.compact_checkpoint(tmp_path / "big.pt", tmp_path / "out.pt", dtype=torch.bfloat16)  # bf16 has the range


# ----- evaluation ------------------------------------------------------------------------------


class PixelOracle(torch.nn.Module):
    """Predicts the class written into pixel (0, 0) of the red channel (value / 255)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.nn.functional.one_hot((x[:, 0, 0, 0] * 255).round().long(), 3).float() + self.dummy


def test_evaluate_accuracy_per_class():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    predictions = torch.tensor([0, 0, 0, 1, 1, 1, 0, 1])  # class 0: 3/4, class 1: 2/2, class 2: 0/2
    images = torch.zeros(8, 3, 2, 2, dtype=torch.uint8)
    images[:, 0, 0, 0] = predictions.to(torch.uint8)
    model = PixelOracle().train()
    result = evaluate_accuracy(model, ImageDataset(images, labels, ("a", "b", "c")), batch_size=3)
    assert result["n"] == 8
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["per_class"] == pytest.approx({"a": 0.75, "b": 1.0, "c": 0.0})
    assert list(result["per_class"]) == ["a", "b", "c"]
    assert model.training, "evaluation restores the training mode"


# ----- one trainer per folder; nothing half-written left -----------------------------------------


def test_a_second_trainer_on_the_same_folder_fails_at_once_naming_the_first(tmp_path, capsys):
    from tests.test_checkpoint import holding_process

    run(RESUME, tmp_path, stop_after_steps=2)
    before = load_checkpoint(tmp_path / "last.pt")
    with holding_process(tmp_path) as pid:
        with pytest.raises(ValueError, match=f"is in use: process {pid} is training into it"):
            run(RESUME, tmp_path)
        with pytest.raises(SystemExit, match=f"python -m coda.train: error: .*process {pid}"):
            T.main(["--out", str(tmp_path), "--model", "cifar10-tiny", "--data", str(tmp_path / "no-data")])
    assert_same_state(load_checkpoint(tmp_path / "last.pt"), before)  # the first run's checkpoint is intact
    run(RESUME, tmp_path)  # the holder was killed -9: its lock is not in force
    assert load_checkpoint(tmp_path / "last.pt")["epoch"] == 2 and not (tmp_path / "train.lock").exists()


def test_taking_the_folder_removes_temporaries_of_a_killed_checkpoint_write(tmp_path):
    run(RESUME, tmp_path, stop_after_steps=2)
    left = tmp_path / ".last.pt.a8x2.tmp"  # what kill -9 during a checkpoint write leaves
    left.write_bytes(b"PK\x03\x04 half a checkpoint")
    run(RESUME, tmp_path, stop_after_steps=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


@pytest.mark.parametrize("kwargs", [{"save_every": 0}, {"save_every": -5}, {"save_every": 2.5},
                                    {"stop_after_steps": 0}])
def test_bad_checkpoint_intervals_raise(kwargs, tmp_path):
    with pytest.raises(ValueError, match="must be"):
        run(RESUME, tmp_path, **kwargs)
    assert not (tmp_path / "last.pt").exists()


# ----- what a run prints --------------------------------------------------------------------------


def test_a_run_logged_to_a_file_prints_one_line_per_epoch_and_no_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)  # stderr is pytest's capture: not a terminal
    run(RESUME, tmp_path, progress=True)
    out, err = capsys.readouterr()
    assert "\r" not in err and "it/s" not in err, "no progress bar in a log file"
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epoch_lines] == ["1/2", "2/2"]


def test_a_run_in_a_jupyter_kernel_draws_its_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    run(RESUME, tmp_path, progress=True)
    assert "epoch 1/2" in capsys.readouterr().err  # the bar (plain tqdm outside a real kernel)


# ----- bad input on the command line, and runs that diverge --------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--train-subset", "0"], r"train_subset must be None \(all images\) or an int >= 1, got 0"),
        (["--train-subset", "-8"], "train_subset must be None .* got -8"),
        (["--test-subset", "0"], "test_subset must be None"),
        (["--lr", "inf"], "lr must be a finite number > 0, got inf"),
        (["--warmup-epochs", "nan"], "warmup_epochs must be a finite number >= 0, got nan"),
        (["--temperature", "inf"], "temperature must be a finite number > 0, got inf"),
        (["--temperature", "0"], "temperature must be a finite number > 0"),
        (["--rank-factor", "0"], "rank_factor must be a positive int"),
        (["--stem-depth", "12"], r"stem_depth must be an int in \[0, 9\], got 12"),
        (["--model", "cifar10-hybrid", "--resnet-stages", "4"], r"resnet_stages must be an int in \[0, 3\]"),
        (["--weight-decay", "1e-4"], "optimizer 'adam' has no weight decay"),
        (["--freeze-embedding"], "freeze_embedding needs embedding_from"),
        (["--epochs", "0"], "epochs must be >= 1"),
        (["--save-every", "0"], "--save-every must be >= 1"),
        (["--model", "resnet50"], "unknown model 'resnet50'"),
    ],
)
def test_command_line_rejects_bad_values_with_the_usage(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        T.config_from_args(["--out", "runs/x", *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m coda.train") and re.search(message, err), err


def test_a_diverging_run_stops_with_an_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run(RESUME, tmp_path, stop_after_steps=2)
    before = load_checkpoint(tmp_path / "last.pt")
    real = T.bce_loss
    monkeypatch.setattr(T, "bce_loss", lambda logits, labels: real(logits, labels) * float("nan"))
    with pytest.raises(FloatingPointError, match=r"the training loss is nan in epoch 1 by step \d .*diverged"):
        run(RESUME, tmp_path, save_every=2)
    assert_same_state(load_checkpoint(tmp_path / "last.pt"), before)  # nothing diverged was saved
    with pytest.raises(FloatingPointError, match="diverged"):  # in memory: at the end of the epoch
        run(RESUME)


@pytest.mark.parametrize("module", ["coda.train", "coda.pretrained", "coda.evaluate", "coda.sweeps"])
def test_command_line_modules_run_without_a_runtime_warning(module):
    """`import coda` must not import a module that `python -m` then runs again (runpy warns)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-W", "error", "-m", module, "--help"], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 0 and "RuntimeWarning" not in done.stderr, done.stderr
    assert done.stdout.startswith(f"usage: python -m {module}")


def test_the_package_names_load_on_first_use():
    import subprocess
    import sys

    code = ("import sys, coda; assert 'coda.train' not in sys.modules and 'coda.pretrained' not in sys.modules; "
            "from coda import load_pretrained; assert coda.load_pretrained is load_pretrained; "
            "assert callable(coda.data.load_cifar10) and 'load_published' in dir(coda); "
            "import pytest\nwith pytest.raises(AttributeError, match='no attribute'): coda.no_such_name")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, timeout=120)
    assert done.returncode == 0, done.stderr


def test_seconds_per_step_times_a_step_and_leaves_the_random_state_alone():
    cfg = TrainConfig(model="cifar10-tiny", precision="fp32", batch_size=8)
    before = torch.random.get_rng_state()
    seconds = T.seconds_per_step(cfg, "cpu", steps=2)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert 0 < seconds < 60
    bigger = T.seconds_per_step(TrainConfig(model="cifar10-tiny", precision="fp32", batch_size=256), "cpu", steps=2)
    assert bigger > seconds  # the batch is the config's: 32x the images take longer
