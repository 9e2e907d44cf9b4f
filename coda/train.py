"""Training CoDA-Nets: BCE on one-hot targets (or cross-entropy), Adam (or AdamW, SGD), resumable checkpoints.

Run from the command line for long jobs (checkpoints are written as it goes; running the
same command again resumes from ``<out>/last.pt``)::

    python -m coda.train --out runs/cifar10-9L-S-f8-T1000 --rank-factor 8 --temperature 1000

A resumed run ends bit-identical to an uninterrupted one: the shuffling order comes from
``seed`` and the epoch, and the augmentation generator's state is saved with the model.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shlex
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from coda import cli
from coda.checkpoint import folder_lock, load_checkpoint, remove_temporaries, save_checkpoint
from coda.data import ImageDataset, augment, load_cifar10, to_float
from coda.hardware import PRECISIONS, resolve_precision, warn_if_emulated
from coda.inference import autocast, evaluate_accuracy, predict  # noqa: F401  (re-exported)
from coda.models import CONFIGS, CoDANet, build_model
from coda.progress import progress_bar

SCHEDULES = ("paper", "cosine")
OPTIMIZERS = ("adam", "adamw", "sgd")
LOSSES = ("bce", "ce")
SGD_MOMENTUM = 0.9  # Nesterov momentum of "sgd", as for the CIFAR ResNets
CHECKPOINT_FORMAT = 1
REWARM_EPOCHS = 0.25  # learning-rate ramp after a restart from a compact checkpoint


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and so must match when resuming).

    model, model_overrides : passed to :func:`coda.build_model`.
    epochs, batch_size : the budget; ``batch_size`` is the effective batch of one optimiser step.
    accumulate : split each batch into this many micro-batches (gradient accumulation).
    lr : the optimiser's learning rate (the peak, for "cosine").
    optimizer : "adam" (the paper's, no weight decay), "adamw" (Adam with decoupled weight
        decay) or "sgd" (SGD with Nesterov momentum 0.9 and L2 weight decay, as for ResNets).
        The BCE loss averages over batch and classes, so its gradients are about 1/10 of a
        softmax cross-entropy's on 10 classes: Adam(W) does not mind, SGD needs a larger lr.
    weight_decay : applied to every trainable parameter by "adamw" and "sgd"; 0 for "adam".
    loss : "bce" (the paper's: one sigmoid per class on one-hot targets, :func:`bce_loss`) or
        "ce" (softmax cross-entropy, :func:`ce_loss`: the usual loss of conventional networks
        such as the ResNet-20 baseline; its gradients are about 10x BCE's on 10 classes).
    schedule : "paper" (lr / 1.5 every 30 epochs) or "cosine" (linear warm-up over
        ``warmup_epochs``, then cosine decay to 0 at the last step).
    precision : "auto", "fp32", "bf16" or "fp16". "auto" is resolved on the machine that
        trains (:func:`coda.hardware.resolve_precision`): bf16 autocast on a CPU with native
        bf16, float32 on other CPUs, bf16 or fp16 autocast on CUDA. A run resumed on another
        machine may so run another precision; each epoch's history records the one that ran.
    train_subset, test_subset : use only the first N images (smoke runs).
    init_from : the name of a shipped model (``coda.list_pretrained()``) whose weights start
        the run instead of a random initialisation (a fresh optimiser); it must have the
        same architecture as ``model`` with ``model_overrides``.
    embedding_from : for a hybrid on ResNet-20 stages (``resnet_stages`` d >= 1): a shipped
        model's name or a ``coda.train`` checkpoint path whose first d ResNet-20 stages
        (its ``stem``; e.g. a trained "cifar10-resnet20") start the embedding; the CoDA
        layers start from their random initialisation.
    freeze_embedding : keep the embedding from ``embedding_from`` fixed: no gradient, and its
        batch norms use their running statistics in training too (:meth:`CoDANet.freeze_stem`);
        False fine-tunes it with the rest.
    """

    model: str = "cifar10-9L-S"
    model_overrides: dict = dataclasses.field(default_factory=dict)
    epochs: int = 40
    batch_size: int = 64
    accumulate: int = 1
    lr: float = 1e-3
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    precision: str = "auto"
    augment: bool = True
    seed: int = 0
    train_subset: int | None = None
    test_subset: int | None = None
    init_from: str | None = None
    optimizer: str = "adam"
    weight_decay: float = 0.0
    embedding_from: str | None = None
    freeze_embedding: bool = False
    loss: str = "bce"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if not (_is_real(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.optimizer == "adam" and self.weight_decay:
            raise ValueError(f"optimizer 'adam' has no weight decay (got {self.weight_decay!r}); use 'adamw' or 'sgd'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("epochs", "batch_size", "accumulate", "seed"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{name} must be an int, got {getattr(self, name)!r}")
        if self.batch_size < 1 or self.accumulate < 1 or self.batch_size % self.accumulate:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a positive multiple of accumulate ({self.accumulate})"
            )
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if not (_is_real(self.lr) and math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr!r}")
        if not (_is_real(self.warmup_epochs) and math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0):
            raise ValueError(f"warmup_epochs must be a finite number >= 0, got {self.warmup_epochs!r}")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 1):
                raise ValueError(f"{name} must be None (all images) or an int >= 1, got {value!r}")
        if self.model not in CONFIGS:
            raise ValueError(f"unknown model {self.model!r}; expected one of {sorted(CONFIGS)}")
        if not isinstance(self.model_overrides, dict):
            raise ValueError(f"model_overrides must be a dict, got {type(self.model_overrides).__name__}")
        model_config = CONFIGS[self.model].replace(**self.model_overrides)  # ValueError for a bad field or value
        self._check_embedding(model_config)

    def _check_embedding(self, model_config) -> None:
        for name in ("init_from", "embedding_from"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                raise ValueError(f"{name} must be None or a model name or path, got {value!r}")
        if not isinstance(self.freeze_embedding, bool):
            raise ValueError(f"freeze_embedding must be True or False, got {self.freeze_embedding!r}")
        if self.embedding_from is not None:
            if not model_config.resnet_stages or model_config.stem_depth:
                raise ValueError(
                    "embedding_from needs a hybrid on ResNet-20 stages (resnet_stages >= 1, with CoDA layers), "
                    f"got {self.model!r} with resnet_stages={model_config.resnet_stages}, "
                    f"stem_depth={model_config.stem_depth}"
                )
            if self.init_from is not None:
                raise ValueError("init_from (the whole model) and embedding_from exclude each other")
        if self.freeze_embedding and self.embedding_from is None:
            raise ValueError("freeze_embedding needs embedding_from: a frozen random embedding would never learn")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def rewarm_factor(step: int, rewarm_from: int | None, steps_per_epoch: int) -> float:
    """The learning-rate factor after a restart from a compact checkpoint: a linear ramp from
    0 over :data:`REWARM_EPOCHS` epochs, starting at optimiser step ``rewarm_from`` (0-based,
    global); 1 for a run that never restarted that way (``rewarm_from=None``)."""
    if rewarm_from is None:
        return 1.0
    return min(1.0, (step - rewarm_from + 1) / max(1.0, REWARM_EPOCHS * steps_per_epoch))


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The learning rate at optimiser step ``step`` (0-based)."""
    epoch = step / steps_per_epoch
    if cfg.schedule == "paper":
        return cfg.lr / 1.5 ** math.floor(epoch / 30)
    total = cfg.epochs * steps_per_epoch
    warmup = cfg.warmup_epochs * steps_per_epoch
    if step < warmup:  # linear warm-up, never above the peak (a warm-up shorter than one step)
        return cfg.lr * min(1.0, (step + 1) / warmup)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def bce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on one-hot targets (one sigmoid per class), as in the paper."""
    targets = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
    return F.binary_cross_entropy_with_logits(logits, targets)


def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy, averaged over the batch: logits (B, classes), labels (B,)."""
    return F.cross_entropy(logits, labels)


def loss_function(name: str):
    """The loss :class:`TrainConfig` ``loss`` names: :func:`bce_loss` or :func:`ce_loss`."""
    if name not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {name!r}")
    return bce_loss if name == "bce" else ce_loss


def _epoch_generator(cfg: TrainConfig, epoch: int) -> torch.Generator:
    return torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)


def _new_state(cfg: TrainConfig, device: torch.device, initialise: bool = True) -> dict:
    """A fresh run's state; ``initialise=False`` skips loading ``init_from`` and
    ``embedding_from`` (a resumed run loads its own weights)."""
    with torch.random.fork_rng(devices=[]):  # seed the initialisation, leave the caller's RNG alone
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, **cfg.model_overrides).to(device)
    if cfg.init_from is not None and initialise:
        _init_from_shipped(model, cfg.init_from)
    if cfg.embedding_from is not None and initialise:
        init_embedding(model, cfg.embedding_from)
    if cfg.freeze_embedding:
        model.freeze_stem()
    return {"model": model, "optimizer": make_optimizer(cfg, model),
            "epoch": 0, "step": 0, "history": [], "wall_time": 0.0, "cpu_time": 0.0,
            "generator": _epoch_generator(cfg, 0).get_state(), "epoch_sums": _zero_sums(), "rewarm_from": None,
            "restarts": []}


def make_optimizer(cfg: TrainConfig, model: CoDANet) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over all of the model's parameters (frozen ones get no gradient, and
    the optimisers skip parameters without one)."""
    params = list(model.parameters())
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr)


