"""Data: CIFAR-10 (and TinyImagenet) as uint8 tensors, subsets and batched augmentation.

The CIFAR-10 cache is one ``.npz`` per split with ``images`` (N, 32, 32, 3) uint8 HWC RGB,
``labels`` (N,) int64 and ``classes`` (10 names). The data folder comes from an explicit
argument, else the ``CODA_DATA`` environment variable, else ``data/`` in the project. If the
cache is missing, :func:`load_cifar10` downloads the original release with torchvision
(``download=True``) and writes the cache; without a network it fails with a message that
says where to put the files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip


@dataclass(frozen=True)
class ImageDataset:
    """A labelled image set held in memory.

    images : (N, 3, H, W) uint8; labels : (N,) int64; classes : class names by label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.labels.shape[0]

    def subset(self, index: torch.Tensor | slice) -> ImageDataset:
        return ImageDataset(self.images[index], self.labels[index], self.classes)

    def first(self, n: int) -> ImageDataset:
        """The first ``n`` examples (the offline copy is shuffled, so close to class-balanced)."""
        return self.subset(slice(0, n))

    def per_class(self, n: int) -> ImageDataset:
        """The first ``n`` examples of every class, in dataset order."""
        keep = torch.zeros(len(self), dtype=torch.bool)
        for c in range(len(self.classes)):
            keep[torch.nonzero(self.labels == c).flatten()[:n]] = True
        return self.subset(keep)

    def float_images(self, index=slice(None), device: torch.device | str | None = None) -> torch.Tensor:
        """Images ``index`` as float32 in [0, 1], (n, 3, H, W), on ``device``."""
        return to_float(self.images[index].to(device))


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]."""
    return images.float().div_(255)


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data folder: ``path``, else ``$CODA_DATA``, else ``data/`` in the project."""
    if path is not None:
        return Path(path)
    if os.environ.get("CODA_DATA"):
        return Path(os.environ["CODA_DATA"])
    return PROJECT_ROOT / "data"


