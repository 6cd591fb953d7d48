"""The restricted unpickler on the containers a split file comes in: numpy arrays and scalars pickled by numpy 1
(`numpy.core.multiarray`) and numpy 2 (`numpy._core.multiarray`), a file re-saved by torch in its zip format
(read from `archive/data.pkl`), a zip without one, a pickle holding a tensor (a persistent id), and a Python-2 str
with a non-ASCII byte in torch's legacy stream."""

from __future__ import annotations

import collections
import io
import pickle
import zipfile

import numpy as np
import pytest
import torch

from lgrnet.data.readers import safe_load
from lgrnet.data.readers.safe_pickle import RestrictedUnpickler
from lgrnet.errors import DataError

# torch/serialization.py's legacy stream: magic number, protocol version, sys-info dict, then the object.
LEGACY_MAGIC, LEGACY_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001


@pytest.fixture(autouse=True)
def fresh_allow_list(monkeypatch):
    """The allow-list is built on first use and cached: each test here builds its own, so that every one of them
    depends on it (a mutation tool that maps tests to the functions they run sees them all)."""
    monkeypatch.setattr(RestrictedUnpickler, "_allowed", None)


@pytest.mark.parametrize("protocol", [2, 4])
def test_allowed_builtins_and_ordered_dict_round_trip(tmp_path, protocol):
    """Protocol 2 names the builtins by their Python-2 module `__builtin__`, protocol 4 by `builtins`."""
    value = {"s": {"a", "b"}, "f": frozenset({1}), "c": complex(1, 2), "sl": slice(1, 5, 2),
             "o": collections.OrderedDict([("k", 1), ("j", 2)])}
    data = pickle.dumps(value, protocol=protocol)
    assert (b"__builtin__" in data) is (protocol == 2)
    path = tmp_path / "values.p"
    path.write_bytes(data)
    out = safe_load(path)
    assert out == value and type(out["o"]) is collections.OrderedDict and list(out["o"]) == ["k", "j"]


@pytest.mark.parametrize("module", [b"numpy.core.multiarray", b"numpy._core.multiarray"])
def test_numpy_arrays_and_scalars_under_either_module_name(tmp_path, module):
    data = pickle.dumps({"a": np.arange(6, dtype=np.int32).reshape(2, 3), "s": np.float64(2.5)}, protocol=2)
    written = data.replace(b"cnumpy._core.multiarray\n", b"c" + module + b"\n")
    assert written.count(b"c" + module + b"\n_reconstruct\n") == 1 and written.count(b"c" + module + b"\nscalar\n") == 1
    path = tmp_path / "split.pth"
    path.write_bytes(written)
    out = safe_load(path)
    assert out["a"].dtype == np.int32 and out["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert type(out["s"]) is np.float64 and out["s"] == 2.5


def test_torch_zip_file_of_tuples(tmp_path):
    """A split list re-saved by a recent torch: [(image, mask file, box, phrase, extra)], as TransVG's files."""
    rows = [("COCO_1.jpg", "1.pth", [1.0, 2.0, 30.5, 40.0], "man on the left", ("x", 3)),
            ("COCO_2.jpg", "2.pth", [0.0, 0.0, 5.0, 6.0], "caf\u00e9 sign", ("y", 4))]
    path = tmp_path / "refcoco_train.pth"
    torch.save(rows, path)
    assert zipfile.is_zipfile(path)
    assert safe_load(path) == rows


def test_zip_without_data_pkl_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/readme.txt", "not a torch file")
    with pytest.raises(DataError) as info:
        safe_load(path)
    assert str(info.value) == f"{path}: zip file without a data.pkl (not a torch-saved object)"


@pytest.mark.parametrize("zip_format", [True, False])
def test_a_tensor_inside_is_refused(tmp_path, zip_format):
    path = tmp_path / "tensor.pth"
    torch.save({"boxes": torch.zeros(2, 4)}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(DataError) as info:
        safe_load(path)
    assert str(info.value).startswith(f"{path}: refused to unpickle forbidden global 'torch._utils.")


@pytest.mark.parametrize("in_zip", [False, True])
def test_a_persistent_id_is_refused(tmp_path, in_zip):
    """A tensor storage is referenced by a persistent id (BINPERSID); written by hand, without any global."""
    data = b"\x80\x02]q\x00X\x07\x00\x00\x00storageQa."
    path = tmp_path / "persistent.pth"
    if in_zip:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", data)
    else:
        path.write_bytes(data)
    with pytest.raises(DataError) as info:
        safe_load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable pickle data file (UnpicklingError: ") and \
        "tensor storages (persistent ids) are not allowed" in message, message
    with pytest.raises(pickle.UnpicklingError, match="persistent"):  # control: plain pickle needs a loader too
        pickle.loads(data)


def test_python2_str_with_a_latin1_byte_in_the_legacy_stream(tmp_path):
    """Python 2 pickles a str as bytes (SHORT_BINSTRING); torch's legacy reader decodes them as latin-1."""
    stream = io.BytesIO()
    for head in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(head, stream, protocol=2)
    phrase = b"caf\xe9 at left"
    # [ (u"img.jpg", "caf\xe9 at left") ] written by hand: a list holding a tuple of a unicode and a Python-2 str.
    stream.write(b"\x80\x02]q\x00X\x07\x00\x00\x00img.jpgU" + bytes([len(phrase)]) + phrase + b"\x86a.")
    path = tmp_path / "legacy.pth"
    path.write_bytes(stream.getvalue())
    assert safe_load(path) == [("img.jpg", "caf\u00e9 at left")]
