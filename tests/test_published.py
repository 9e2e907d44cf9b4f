"""coda.published: the authors' models by URL, cached, hashed and converted (file URLs only, no network)."""

import json

import pytest
import torch

import coda
import coda.published as pub
from coda.checkpoint import sha256
from coda.models import build_model
from coda.reference import to_reference_state_dict

TINY = "cifar10-tiny-T100"


@pytest.fixture
def tiny_published(monkeypatch):
    """A published entry for the tiny architecture, so most tests write small files."""
    spec = pub.PublishedModel(TINY, "cifar10-tiny", 100.0, "no-such-share", "CIFAR-10", 1)
    monkeypatch.setitem(pub.PUBLISHED, TINY, spec)
    return spec


def reference_file(path, name="cifar10-tiny", seed=0, **overrides):
    """A state dict in the authors' layout (``nn.Sequential`` keys) of a random model, and the model."""
    torch.manual_seed(seed)
    model = build_model(name, **overrides).eval()
    state = {f"module.{k}": v for k, v in to_reference_state_dict(model).items()}  # DataParallel prefix
    torch.save(state, path)
    return model


def outputs(model, size=32):
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(x)


def test_the_names_are_the_authors_models():
    assert pub.list_published() == [f"cifar10-9L-S-T{t}" for t in (10, 50, 100, 500, 1000, 5000)] + [
        "imagenet100-9L-L-T100000"
    ]
    for spec in pub.PUBLISHED.values():
        assert spec.architecture in coda.CONFIGS and spec.name.endswith(f"-T{spec.temperature:g}")
        assert spec.url.startswith("https://nextcloud.mpi-klsb.mpg.de/index.php/s/") and spec.url.endswith("/download")
    assert len({spec.url for spec in pub.PUBLISHED.values()}) == 7


def test_licence_is_stated_where_users_look():
    for text in (pub.__doc__, pub.load_published.__doc__):
        assert "non-commercial research and" in " ".join(text.split()) and "education only" in text


def test_first_load_downloads_converts_and_records_the_hash(tmp_path, tiny_published):
    reference = reference_file(tmp_path / "model_epoch_1.pkl")
    cache = tmp_path / "cache"
    model = pub.load_published(TINY, url=(tmp_path / "model_epoch_1.pkl").as_uri(), cache_dir=cache, progress=False)
    assert isinstance(model, coda.CoDANet) and not model.training and model.temperature == 100.0
    torch.testing.assert_close(outputs(model), outputs(reference))
    record = json.loads((cache / f"{TINY}.json").read_text())
    assert record["sha256"] == sha256(cache / f"{TINY}.pt") == sha256(tmp_path / "model_epoch_1.pkl")
    assert record["url"] == (tmp_path / "model_epoch_1.pkl").as_uri()
    assert sorted(p.name for p in cache.iterdir()) == [f"{TINY}.json", f"{TINY}.pt"]


def test_later_loads_use_the_cache_and_verify_it(tmp_path, tiny_published):
    reference = reference_file(tmp_path / "a.pkl")
    cache = tmp_path / "cache"
    pub.load_published(TINY, url=(tmp_path / "a.pkl").as_uri(), cache_dir=cache, progress=False)
    (tmp_path / "a.pkl").unlink()  # the source is gone: the cached copy serves
    model = pub.load_published(TINY, url=(tmp_path / "a.pkl").as_uri(), cache_dir=cache, progress=False)
    torch.testing.assert_close(outputs(model), outputs(reference))


def test_tampered_cached_file_is_refused(tmp_path, tiny_published):
    reference_file(tmp_path / "a.pkl")
    cache = tmp_path / "cache"
    pub.load_published(TINY, url=(tmp_path / "a.pkl").as_uri(), cache_dir=cache, progress=False)
    reference_file(cache / f"{TINY}.pt", seed=1)  # other weights, still a valid file
    with pytest.raises(ValueError, match=rf"{TINY}\.pt has SHA-256 .* was recorded in .*{TINY}\.json"):
        pub.load_published(TINY, cache_dir=cache, progress=False)


def test_a_new_download_must_match_the_recorded_hash(tmp_path, tiny_published):
    """After the cached file was deleted, a download of different content is refused and not kept."""
    reference_file(tmp_path / "a.pkl")
    reference_file(tmp_path / "b.pkl", seed=1)
    cache = tmp_path / "cache"
    pub.load_published(TINY, url=(tmp_path / "a.pkl").as_uri(), cache_dir=cache, progress=False)
    (cache / f"{TINY}.pt").unlink()
    with pytest.raises(ValueError, match="downloaded from .*b.pkl has SHA-256"):
        pub.load_published(TINY, url=(tmp_path / "b.pkl").as_uri(), cache_dir=cache, progress=False)
    assert not (cache / f"{TINY}.pt").exists()
    pub.load_published(TINY, url=(tmp_path / "a.pkl").as_uri(), cache_dir=cache, progress=False)


def test_a_file_put_in_the_cache_by_hand_is_recorded_on_first_use(tmp_path, tiny_published):
    cache = tmp_path / "cache"
    cache.mkdir()
    reference = reference_file(cache / f"{TINY}.pt")
    model = pub.load_published(TINY, url="file:///nowhere/at/all.pkl", cache_dir=cache, progress=False)
    torch.testing.assert_close(outputs(model), outputs(reference))
    record = json.loads((cache / f"{TINY}.json").read_text())
    assert record["sha256"] == sha256(cache / f"{TINY}.pt") and record["url"] is None


