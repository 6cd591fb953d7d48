"""Inference: the :class:`Processor` (images and expressions in, boxes in original pixels out) and the
:class:`Predictor` built on it. Imported lazily, so that light modules of this package (image limits, output
formats) stay importable without torch."""

from __future__ import annotations

import importlib

_EXPORTS = {"Prediction": "predictor", "Predictor": "predictor", "Processor": "processor"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lgrnet.inference.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lgrnet.inference' has no attribute {name!r}")
