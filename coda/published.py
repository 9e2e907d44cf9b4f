"""The authors' published CoDA-Nets, downloaded on first use and checked on every later one.

Böhle, Fritz and Schiele published the models of their papers: the CIFAR-10 "9L-S" network
trained at the temperatures T = 10, 50, 100, 500, 1000 and 5000 (200 epochs), and the
Imagenet-100 "9L-L" network at T = 100,000. Each is one ``torch.save(model.state_dict())``
file of their ``nn.Sequential`` layout, which :func:`coda.reference.from_reference_state_dict`
converts to a :class:`coda.models.CoDANet` exactly.

**Licence**: the authors release these trained models for non-commercial research and
education only. This module downloads them from the authors' server on request; it does not
redistribute them, and the project's own licence does not cover them.

The authors publish no hashes. :func:`load_published` therefore records the SHA-256 of a file
the first time it is downloaded (or found in the cache), in ``<cache>/<name>.json`` next to
``<cache>/<name>.pt``, and refuses a cached file whose hash changed since.

Command line::

    python -m coda.published list
    python -m coda.published download cifar10-9L-S-T1000 [--url URL] [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import urllib.error
from collections.abc import Mapping
from pathlib import Path

import torch

from coda import cli
from coda.checkpoint import sha256, write_json
from coda.models import CoDANet
from coda.reference import from_reference_state_dict

LICENCE = (
    "The authors' trained CoDA-Nets (Böhle, Fritz, Schiele; MPI for Informatics) may be used for "
    "non-commercial research and education only."
)
SERVER = "https://nextcloud.mpi-klsb.mpg.de/index.php/s/{share}/download"
CACHE_SUBDIR = "coda_published"  # inside torch.hub.get_dir()


@dataclasses.dataclass(frozen=True)
class PublishedModel:
    """One of the authors' published models.

    Attributes
    ----------
    name : the name :func:`load_published` takes (ends in ``-T<temperature>``).
    architecture : the :data:`coda.CONFIGS` entry it is built as.
    temperature : the temperature T it was trained at.
    share : the share id of the file on the authors' server.
    dataset, epochs : what and how long it was trained on.
    """

    name: str
    architecture: str
    temperature: float
    share: str
    dataset: str
    epochs: int

    @property
    def url(self) -> str:
        """The file's address on the authors' server."""
        return SERVER.format(share=self.share)


def _cifar(temperature: int, share: str) -> PublishedModel:
    return PublishedModel(f"cifar10-9L-S-T{temperature}", "cifar10-9L-S", float(temperature), share, "CIFAR-10", 200)


PUBLISHED: dict[str, PublishedModel] = {
    m.name: m
    for m in (
        _cifar(10, "H8FgwMHJTTTYDJw"),
        _cifar(50, "SqPBioqmxEWbH9g"),
        _cifar(100, "yk7LajwLwpXXzf5"),
        _cifar(500, "zfeYMASLtKNGgsQ"),
        _cifar(1000, "8ykMc8XLQMtCxHo"),
        _cifar(5000, "6iY992FYEsfHkeA"),
        PublishedModel("imagenet100-9L-L-T100000", "imagenet100-9L-L", 1e5, "pArrgmncXAAiH5R",
                       "Imagenet, first 100 classes (240 px crops)", 60),
    )
}


def list_published() -> list[str]:
    """The names :func:`load_published` accepts, CIFAR-10 by temperature, then Imagenet-100."""
    return list(PUBLISHED)


def default_cache_dir() -> Path:
    """Where downloads go by default: ``coda_published/`` in torch.hub's folder
    (``$TORCH_HOME/hub``, usually ``~/.cache/torch/hub``)."""
    return Path(torch.hub.get_dir()) / CACHE_SUBDIR


def load_published(
    name: str,
    *,
    url: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = True,
) -> CoDANet:
    """One of the authors' published models as a :class:`CoDANet`, in eval mode on the CPU.

    Licence: the authors allow these trained models to be used for **non-commercial research and
    education only**.

    Parameters
    ----------
    name : one of :func:`list_published`: ``cifar10-9L-S-T10``, ``-T50``, ``-T100``, ``-T500``,
        ``-T1000``, ``-T5000`` (the CIFAR-10 9L-S network, images (B, 3, 32, 32) in [0, 1] ->
        logits (B, 10)) or ``imagenet100-9L-L-T100000`` (images (B, 3, 240, 240) -> (B, 100)).
    url : where to download the file from instead of the authors' server (any address urllib
        opens, e.g. ``file:///path/model_epoch_200.pkl``); used only when the file is not cached.
    cache_dir : the download folder (default :func:`default_cache_dir`).
    progress : show a progress bar while downloading.

    The file is downloaded to ``<cache_dir>/<name>.pt`` (through a temporary file, so a failed
    download leaves nothing behind) and its SHA-256 is recorded in ``<cache_dir>/<name>.json``
    once it has loaded; every later call checks the cached file against that hash. A file put
    at ``<cache_dir>/<name>.pt`` by hand is recorded the same way on its first use.

    Raises
    ------
    ValueError : unknown name; the cached file's SHA-256 differs from the recorded one; the file
        is not a state dict of the published layout (it is then removed if it was just downloaded).
    OSError : the download failed (no network); the message gives the address and where to put
        the file by hand.
    """
    spec = published_model(name)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path, record_path = folder / f"{name}.pt", folder / f"{name}.json"
    source = url or spec.url
    downloaded = not path.exists()
    if downloaded:
        download(source, path, progress=progress)
    actual = sha256(path)
    record = read_record(record_path)
    if record is not None and record["sha256"] != actual:
        if downloaded:
            path.unlink(missing_ok=True)
        what = f"the file downloaded from {source}" if downloaded else str(path)
        raise ValueError(
            f"{what} has SHA-256 {actual}, but {record['sha256']} was recorded in {record_path} on its first "
            f"use: the file was changed or corrupted. Delete {record_path} (and {path}) to accept a new file"
        )
    try:
        model = convert(path, spec)
    except ValueError:
        if downloaded:
            path.unlink(missing_ok=True)  # a bad download must not be cached
        raise
    if record is None:
        write_json({"name": name, "sha256": actual, "size_bytes": path.stat().st_size,
                    "url": source if downloaded else None,
                    "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")},
                   record_path)
    return model


def published_model(name: str) -> PublishedModel:
    """The :class:`PublishedModel` called ``name``; ``ValueError`` listing the names if unknown."""
    if name not in PUBLISHED:
        raise ValueError(f"unknown published model {name!r}; expected one of {list_published()}")
    return PUBLISHED[name]


def download(url: str, path: Path, progress: bool = True) -> None:
    """Download ``url`` to ``path`` through a temporary file in the same folder.

    ``OSError`` if it fails, saying which address was tried and where the file can be put by hand.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=progress)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise OSError(
            f"could not download {url} ({err}). Without a network, fetch that address on a machine "
            f"that has one and put the file at {path} (or pass url='file:///path/to/the/file'); its "
            "SHA-256 is recorded on first use"
        ) from err


