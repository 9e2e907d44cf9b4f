"""coda.data: the offline CIFAR-10 cache, the data-folder rule, subsets, augmentation, TinyImagenet.

Nothing here touches the network: the torchvision download is replaced by fakes.
"""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import coda.data as data
from coda.data import CIFAR10_CLASSES, ImageDataset, augment, data_dir, load_cifar10, load_tinyimagenet

CIFAR_ROOT = Path(os.environ.get("CODA_DATA") or data.PROJECT_ROOT / "data")
needs_cifar = pytest.mark.skipif(
    not (CIFAR_ROOT / "cifar10" / "test.npz").exists(),
    reason=f"CIFAR-10 cache not found in {CIFAR_ROOT / 'cifar10'} (set CODA_DATA to a folder with cifar10/)",
)


def write_fake_cache(root: Path, split: str, n: int, label: int) -> None:
    """A tiny cache ``<root>/cifar10/<split>.npz`` whose labels are all ``label``."""
    folder = root / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    images = np.full((n, 32, 32, 3), 7, dtype=np.uint8)
    np.savez(
        folder / f"{split}.npz",
        images=images,
        labels=np.full(n, label, dtype=np.int64),
        classes=np.array(CIFAR10_CLASSES),
    )


def toy_dataset(labels: list[int]) -> ImageDataset:
    """Image ``i`` is filled with the value ``i``, so subsets can be traced back."""
    n = len(labels)
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 3, 4, 4).contiguous()
    return ImageDataset(images, torch.tensor(labels), tuple(f"c{i}" for i in range(3)))


# ----- CIFAR-10 from the offline cache ---------------------------------------------------------


@needs_cifar
def test_cifar10_test_split_from_cache():
    ds = load_cifar10("test", CIFAR_ROOT, download=False)
    assert ds.images.shape == (10_000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.shape == (10_000,) and ds.labels.dtype == torch.int64
    assert ds.classes == CIFAR10_CLASSES
    assert torch.bincount(ds.labels).tolist() == [1000] * 10
    assert 0 < ds.images.float().mean() < 255  # real pixels, not a blank array


@needs_cifar
def test_cifar10_train_split_from_cache():
    ds = load_cifar10("train", CIFAR_ROOT, download=False)
    assert ds.images.shape == (50_000, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    counts = torch.bincount(ds.first(1000).labels, minlength=10)
    assert counts.min() > 60, "the offline copy is shuffled, so a prefix is close to balanced"


@needs_cifar
def test_cifar10_float_images_in_unit_range():
    x = load_cifar10("test", CIFAR_ROOT, download=False).float_images(slice(0, 8))
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1 and x.max() > 0.5


def test_bad_split_raises():
    with pytest.raises(ValueError, match="split must be"):
        load_cifar10("val", "/nonexistent", download=False)


# ----- which data folder -----------------------------------------------------------------------


def test_root_argument_beats_coda_data_beats_project_data(tmp_path, monkeypatch):
    explicit, env, project = tmp_path / "explicit", tmp_path / "env", tmp_path / "project"
    write_fake_cache(explicit, "test", 2, label=1)
    write_fake_cache(env, "test", 2, label=2)
    write_fake_cache(project / "data", "test", 2, label=3)
    monkeypatch.setattr(data, "PROJECT_ROOT", project)
    monkeypatch.setenv("CODA_DATA", str(env))
    assert load_cifar10("test", explicit, download=False).labels.tolist() == [1, 1]
    assert load_cifar10("test", download=False).labels.tolist() == [2, 2]
    monkeypatch.delenv("CODA_DATA")
    assert load_cifar10("test", download=False).labels.tolist() == [3, 3]
    assert data_dir() == project / "data"


def test_empty_coda_data_means_unset(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "PROJECT_ROOT", tmp_path)
    monkeypatch.setenv("CODA_DATA", "")
    assert data_dir() == tmp_path / "data"


# ----- a missing cache -----------------------------------------------------------------------


def test_missing_cache_without_download_says_where_to_put_files(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        load_cifar10("train", tmp_path, download=False)
    message = str(err.value)
    assert str(tmp_path / "cifar10") in message
    assert "train.npz" in message and "CODA_DATA" in message


def test_failed_download_raises_file_not_found(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise RuntimeError("no network here")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_network)
    with pytest.raises(FileNotFoundError, match="download failed: no network here") as err:
        load_cifar10("test", tmp_path, download=True)
    assert str(tmp_path / "cifar10") in str(err.value)
    assert not (tmp_path / "cifar10" / "test.npz").exists()


def test_download_writes_the_cache(tmp_path, monkeypatch):
    """A (fake) torchvision download is converted to the .npz cache and then read from it."""

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            assert download and not train
            self.data = np.arange(2 * 32 * 32 * 3, dtype=np.uint8).reshape(2, 32, 32, 3)
            self.targets = [4, 9]
            self.classes = list(CIFAR10_CLASSES)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    ds = load_cifar10("test", tmp_path, download=True)
    assert (tmp_path / "cifar10" / "test.npz").exists()
    assert ds.labels.tolist() == [4, 9]
    assert torch.equal(ds.images, torch.from_numpy(FakeCIFAR10(None, False, True).data).permute(0, 3, 1, 2))
    assert [p.name for p in (tmp_path / "cifar10").iterdir() if "tmp" in p.name] == []


# ----- the dataset and its subsets -------------------------------------------------------------


def test_dataset_validates_dtype_and_labels():
    with pytest.raises(ValueError, match="uint8"):
        ImageDataset(torch.zeros(2, 3, 4, 4), torch.zeros(2, dtype=torch.long), ("a",))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        ImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.long), ("a",))


def test_first_n():
    ds = toy_dataset([0, 1, 2, 0, 1])
    sub = ds.first(3)
    assert len(sub) == 3 and sub.classes == ds.classes
    assert sub.images[:, 0, 0, 0].tolist() == [0, 1, 2] and sub.labels.tolist() == [0, 1, 2]


def test_per_class_keeps_the_first_n_of_each_class_in_order():
    ds = toy_dataset([2, 0, 0, 1, 2, 0, 2, 1])
    sub = ds.per_class(2)
    assert sub.images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 7]
    assert sub.labels.tolist() == [2, 0, 0, 1, 2, 1]
    assert len(ds.per_class(10)) == len(ds)