def init_embedding(model: CoDANet, spec: str) -> None:
    """Copy the first ``model.config.resnet_stages`` ResNet-20 stages of another model into
    ``model.stem``.

    spec : a shipped model's name or the path of a ``coda.train`` checkpoint (read with
        ``torch.load(weights_only=True)``), e.g. a trained "cifar10-resnet20". It needs at
        least as many ResNet-20 stages as ``model`` and the same input channels.
    """
    from coda.pretrained import load_model  # the registry imports this module

    source, _ = load_model(spec)
    d, have = model.config.resnet_stages, source.config.resnet_stages
    if d < 1 or have < d or source.config.in_channels != model.config.in_channels:
        raise ValueError(
            f"embedding_from={spec!r} has {have} ResNet-20 stages on {source.config.in_channels} input channels; "
            f"the model needs {d} (>= 1) on {model.config.in_channels}"
        )
    if source.config.resnet_width != model.config.resnet_width:
        raise ValueError(
            f"embedding_from={spec!r} has ResNet-20 stages of width {source.config.resnet_width}; "
            f"the model's are of width {model.config.resnet_width} (--resnet-width)"
        )
    model.stem.load_state_dict(source.stem[: len(model.stem)].state_dict())


def _init_from_shipped(model: CoDANet, name: str) -> None:
    from coda.pretrained import load_pretrained  # the registry imports this module

    start = load_pretrained(name)
    if start.config != model.config:
        raise ValueError(f"init_from={name!r} is a {start.config} model, not the {model.config} being trained")
    model.load_state_dict(start.state_dict())


