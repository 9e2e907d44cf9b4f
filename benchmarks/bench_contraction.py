"""The per-position contraction of the CoDA layer: the current form against the earlier one.

``coda.dau`` computes ``dot[p, j] = sum_a bx[p, j, a] z[p, a]`` (and the quadratic forms'
``z^T (G_j z)``) as row-times-matrix batched products with a hand-written backward
(``_Contraction``). The earlier code used ``bmm(bx, z[..., None])`` with autograd's backward.
This script swaps the earlier form in and out of the same model and times full training steps
of the 9L-S, interleaving the two so that both see the same machine state::

    python -m benchmarks.bench_contraction                    # rank factor 32, batch 64, 2 threads
    python -m benchmarks.bench_contraction --rank-factor 8 --threads 1
"""

from __future__ import annotations

import argparse
import time

import torch

import coda.dau as D
from coda.hardware import format_machine, machine_summary
from coda.models import build_model
from coda.train import bce_loss


def _earlier(y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.bmm(y, z.unsqueeze(-1)).squeeze(-1)


def use(form: str, current=(D._contract, D._Contraction.apply)) -> None:
    """Make ``coda.dau`` use the "current" or the "earlier" contraction."""
    D._contract, D._Contraction.apply = current if form == "current" else (_earlier, _earlier)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank-factor", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of --steps steps per form")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    print(format_machine(machine_summary("cpu", measure=False)))
    torch.manual_seed(0)
    model = build_model("cifar10-9L-S", rank_factor=a.rank_factor)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x, y = torch.rand(a.batch, 3, 32, 32), torch.randint(0, 10, (a.batch,))

    def step():
        opt.zero_grad()
        bce_loss(model(x), y).backward()
        opt.step()

    rates = {"earlier": [], "current": []}
    try:
        for form in rates:  # warm-up
            use(form)
            step()
        for _ in range(a.rounds):
            for form in rates:
                use(form)
                start = time.perf_counter()
                for _ in range(a.steps):
                    step()
                rates[form].append(a.steps * a.batch / (time.perf_counter() - start))
    finally:
        use("current")
    for form, r in rates.items():
        print(f"{form:<8} " + " ".join(f"{v:.1f}" for v in r) + f" images/s; best {max(r):.1f}")
    print(f"current / earlier (best): {max(rates['current']) / max(rates['earlier']):.2f}x")


if __name__ == "__main__":
    main()