def load_cifar10(split: str = "train", root: str | os.PathLike | None = None, download: bool = True) -> ImageDataset:
    """CIFAR-10 ``split`` ("train" or "test") from ``<root>/cifar10/<split>.npz``, else from
    the JPEG pack ``<root>/cifar10-jpeg/<split>.npz`` (:func:`pack_jpeg`).

    If the cache is absent and ``download`` is true, torchvision downloads the original
    release into ``<root>/cifar10/`` and the cache is written from it.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = data_dir(root) / "cifar10"
    path = folder / f"{split}.npz"
    pack = data_dir(root) / JPEG_PACK_DIR / f"{split}.npz"
    if not path.exists() and pack.exists():  # e.g. on a GPU machine that got the data with the checkout
        images, labels, classes = read_jpeg_pack(pack)
        return ImageDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
                            torch.from_numpy(labels).long(), classes)
    if not path.exists():
        if not download:
            raise FileNotFoundError(_missing_message(path))
        _download_cifar10(folder, split)
    images, labels, classes = _read_cache(path)
    return ImageDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long(),
                        classes)


_CACHE_FORMAT = "keys images (N, H, W, 3) uint8 RGB, labels (N,) integers in [0, classes), classes (optional)"


def _read_cache(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The arrays of a CIFAR cache file, checked; ``ValueError`` naming the file otherwise."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: np.array(f[k]) for k in f.files}
    except Exception as err:  # empty, truncated, random bytes, pickled objects
        raise ValueError(f"{path} is not a readable .npz file ({type(err).__name__}: {err}); expected {_CACHE_FORMAT}") from err
    missing = {"images", "labels"} - set(arrays)
    if missing:
        raise ValueError(f"{path} has no {sorted(missing)} (it has {sorted(arrays)}); expected {_CACHE_FORMAT}")
    images, labels = arrays["images"], arrays["labels"]
    classes = tuple(str(c) for c in arrays["classes"]) if "classes" in arrays else CIFAR10_CLASSES
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"{path}: images are {images.dtype} {images.shape}; expected {_CACHE_FORMAT}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{path}: labels are {labels.dtype} {labels.shape} for {len(images)} images; expected "
                         f"{_CACHE_FORMAT}")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"{path}: labels in [{labels.min()}, {labels.max()}], expected [0, {len(classes) - 1}] "
                         f"({len(classes)} classes)")
    return images, labels, classes


JPEG_PACK_DIR = "cifar10-jpeg"
_PACK_FORMAT = "keys jpeg (bytes, uint8), offsets (N + 1,) int64, labels (N,) int64, classes, quality"


def pack_jpeg(dataset: ImageDataset, path: str | os.PathLike, quality: int = 75) -> Path:
    """Write ``dataset`` as one JPEG per image, concatenated, in an ``.npz`` (no pickles).

    A compact copy for a machine that can receive only a few tens of MB with the checkout: the
    CIFAR-10 training set takes 46 MB at quality 75 against 142 MB as the compressed cache.
    The project's offline CIFAR-10 copy was itself stored through JPEG at quality 75
    (:func:`jpeg_reencoding_error`), so encoding it again at quality 75 changes a pixel by only
    0.16 of 255 on average (measured on 2,000 training images; 1.5 at quality 90). Written
    atomically; read back by :func:`read_jpeg_pack`.
    """
    from coda.checkpoint import atomic_write_bytes

    if not (isinstance(quality, int) and 1 <= quality <= 95):
        raise ValueError(f"quality must be an int in [1, 95], got {quality!r}")
    chunks, offsets = [], [0]
    for image in dataset.images.permute(0, 2, 3, 1).numpy():
        chunks.append(_jpeg_bytes(image, quality))
        offsets.append(offsets[-1] + len(chunks[-1]))
    arrays = {"jpeg": np.frombuffer(b"".join(chunks), dtype=np.uint8), "offsets": np.array(offsets, dtype=np.int64),
              "labels": dataset.labels.numpy().astype(np.int64), "classes": np.array(dataset.classes),
              "quality": np.array(quality)}

    def write(f):
        np.savez(f, **arrays)

    atomic_write_bytes(path, write)
    return Path(path)


def _jpeg_bytes(image: np.ndarray, quality: int) -> bytes:
    """One (H, W, 3) uint8 image as JPEG at ``quality`` (PIL's defaults otherwise: 4:2:0 chroma)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def read_jpeg_pack(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Decode a :func:`pack_jpeg` file: images (N, H, W, 3) uint8, labels (N,), class names."""
    import io

    from PIL import Image

    try:
        with np.load(path, allow_pickle=False) as f:
            jpeg, offsets, labels, classes = (np.array(f[k]) for k in ("jpeg", "offsets", "labels", "classes"))
        images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[a:b].tobytes())).convert("RGB"))
                           for a, b in zip(offsets[:-1], offsets[1:], strict=True)])
    except Exception as err:  # missing keys, truncated, not an npz, not JPEG
        raise ValueError(f"{path} is not a readable JPEG pack ({type(err).__name__}: {err}); expected {_PACK_FORMAT}") from err
    if labels.shape != (len(images),):
        raise ValueError(f"{path}: {len(labels)} labels for {len(images)} images; expected {_PACK_FORMAT}")
    return images, labels, tuple(str(c) for c in classes)


