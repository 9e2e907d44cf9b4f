"""Time per attribution of every explainer, and its ratio to the CoDA contributions.

The contributions need one forward and one backward pass; Integrated Gradients needs
``n_steps`` of each, occlusion one forward per patch position (225 for 5x5 patches at
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

import torch

from coda.evaluate import Clock
from coda.explainers import EXPLAINERS, get_explainer
from coda.models import build_model


def time_explainer(explainer, model, images, targets, repeats: int) -> tuple[float, float]:
    """Median wall-clock and process CPU seconds of one call, after one warm-up call."""
    explainer(model, images, targets)
    clocks = [Clock(images.device) for _ in range(repeats)]
    for clock in clocks:
        with clock:
            explainer(model, images, targets)
    return statistics.median(c.seconds for c in clocks), statistics.median(c.cpu_seconds for c in clocks)


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
    wall, cpu = {}, {}
    for m in methods:
        w, c = time_explainer(get_explainer(m), model, images, targets, a.repeats)
        wall[m], cpu[m] = w / a.images, c / a.images
    print(f"{name}, {a.images} images of {a.size}x{a.size}, {a.device}, {torch.get_num_threads()} threads, "
          f"median of {a.repeats}; per attribution (one image, one class)")
    print(f"{'method':>16} {'wall s':>10} {'CPU s':>10} {'wall / coda':>12} {'CPU / coda':>11}")
    for m in methods:
        ratios = (f"{wall[m] / wall['coda']:12.1f} {cpu[m] / cpu['coda']:11.1f}" if "coda" in wall
                  else f"{'-':>12} {'-':>11}")
        print(f"{m:>16} {wall[m]:10.4f} {cpu[m]:10.4f} {ratios}")
    # on a CPU shared with other jobs, CPU time is the fairer clock; on a GPU, wall-clock time
    clock = cpu if a.device == "cpu" else wall
    for m in ("intgrad", "occ5", "occ9"):
        if m in clock and "coda" in clock:
            print(f"{EXPLAINERS[m].label} takes {clock[m] / clock['coda']:.0f}x the time of the CoDA contributions")


if __name__ == "__main__":
    main()
