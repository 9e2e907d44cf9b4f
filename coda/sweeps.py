"""The paper's ablations as sweeps of training runs that share one budget.

Three sweeps around one centre run (the 9L-S layout at rank factor 8, T = 1000):

* ``temperature``: T in {10, 100, 1000, 5000};
* ``rank``: rank factors f in {4, 8, 16, 32} (ranks [f, f, 2f x 7]);
* ``depth``: a conventional conv-BN-ReLU stem replacing the first {0, 1, 3, 5} layers
  (hybrids, explained exactly down to their first CoDA layer), and an all-conventional CNN
  baseline of about the same number of parameters ("cifar10-cnn").

Each sweep is data, a :class:`Sweep` in :data:`SWEEP_SPECS` (its variable, values and table
columns); run names are derived from it. Every run trains with the same :data:`SWEEP_BUDGET`;
the centre run is shared by all three sweeps. Training is resumable and sequential, so one
background command finishes a sweep over several sessions; a run being trained holds a lock
file (``runs/sweeps/<name>/train.lock``), so two commands started side by side (one core each)
share the work instead of colliding::

    nohup python -m coda.sweeps train temperature rank depth > sweeps.log 2>&1 &
    python -m coda.sweeps status
    python -m coda.sweeps evaluate              # accuracy, localisation, pixel removal per run
                                                # (each run once: results/sweeps/runs/<name>.json)
    python -m coda.sweeps layers                # localisation at every layer of the default model
                                                # (each layer once: results/sweeps/tasks/layers.json)
    python -m coda.sweeps table                 # the README's markdown tables of the results

Evaluation loads each run from the shipped models (``coda.pretrained``) if it is there, else
from its finished checkpoint in ``runs/sweeps/``; it writes ``results/sweeps/``, which
:func:`read_sweep_results` reads back (and :func:`sweep_rows` splits into the sweeps) for the
ablation notebook.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from coda import cli
from coda.checkpoint import claim_folder, load_checkpoint, lock_holder, release_folder, write_json, write_text
from coda.data import PROJECT_ROOT, load_cifar10
from coda.explainers import layer_explainer
from coda.inference import evaluate_accuracy
from coda.metrics import localisation_scores, make_grids, pixel_removal
from coda.models import CONFIGS, CoDANet
from coda.pretrained import load_model, temperature_suffix
from coda.train import TrainConfig, train

SWEEP_BUDGET = dict(epochs=5, batch_size=64, lr=1e-3, schedule="cosine", warmup_epochs=0.5, seed=0)
SWEEP_MODEL = "cifar10-9L-S"  # the layout every sweep varies
CENTRE = {"rank_factor": 8, "temperature": 1000.0}  # the model overrides of the run all three sweeps share
TEMPERATURES = (10, 100, 1000, 5000)
RANK_FACTORS = (4, 8, 16, 32)
STEM_DEPTHS = (0, 1, 3, 5)
CNN_BASELINE = "cifar10-cnn"  # the all-conventional model of the depth sweep
RUNS_DIR = PROJECT_ROOT / "runs" / "sweeps"
RESULTS_DIR = PROJECT_ROOT / "results" / "sweeps"
EVAL_SIZES = dict(n_grids=100, n_removal=256)  # per run; the full protocol (500, 1024) per model costs ~10 CPU minutes


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One sweep as data: which model override it varies over which values, and its table.

    Attributes
    ----------
    name : its name on the command line ("temperature", "rank", "depth").
    variable : the model override it varies; also the key of the value in the result rows.
    values : the values, in the order the runs are trained.
    columns : the result-row keys of its table (notebook 04 prints them).
    left_out : values given by leaving the override out (stem depth 0: the centre run itself).
    baseline : a model trained beside the values with the same budget (the depth sweep's CNN), or None.

    Every run trains :data:`SWEEP_MODEL` with :data:`CENTRE` and the swept value as model
    overrides and :data:`SWEEP_BUDGET` as training settings; its name is derived from that
    config (:func:`run_name`) and never parsed back.
    """

    name: str
    variable: str
    values: tuple
    columns: tuple[str, ...]
    left_out: tuple = ()
    baseline: str | None = None

    def model_overrides(self, value) -> dict:
        """The model overrides of the run at ``value`` (CENTRE with the swept value)."""
        value = float(value) if self.variable == "temperature" else value
        return CENTRE | ({} if value in self.left_out else {self.variable: value})

    def config(self, value) -> TrainConfig:
        """The training config of the run at ``value``: the model and its overrides, the shared budget."""
        return TrainConfig(model=SWEEP_MODEL, model_overrides=self.model_overrides(value), **SWEEP_BUDGET)

    def runs(self) -> dict[str, TrainConfig]:
        """``{run name: TrainConfig}`` of every value (and the baseline), in training order."""
        runs = {run_name(**self.model_overrides(v)): self.config(v) for v in self.values}
        if self.baseline is not None:
            runs[run_name(cnn=True)] = TrainConfig(model=self.baseline, model_overrides={}, **SWEEP_BUDGET)
        return runs


