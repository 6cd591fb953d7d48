"""LGR-NET model components (paper Fig. 2): extractors, TFE, TCA/TCF reasoning, prediction head, losses.

``LGRNet``/``LGRNetOutput``, the builder (``build_model``: construct, then load the pretrained parts) and the model
folder helpers are imported lazily so that importing a submodule (e.g. ``lgrnet.model.qda``) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "LGRNet": "lgrnet.model.lgrnet",
    "LGRNetOutput": "lgrnet.model.lgrnet",
    "build_model": "lgrnet.model.builder",
    "save_model": "lgrnet.model.io",
    "load_model": "lgrnet.model.io",
    "load_weights": "lgrnet.model.io",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'lgrnet.model' has no attribute {name!r}")
