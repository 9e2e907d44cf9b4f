"""Atomic, hashed checkpoint files, and data files that load without unpickling.

A file is written to a temporary name in the same folder, flushed to disk and then renamed
over the target (``os.replace`` is atomic), so a reader never sees a half-written file,
even if the writer is killed mid-write.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

try:
    import fcntl
except ImportError:  # not POSIX: the lock file's process id is the only lock
    fcntl = None


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


def remove_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that interrupted :func:`atomic_write_bytes` calls for ``path``
    left behind (a writer killed with SIGKILL cannot clean up). Returns the removed files.

    Call it only while no other process writes ``path`` (e.g. holding :func:`folder_lock`).
    """
    path = Path(path)
    removed = sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


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


# ----- folder locks: one training process per run folder ----------------------------------

LOCK = "train.lock"  # in a run's folder while a process trains it; holds that process's id
_HELD: dict[Path, list] = {}  # folder -> [open lock file, depth]: the folders this process holds


def lock_holder(folder: str | os.PathLike) -> int | None:
    """The id of the live process that holds ``folder``'s lock, else None.

    A lock is held through ``fcntl.flock`` on ``<folder>/train.lock``, which the kernel releases
    when its process ends however it ends (kill -9 included): a lock left by a dead process is
    never in force. A lock file of the older kind (a process id and no flock) counts while
    that process is alive. -1 stands for a holder that has not written its id yet.
    """
    folder = Path(folder)
    if folder.resolve() in _HELD:
        return os.getpid()
    try:
        f = open(folder / LOCK)
    except OSError:
        return None
    with f:
        pid, flocked = _read_lock(f)
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:  # held by a live process
                return -1 if pid is None else pid
            fcntl.flock(f, fcntl.LOCK_UN)
    return pid if _held_by_pid_only(pid, flocked) else None


def _read_lock(f) -> tuple[int | None, bool]:
    """The process id in an open lock file, and whether its holder locked it with flock."""
    f.seek(0)
    words = f.read().split()
    pid = int(words[0]) if words and words[0].isdigit() else None
    return pid, fcntl is not None and "flock" in words[1:]


def _held_by_pid_only(pid: int | None, flocked: bool) -> bool:
    """A lock file without flock (the older kind, or no flock here) holds while its process lives."""
    return pid is not None and not flocked and pid != os.getpid() and _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only checks that the process exists
    except PermissionError:  # it exists, under another user
        return True
    except OSError:
        return False
    return True


def claim_folder(folder: str | os.PathLike) -> bool:
    """Take ``folder``'s lock for this process; False if another live process holds it.

    Re-entrant: a process that holds the folder may claim it again (each claim needs its
    :func:`release_folder`). The folder is created if needed.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        _HELD[key][1] += 1
        return True
    path = folder / LOCK
    for _ in range(50):
        f = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o644), "r+")
        if not _flock_nowait(f):
            f.close()
            return False
        try:  # the previous holder may have removed the file between our open and our lock
            same = os.fstat(f.fileno()).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        f.close()
    else:
        raise RuntimeError(f"could not lock {path}: it keeps being replaced")
    if _held_by_pid_only(*_read_lock(f)):
        f.close()  # a lock file of the older kind whose process still runs
        return False
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\nflock\n")
    f.flush()
    _HELD[key] = [f, 1]
    return True


def _flock_nowait(f) -> bool:
    """Lock ``f`` exclusively; False if another process holds it (after a few short retries,
    so that a concurrent :func:`lock_holder` probe does not make a claim fail)."""
    if fcntl is None:  # no flock on this platform: the process id in the file is the lock
        return True
    for attempt in range(5):
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            time.sleep(0.02 * (attempt + 1))
    return False


def release_folder(folder: str | os.PathLike) -> None:
    """Undo one :func:`claim_folder` of this process; the last one removes the lock file."""
    key = Path(folder).resolve()
    entry = _HELD.get(key)
    if entry is None:
        return
    entry[1] -= 1
    if entry[1] == 0:
        del _HELD[key]
        (key / LOCK).unlink(missing_ok=True)  # while still locked: no other process can hold it now
        entry[0].close()


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike | None) -> Iterator[None]:
    """Hold ``folder``'s lock for the ``with`` block (nothing for ``None``).

    Raises ``ValueError`` naming the process that holds it, if another live process does.
    """
    if folder is None:
        yield
        return
    if not claim_folder(folder):
        pid = lock_holder(folder)
        who = f"process {pid}" if pid and pid > 0 else "another process"
        raise ValueError(
            f"{folder} is in use: {who} is training into it ({Path(folder) / LOCK}); wait for it to "
            "finish, stop it, or choose another folder"
        )
    try:
        yield
    finally:
        release_folder(folder)


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
