"""Evaluating a model's explanations: the command line, its cache of task results, the tables.

The metrics themselves (the grid pointing game, pixel removal, the :class:`~coda.metrics.Clock`)
live in :mod:`coda.metrics` and are importable from here as well; model loading is
:func:`coda.pretrained.load_model` (also importable from here). This module runs the metrics
over a model for a list of explainers (docs/method.md#evaluation-protocols), keeps each
(method, task) result in ``OUT/tasks/`` so that an interrupted run resumes, and writes the
CSV tables, ``results.json`` and the README's markdown table.

Command line (writes CSV tables, a JSON record and timings to ``--out``)::

    python -m coda.evaluate --model runs/NAME/last.pt --out results/NAME
    python -m coda.evaluate --model NAME --methods coda,grad,occ9 --smoke

``PUBLISHED`` holds the paper's numbers for reference (not measured here).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from coda import cli
from coda.checkpoint import load_checkpoint, load_data, save_data, write_json, write_text
from coda.data import PROJECT_ROOT, load_cifar10
from coda.explainers import EXPLAINERS, Explainer, get_explainer, implementation
from coda.hardware import cpu_info
from coda.inference import predict
from coda.metrics import (  # noqa: F401 (the metrics, importable from here as before)
    ORDERS,
    Clock,
    Grids,
    LocalisationResult,
    RemovalResult,
    as_explainer,
    cell_sums,
    confident_queues,
    grid_scores,
    grids_from_indices,
    grids_from_logits,
    localisation_scores,
    make_grids,
    pixel_removal,
    removal_masks,
    removal_points,
    removal_probabilities,
    sample_grid_indices,
    tile,
)
from coda.models import CoDANet
from coda.pretrained import load_model, model_name  # noqa: F401 (load_model: importable from here as before)

# The paper's numbers (CIFAR-10, 9L-S, T = 1000 unless stated), docs/method.md#published-numbers, keyed by
# the names of coda.explainers.EXPLAINERS. Reference data from the authors' result files,
# NOT results of this package: use it to mark the published values in tables and figures.
PUBLISHED: dict = {
    "source": "Boehle, Fritz, Schiele, CVPR 2021 and TPAMI (arXiv 2104.00032, 2109.13004); "
              "CIFAR-10, 9L-S, T = 1000, from the authors' result files (docs/method.md#published-numbers)",
    "localisation_mean": {"coda": 0.912, "occ9": 0.842, "gradcam": 0.726, "occ5": 0.564,
                          "intgrad": 0.155, "ixg": 0.144, "deeplift": 0.144, "grad": 0.144},
    "localisation_median": {"coda": 0.938, "occ9": 0.867, "gradcam": 0.743, "occ5": 0.567},
    "localisation_mean_coda_vs_temperature": {10: 0.314, 50: 0.445, 100: 0.637, 500: 0.840,
                                              1000: 0.912, 5000: 0.908},
    "localisation_chance_3x3": 1 / 9,
    "removal_start": 0.927,  # mean true-class probability with nothing removed
    "removal_mean": {"coda": 0.964, "occ5": 0.959, "occ9": 0.957, "gradcam": 0.877, "grad": 0.861,
                     "intgrad": 0.574, "ixg": 0.562, "deeplift": 0.562},
    "removal_at_25_percent": {"coda": 0.962, "gradcam": 0.842, "grad": 0.756, "ixg": 0.251},
    "removal_mean_coda_vs_temperature": {10: 0.801, 50: 0.856, 100: 0.865, 500: 0.951,
                                         1000: 0.964, 5000: 0.968},
}

DEFAULT_METHODS = ("coda", "grad", "ixg", "intgrad", "deeplift", "gradcam", "occ5", "occ9", "lime",
                   "guided_backprop")


# ----- the command line ----------------------------------------------------------------------


def _csv(header: list[str], rows: list[list]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[f"{v:.6g}" if isinstance(v, float) else v for v in row] for row in rows])
    return buffer.getvalue()


def localisation_tables(results: list[LocalisationResult], grids: list[Grids]) -> tuple[str, str]:
    """CSV texts: the summary per method and the score of every (grid, cell).

    ``grids[i]`` are the grids ``results[i]`` was scored on (methods may use different numbers).
    """
    summary = _csv(["method", "label", "grid_size", "n_grids", "n", "mean", "median"],
                   [[r.method, r.label, g.grid_size, len(g), r.scores.numel(), r.mean, r.median]
                    for r, g in zip(results, grids, strict=True)])
    rows = []
    for r, grid in zip(results, grids, strict=True):
        for g in range(len(grid)):
            for k in range(grid.n_cells):
                index = grid.indices[g, k].item() if grid.indices is not None else -1
                rows.append([r.method, g, k, grid.classes[g, k].item(), index, r.scores[g, k].item()])
    return summary, _csv(["method", "grid", "cell", "class", "image_index", "score"], rows)


def removal_table(results: list[RemovalResult]) -> str:
    """CSV text, one row per (method, order, point): the mean curve and its mean."""
    rows = [[r.method, r.label, r.order, r.probabilities.shape[0], n.item(), f.item(), p.item(), r.mean]
            for r in results for n, f, p in zip(r.n_removed, r.fraction_removed, r.curve, strict=True)]
    return _csv(["method", "label", "order", "n_images", "n_removed", "fraction_removed", "probability",
                 "curve_mean"], rows)


def timing_table(tasks: list[dict]) -> str:
    """CSV text: measured attribution time per method and task (``tasks`` from :func:`read_tasks`)."""
    rows = []
    for t in tasks:
        r = t["result"]
        n = r.n_attributions
        rows.append([r.method, r.label, t["settings"]["task"], t["image_size"], n, r.seconds,
                     r.seconds / n if n else math.nan, r.cpu_seconds / n if n else math.nan, t["device"],
                     t["threads"], _implementation(t), t.get("cpu", "")])
    return _csv(["method", "label", "task", "image_size", "n_attributions", "seconds", "seconds_per_attribution",
                 "cpu_seconds_per_attribution", "device", "threads", "implementation", "cpu"], rows)


def _implementation(task: dict) -> str:
    """What computed a stored result's attributions (:func:`coda.explainers.implementation`).

    Results stored before the record said so were all computed by captum, except the model's own
    contributions (``coda.occlusion`` came later)."""
    if "implementation" in task:
        return task["implementation"]
    return "coda" if task["settings"]["method"] == "coda" else "captum"


def versions() -> dict:
    """Versions of the software that produced a result."""
    import captum
    import numpy

    commit = cli.git_output(PROJECT_ROOT, "rev-parse", "HEAD")
    return {"python": platform.python_version(), "torch": str(torch.__version__), "captum": captum.__version__,
            "numpy": numpy.__version__, "platform": platform.platform(), "git_commit": commit}


def _parse_methods(text: str) -> list[str]:
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in EXPLAINERS]
    if unknown or not methods:
        raise ValueError(f"unknown method(s) {unknown}; expected a comma-separated list of {sorted(EXPLAINERS)}")
    return methods


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog=cli.prog("evaluate"), description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a coda.train checkpoint file, a shipped model's name, or a published one "
                   "(coda.load_published; downloaded on first use)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS), help=f"comma-separated, from {sorted(EXPLAINERS)}")
    p.add_argument("--out", help="output folder (default: results/<model name>)")
    p.add_argument("--tasks", default="localisation,removal", help="comma-separated: localisation, removal")
    p.add_argument("--n-grids", type=int, default=500)
    p.add_argument("--grid-size", type=int, default=3)
    p.add_argument("--grid-pool", type=int, help="build grids from the first N test images only (default: all)")
    p.add_argument("--n-removal", type=int, default=1024, help="first N test images for pixel removal")
    p.add_argument("--fraction", type=float, default=0.25, help="remove up to this fraction of the pixels")
    p.add_argument("--stride", type=int, default=2, help="evaluate every STRIDE removed pixels")
    p.add_argument("--orders", default="least", help="comma-separated removal orders: least, most")
    p.add_argument("--lime-samples", type=int, default=EXPLAINERS["lime"].options["n_samples"])
    p.add_argument("--batch-size", type=int, default=32, help="images per forward of a post-hoc method")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data", help="data folder (default: $CODA_DATA, else data/)")
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--force", action="store_true", help="recompute results that already exist with these settings")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: 2 grids from 1000 images, 8 removal images")
    p.add_argument("--table", action="store_true",
                   help="only print the markdown table of the stored results (README) and exit")
    a = p.parse_args(argv)
    _check_sizes(p, a)  # before anything loads
    if a.table:
        print(markdown_table(a.out or PROJECT_ROOT / "results" / model_name(a.model)), end="")
        return
    if a.smoke:
        a.n_grids, a.grid_pool, a.n_removal, a.lime_samples = 2, 1000, 8, 32
    orders = [o.strip() for o in a.orders.split(",")]
    if not set(orders) <= set(ORDERS):
        p.error(f"--orders must be from {ORDERS}, got {a.orders!r}")
    tasks = [t.strip() for t in a.tasks.split(",")]
    if not tasks or not set(tasks) <= {"localisation", "removal"}:
        p.error(f"--tasks must be from localisation, removal; got {a.tasks!r}")
    try:
        methods = _parse_methods(a.methods)
    except ValueError as err:
        p.error(str(err))
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, info = load_model(a.model, device)
    if len(model.stem) and "coda" in methods and a.methods == p.get_default("methods"):
        methods.remove("coda")  # contributions are exact only from the first CoDA layer on
        print("the model has a conventional stem: 'coda' left out (it explains the input of the first CoDA layer)")
    out = Path(a.out or PROJECT_ROOT / "results" / info["name"])
    command = cli.recorded_command("coda.evaluate", argv)
    run(model, info, methods, out, command, a, orders, device, tasks)


def _check_sizes(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    """Exit with the usage and a message (status 2) for sizes that cannot be right."""
    for name in ("n_grids", "n_removal", "batch_size", "lime_samples", "stride"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(a, name)}")
    if a.grid_pool is not None and a.grid_pool < 1:
        p.error(f"--grid-pool must be >= 1 (or left out: all test images), got {a.grid_pool}")
    if a.grid_size < 2:
        p.error(f"--grid-size must be >= 2, got {a.grid_size}")
    if not 0 < a.fraction <= 1:
        p.error(f"--fraction must be in (0, 1], got {a.fraction}")


def _configured(name: str, a: argparse.Namespace) -> Explainer:
    explainer = get_explainer(name)
    options = {"batch_size": a.batch_size} if "batch_size" in explainer.options else {}
    if name == "lime":
        options.update(n_samples=a.lime_samples, seed=a.seed)
    return explainer.with_options(**options)


def task_path(out: Path, method: str, task: str) -> Path:
    """Where one method's result of one task ("localisation", "removal-least", ...) is kept.

    The file is written by :func:`coda.checkpoint.save_data` (arrays and JSON, no pickle).
    """
    return Path(out) / "tasks" / f"{method}.{task}.npz"


def _model_id(info: dict) -> str:
    return info.get("sha256") or info["name"]


def _task_settings(info: dict, a: argparse.Namespace, name: str, task: str) -> dict:
    """Everything a result depends on: a stored result is reused only if these are equal."""
    settings = {"model": _model_id(info), "method": name, "task": task, "seed": a.seed,
                "options": dict(_configured(name, a).options), "smoke": a.smoke}
    if task == "localisation":
        settings.update(grid_size=a.grid_size, n_grids=a.n_grids, grid_pool=a.grid_pool)
    else:
        settings.update(n_removal=a.n_removal, fraction=a.fraction, stride=a.stride, order=task.split("-", 1)[1])
    return settings


def _same_model(stored: str, model_id: str) -> bool:
    """Whether results keyed ``stored`` are ``model_id``'s: the same key, or the float32 file a shipped
    model was re-stored from in float16 (its manifest's ``previous_file``, the same weights rounded)."""
    if stored == model_id:
        return True
    from coda import pretrained

    try:
        manifest = pretrained.read_manifest()
    except (OSError, ValueError):
        return False
    for entry in [*manifest["models"].values(), *manifest.get("retired", {}).values()]:
        same = {entry["sha256"], (entry.get("previous_file") or {}).get("sha256")}
        if model_id in same and stored in same:
            return True
    return False


def _same_settings(stored: dict | None, settings: dict) -> bool:
    """Whether a stored result (its settings; None: none) is reused for ``settings``."""
    return stored is not None and _same_model(stored.get("model"), settings["model"]) and (
        {**stored, "model": settings["model"]} == settings)


def _stored_settings(path: Path) -> dict | None:
    """The settings of the result stored in ``path``; None if there is none or it is unreadable."""
    if not path.exists():
        return None
    try:
        return load_data(path)["settings"]
    except (ValueError, KeyError) as err:
        print(f"{path}: unreadable, computed again ({type(err).__name__}: {err})", flush=True)
        return None


def run(model: CoDANet, info: dict, methods: list[str], out: Path, command: str, a: argparse.Namespace,
        orders: list[str], device: torch.device, tasks: list[str] = ("localisation", "removal")) -> None:
    """Evaluate ``methods`` on ``model``, keep each (method, task) result in ``out/tasks``, write the tables.

    A (method, task) whose stored result has the same settings is not recomputed (unless
    ``a.force``), so an interrupted run resumes where it stopped, and expensive methods can
    be run with smaller sizes by a separate call into the same folder; the tables list every
    stored result of this model with its own sizes.
    """
    test = load_cifar10("test", a.data, download=False)
    pool = test.first(a.grid_pool) if a.grid_pool else test
    logits = predict(model, pool.images)
    accuracy = (logits.argmax(1) == pool.labels).float().mean().item()
    grids = stored_grids(out, info, a, pool)
    if grids is None:
        grids = grids_from_logits(logits, pool, a.n_grids, a.grid_size, a.seed)
    removal_set = test.first(a.n_removal)
    print(f"{info['name']}: accuracy {accuracy:.4f} on {len(pool)} test images; {len(grids)} grids; "
          f"{len(removal_set)} removal images; methods {methods}", flush=True)
    context = {"command": command, "device": str(device), "threads": torch.get_num_threads(),
               "cpu": cpu_info().describe(), "versions": versions(), "model": info, "test_accuracy": {"accuracy": accuracy, "n": len(pool)}}
    todo = [(m, t) for m in methods for t in (["localisation"] if "localisation" in tasks else [])
            + ([f"removal-{o}" for o in orders] if "removal" in tasks else [])]
    for name, task in todo:
        settings, path = _task_settings(info, a, name, task), task_path(out, name, task)
        if not a.force and _same_settings(_stored_settings(path), settings):
            print(f"{name:>16} {task}: already in {path}, skipped (--force recomputes)", flush=True)
            continue
        explainer = _configured(name, a)
        context["implementation"] = implementation(explainer, model)  # captum or coda's own code
        if task == "localisation":
            result = localisation_scores(model, grids, explainer, progress=True)
            extra = {"grids": {"classes": grids.classes, "indices": grids.indices, "grid_size": grids.grid_size,
                               "n_requested": grids.n_requested},
                     "image_size": "x".join(map(str, grids.images.shape[-2:]))}
            summary = f"localisation {result.mean:.3f} (median {result.median:.3f}, {len(grids)} grids)"
        else:
            result = pixel_removal(model, removal_set.images, removal_set.labels, explainer, a.fraction, a.stride,
                                   settings["order"], batch_size=a.batch_size, progress=True)
            extra = {"image_size": "x".join(map(str, removal_set.images.shape[-2:]))}
            summary = f"removal[{result.order}] {result.mean:.3f} ({len(removal_set)} images)"
        save_data({"settings": settings, **context, **extra, "result": dataclasses.asdict(result)}, path)
        print(f"{name:>16} {task}: {summary}", flush=True)
    write_tables(out, _model_id(info))


def stored_grids(out: Path, info: dict, a: argparse.Namespace, pool) -> Grids | None:
    """The first ``a.n_grids`` grids an earlier call stored for this model in ``out/tasks``, or None.

    Drawing the grids ranks each class's images by the model's logits, and logits computed on
    another device (a GPU's TF32 convolutions, another CPU's kernels) differ in the last bits,
    enough to reorder images of nearly equal confidence: 207 of 500 grids came out different on a
    GPU. The paired comparison needs every method on the same grids, so a call reuses the grids
    of the stored localisation result with the most grids whose model, seed, grid size, pool and
    smoke mode are this call's, if it has enough; else (None) the grids are drawn afresh.
    """
    best = None
    for path in sorted(Path(out).glob("tasks/*.localisation.npz")):
        try:
            stored = load_data(path)
            settings, indices = stored["settings"], stored["grids"]["indices"]
        except (ValueError, KeyError, TypeError):
            continue  # unreadable or older files: run() names them when it meets them
        same = all(settings.get(k) == getattr(a, k) for k in ("seed", "grid_size", "grid_pool", "smoke"))
        if same and _same_model(settings.get("model"), _model_id(info)) and (best is None or len(indices) > len(best[1])):
            best = (path, indices, stored["grids"]["classes"])
    if best is None or len(best[1]) < a.n_grids:
        return None
    path, indices, classes = best[0], best[1][: a.n_grids], best[2][: a.n_grids]
    if indices.max() >= len(pool) or not torch.equal(pool.labels[indices], classes):
        print(f"{path}: its grids do not match these test labels; drawing the grids again", flush=True)
        return None
    print(f"grids: the first {a.n_grids} of the {len(best[1])} stored in {path.name} (the same grids for every "
          "method, on any device)", flush=True)
    return grids_from_indices(pool, indices, a.grid_size, a.n_grids)


def read_tasks(out: Path, model_id: str | None = None) -> list[dict]:
    """The stored (method, task) results in ``out/tasks``, methods in registry order.

    Each dict holds ``settings``, ``command``, ``device``, ``threads``, ``versions``,
    ``model``, ``test_accuracy``, ``image_size``, ``result`` (a :class:`LocalisationResult`
    or :class:`RemovalResult`) and, for localisation, ``grids`` (:class:`Grids` without images).
    Results of another model than ``model_id`` (a SHA-256 or name) are left out.
    Raises ``ValueError`` naming the file if one is unreadable or is of the old pickled format.
    """
    order = {m: i for i, m in enumerate([*DEFAULT_METHODS, *EXPLAINERS])}
    legacy = sorted(Path(out).glob("tasks/*.pt"))
    if legacy:
        raise ValueError(
            f"{legacy[0]} is a task file of the old pickled format, which is not read (loading it could run code); "
            f"convert the folder once with coda.evaluate.convert_task_files({str(Path(out))!r}), or delete "
            "the .pt files and evaluate again"
        )
    tasks = []
    for path in sorted(Path(out).glob("tasks/*.npz")):
        t = _read_task(path)
        if model_id is not None and not _same_model(t["settings"]["model"], model_id):
            print(f"{path}: a different model ({t['settings']['model']}), left out of the tables")
            continue
        tasks.append(t)
    key = lambda t: (order.get(t["settings"]["method"], len(order)), t["settings"]["task"])  # noqa: E731
    return sorted(tasks, key=key)


def _read_task(path: Path) -> dict:
    """One stored (method, task) result with its result (and grids) as dataclasses; ``ValueError`` naming
    ``path`` if it is not a task file."""
    t = load_data(path)
    try:
        if t["settings"]["task"] == "localisation":
            t["result"] = LocalisationResult(**t["result"])
            g = t["grids"]
            t["grids"] = Grids(torch.zeros(len(g["classes"]), 0, g["grid_size"], g["grid_size"]), g["classes"],
                               g["grid_size"], g["indices"], g["n_requested"])
        else:
            t["result"] = RemovalResult(**t["result"])
        missing = {"command", "device", "threads", "versions", "model", "test_accuracy", "image_size"} - set(t)
        if missing:
            raise KeyError(f"no {sorted(missing)}")
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"{path} is not a task file of coda.evaluate ({type(err).__name__}: {err})") from err
    return t


