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
    python -m coda.pretrained export --checkpoint runs/NAME/last.pt --name NAME [--default]
    python -m coda.pretrained resave NAME [NAME ...] --storage float16   # re-store, re-measure
    python -m coda.pretrained retire NAME --reason TEXT [--commit HASH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
from collections.abc import Callable
from pathlib import Path

import torch

from coda.checkpoint import load_checkpoint, save_checkpoint, sha256, write_json, write_text
from coda.data import PROJECT_ROOT, load_cifar10
from coda.hardware import cpu_info
from coda.inference import evaluate_accuracy
from coda.models import RESNET_STAGE_ENDS, CoDANet, CoDANetConfig
from coda.train import TrainConfig, train_command

PRETRAINED_DIR = PROJECT_ROOT / "data" / "pretrained"
MANIFEST = "manifest.json"
FORMAT = 1
PRECISION_TEXT = {
    # What "auto" meant for runs whose history does not record the precision that ran.
    "auto": "precision auto (bf16 autocast on every CPU, as 'auto' meant before 2026-12)",
    "fp32": "fp32",
    "bf16": "bf16 autocast",
    "fp16": "fp16 autocast",
}
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}  # how weights files store floats
DEFAULT_STORAGE = "float16"
RESUME_TEXT = (
    "Rerunning the same command resumes from `runs/{name}/last.pt`. A resumed run ends with the same "
    "weights, optimiser state and per-epoch losses and accuracies as an uninterrupted one; only its "
    "wall time and images/s differ. (Checkpoints written before 2026-12 did not keep the running sums "
    "of the epoch in progress: a run resumed from one of them recorded only the steps after the resume "
    "in that epoch's train loss and accuracy.)"
)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*-T([0-9.e+]+)$")


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


# ----- exporting ---------------------------------------------------------------------------


def check_name(name: str, temperature: float) -> None:
    """Raise ``ValueError`` unless ``name`` is a plain file name ending in ``-T<temperature>``."""
    m = _NAME.match(name)
    if m is None or not _same_number(m.group(1), temperature):
        raise ValueError(
            f"model name {name!r} must be letters, digits, '-', '_' or '.' and end in "
            f"'-T{temperature:g}' (the model's temperature)"
        )


def _same_number(text: str, value: float) -> bool:
    try:
        return float(text) == float(value)
    except ValueError:
        return False


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


def _manifest_entry(ckpt: dict, name: str, path: Path, model: CoDANet, metrics: dict, hardware: str) -> dict:
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
        raise ValueError(f"{name!r} is the default model of {folder / MANIFEST}; choose another default first")
    if not reason.strip():
        raise ValueError("give a reason for retiring the model (it goes into the card)")
    entry = manifest["models"].pop(name)
    entry.update(retired=reason.strip(), last_commit=last_commit)
    manifest.setdefault("retired", {})[name] = entry
    write_text(model_card(entry, card_notes(folder / entry["card"])), folder / entry["card"])
    write_json(manifest, folder / MANIFEST)
    (folder / entry["file"]).unlink(missing_ok=True)
    return entry


def card_notes(card: Path) -> str:
    """The "Why this architecture" section of an existing card (empty if there is none)."""
    if not card.exists():
        return ""
    notes = card.read_text().partition("## Why this architecture\n\n")[2].strip()
    return "" if notes == "(no notes given)" else notes


def describe_machine() -> str:
    """A one-line description of this machine (for model cards)."""
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else cpu_info().describe()
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores, {device}, torch {torch.__version__}"


# ----- the model card ----------------------------------------------------------------------


def model_card(entry: dict, notes: str = "") -> str:
    """The markdown model card of a manifest ``entry`` (see :func:`export_pretrained`)."""
    name = entry["file"].removesuffix(".pt")
    mc = entry["model_config"]
    resnet = mc.get("resnet_stages", 0)
    kind = ("ResNet-20 (He et al. 2016), an all-conventional CNN (no CoDA layer)" if resnet and not _n_coda_layers(mc)
            else "An all-conventional CNN (no CoDA layer)" if not _n_coda_layers(mc)
            else f"A hybrid CoDA-Net (the first {resnet} stage(s) of ResNet-20, CoDA layers)" if resnet
            else "A hybrid CoDA-Net (conventional stem, CoDA layers)" if mc["stem_depth"] else "A CoDA-Net")
    sections = [
        f"# {name}\n\n{kind} for CIFAR-10, trained with `coda.train` and exported with "
        "`python -m coda.pretrained export`. Generated from the training checkpoint; do not edit by hand.",
        *([_retired_text(entry)] if entry.get("retired") else []),
        _summary_table(entry),
        _layer_table(entry["model_config"]),
        _per_class_table(entry),
        _history_table(entry["history"]),
        f"## Retrain\n\n```bash\n{entry['retrain']}\n```\n\n{RESUME_TEXT.format(name=name)}",
        f"## Load\n\n```python\nfrom coda.pretrained import load_pretrained\n\n"
        f"model = load_pretrained({name!r})  # checks the SHA-256 against manifest.json\n```",
        "## Why this architecture\n\n" + (notes.strip() or "(no notes given)"),
    ]
    return "\n\n".join(sections) + "\n"