def test_unknown_name_lists_the_names(tmp_path):
    with pytest.raises(ValueError, match=r"unknown published model 'cifar10-9L-S-T7'.*cifar10-9L-S-T1000"):
        pub.load_published("cifar10-9L-S-T7", cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_failed_download_says_where_to_put_the_file_and_leaves_nothing(tmp_path, tiny_published):
    cache = tmp_path / "cache"
    missing = (tmp_path / "missing.pkl").as_uri()
    with pytest.raises(OSError, match=rf"could not download {missing}.*put the file at .*{TINY}\.pt"):
        pub.load_published(TINY, url=missing, cache_dir=cache, progress=False)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_the_authors_address_is_tried_by_default(tmp_path, tiny_published, monkeypatch):
    tried = []

    def fake_download(url, dst, progress=True):
        tried.append(url)
        raise OSError("no network here")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(OSError, match="no-such-share/download"):
        pub.load_published(TINY, cache_dir=tmp_path, progress=False)
    assert tried == [tiny_published.url]


@pytest.mark.parametrize("content", [b"not a torch file", "pickle", "wrong layout"])
def test_a_bad_file_is_refused_and_not_cached(tmp_path, tiny_published, content):
    bad = tmp_path / "bad.pkl"
    if content == "pickle":  # arbitrary objects need weights_only=False: refused
        torch.save({"x": object.__new__(pub.PublishedModel)}, bad)
    elif content == "wrong layout":  # readable tensors, but not the published keys
        torch.save({"0.weight": torch.zeros(3)}, bad)
    else:
        bad.write_bytes(content)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"bad\.pkl|cifar10-tiny-T100\.pt"):
        pub.load_published(TINY, url=bad.as_uri(), cache_dir=cache, progress=False)
    assert list(cache.iterdir()) == [], "neither the bad file nor a hash record is kept"


def test_unreadable_hash_record_is_named(tmp_path, tiny_published):
    cache = tmp_path / "cache"
    cache.mkdir()
    reference_file(cache / f"{TINY}.pt")
    (cache / f"{TINY}.json").write_text("{not json")
    with pytest.raises(ValueError, match=rf"{TINY}\.json is not a readable hash record"):
        pub.load_published(TINY, cache_dir=cache, progress=False)


def test_default_cache_is_in_torch_hub_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    assert pub.default_cache_dir() == tmp_path / "hub" / "coda_published"


def test_the_paper_cifar10_model_end_to_end(tmp_path):
    """The real name: the 9L-S layout at rank factor 32, built at the file's temperature."""
    reference = reference_file(tmp_path / "model_epoch_200.pkl", "cifar10-9L-S", temperature=500.0)
    model = coda.load_published("cifar10-9L-S-T500", url=(tmp_path / "model_epoch_200.pkl").as_uri(),
                                cache_dir=tmp_path / "cache", progress=False)
    assert model.temperature == 500.0 and model.config.rank_factor == 32
    assert sum(p.numel() for p in model.parameters()) == 7_782_816
    torch.testing.assert_close(outputs(model), outputs(reference))


def test_imagenet100_architecture_matches_the_paper():
    """Imagenet-100 9L-L: kernels [7, 3 x 8], strides [3,1,1,2,1,1,2,1,1], channels [16,32,32,64 x 5,100],
    ranks [64 x 3, 128 x 3, 256 x 3], T = 1e5."""
    cfg = coda.CONFIGS[pub.PUBLISHED["imagenet100-9L-L-T100000"].architecture]
    assert cfg.kernel_sizes == (7,) + (3,) * 8 and cfg.strides == (3, 1, 1, 2, 1, 1, 2, 1, 1)
    assert cfg.channels == (16, 32, 32) + (64,) * 5 + (100,) and cfg.ranks == (64,) * 3 + (128,) * 3 + (256,) * 3
    assert cfg.temperature == 1e5
    # per layer: A (r C_in k^2) + B (C_out C_in k^2 r) + b (C_out C_in k^2), with C_in of layer 1 = 6 ([x, 1-x])
    c_in = (6, 16, 32, 32, 64, 64, 64, 64, 64)
    expected = sum(r * ci * k * k + co * ci * k * k * (r + 1)
                   for ci, co, k, r in zip(c_in, cfg.channels, cfg.kernel_sizes, cfg.ranks, strict=True))
    assert sum(p.numel() for p in build_model("imagenet100-9L-L").parameters()) == expected == 47_517_408


def test_cli_lists_and_downloads(tmp_path, tiny_published, capsys):
    reference_file(tmp_path / "a.pkl")
    pub.main(["list", "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert "cifar10-9L-S-T1000" in out and "not downloaded" in out and "education only" in out
    pub.main(["download", TINY, "--url", (tmp_path / "a.pkl").as_uri(), "--cache-dir", str(tmp_path / "cache"),
              "--quiet"])
    assert "417,360 parameters" in capsys.readouterr().out
    assert (tmp_path / "cache" / f"{TINY}.json").exists()