def read_record(path: Path) -> dict | None:
    """The recorded hash of a cached file (None before its first use); ``ValueError`` if unreadable."""
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable hash record ({err}); delete it and the cached file") from err
    if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
        raise ValueError(f"{path} holds no 'sha256'; delete it and the cached file")
    return record


def convert(path: Path, spec: PublishedModel) -> CoDANet:
    """Read a published state dict (plain tensors only) and convert it to a :class:`CoDANet`."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path} is not a state dict that torch.load(weights_only=True) reads "
                         f"({type(err).__name__}: {err})") from err
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    try:
        model = from_reference_state_dict(state_dict, spec.architecture, temperature=spec.temperature)
    except ValueError as err:
        raise ValueError(f"{path} is not a published {spec.architecture} state dict: {err}") from err
    return model.eval()


# ----- command line ------------------------------------------------------------------------


def _cmd_list(a: argparse.Namespace) -> None:
    folder = Path(a.cache_dir) if a.cache_dir else default_cache_dir()
    for spec in PUBLISHED.values():
        cached = "cached" if (folder / f"{spec.name}.pt").exists() else "not downloaded"
        print(f"{spec.name}\t{spec.dataset}, T = {spec.temperature:g}, {spec.epochs} epochs\t{cached}\t{spec.url}")
    print(f"\ncache: {folder}\nLicence: {LICENCE}")


def _cmd_download(a: argparse.Namespace) -> None:
    print(f"Licence: {LICENCE}", flush=True)
    model = load_published(a.name, url=a.url, cache_dir=a.cache_dir, progress=not a.quiet)
    folder = Path(a.cache_dir) if a.cache_dir else default_cache_dir()
    params = sum(p.numel() for p in model.parameters())
    print(f"{a.name}: {params:,} parameters, {folder / (a.name + '.pt')} (SHA-256 in {folder / (a.name + '.json')})")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog=cli.prog("published"),
                                description="The authors' published CoDA-Nets (non-commercial research and "
                                            "education only): list them, download one into the cache.")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="the published models, their addresses and whether they are cached")
    ls.set_defaults(run=_cmd_list)
    dl = sub.add_parser("download", help="download one into the cache, record its SHA-256 and check that it loads")
    dl.add_argument("name", choices=list_published(), metavar="NAME", help=", ".join(list_published()))
    dl.add_argument("--url", help="download from this address instead of the authors' server")
    dl.add_argument("--quiet", action="store_true", help="no progress bar")
    dl.set_defaults(run=_cmd_download)
    for sp in (ls, dl):
        sp.add_argument("--cache-dir", help="download folder (default: coda_published/ in torch.hub's folder)")
    a = p.parse_args(argv)
    a.run(a)


if __name__ == "__main__":
    main()
