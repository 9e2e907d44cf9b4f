"""Running a trained model: the precision context, batched prediction, test accuracy.

Shared by training (``coda.train``), evaluation (``coda.evaluate``) and the registry
(``coda.pretrained``), so none of them has to import another for it.
"""

from __future__ import annotations

import contextlib

import torch

from coda.data import ImageDataset, to_float
from coda.hardware import resolve_precision, warn_if_emulated


def autocast(device: str | torch.device, precision: str):
    """The autocast context for ``precision`` on ``device`` (a no-op for float32).

    "auto" is resolved by :func:`coda.hardware.resolve_precision`: bf16 only on a CPU that
    computes it natively, float32 on other CPUs, bf16 or fp16 on CUDA. An explicit "bf16" on a
    CPU that emulates it warns once.
    """
    device = torch.device(device)
    concrete, _ = resolve_precision(precision, device)
    warn_if_emulated(precision, device)
    if concrete == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if concrete == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 500, precision: str = "fp32") -> torch.Tensor:
    """Logits (N, classes) of uint8 or float images (N, 3, H, W), in batches, model in eval mode."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        out = []
        for i in range(0, images.shape[0], batch_size):
            x = images[i : i + batch_size].to(device)
            x = to_float(x) if x.dtype == torch.uint8 else x
            with autocast(device, precision):
                out.append(model(x).float().cpu())
        return torch.cat(out)
    finally:
        model.train(was_training)


def evaluate_accuracy(model: torch.nn.Module, data: ImageDataset, batch_size: int = 500, precision: str = "fp32") -> dict:
    """Accuracy and per-class accuracy of ``model`` on ``data``.

    Returns ``{"accuracy": float, "per_class": {name: float}, "n": int}``.
    """
    pred = predict(model, data.images, batch_size, precision).argmax(1)
    correct = pred == data.labels
    per_class = {
        name: correct[data.labels == c].float().mean().item() for c, name in enumerate(data.classes)
    }
    return {"accuracy": correct.float().mean().item(), "per_class": per_class, "n": len(data)}
