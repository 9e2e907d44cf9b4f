"""Atomic, hashed checkpoint files, and data files that load without unpickling.

A file is written to a temporary name in the same folder, flushed to disk and then renamed
over the target (``os.replace`` is atomic), so a reader never sees a half-written file,
even if the writer is killed mid-write.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch


def atomic_write_bytes(path: str | os.PathLike, write) -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` atomically."""
    atomic_write_bytes(path, lambda f: torch.save(obj, f))


def write_json(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (keys sorted: stable diffs)."""
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def write_text(text: str, path: str | os.PathLike) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_data(obj: dict, path: str | os.PathLike) -> None:
    """Write a nested dict of tensors and JSON values to an ``.npz`` file atomically.

    Every tensor becomes one array of the archive, named by its path of keys ("result/scores");
    everything else is kept as JSON text in the array ``__json__``, where each tensor is
    replaced by ``{"__array__": its name}``. Nothing is pickled, so :func:`load_data` cannot
    run code, and the file reads with any numpy (``np.load(path, allow_pickle=False)``).
    Raises ``TypeError`` for values that are neither tensors nor JSON (before writing).
    """
    arrays: dict = {}
    text = json.dumps(_split_arrays(obj, "", arrays))
    atomic_write_bytes(path, lambda f: np.savez(f, __json__=np.array(text), **arrays))


def _split_arrays(obj: Any, prefix: str, arrays: dict) -> Any:
    """``obj`` with each tensor moved into ``arrays`` (keyed by its path) and replaced by a reference."""
    if isinstance(obj, torch.Tensor):
        name = prefix.lstrip("/")
        arrays[name] = obj.detach().cpu().numpy()
        return {"__array__": name}
    if isinstance(obj, dict):
        return {str(k): _split_arrays(v, f"{prefix}/{k}", arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split_arrays(v, f"{prefix}/{i}", arrays) for i, v in enumerate(obj)]
    return obj


def load_data(path: str | os.PathLike) -> dict:
    """Read a file written by :func:`save_data`: the dict, with its arrays back as CPU tensors.

    Raises ``FileNotFoundError`` if the file is missing and ``ValueError`` naming the file if it
    is not such a file (truncated, random bytes, pickled objects, a missing array).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file {path} not found")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: np.array(f[k]) for k in f.files}
        obj = json.loads(str(arrays.pop("__json__")[()]))
        if not isinstance(obj, dict):
            raise TypeError(f"expected a JSON object, got {type(obj).__name__}")
        return _join_arrays(obj, arrays)
    except Exception as err:
        raise ValueError(
            f"{path} is not a readable data file of coda.checkpoint.save_data ({type(err).__name__}: {err})"
        ) from err


def _join_arrays(obj: Any, arrays: dict) -> Any:
    """The inverse of :func:`_split_arrays`: each ``{"__array__": name}`` becomes its tensor."""
    if isinstance(obj, dict):
        if set(obj) == {"__array__"}:
            return torch.from_numpy(arrays[obj["__array__"]])
        return {k: _join_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_arrays(v, arrays) for v in obj]
    return obj


def sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_checkpoint(path: str | os.PathLike, expected_sha256: str | None = None) -> dict:
    """Load a checkpoint saved by :func:`save_checkpoint` (tensors and plain Python only).

    Raises ``ValueError`` if ``expected_sha256`` is given and does not match, or if the file
    is not a readable checkpoint (truncated, corrupted).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if expected_sha256 is not None:
        actual = sha256(path)
        if actual != expected_sha256:
            raise ValueError(
                f"checkpoint {path} has SHA-256 {actual}, expected {expected_sha256}: the file "
                "is corrupted or is not the one the manifest describes"
            )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"checkpoint {path} could not be read ({type(err).__name__}: {err})") from err