# ----- augmentation ----------------------------------------------------------------------------


def distinct_images(b: int, c: int = 2, h: int = 6, w: int = 7) -> torch.Tensor:
    """Images whose every pixel value is distinct and non-zero (zero is the padding)."""
    return torch.arange(1, b * c * h * w + 1, dtype=torch.float32).reshape(b, c, h, w)


def crop_and_flip(image: torch.Tensor, pad: int) -> list[torch.Tensor]:
    """Every crop of the zero-padded ``image`` (C, H, W), each also mirrored: 2 (2p+1)^2 tensors."""
    _, h, w = image.shape
    padded = torch.nn.functional.pad(image, (pad,) * 4)
    crops = [padded[:, t : t + h, s : s + w] for t in range(2 * pad + 1) for s in range(2 * pad + 1)]
    return crops + [c.flip(-1) for c in crops]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_keeps_shape_and_dtype():
    for dtype in (torch.float32, torch.uint8):
        x = torch.randint(0, 255, (5, 3, 8, 8)).to(dtype)
        y = augment(x, gen(0))
        assert y.shape == x.shape and y.dtype == dtype


def test_augment_is_a_shifted_crop_of_the_padded_image_or_its_mirror():
    x = distinct_images(64)
    y = augment(x, gen(0), padding=3)
    kinds = []
    for image, out in zip(x, y, strict=True):
        candidates = crop_and_flip(image, 3)
        matches = [i for i, c in enumerate(candidates) if torch.equal(c, out)]
        assert len(matches) == 1, "the output must be exactly one crop (or mirrored crop)"
        kinds.append(matches[0])
    n_crops = 7 * 7
    assert any(k < n_crops for k in kinds) and any(k >= n_crops for k in kinds), "both flips occur"
    assert len({k % n_crops for k in kinds}) > 20, "many different shifts occur"


