"""hubconf.py: torch.hub entry points for every shipped model and architecture (source="local")."""

import importlib.util
import subprocess
import sys

import pytest
import torch

import coda
import coda.published as pub
from coda.data import PROJECT_ROOT
from coda.pretrained import PRETRAINED_DIR, read_manifest
from coda.reference import to_reference_state_dict

REPO = str(PROJECT_ROOT)
spec = importlib.util.spec_from_file_location("hubconf_under_test", PROJECT_ROOT / "hubconf.py")
hubconf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hubconf)

SHIPPED = read_manifest()["models"]
needs_shipped = pytest.mark.skipif(not SHIPPED, reason=f"no shipped models in {PRETRAINED_DIR}")


def entry_points(module) -> list[str]:
    """What torch.hub.list reports: public callables of the hubconf module."""
    return sorted(f for f in dir(module) if callable(getattr(module, f)) and not f.startswith("_"))


def test_name_mapping_gives_identifiers_without_collisions():
    assert hubconf._hub_name("cifar10-9L-S-f8-T1000") == "cifar10_9L_S_f8_T1000"
    assert hubconf._hub_name("sweep-9L-S-f8-T0.5") == "sweep_9L_S_f8_T0_5"
    names = [*SHIPPED, *hubconf.ARCHITECTURES]
    mapped = [hubconf._hub_name(n) for n in names]
    assert all(m.isidentifier() for m in mapped)
    assert len(set(mapped)) == len(names), "two models map to one entry point"
    assert sorted([*mapped, "published"]) == entry_points(hubconf)


def test_architectures_are_the_configs():
    assert sorted(hubconf.ARCHITECTURES) == sorted(coda.CONFIGS)


def test_importing_hubconf_imports_no_coda():
    code = f"import sys; sys.path.insert(0, {REPO!r}); import hubconf; print(sorted(m for m in sys.modules if m == 'coda' or m.startswith('coda.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert hubconf.dependencies[0] == "torch"
    assert all(importlib.util.find_spec(d) is not None for d in hubconf.dependencies)


@needs_shipped
@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_model_loads_through_torch_hub(name):
    model = torch.hub.load(REPO, hubconf._hub_name(name), source="local")
    expected = coda.load_pretrained(name)
    assert type(model) is type(expected) and not model.training and model.config == expected.config
    a, b = model.state_dict(), expected.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(v.dtype == torch.float32 for v in a.values() if v.is_floating_point())


@needs_shipped
def test_docstrings_give_the_test_accuracy_from_the_manifest():
    default = read_manifest()["default"]
    for name, entry in SHIPPED.items():
        doc = getattr(hubconf, hubconf._hub_name(name)).__doc__
        assert doc.startswith(f"``{name}``: {100 * entry['test_accuracy']:.2f}% test accuracy on 10,000"), doc
        assert f"coda.load_pretrained({name!r})" in doc
        assert ("default teaching model" in doc) == (name == default)


def test_retired_models_have_no_entry_point():
    for name in read_manifest().get("retired", {}):
        assert not hasattr(hubconf, hubconf._hub_name(name))


def test_architecture_entry_points_build_untrained_models_with_overrides():
    model = torch.hub.load(REPO, "cifar10_tiny", source="local", temperature=10.0)
    assert model.config == coda.CONFIGS["cifar10-tiny"].replace(temperature=10.0)
    assert "untrained" in hubconf.cifar10_9L_S.__doc__
    with pytest.raises(ValueError, match="unknown config fields"):
        torch.hub.load(REPO, "cifar10_tiny", source="local", rank=3)


def test_published_entry_point_is_load_published(tmp_path, monkeypatch):
    monkeypatch.setitem(pub.PUBLISHED, "cifar10-tiny-T100",
                        pub.PublishedModel("cifar10-tiny-T100", "cifar10-tiny", 100.0, "x", "CIFAR-10", 1))
    torch.manual_seed(0)
    reference = coda.build_model("cifar10-tiny").eval()
    torch.save(to_reference_state_dict(reference), tmp_path / "m.pkl")
    model = torch.hub.load(REPO, "published", "cifar10-tiny-T100", source="local", url=(tmp_path / "m.pkl").as_uri(),
                           cache_dir=tmp_path / "cache", progress=False)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x))
    assert "non-commercial research and\n    education only" in hubconf.published.__doc__