SWEEP_SPECS = {s.name: s for s in (
    Sweep("temperature", "temperature", TEMPERATURES,
          ("name", "temperature", "test_accuracy", "localisation_mean", "n_grids", "removal_mean", "n_removal")),
    Sweep("rank", "rank_factor", RANK_FACTORS, ("name", "rank_factor", "parameters", "test_accuracy", "localisation_mean")),
    Sweep("depth", "stem_depth", STEM_DEPTHS,
          ("name", "stem_depth", "parameters", "test_accuracy", "explained_from", "localisation_mean"),
          left_out=(0,), baseline=CNN_BASELINE),
)}
SWEEPS = tuple(SWEEP_SPECS)
SWEEP_VARIABLES = {name: s.variable for name, s in SWEEP_SPECS.items()}  # row key per sweep


def run_name(rank_factor: int = 8, temperature: float = 1000, stem_depth: int = 0, cnn: bool = False) -> str:
    """The name of a sweep run, derived from its model config: ``sweep-9L-S-f8-stem3-T1000``.

    Ends in :func:`coda.pretrained.temperature_suffix` of the model's temperature (the CNN
    baseline's is its config's, 64), as every shipped model's name does.
    """
    if cnn:
        return "sweep-cnn" + temperature_suffix(CONFIGS[CNN_BASELINE].temperature)
    stem = f"-stem{stem_depth}" if stem_depth else ""
    return f"sweep-9L-S-f{rank_factor}{stem}" + temperature_suffix(temperature)


def sweep_runs(sweep: str) -> dict[str, TrainConfig]:
    """The runs of one sweep, ``{run name: TrainConfig}``, in the order they are trained."""
    if sweep not in SWEEP_SPECS:
        raise ValueError(f"unknown sweep {sweep!r}; expected one of {SWEEPS}")
    return SWEEP_SPECS[sweep].runs()


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
    """``{"name", "epochs_done", "epochs", "finished", "shipped", "test_accuracy"}`` of one run.

    A run shipped in ``data/pretrained/`` (``coda.list_pretrained()``) counts as finished, so a
    fresh clone neither retrains it nor needs its checkpoint; so does a retired one
    (``coda.pretrained.list_retired()``: card and results kept, weights only in the git history),
    whose status has ``"retired": True``.
    """
    from coda import pretrained

    path = Path(runs_dir) / name / "last.pt"
    status = {"name": name, "epochs_done": 0, "epochs": cfg.epochs, "finished": False, "shipped": False,
              "test_accuracy": None}
    if name in pretrained.list_pretrained():
        return status | {"epochs_done": cfg.epochs, "finished": True, "shipped": True}
    if name in pretrained.list_retired():
        return status | {"epochs_done": cfg.epochs, "finished": True, "retired": True}
    if path.exists():
        ckpt = load_checkpoint(path)
        if TrainConfig(**ckpt["config"]) != cfg:  # fields added to TrainConfig later take their defaults
            raise ValueError(f"{path} holds a run of another config; move it away or delete it")
        status["epochs_done"] = ckpt["epoch"]
        status["finished"] = ckpt["epoch"] >= cfg.epochs
        if ckpt["history"]:
            status["test_accuracy"] = ckpt["history"][-1]["test_accuracy"]
    return status


