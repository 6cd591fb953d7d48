"""Restricted unpickling for the dataset files of the field (TransVG/ReSC split files, refer API ``refs(*.p)``).

Those files are pickles, and an ordinary ``pickle.load`` (or ``torch.load(weights_only=False)``) runs whatever
callable a crafted file names. The unpickler here admits only plain containers, numbers, strings and numpy arrays:
``find_class`` resolves a short allow-list of globals (numpy's array reconstruction and dtype, and ``_codecs.encode``
restricted to latin-1, which Python-2 numpy pickles use for raw bytes) and refuses everything else *before* it is
called, so a payload never runs. Tensor storages (``persistent_load``) are refused as well: split files hold none.

Two container layouts are read:

* torch's legacy (pre-zip) stream: four pickles in a row - magic number, protocol version, sys-info dict, object.
  TransVG's files were written by Python 2, so the object is unpickled with ``encoding="latin1"``.
* torch's zip format (``archive/data.pkl``), in case a split file was re-saved by a recent torch.
* anything else is read as one plain pickle (the refer API's ``refs(unc).p`` is a Python-3 pickle).
"""

from __future__ import annotations

import _codecs
import builtins
import collections
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

from lgrnet.errors import DataError

# torch/serialization.py: MAGIC_NUMBER of the legacy format and the only protocol version it writes.
TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
TORCH_LEGACY_PROTOCOL = 1001


def _latin1_encode(obj: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # numpy arrays pickled by Python 2 carry their raw bytes as a unicode string plus ``_codecs.encode(s,
    # "latin1")``; only that codec is admitted (other codecs could be arbitrary registered callables).
    if not isinstance(encoding, str) or encoding.lower().replace("_", "-") not in {"latin1", "latin-1", "iso-8859-1"}:
        raise ForbiddenGlobal("_codecs", "encode", f"with encoding {encoding!r} (only latin-1 is allowed)")
    return _codecs.encode(obj, "latin1", errors)


def _allowed_globals() -> dict[tuple[str, str], Any]:
    import numpy as np

    try:  # numpy >= 2 moved the module; pickles name either spelling
        from numpy._core import multiarray
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {("_codecs", "encode"): _latin1_encode}
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    for name in ("set", "frozenset", "complex", "slice"):
        allowed[("builtins", name)] = getattr(builtins, name)
        allowed[("__builtin__", name)] = allowed[("builtins", name)]
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    return allowed


class ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list (or calls an allowed one with arguments it may not take)."""

    def __init__(self, module: str, name: str, detail: str = ""):
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"
        self.detail = detail


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only allow-listed globals and refuses persistent ids (tensor storages)."""

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _allowed_globals()
        try:
            return RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise ForbiddenGlobal(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("tensor storages (persistent ids) are not allowed in a data file")


def _load_one(stream: io.BufferedIOBase, encoding: str = "ASCII") -> Any:
    return RestrictedUnpickler(stream, encoding=encoding).load()


def safe_load(path: str | Path) -> Any:
    """Load a pickled data file (legacy torch stream, torch zip, or plain pickle) without running code.

    Raises ``DataError`` naming the file for a forbidden global, a truncated/corrupt stream or a missing file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        if zipfile.is_zipfile(io.BytesIO(data)):
            return _load_zip(path, data)
        stream = io.BytesIO(data)
        first = _load_one(stream)
        if first != TORCH_LEGACY_MAGIC:
            return first  # a plain pickle
        protocol = _load_one(stream)
        if protocol != TORCH_LEGACY_PROTOCOL:
            raise DataError(f"{path}: unsupported torch legacy protocol version {protocol!r}")
        _load_one(stream)  # sys-info dict (endianness, type sizes): nothing to check for storage-free files
        # Python-2 str objects become latin-1 decoded str (byte-exact round trip; phrases are ASCII in practice).
        return _load_one(stream, encoding="latin1")
    except ForbiddenGlobal as exc:
        detail = f" {exc.detail}" if exc.detail else ""
        raise DataError(
            f"{path}: refused to unpickle forbidden global '{exc.qualname}'{detail} "
            "(only containers, numbers, strings and numpy arrays are allowed in a data file)"
        ) from None
    except DataError:
        raise
    except Exception as exc:  # truncated or corrupt stream: pickle raises many types
        raise DataError(f"{path}: not a readable pickle data file ({type(exc).__name__}: {exc})") from None


def _load_zip(path: Path, data: bytes) -> Any:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not names:
            raise DataError(f"{path}: zip file without a data.pkl (not a torch-saved object)")
        with archive.open(names[0]) as f:
            return _load_one(io.BytesIO(f.read()))
