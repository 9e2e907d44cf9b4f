"""CoDA-Nets: Convolutional Dynamic Alignment Networks, for teaching and reproduction.

The names most users need are re-exported here; everything else lives in the module named
for its idea (``coda.dau``, ``coda.layers``, ``coda.models``, ``coda.explain``, ...).
"""

from coda.explain import contribution_map, contributions, dynamic_linear_weights, explanation_mode
from coda.layers import CoDAConv2d, DynamicAlignment, ExplainableLayer
from coda.models import CONFIGS, CoDANet, CoDANetConfig, build_model
from coda.pretrained import list_pretrained, load_pretrained
from coda.published import load_published
from coda.reference import from_reference_state_dict

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