def convert_task_files(out: str | os.PathLike) -> list[Path]:
    """Convert the task files of the old pickled format (``tasks/*.pt``) in ``out`` to ``.npz``.

    The old files are read with ``torch.load(weights_only=True)``, which refuses arbitrary
    objects (only torch's version string is allowed besides tensors and plain Python), written
    with :func:`coda.checkpoint.save_data` and then removed. Returns the new files.
    """
    from torch.torch_version import TorchVersion

    written = []
    for old in sorted(Path(out).glob("tasks/*.pt")):
        with torch.serialization.safe_globals([TorchVersion]):
            t = load_checkpoint(old)
        t["versions"] = {k: v if v is None else str(v) for k, v in t["versions"].items()}
        new = old.with_suffix(".npz")
        save_data(t, new)
        _read_task(new)  # readable before the old file goes
        old.unlink()
        written.append(new)
    return written


def write_tables(out: Path, model_id: str | None = None) -> None:
    """(Re)write the CSV tables and ``results.json`` in ``out`` from its stored task results."""
    tasks = read_tasks(out, model_id)
    loc = [t for t in tasks if t["settings"]["task"] == "localisation"]
    rem = [t for t in tasks if t["settings"]["task"] != "localisation"]
    summary, scores = localisation_tables([t["result"] for t in loc], [t["grids"] for t in loc])
    write_text(summary, out / "localisation.csv")
    write_text(scores, out / "localisation_scores.csv")
    write_text(removal_table([t["result"] for t in rem]), out / "removal.csv")
    write_text(timing_table(tasks), out / "timing.csv")
    write_json(_record(tasks), out / "results.json")
    print(f"wrote {out}")