def train_sweeps(sweeps, runs_dir: Path = RUNS_DIR, data_root=None, device=None, progress=True) -> None:
    """Train (or resume) every unfinished run of ``sweeps`` (shipped ones count as finished).

    A run that another live process is training (its lock file) is skipped, so several
    commands can work through the same sweeps in parallel.
    """
    for name, cfg in all_runs(sweeps).items():
        if run_status(name, cfg, runs_dir)["finished"]:
            continue
        out = Path(runs_dir) / name
        if not claim_folder(out):
            print(f"-- {name}: being trained by process {lock_holder(out)}, skipped", flush=True)
            continue
        try:
            print(f"== {name}: {json.dumps(dataclasses.asdict(cfg))}", flush=True)
            train(cfg, out, device=device, data_root=data_root, progress=progress)
        finally:
            release_folder(out)


# ----- evaluation ------------------------------------------------------------------------


def stem_text(config) -> str:
    """What a model's conventional stem is, e.g. "a 3-block stem", "ResNet-20 stages 1-2"."""
    d = config.resnet_stages
    if d:
        return "ResNet-20 stage 1" if d == 1 else f"ResNet-20 stages 1-{d}"
    return f"a {config.stem_depth}-block stem"


def evaluate_model(model: CoDANet, test, n_grids: int, n_removal: int, seed: int = 0) -> dict:
    """Accuracy, localisation and pixel removal of one model's contributions.

    Contributions are taken at the input for a pure CoDA-Net and at the input of the first
    CoDA layer for a hybrid (pixel removal then does not apply: it needs input attributions).
    An all-conventional network gets its accuracy only.
    """
    row = {"parameters": sum(p.numel() for p in model.parameters()),
           "test_accuracy": evaluate_accuracy(model, test)["accuracy"],
           "explained_from": "input" if not len(model.stem) else f"layer 0 (after {stem_text(model.config)})",
           "localisation_mean": None, "localisation_median": None, "n_grids": 0, "removal_mean": None,
           "n_removal": 0}
    if not len(model.layers):
        row["explained_from"] = "nothing (no CoDA layer)"
        return row
    grids = make_grids(model, test, n_grids=n_grids, seed=seed)
    loc = localisation_scores(model, grids, "coda" if not len(model.stem) else layer_explainer(0))
    row.update(localisation_mean=loc.mean, localisation_median=loc.median, n_grids=len(grids))
    if not len(model.stem):
        removal = pixel_removal(model, test.images[:n_removal], test.labels[:n_removal], "coda")
        row.update(removal_mean=removal.mean, n_removal=len(removal.probabilities))
    return row


def _load_run(name: str, cfg: TrainConfig, runs_dir: Path):
    """A run's model from the shipped models, else its finished checkpoint; None if neither
    (or if the run is retired: its weights are no longer shipped)."""
    from coda import pretrained

    if name in pretrained.list_pretrained():
        return load_model(name)[0], "coda.pretrained"
    if name in pretrained.list_retired():
        return None, None
    if run_status(name, cfg, runs_dir)["finished"]:
        model, info = load_model(str(Path(runs_dir) / name / "last.pt"))
        return model, info["path"]
    return None, None


def weights_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 of a model's state dict (names, shapes, dtypes and values), in key order.

    Identifies *what* is evaluated independently of the file it came from: a run's
    checkpoint and the same weights exported as a shipped model have the same fingerprint.
    """
    h = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        h.update(f"{key}:{tuple(t.shape)}:{t.dtype};".encode())
        # reshape(-1): a 0-dim tensor (batch norm's num_batches_tracked) cannot be viewed as bytes.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _cached(path: Path, settings: dict, key: str, what: str, parse=lambda value: value):
    """``parse(record[key])`` of the JSON record in ``path`` (``what`` it is, for the error) if it
    was stored with exactly ``settings``; None without the file or with other settings."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
        return parse(record[key]) if record.get("settings") == settings else None
    except (ValueError, KeyError, AttributeError, TypeError) as err:
        raise ValueError(f"{path}: expected {what} (a JSON object with 'settings' and {key!r}); "
                         f"delete it to compute it again ({err})") from err


