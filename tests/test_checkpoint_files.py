"""Checkpoint folder housekeeping: pruning periodic step checkpoints, cleaning up after a crashed writer (the
`.old-*` copy a rewrite renames aside is deleted only once the rewrite is complete), publishing a checkpoint
under another name by hard links (or copies where links fail), and which complete checkpoint resume picks."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lgrnet.engine import checkpoint as ckpt
from lgrnet.errors import CheckpointError


def _write_model(folder: Path) -> None:
    save_file({"w": torch.arange(6.0)}, str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text("name: x\n")


def _write(root: Path, name: str, epoch: int, step: int, batch_in_epoch: int = 0) -> Path:
    return ckpt.write_checkpoint(root, name, _write_model,
                                 {"epoch": epoch, "step": step, "batch_in_epoch": batch_in_epoch})


def _names(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir())


def test_read_info_gives_the_resume_position(tmp_path):
    folder = _write(tmp_path / "checkpoints", "step-00000017", epoch=3, step=17, batch_in_epoch=2)
    assert ckpt.read_info(folder) == ckpt.CheckpointInfo(folder, epoch=3, step=17, batch_in_epoch=2)


def test_prune_keeps_one_step_checkpoint_and_only_others_temporaries(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.prune_step_checkpoints(root, keep=None)  # no folder yet: nothing to do, no error
    assert not root.exists()
    for name, step in [("last", 10), ("best", 8), ("epoch-0001", 10), ("step-00000012", 12),
                       ("step-00000014", 14), ("step-00000016", 16)]:
        _write(root, name, epoch=1, step=step)
    pid = os.getpid()
    temporaries = [f".tmp-step-00000018-{pid}", f".old-last-{pid}", ".tmp-last-1", ".old-best-1",
                   f".tmp-last-{pid}0"]  # the last: another process whose pid starts with ours
    for name in temporaries:
        (root / name).mkdir()
    ckpt.prune_step_checkpoints(root, keep="step-00000016")
    assert _names(root) == sorted([".old-best-1", ".tmp-last-1", f".tmp-last-{pid}0", "best", "epoch-0001",
                                   "last", "step-00000016"])
    ckpt.prune_step_checkpoints(root, keep=None)
    assert "step-00000016" not in _names(root) and "last" in _names(root)


def test_stale_temporaries_and_superseded_old_copies_are_removed(tmp_path):
    """A writer killed between the two renames of a rewrite leaves `.old-<name>-<pid>`, complete; it is the
    newest state until `<name>` is complete again. Writers' `.tmp-*` folders are never complete: always removed."""
    root = tmp_path / "checkpoints"
    ckpt.remove_stale_temporaries(root)  # no folder yet
    _write(root, "last", epoch=2, step=20)
    old_last = _write(root, "x", epoch=1, step=10).rename(root / ".old-last-123")
    old_best = _write(root, "y", epoch=1, step=8).rename(root / ".old-best-123")  # no `best`: the only copy
    old_step = _write(root, "z", epoch=1, step=5).rename(root / ".old-step-00000005-77")  # name with a dash
    (root / "step-00000005").mkdir()  # a folder of that name without a marker: not complete
    (root / ".tmp-last-123").mkdir()
    (root / ".tmp-best-9").mkdir()
    ckpt.remove_stale_temporaries(root)
    assert _names(root) == sorted([old_best.name, old_step.name, "last", "step-00000005"])
    assert not old_last.exists()
    _write(root, "step-00000005", epoch=1, step=5)
    ckpt.remove_stale_temporaries(root)
    assert _names(root) == sorted([old_best.name, "last", "step-00000005"])


def test_old_copy_is_what_resume_finds_after_a_crash_mid_rewrite(tmp_path):
    root = tmp_path / "checkpoints"
    _write(root, "last", epoch=1, step=10).rename(root / ".old-last-123")
    (root / "last").mkdir()  # the half-written replacement: no marker
    ckpt.remove_stale_temporaries(root)
    latest = ckpt.find_latest(tmp_path)
    assert latest is not None and latest.path == root / ".old-last-123" and latest.step == 10