def _zero_sums() -> dict:
    """Running sums of the epoch in progress, saved with mid-epoch checkpoints so that a
    resumed epoch's history covers all of its steps: images seen, summed loss, correct."""
    return {"seen": 0, "loss_sum": 0.0, "correct": 0, "seconds": 0.0}


def _load_state(cfg: TrainConfig, path: Path, device: torch.device) -> dict:
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: checkpoint format {ckpt.get('format')!r}, expected {CHECKPOINT_FORMAT}")
    if TrainConfig(**ckpt["config"]).to_dict() != cfg.to_dict():  # fields added later take their defaults
        raise ValueError(
            f"{path} was written by a different training config; resume with the same one "
            f"or choose another --out.\n  checkpoint: {ckpt['config']}\n  now:        {cfg.to_dict()}"
        )
    state = _new_state(cfg, device, initialise=False)
    state["model"].load_state_dict(ckpt["model"])  # a compact checkpoint's float16 weights are cast back
    for key in ("epoch", "step", "history", "wall_time", "generator"):
        state[key] = ckpt[key]
    state["cpu_time"] = ckpt.get("cpu_time", 0.0)
    state["epoch_sums"] = ckpt.get("epoch_sums", _zero_sums())  # absent in checkpoints before 2026-12
    state["rewarm_from"] = ckpt.get("rewarm_from")
    state["restarts"] = ckpt.get("restarts", [])
    if ckpt["optimizer"] is not None:
        state["optimizer"].load_state_dict(ckpt["optimizer"])
    else:  # a compact checkpoint: a fresh optimiser, and the learning rate re-warmed from here
        state["rewarm_from"] = (ckpt["epoch"], ckpt["step"])
    return state