def test_augment_same_seed_same_result_different_seed_different():
    x = distinct_images(16)
    assert torch.equal(augment(x, gen(1)), augment(x, gen(1)))
    assert not torch.equal(augment(x, gen(1)), augment(x, gen(2)))


def test_augment_uint8_matches_float():
    x = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    assert torch.equal(augment(x, gen(3)).float(), augment(x.float(), gen(3)))


def test_augment_does_not_modify_its_input():
    x = distinct_images(4)
    before = x.clone()
    augment(x, gen(0))
    assert torch.equal(x, before)


# ----- TinyImagenet ----------------------------------------------------------------------------

WNIDS = ["n01443537", "n01629819"]
COLOURS = {"n01443537": (200, 30, 30), "n01629819": (30, 30, 200)}


def make_tinyimagenet(root: Path) -> None:
    """The official layout, with 3 training and 2 validation 64x64 JPEGs per class."""
    from PIL import Image

    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    (root / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\n"
    )
    val_lines = []
    for w in WNIDS:
        folder = root / "train" / w / "images"
        folder.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), COLOURS[w]).save(folder / f"{w}_{i}.JPEG")
    (root / "val" / "images").mkdir(parents=True)
    for i, w in enumerate([WNIDS[1], WNIDS[0], WNIDS[1], WNIDS[0]]):
        Image.new("RGB", (64, 64), COLOURS[w]).save(root / "val" / "images" / f"val_{i}.JPEG")
        val_lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    # a greyscale image (TinyImagenet has some): must come back as 3 channels
    Image.new("L", (64, 64), 128).save(root / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_grey.JPEG")
    (root / "val" / "val_annotations.txt").write_text("\n".join(val_lines) + "\n")


def test_tinyimagenet_train(tmp_path):
    make_tinyimagenet(tmp_path)
    ds = load_tinyimagenet(tmp_path, "train")
    assert ds.images.shape == (7, 3, 64, 64) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert ds.classes == ("goldfish", "European fire salamander")
    mean = ds.images.float().mean((2, 3))  # files in sorted order: _0, _1, _2, _grey per class
    assert torch.allclose(mean[0], torch.tensor(COLOURS[WNIDS[0]]).float(), atol=4)
    assert torch.allclose(mean[3], torch.full((3,), 128.0), atol=4), "greyscale -> 3 equal channels"
    assert torch.allclose(mean[4], torch.tensor(COLOURS[WNIDS[1]]).float(), atol=4)


def test_tinyimagenet_val_labels_from_annotations(tmp_path):
    make_tinyimagenet(tmp_path)
    ds = load_tinyimagenet(tmp_path, "val")
    assert ds.images.shape == (4, 3, 64, 64)
    assert ds.labels.tolist() == [1, 0, 1, 0]
    reds = ds.images[:, 0].float().mean((1, 2))
    assert (reds[ds.labels == 0] > 150).all() and (reds[ds.labels == 1] < 80).all()


def test_tinyimagenet_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="tiny-imagenet-200 layout"):
        load_tinyimagenet(tmp_path)
    make_tinyimagenet(tmp_path)
    with pytest.raises(ValueError, match="split must be"):
        load_tinyimagenet(tmp_path, "test")


def test_augmentation_draws_on_the_generators_device():
    """The trainer keeps a CPU generator for every device, so a run augments identically on a
    CPU and a GPU; the images may live elsewhere (here: the same CPU)."""
    from coda.data import augment

    images = torch.rand(5, 3, 8, 8)
    a = augment(images, torch.Generator().manual_seed(1))
    b = augment(images.double(), torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.double(), b)
    assert not torch.equal(a, augment(images, torch.Generator().manual_seed(2)))


# ----- bad caches and folders: ValueError naming the file -----------------------------------------


def write_cache(root: Path, **arrays) -> Path:
    folder = root / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "test.npz", **arrays)
    return folder / "test.npz"


