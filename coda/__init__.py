"""CoDA-Nets: Convolutional Dynamic Alignment Networks, for teaching and reproduction.

The names most users need are re-exported here; everything else lives in the module named
for its idea (``coda.dau``, ``coda.layers``, ``coda.models``, ``coda.explain``, ...).
"""

import importlib

from coda.explain import contribution_map, contributions, dynamic_linear_weights, explanation_mode
from coda.layers import CoDAConv2d, DynamicAlignment, ExplainableLayer
from coda.models import CONFIGS, CoDANet, CoDANetConfig, build_model
from coda.reference import from_reference_state_dict

# Names from modules that have a command line, imported on first use: were `import coda` to
# import them, `python -m coda.pretrained` (or coda.train, which they import) would run a
# module the package had already imported, and runpy warns about that.
_LAZY = {"list_pretrained": "coda.pretrained", "load_pretrained": "coda.pretrained",
         "load_published": "coda.published"}


def __getattr__(name: str):
    """``coda.load_pretrained`` and the others in ``_LAZY``, and any submodule (``coda.data``)."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise  # the submodule exists but needs something missing
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "CONFIGS",
    "CoDAConv2d",
    "CoDANet",
    "CoDANetConfig",
    "DynamicAlignment",
    "ExplainableLayer",
    "build_model",
    "contribution_map",
    "contributions",
    "dynamic_linear_weights",
    "explanation_mode",
    "from_reference_state_dict",
    "list_pretrained",
    "load_pretrained",
    "load_published",
]