def evaluate_sweeps(sweeps, runs_dir: Path = RUNS_DIR, out: Path = RESULTS_DIR, data_root=None,
                    n_grids: int = EVAL_SIZES["n_grids"], n_removal: int = EVAL_SIZES["n_removal"],
                    command: str = "", force: bool = False) -> list[dict]:
    """Evaluate every available run of ``sweeps``; write ``<out>/sweeps.csv`` and ``.json``.

    Each run's row is also kept in ``<out>/runs/<name>.json`` with the settings it depends on
    (weights fingerprint, config, sizes); a later call reuses it when they match (``force``
    recomputes), so the sweeps can be evaluated run by run as their training finishes. The
    written table holds every evaluated run of *all* sweeps: the runs of sweeps not asked for
    come from their stored rows only (when those match), so ``evaluate depth`` keeps the
    temperature rows. Returns the rows of the runs of ``sweeps``.
    """
    test = load_cifar10("test", data_root)
    asked = all_runs(sweeps)
    rows, table = [], []
    for name, cfg in all_runs(SWEEPS).items():
        model, source = _load_run(name, cfg, runs_dir)
        if model is None:
            if name in asked:
                print(f"-- {name}: not trained yet, skipped", flush=True)
            continue
        settings = {"weights": weights_fingerprint(model), "config": cfg.to_dict(), "n_grids": n_grids,
                    "n_removal": n_removal, "seed": 0}
        cache = Path(out) / "runs" / f"{name}.json"
        row = None if force and name in asked else _cached(cache, settings, "row", "a sweep run's stored row")
        if row is not None:
            if name in asked:
                print(f"-- {name}: already evaluated with these settings ({cache})", flush=True)
                rows.append(row)
            table.append(row)
            continue
        if name not in asked:  # another sweep's run, not evaluated (with these settings): left out
            continue
        overrides = cfg.model_overrides
        row = {"name": name, "sweeps": " ".join(s for s in SWEEPS if name in sweep_runs(s)),
               "model": cfg.model, "temperature": model.temperature,
               "rank_factor": overrides.get("rank_factor", model.config.rank_factor),
               "stem_depth": model.config.stem_depth, "epochs": cfg.epochs, "source": source}
        start = time.perf_counter()
        row.update(evaluate_model(model, test, n_grids, n_removal))
        row["seconds"] = round(time.perf_counter() - start, 1)
        write_json({"settings": settings, "command": command, "row": row}, cache)
        print(json.dumps(row), flush=True)
        rows.append(row)
        table.append(row)
    _write_rows(table, out / "sweeps", command, {"budget": SWEEP_BUDGET, "n_grids": n_grids, "n_removal": n_removal})
    return rows


