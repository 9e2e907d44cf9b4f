"""Factorised vs materialised CoDA layers: training-step throughput and peak memory on CPU.

The package computes a CoDA layer through ordinary convolutions and r x r Gram matrices
(``coda.dau.dau_conv2d``); the straightforward formula (``dau_conv2d_materialised``, what
the authors' code does) builds all ``C_out * C_in * k^2`` dynamic weights per pixel. This
script times one full training step of a CoDA-Net with each (forward, BCE on one-hot
targets, backward, Adam step), in float32 and under bfloat16 autocast, and reports, after
the machine it ran on (CPU model, instruction set, native bf16 or not, threads) and that
machine's matmul rate measured in the same run,

* images/s: ``batch * steps / seconds`` over ``--steps`` timed steps after ``--warmup``;
* GFLOP/s: images/s times the factorised layer's FLOPs per training image
  (``benchmarks.flops``), and its fraction of the matmul rate of the same dtype;
* peak memory: the process's peak resident set size (``ru_maxrss``) after the steps minus
  its resident set size just before the first step, i.e. after importing torch and
  building the model, the optimiser and the batch. So it counts what a training step adds:
  activations kept for backward, gradients, Adam's moments and temporaries.

Each configuration runs in a fresh Python process (``ru_maxrss`` never goes down), one
after the other, so both layers are measured in the same run on the same machine. Ratios
are factorised / materialised: speed-up (> 1: the factorised layer is faster) and memory
fraction (< 1: it needs less).

Run from the repository root::

    python -m benchmarks.bench_layers                     # 9L-S, batches 16 64, fp32 (and bf16 if native)
    python -m benchmarks.bench_layers --quick             # seconds: does the script work?
    python -m benchmarks.bench_layers --steps 20 --json results/bench_layers.json
    python -m benchmarks.bench_layers --profile --batches 64 --dtypes fp32   # where the time goes
    python -m benchmarks.bench_layers --keep-freed-memory   # both modes with coda.runtime.keep_freed_memory()
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.flops import training_flops
from coda import CoDAConv2d, build_model
from coda.dau import dau_conv2d_materialised
from coda.hardware import cpu_info, format_machine, machine_summary, remeasure_peak
from coda.runtime import keep_freed_memory
from coda.train import bce_loss

MODES = ("factorised", "materialised")
DTYPES = ("fp32", "bf16")
REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Spec:
    """One configuration to measure."""

    model: str
    mode: str
    dtype: str
    batch: int
    image_size: int
    steps: int
    warmup: int
    threads: int | None
    keep_freed_memory: bool = False


class MaterialisedCoDAConv2d(CoDAConv2d):
    """The same layer and parameters, computed with the materialised formula."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dau_conv2d_materialised(
            x, self.A, self.B, self.b, self.stride, self.padding, self.norm, self.explain
        )


