"""Training throughput of CoDA-Nets against the machine's own matmul rate.

Times full training steps (forward, BCE loss, backward, Adam) on random images, as
``coda.train`` runs them, and prints, with the machine it ran on (CPU model, instruction set,
native bf16 or not, threads) and the machine's matrix-multiply rate measured in the same run:

* images/s and the implied time per CIFAR-10 epoch (50,000 images);
* the GFLOP/s the step achieves (``benchmarks.flops.training_flops`` per image) and its
  fraction of the matmul rate of the same precision (for bf16 on a CPU that emulates it, of
  the float32 rate, since there is no bf16 peak);
* which precision ``"auto"`` picks on this machine, and why.

bf16 is measured only where the hardware computes it natively (``--precisions`` overrides).
Run by hand from the repository root::

    python -m benchmarks.bench_training                       # 9L-S at rank factors 8 and 32, batch 64
    python -m benchmarks.bench_training --rank-factors 32 --batch 16
    python -m benchmarks.bench_training --precisions fp32 bf16  # bf16 even where it is emulated
    python -m benchmarks.bench_training --quick               # cifar10-tiny, 2 steps: a smoke test
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.flops import training_flops
from coda.hardware import format_machine, machine_summary, remeasure_peak, resolve_precision
from coda.models import build_model
from coda.train import train_step

EPOCH_IMAGES = 50_000


def images_per_second(model, precision: str, batch: int, steps: int, warmup: int, device) -> float:
    """Training images per second of ``model`` over ``steps`` timed steps (after ``warmup``)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch, 3, 32, 32, generator=g, device=device)
    y = torch.randint(0, model.num_classes, (batch,), generator=g, device=device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start = time.perf_counter()
        train_step(model, opt, scaler, x, y, device, precision)
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def default_precisions(machine: dict) -> list[str]:
    """float32, and bf16 where the device computes it natively (fp16 too on a CUDA GPU)."""
    if machine["device"] == "cuda":
        return ["fp32", "bf16", "fp16"] if "bf16" in machine["matmul_gflops"] else ["fp32", "fp16"]
    return ["fp32", "bf16"] if "bf16" in machine["matmul_gflops"] else ["fp32"]


def peak_for(precision: str, machine: dict) -> tuple[float, str]:
    """The matmul rate a step in ``precision`` is compared with, and its name."""
    rates = machine["matmul_gflops"]
    if precision in rates:
        return rates[precision], precision
    return rates["fp32"], "fp32"


def measure(models: list[tuple[str, dict]], precisions: list[str], batch: int, steps: int, warmup: int,
            device: torch.device, machine: dict) -> list[dict]:
    """One row per (model, precision): images/s, GFLOP/s and the fraction of the matmul rate."""
    rows = []
    for name, overrides in models:
        torch.manual_seed(0)
        model = build_model(name, **overrides).to(device)
        flops = training_flops(model)
        for precision in precisions:
            rate = images_per_second(model, precision, batch, steps, warmup, device)
            rows.append({"model": name, **overrides, "parameters": sum(p.numel() for p in model.parameters()),
                         "precision": precision, "batch": batch, "images_per_s": rate,
                         "gflop_per_image": flops / 1e9, "gflops": rate * flops / 1e9})
    return add_fractions(rows, machine)


def add_fractions(rows: list[dict], machine: dict) -> list[dict]:
    """Each row's GFLOP/s as a fraction of the matmul rate of its precision (``machine``)."""
    out = []
    for r in rows:
        peak, peak_name = peak_for(r["precision"], machine)
        out.append(r | {"fraction_of_matmul": r["gflops"] / peak, "matmul_reference": peak_name})
    return out


def markdown(rows: list[dict]) -> str:
    lines = ["| model | parameters | precision | batch | images/s | GFLOP/s | fraction of the matmul rate "
             "| time per epoch (50,000 images) |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        label = r["model"] + (f", rank factor {r['rank_factor']}" if "rank_factor" in r else "")
        lines.append(f"| {label} | {r['parameters']:,} | {r['precision']} | {r['batch']} | {r['images_per_s']:.1f} | "
                     f"{r['gflops']:.1f} | {100 * r['fraction_of_matmul']:.0f}% of {r['matmul_reference']} | "
                     f"{_duration(EPOCH_IMAGES / r['images_per_s'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar10-9L-S")
    p.add_argument("--rank-factors", type=int, nargs="+", default=[8, 32])
    p.add_argument("--temperature", type=float, default=1000.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per precision")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--precisions", nargs="+", choices=("fp32", "bf16", "fp16"),
                   help="default: fp32, and bf16 where it is native")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--json", type=Path, help="also write the machine and the rows here")
    p.add_argument("--quick", action="store_true", help="cifar10-tiny, 2 steps after 1 warm-up: a smoke test")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick:
        a.model, a.rank_factors, a.temperature, a.steps, a.warmup = "cifar10-tiny", [8], 100.0, 2, 1
    if a.batch < 1 or a.steps < 1 or a.warmup < 0:
        p.error(f"--batch and --steps must be >= 1 and --warmup >= 0, got {a.batch}, {a.steps}, {a.warmup}")
    device = torch.device(a.device)
    machine = machine_summary(device, n=256 if a.quick else None)
    precisions = a.precisions or default_precisions(machine)
    auto, why = resolve_precision("auto", device)
    models = [(a.model, {"rank_factor": f, "temperature": a.temperature}) for f in a.rank_factors]
    rows = measure(models, precisions, a.batch, a.steps, a.warmup, device, machine)
    rows = add_fractions(rows, remeasure_peak(machine, device))
    print(format_machine(machine))
    print(f"precision 'auto' here: {auto} ({why})")
    if "bf16" not in precisions:
        print("bf16 not measured: this CPU emulates it (--precisions fp32 bf16 measures it anyway)")
    print(f"{a.steps} timed steps after {a.warmup} warm-up per row\n")
    print(markdown(rows))
    if a.json is not None:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
