"""The paper's ablations as sweeps of training runs that share one budget.

Three sweeps around one centre run (the 9L-S layout at rank factor 8, T = 1000):

* ``temperature``: T in {10, 100, 1000, 5000};
* ``rank``: rank factors f in {4, 8, 16, 32} (ranks [f, f, 2f x 7]);
* ``depth``: a conventional conv-BN-ReLU stem replacing the first {0, 1, 3, 5} layers
  (hybrids, explained exactly down to their first CoDA layer), and an all-conventional CNN
  baseline of about the same number of parameters ("cifar10-cnn").

Every run trains with the same :data:`SWEEP_BUDGET`; the centre run is shared by all three
sweeps. Training is resumable and sequential, so one background command finishes a sweep
over several sessions::

    nohup python -m coda.sweeps train temperature rank depth > sweeps.log 2>&1 &
    python -m coda.sweeps status
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from coda.checkpoint import load_checkpoint
from coda.data import PROJECT_ROOT
from coda.train import TrainConfig, train

SWEEP_BUDGET = dict(epochs=5, batch_size=64, lr=1e-3, schedule="cosine", warmup_epochs=0.5, seed=0)
TEMPERATURES = (10, 100, 1000, 5000)
RANK_FACTORS = (4, 8, 16, 32)
STEM_DEPTHS = (0, 1, 3, 5)
SWEEPS = ("temperature", "rank", "depth")
RUNS_DIR = PROJECT_ROOT / "runs" / "sweeps"


def run_name(rank_factor: int = 8, temperature: float = 1000, stem_depth: int = 0, cnn: bool = False) -> str:
    """The name of a sweep run, e.g. ``sweep-9L-S-f8-stem3-T1000`` (ends in -T<temperature>)."""
    if cnn:
        return "sweep-cnn-T64"
    stem = f"-stem{stem_depth}" if stem_depth else ""
    return f"sweep-9L-S-f{rank_factor}{stem}-T{temperature:g}"


def _config(model: str = "cifar10-9L-S", **overrides) -> TrainConfig:
    return TrainConfig(model=model, model_overrides=overrides, **SWEEP_BUDGET)


def sweep_runs(sweep: str) -> dict[str, TrainConfig]:
    """The runs of one sweep, ``{run name: TrainConfig}``, in the order they are trained."""
    if sweep == "temperature":
        return {run_name(temperature=t): _config(rank_factor=8, temperature=float(t)) for t in TEMPERATURES}
    if sweep == "rank":
        return {run_name(rank_factor=f): _config(rank_factor=f, temperature=1000.0) for f in RANK_FACTORS}
    if sweep == "depth":
        runs = {
            run_name(stem_depth=d): _config(rank_factor=8, temperature=1000.0, **({"stem_depth": d} if d else {}))
            for d in STEM_DEPTHS
        }
        runs[run_name(cnn=True)] = _config("cifar10-cnn")
        return runs
    raise ValueError(f"unknown sweep {sweep!r}; expected one of {SWEEPS}")


def all_runs(sweeps: list[str] | tuple[str, ...] = SWEEPS) -> dict[str, TrainConfig]:
    """The runs of several sweeps, each shared run (the centre) once."""
    runs: dict[str, TrainConfig] = {}
    for sweep in sweeps:
        for name, cfg in sweep_runs(sweep).items():
            if name in runs and runs[name] != cfg:
                raise ValueError(f"run {name} is defined twice with different configs")
            runs[name] = cfg
    return runs


def run_status(name: str, cfg: TrainConfig, runs_dir: Path = RUNS_DIR) -> dict:
    """``{"name", "epochs_done", "epochs", "finished", "test_accuracy"}`` of one run."""
    path = Path(runs_dir) / name / "last.pt"
    status = {"name": name, "epochs_done": 0, "epochs": cfg.epochs, "finished": False, "test_accuracy": None}
    if path.exists():
        ckpt = load_checkpoint(path)
        if ckpt["config"] != cfg.to_dict():
            raise ValueError(f"{path} holds a run of another config; move it away or delete it")
        status["epochs_done"] = ckpt["epoch"]
        status["finished"] = ckpt["epoch"] >= cfg.epochs
        if ckpt["history"]:
            status["test_accuracy"] = ckpt["history"][-1]["test_accuracy"]
    return status


def train_sweeps(sweeps, runs_dir: Path = RUNS_DIR, data_root=None, device=None, progress=True) -> None:
    """Train (or resume) every unfinished run of ``sweeps``, one after the other."""
    for name, cfg in all_runs(sweeps).items():
        if run_status(name, cfg, runs_dir)["finished"]:
            continue
        print(f"== {name}: {json.dumps(dataclasses.asdict(cfg))}", flush=True)
        out = Path(runs_dir) / name
        out.mkdir(parents=True, exist_ok=True)
        train(cfg, out, device=device, data_root=data_root, progress=progress)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m coda.sweeps", description="Train the ablation sweeps.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (resume) every unfinished run of the sweeps")
    t.add_argument("sweeps", nargs="+", choices=SWEEPS)
    t.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    t.add_argument("--data", help="data folder (default: $CODA_DATA, else data/)")
    t.add_argument("--device")
    s = sub.add_parser("status", help="epochs done and test accuracy of every run")
    s.add_argument("sweeps", nargs="*", help=f"some of {SWEEPS} (default: all)")
    s.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    a = p.parse_args(argv)
    if a.command == "train":
        train_sweeps(a.sweeps, a.runs_dir, a.data, a.device)
    else:
        for name, cfg in all_runs(a.sweeps or SWEEPS).items():
            st = run_status(name, cfg, a.runs_dir)
            acc = "-" if st["test_accuracy"] is None else f"{st['test_accuracy']:.4f}"
            print(f"{name:32s} {st['epochs_done']:3d}/{st['epochs']} epochs  test accuracy {acc}")


if __name__ == "__main__":
    main()