def evaluate_layers(model: CoDANet, test, n_grids: int = EVAL_SIZES["n_grids"], seed: int = 0,
                    layers: list[int] | None = None, cache: Path | None = None) -> list[dict]:
    """Localisation of the contributions at the input of CoDA layers (interpretable depth).

    ``layers``: the CoDA layer indices to explain (default: all); for a pure CoDA-Net the input
    of layer 0 is the encoded image itself (``layer`` None). The same grids serve every layer;
    maps of deeper layers are coarser (their input is downsampled by the strides before them),
    and the cells are scored at that resolution. Returns one row per layer: ``layer`` (the CoDA
    layer whose input is explained, an int; None for the image, the input of a pure CoDA-Net,
    as in ``coda.contributions(..., layer=None)``), localisation_mean, localisation_median, n_grids.

    ``cache``: a JSON file that keeps each layer's row as soon as it is scored, with the settings
    it depends on (weights fingerprint, n_grids, seed). Rows stored there with the same settings
    are reused, so a call that was stopped resumes at the first layer it had not finished.
    """
    n = len(model.layers)
    layers = list(range(n)) if layers is None else sorted(set(layers))
    if not layers or not all(0 <= i < n for i in layers):
        raise ValueError(f"layers must be CoDA layer indices in [0, {n - 1}], got {layers}")
    stored = {}
    if cache is not None:
        settings = {"weights": weights_fingerprint(model), "n_grids": n_grids, "seed": seed}
        stored = _cached(cache, settings, "rows", "the per-layer cache of `coda.sweeps layers`",
                         parse=lambda rows: {int(k): row for k, row in rows.items()}) or {}
    grids, rows = None, []
    for i in layers:
        if i in stored:
            rows.append(stored[i])
            print(f"-- layer {i}: already scored with these settings ({cache})", flush=True)
            continue
        if grids is None:
            grids = make_grids(model, test, n_grids=n_grids, seed=seed)
        # For a pure CoDA-Net the input of layer 0 is the encoded image: plain "coda", layer None.
        layer, explainer = (None, "coda") if i == 0 and not len(model.stem) else (i, layer_explainer(i))
        loc = localisation_scores(model, grids, explainer)
        rows.append({"layer": layer, "localisation_mean": loc.mean, "localisation_median": loc.median,
                     "n_grids": len(grids)})
        print(json.dumps(rows[-1]), flush=True)
        if cache is not None:
            stored[i] = rows[-1]
            write_json({"settings": settings, "rows": {str(k): stored[k] for k in sorted(stored)}}, cache)
    return rows


def layer_text(layer: int | None, short: bool = False) -> str:
    """A per-layer row's ``layer`` as text: "input" for None, else "layer 3" (``short``: "L3")."""
    return "input" if layer is None else f"L{layer}" if short else f"layer {layer}"


def _int_layer(row: dict) -> dict:
    """A per-layer row with ``layer`` an int (None: the input); rows of files written before
    (``"explained": "input"`` / ``"layer 3"``) are converted, keys in the order written now."""
    if "explained" not in row:
        return row
    where = row["explained"]
    layer = None if where == "input" else int(where.removeprefix("layer "))
    return {"layer": layer, **{k: v for k, v in row.items() if k != "explained"}}


def convert_layer_files(folder: str | Path = RESULTS_DIR) -> list[Path]:
    """Rewrite ``layers*.json`` / ``.csv`` in ``folder`` with an int ``layer`` in place of the text
    ``explained`` (None, an empty CSV cell, for the input); the rest of each file is kept.
    Returns the JSON files rewritten (none if all are current)."""
    written = []
    for path in sorted(Path(folder).glob("layers*.json")):
        record = json.loads(path.read_text())
        if not any("explained" in r for r in record["rows"]):
            continue
        rows = [_int_layer(r) for r in record["rows"]]
        _write_rows(rows, path.with_suffix(""), record["command"],
                    {k: v for k, v in record.items() if k not in ("command", "rows")})
        written.append(path)
    return written


def layers_stem(model_name: str, out: Path = RESULTS_DIR) -> Path:
    """Where ``python -m coda.sweeps layers`` writes (without suffix): ``layers`` for the
    default shipped model, ``layers-<model name>`` for any other."""
    from coda import pretrained

    default = pretrained.default_name() if pretrained.list_pretrained() else None
    return Path(out) / ("layers" if model_name == default else f"layers-{model_name}")