def test_link_checkpoint_hard_links_every_file(tmp_path):
    root = tmp_path / "checkpoints"
    source = _write(root, "last", epoch=1, step=10)
    stale = root / f".tmp-best-{os.getpid()}"  # left by an earlier attempt of this process
    stale.mkdir()
    (stale / "junk").write_text("x")
    published = ckpt.link_checkpoint(root, source, "best")
    assert published == root / "best" and _names(root) == ["best", "last"]
    assert _names(published) == _names(source)
    for item in source.iterdir():
        assert os.path.samefile(item, published / item.name), item.name  # the same file, not a copy
    assert ckpt.read_info(published) == ckpt.CheckpointInfo(published, 1, 10, 0)


def test_link_checkpoint_copies_where_hard_links_fail(tmp_path, monkeypatch):
    """Another file system (os.link raises EXDEV): each file is copied instead, bytes and modification time."""
    root = tmp_path / "checkpoints"
    source = _write(root, "last", epoch=1, step=10)
    os.utime(source / "config.yaml", (1_000_000_000, 1_000_000_000))

    def no_link(src, dst, *args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    published = ckpt.link_checkpoint(root, source, "epoch-0000")
    assert _names(published) == _names(source)
    for item in source.iterdir():
        copy = published / item.name
        assert not os.path.samefile(item, copy) and copy.read_bytes() == item.read_bytes(), item.name
    assert (published / "config.yaml").stat().st_mtime == 1_000_000_000
    assert ckpt.read_info(published) == ckpt.CheckpointInfo(published, 1, 10, 0)


def test_last_wins_a_tie_on_step_and_epoch(tmp_path):
    root = tmp_path / "checkpoints"
    for name in ("best", "last", "step-00000020", "epoch-0001"):  # every name sorts around `last`
        _write(root, name, epoch=2, step=20)
    assert ckpt.find_latest(tmp_path).path.name == "last"
    shutil.rmtree(root / "last")
    assert ckpt.find_latest(tmp_path).step == 20


def test_resume_from_an_output_folder_without_a_complete_checkpoint_names_the_folder(tmp_path):
    (tmp_path / "run" / "checkpoints" / "last").mkdir(parents=True)
    with pytest.raises(CheckpointError) as info:
        ckpt.resolve_resume(str(tmp_path / "run"), tmp_path / "other")
    assert str(info.value) == f"--resume {tmp_path / 'run'}: no complete checkpoint under " \
                              f"{tmp_path / 'run' / 'checkpoints'}"


def test_write_creates_missing_parents_and_replaces_its_own_stale_temporary(tmp_path):
    root = tmp_path / "out" / "run" / "checkpoints"
    _write(root, "last", epoch=0, step=1)
    stale = root / f".tmp-last-{os.getpid()}"
    stale.mkdir()
    (stale / "junk").write_text("x")
    final = _write(root, "last", epoch=0, step=2)
    assert _names(root) == ["last"] and _names(final) == ["COMPLETE", "config.yaml", "model.safetensors",
                                                         "training_state.pt"]
    assert ckpt.read_info(final).step == 2


def test_passed_over_checkpoints_are_reported_through_resolve_resume(tmp_path):
    """A folder marked complete whose weights are cut short, and one whose marker is not the JSON summary: both
    are passed over, each reported once, by `--resume auto` and by `--resume <output folder>`; without a report
    callback they are passed over silently."""
    root = tmp_path / "run" / "checkpoints"
    _write(root, "last", epoch=1, step=10)
    cut = _write(root, "step-00000020", epoch=1, step=20, batch_in_epoch=3)
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    garbled = _write(root, "step-00000030", epoch=1, step=30, batch_in_epoch=4)
    (garbled / ckpt.MARKER).write_text("not json\n")
    for resume, output_dir in [("auto", tmp_path / "run"), (str(tmp_path / "run"), tmp_path / "other")]:
        notes: list[str] = []
        assert ckpt.resolve_resume(resume, output_dir, notes.append).step == 10
        assert sorted(notes) == [f"passed over checkpoint {cut}: model.safetensors is truncated: "
                                 f"{weights.stat().st_size} bytes, its header describes {weights.stat().st_size + 1}",
                                 f"passed over checkpoint {garbled}: unreadable marker"]
    assert ckpt.find_latest(tmp_path / "run").step == 10