def _summary_table(entry: dict) -> str:
    mc, tc = entry["model_config"], entry["train_config"]
    rows = [
        ("architecture", f"`{_build_call(entry['model'], tc['model_overrides'])}`"),
        ("parameters", f"{entry['parameters']:,}"),
        ("temperature T", f"{mc['temperature']:g}"),
        ("ranks", ", ".join(r for r in _ranks(mc) if r != "-") or "- (no CoDA layers)"),
        ("norm", mc["norm"] if _n_coda_layers(mc) else "-"),
        ("test accuracy", _accuracy_text(entry)),
        ("training", _training_text(entry)),
        ("schedule", _schedule_text(tc)),
        ("wall time", f"{_duration(entry['wall_time_s'])} of training on {entry['hardware']}"),
        ("file", _file_text(entry)),
    ]
    return "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _file_text(entry: dict) -> str:
    storage = entry.get("storage", "float32")
    text = f"`{entry['file']}`, {entry['size_bytes'] / 1e6:.1f} MB, SHA-256 `{entry['sha256']}`, weights stored as {storage}"
    text += ", loaded as float32" if storage != "float32" else ""
    previous = entry.get("previous_file")
    if previous:
        text += (f"; re-stored from a {previous['storage']} file of {previous['size_bytes'] / 1e6:.1f} MB "
                 f"(SHA-256 `{previous['sha256']}`)")
    return text


def _retired_text(entry: dict) -> str:
    commit = f" (last in commit `{entry['last_commit']}`)" if entry.get("last_commit") else ""
    return (f"> **Retired**: {entry['retired']} The weights file is no longer shipped; the project's git "
            f"history keeps it{commit}, and this card, the manifest entry and the results stay.")


def _build_call(model: str, overrides: dict) -> str:
    args = [repr(model)] + [f"{k}={v!r}" for k, v in overrides.items()]
    return f"build_model({', '.join(args)})"


def _accuracy_text(entry: dict) -> str:
    if entry["test_accuracy"] is None:
        return "not evaluated"
    n = entry["test_images"]
    where = f"{n:,} CIFAR-10 test images" if n else "the CIFAR-10 test set"
    text = f"**{100 * entry['test_accuracy']:.2f} %** on {where} (fp32)"
    previous = entry.get("previous_file")
    if previous:
        text += (f", with the weights as shipped ({entry['storage']}); the {previous['storage']} weights before: "
                 f"{100 * previous['test_accuracy_remeasured']:.2f} % re-measured, "
                 f"{100 * previous['test_accuracy_at_export']:.2f} % at export")
    return text


def _training_text(entry: dict) -> str:
    tc = entry["train_config"]
    done = f"{entry['epochs']} epoch" + ("s" if entry["epochs"] != 1 else "")
    if entry["epochs"] < tc["epochs"] or entry["steps_into_epoch"]:
        done = f"{entry['epochs']} of {tc['epochs']} planned epochs (stopped early)"
    subset = f" on the first {tc['train_subset']:,} images" if tc["train_subset"] else ""
    aug = "random crop (pad 4) + horizontal flip" if tc["augment"] else "no augmentation"
    precision = _precision_text(tc["precision"], entry["history"])
    return (
        f"{done}{subset}, batch {tc['batch_size']} (accumulate {tc['accumulate']}), "
        f"{precision}, {aug}, seed {tc['seed']}"
    )


def _precision_text(requested: str, history: list[dict]) -> str:
    """The precision asked for and, where the history records it, what ran in which epochs."""
    ran = [row.get("precision") for row in history]
    if not ran or None in ran:
        return PRECISION_TEXT.get(requested, requested)
    spans, start = [], 1
    for i in range(1, len(ran) + 1):
        if i == len(ran) or ran[i] != ran[start - 1]:
            epochs = f"epoch {start}" if i == start else f"epochs {start}-{i}"
            spans.append(f"{PRECISION_TEXT[ran[start - 1]]} ({epochs})")
            start = i + 1
    return f"precision {requested}: ran " + ", ".join(spans)


def _schedule_text(tc: dict) -> str:
    optimizer = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD (Nesterov momentum 0.9)"}[tc.get("optimizer", "adam")]
    if tc.get("weight_decay"):
        optimizer += f", weight decay {tc['weight_decay']:g}"
    if tc.get("embedding_from"):
        how = "frozen" if tc.get("freeze_embedding") else "fine-tuned"
        optimizer += f", embedding from `{tc['embedding_from']}` ({how})"
    if tc["schedule"] == "paper":
        return f"{optimizer}, lr {tc['lr']:g} divided by 1.5 every 30 epochs (the paper's)"
    return (
        f"{optimizer}, peak lr {tc['lr']:g}, linear warm-up over {tc['warmup_epochs']:g} epoch(s), "
        "then cosine decay to 0"
    )