def read_sweep_results(folder: str | Path = RESULTS_DIR) -> dict | None:
    """The tables written by ``python -m coda.sweeps evaluate`` and ``... layers``; None if absent.

    Returns
    -------
    None if ``folder`` holds no ``sweeps.json``, ``layers.json`` or ``layers-*.json``; else a dict with

    * ``rows``: one dict per evaluated run (name, sweeps, model, temperature, rank_factor,
      stem_depth, epochs, source, parameters, test_accuracy, explained_from,
      localisation_mean, localisation_median, n_grids, removal_mean, n_removal, seconds; a
      metric that does not apply is None), ``[]`` without ``sweeps.json``;
    * ``budget`` (the training budget the runs shared), ``n_grids``, ``n_removal`` and
      ``command`` of ``sweeps.json`` (None without it);
    * ``layers``: one dict per explained layer (layer: an int, None for the input;
      localisation_mean, localisation_median, n_grids; files with the older text
      ``explained`` are read as such rows), ``[]`` without ``layers.json``; ``layers_model``
      and ``layers_command``: the model they belong to and the command (None without it);
    * ``layers_of``: ``{model name: rows like layers}`` from ``layers-<model>.json`` (other
      models than the default, e.g. the sweeps' centre run at the hybrids' depths).
    """
    folder = Path(folder)
    sweeps_path, layers_path = folder / "sweeps.json", folder / "layers.json"
    other_layers = sorted(folder.glob("layers-*.json"))
    if not sweeps_path.exists() and not layers_path.exists() and not other_layers:
        return None
    record = json.loads(sweeps_path.read_text()) if sweeps_path.exists() else {}
    layers = json.loads(layers_path.read_text()) if layers_path.exists() else {}
    others = {path: json.loads(path.read_text()) for path in other_layers}
    for path, rec in ((sweeps_path, record), (layers_path, layers), *others.items()):
        if rec and not isinstance(rec.get("rows"), list):
            raise ValueError(f"{path}: expected a list of rows under 'rows'")
    return {"rows": record.get("rows", []), "budget": record.get("budget"), "n_grids": record.get("n_grids"),
            "n_removal": record.get("n_removal"), "command": record.get("command"),
            "layers": [_int_layer(r) for r in layers.get("rows", [])], "layers_model": layers.get("model"),
            "layers_command": layers.get("command"),
            "layers_of": {rec["model"]: [_int_layer(r) for r in rec["rows"]] for rec in others.values()}}


def centre_from_layer(results: dict) -> dict[int, dict]:
    """``{d: layer row}``: the centre run (no stem) explained from the input of its layer ``d``.

    The reference for the stem-``d`` hybrid, whose CoDA part starts at the same depth; from
    ``layers-<centre run>.json`` (``python -m coda.sweeps layers --model <centre run>``), with
    ``d = 0`` (the input) taken from the centre run's own row when it is evaluated.
    ``results`` is :func:`read_sweep_results`'s dict.
    """
    rows = {r["layer"] or 0: r for r in results["layers_of"].get(run_name(), [])}  # the input is layer 0's
    own = next((r for r in results["rows"] if r["name"] == run_name()), None)
    if own is not None and 0 not in rows:
        rows[0] = {"layer": None, **{k: own[k] for k in ("localisation_mean", "localisation_median", "n_grids")}}
    return dict(sorted(rows.items()))


def sweep_rows(rows: list[dict], sweep: str) -> list[dict]:
    """The result rows of one sweep's runs, sorted by the sweep's variable.

    A row belongs to ``sweep`` if its name is one of :func:`sweep_runs` (so the shared
    centre run is in all three). Sorted by :data:`SWEEP_VARIABLES` ``[sweep]``
    (temperature, rank_factor or stem_depth), rows without a value after those with one,
    and the CNN baseline of the depth sweep last.
    """
    if sweep not in SWEEP_VARIABLES:
        raise ValueError(f"unknown sweep {sweep!r}; expected one of {SWEEPS}")
    names, key = sweep_runs(sweep), SWEEP_VARIABLES[sweep]

    def order(row: dict) -> tuple:
        value = row.get(key)
        return (row.get("model") == CNN_BASELINE, value is None, 0 if value is None else value, row["name"])

    return sorted((r for r in rows if r.get("name") in names), key=order)