def compact_checkpoint(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write a small copy of the trainer checkpoint ``src`` that a run can resume from.

    The copy keeps everything but the optimiser state (for Adam two more tensors the size of
    the weights), and stores the floating-point weights in ``dtype``: about a sixth of the
    size, small enough to commit, so that a run longer than one working session continues on
    a fresh machine (``data/training/``). Resuming from it (copy it to ``<out>/last.pt``)
    casts the weights back, starts a fresh optimiser and ramps the learning rate up again
    from 0 over :data:`REWARM_EPOCHS` epochs (:func:`rewarm_factor`: a fresh Adam's first
    updates are as large as the learning rate in every coordinate, which throws a trained
    model out of its minimum); each such restart is listed under ``restarts`` in the compact
    checkpoint and in every checkpoint written after it.
    Raises ``ValueError`` if a weight does not fit ``dtype`` (use ``torch.bfloat16`` then).
    """
    ckpt = _load_trainer_checkpoint(src)
    weights = {key: _stored(value, dtype, f"{src}: weight {key!r}") for key, value in ckpt["model"].items()}
    return _save_compact(ckpt, weights, dtype, dst)


def _load_trainer_checkpoint(path: str | Path) -> dict:
    """A checkpoint written by :func:`train` (full or compact); ``ValueError`` naming ``path`` otherwise."""
    ckpt = load_checkpoint(path)
    if ckpt.get("format") != CHECKPOINT_FORMAT or "optimizer" not in ckpt:
        raise ValueError(f"{path}: expected a coda.train checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def _stored(value: torch.Tensor, dtype: torch.dtype, what: str) -> torch.Tensor:
    """A floating-point weight cast to ``dtype`` (other tensors as they are); ``ValueError``
    starting with ``what`` if it does not fit."""
    small = value.to(dtype) if value.is_floating_point() else value
    if not torch.isfinite(small).all():
        raise ValueError(f"{what} does not fit {dtype} (largest |value| {value.abs().max():.3g})")
    return small


def _save_compact(ckpt: dict, weights: dict, dtype: torch.dtype, dst: str | Path, **extra) -> Path:
    """Write ``ckpt`` with ``weights``, no optimiser state and the restart from here listed
    (:func:`compact_checkpoint`), plus ``extra`` fields, to ``dst``."""
    restarts = ckpt.get("restarts", []) + [{"epoch": ckpt["epoch"], "step": ckpt["step"], "weights": str(dtype)}]
    save_checkpoint(ckpt | {"model": weights, "optimizer": None, "restarts": restarts, **extra}, dst)
    return Path(dst)


def average_checkpoints(srcs: Sequence[str | Path], dst: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """Write the uniform average of the weights of several checkpoints of one run to ``dst``.

    ``srcs``: trainer checkpoints (full or compact, :func:`compact_checkpoint`) of the same
    model configuration, e.g. the states a long run saved over its last epochs. A CoDA-Net has
    no batch norm, so averaged weights need no re-estimated statistics. Integer buffers must
    agree. The result is a compact checkpoint (weights in ``dtype``, no optimiser state) whose
    training fields (epoch, step, history, CPU time) are those of the last source, with
    ``averaged_from`` listing each source's epoch, step and CPU-hours; :func:`coda.pretrained.
    model_from_checkpoint`, ``coda.evaluate --model`` and ``coda.pretrained export`` read it.
    Raises ``ValueError`` naming the file if a source is not a coda.train checkpoint, or if its
    model differs from the first source's (configuration, parameter names or shapes).
    """
    if len(srcs) < 2:
        raise ValueError(f"averaging needs at least 2 checkpoints, got {len(srcs)}")
    ckpts = []
    for src in srcs:
        ckpt = _load_trainer_checkpoint(src)
        first = ckpts[0] if ckpts else ckpt
        if ckpt["model_config"] != first["model_config"]:
            raise ValueError(f"{src}: model configuration {ckpt['model_config']} differs from "
                             f"{srcs[0]}'s {first['model_config']}")
        shapes = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
        if shapes != {k: tuple(v.shape) for k, v in first["model"].items()}:
            raise ValueError(f"{src}: parameter names or shapes differ from {srcs[0]}'s")
        ckpts.append(ckpt)
    weights = {}
    for key, first in ckpts[0]["model"].items():
        values = [c["model"][key] for c in ckpts]
        if not first.is_floating_point():
            if any(not torch.equal(v, first) for v in values):
                raise ValueError(f"integer buffer {key!r} differs between the checkpoints")
            weights[key] = first
            continue
        weights[key] = _stored(torch.stack([v.double() for v in values]).mean(0), dtype, f"averaged weight {key!r}")
    sources = [{"epoch": c["epoch"], "step": c["step"], "cpu_hours": round(c.get("cpu_time", 0.0) / 3600, 3)}
               for c in ckpts]
    return _save_compact(ckpts[-1], weights, dtype, dst, averaged_from=sources)


def _save_state(state: dict, cfg: TrainConfig, path: Path) -> None:
    model: CoDANet = state["model"]
    save_checkpoint(
        {"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "model_config": model.config.to_dict(),
         "model": model.state_dict(), "optimizer": state["optimizer"].state_dict(),
         "epoch": state["epoch"], "step": state["step"], "history": state["history"],
         "wall_time": state["wall_time"], "cpu_time": state["cpu_time"], "generator": state["generator"],
         "epoch_sums": state["epoch_sums"], "rewarm_from": state["rewarm_from"], "restarts": state["restarts"]},
        path,
    )


def train(
    cfg: TrainConfig,
    out: str | Path | None = None,
    device: str | torch.device | None = None,
    data_root: str | Path | None = None,
    train_data: ImageDataset | None = None,
    test_data: ImageDataset | None = None,
    save_every: int = 200,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> tuple[CoDANet, list[dict]]:
    """Train (or resume) a model; returns the model (eval mode) and the per-epoch history.

    out : folder for ``last.pt`` (written atomically every ``save_every`` steps and after
        every epoch); if it holds a checkpoint of the same config, training resumes from it.
        ``None`` trains in memory only.
    train_data, test_data : default to CIFAR-10 from ``data_root`` (see :mod:`coda.data`).
    stop_after_steps : stop (after saving) once this many optimiser steps ran in this call;
        for tests of resumption and for time-boxed sessions.

    While it trains, the process holds ``out``'s lock (:func:`coda.checkpoint.folder_lock`):
    a second trainer on the same folder raises ``ValueError`` naming this process at once.
    Taking the lock removes temporary files of checkpoint writes that a killed run left.
    """
    if not _positive_int(save_every):
        raise ValueError(f"save_every must be an int >= 1 (optimiser steps between checkpoints), got {save_every!r}")
    if stop_after_steps is not None and not _positive_int(stop_after_steps):
        raise ValueError(f"stop_after_steps must be None or an int >= 1, got {stop_after_steps!r}")
    with folder_lock(out):
        if out is not None:
            remove_temporaries(Path(out) / "last.pt")
        return _train(cfg, out, device, data_root, train_data, test_data, save_every, stop_after_steps, progress)


def seconds_per_step(cfg: TrainConfig, device: str | torch.device | None = None, steps: int = 3) -> float:
    """Wall time (s) of one optimiser step of ``cfg``'s training: forward, loss, backward and update
    of a fresh model, in the precision the run would use, on a random batch
    (``cfg.batch_size``, 3, 32, 32). The fastest of ``steps`` timed steps after one warm-up step
    (other processes only slow a step down). What a training would cost before running it; the
    caller's random state is left alone."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    state = _new_state(cfg, device, initialise=False)
    model, opt = state["model"].train(), state["optimizer"]
    precision, _ = resolve_precision(cfg.precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    x = torch.rand(cfg.batch_size, 3, 32, 32, generator=g, device=device)
    y = torch.randint(0, model.num_classes, (cfg.batch_size,), generator=g, device=device)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        train_step(model, opt, scaler, x, y, device, precision, loss=cfg.loss)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times[1:])


def train_step(model: CoDANet, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, x: torch.Tensor,
               y: torch.Tensor, device: torch.device, precision: str, loss: str = "bce") -> None:
    """One optimiser step on the batch ``x`` (B, 3, H, W), labels ``y`` (B,): forward under
    ``precision``'s autocast, the ``loss`` ("bce" or "ce") in float32, backward and update
    through ``scaler``. What :func:`seconds_per_step` and the training benchmark time (the
    trainer's own loop also accumulates gradients and statistics)."""
    opt.zero_grad(set_to_none=True)
    with autocast(device, precision):
        logits = model(x)
    scaler.scale(loss_function(loss)(logits.float(), y)).backward()
    scaler.step(opt)
    scaler.update()


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _train(cfg: TrainConfig, out: str | Path | None, device: str | torch.device | None,
           data_root: str | Path | None, train_data: ImageDataset | None, test_data: ImageDataset | None,
           save_every: int, stop_after_steps: int | None, progress: bool) -> tuple[CoDANet, list[dict]]:
    """The body of :func:`train`, run while this process holds ``out``."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    train_data = load_cifar10("train", data_root) if train_data is None else train_data
    test_data = load_cifar10("test", data_root) if test_data is None else test_data
    if cfg.train_subset:
        train_data = train_data.first(cfg.train_subset)
    if cfg.test_subset:
        test_data = test_data.first(cfg.test_subset)
    steps_per_epoch = len(train_data) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_data)} training images are fewer than one batch of {cfg.batch_size}")

    path = Path(out) / "last.pt" if out is not None else None
    state = _load_state(cfg, path, device) if path is not None and path.exists() else _new_state(cfg, device)
    if state["step"] > steps_per_epoch:
        raise ValueError(
            f"{path} stopped at step {state['step']} of epoch {state['epoch'] + 1}, but {len(train_data)} training "
            f"images at batch {cfg.batch_size} make {steps_per_epoch} steps per epoch: resume it with the training "
            "data it was saved with"
        )
    precision, reason = resolve_precision(cfg.precision, device)
    warn_if_emulated(precision, device)
    if progress:
        print(f"precision: {precision} ({reason})", flush=True)
    model, opt = state["model"], state["optimizer"]
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loss_fn = loss_function(cfg.loss)
    images_all = train_data.images.to(device)
    labels_all = train_data.labels.to(device)
    steps_this_call = 0
    rewarm_start = None  # the global step a restart from a compact checkpoint re-warms from
    if state["rewarm_from"] is not None:
        rewarm_start = state["rewarm_from"][0] * steps_per_epoch + state["rewarm_from"][1]
    clock = _Clock(state)  # wall and CPU time of this call not yet added to the state
    model.train()
    while state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        order = torch.randperm(len(train_data), generator=_epoch_generator(cfg, epoch)).to(device)
        gen = torch.Generator()  # augmentation draws on the CPU: the same run on any device
        gen.set_state(state["generator"])
        bar = progress_bar(range(state["step"], steps_per_epoch), f"epoch {epoch + 1}/{cfg.epochs}",
                           enabled=progress, mininterval=5)
        sums = state["epoch_sums"]
        # Summed on the device, read only at checkpoints: no host-device sync per step.
        loss_sum = torch.tensor(sums["loss_sum"], dtype=torch.float64, device=device)
        correct = torch.tensor(sums["correct"], device=device)
        seen, t0 = sums["seen"], time.perf_counter() - sums["seconds"]
        for step in bar:
            global_step = epoch * steps_per_epoch + step
            lr = learning_rate(cfg, global_step, steps_per_epoch) * rewarm_factor(global_step, rewarm_start, steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr
            idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            x = to_float(images_all[idx])
            if cfg.augment:
                x = augment(x, gen)
            y = labels_all[idx]
            opt.zero_grad(set_to_none=True)
            for xb, yb in zip(x.chunk(cfg.accumulate), y.chunk(cfg.accumulate), strict=True):
                with autocast(device, precision):
                    logits = model(xb)
                loss = loss_fn(logits.float(), yb)
                scaler.scale(loss / cfg.accumulate).backward()
                loss_sum += loss.detach().double() * len(yb)
                correct += (logits.argmax(1) == yb).sum()
            scaler.step(opt)
            scaler.update()
            seen += len(y)
            state["step"] = step + 1
            state["generator"] = gen.get_state()
            steps_this_call += 1
            stop = stop_after_steps is not None and steps_this_call >= stop_after_steps
            checkpoint = path is not None and (state["step"] % save_every == 0 or stop) and state["step"] < steps_per_epoch
            if not bar.disable and (step % 50 == 0 or checkpoint):
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.4f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.1f}", refresh=False)
            if checkpoint:
                _check_finite(loss_sum, epoch, step, lr)  # never save a diverged model
                state["epoch_sums"] = {"seen": seen, "loss_sum": loss_sum.item(), "correct": int(correct.item()),
                                       "seconds": time.perf_counter() - t0}
                clock.add()
                _save_state(state, cfg, path)
            if stop and state["step"] < steps_per_epoch:
                model.eval()
                return model, state["history"]
        bar.close()
        _check_finite(loss_sum, epoch, steps_per_epoch - 1, lr)
        clock.add()
        epoch_images_per_s = seen / max(time.perf_counter() - t0, 1e-9)
        test = evaluate_accuracy(model, test_data, precision=precision if device.type == "cuda" else "fp32")
        model.train()
        state["history"].append({
            "epoch": epoch + 1, "lr": lr, "train_loss": loss_sum.item() / max(seen, 1),
            "train_accuracy": correct.item() / max(seen, 1), "test_accuracy": test["accuracy"],
            "images_per_s": epoch_images_per_s, "wall_time": state["wall_time"], "cpu_time": state["cpu_time"],
            "precision": precision,
        })
        state["epoch"], state["step"], state["epoch_sums"] = epoch + 1, 0, _zero_sums()
        state["generator"] = _epoch_generator(cfg, epoch + 1).get_state()
        if progress:
            print(epoch_line(state["history"][-1], cfg.epochs), flush=True)
        if path is not None:
            _save_state(state, cfg, path)
        if stop_after_steps is not None and steps_this_call >= stop_after_steps:
            break
    model.eval()
    return model, state["history"]


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int, lr: float) -> None:
    """Raise ``FloatingPointError`` if the summed training loss is NaN or inf: the run diverged.

    Checked where the sums are read anyway (checkpoints, the end of an epoch), so the steps
    stay free of host-device synchronisation; the last checkpoint on disk is kept.
    """
    value = loss_sum.item()
    if not math.isfinite(value):
        raise FloatingPointError(
            f"the training loss is {value} in epoch {epoch + 1} by step {step + 1} (lr {lr:.3g}): the run "
            "diverged; the last checkpoint is kept. Try a smaller --lr or --precision fp32."
        )


class _Clock:
    """Adds the wall time and the process's CPU time (all threads) since the last call to
    ``state["wall_time"]`` and ``state["cpu_time"]`` (seconds)."""

    def __init__(self, state: dict):
        self.state, self.wall, self.cpu = state, time.perf_counter(), time.process_time()

    def add(self) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.state["wall_time"] += wall - self.wall
        self.state["cpu_time"] += cpu - self.cpu
        self.wall, self.cpu = wall, cpu


def epoch_line(row: dict, epochs: int) -> str:
    """One readable line for an epoch of the history, e.g.
    ``epoch  3/40  loss 0.1234  train 0.712  test 0.698  lr 1.0e-03  152 img/s  fp32  1.2 h``."""
    return (f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  train {row['train_accuracy']:.3f}  "
            f"test {row['test_accuracy']:.3f}  lr {row['lr']:.1e}  {row['images_per_s']:.0f} img/s  "
            f"{row.get('precision', '?')}  {row['wall_time'] / 3600:.2f} h")


_OVERRIDE_OPTIONS = ("temperature", "rank_factor", "stem_depth", "resnet_stages", "resnet_width", "norm")  # model_overrides on the CLI
_INT_OPTIONS = ("epochs", "batch_size", "accumulate", "seed", "train_subset", "test_subset")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=cli.prog("train"), description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for checkpoints; rerun to resume")
    p.add_argument("--model", default="cifar10-9L-S")
    p.add_argument("--temperature", type=float)
    p.add_argument("--rank-factor", type=int)
    p.add_argument("--stem-depth", type=int)
    p.add_argument("--resnet-stages", type=int, help="hybrids: the first d stages of ResNet-20 as the embedding")
    p.add_argument("--resnet-width", type=int, help="ResNet-20 stages k times wider (ResNet-20 x k)")
    p.add_argument("--norm", choices=("squash", "l2"))
    for f in _INT_OPTIONS:
        p.add_argument("--" + f.replace("_", "-"), type=int, default=getattr(TrainConfig, f, None))
    p.add_argument("--lr", type=float, default=TrainConfig.lr)
    p.add_argument("--warmup-epochs", type=float, default=TrainConfig.warmup_epochs)
    p.add_argument("--schedule", choices=SCHEDULES, default=TrainConfig.schedule)
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=TrainConfig.optimizer)
    p.add_argument("--weight-decay", type=float, default=TrainConfig.weight_decay)
    p.add_argument("--loss", choices=LOSSES, default=TrainConfig.loss,
                   help="bce: the paper's (default); ce: softmax cross-entropy, for conventional networks")
    p.add_argument("--precision", choices=PRECISIONS, default=TrainConfig.precision)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--init-from", help="start from the weights of this shipped model (coda.list_pretrained())")
    p.add_argument("--embedding-from", help="hybrids: start the embedding from this model's ResNet-20 stages "
                   "(a shipped model's name or a coda.train checkpoint)")
    p.add_argument("--freeze-embedding", action="store_true", help="keep the embedding from --embedding-from fixed")
    p.add_argument("--device")
    p.add_argument("--data", help="data folder (default: $CODA_DATA, else data/)")
    p.add_argument("--save-every", type=int, default=200, help="optimiser steps between checkpoints")
    return p


def config_from_args(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Parse the command line of ``python -m coda.train`` into its :class:`TrainConfig`.

    Returns the config and the parsed arguments (``out``, ``device``, ``data``, ``save_every``
    are not part of the config).
    """
    p = _parser()
    a = p.parse_args(argv)
    overrides = {k: getattr(a, k) for k in _OVERRIDE_OPTIONS if getattr(a, k) is not None}
    if a.save_every < 1:
        p.error(f"--save-every must be >= 1 (optimiser steps between checkpoints), got {a.save_every}")
    try:
        cfg = TrainConfig(model=a.model, model_overrides=overrides, epochs=a.epochs, batch_size=a.batch_size,
                          accumulate=a.accumulate, lr=a.lr, schedule=a.schedule, warmup_epochs=a.warmup_epochs,
                          precision=a.precision, augment=not a.no_augment, seed=a.seed,
                          train_subset=a.train_subset, test_subset=a.test_subset, init_from=a.init_from,
                          optimizer=a.optimizer, weight_decay=a.weight_decay, embedding_from=a.embedding_from,
                          freeze_embedding=a.freeze_embedding, loss=a.loss)
    except ValueError as err:  # the usage line and the message, exit status 2
        p.error(str(err))
    return cfg, a


def train_command(cfg: TrainConfig, out: str = "runs/NAME") -> str:
    """The ``python -m coda.train`` command line that trains ``cfg`` (the inverse of
    :func:`config_from_args`); every field is written out, so defaults may change safely.

    Raises ``ValueError`` if ``cfg.model_overrides`` has a field the command line cannot set.
    """
    unknown = set(cfg.model_overrides) - set(_OVERRIDE_OPTIONS)
    if unknown:
        raise ValueError(
            f"model_overrides {sorted(unknown)} cannot be set from the command line; "
            f"expected only some of {list(_OVERRIDE_OPTIONS)}"
        )
    args = ["python -m coda.train", f"--out {shlex.quote(str(out))}", f"--model {shlex.quote(cfg.model)}"]
    args += [f"--{k.replace('_', '-')} {_cli_value(cfg.model_overrides[k])}" for k in _OVERRIDE_OPTIONS
             if k in cfg.model_overrides]
    args += [f"--{k.replace('_', '-')} {getattr(cfg, k)}" for k in _INT_OPTIONS if getattr(cfg, k) is not None]
    args += [f"--lr {cfg.lr!r}", f"--warmup-epochs {cfg.warmup_epochs!r}", f"--schedule {cfg.schedule}",
             f"--optimizer {cfg.optimizer}", f"--weight-decay {cfg.weight_decay!r}", f"--precision {cfg.precision}"]
    if cfg.loss != "bce":  # written only when it is not the paper's, so older commands stay as they were
        args.append(f"--loss {cfg.loss}")
    if not cfg.augment:
        args.append("--no-augment")
    if cfg.init_from is not None:
        args.append(f"--init-from {shlex.quote(cfg.init_from)}")
    if cfg.embedding_from is not None:
        args.append(f"--embedding-from {shlex.quote(cfg.embedding_from)}")
    if cfg.freeze_embedding:
        args.append("--freeze-embedding")
    return " ".join(args)


def _cli_value(value) -> str:
    """A value as a command-line word: floats by ``repr`` (they parse back exactly)."""
    return repr(value) if isinstance(value, float) else shlex.quote(str(value))


def main(argv: list[str] | None = None) -> None:
    cfg, a = config_from_args(argv)
    try:
        train(cfg, a.out, device=a.device, data_root=a.data, save_every=a.save_every, progress=True)
    except (ValueError, FloatingPointError) as err:  # bad input or a diverged run: the message, no traceback
        raise SystemExit(f"python -m coda.train: error: {err}") from err


if __name__ == "__main__":
    main()