GOOD = {"images": np.zeros((4, 8, 8, 3), np.uint8), "labels": np.array([0, 1, 2, 9])}


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({**GOOD, "labels": np.array([0, 1, 2, 10])}, r"labels in \[0, 10\], expected \[0, 9\]"),
        ({**GOOD, "labels": np.array([-1, 1, 2, 3])}, r"labels in \[-1, 3\]"),
        ({**GOOD, "labels": np.array([0.0, 1.7, 2.0, 3.0])}, "labels are float64"),
        ({**GOOD, "labels": np.array([0, 1])}, r"labels are int64 \(2,\) for 4 images"),
        ({**GOOD, "images": np.zeros((4, 3, 8, 8), np.uint8)}, r"images are uint8 \(4, 3, 8, 8\); expected .*\(N, H, W, 3\)"),
        ({**GOOD, "images": np.zeros((4, 8, 8), np.uint8)}, r"images are uint8 \(4, 8, 8\)"),
        ({**GOOD, "images": np.zeros((4, 8, 8, 3), np.float32)}, "images are float32"),
        ({"x": GOOD["images"], "y": GOOD["labels"]}, r"has no \['images', 'labels'\] \(it has \['x', 'y'\]\)"),
    ],
    ids=["label-10", "label-minus-1", "float-labels", "label-count", "nchw", "grayscale", "float-images", "other-keys"],
)
def test_bad_cifar_cache_raises_naming_the_file(tmp_path, arrays, message):
    path = write_cache(tmp_path, **arrays)
    with pytest.raises(ValueError, match=message) as err:
        load_cifar10("test", tmp_path, download=False)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"\x80\x04 random bytes" * 20, b"PK\x03\x04 truncated zip"],
                         ids=["empty", "random", "truncated"])
def test_unreadable_cifar_cache_raises_naming_the_file(tmp_path, content):
    path = write_cache(tmp_path, **GOOD)
    path.write_bytes(content)
    with pytest.raises(ValueError, match=f"{path} is not a readable .npz file"):
        load_cifar10("test", tmp_path, download=False)


def test_pickled_objects_in_a_cifar_cache_are_refused(tmp_path):
    path = write_cache(tmp_path, **GOOD, classes=np.array([object()] * 10, dtype=object))
    with pytest.raises(ValueError, match=f"{path} is not a readable .npz file"):
        load_cifar10("test", tmp_path, download=False)


def test_tinyimagenet_without_the_images_of_a_class_raises(tmp_path):
    make_tinyimagenet(tmp_path)
    for p in (tmp_path / "train" / WNIDS[1] / "images").iterdir():
        p.unlink()
    with pytest.raises(ValueError, match=rf"no train images of the classes \['{WNIDS[1]}'\] \(1 of the 2"):
        load_tinyimagenet(tmp_path, "train")


def test_tinyimagenet_unknown_wnid_in_the_annotations_names_the_line(tmp_path):
    make_tinyimagenet(tmp_path)
    annotations = tmp_path / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_0.JPEG\tn99\t0\t0\t63\t63\n")
    with pytest.raises(ValueError, match=f"{annotations}, line 5: .*n99.* does not name a class of wnids.txt"):
        load_tinyimagenet(tmp_path, "val")


def test_tinyimagenet_images_of_mixed_sizes_name_the_file(tmp_path):
    from PIL import Image

    make_tinyimagenet(tmp_path)
    odd = tmp_path / "train" / WNIDS[1] / "images" / f"{WNIDS[1]}_1.JPEG"
    Image.new("RGB", (32, 48), (0, 0, 0)).save(odd)
    with pytest.raises(ValueError, match=f"{odd} is 32x48 pixels.*expected images of one size"):
        load_tinyimagenet(tmp_path, "train")


