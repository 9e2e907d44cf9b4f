"""The reproduction's recipe study: which training recipe gives the most localisation per CPU-hour.

The paper's 9L-S (rank factor 32, T = 1000) localises at 0.912 after 200 GPU epochs at batch
16. A CPU cannot repeat that budget, so the study measures, for a few candidate recipes, how
test accuracy and localisation grow with the CPU time spent, and the best one becomes the
long run. Every recipe continues one of the shipped 5-epoch runs of the rank sweep
(``sweep-9L-S-f16-T1000``, ``sweep-9L-S-f32-T1000``) with a fresh Adam optimiser, so the
study's CPU-hours are spent beyond those five epochs; its starting point is that run's
evaluation in ``results/sweeps/``.

Each recipe trains resumably in ``runs/recipes/<name>/`` and is evaluated (test accuracy on
the 10,000 test images; localisation on 100 grids) each time another ``--eval-every``
CPU-hours of training have passed; the rows go to ``results/recipes/<name>.json``::

    OMP_NUM_THREADS=1 nohup python -m coda.recipes train f32-b16-paper --cpu-hours 1 > f32.log 2>&1 &
    python -m coda.recipes status          # CPU-hours, epochs, last accuracy and localisation
    python -m coda.recipes table           # the markdown table of every evaluated row
    python -m coda.recipes compare f32-b64-cosine f16-b64-cosine   # two runs at equal epochs (and on all 500 grids)
    python -m coda.recipes figure          # figures/recipes.png: localisation against CPU-hours
    python -m coda.recipes prefixes results/NAME   # localisation over the first 10, 50, ... 500 grids
    python -m coda.recipes average --out avg.pt a.pt b.pt ...   # weight averaging of one run's states
    python -m coda.recipes score avg.pt    # any checkpoint's accuracy and localisation, as a row

Rerunning ``train`` with a larger ``--cpu-hours`` continues the same run (that is how the
chosen recipe becomes the long run). Its chunks end at epoch boundaries, and the compact states
after each of the run's last four epochs stay in ``runs/recipes/<name>/epoch-<e>.pt``, for the
weight average that the run's end is checked against (``average`` on those four files). A run
outlives its machine only through git: ``python -m coda.recipes save NAME`` writes its state
as a compact checkpoint (float16 weights, no optimiser state;
:func:`coda.train.compact_checkpoint`) to ``data/training/recipes/<name>/last.pt``, to be
committed, and ``train`` on a machine without ``runs/recipes/<name>/`` continues from it with a
fresh Adam whose learning rate is ramped up again over a quarter epoch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from coda import cli
from coda.checkpoint import load_checkpoint, write_json
from coda.data import PROJECT_ROOT, ImageDataset, load_cifar10
from coda.inference import predict
from coda.metrics import grids_from_logits, localisation_scores
from coda.models import CoDANet
from coda.train import TrainConfig, average_checkpoints, compact_checkpoint, train

RUNS_DIR = PROJECT_ROOT / "runs" / "recipes"
STATE_DIR = PROJECT_ROOT / "data" / "training" / "recipes"  # committed compact states (save)
RESULTS_DIR = PROJECT_ROOT / "results" / "recipes"
SWEEP_RESULTS = PROJECT_ROOT / "results" / "sweeps" / "sweeps.json"
EVALUATIONS_DIR = PROJECT_ROOT / "results"  # coda.evaluate's folders of shipped models
SHIPPED = {"f16-b64-cosine": "cifar10-9L-S-f16-T1000"}  # finished runs and the model each became
N_GRIDS = 100
TEST_SUBSET = 2000  # the trainer's per-epoch accuracy; the evaluation rows use all 10,000 images


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A candidate recipe: its training config and why it is a candidate."""

    name: str
    why: str
    config: TrainConfig

    @property
    def start(self) -> str:
        return self.config.init_from


