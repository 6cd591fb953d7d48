"""An HTTP server for a trained LGR-NET (``lgrnet serve``): FastAPI app, request checks and dynamic batching.

Needs the ``serve`` extra (``pip install 'lgrnet[serve]'``: fastapi, uvicorn, python-multipart). Names are
imported on first use, so that ``lgrnet --help`` (which reads :mod:`lgrnet.serve.limits`) loads neither torch nor
FastAPI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "app", "describe_model": "app",
    "Batcher": "batcher", "BatchStats": "batcher", "Overloaded": "batcher",
    "ClientError": "inputs",
    "ServerLimits": "limits",
    "SCHEMA_VERSION": "schema", "grounding_response": "schema",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