def markdown_tables(folder: str | Path = RESULTS_DIR) -> str:
    """The README's sweep tables (markdown) from the results in ``folder``.

    One table per sweep with evaluated runs, and one of the per-layer localisation: the
    temperature sweep next to the paper's values at the same T (localisation and pixel
    removal of the CoDA contributions, docs/method.md#published-numbers), the rank sweep with the number of
    parameters, the depth sweep with what the contributions explain. A run not evaluated yet is
    listed as missing under its table. ``ValueError`` if ``folder`` holds no results.
    """
    from coda.evaluate import PUBLISHED

    res = read_sweep_results(folder)
    if res is None:
        raise ValueError(f"no sweep results in {folder} (expected sweeps.json or layers.json "
                         "written by python -m coda.sweeps evaluate / layers)")

    def num(value) -> str:
        return "-" if value is None else f"{value:.3f}"

    def loc(r: dict) -> str:
        if r["localisation_mean"] is None:
            return "-"
        return f"{r['localisation_mean']:.3f} ({r['localisation_median']:.3f})"

    def percent(r: dict) -> str:
        return f"{100 * r['test_accuracy']:.2f}%"

    def published(key: str, t: float) -> str:
        values = {float(k): v for k, v in PUBLISHED[key].items()}
        return num(values.get(float(t)))

    def depth_label(r: dict) -> str:
        return "CNN baseline" if r["model"] == CNN_BASELINE else f"stem depth {r['stem_depth']}"

    def missing(sweep: str, rows: list[dict]) -> list[str]:
        names = [n for n in sweep_runs(sweep) if n not in {r["name"] for r in rows}]
        return [f"Not evaluated yet: {', '.join(names)}.", ""] if names else []

    out: list[str] = []
    if res["rows"]:
        budget = res["budget"] or {}
        out += [f"Budget of every run: {budget.get('epochs')} epochs, batch {budget.get('batch_size')}, "
                f"lr {budget.get('lr')} ({budget.get('schedule')}), seed {budget.get('seed')}. "
                f"Localisation: mean (median) of the 3x3 pointing game on up to {res['n_grids']} grids; "
                f"pixel removal: mean over the curve on {res['n_removal']} test images.", ""]
        rows = sweep_rows(res["rows"], "temperature")
        out += ["| T | test accuracy | localisation | grids | published | pixel removal | published |",
                "|---:|---:|---:|---:|---:|---:|---:|"]
        out += [f"| {r['temperature']:g} | {percent(r)} | {loc(r)} | {r['n_grids']} | "
                f"{published('localisation_mean_coda_vs_temperature', r['temperature'])} | "
                f"{num(r['removal_mean'])} | {published('removal_mean_coda_vs_temperature', r['temperature'])} |"
                for r in rows]
        out += [""] + missing("temperature", rows)
        rows = sweep_rows(res["rows"], "rank")
        out += ["| rank factor f | parameters | test accuracy | localisation | pixel removal |",
                "|---:|---:|---:|---:|---:|"]
        out += [f"| {r['rank_factor']} | {r['parameters']:,} | {percent(r)} | {loc(r)} | {num(r['removal_mean'])} |"
                for r in rows]
        out += [""] + missing("rank", rows)
        rows = sweep_rows(res["rows"], "depth")
        centre = centre_from_layer(res)
        same = [centre.get(r["stem_depth"]) if r["stem_depth"] and r["model"] != CNN_BASELINE else None
                for r in rows]
        if any(same):
            out += ["| model | parameters | test accuracy | explained from | localisation | "
                    f"`{run_name()}` explained from the same layer |", "|---|---:|---:|---|---:|---:|"]
        else:
            out += ["| model | parameters | test accuracy | explained from | localisation |", "|---|---:|---:|---|---:|"]
        for r, c in zip(rows, same, strict=True):
            line = f"| {depth_label(r)} | {r['parameters']:,} | {percent(r)} | {r['explained_from']} | {loc(r)} |"
            out.append(line + (f" {loc(c) if c else '-'} |" if any(same) else ""))
        out += [""] + missing("depth", rows)
    if res["layers"]:
        out += [f"Localisation at each layer's input of `{res['layers_model']}`:", "",
                "| explained | localisation | grids |", "|---|---:|---:|"]
        out += [f"| {layer_text(r['layer'])} | {loc(r)} | {r['n_grids']} |" for r in res["layers"]]
        out.append("")
    return "\n".join(out)


