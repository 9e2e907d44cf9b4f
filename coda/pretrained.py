"""Shipped CIFAR-10 models: load them by name, export new ones from training checkpoints.

A folder of shipped models (``data/pretrained/`` in the project) holds, per model ``NAME``,

- ``NAME.pt``: the weights, the model config and the metrics (no optimiser state); the
  weights are stored in float16 (half the bytes) and loaded back as float32,
- ``NAME.md``: a model card generated from the same data (how it was trained, how well it
  does, how to retrain it),

and one ``manifest.json`` that lists them all and names the default teaching model::

    {"format": 1, "default": NAME, "models": {NAME: {"file": "NAME.pt", "sha256": ..., ...}},
     "retired": {OLD: {..., "retired": "why"}}}

Names end in ``-T<temperature>`` (e.g. ``cifar10-9L-S-f8-T1000``). :func:`load_pretrained`
checks the file's SHA-256 and its stored config against the manifest before building the model.
A retired model keeps its card and its manifest entry (under ``"retired"``) but no longer ships
its weights; the project's git history has them.

Command line::

    python -m coda.pretrained list
    python -m coda.pretrained evaluate NAME
    python -m coda.pretrained export --checkpoint runs/NAME/last.pt --name NAME [--default] [--hardware TEXT]
    python -m coda.pretrained resave NAME [NAME ...] --storage float16   # re-store, re-measure
    python -m coda.pretrained retire NAME --reason TEXT [--commit HASH]
    python -m coda.pretrained default NAME                                # the manifest's default
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import torch

from coda import cli
from coda.cards import card_notes, describe_machine, model_card
from coda.checkpoint import load_checkpoint, save_checkpoint, sha256, write_json, write_text
from coda.data import PROJECT_ROOT, load_cifar10
from coda.inference import evaluate_accuracy
from coda.models import CoDANet, CoDANetConfig

PRETRAINED_DIR = PROJECT_ROOT / "data" / "pretrained"
MANIFEST = "manifest.json"
FORMAT = 1
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}  # how weights files store floats
DEFAULT_STORAGE = "float16"
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ----- reading -----------------------------------------------------------------------------


def pretrained_dir(root: str | os.PathLike | None = None) -> Path:
    """The folder of shipped models: ``root``, else ``data/pretrained/`` in the project."""
    return PRETRAINED_DIR if root is None else Path(root)


def read_manifest(root: str | os.PathLike | None = None) -> dict:
    """The manifest of ``root`` (an empty one if the folder has none yet)."""
    path = pretrained_dir(root) / MANIFEST
    if not path.exists():
        return {"format": FORMAT, "default": None, "models": {}}
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object, got a {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: manifest format {manifest.get('format')!r}, expected {FORMAT}")
    for section in ("models", "retired"):
        _check_entries(manifest, section, path)
    return manifest


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _check_entries(manifest: dict, section: str, path: Path) -> None:
    """Raise ``ValueError`` naming ``path`` unless ``manifest[section]`` maps names to entries with a
    ``file``, a ``model_config`` and a ``sha256`` of 64 hex digits (a file is never loaded unchecked)."""
    entries = manifest.get(section, {} if section == "retired" else None)
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: expected {section!r} to be an object of name -> entry, got {entries!r:.80}")
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: the entry of {name!r} is a {type(entry).__name__}, expected an object")
        if not isinstance(entry.get("sha256"), str) or not _SHA256.match(entry["sha256"]):
            raise ValueError(f"{path}: {name!r} has sha256 {entry.get('sha256')!r}; expected 64 hex digits "
                             "(the SHA-256 every load checks)")
        if not isinstance(entry.get("file"), str) or not isinstance(entry.get("model_config"), dict):
            raise ValueError(f"{path}: {name!r} needs a 'file' name and a 'model_config' object")


def list_pretrained(root: str | os.PathLike | None = None) -> list[str]:
    """Sorted names of the shipped models in ``root`` (default ``data/pretrained/``)."""
    return sorted(read_manifest(root)["models"])


def list_retired(root: str | os.PathLike | None = None) -> list[str]:
    """Sorted names of the retired models of ``root``: cards kept, weights no longer shipped."""
    return sorted(read_manifest(root).get("retired", {}))


def default_name(root: str | os.PathLike | None = None) -> str:
    """The name of the default teaching model; ``ValueError`` if the manifest names none."""
    manifest = read_manifest(root)
    if not manifest.get("default"):
        raise ValueError(
            f"{pretrained_dir(root) / MANIFEST} names no default model; pass a name, one of "
            f"{sorted(manifest['models'])}"
        )
    return manifest["default"]


def load_pretrained(
    name: str | None = None,
    device: str | torch.device | None = None,
    root: str | os.PathLike | None = None,
) -> CoDANet:
    """Load a shipped model, checked against the manifest.

    Parameters
    ----------
    name : a name from :func:`list_pretrained`; ``None`` loads the default teaching model.
    device : where to put the model (default: CPU).
    root : the folder of shipped models (default ``data/pretrained/`` in the project).

    Returns
    -------
    The :class:`CoDANet` in eval mode: images (B, 3, 32, 32) in [0, 1] -> logits (B, 10).

    Raises ``ValueError`` if the name is unknown, the file's SHA-256 differs from the
    manifest's (corrupted or replaced file), or the config stored in the file differs from
    the manifest's. A retired model loads only if its file was put back from the git history
    (the error says how); weights stored in float16 come back as float32.
    """
    folder = pretrained_dir(root)
    if not (folder / MANIFEST).exists():
        raise FileNotFoundError(
            f"no shipped models: {folder / MANIFEST} not found (export one with `python -m coda.pretrained export`)"
        )
    name = default_name(root) if name is None else name
    entry = _entry(read_manifest(root), name, folder)
    path = folder / entry["file"]
    weights = load_checkpoint(path, expected_sha256=entry["sha256"])
    if weights.get("format") != FORMAT:
        raise ValueError(f"{path}: weights format {weights.get('format')!r}, expected {FORMAT}")
    check_config(weights["model_config"], entry["model_config"], f"{path} vs {folder / MANIFEST}")
    model = CoDANet(config_from_dict(weights["model_config"]))
    try:
        model.load_state_dict(float32_state_dict(weights["state_dict"]), strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: the weights do not fit the stored config ({err})") from err
    return model.to(device).eval()


def _entry(manifest: dict, name: str, folder: Path) -> dict:
    retired = manifest.get("retired", {})
    if name in retired and not (folder / retired[name]["file"]).exists():
        raise ValueError(_retired_message(name, retired[name], folder))
    if name in retired:  # its file was put back by hand: the SHA-256 check still applies
        return retired[name]
    if name not in manifest["models"]:
        raise ValueError(
            f"no shipped model {name!r} in {folder / MANIFEST}; expected one of {sorted(manifest['models'])}"
        )
    return manifest["models"][name]


def _retired_message(name: str, entry: dict, folder: Path) -> str:
    tracked = f"data/pretrained/{entry['file']}"
    return (
        f"model {name!r} is retired ({entry['retired']}); its card {folder / entry['card']} is kept but "
        f"its weights are no longer shipped. To load it, put the file back from the project's git "
        f"history: `git show {entry.get('last_commit') or '<commit>'}:{tracked} > {folder / entry['file']}` "
        f"(`git log -- {tracked}` finds the commit); the manifest's SHA-256 still checks it"
    )


def float32_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with every floating-point tensor as float32 (others unchanged)."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}


def storage_state_dict(state_dict: dict[str, torch.Tensor], storage: str) -> dict[str, torch.Tensor]:
    """``state_dict`` as a weights file stores it: floating-point tensors in ``storage``.

    Parameters
    ----------
    state_dict : a model's state dict (any floating-point dtype).
    storage : a key of :data:`STORAGE_DTYPES` ("float16" or "float32").

    Raises ``ValueError`` naming the tensor if a finite value does not fit the storage dtype
    (float16 holds magnitudes up to 65504).
    """
    if storage not in STORAGE_DTYPES:
        raise ValueError(f"unknown storage dtype {storage!r}; expected one of {sorted(STORAGE_DTYPES)}")
    dtype, out = STORAGE_DTYPES[storage], {}
    for key, value in state_dict.items():
        if value.is_floating_point():
            stored = value.detach().to(dtype)
            if not torch.equal(torch.isfinite(stored), torch.isfinite(value)):
                raise ValueError(
                    f"{key}: values up to {value.abs().max().item():.4g} do not fit {storage} "
                    f"(largest {torch.finfo(dtype).max:.4g}); store this model as float32"
                )
            value = stored
        out[key] = value
    return out


def as_stored(model: CoDANet, storage: str = DEFAULT_STORAGE) -> CoDANet:
    """A copy of ``model`` (eval mode, float32) with its weights rounded as ``storage`` keeps them:
    the model :func:`load_pretrained` will return, to evaluate before shipping."""
    copy = CoDANet(model.config)
    copy.load_state_dict(float32_state_dict(storage_state_dict(model.state_dict(), storage)), strict=True)
    return copy.eval()


def config_from_dict(config: dict) -> CoDANetConfig:
    """A :class:`CoDANetConfig` from its dict, also after a JSON round trip (lists -> tuples)."""
    return CoDANetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def _jsonable(obj):
    """``obj`` as it comes back from JSON (tuples become lists): the form configs are compared in."""
    return json.loads(json.dumps(obj))


def check_config(stored: dict, expected: dict, where: str) -> None:
    """Raise ``ValueError`` naming the fields where two model configs differ."""
    stored, expected = _jsonable(stored), _jsonable(expected)
    if stored != expected:
        fields = sorted(k for k in stored.keys() | expected.keys() if stored.get(k) != expected.get(k))
        diffs = ", ".join(f"{k}: {stored.get(k)!r} != {expected.get(k)!r}" for k in fields)
        raise ValueError(f"model config mismatch ({where}): {diffs}")


def model_from_checkpoint(ckpt: dict) -> CoDANet:
    """The model of a training checkpoint (a dict written by :mod:`coda.train`), eval mode."""
    model = CoDANet(config_from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"], strict=True)
    return model.eval()


def load_model(spec: str, device: str | torch.device | None = None) -> tuple[CoDANet, dict]:
    """A model from a training checkpoint path or a shipped model's name.

    A path to a file written by :mod:`coda.train` (keys ``"model_config"`` and ``"model"``)
    builds that model; one of the authors' published names goes to :func:`coda.published.load_published`
    (downloaded on first use); anything else to :func:`coda.load_pretrained`.

    Returns
    -------
    ``(model, info)``: the model in eval mode on ``device``, and a dict for the results
    record (name, source, SHA-256 of a checkpoint file, config; for a checkpoint also its epoch,
    step, where it recorded them the training CPU-hours behind it, and the git commit whose
    version of the file it is, see :func:`committed_in`).
    """
    from coda import published  # the authors' models, downloaded on first use: imported only here

    path = Path(spec)
    if path.is_file():
        ckpt = load_checkpoint(path)
        if not {"model_config", "model"} <= set(ckpt):
            raise ValueError(f"{path} is not a coda.train checkpoint (no 'model_config' and 'model' keys)")
        model = model_from_checkpoint(ckpt)
        info = {"name": model_name(spec), "source": "checkpoint", "path": _shown_path(path), "sha256": sha256(path),
                "epoch": ckpt.get("epoch"), "step": ckpt.get("step"), "git_commit": committed_in(path)}
        if "cpu_time" in ckpt:  # how much training the evaluated state had had
            info["cpu_hours"] = round(ckpt["cpu_time"] / 3600, 3)
    elif spec in published.list_published():
        model = published.load_published(spec)
        record = published.read_record(published.default_cache_dir() / f"{spec}.json") or {}
        info = {"name": spec, "source": "coda.published", "sha256": record.get("sha256")}
    else:
        if path.suffix in (".pt", ".pth"):
            raise ValueError(f"checkpoint {path} not found")
        model = load_pretrained(spec)
        entry = read_manifest()["models"][spec]
        info = {"name": spec, "source": "coda.pretrained", "sha256": entry["sha256"]}
    info["model_config"] = model.config.to_dict()
    return model.to(device).eval(), info


def _shown_path(path: Path) -> str:
    """``path`` relative to the project when it lies inside it (no machine paths in records)."""
    try:
        return path.resolve().relative_to(PROJECT_ROOT.resolve()).as_posix()
    except ValueError:
        return str(path)


def committed_in(path: str | Path) -> str | None:
    """The git commit that last changed ``path``, if the file on disk is that commit's version.

    Lets a results record name the committed training state it evaluated. ``None`` where that
    cannot be said: git missing, ``path`` outside a repository or untracked, or the file
    differing from its version at ``HEAD`` (a run that has trained on since its last commit).
    """
    path = Path(path).resolve()
    committed = cli.git_output(path.parent, "rev-parse", "--verify", "--quiet", f"HEAD:./{path.name}")
    if committed is None or committed != cli.git_output(path.parent, "hash-object", "--", path.name):
        return None
    return cli.git_output(path.parent, "log", "-1", "--format=%H", "--", path.name)


def model_name(spec: str) -> str:
    """The name :func:`load_model` gives ``spec``, without loading it."""
    path = Path(spec)
    if path.is_file():
        return path.parent.name if path.stem in ("last", "best") else path.stem
    return spec


# ----- exporting ---------------------------------------------------------------------------


def temperature_suffix(temperature: float) -> str:
    """The end of every shipped model's and sweep run's name: ``-T<temperature>`` (``-T1000``)."""
    return f"-T{float(temperature):g}"


def check_name(name: str, temperature: float) -> None:
    """``ValueError`` unless ``name`` is a plain file name ending in the suffix derived from ``temperature``."""
    suffix = temperature_suffix(temperature)
    if not (_FILE_NAME.match(name) and name.endswith(suffix) and len(name) > len(suffix)):
        raise ValueError(f"model name {name!r} must be letters, digits, '-', '_' or '.' and end in "
                         f"{suffix!r} (the model's temperature)")


def export_pretrained(
    checkpoint_path: str | os.PathLike,
    name: str,
    *,
    dest: str | os.PathLike | None = None,
    test_accuracy: float | None = None,
    per_class: dict[str, float] | None = None,
    test_images: int | None = None,
    notes: str = "",
    default: bool = False,
    hardware: str | None = None,
    storage: str = DEFAULT_STORAGE,
) -> Path:
    """Turn a training checkpoint into a shipped model: weights file, model card, manifest entry.

    Parameters
    ----------
    checkpoint_path : a ``last.pt`` written by :func:`coda.train.train`.
    name : the shipped name, ending in ``-T<temperature>``; an existing entry is replaced.
    dest : the folder of shipped models (default ``data/pretrained/`` in the project).
    test_accuracy, per_class, test_images : the test-set evaluation (see
        :func:`coda.train.evaluate_accuracy`); recorded in the manifest and the card.
    notes : markdown for the card's "Why this architecture" section.
    default : make this the default teaching model.
    hardware : the machine that trained it, for the card (default: this machine).
    storage : how the file stores the weights, "float16" (default, half the bytes) or
        "float32"; :func:`load_pretrained` returns float32 either way. Measure the test accuracy
        on :func:`as_stored` of the model, which is what a user will load.

    Returns
    -------
    The path of the weights file. Every file is written atomically.
    """
    folder = pretrained_dir(dest)
    ckpt = load_checkpoint(checkpoint_path)
    model_config = _jsonable(ckpt["model_config"])
    check_name(name, model_config["temperature"])
    model = model_from_checkpoint(ckpt)  # fails early on an inconsistent checkpoint
    metrics = {"test_accuracy": test_accuracy, "per_class_accuracy": per_class, "test_images": test_images}
    weights = {
        "format": FORMAT,
        "name": name,
        "model_config": model_config,
        "train_config": _jsonable(ckpt["config"]),
        "metrics": metrics,
        "storage": storage,
        "state_dict": storage_state_dict(ckpt["model"], storage),
    }
    path = folder / f"{name}.pt"
    save_checkpoint(weights, path)
    entry = _manifest_entry(ckpt, name, path, model, metrics, hardware or describe_machine())
    entry["storage"] = storage
    write_text(model_card(entry, notes), folder / entry["card"])
    manifest = read_manifest(dest)
    manifest["models"][name] = entry
    if default or not manifest.get("default"):
        manifest["default"] = name
    write_json(manifest, folder / MANIFEST)
    return path


def set_default(name: str, root: str | os.PathLike | None = None) -> None:
    """Make the shipped model ``name`` the default of :func:`load_pretrained` (only the manifest changes)."""
    folder = pretrained_dir(root)
    manifest = read_manifest(root)
    if name not in manifest["models"]:
        raise ValueError(f"no shipped model {name!r} in {folder / MANIFEST}; expected one of {sorted(manifest['models'])}")
    manifest["default"] = name
    write_json(manifest, folder / MANIFEST)


def _manifest_entry(ckpt: dict, name: str, path: Path, model: CoDANet, metrics: dict, hardware: str) -> dict:
    from coda.train import TrainConfig, train_command  # the trainer, needed only to export

    cfg = ckpt["config"]
    return {
        "file": path.name,
        "card": f"{name}.md",
        "sha256": sha256(path),
        "size_bytes": path.stat().st_size,
        "model": cfg["model"],
        "model_config": _jsonable(ckpt["model_config"]),
        "train_config": _jsonable(cfg),
        "parameters": sum(p.numel() for p in model.parameters()),
        "epochs": ckpt["epoch"],
        "steps_into_epoch": ckpt["step"],
        "wall_time_s": round(ckpt["wall_time"], 1),
        "hardware": hardware,
        "history": _jsonable(ckpt["history"]),
        "retrain": train_command(TrainConfig(**cfg), out=f"runs/{name}"),
        **metrics,
    }


def resave_pretrained(
    name: str,
    evaluate: Callable[[CoDANet], dict],
    storage: str = DEFAULT_STORAGE,
    *,
    root: str | os.PathLike | None = None,
) -> dict:
    """Store a shipped model's weights in ``storage`` and re-measure its test accuracy.

    The new file replaces the old one (atomically); the manifest entry gets the new SHA-256,
    size, storage dtype and accuracy, and keeps what described the old file under
    ``"previous_file"``: its SHA-256 and size, the :func:`coda.sweeps.weights_fingerprint` of
    its weights (the keys under which results computed from it are stored), the accuracy
    recorded at export and the one re-measured now. The card is regenerated (its notes kept).

    Parameters
    ----------
    name : a shipped model (:func:`list_pretrained`).
    evaluate : ``model -> {"accuracy", "per_class", "n"}`` (e.g. :func:`coda.inference.evaluate_accuracy`
        on the test set, in float32); called on the old and on the re-stored weights.
    storage : "float16" or "float32".
    root : the folder of shipped models (default ``data/pretrained/``).

    Returns
    -------
    The new manifest entry. ``ValueError`` if the file already stores ``storage``.
    """
    from coda.sweeps import weights_fingerprint  # sits above this module; needed only here

    folder = pretrained_dir(root)
    manifest = read_manifest(root)
    if name not in manifest["models"]:
        raise ValueError(f"no shipped model {name!r} in {folder / MANIFEST}; expected one of {sorted(manifest['models'])}")
    entry = manifest["models"][name]
    path = folder / entry["file"]
    weights = load_checkpoint(path, expected_sha256=entry["sha256"])
    if weights.get("storage", "float32") == storage:
        raise ValueError(f"{path} already stores its weights as {storage}")
    old_model = load_pretrained(name, root=root)
    weights["storage"] = storage
    weights["state_dict"] = storage_state_dict(weights["state_dict"], storage)
    new_model = as_stored(old_model, storage)
    old, new = evaluate(old_model), evaluate(new_model)
    weights["metrics"] = {"test_accuracy": new["accuracy"], "per_class_accuracy": new["per_class"],
                          "test_images": new["n"]}
    previous = {
        "sha256": entry["sha256"],
        "size_bytes": entry["size_bytes"],
        "storage": entry.get("storage", "float32"),
        "weights_fingerprint": weights_fingerprint(old_model),
        "test_accuracy_at_export": entry["test_accuracy"],
        "test_accuracy_remeasured": old["accuracy"],
        "test_images_remeasured": old["n"],
    }
    save_checkpoint(weights, path)
    entry.update(sha256=sha256(path), size_bytes=path.stat().st_size, storage=storage,
                 weights_fingerprint=weights_fingerprint(new_model), test_accuracy=new["accuracy"],
                 per_class_accuracy=new["per_class"], test_images=new["n"], previous_file=previous)
    write_text(model_card(entry, card_notes(folder / entry["card"])), folder / entry["card"])
    manifest = read_manifest(root)  # read again: the evaluations take minutes, other entries may have changed
    manifest["models"][name] = entry
    write_json(manifest, folder / MANIFEST)
    return entry


def retire_pretrained(name: str, reason: str, *, last_commit: str | None = None,
                      root: str | os.PathLike | None = None) -> dict:
    """Stop shipping a model's weights; keep its card and manifest entry under ``"retired"``.

    Parameters
    ----------
    name : a shipped model (:func:`list_pretrained`); it must not be the default.
    reason : why, one or two sentences for the card and for the error :func:`load_pretrained` gives.
    last_commit : the git commit that still holds the weights file (for the error message).
    root : the folder of shipped models (default ``data/pretrained/``).

    Deletes the weights file (the history keeps it) and regenerates the card with a "retired"
    banner. Returns the retired entry.
    """
    folder = pretrained_dir(root)
    manifest = read_manifest(root)
    if name not in manifest["models"]:
        raise ValueError(f"no shipped model {name!r} in {folder / MANIFEST}; expected one of {sorted(manifest['models'])}")
    if manifest.get("default") == name:
        raise ValueError(f"{name!r} is the default model of {folder / MANIFEST}; choose another default "
                         "first (python -m coda.pretrained default OTHER)")
    if not reason.strip():
        raise ValueError("give a reason for retiring the model (it goes into the card)")
    entry = manifest["models"].pop(name)
    entry.update(retired=reason.strip(), last_commit=last_commit)
    manifest.setdefault("retired", {})[name] = entry
    write_text(model_card(entry, card_notes(folder / entry["card"])), folder / entry["card"])
    write_json(manifest, folder / MANIFEST)
    (folder / entry["file"]).unlink(missing_ok=True)
    return entry


# ----- command line ------------------------------------------------------------------------


def _evaluate(model: CoDANet, data_root: str | None, n: int | None, device: str | None) -> dict:
    test = load_cifar10("test", data_root)
    test = test.first(n) if n else test
    return evaluate_accuracy(model.to(device), test, precision="fp32")


def _cmd_export(a: argparse.Namespace) -> None:
    model = as_stored(model_from_checkpoint(load_checkpoint(a.checkpoint)), a.storage)  # as users will load it
    result = _evaluate(model, a.data, a.test_images, a.device)
    print(f"test accuracy {result['accuracy']:.4f} on {result['n']} images")
    notes = Path(a.notes_file).read_text() if a.notes_file else ""
    path = export_pretrained(
        a.checkpoint,
        a.name,
        dest=a.dest,
        test_accuracy=result["accuracy"],
        per_class=result["per_class"],
        test_images=result["n"],
        notes=notes,
        default=a.default,
        hardware=a.hardware,
        storage=a.storage,
    )
    print(f"wrote {path}, {path.with_suffix('.md')} and {path.parent / MANIFEST}")


def _cmd_resave(a: argparse.Namespace) -> None:
    test = load_cifar10("test", a.data)
    test = test.first(a.n) if a.n else test

    def evaluate(model: CoDANet) -> dict:
        return evaluate_accuracy(model.to(a.device), test, precision="fp32")

    for name in a.names:
        entry = resave_pretrained(name, evaluate, a.storage, root=a.root)
        before = entry["previous_file"]
        print(f"{name}: {before['size_bytes']:,} -> {entry['size_bytes']:,} bytes; test accuracy "
              f"{before['test_accuracy_remeasured']:.4f} ({before['storage']}) -> {entry['test_accuracy']:.4f} "
              f"({entry['storage']}) on {entry['test_images']} images", flush=True)


def _cmd_retire(a: argparse.Namespace) -> None:
    entry = retire_pretrained(a.name, a.reason, last_commit=a.commit, root=a.root)
    print(f"retired {a.name}: removed {pretrained_dir(a.root) / entry['file']}, kept its card and manifest entry")


def _cmd_default(a: argparse.Namespace) -> None:
    set_default(a.name, a.root)
    print(f"{a.name} is now the default of coda.load_pretrained() ({pretrained_dir(a.root) / MANIFEST})")


def _cmd_list(a: argparse.Namespace) -> None:
    manifest = read_manifest(a.root)
    if not manifest["models"]:
        print(f"no shipped models in {pretrained_dir(a.root)}")
    for name in sorted(manifest["models"]):
        entry = manifest["models"][name]
        acc = "-" if entry["test_accuracy"] is None else f"{entry['test_accuracy']:.4f}"
        print(f"{name}\ttest accuracy {acc}" + ("\t(default)" if name == manifest["default"] else ""))
    for name in sorted(manifest.get("retired", {})):
        print(f"{name}\tretired: card kept, weights only in the git history")


def _cmd_evaluate(a: argparse.Namespace) -> None:
    model = load_pretrained(a.name, device=a.device, root=a.root)
    result = _evaluate(model, a.data, a.n, a.device)
    print(f"{a.name or default_name(a.root)}: test accuracy {result['accuracy']:.4f} on {result['n']} images")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=cli.prog("pretrained"), description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="evaluate a training checkpoint on the test set and ship it")
    e.add_argument("--checkpoint", required=True, help="last.pt written by python -m coda.train")
    e.add_argument("--name", required=True, help="shipped name, ending in -T<temperature>")
    e.add_argument("--default", action="store_true", help="make it the default teaching model")
    e.add_argument("--notes-file", help="markdown for the card's 'Why this architecture' section")
    e.add_argument("--hardware", help="the machines that trained it, for the card (default: this machine, "
                   "which is right only if it trained the whole run)")
    e.add_argument("--dest", help="folder of shipped models (default: data/pretrained)")
    e.add_argument("--test-images", type=int, help="evaluate on the first N test images (default: all)")
    e.add_argument("--storage", choices=sorted(STORAGE_DTYPES), default=DEFAULT_STORAGE,
                   help=f"how the file stores the weights (default {DEFAULT_STORAGE}; loaded as float32)")
    e.set_defaults(run=_cmd_export)
    ls = sub.add_parser("list", help="list the shipped models")
    ls.add_argument("--root", help="folder of shipped models (default: data/pretrained)")
    ls.set_defaults(run=_cmd_list)
    ev = sub.add_parser("evaluate", help="test accuracy of a shipped model")
    ev.add_argument("name", nargs="?", help="shipped name (default: the default model)")
    ev.add_argument("--root", help="folder of shipped models (default: data/pretrained)")
    ev.add_argument("--n", type=int, help="evaluate on the first N test images (default: all)")
    ev.set_defaults(run=_cmd_evaluate)
    rs = sub.add_parser("resave", help="store shipped models' weights in another dtype, re-measuring the accuracy")
    rs.add_argument("names", nargs="+", help="shipped names")
    rs.add_argument("--storage", choices=sorted(STORAGE_DTYPES), default=DEFAULT_STORAGE,
                    help=f"the new storage dtype (default {DEFAULT_STORAGE})")
    rs.add_argument("--root", help="folder of shipped models (default: data/pretrained)")
    rs.add_argument("--n", type=int, help="evaluate on the first N test images (default: all)")
    rs.set_defaults(run=_cmd_resave)
    rt = sub.add_parser("retire", help="stop shipping a model's weights, keeping its card and manifest entry")
    rt.add_argument("name", help="shipped name")
    rt.add_argument("--reason", required=True, help="why, for the card and the error message")
    rt.add_argument("--commit", help="the git commit that still holds the weights file")
    rt.add_argument("--root", help="folder of shipped models (default: data/pretrained)")
    rt.set_defaults(run=_cmd_retire)
    df = sub.add_parser("default", help="make a shipped model the default of coda.load_pretrained()")
    df.add_argument("name", help="shipped name")
    df.add_argument("--root", help="folder of shipped models (default: data/pretrained)")
    df.set_defaults(run=_cmd_default)
    for sp in (e, ev, rs):
        sp.add_argument("--data", help="data folder (default: $CODA_DATA, else data/)")
        sp.add_argument("--device")
    a = p.parse_args(argv)
    a.run(a)


if __name__ == "__main__":
    main()
