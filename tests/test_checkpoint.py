"""coda.checkpoint: atomic writes, SHA-256 checks, unreadable files, data files, folder locks."""

import contextlib
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

import coda.checkpoint as C


def sample() -> dict:
    return {"weights": torch.arange(6.0).reshape(2, 3), "step": 7, "name": "x", "ranks": (8, 16)}


def leftovers(folder) -> list[str]:
    """Files in ``folder`` that look like temporary files of an atomic write."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "sub" / "ckpt.pt"
    C.save_checkpoint(sample(), path)
    loaded = C.load_checkpoint(path, expected_sha256=C.sha256(path))
    assert torch.equal(loaded["weights"], sample()["weights"])
    assert (loaded["step"], loaded["name"], loaded["ranks"]) == (7, "x", (8, 16))
    assert leftovers(path.parent) == []


def test_sha256_is_the_hash_of_the_bytes(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"coda" * 1000)
    assert C.sha256(path) == hashlib.sha256(b"coda" * 1000).hexdigest()


def test_wrong_sha256_raises(tmp_path):
    path = tmp_path / "ckpt.pt"
    C.save_checkpoint(sample(), path)
    with pytest.raises(ValueError, match="SHA-256") as err:
        C.load_checkpoint(path, expected_sha256="0" * 64)
    assert C.sha256(path) in str(err.value) and "0" * 64 in str(err.value)


def test_truncated_file_raises_value_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    C.save_checkpoint(sample(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="could not be read"):
        C.load_checkpoint(path)


def test_garbage_file_raises_value_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ValueError, match=str(path)):
        C.load_checkpoint(path)


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        C.load_checkpoint(tmp_path / "nothing.pt")


def test_arbitrary_objects_are_refused(tmp_path):
    """Only tensors and plain Python load (weights_only): a checkpoint cannot run code."""
    path = tmp_path / "ckpt.pt"
    C.save_checkpoint({"model": torch.nn.Linear(2, 2)}, path)
    with pytest.raises(ValueError, match="could not be read"):
        C.load_checkpoint(path)


def test_failed_write_keeps_the_previous_file_and_no_temp_file(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"previous")

    def writer(f):
        f.write(b"half of the new cont")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        C.atomic_write_bytes(path, writer)
    assert path.read_bytes() == b"previous"
    assert leftovers(tmp_path) == [] and [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_interrupted_torch_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    C.save_checkpoint(sample(), path)
    digest = C.sha256(path)

    def broken_save(obj, f):
        f.write(b"PK\x03\x04 partial zip")
        raise KeyboardInterrupt  # like a job killed mid-write

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        C.save_checkpoint({"other": torch.zeros(3)}, path)
    assert C.sha256(path) == digest
    assert C.load_checkpoint(path)["step"] == 7
    assert leftovers(tmp_path) == []


def test_write_json_is_sorted_indented_and_atomic(tmp_path):
    path = tmp_path / "m.json"
    C.write_json({"b": 1, "a": [1, 2]}, path)
    text = path.read_text()
    assert text.endswith("\n") and text.index('"a"') < text.index('"b"')
    assert json.loads(text) == {"a": [1, 2], "b": 1}
    with pytest.raises(TypeError):
        C.write_json({"a": object()}, path)  # not serialisable: fails before touching the file
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}


def test_write_text(tmp_path):
    C.write_text("héllo\n", tmp_path / "card.md")
    assert (tmp_path / "card.md").read_text(encoding="utf-8") == "héllo\n"
    assert oct((tmp_path / "card.md").stat().st_mode & 0o777) == oct(0o644)


def test_data_file_round_trip_without_pickle(tmp_path):
    obj = {"settings": {"n": 3, "name": "x", "none": None, "options": {}}, "scores": torch.rand(4, 9),
           "grids": {"indices": torch.arange(6).reshape(2, 3)}, "curves": [torch.ones(2), 1.5]}
    path = tmp_path / "task.npz"
    C.save_data(obj, path)
    loaded = C.load_data(path)
    assert loaded["settings"] == obj["settings"] and loaded["curves"][1] == 1.5
    assert torch.equal(loaded["scores"], obj["scores"]) and loaded["scores"].dtype == torch.float32
    assert torch.equal(loaded["grids"]["indices"], obj["grids"]["indices"]) and torch.equal(loaded["curves"][0], torch.ones(2))
    assert leftovers(tmp_path) == []


def test_data_file_refuses_objects_and_names_bad_files(tmp_path):
    path = tmp_path / "task.npz"
    with pytest.raises(TypeError):
        C.save_data({"model": torch.nn.Linear(2, 2)}, path)  # not data: nothing written
    assert not path.exists()
    import numpy as np

    np.savez(path, __json__=np.array([{"a": 1}], dtype=object))  # a pickled object inside the archive
    with pytest.raises(ValueError, match=f"{path} is not a readable data file"):
        C.load_data(path)
    for content in (b"", b"random bytes" * 10):
        path.write_bytes(content)
        with pytest.raises(ValueError, match=str(path)):
            C.load_data(path)
    with pytest.raises(FileNotFoundError, match="not found"):
        C.load_data(tmp_path / "missing.npz")


# ----- folder locks ----------------------------------------------------------------------------


@contextlib.contextmanager
def holding_process(folder):
    """Another process that holds ``folder``'s lock until the block ends (then it is killed -9)."""
    code = ("import sys, time; from coda.checkpoint import claim_folder; "
            "assert claim_folder(sys.argv[1]); print('ready', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc.pid
    finally:
        proc.kill()  # SIGKILL: no clean-up code runs
        proc.wait()
        proc.stdout.close()


def test_a_folder_held_by_another_process_fails_at_once_naming_it(tmp_path):
    folder = tmp_path / "run"
    with holding_process(folder) as pid:
        assert C.lock_holder(folder) == pid and not C.claim_folder(folder)
        with pytest.raises(ValueError, match=f"{folder} is in use: process {pid} is training into it"):
            with C.folder_lock(folder):
                pass
    assert (folder / C.LOCK).exists()  # left by the killed process, and not in force
    assert C.lock_holder(folder) is None
    with C.folder_lock(folder):
        assert C.lock_holder(folder) == os.getpid()
    assert not (folder / C.LOCK).exists()


def test_older_lock_files_count_while_their_process_lives(tmp_path):
    (tmp_path / C.LOCK).write_text(str(os.getppid()))  # a bare process id, of a live process
    assert C.lock_holder(tmp_path) == os.getppid() and not C.claim_folder(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    (tmp_path / C.LOCK).write_text(str(gone.pid))  # its process is gone: stale
    assert C.lock_holder(tmp_path) is None
    with C.folder_lock(tmp_path):
        assert C.lock_holder(tmp_path) == os.getpid()


def test_folder_lock_is_reentrant_in_one_process(tmp_path):
    assert C.claim_folder(tmp_path) and C.claim_folder(tmp_path)
    C.release_folder(tmp_path)
    assert (tmp_path / C.LOCK).exists() and C.lock_holder(tmp_path) == os.getpid()
    C.release_folder(tmp_path)
    assert not (tmp_path / C.LOCK).exists() and C.lock_holder(tmp_path) is None
    with C.folder_lock(None):  # no folder: nothing to lock
        pass


def test_remove_temporaries_of_killed_writes(tmp_path):
    path = tmp_path / "last.pt"
    C.save_checkpoint(sample(), path)
    left = [tmp_path / ".last.pt.k2j3.tmp", tmp_path / ".last.pt.x9.tmp"]
    for p in left:
        p.write_bytes(b"half a checkpoint")
    other = tmp_path / ".other.pt.a1.tmp"
    other.write_bytes(b"another file's write")
    assert C.remove_temporaries(path) == left
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.pt.a1.tmp", "last.pt"]