def _recipe(name: str, rank_factor: int, batch: int, schedule: str, lr: float, epochs: int, why: str) -> Recipe:
    cfg = TrainConfig(model="cifar10-9L-S", model_overrides={"rank_factor": rank_factor, "temperature": 1000.0},
                      epochs=epochs, batch_size=batch, lr=lr, schedule=schedule, warmup_epochs=0.25,
                      precision="auto", seed=0, test_subset=TEST_SUBSET,
                      init_from=f"sweep-9L-S-f{rank_factor}-T1000")
    return Recipe(name, why, cfg)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    _recipe("f32-b16-paper", 32, 16, "paper", 2.5e-4, 200,
            "the paper's recipe: rank factor 32, batch 16, Adam 2.5e-4 divided by 1.5 every 30 epochs"),
    _recipe("f16-b16-paper", 16, 16, "paper", 2.5e-4, 200,
            "the paper's optimiser at half the rank: half the CPU time per image"),
    _recipe("f32-b64-cosine", 32, 64, "cosine", 1e-3, 60,
            "the project's sweep optimiser (batch 64, Adam 1e-3, cosine over 60 epochs) at rank factor 32"),
    _recipe("f16-b64-cosine", 16, 64, "cosine", 1e-3, 60,
            "the project's sweep optimiser at rank factor 16"),
    _recipe("f32-b16-cosine", 32, 16, "cosine", 5e-4, 60,
            "batch 16 (four times the steps per image) with a cosine decay over 60 epochs"),
)}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; expected one of {sorted(RECIPES)}")
    return RECIPES[name]


# ----- evaluation rows ---------------------------------------------------------------------


def evaluate_row(model: CoDANet, test: ImageDataset, n_grids: int = N_GRIDS, seed: int = 0) -> dict:
    """Test accuracy on ``test`` and localisation (mean, median) of the contributions on
    ``n_grids`` grids built from the same logits (the project's pointing game, seed ``seed``)."""
    start, cpu = time.perf_counter(), time.process_time()
    logits = predict(model, test.images)
    accuracy = (logits.argmax(1) == test.labels).float().mean().item()
    grids = grids_from_logits(logits, test, n_grids, seed=seed)
    loc = localisation_scores(model, grids, "coda") if len(grids) else None
    return {"test_accuracy": accuracy, "localisation_mean": loc and loc.mean, "localisation_median": loc and loc.median,
            "n_grids": len(grids), "n_test": len(test), "eval_seconds": round(time.perf_counter() - start, 1),
            "eval_cpu_seconds": round(time.process_time() - cpu, 1)}


def score_checkpoint(path: str | Path, n_grids: int = N_GRIDS, test: ImageDataset | None = None,
                     data_root=None) -> dict:
    """:func:`evaluate_row` of the model in the trainer checkpoint ``path`` (full, compact or
    averaged by :func:`coda.train.average_checkpoints`), with the checkpoint's epoch, step,
    CPU-hours and, for an average, its sources: the study's measurement for a checkpoint
    that is not a row of a recipe's run."""
    from coda.pretrained import model_from_checkpoint

    ckpt = load_checkpoint(path)
    test = load_cifar10("test", data_root) if test is None else test
    return {"checkpoint": str(path), "epoch": ckpt.get("epoch"), "step": ckpt.get("step"),
            "cpu_hours": round(ckpt.get("cpu_time", 0.0) / 3600, 3), "averaged_from": ckpt.get("averaged_from"),
            **evaluate_row(model_from_checkpoint(ckpt), test, n_grids)}


def start_row(recipe: Recipe, sweep_results: Path = SWEEP_RESULTS) -> dict | None:
    """The evaluation of the recipe's starting model, read from the rank sweep's results."""
    if not sweep_results.exists():
        return None
    for row in json.loads(sweep_results.read_text())["rows"]:
        if row["name"] == recipe.start:
            return {"epoch": 0, "step": 0, "images": 0, "cpu_hours": 0.0, "wall_hours": 0.0,
                    "test_accuracy": row["test_accuracy"], "localisation_mean": row["localisation_mean"],
                    "localisation_median": row["localisation_median"], "n_grids": row["n_grids"],
                    "n_test": 10_000, "source": f"{recipe.start} (results/sweeps/sweeps.json)"}
    return None


def read_rows(name: str, results_dir: Path = RESULTS_DIR) -> list[dict]:
    """The evaluated rows of a recipe, in training order (the starting point first)."""
    path = Path(results_dir) / f"{name}.json"
    if not path.exists():
        return []
    record = json.loads(path.read_text())
    if not isinstance(record, dict) or not isinstance(record.get("rows"), list):
        raise ValueError(f"{path}: expected a JSON object with a list 'rows'")
    return record["rows"]


def _write_rows(recipe: Recipe, rows: list[dict], results_dir: Path) -> None:
    rows = sorted(rows, key=lambda r: r["images"])
    write_json({"recipe": recipe.name, "why": recipe.why, "config": recipe.config.to_dict(), "rows": rows},
               Path(results_dir) / f"{recipe.name}.json")


