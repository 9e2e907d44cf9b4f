"""Time per attribution of every explainer, and its ratio to the CoDA contributions.

The contributions need one forward and one backward pass; Integrated Gradients needs
``n_steps`` of each, occlusion one forward per patch position (196 for 5x5 patches at
stride 2 on 32 x 32 images), LIME one per sample. Timings do not depend on the weights, so
an untrained model of the chosen architecture is used unless ``--model`` names a
checkpoint or a shipped model.

    python benchmarks/bench_explainers.py                       # 9L-S, 8 images of 32 x 32
    python benchmarks/bench_explainers.py --quick               # tiny model, 2 images
    python benchmarks/bench_explainers.py --size 96 --images 1  # a 3x3 grid's size

Run by hand; prints one table measured in one run (median of ``--repeats`` timings).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from coda.explainers import EXPLAINERS, get_explainer
from coda.models import build_model


def time_explainer(explainer, model, images, targets, repeats: int) -> float:
    """Median seconds of one call on ``images`` after one warm-up call."""
    explainer(model, images, targets)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        explainer(model, images, targets)
        if images.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="cifar10-9L-S", help="architecture from coda.CONFIGS (untrained)")
    p.add_argument("--model", help="a checkpoint or shipped model instead of --arch")
    p.add_argument("--methods", default=",".join(EXPLAINERS))
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--size", type=int, default=32, help="image height and width")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="cifar10-tiny, 2 images, 1 repeat")
    a = p.parse_args(argv)
    if a.quick:
        a.arch, a.images, a.repeats = "cifar10-tiny", 2, 1
    if a.model:
        from coda.evaluate import load_model

        model, info = load_model(a.model, a.device)
        name = info["name"]
    else:
        model, name = build_model(a.arch).to(a.device).eval(), f"{a.arch} (untrained)"
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(a.images, 3, a.size, a.size, generator=gen).to(a.device)
    targets = torch.randint(0, model.num_classes, (a.images,), generator=gen).to(a.device)
    methods = [m.strip() for m in a.methods.split(",")]
    seconds = {m: time_explainer(get_explainer(m), model, images, targets, a.repeats) / a.images for m in methods}
    print(f"{name}, {a.images} images of {a.size}x{a.size}, {a.device}, {torch.get_num_threads()} threads, "
          f"median of {a.repeats}")
    print(f"{'method':>16} {'s / attribution':>16} {'x coda':>8}")
    base = seconds.get("coda")
    for m, s in seconds.items():
        ratio = f"{s / base:8.1f}" if base else "       -"
        print(f"{m:>16} {s:16.4f} {ratio}")
    if base:
        for m in ("intgrad", "occ5", "occ9"):
            if m in seconds:
                print(f"{EXPLAINERS[m].label} takes {seconds[m] / base:.0f}x the time of the CoDA contributions")


if __name__ == "__main__":
    main()
