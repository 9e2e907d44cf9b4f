"""Occlusion of one pointing-game grid: local recomputation (coda.occlusion) against captum.

Both give the same attributions (``tests/test_occlusion.py``); this measures what they cost, in
one run on one machine: CPU seconds for one 96 x 96 grid explained for its nine classes (one
pass per window serves every class, as in the evaluation), the ratio, and the largest
difference between the two results relative to the largest attribution.

    python -m benchmarks.bench_occlusion                                 # untrained 9L-S, Occ9 and Occ5
    python -m benchmarks.bench_occlusion --model cifar10-9L-S-f8-T1000   # a shipped model or a checkpoint
    python -m benchmarks.bench_occlusion --patches 9 --out results/bench_occlusion.md

Run by hand (captum's side takes minutes per grid on a CPU); prints a Markdown table and writes
it to ``--out`` if given.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from coda import checkpoint, occlusion
from coda.explainers import occlusion_classes_captum
from coda.hardware import cpu_info
from coda.models import build_model


def cpu_seconds(function, *args) -> tuple[float, torch.Tensor]:
    """Process CPU seconds of one call ``function(*args)``, and its result."""
    start = time.process_time()
    out = function(*args)
    return time.process_time() - start, out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="cifar10-9L-S", help="architecture from coda.CONFIGS (untrained)")
    p.add_argument("--model", help="a checkpoint or shipped model instead of --arch")
    p.add_argument("--patches", default="9,5", help="window sides, stride 2 (the paper's Occ9 and Occ5)")
    p.add_argument("--size", type=int, default=96, help="grid side in pixels (3 x 32 for CIFAR-10)")
    p.add_argument("--batch-size", type=int, default=32, help="captum: images per forward pass (the evaluation's)")
    p.add_argument("--out", help="also write the table to this Markdown file")
    a = p.parse_args(argv)
    if a.model:
        from coda.evaluate import load_model

        model, info = load_model(a.model, "cpu")
        name = info["name"]
    else:
        torch.manual_seed(0)
        model, name = build_model(a.arch).eval(), f"{a.arch} (untrained)"
    if not occlusion.supports(model):
        raise SystemExit(f"{name} is not a pure CoDA-Net: local occlusion does not apply")
    image = torch.rand(1, 3, a.size, a.size, generator=torch.Generator().manual_seed(0))
    classes = torch.arange(min(9, model.num_classes))
    lines = [f"{name}, one {a.size}x{a.size} image, {len(classes)} classes, stride 2, float32, "
             f"{torch.get_num_threads()} threads, {cpu_info().describe()}, {time.strftime('%Y-%m-%d')}", "",
             "| method | windows | captum CPU s | coda.occlusion CPU s | ratio | max difference / max attribution |",
             "|---|---:|---:|---:|---:|---:|"]
    for patch in (int(s) for s in a.patches.split(",")):
        windows = len(occlusion.window_starts(a.size, patch, 2)) ** 2
        local_s, local = cpu_seconds(occlusion.occlusion_classes, model, image, classes, patch, 2)
        captum_s, ref = cpu_seconds(occlusion_classes_captum, model, image, classes, patch, 2,
                                      a.batch_size)
        diff = ((local - ref).abs().max() / ref.abs().max()).item()
        lines.append(f"| Occ{patch} | {windows:,} | {captum_s:.1f} | {local_s:.1f} | {captum_s / local_s:.1f}x | "
                     f"{diff:.1e} |")
        print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    if a.out:
        checkpoint.write_text(table, Path(a.out))


if __name__ == "__main__":
    main()