def _write_rows(rows: list[dict], stem: Path, command: str, extra: dict) -> None:
    header = list(rows[0]) if rows else []
    lines = [",".join(header)] + [",".join("" if r[k] is None else str(r[k]) for k in header) for r in rows]
    write_text("\n".join(lines) + "\n", stem.with_suffix(".csv"))
    write_json({"command": command, "rows": rows, **extra}, stem.with_suffix(".json"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=cli.prog("sweeps"), description="Train the ablation sweeps.")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train (resume) every unfinished run of the sweeps")
    t.add_argument("sweeps", nargs="+", choices=SWEEPS)
    t.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    t.add_argument("--data", help="data folder (default: $CODA_DATA, else data/)")
    t.add_argument("--device")
    s = sub.add_parser("status", help="epochs done and test accuracy of every run")
    s.add_argument("sweeps", nargs="*", help=f"some of {SWEEPS} (default: all)")
    s.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    e = sub.add_parser("evaluate", help="accuracy, localisation and pixel removal of every available run")
    e.add_argument("sweeps", nargs="*", help=f"some of {SWEEPS} (default: all)")
    e.add_argument("--runs-dir", type=Path, default=RUNS_DIR)
    e.add_argument("--out", type=Path, default=RESULTS_DIR)
    e.add_argument("--n-grids", type=int, default=EVAL_SIZES["n_grids"])
    e.add_argument("--n-removal", type=int, default=EVAL_SIZES["n_removal"])
    e.add_argument("--data", help="data folder (default: $CODA_DATA, else data/)")
    e.add_argument("--force", action="store_true", help="re-evaluate runs whose stored results match")
    tab = sub.add_parser("table", help="print the README's markdown tables of the stored results")
    tab.add_argument("--out", type=Path, default=RESULTS_DIR, help="the results folder")
    layers = sub.add_parser("layers", help="localisation at every CoDA layer of a model")
    layers.add_argument("--model", default=None, help="shipped model name or checkpoint (default: the default model)")
    layers.add_argument("--out", type=Path, default=RESULTS_DIR)
    layers.add_argument("--layers", type=int, nargs="+", help="CoDA layer indices (default: all)")
    layers.add_argument("--n-grids", type=int, default=EVAL_SIZES["n_grids"])
    layers.add_argument("--data", help="data folder (default: $CODA_DATA, else data/)")
    layers.add_argument("--force", action="store_true",
                        help="score every layer again (default: reuse the rows kept in OUT/tasks/ with these settings)")
    a = p.parse_args(argv)
    command = cli.recorded_command("coda.sweeps", sys.argv[1:] if argv is None else argv)
    if a.command == "train":
        train_sweeps(a.sweeps, a.runs_dir, a.data, a.device)
    elif a.command == "evaluate":
        evaluate_sweeps(a.sweeps or SWEEPS, a.runs_dir, a.out, a.data, a.n_grids, a.n_removal, command, a.force)
    elif a.command == "table":
        print(markdown_tables(a.out), end="")
    elif a.command == "layers":
        from coda import pretrained

        model, info = load_model(a.model or pretrained.default_name())
        stem = layers_stem(info["name"], a.out)
        cache = Path(a.out) / "tasks" / f"{stem.name}.json"
        if a.force:
            cache.unlink(missing_ok=True)
        rows = evaluate_layers(model, load_cifar10("test", a.data), a.n_grids, layers=a.layers, cache=cache)
        _write_rows(rows, stem, command, {"model": info["name"], "n_grids": a.n_grids})
    else:
        for name, cfg in all_runs(a.sweeps or SWEEPS).items():
            st = run_status(name, cfg, a.runs_dir)
            if st["shipped"] or st.get("retired"):
                print(f"{name:32s} {'shipped in' if st['shipped'] else 'retired from'} data/pretrained")
                continue
            acc = "-" if st["test_accuracy"] is None else f"{st['test_accuracy']:.4f}"
            pid = lock_holder(a.runs_dir / name)
            training = "" if pid is None else f"  (training now, process {pid})"
            print(f"{name:32s} {st['epochs_done']:3d}/{st['epochs']} epochs  test accuracy {acc}{training}")


if __name__ == "__main__":
    main()