def read_results(folder: str | os.PathLike) -> dict | None:
    """The tables written by the command line, for notebooks and reports; None if absent.

    Returns
    -------
    dict with ``"localisation"`` (method -> summary row: label, n_grids, n, mean, median),
    ``"scores"`` (method -> (n,) numpy scores), ``"removal"`` (method -> dict with label,
    n_images, fractions (P,), curve (P,), mean; the "least" order), ``"removal_most"`` (the
    same for the "most" order), ``"timing"`` (list of rows) and ``"record"`` (results.json).
    """
    import numpy as np

    folder = Path(folder)
    if not (folder / "results.json").exists():
        return None

    def rows(name):
        path = folder / name
        if not path.exists():
            return []
        with open(path, newline="") as f:
            return list(csv.DictReader(f))

    out = {"localisation": {}, "scores": {}, "removal": {}, "removal_most": {}, "timing": rows("timing.csv"),
           "record": json.loads((folder / "results.json").read_text())}
    for r in rows("localisation.csv"):
        out["localisation"][r["method"]] = {"label": r["label"], "n_grids": int(r["n_grids"]), "n": int(r["n"]),
                                            "mean": float(r["mean"]), "median": float(r["median"])}
    scores: dict[str, list[float]] = {}
    for r in rows("localisation_scores.csv"):
        scores.setdefault(r["method"], []).append(float(r["score"]))
    out["scores"] = {m: np.asarray(v) for m, v in scores.items()}
    for r in rows("removal.csv"):
        table = out["removal" if r["order"] == "least" else "removal_most"]
        entry = table.setdefault(r["method"], {"label": r["label"], "n_images": int(r["n_images"]), "fractions": [],
                                               "curve": [], "mean": float(r["curve_mean"])})
        entry["fractions"].append(float(r["fraction_removed"]))
        entry["curve"].append(float(r["probability"]))
    for table in (out["removal"], out["removal_most"]):
        for entry in table.values():
            entry["fractions"], entry["curve"] = np.asarray(entry["fractions"]), np.asarray(entry["curve"])
    return out