def jpeg_reencoding_error(images: np.ndarray, qualities=(50, 60, 70, 75, 80, 85, 90, 95)) -> dict[int, float]:
    """How much one more JPEG round trip changes ``images``, per quality: a forensic check.

    Re-encoding a JPEG image with the quantisation tables (and chroma subsampling) it was
    compressed with leaves it almost unchanged, while any other quality changes it visibly, so
    the quality with the smallest error is the one the images last went through. The project's
    offline CIFAR-10 copy gives 0.14 of 255 at quality 75 (PIL's default 4:2:0 chroma
    subsampling; its first 1,000 test images) and 0.84 or more at every other quality tried
    (1.9 at quality 80): it was stored through JPEG at quality 75 (docs/method.md#the-data).

    images : (N, H, W, 3) uint8 (the cache's layout). Returns {quality: mean |change| in 0-255 units}.
    """
    import io

    from PIL import Image

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3 or not len(images):
        raise ValueError(f"expected images (N, H, W, 3) uint8 with N >= 1, got {images.dtype} {images.shape}")
    errors = {}
    for quality in qualities:
        if not (isinstance(quality, int) and 1 <= quality <= 95):
            raise ValueError(f"qualities must be ints in [1, 95], got {quality!r}")
        total = 0.0
        for image in images:
            again = np.asarray(Image.open(io.BytesIO(_jpeg_bytes(image, quality))).convert("RGB"))
            total += np.abs(again.astype(np.int16) - image.astype(np.int16)).mean()
        errors[quality] = total / len(images)
    return errors


def _missing_message(path: Path) -> str:
    return (
        f"CIFAR-10 cache {path} not found. Either allow the download (network needed), or put "
        f"train.npz and test.npz (keys images (N,32,32,3) uint8, labels, classes) in "
        f"{path.parent}, or point CODA_DATA at a folder that has cifar10/ inside."
    )


def _download_cifar10(folder: Path, split: str) -> None:
    """Download the original release with torchvision and write ``<split>.npz`` atomically."""
    import torchvision  # only needed here

    folder.mkdir(parents=True, exist_ok=True)
    try:
        ds = torchvision.datasets.CIFAR10(str(folder / "raw"), train=split == "train", download=True)
    except Exception as err:  # no network, server down, ...
        raise FileNotFoundError(_missing_message(folder / f"{split}.npz") + f" (download failed: {err})") from err
    path = folder / f"{split}.npz"
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, images=ds.data, labels=np.asarray(ds.targets, dtype=np.int64), classes=np.array(ds.classes))
    os.replace(tmp, path)


def load_tinyimagenet(root: str | os.PathLike, split: str = "train") -> ImageDataset:
    """TinyImagenet from its official folder layout (``tiny-imagenet-200``).

    ``train/<wnid>/images/*.JPEG`` for training, ``val/images`` with
    ``val/val_annotations.txt`` for validation; ``wnids.txt`` fixes the label order and
    ``words.txt`` (if present) gives readable class names. Images are 64x64 RGB.
    """
    from PIL import Image

    root = Path(root)
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    wnids_file = root / "wnids.txt"
    if not wnids_file.exists():
        raise FileNotFoundError(f"{wnids_file} not found: expected the official tiny-imagenet-200 layout")
    wnids = wnids_file.read_text().split()
    index = {w: i for i, w in enumerate(wnids)}
    names = dict(line.split("\t", 1) for line in (root / "words.txt").read_text().splitlines() if "\t" in line) if (root / "words.txt").exists() else {}
    files = _tinyimagenet_train_files(root, wnids) if split == "train" else _tinyimagenet_val_files(root, index)
    if not files:
        raise FileNotFoundError(f"no images found for split {split!r} under {root}")
    missing = sorted(set(wnids) - {wnids[y] for _, y in files})
    if missing:
        raise ValueError(f"no {split} images of the classes {missing[:5]} ({len(missing)} of the {len(wnids)} "
                         f"in {wnids_file}) under {root}")
    images = [np.asarray(Image.open(p).convert("RGB")) for p, _ in files]
    for (p, _), image in zip(files, images, strict=True):
        if image.shape != images[0].shape:
            raise ValueError(f"{p} is {image.shape[1]}x{image.shape[0]} pixels, {files[0][0]} is "
                             f"{images[0].shape[1]}x{images[0].shape[0]}: expected images of one size (64x64)")
    images = np.stack(images)
    labels = torch.tensor([y for _, y in files], dtype=torch.long)
    classes = tuple(names.get(w, w).split(",")[0].strip() for w in wnids)
    return ImageDataset(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels, classes)


def _tinyimagenet_train_files(root: Path, wnids: list[str]) -> list[tuple[Path, int]]:
    return [(p, i) for i, w in enumerate(wnids) for p in sorted((root / "train" / w / "images").glob("*.JPEG"))]