def use_materialised(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every CoDA layer of ``model`` by a :class:`MaterialisedCoDAConv2d` copy."""
    for i, layer in enumerate(model.layers):
        copy = MaterialisedCoDAConv2d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_size,
            layer.stride,
            layer.padding,
            rank=layer.rank,
            norm=layer.norm,
            weight_bias=layer.b is not None,
        )
        copy.load_state_dict(layer.state_dict())
        model.layers[i] = copy
    return model


# ----- measuring one configuration (runs in the child process) -------------------------------


def current_rss_mb() -> float:
    """Resident set size now, in MB (Linux ``/proc``; elsewhere the peak so far)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return peak_rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, else KiB


def setup(spec: Spec) -> tuple:
    """Allocator, threads, seed, the model (in ``spec.mode``), Adam and a random batch."""
    if spec.keep_freed_memory:
        keep_freed_memory()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    torch.manual_seed(0)
    model = build_model(spec.model).train()
    if spec.mode == "materialised":
        use_materialised(model)
    optimiser = torch.optim.Adam(model.parameters(), lr=2.5e-4)
    images = torch.rand(spec.batch, 3, spec.image_size, spec.image_size)
    labels = torch.randint(0, model.num_classes, (spec.batch,))
    return model, optimiser, images, labels


def measure(spec: Spec) -> dict:
    """Time ``spec.steps`` training steps and return images/s and the peak memory added."""
    model, optimiser, images, labels = setup(spec)
    baseline = current_rss_mb()
    for _ in range(spec.warmup):
        train_step(model, optimiser, images, labels, spec.dtype)
    start = time.perf_counter()
    for _ in range(spec.steps):
        train_step(model, optimiser, images, labels, spec.dtype)
    seconds = time.perf_counter() - start
    return dataclasses.asdict(spec) | {
        "images_per_s": spec.batch * spec.steps / seconds,
        "peak_mb": peak_rss_mb() - baseline,
        "threads_used": torch.get_num_threads(),
    }


def train_step(model, optimiser, images, labels, dtype: str) -> None:
    """Forward (autocast for bf16), BCE on one-hot targets, backward, Adam step."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
        loss = bce_loss(model(images), labels)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


# Operator groups of the profile: (label, aten operator names).
OP_GROUPS = (
    ("convolutions (forward)", {"aten::mkldnn_convolution", "aten::_convolution"}),
    ("convolutions (backward)", {"aten::convolution_backward"}),
    ("per-position contractions (bmm)", {"aten::bmm"}),
    ("Gram products and other matmuls (mm, addmm)", {"aten::mm", "aten::addmm"}),
)


def profile_step(spec: Spec) -> list[dict]:
    """Self CPU time of one training step (after ``spec.warmup`` steps), by operator group.

    Returns one dict per group of :data:`OP_GROUPS` plus "everything else" (elementwise
    operations, copies, Adam, ...; its label names its four largest operators):
    ``{"group", "seconds", "share"}``.
    """
    from torch.profiler import ProfilerActivity, profile

    model, optimiser, images, labels = setup(spec)
    for _ in range(spec.warmup):
        train_step(model, optimiser, images, labels, spec.dtype)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, optimiser, images, labels, spec.dtype)
    self_seconds = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    total = sum(self_seconds.values())
    rows, grouped = [], set()
    for label, ops in OP_GROUPS:
        seconds = sum(v for k, v in self_seconds.items() if k in ops)
        grouped |= ops
        rows.append({"group": label, "seconds": seconds, "share": seconds / total})
    rest = {k: v for k, v in self_seconds.items() if k not in grouped}
    top = sorted(rest, key=rest.get, reverse=True)[:4]
    label = "everything else (largest: " + ", ".join(f"{k.removeprefix('aten::')} {rest[k]:.2f} s" for k in top) + ")"
    rows.append({"group": label, "seconds": sum(rest.values()), "share": sum(rest.values()) / total})
    return rows


# ----- the parent: one fresh process per configuration ---------------------------------------


def run_in_subprocess(spec: Spec) -> dict:
    """Measure ``spec`` in a fresh interpreter and return its result."""
    cmd = [sys.executable, "-m", "benchmarks.bench_layers", "--worker", json.dumps(dataclasses.asdict(spec))]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{spec} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def add_ratios(results: list[dict]) -> list[dict]:
    """Per (dtype, batch): speed-up and memory fraction of factorised over materialised."""
    by_key = {(r["dtype"], r["batch"], r["mode"]): r for r in results}
    ratios = []
    for (dtype, batch, mode), fact in by_key.items():
        mat = by_key.get((dtype, batch, "materialised"))
        if mode != "factorised" or mat is None:
            continue
        ratios.append(
            {
                "dtype": dtype,
                "batch": batch,
                "speed_up": fact["images_per_s"] / mat["images_per_s"],
                "memory_fraction": fact["peak_mb"] / mat["peak_mb"] if mat["peak_mb"] > 0 else float("nan"),
            }
        )
    return ratios


def add_rates(results: list[dict], flops_per_image: float, machine: dict) -> list[dict]:
    """Add the GFLOP/s of each result (factorised FLOPs per training image, the same count for
    both modes: the work the layer has to do) and its fraction of the machine's matmul rate of
    the same dtype (float32's where the CPU has no native bf16)."""
    rates = machine["matmul_gflops"]
    out = []
    for r in results:
        reference = r["dtype"] if r["dtype"] in rates else "fp32"
        gflops = r["images_per_s"] * flops_per_image / 1e9
        out.append(r | {"gflops": gflops, "fraction_of_matmul": gflops / rates[reference],
                        "matmul_reference": reference})
    return out


def markdown(results: list[dict], ratios: list[dict]) -> str:
    """The results and the ratios as two markdown tables."""
    lines = ["| mode | dtype | batch | images/s | GFLOP/s | fraction of the matmul rate | peak memory MB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        fraction = f"{100 * r['fraction_of_matmul']:.0f}% of {r['matmul_reference']}" if "gflops" in r else "-"
        gflops = f"{r['gflops']:.1f}" if "gflops" in r else "-"
        lines.append(
            f"| {r['mode']} | {r['dtype']} | {r['batch']} | {r['images_per_s']:.1f} | {gflops} | {fraction} "
            f"| {r['peak_mb']:.0f} |"
        )
    lines += [
        "",
        "| dtype | batch | speed-up (fact./mat.) | memory fraction (fact./mat.) |",
        "|---|---:|---:|---:|",
    ]
    for r in ratios:
        lines.append(f"| {r['dtype']} | {r['batch']} | {r['speed_up']:.2f}x | {r['memory_fraction']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="cifar10-9L-S", help="a name from coda.CONFIGS")
    p.add_argument("--batches", type=int, nargs="+", default=[16, 64])
    p.add_argument("--dtypes", nargs="+", choices=DTYPES,
                   help="default: fp32, and bf16 where the CPU computes it natively")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--steps", type=int, default=10, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--keep-freed-memory", action="store_true",
                   help="call coda.runtime.keep_freed_memory() in every measured process (both modes)")
    p.add_argument("--quick", action="store_true", help="cifar10-tiny, batch 4, 1 step: a smoke test")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--profile", action="store_true",
                   help="instead: profile one step of each configuration and print where the time goes")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: one Spec as JSON
    args = p.parse_args(argv)
    if args.quick:
        args.model, args.batches, args.steps, args.warmup = "cifar10-tiny", [4], 1, 1
    if args.dtypes is None:
        args.dtypes = ["fp32", "bf16"] if cpu_info().native_bf16 else ["fp32"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(measure(Spec(**json.loads(args.worker)))))
        return
    if args.profile:
        for dtype in args.dtypes:
            for batch in args.batches:
                for mode in args.modes:
                    spec = Spec(args.model, mode, dtype, batch, args.image_size, 1, args.warmup, args.threads,
                                args.keep_freed_memory)
                    rows = profile_step(spec)
                    total = sum(r["seconds"] for r in rows)
                    print(f"\n{args.model}, {mode}, {dtype}, batch {batch}: one step, {total:.2f} s of self CPU time "
                          f"({torch.get_num_threads()} threads)\n")
                    print("| operators | self CPU s | share |\n|---|---:|---:|")
                    for r in rows:
                        print(f"| {r['group']} | {r['seconds']:.3f} | {100 * r['share']:.0f}% |")
        return
    if args.threads:
        torch.set_num_threads(args.threads)  # the matmul rate with the threads the steps had
    machine = machine_summary("cpu", n=256 if args.quick else None)  # measured again after the rows
    results = []
    for dtype in args.dtypes:
        for batch in args.batches:
            for mode in args.modes:
                spec = Spec(
                    args.model, mode, dtype, batch, args.image_size, args.steps, args.warmup, args.threads,
                    args.keep_freed_memory,
                )
                print(f"measuring {mode} {dtype} batch {batch} ...", file=sys.stderr, flush=True)
                results.append(run_in_subprocess(spec))
    ratios = add_ratios(results)
    remeasure_peak(machine)
    results = add_rates(results, training_flops(build_model(args.model), args.image_size), machine)
    threads = results[0]["threads_used"] if results else None
    print(format_machine(machine))
    print(
        f"{args.model}, {args.steps} timed steps after {args.warmup} warm-up, "
        f"{threads} threads in the measured processes, "
        f"C allocator: {'keep_freed_memory()' if args.keep_freed_memory else 'default'}\n"
    )
    print(markdown(results, ratios))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"torch": torch.__version__, "machine": machine, "cpu_count": os.cpu_count(),
                "keep_freed_memory": args.keep_freed_memory}
        args.json.write_text(json.dumps({"meta": meta, "results": results, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
