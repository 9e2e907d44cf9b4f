"""Training throughput of a CoDA-Net: fp32 against bf16 autocast, in images per second.

Times full training steps (forward, BCE loss, backward, Adam) on random images, as
``coda.train`` runs them, and prints a markdown table with the implied time per CIFAR-10 epoch
(50,000 images) and the ratio bf16 / fp32 measured in this run. Run by hand from the
repository root::

    python -m benchmarks.bench_training                   # the teaching model, rank factor 8
    python -m benchmarks.bench_training --rank-factor 32  # the paper's full-rank model
    python -m benchmarks.bench_training --quick           # cifar10-tiny, 2 steps: a smoke test
"""

from __future__ import annotations

import argparse
import time

import torch

from coda.inference import autocast
from coda.models import build_model
from coda.train import bce_loss

EPOCH_IMAGES = 50_000


def images_per_second(model, precision: str, batch: int, steps: int, warmup: int, device) -> float:
    """Training images per second of ``model`` over ``steps`` timed steps (after ``warmup``)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=g, device=device)
    y = torch.randint(0, model.num_classes, (batch,), generator=g, device=device)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with autocast(device, precision):
            logits = model(x)
        bce_loss(logits.float(), y).backward()
        opt.step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar10-9L-S")
    p.add_argument("--rank-factor", type=int, default=8)
    p.add_argument("--temperature", type=float, default=1000.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per precision")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="cifar10-tiny, 2 steps after 1 warm-up: a smoke test")
    a = p.parse_args(argv)
    if a.quick:
        a.model, a.rank_factor, a.temperature, a.steps, a.warmup = "cifar10-tiny", 8, 100.0, 2, 1
    device = torch.device(a.device)
    torch.manual_seed(0)
    model = build_model(a.model, rank_factor=a.rank_factor, temperature=a.temperature).to(device)
    params = sum(p.numel() for p in model.parameters())
    rates = {
        prec: images_per_second(model, prec, a.batch, a.steps, a.warmup, device) for prec in ("fp32", "bf16")
    }
    print(
        f"{a.model}, rank factor {a.rank_factor}, {params:,} parameters, batch {a.batch}, "
        f"{a.steps} timed steps after {a.warmup} warm-up, {device.type}, {torch.get_num_threads()} threads\n"
    )
    print("| precision | images/s | time per epoch (50,000 images) |\n|---|---|---|")
    for prec, rate in rates.items():
        print(f"| {prec} | {rate:.1f} | {_duration(EPOCH_IMAGES / rate)} |")
    print(f"\nbf16 / fp32 throughput: {rates['bf16'] / rates['fp32']:.2f}x")


if __name__ == "__main__":
    main()