def _tinyimagenet_val_files(root: Path, index: dict[str, int]) -> list[tuple[Path, int]]:
    """(image, label) of ``val/val_annotations.txt`` (file, wnid, box per line); ``ValueError``
    naming the line for a wnid that ``wnids.txt`` does not list."""
    annotations = root / "val" / "val_annotations.txt"
    files = []
    for number, line in enumerate(annotations.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(f"{annotations}, line {number}: {line!r} does not name a class of wnids.txt "
                             "(expected file<TAB>wnid<TAB>box)")
        files.append((root / "val" / "images" / fields[0], index[fields[1]]))
    return files


def augment(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """The paper's augmentation on a batch: random crop with zero padding, horizontal flip.

    images : (B, C, H, W), any dtype, on any device. The random offsets and flips are drawn
    on ``generator``'s device (the trainer keeps a CPU generator, so a run draws the same
    augmentation on a CPU and a GPU) and moved to the images' device.
    Returns a new (B, C, H, W) tensor; the same generator state gives the same result.
    """
    b, c, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (padding,) * 4)
    # non_blocking: a host-to-GPU copy that does not make the host wait for the GPU.
    top = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=generator.device).to(dev, non_blocking=True)
    left = torch.randint(0, 2 * padding + 1, (b,), generator=generator, device=generator.device).to(dev, non_blocking=True)
    flip = (torch.rand(b, generator=generator, device=generator.device) < 0.5).to(dev, non_blocking=True)
    rows = (top[:, None] + torch.arange(h, device=dev))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w, device=dev))
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    batch = torch.arange(b, device=dev)[:, None, None, None]
    chan = torch.arange(c, device=dev)[None, :, None, None]
    return padded[batch, chan, rows, cols]


def main(argv: list[str] | None = None) -> None:
    """``python -m coda.data pack``: write the JPEG packs of CIFAR-10 (see :func:`pack_jpeg`);
    ``python -m coda.data jpeg-check``: the JPEG quality the images last went through."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m coda.data", description="CIFAR-10 as compact JPEG packs")
    sub = p.add_subparsers(dest="command", required=True)
    k = sub.add_parser("pack", help="write <out>/<split>.npz for each split")
    k.add_argument("--splits", nargs="+", choices=("train", "test"), default=["train", "test"])
    k.add_argument("--quality", type=int, default=75)
    k.add_argument("--data", help="data folder to read (default: $CODA_DATA, else data/)")
    k.add_argument("--out", default=str(PROJECT_ROOT / "data" / JPEG_PACK_DIR))
    k.add_argument("--first", type=int, help="only the first N images of each split (a smaller pack)")
    c = sub.add_parser("jpeg-check", help="which JPEG quality the images last went through (jpeg_reencoding_error)")
    c.add_argument("--split", choices=("train", "test"), default="test")
    c.add_argument("--images", type=int, default=1000, help="the first N images of the split")
    c.add_argument("--data", help="data folder to read (default: $CODA_DATA, else data/)")
    a = p.parse_args(argv)
    if a.command == "jpeg-check":
        ds = load_cifar10(a.split, a.data, download=False).first(a.images)
        errors = jpeg_reencoding_error(ds.images.permute(0, 2, 3, 1).numpy())
        for quality, error in errors.items():
            print(f"quality {quality:>2}: a round trip changes a pixel by {error:.3f} of 255 on average")
        best = min(errors, key=errors.get)
        print(f"smallest at quality {best}: these {len(ds)} images were most likely stored as JPEG at quality {best}"
              if errors[best] < 0.5 * sorted(errors.values())[1] else "no quality stands out: probably not JPEG-compressed")
        return
    if a.first is not None and a.first < 1:
        p.error(f"--first must be >= 1, got {a.first}")
    for split in a.splits:
        ds = load_cifar10(split, a.data, download=False)
        path = pack_jpeg(ds if a.first is None else ds.first(a.first), Path(a.out) / f"{split}.npz", a.quality)
        print(f"{path}: {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