def _ours_on_the_same_images(folder: Path, model_id: str | None) -> dict:
    """Mean CoDA pixel removal ("least" order) on the images each other method was scored on:
    smaller runs use the first images of larger ones, paired through the stored tasks'
    per-image probabilities. ``{method: mean}`` (localisation pairs through
    :func:`paired_grid_scores`)."""
    rem = {}
    by_key = {(t["settings"]["method"], t["settings"]["task"]): t for t in read_tasks(folder, model_id)}
    ours_rem = by_key.get(("coda", "removal-least"))
    for (method, task), t in by_key.items():
        if task == "removal-least" and ours_rem is not None:
            n = t["result"].probabilities.shape[0]
            if n <= ours_rem["result"].probabilities.shape[0]:
                rem[method] = float(ours_rem["result"].probabilities[:n].mean())
    return rem


def paired_grid_scores(folder: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-grid localisation of each method and of the CoDA contributions on the same grids.

    From ``localisation_scores.csv`` in ``folder`` (so a folder committed without ``tasks/``
    pairs too): smaller runs use the first grids of larger ones (the grids are a seeded
    sequence), so a method scored on n grids is paired with the first n grids of the CoDA
    scores when every cell shows the same test image. Returns
    ``{method: (method_grid_means, ours_grid_means)}``, each (n,), the mean over a grid's cells
    ("coda" itself included); empty without the file or CoDA scores.
    """
    path = Path(folder) / "localisation_scores.csv"
    if not path.exists():
        return {}
    cells: dict[str, list[tuple[int, int, int, float]]] = {}
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            cells.setdefault(row["method"], []).append(
                (int(row["grid"]), int(row["cell"]), int(row["image_index"]), float(row["score"])))
    ours = sorted(cells.get("coda", []))

    def grid_means(rows: list[tuple[int, int, int, float]]) -> np.ndarray:
        by_grid: dict[int, list[float]] = {}
        for grid, _, _, score in rows:
            by_grid.setdefault(grid, []).append(score)
        return np.array([np.mean(by_grid[g]) for g in sorted(by_grid)])

    paired = {}
    for method, rows in cells.items():
        rows = sorted(rows)
        if len(rows) <= len(ours) and [r[:3] for r in rows] == [r[:3] for r in ours[:len(rows)]]:
            paired[method] = (grid_means(rows), grid_means(ours[:len(rows)]))
    return paired


def paired_difference(scores: np.ndarray, ours: np.ndarray, n_boot: int = 10_000, seed: int = 0) -> dict:
    """How much a method's per-grid localisation ``scores`` (G,) exceeds the CoDA contributions'
    ``ours`` (G,) on the same grids: the mean difference, its 95% percentile-bootstrap interval
    (``n_boot`` resamples of the grids, seeded) as ``low`` and ``high``, and on how many grids
    the method is ``higher`` and ``lower``; ``n`` grids."""
    d = np.asarray(scores, dtype=np.float64) - np.asarray(ours, dtype=np.float64)
    if d.ndim != 1 or not len(d):
        raise ValueError(f"expected two equally long, non-empty 1-D score arrays, got shapes {np.shape(scores)} and {np.shape(ours)}")
    boot = d[np.random.default_rng(seed).integers(0, len(d), (n_boot, len(d)))].mean(1)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {"mean": float(d.mean()), "low": float(low), "high": float(high), "higher": int((d > 0).sum()),
            "lower": int((d < 0).sum()), "n": len(d)}


CPU_FOOTNOTE = ("The two times' records do not name the same CPU (records before 2026-12-04 name none): "
                "the ratio may compare two machines")


def timed_on_the_same_cpu(row: dict, other: dict) -> bool:
    """Whether two timing rows (``timing.csv``) both name their CPU, and it is the same one."""
    named = row.get("cpu") or None
    return named is not None and named == (other.get("cpu") or None)


def markdown_table(folder: str | os.PathLike) -> str:
    """The README's results table of one model's folder, next to the published numbers.

    One row per method with stored results, the CoDA contributions first and the others by mean
    localisation (methods without it last): localisation mean (median) and its number of
    grids, the CoDA contributions' mean on
    the same grids, the published value; pixel removal (least important first, mean over the
    curve), its number of images, the CoDA mean on the same images, the published value; the
    CPU seconds per attribution of one class on a 96x96 grid and their ratio to the CoDA
    contributions (compare with care where the thread counts differ; a method that ran on a GPU
    gets the device's name instead; a ratio of two times whose records do not name the same CPU
    is starred, with a footnote: older records name none). Followed by which
    methods beat the CoDA contributions on the same data. ``ValueError`` if ``folder`` holds
    no results.
    """
    folder = Path(folder)
    res = read_results(folder)
    if res is None:
        raise ValueError(f"no results in {folder} (expected results.json written by python -m coda.evaluate)")
    loc, rem = res["localisation"], res["removal"]
    per_grid = paired_grid_scores(folder)
    ours_loc = {m: float(ours.mean()) for m, (_, ours) in per_grid.items()}
    ours_rem = _ours_on_the_same_images(folder, (res["record"].get("model") or {}).get("sha256"))
    timing = {r["method"]: r for r in res["timing"] if r["task"] == "localisation"}
    labels = {m: v["label"] for table in (loc, rem) for m, v in table.items()}
    methods = sorted(labels, key=lambda m: (m != "coda", m not in loc, -loc[m]["mean"] if m in loc else 0.0, m))

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    def published_loc(m: str) -> str:
        mean, median = PUBLISHED["localisation_mean"].get(m), PUBLISHED["localisation_median"].get(m)
        return number(mean) + ("" if median is None else f" ({median:.3f})")

    lines = ["| method | localisation mean (median) | grids | Ours, same grids | published | pixel removal | images "
             "| Ours, same images | published | CPU s per attribution (threads) | x Ours |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    def cpu_seconds(m: str) -> float | None:  # only where the method ran on a CPU (a GPU's host seconds say nothing)
        t = timing.get(m)
        return float(t["cpu_seconds_per_attribution"]) if t is not None and t.get("device", "cpu") == "cpu" else None

    starred = False
    for m in methods:
        loc_m, r, t = loc.get(m), rem.get(m), timing.get(m)
        cpu, ours_cpu = cpu_seconds(m), cpu_seconds("coda")
        ratio = f"{cpu / ours_cpu:.1f}" if cpu and ours_cpu else "-"
        if cpu and ours_cpu and m != "coda" and not timed_on_the_same_cpu(timing[m], timing["coda"]):
            ratio += " *"
            starred = True
        time_cell = "-" if t is None else f"{cpu:.3g} ({t['threads']})" if cpu is not None else f"- (ran on {t['device']})"
        lines.append("| " + " | ".join([
            f"{labels[m]} (`{m}`)",
            "-" if loc_m is None else f"{loc_m['mean']:.3f} ({loc_m['median']:.3f})", "-" if loc_m is None else f"{loc_m['n_grids']:,}",
            number(ours_loc.get(m)) if loc_m is not None else "-", published_loc(m),
            number(None if r is None else r["mean"]), "-" if r is None else f"{r['n_images']:,}",
            number(ours_rem.get(m)) if r is not None else "-", number(PUBLISHED["removal_mean"].get(m)),
            time_cell, ratio]) + " |")

    def against(m: str, table: dict, ours: dict) -> str:
        text = f"{labels[m]} ({table[m]['mean']:.3f} against {ours[m]:.3f}"
        if table is loc and m in per_grid:  # how sure: the per-grid differences
            p = paired_difference(*per_grid[m])
            text += (f"; per grid {p['mean']:+.3f}, 95% bootstrap interval {p['low']:+.3f} to {p['high']:+.3f}, "
                     f"higher on {p['higher']} of {p['n']} grids")
        return text + ")"

    def beaten_by(table: dict, ours: dict) -> str:
        better = [against(m, table, ours) for m in table if m != "coda" and m in ours and table[m]["mean"] > ours[m]]
        unpaired = [labels[m] for m in table if m != "coda" and m not in ours]
        return (", ".join(better) if better else "none") + (
            f" (not paired with Ours: {', '.join(unpaired)})" if unpaired else "")

    if starred:
        lines += ["", f"\\* {CPU_FOOTNOTE}."]
    lines += ["", f"Better than Ours on the same grids (localisation): {beaten_by(loc, ours_loc)}.",
              f"Better than Ours on the same images (pixel removal): {beaten_by(rem, ours_rem)}."]
    occlusion_by = {r.get("implementation") or "captum" for m, r in timing.items() if m in ("occ5", "occ9")}
    if occlusion_by:
        how = {"captum": "captum's Occlusion, one forward pass of the whole network per window",
               "coda.occlusion": "coda.occlusion, which recomputes only what each window changes (the same numbers)"}
        lines.append("Occlusion was computed and timed with " + " and ".join(how[i] for i in sorted(occlusion_by)) + ".")
    return "\n".join(lines) + "\n"


def _number(x: float) -> float | None:
    """``x`` for JSON: None instead of NaN (no grids, no images)."""
    return None if math.isnan(x) else x


def _record(tasks: list[dict]) -> dict:
    """The JSON record: the model, the software, and per (method, task) its command, settings and summary."""
    latest = tasks[-1] if tasks else {}
    record = {"model": latest.get("model"), "test_accuracy": latest.get("test_accuracy"),
              "published_reference": "coda.evaluate.PUBLISHED (the paper's numbers, not measured here)",
              "results": {}}
    for t in tasks:
        r, s = t["result"], t["settings"]
        if s["task"] == "localisation":
            summary = {"mean": _number(r.mean), "median": _number(r.median), "n": r.scores.numel(),
                       "n_grids": len(t["grids"]), "exhausted": t["grids"].exhausted}
        else:
            summary = {"mean": _number(r.mean), "start": _number(r.curve[0].item()) if len(r.curve) else None,
                       "end": _number(r.curve[-1].item()) if len(r.curve) else None, "n_images": r.n_attributions}
        record["results"][f"{s['method']}/{s['task']}"] = {
            "command": t["command"], "settings": s, "summary": summary, "device": t["device"],
            "threads": t["threads"], "cpu": t.get("cpu"), "versions": t["versions"], "seconds": _number(r.seconds),
            "implementation": _implementation(t)}
    return record


if __name__ == "__main__":
    main()
