"""torch.hub entry points of the CoDA-Nets workbook.

Every model shipped in ``data/pretrained/`` (``coda.list_pretrained()``) is one entry point,
named after the model with every character other than a letter, digit or ``_`` replaced by
``_`` (``cifar10-9L-S-f8-T1000`` becomes ``cifar10_9L_S_f8_T1000``; ``_hub_name`` does it).
Each returns what ``coda.load_pretrained(name)`` returns: the trained model in eval mode, its
SHA-256 checked.
Every architecture of ``coda.CONFIGS`` is one more, untrained (``cifar10-9L-S`` becomes
``cifar10_9L_S``), and ``published`` loads the authors' own models (downloaded on first use;
non-commercial research and education only)::

    import torch
    model = torch.hub.load("path/to/clone", "cifar10_9L_S_f8_T1000", source="local")
    untrained = torch.hub.load("path/to/clone", "cifar10_9L_S", source="local", rank_factor=8)
    theirs = torch.hub.load("path/to/clone", "published", "cifar10-9L-S-T1000", source="local")

``torch.hub.list`` and ``torch.hub.help`` take a GitHub repository (``owner/name``) and list the
same entry points with the same docstrings. Importing this file reads only the manifest (JSON);
``coda`` is imported when an entry point is called. Retired models (manifest section
``"retired"``) ship no weights and have no entry point.
"""

import json
import pathlib
import re

dependencies = ["torch", "numpy", "tqdm"]

_HERE = pathlib.Path(__file__).resolve().parent
_PRETRAINED = _HERE / "data" / "pretrained"
# The keys of coda.CONFIGS (tests/test_hub.py checks that the two agree).
ARCHITECTURES = ("cifar10-9L-S", "imagenet100-9L-L", "cifar10-cnn", "cifar10-resnet20", "cifar10-hybrid", "cifar10-tiny")


def _hub_name(name: str) -> str:
    """The entry point of a model or architecture name: every character other than a letter,
    digit or ``_`` becomes ``_`` (``cifar10-9L-S-f8-T1000`` -> ``cifar10_9L_S_f8_T1000``)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def _read_manifest() -> dict:
    path = _PRETRAINED / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {"default": None, "models": {}}


def _shipped_doc(name: str, entry: dict, default: bool) -> str:
    accuracy = entry.get("test_accuracy")
    measured = "not evaluated" if accuracy is None else (
        f"{100 * accuracy:.2f}% test accuracy on {entry['test_images']:,} CIFAR-10 test images (float32)"
    )
    role = " The workbook's default teaching model." if default else ""
    storage = entry.get("storage", "float32")
    return (
        f"``{name}``: {measured}.{role}\n\n"
        f"A CIFAR-10 model trained with ``coda.train`` ({entry['parameters']:,} parameters, "
        f"T = {entry['model_config']['temperature']:g}, {entry['epochs']} epochs); weights stored as {storage}, "
        f"loaded as float32. Card: ``data/pretrained/{entry['card']}``.\n\n"
        "Parameters\n----------\ndevice : where to put the model (default: CPU).\n\n"
        "Returns\n-------\nThe ``coda.CoDANet`` in eval mode, the same as "
        f"``coda.load_pretrained({name!r})``: images (B, 3, 32, 32) in [0, 1] -> logits (B, 10)."
    )


def _shipped(name: str, entry: dict, default: bool):
    def load(device=None):
        from coda.pretrained import load_pretrained

        return load_pretrained(name, device=device, root=_PRETRAINED)

    load.__name__ = load.__qualname__ = _hub_name(name)
    load.__doc__ = _shipped_doc(name, entry, default)
    return load


def _architecture(name: str):
    def build(**overrides):
        from coda.models import build_model

        return build_model(name, **overrides)

    build.__name__ = build.__qualname__ = _hub_name(name)
    build.__doc__ = (
        f"``{name}``, untrained: ``coda.build_model({name!r}, **overrides)``.\n\n"
        "Parameters\n----------\n**overrides : fields of ``coda.CoDANetConfig`` to change (temperature, "
        "rank_factor, stem_depth, num_classes, ...).\n\nReturns\n-------\nA ``coda.CoDANet`` with random weights."
    )
    return build


def published(name: str, *, url=None, cache_dir=None, progress=True):
    """One of the authors' published models: ``coda.load_published(name, ...)``.

    Licence: the authors allow their trained models to be used for non-commercial research and
    education only.

    Parameters
    ----------
    name : ``cifar10-9L-S-T10``, ``-T50``, ``-T100``, ``-T500``, ``-T1000``, ``-T5000`` or
        ``imagenet100-9L-L-T100000``.
    url, cache_dir, progress : see ``coda.load_published``.

    Returns
    -------
    The ``coda.CoDANet`` in eval mode, downloaded on first use, its SHA-256 checked after that.
    """
    from coda.published import load_published

    return load_published(name, url=url, cache_dir=cache_dir, progress=progress)


def _entry_points() -> dict:
    manifest = _read_manifest()
    entries = {}
    for name, entry in manifest["models"].items():
        entries[_hub_name(name)] = _shipped(name, entry, name == manifest.get("default"))
    for name in ARCHITECTURES:
        entries[_hub_name(name)] = _architecture(name)
    return entries


globals().update(_entry_points())
