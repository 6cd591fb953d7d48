"""Precision names and autocast: the one place that knows them.

``fp32`` runs without autocast (weights and maths in float32, as the reference); ``bf16`` and ``fp16`` run the
forward under ``torch.autocast`` in that dtype (weights stay float32). torch is imported inside the functions so
that the command-line options can use :data:`PRECISIONS` without importing it.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from lgrnet.errors import LGRNetError

if TYPE_CHECKING:
    import torch

#: The precision names, fp32 first (the default everywhere).
PRECISIONS = ("fp32", "bf16", "fp16")

# Other spellings users and configs write: "off" is train.precision's word for no autocast.
_ALIASES = {
    "fp32": "fp32", "off": "fp32", "float32": "fp32", "float": "fp32",
    "bf16": "bf16", "bfloat16": "bf16",
    "fp16": "fp16", "float16": "fp16", "half": "fp16",
}


def normalize_precision(value: Any, what: str = "precision") -> str:
    """The precision name ("fp32", "bf16" or "fp16") of ``value``: one of those names or an alias ("off",
    "float32", "bfloat16", "half", ...; any case), None (fp32) or a torch float dtype. ``what`` names the
    argument in the error raised for anything else."""
    if value is None:
        return "fp32"
    if isinstance(value, str):
        name = _ALIASES.get(value.lower())
        if name is not None:
            return name
    else:  # torch is imported only here: the command line passes strings
        import torch

        by_dtype = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        if isinstance(value, torch.dtype) and value in by_dtype:
            return by_dtype[value]
    raise LGRNetError(f"{what} {value!r}: expected one of {', '.join(PRECISIONS)}")


def _dtype_of(name: str) -> torch.dtype | None:
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def autocast_dtype(precision: Any, device: torch.device | str, what: str = "precision") -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` for inference: None for fp32. fp16 on a CPU is refused
    (its CPU kernels are slow or missing; bf16 is the CPU's low precision)."""
    name = normalize_precision(precision, what)
    device_type = device if isinstance(device, str) else device.type
    if name == "fp16" and device_type.split(":")[0] == "cpu":
        raise LGRNetError(f"{what} fp16: not supported on the CPU, use bf16 or fp32")
    return _dtype_of(name)


def autocast(device: torch.device | str, precision: Any) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` in ``precision`` ("bf16"/"fp16" or an alias), a no-op for fp32.

    It does not refuse fp16 on a CPU: training runs that on purpose, with a gradient scaler. Inference callers
    check with :func:`autocast_dtype` first."""
    dtype = _dtype_of(normalize_precision(precision))
    if dtype is None:
        return contextlib.nullcontext()
    import torch

    device_type = device if isinstance(device, str) else device.type
    return torch.autocast(device_type=device_type.split(":")[0], dtype=dtype)