def _duration(seconds: float) -> str:
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min" if hours else f"{rest // 60} min {rest % 60:02d} s"


def _n_coda_layers(mc: dict) -> int:
    """How many of a model config's layers are CoDA layers (the rest form the conventional stem)."""
    return len(mc["channels"]) - _coda_start(mc)


def _coda_start(mc: dict) -> int:
    """The layout index of the first CoDA layer (configs before resnet_stages have none)."""
    return max(mc["stem_depth"], RESNET_STAGE_ENDS[mc.get("resnet_stages", 0)])


def _ranks(mc: dict) -> list[str]:
    """Each layer's rank as text; "-" for the layers of a conventional stem (they have none)."""
    return [
        "-" if i < _coda_start(mc) else str(m * mc["rank_factor"]) for i, m in enumerate(mc["rank_multipliers"])
    ]


def _layer_kind(mc: dict, i: int) -> str:
    """Layer ``i`` of the layout as built: CoDA, a conventional block, or in a ResNet-20 stage."""
    ends = RESNET_STAGE_ENDS[: mc.get("resnet_stages", 0) + 1]
    if i < ends[-1]:
        return f"ResNet-20 stage {next(k for k in range(1, len(ends)) if i < ends[k])}"
    if i >= _coda_start(mc):
        return "CoDA"
    return "conv" if i == len(mc["channels"]) - 1 else "conv-BN-ReLU"


def _layer_table(mc: dict) -> str:
    n, stem = len(mc["channels"]), _coda_start(mc)
    kinds = [_layer_kind(mc, i) for i in range(n)]
    head = "## Layers\n\n| layer | " + " | ".join(str(i + 1) for i in range(n)) + " |"
    rows = [
        ("type", kinds),
        ("out channels", mc["channels"]),
        ("kernel", mc["kernel_sizes"]),
        ("stride", mc["strides"]),
        ("rank", _ranks(mc)),
    ]
    lines = [head, "|---" * (n + 1) + "|"]
    lines += [f"| {label} | " + " | ".join(map(str, values)) + " |" for label, values in rows]
    if mc.get("resnet_stages", 0):
        lines += ["", "The columns of a ResNet-20 stage are that stage as a whole: 3 basic residual blocks of "
                  "two 3x3 conv-BN each (stage 1 also the first 3x3 conv-BN-ReLU), in place of those layers "
                  "of the 9L-S layout, which end at the same resolution and channels."]
    if not _n_coda_layers(mc):
        lines += ["", "All layers are conventional: a CNN baseline without contributions."]
    elif stem:
        first = f"The first {stem} layers are" if stem > 1 else "The first layer is"
        lines += ["", f"{first} a conventional stem; contributions are exact down to the "
                  "input of the first CoDA layer (`coda.contributions(..., layer=0)`), not to the pixels."]
    return "\n".join(lines)


def _per_class_table(entry: dict) -> str:
    per_class = entry["per_class_accuracy"]
    if not per_class:
        return "## Per-class test accuracy\n\nnot evaluated"
    rows = "\n".join(f"| {c} | {100 * a:.1f} % |" for c, a in per_class.items())
    return f"## Per-class test accuracy\n\n| class | accuracy |\n|---|---|\n{rows}"


def _history_table(history: list[dict]) -> str:
    if not history:
        return "## Training curve\n\nno finished epoch"
    rows = "\n".join(
        f"| {h['epoch']} | {h['lr']:.2e} | {h['train_loss']:.4f} | {100 * h['train_accuracy']:.1f} % "
        f"| {100 * h['test_accuracy']:.1f} % | {h['images_per_s']:.0f} |"
        for h in history
    )
    return (
        "## Training curve\n\nTest accuracy per epoch on the run's test set (`test_subset` if set); "
        "train loss and accuracy over the epoch's augmented batches.\n\n"
        "| epoch | lr | train loss | train acc | test acc | images/s |\n|---|---|---|---|---|---|\n" + rows
    )


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
    p = argparse.ArgumentParser(prog="python -m coda.pretrained", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="evaluate a training checkpoint on the test set and ship it")
    e.add_argument("--checkpoint", required=True, help="last.pt written by python -m coda.train")
    e.add_argument("--name", required=True, help="shipped name, ending in -T<temperature>")
    e.add_argument("--default", action="store_true", help="make it the default teaching model")
    e.add_argument("--notes-file", help="markdown for the card's 'Why this architecture' section")
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
    for sp in (e, ev, rs):
        sp.add_argument("--data", help="data folder (default: $CODA_DATA, else data/)")
        sp.add_argument("--device")
    a = p.parse_args(argv)
    a.run(a)


if __name__ == "__main__":
    main()