def record_checkpoint(recipe: Recipe, ckpt_path: Path, test: ImageDataset, results_dir: Path = RESULTS_DIR,
                      n_grids: int = N_GRIDS, n_train: int = 50_000) -> dict:
    """Evaluate the model in ``ckpt_path`` (a trainer checkpoint of a run on ``n_train``
    training images) and add its row to the results."""
    from coda.pretrained import model_from_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    images = _images_seen(recipe.config, ckpt, n_train)
    row = {"epoch": ckpt["epoch"], "step": ckpt["step"], "images": images,
           "epochs_done": round(images / n_train, 3), "cpu_hours": round(ckpt.get("cpu_time", 0.0) / 3600, 3),
           "wall_hours": round(ckpt["wall_time"] / 3600, 3), "threads": torch.get_num_threads(),
           "machine": _machine_text(recipe.config), **evaluate_row(model, test, n_grids)}
    rows = [r for r in read_rows(recipe.name, results_dir) if r["images"] != images]
    start = start_row(recipe)
    if start is not None and not any(r["images"] == 0 for r in rows):
        rows.append(start)
    _write_rows(recipe, rows + [row], results_dir)
    return row


def _machine_text(cfg: TrainConfig) -> str:
    """The CPU and the precision this process trains ``cfg`` at, e.g. "AMD EPYC (AVX2), fp32":
    a row's CPU-hours mean different amounts of training on different machines."""
    from coda.hardware import cpu_info, resolve_precision

    info = cpu_info()
    return f"{info.model} ({info.isa}), {resolve_precision(cfg.precision, torch.device('cpu'))[0]}"


def _images_seen(cfg: TrainConfig, ckpt: dict, n_train: int) -> int:
    """Training images a checkpoint has seen (epochs of ``n_train // batch_size`` full batches)."""
    steps_per_epoch = min(cfg.train_subset or n_train, n_train) // cfg.batch_size
    return (ckpt["epoch"] * steps_per_epoch + ckpt["step"]) * cfg.batch_size


# ----- training ----------------------------------------------------------------------------


AVERAGED_EPOCHS = 4  # the run's end is checked against the weight average of its last four epochs


def end_epochs(recipe: Recipe) -> tuple[int, ...]:
    """The epochs after which a run of ``recipe`` keeps its state for the end's weight average:
    its last :data:`AVERAGED_EPOCHS` (epoch ``e`` = the state after ``e`` epochs)."""
    last = recipe.config.epochs
    return tuple(range(max(1, last - AVERAGED_EPOCHS + 1), last + 1))


def keep_epoch_state(ckpt_path: Path, ckpt: Mapping, keep: Sequence[int]) -> Path | None:
    """Keep the trainer checkpoint ``ckpt`` (loaded from ``ckpt_path``) as the compact state
    ``epoch-<e>.pt`` beside it if it stands at the end of an epoch ``e`` in ``keep`` (step 0 of
    the next) and none is kept yet. Returns the path written, or ``None``."""
    kept = Path(ckpt_path).parent / f"epoch-{ckpt['epoch']}.pt"
    if ckpt["step"] != 0 or ckpt["epoch"] not in keep or kept.exists():
        return None
    return compact_checkpoint(ckpt_path, kept)


def chunk_to_epoch_end(ckpt: Mapping | None, chunk_steps: int, steps_per_epoch: int) -> int:
    """The steps of the next chunk: ``chunk_steps``, cut short where the epoch ends first."""
    step = 0 if ckpt is None else ckpt["step"]
    return min(chunk_steps, steps_per_epoch - step)