def test_jpeg_pack_round_trip_and_fallback(tmp_path):
    g = torch.Generator().manual_seed(0)
    # Smooth images (JPEG's case): a colour per image plus a gentle gradient.
    base = torch.rand(12, 3, 1, 1, generator=g) * 200 + torch.linspace(0, 40, 32).view(1, 1, 1, 32)
    images = base.expand(12, 3, 32, 32).round().clamp(0, 255).to(torch.uint8).contiguous()
    ds = ImageDataset(images, torch.arange(12) % 10, CIFAR10_CLASSES)
    path = data.pack_jpeg(ds, tmp_path / "cifar10-jpeg" / "test.npz", quality=95)
    assert not [p for p in path.parent.iterdir() if p.name != "test.npz"], "no temporary file left"
    decoded, labels, classes = data.read_jpeg_pack(path)
    assert decoded.shape == (12, 32, 32, 3) and decoded.dtype == np.uint8
    assert np.abs(decoded.astype(int) - images.permute(0, 2, 3, 1).numpy().astype(int)).mean() < 2.0
    assert labels.tolist() == ds.labels.tolist() and classes == CIFAR10_CLASSES
    # load_cifar10 falls back to the pack where the cache is missing, without trying a download.
    loaded = load_cifar10("test", tmp_path, download=True)
    assert torch.equal(loaded.images, torch.from_numpy(decoded).permute(0, 3, 1, 2))
    with pytest.raises(FileNotFoundError):
        load_cifar10("train", tmp_path, download=False)


def test_pack_command_writes_the_first_images_of_a_split(tmp_path, capsys):
    images = torch.full((6, 3, 32, 32), 100, dtype=torch.uint8)
    data.pack_jpeg(ImageDataset(images, torch.arange(6) % 10, CIFAR10_CLASSES), tmp_path / "cifar10-jpeg" / "test.npz")
    data.main(["pack", "--splits", "test", "--first", "4", "--data", str(tmp_path), "--out", str(tmp_path / "small")])
    decoded, labels, _ = data.read_jpeg_pack(tmp_path / "small" / "test.npz")
    assert decoded.shape == (4, 32, 32, 3) and labels.tolist() == [0, 1, 2, 3]
    assert "small/test.npz" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        data.main(["pack", "--first", "0", "--data", str(tmp_path), "--out", str(tmp_path / "none")])
    assert not (tmp_path / "none").exists()


def test_jpeg_pack_rejects_bad_quality_and_files(tmp_path):
    ds = ImageDataset(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1]), CIFAR10_CLASSES)
    with pytest.raises(ValueError, match=r"quality must be an int in \[1, 95\]"):
        data.pack_jpeg(ds, tmp_path / "x.npz", quality=100)
    np.savez(tmp_path / "bad.npz", labels=np.zeros(2))
    with pytest.raises(ValueError, match="bad.npz is not a readable JPEG pack"):
        data.read_jpeg_pack(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz is not a readable JPEG pack"):
        data.read_jpeg_pack(tmp_path / "junk.npz")


def _textured_images(n: int, seed: int = 0) -> np.ndarray:
    """(n, 32, 32, 3) uint8 with structure at every scale (what JPEG's quantisation changes),
    away from 0 and 255, where decoding would clip."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.nn.functional.interpolate(torch.rand(n, 3, 8, 8, generator=g), size=32, mode="bilinear")
    fine = torch.rand(n, 3, 32, 32, generator=g)
    return (60 + 120 * coarse + 20 * fine).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def test_jpeg_reencoding_error_finds_the_quality_the_images_went_through():
    import io

    from PIL import Image

    def through_jpeg(images, quality):
        out = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
            out.append(np.asarray(Image.open(buffer).convert("RGB")))
        return np.stack(out)

    raw = _textured_images(6)
    for stored in (60, 75):
        errors = data.jpeg_reencoding_error(through_jpeg(raw, stored), qualities=(50, 60, 75, 90))
        assert min(errors, key=errors.get) == stored
        assert errors[stored] < 0.5 * min(e for q, e in errors.items() if q != stored)
    # Images that never went through JPEG: every quality changes them visibly.
    assert min(data.jpeg_reencoding_error(raw, qualities=(60, 75)).values()) > 1.0


def test_jpeg_reencoding_error_rejects_bad_input():
    with pytest.raises(ValueError, match=r"expected images \(N, H, W, 3\) uint8"):
        data.jpeg_reencoding_error(np.zeros((2, 3, 8, 8), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"qualities must be ints in \[1, 95\]"):
        data.jpeg_reencoding_error(np.zeros((1, 8, 8, 3), dtype=np.uint8), qualities=(100,))