def train_recipe(name: str, cpu_hours: float, eval_every: float = 0.5, chunk_steps: int = 200,
                 runs_dir: Path = RUNS_DIR, results_dir: Path = RESULTS_DIR, data_root=None,
                 train_data: ImageDataset | None = None, test_data: ImageDataset | None = None,
                 n_grids: int = N_GRIDS, state_dir: Path = STATE_DIR) -> list[dict]:
    """Train recipe ``name`` until its run has spent ``cpu_hours`` of training CPU time.

    Trains in chunks of ``chunk_steps`` optimiser steps, cut short at the end of an epoch;
    each ends with a checkpoint, and those after the run's last epochs are kept
    (:func:`end_epochs`, :func:`keep_epoch_state`). A checkpoint past another multiple of
    ``eval_every`` CPU-hours than the last evaluated row, and the last one of the run or the
    budget, is evaluated (:func:`record_checkpoint`; its
    CPU time is not counted as training), also when that is found at a restart. Resumable:
    the run lives in ``runs_dir/<name>/last.pt``; where that is missing (a fresh machine) and
    :func:`save_state` committed one in ``state_dir/<name>/last.pt``, the run continues from
    it. Returns the recipe's rows.
    """
    recipe = get_recipe(name)
    if not cpu_hours > 0 or not eval_every > 0 or chunk_steps < 1:
        raise ValueError(f"cpu_hours and eval_every must be > 0 and chunk_steps >= 1, got "
                         f"{cpu_hours}, {eval_every}, {chunk_steps}")
    out = Path(runs_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    train_data = load_cifar10("train", data_root) if train_data is None else train_data
    test_data = load_cifar10("test", data_root) if test_data is None else test_data
    ckpt_path = out / "last.pt"
    saved = Path(state_dir) / name / "last.pt"
    if not ckpt_path.exists() and saved.exists():  # a fresh machine: continue from the committed state
        shutil.copyfile(saved, ckpt_path)
        print(f"{name}: continuing from {saved} (a compact state: fresh optimiser, learning rate re-warmed)",
              flush=True)
    trained = False  # whether this call has trained a chunk yet
    steps_per_epoch, keep = len(train_data) // recipe.config.batch_size, end_epochs(recipe)
    while True:
        ckpt = load_checkpoint(ckpt_path) if ckpt_path.exists() else None
        spent = ckpt.get("cpu_time", 0.0) / 3600 if ckpt is not None else 0.0
        finished = ckpt is not None and ckpt["epoch"] >= recipe.config.epochs
        if ckpt is not None:
            keep_epoch_state(ckpt_path, ckpt, keep)
            rows = read_rows(name, results_dir)
            if _evaluation_due(rows, _images_seen(recipe.config, ckpt, len(train_data)), spent, eval_every,
                               end=finished or (trained and spent >= cpu_hours)):
                row = record_checkpoint(recipe, ckpt_path, test_data, results_dir, n_grids, len(train_data))
                print(json.dumps(row), flush=True)
            if trained:
                print(f"{name}: {spent:.3f} CPU-hours, epoch {ckpt['epoch']} step {ckpt['step']}", flush=True)
        if finished or spent >= cpu_hours:
            break
        steps = chunk_to_epoch_end(ckpt, chunk_steps, steps_per_epoch)
        train(recipe.config, out, train_data=train_data, test_data=test_data,
              stop_after_steps=steps, save_every=chunk_steps, progress=False)
        trained = True
    return read_rows(name, results_dir)


def _evaluation_due(rows: Sequence[Mapping], images: int, cpu_hours: float, eval_every: float, end: bool) -> bool:
    """Whether the checkpoint that has seen ``images`` training images after ``cpu_hours`` of
    training gets an evaluation row: not if a row has it already; yes at the end of the run
    or budget (``end``) and whenever it lies past a multiple of ``eval_every`` CPU-hours that
    the last evaluated row had not reached. Reading that from the rows, not from the chunk
    just trained, means a process killed during an evaluation leaves it to the restart.
    """
    if any(r["images"] == images for r in rows):
        return False
    last = max((r["cpu_hours"] for r in rows), default=0.0)
    return end or int(cpu_hours / eval_every) > int(last / eval_every)


def save_state(name: str, runs_dir: Path = RUNS_DIR, state_dir: Path = STATE_DIR) -> Path:
    """Write recipe ``name``'s run as a compact checkpoint (:func:`coda.train.compact_checkpoint`:
    float16 weights, no optimiser state) to ``state_dir/<name>/last.pt``, to be committed, so
    that ``train`` continues it on a fresh machine. Returns the path written."""
    src = Path(runs_dir) / name / "last.pt"
    if not src.exists():
        raise ValueError(f"recipe {name!r} has no run to save: {src} does not exist")
    return compact_checkpoint(src, Path(state_dir) / name / "last.pt")


# ----- reporting ---------------------------------------------------------------------------


def markdown_table(results_dir: Path = RESULTS_DIR) -> str:
    """Every evaluated row of every recipe as one markdown table."""
    lines = ["| recipe | epochs beyond the start | CPU-hours | test accuracy | localisation (mean, median) | grids |",
             "|---|---:|---:|---:|---:|---:|"]
    for name in RECIPES:
        for r in read_rows(name, results_dir):
            loc = "-" if r["localisation_mean"] is None else f"{r['localisation_mean']:.3f} ({r['localisation_median']:.3f})"
            lines.append(f"| {name} | {r.get('epochs_done', 0):.2f} | {r['cpu_hours']:.2f} | "
                         f"{100 * r['test_accuracy']:.2f}% | {loc} | {r['n_grids']} |")
    return "\n".join(lines)


def at_equal_epochs(rows: Sequence[Mapping], reference: Sequence[Mapping], accuracy: bool = True) -> list[dict]:
    """Each evaluated row of one run beside another run at the same ``epochs_done``.

    The reference's accuracy and localisation are read linearly between its two rows that
    bracket the epoch (its nearest end outside its range). Returns one dict per row of
    ``rows`` with a localisation: ``epochs_done``, ``cpu_hours``, ``test_accuracy``,
    ``localisation_mean``, the reference's ``reference_accuracy`` and
    ``reference_localisation``, the differences ``accuracy_lead`` and ``localisation_lead``, and
    ``reference_held``: the ``epochs_done`` of the reference's row whose values were held because
    the epoch lies outside the reference's range, else None.
    With ``accuracy=False`` (rows that have none, like :func:`full_protocol_rows`) the three
    accuracy keys are left out.
    """
    ref = sorted((r for r in reference if r["localisation_mean"] is not None), key=lambda r: r.get("epochs_done", 0.0))
    if len(ref) < 2:
        raise ValueError(f"the reference run needs at least 2 rows with a localisation, got {len(ref)}")
    epochs = [r.get("epochs_done", 0.0) for r in ref]
    out = []
    for r in rows:
        if r["localisation_mean"] is None:
            continue
        x = r.get("epochs_done", 0.0)
        ref_loc = float(np.interp(x, epochs, [q["localisation_mean"] for q in ref]))
        held = epochs[0] if x < epochs[0] else epochs[-1] if x > epochs[-1] else None
        c = {"epochs_done": x, "cpu_hours": r["cpu_hours"], "localisation_mean": r["localisation_mean"],
             "reference_localisation": ref_loc, "localisation_lead": r["localisation_mean"] - ref_loc,
             "reference_held": held}
        if accuracy:
            ref_acc = float(np.interp(x, epochs, [q["test_accuracy"] for q in ref]))
            c.update(test_accuracy=r["test_accuracy"], reference_accuracy=ref_acc,
                     accuracy_lead=r["test_accuracy"] - ref_acc)
        out.append(c)
    return out


def comparison_table(name: str, reference: str, results_dir: Path = RESULTS_DIR) -> str:
    """``at_equal_epochs`` of two recipes' rows as a markdown table; below it a second table for
    their checkpoints on the full protocol (:func:`full_protocol_rows`), where the first recipe
    has any and the reference at least two. A reference value held at the reference's first or
    last row (the epoch outside its range) says so in its cell."""
    lines = [f"| epochs beyond the start | CPU-hours | {name} | {reference} at equal epochs | lead |",
             "|---:|---:|---:|---:|---:|"]
    for c in at_equal_epochs(read_rows(name, results_dir), read_rows(reference, results_dir)):
        lines.append(f"| {c['epochs_done']:.2f} | {c['cpu_hours']:.2f} | "
                     f"{100 * c['test_accuracy']:.2f}%, {c['localisation_mean']:.3f} | "
                     f"{100 * c['reference_accuracy']:.2f}%, {c['reference_localisation']:.3f}{_held(c)} | "
                     f"{100 * c['accuracy_lead']:+.1f} points, {c['localisation_lead']:+.3f} |")
    full = [r for r in full_protocol_rows(name, results_dir) if r["localisation_mean"] is not None]
    reference_full = full_protocol_rows(reference, results_dir)
    if full and len(reference_full) >= 2:
        lines += ["", f"| epochs beyond the start | CPU-hours | {name}, all grids | {reference} at equal epochs "
                      f"(linear between its {len(reference_full)} such checkpoints) | lead |",
                  "|---:|---:|---:|---:|---:|"]
        for c, r in zip(at_equal_epochs(full, reference_full, accuracy=False), full, strict=True):
            lines.append(f"| {c['epochs_done']:.2f} | {c['cpu_hours']:.2f} | {c['localisation_mean']:.3f} "
                         f"({r['n_grids']} grids) | {c['reference_localisation']:.3f}{_held(c)} | "
                         f"{c['localisation_lead']:+.3f} |")
    return "\n".join(lines)


def _held(c: Mapping) -> str:
    """A table cell's note where ``at_equal_epochs`` held the reference's values at one of its rows."""
    return "" if c["reference_held"] is None else f" (held: its row at {c['reference_held']:.2f} epochs)"


def status(runs_dir: Path = RUNS_DIR, results_dir: Path = RESULTS_DIR) -> list[dict]:
    """Per recipe: CPU-hours and epochs trained (from its checkpoint) and its last evaluated row."""
    out = []
    for name in RECIPES:
        path = Path(runs_dir) / name / "last.pt"
        ckpt = load_checkpoint(path) if path.exists() else None
        rows = read_rows(name, results_dir)
        out.append({"recipe": name,
                    "cpu_hours": None if ckpt is None else round(ckpt.get("cpu_time", 0.0) / 3600, 3),
                    "epoch": None if ckpt is None else ckpt["epoch"], "step": None if ckpt is None else ckpt["step"],
                    "last_row": rows[-1] if rows else None})
    return out


PREFIX_GRIDS = (10, 50, 100, 200, 300, 400, 500)


def full_protocol_rows(name: str, results_dir: Path = RESULTS_DIR, n_train: int = 50_000) -> list[dict]:
    """The recipe's checkpoints evaluated on the full protocol, in training order.

    Each is an output folder of ``python -m coda.evaluate --methods coda --tasks localisation
    --n-grids 500 --out results/recipes/<name>-<H>h-500grids``; its ``results.json`` names the
    evaluated checkpoint's ``epoch``, ``step`` and ``cpu_hours`` (recorded by
    :func:`coda.pretrained.load_model`).

    Returns
    -------
    One dict per folder: ``cpu_hours``, ``epochs_done`` (epochs beyond the start, as the
    study's rows count them), ``localisation_mean``, ``localisation_median``, ``n_grids`` and
    ``folder``.

    Raises ``ValueError`` if a folder's model record lacks the training progress.
    """
    recipe = get_recipe(name)
    rows = []
    for path in sorted(Path(results_dir).glob(f"{name}-*h-*grids/results.json")):
        record = json.loads(path.read_text())
        localisation = record.get("results", {}).get("coda/localisation")
        if localisation is None:
            continue
        model = record.get("model") or {}
        missing = sorted({"epoch", "step", "cpu_hours"} - {k for k, v in model.items() if v is not None})
        if missing:
            raise ValueError(f"{path}: the model record has no {missing} (expected the checkpoint's training "
                             f"progress, as coda.evaluate records it)")
        images = _images_seen(recipe.config, model, n_train)
        summary = localisation["summary"]
        rows.append({"cpu_hours": model["cpu_hours"], "epochs_done": round(images / n_train, 3),
                     "localisation_mean": summary["mean"], "localisation_median": summary["median"],
                     "n_grids": summary["n_grids"], "folder": path.parent.name})
    return sorted(rows, key=lambda r: r["cpu_hours"])


def shipped_full_protocol(name: str, results_dir: Path = RESULTS_DIR,
                          evaluations_dir: Path = EVALUATIONS_DIR) -> dict | None:
    """The shipped model a finished run became (:data:`SHIPPED`), on the full protocol.

    Its weights average the run's last four epochs, so it stands at the run's last evaluated
    row (its ``cpu_hours`` and ``epochs_done``); its localisation is the CoDA row of
    ``evaluations_dir/<model>/results.json`` (``python -m coda.evaluate --model <model>``).
    None where the run shipped nothing or that evaluation is missing.
    """
    model = SHIPPED.get(name)
    if model is None:
        return None
    rows, path = read_rows(name, results_dir), Path(evaluations_dir) / model / "results.json"
    if not rows or not path.exists():
        return None
    localisation = json.loads(path.read_text()).get("results", {}).get("coda/localisation")
    if localisation is None:
        return None
    last, summary = max(rows, key=lambda r: r["images"]), localisation["summary"]
    return {"model": model, "cpu_hours": last["cpu_hours"], "epochs_done": last.get("epochs_done", 0.0),
            "localisation_mean": summary["mean"], "localisation_median": summary["median"],
            "n_grids": summary["n_grids"]}


def prefix_localisation(folder: str | Path, ns: Sequence[int] = PREFIX_GRIDS, method: str = "coda") -> list[dict]:
    """Mean and median localisation over the first ``n`` grids, for each ``n`` in ``ns``.

    The protocol builds its grids from the most confidently classified images first, so the
    first grids are the easiest: the study's 100-grid rows are the first 100 of the 500 of the
    full protocol. ``folder`` is an output folder of ``python -m coda.evaluate`` (read with
    :func:`coda.evaluate.read_results`: its scores are stored grid by grid); the rows say how
    the mean falls as harder grids are added.

    Returns
    -------
    One dict per ``n`` with at most as many grids as the folder has: ``{"n": n, "mean": float,
    "median": float, "cells": number of scores}``.

    Raises ``ValueError`` if the folder has no ``results.json`` or no localisation scores for
    ``method``.
    """
    import numpy as np

    from coda.evaluate import read_results

    results = read_results(folder)
    if results is None:
        raise ValueError(f"{folder}: no results.json (expected an output folder of `python -m coda.evaluate`)")
    if method not in results["scores"] or method not in results["localisation"]:
        raise ValueError(f"{folder}: no localisation scores for method {method!r}")
    per_grid = results["scores"][method].reshape(results["localisation"][method]["n_grids"], -1)  # (grids, cells)
    return [{"n": int(n), "mean": float(per_grid[:n].mean()), "median": float(np.median(per_grid[:n])),
             "cells": int(per_grid[:n].size)} for n in ns if n <= len(per_grid)]


def plot_recipe_study(rows_by_recipe: Mapping[str, Sequence[Mapping]], target_localisation: float | None = 0.85,
                      target_accuracy: float | None = 0.90, published_localisation: float | None = 0.912,
                      full_protocol: Mapping[str, Sequence[Mapping]] | None = None,
                      shipped: Mapping[str, Mapping | None] | None = None):
    """Localisation and test accuracy per recipe, against training CPU-hours (top row) and
    against the epochs trained beyond the start (bottom row).

    CPU-hours are what the study ranks recipes by, but one CPU-hour buys about twice the
    images on a CPU with native bf16 as on one without; the bottom row compares recipes run
    on different machines by the images they saw.

    Parameters
    ----------
    rows_by_recipe : ``{recipe name: rows}`` as :func:`read_rows` returns them: dicts with
        ``cpu_hours``, ``epochs_done`` (absent: 0), ``localisation_mean`` (None where no grid
        could be built), ``test_accuracy``. Recipes without rows are left out.
    target_localisation, target_accuracy, published_localisation : drawn dashed (targets),
        dotted (paper).
    full_protocol : ``{recipe name: rows}`` as :func:`full_protocol_rows` returns them: the same
        runs evaluated on all 500 grids, drawn as open squares in the recipe's colour (the
        study's rows use the first, most confident 100, which score higher).
    shipped : ``{recipe name: point}`` as :func:`shipped_full_protocol` returns them: the model
        a finished run became, on the full protocol, drawn as a star in the recipe's colour.

    Returns
    -------
    The figure (2 x 2 panels: localisation and accuracy, by CPU-hours and by epochs).
    """
    import matplotlib.pyplot as plt

    from coda import plotting

    fig, axes = plt.subplots(2, 2, figsize=(10, 6.4))
    drawn = [(name, rows) for name, rows in rows_by_recipe.items() if rows]
    for row_axes, x_key, x_label in ((axes[0], "cpu_hours", "training CPU-hours beyond the 5-epoch start"),
                                     (axes[1], "epochs_done", "epochs trained beyond the 5-epoch start")):
        ax_loc, ax_acc = row_axes
        for i, (name, rows) in enumerate(drawn):
            rows = sorted(rows, key=lambda r: r["cpu_hours"])
            colour = plotting.PALETTE[i % len(plotting.PALETTE)]
            grids = sorted({r["n_grids"] for r in rows if r.get("n_grids")})
            label = f"{name} ({grids[0]} grids)" if len(grids) == 1 else name
            style = dict(color=colour, marker="o", label=label)
            located = [r for r in rows if r["localisation_mean"] is not None]
            ax_loc.plot([r.get(x_key, 0.0) for r in located], [r["localisation_mean"] for r in located], **style)
            ax_acc.plot([r.get(x_key, 0.0) for r in rows], [100 * r["test_accuracy"] for r in rows], **style)
            full = sorted((full_protocol or {}).get(name, ()), key=lambda r: r["cpu_hours"])
            if full:
                ax_loc.plot([r[x_key] for r in full], [r["localisation_mean"] for r in full], color=colour, ls="--",
                            marker="s", mfc="white", label=f"{name} (all {full[-1]['n_grids']} grids)")
            end = (shipped or {}).get(name)
            if end is not None:
                ax_loc.plot([end[x_key]], [end["localisation_mean"]], color=colour, ls="none", marker="*", ms=13,
                            mec="black", mew=0.6, label=f"shipped as {end['model']}: its last 4 epochs averaged "
                                                       f"(all {end['n_grids']} grids)")
        if target_localisation is not None:
            ax_loc.axhline(target_localisation, color="0.4", ls="--", lw=1,
                           label=f"target {target_localisation:g} (500 grids)")  # the target is on the full protocol
        if published_localisation is not None:
            ax_loc.axhline(published_localisation, color="0.4", ls=":", lw=1, label=f"paper {published_localisation:g}")
        if target_accuracy is not None:
            ax_acc.axhline(100 * target_accuracy, color="0.4", ls="--", lw=1, label="_target")
            ax_acc.annotate(f"target {100 * target_accuracy:g}%", (0.01, 100 * target_accuracy),
                            xycoords=("axes fraction", "data"), xytext=(0, -12), textcoords="offset points",
                            fontsize="small", color="0.3")
        ax_loc.set(xlabel=x_label, ylabel="localisation (mean)")
        ax_acc.set(xlabel=x_label, ylabel="test accuracy (%)")
    axes[0, 0].set_title("Localisation of the contributions")
    axes[0, 1].set_title("Test accuracy (10,000 images)")
    handles, labels = axes[0, 0].get_legend_handles_labels()  # one legend, below the panels, off the data
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 3), fontsize="small", frameon=False)
    return fig


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=cli.prog("recipes"), description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the candidate recipes and why")
    t = sub.add_parser("train", help="train a recipe up to a CPU-time budget, evaluating as it goes")
    t.add_argument("name", choices=sorted(RECIPES))
    t.add_argument("--cpu-hours", type=float, required=True, help="total training CPU-hours of the run")
    t.add_argument("--eval-every", type=float, default=0.5, help="CPU-hours between evaluations")
    t.add_argument("--chunk-steps", type=int, default=200, help="optimiser steps between checkpoints")
    t.add_argument("--data", help="data folder (default: $CODA_DATA, else data/)")
    s = sub.add_parser("save", help="write a recipe's run as a compact state to commit (data/training/recipes/)")
    s.add_argument("name", choices=sorted(RECIPES))
    sub.add_parser("status", help="CPU-hours, epochs and the last evaluation of every recipe")
    sub.add_parser("table", help="the markdown table of every evaluated row")
    q = sub.add_parser("compare", help="one recipe's rows beside another's at equal epochs (linear between its rows), then their 500-grid evaluations")
    q.add_argument("name", choices=sorted(RECIPES))
    q.add_argument("reference", choices=sorted(RECIPES))
    g = sub.add_parser("prefixes", help="localisation over the first n grids of a coda.evaluate run")
    g.add_argument("folder", help="an output folder of `python -m coda.evaluate`")
    g.add_argument("--method", default="coda")
    v = sub.add_parser("average", help="average the weights of several checkpoints of one run")
    v.add_argument("checkpoints", nargs="+", help="coda.train checkpoints (full or compact) of one model")
    v.add_argument("--out", required=True, help="the averaged compact checkpoint to write")
    c = sub.add_parser("score", help="a checkpoint's study row: accuracy (10,000 test images), localisation (100 grids)")
    c.add_argument("checkpoint", help="a coda.train checkpoint (full, compact or averaged)")
    c.add_argument("--n-grids", type=int, default=N_GRIDS)
    c.add_argument("--data", help="data folder (default: $CODA_DATA, else data/)")
    f = sub.add_parser("figure", help="localisation and accuracy against CPU-hours")
    f.add_argument("--out", default=str(PROJECT_ROOT / "figures"))
    a = p.parse_args(argv)
    if a.command == "list":
        for r in RECIPES.values():
            print(f"{r.name:<16} {r.why}")
    elif a.command == "train":
        train_recipe(a.name, a.cpu_hours, a.eval_every, a.chunk_steps, data_root=a.data)
    elif a.command == "save":
        print(save_state(a.name))
    elif a.command == "average":
        print(average_checkpoints(a.checkpoints, a.out))
    elif a.command == "score":
        print(json.dumps(score_checkpoint(a.checkpoint, a.n_grids, data_root=a.data)))
    elif a.command == "status":
        for s in status():
            print(json.dumps(s))
    elif a.command == "table":
        print(markdown_table())
    elif a.command == "compare":
        print(comparison_table(a.name, a.reference))
    elif a.command == "prefixes":
        rows = prefix_localisation(a.folder, method=a.method)
        print("| first n grids | " + " | ".join(str(r["n"]) for r in rows) + " |")
        print("|---|" + "---:|" * len(rows))
        print("| mean (median) | " + " | ".join(f"{r['mean']:.3f} ({r['median']:.3f})" for r in rows) + " |")
    else:
        from coda import plotting

        plotting.use_style()  # the workbook's style, as the notebooks use it
        fig = plot_recipe_study({name: read_rows(name) for name in RECIPES},
                                full_protocol={name: full_protocol_rows(name) for name in RECIPES},
                                shipped={name: shipped_full_protocol(name) for name in RECIPES})
        plotting.save_figure(fig, "recipes", a.out)


if __name__ == "__main__":
    main()
