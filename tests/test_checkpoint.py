"""Atomic checkpoint folders, picking the newest complete one, safe loading, RNG round trip, the LR schedule."""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from lgrnet.config import TrainConfig
from lgrnet.engine import checkpoint as ckpt
from lgrnet.engine.data import ResumableSampler
from lgrnet.engine.optim import CosineWithWarmup, StepDecayWithWarmup, build_scheduler
from lgrnet.errors import CheckpointError, DataError


def _state(epoch: int, step: int, batch_in_epoch: int = 0) -> dict:
    return {"epoch": epoch, "step": step, "batch_in_epoch": batch_in_epoch, "weights": torch.arange(3.0),
            "rng": [ckpt.capture_rng()], "config_yaml": "name: x\n", "val_metrics": {"acc50": 12.5}}


def _write_model(folder: Path) -> None:
    save_file({"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(5)}, str(folder / "model.safetensors"))
    (folder / "config.yaml").write_text("name: x\n")


def test_write_is_complete_and_loadable_with_weights_only(tmp_path):
    root = tmp_path / "checkpoints"
    path = ckpt.write_checkpoint(root, "last", _write_model, _state(1, 10))
    assert path == root / "last"
    assert sorted(p.name for p in path.iterdir()) == ["COMPLETE", "config.yaml", "model.safetensors",
                                                      "training_state.pt"]
    state = torch.load(path / ckpt.STATE_FILE, weights_only=True)  # no pickled objects inside
    assert state["step"] == 10 and torch.equal(state["weights"], torch.arange(3.0))
    assert ckpt.load_state(path)["val_metrics"] == {"acc50": 12.5}
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_overwrite_replaces_atomically(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.write_checkpoint(root, "last", _write_model, _state(1, 10))
    ckpt.write_checkpoint(root, "last", _write_model, _state(2, 20))
    assert ckpt.read_info(root / "last").step == 20
    assert [p.name for p in root.iterdir()] == ["last"]


def test_incomplete_folders_are_never_picked(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.write_checkpoint(root, "last", _write_model, _state(1, 10))
    # A crashed writer leaves a temporary folder with a newer step but no marker, and a marker-less "step-" one.
    for name in (".tmp-last-999", "step-00000030"):
        half = root / name
        half.mkdir()
        _write_model(half)
        torch.save(_state(3, 30), half / ckpt.STATE_FILE)
    latest = ckpt.find_latest(tmp_path)
    assert latest is not None and latest.path == root / "last" and latest.step == 10
    with pytest.raises(CheckpointError, match="incomplete"):
        ckpt.load_state(root / "step-00000030")
    ckpt.remove_stale_temporaries(root)
    assert not (root / ".tmp-last-999").exists()


def test_latest_prefers_most_steps_and_last_on_ties(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.write_checkpoint(root, "last", _write_model, _state(1, 10))
    ckpt.write_checkpoint(root, "step-00000015", _write_model, _state(1, 15, 5))
    assert ckpt.find_latest(tmp_path).path.name == "step-00000015"
    ckpt.link_checkpoint(root, root / "last", "best")
    ckpt.write_checkpoint(root, "last", _write_model, _state(2, 15))
    assert ckpt.find_latest(tmp_path).path.name == "last"
    # The hard-linked copy is complete and independent of later rewrites of "last".
    assert ckpt.read_info(root / "best").step == 10


def test_resolve_resume(tmp_path):
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path) is None  # nothing yet: fresh start
    root = tmp_path / "checkpoints"
    ckpt.write_checkpoint(root, "last", _write_model, _state(1, 10))
    assert ckpt.resolve_resume("auto", tmp_path).step == 10
    assert ckpt.resolve_resume(str(root / "last"), tmp_path / "elsewhere").step == 10
    assert ckpt.resolve_resume(str(tmp_path), tmp_path / "elsewhere").step == 10
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "missing"), tmp_path)
    (root / "half").mkdir()
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        ckpt.resolve_resume(str(root / "half"), tmp_path)


def test_corrupt_state_file_is_a_checkpoint_error(tmp_path):
    root = tmp_path / "checkpoints"
    path = ckpt.write_checkpoint(root, "last", _write_model, _state(1, 10))
    (path / ckpt.STATE_FILE).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot be read"):
        ckpt.load_state(path)


def test_rng_round_trip_through_weights_only_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    torch.save(ckpt.capture_rng(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    ckpt.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


def scheduled_lrs(train: TrainConfig, base_lr: float, steps: int, steps_per_epoch: int, path: Path) -> list[float]:
    """The lr of each of `steps` optimizer steps under build_scheduler; its state dict must then load without
    unpickling objects."""
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = build_scheduler(opt, train, steps_per_epoch=steps_per_epoch)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    torch.save(scheduler.state_dict(), path)
    assert torch.load(path, weights_only=True)["last_epoch"] == steps
    return lrs


def test_schedule_steps_at_epoch_milestones_with_warmup(tmp_path):
    sched = StepDecayWithWarmup(steps_per_epoch=10, milestones=[2, 4], gamma=0.1, warmup_steps=4)
    assert [sched(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert sched(19) == 1.0 and sched(20) == pytest.approx(0.1) and sched(40) == pytest.approx(0.01)
    lrs = scheduled_lrs(TrainConfig(lr_drop_epochs=[1], lr_gamma=0.5), 1.0, 4, 3, tmp_path / "s.pt")
    assert lrs == pytest.approx([1.0, 1.0, 1.0, 0.5])


def test_cosine_schedule_decays_over_max_steps_or_all_epochs(tmp_path):
    sched = CosineWithWarmup(total_steps=12, warmup_steps=2, min_ratio=0.1)
    assert [sched(s) for s in range(2)] == pytest.approx([0.5, 1.0])
    assert sched(2) == pytest.approx(1.0) and sched(7) == pytest.approx(0.55)  # half way: (1 + 0.1) / 2
    assert sched(12) == pytest.approx(0.1) and sched(50) == pytest.approx(0.1)
    assert all(sched(s) > sched(s + 1) for s in range(2, 12))

    def lrs(train: TrainConfig) -> list[float]:
        return scheduled_lrs(train, 2.0, 12, 5, tmp_path / "cos.pt")

    by_epochs = lrs(TrainConfig(lr_schedule="cosine", epochs=2, lr_drop_epochs=[1]))  # drops are ignored
    assert by_epochs[0] == 2.0 and by_epochs[5] == pytest.approx(1.0) and by_epochs[10:] == pytest.approx([0, 0])
    by_steps = lrs(TrainConfig(lr_schedule="cosine", epochs=2, max_steps=4))
    assert by_steps[2] == pytest.approx(1.0) and by_steps[4:] == pytest.approx([0.0] * 8)


def test_sampler_shards_equal_single_process_batches_and_resumes():
    single = [i for _, i in ResumableSampler(23, batch_size=4, world_size=1, seed=5)]
    ranks = [[i for _, i in ResumableSampler(23, batch_size=2, world_size=2, rank=r, seed=5)] for r in range(2)]
    # 23 -> 20 usable; step s of the 2-rank run covers the same 4 samples as step s of one process.
    assert len(single) == 20 and all(len(r) == 10 for r in ranks)
    for s in range(5):
        assert sorted(ranks[0][2 * s: 2 * s + 2] + ranks[1][2 * s: 2 * s + 2]) == sorted(single[4 * s: 4 * s + 4])
    sampler = ResumableSampler(23, batch_size=4, seed=5)
    sampler.set_epoch(0, start_batch=2)
    assert [i for _, i in sampler] == single[8:] and len(sampler) == 12
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != single  # shuffled anew each epoch, also single-process
    with pytest.raises(DataError, match="fewer than one global batch"):
        ResumableSampler(3, batch_size=4)


# --------------------------------------------------------------------------------------------------------------
# Which checkpoint resume picks, atomic replacement, marker-first deletion, truncated weights


def _set_mtime(folder: Path, seconds: float) -> None:
    for item in [*folder.iterdir(), folder]:
        os.utime(item, (seconds, seconds))


def test_latest_is_picked_by_step_epoch_and_name_never_by_time(tmp_path):
    """Written newest-step first, and mtimes set against the step order: write order, the marker's recorded time
    and the file times all point at the wrong folder."""
    root = tmp_path / "checkpoints"
    ckpt.write_checkpoint(root, "step-00000030", _write_model, _state(2, 30, 5))
    time.sleep(0.01)  # the marker records time.time(): strictly later for the folders below
    ckpt.write_checkpoint(root, "last", _write_model, _state(2, 20))
    ckpt.link_checkpoint(root, root / "last", "best")
    ckpt.link_checkpoint(root, root / "last", "epoch-0001")
    for name, seconds in [("step-00000030", 1_000_000), ("last", 2_000_000), ("best", 3_000_000),
                          ("epoch-0001", 3_000_000)]:
        _set_mtime(root / name, seconds)
    assert ckpt.find_latest(tmp_path).path.name == "step-00000030"  # most steps, although the oldest
    ckpt.remove_checkpoint(root / "step-00000030")
    # "last", "best" and "epoch-0001" tie on (step 20, epoch 2): "last" wins although the others are newer.
    assert ckpt.find_latest(tmp_path).path.name == "last"
    # Same step, one more epoch (an end-of-epoch state against a mid-epoch one of the same step): the epoch wins,
    # whichever of the two names comes first and whichever is newer.
    for end_name, mid_name in [("step-00000021", "step-00000099"), ("step-00000099", "step-00000021")]:
        other = tmp_path / end_name
        ckpt.write_checkpoint(other / "checkpoints", end_name, _write_model, _state(3, 21))
        ckpt.write_checkpoint(other / "checkpoints", mid_name, _write_model, _state(2, 21, 7))
        _set_mtime(other / "checkpoints" / end_name, 1_000_000)
        assert ckpt.find_latest(other).path.name == end_name


def _complete_copies(root: Path, name: str) -> list[str]:
    return [p.name for p in root.iterdir()
            if (p.name == name or p.name.startswith(f".old-{name}-")) and ckpt.read_info(p) is not None]


def test_replacing_a_checkpoint_keeps_a_complete_copy_at_every_moment(tmp_path, monkeypatch):
    """Around every rename, tree deletion and file unlink of a rewrite of `last` (and of its `best` copy), some
    complete checkpoint named `last` (or its `.old-last-*` twin, which resume also finds) exists."""
    root = tmp_path / "checkpoints"
    ckpt.write_checkpoint(root, "last", _write_model, _state(1, 10))
    ckpt.link_checkpoint(root, root / "last", "best")
    checks: list[tuple[str, list[str], list[str]]] = []

    def check(when: str) -> None:
        checks.append((when, _complete_copies(root, "last"), _complete_copies(root, "best")))

    def observed(function):
        def wrapper(*args, **kwargs):
            check(f"before {function.__name__}{args[:2]}")
            try:
                return function(*args, **kwargs)
            finally:
                check(f"after {function.__name__}{args[:2]}")
        return wrapper

    monkeypatch.setattr(os, "replace", observed(os.replace))
    monkeypatch.setattr(os, "rename", observed(os.rename))
    monkeypatch.setattr(os, "unlink", observed(os.unlink))
    monkeypatch.setattr(shutil, "rmtree", observed(shutil.rmtree))
    ckpt.write_checkpoint(root, "last", _write_model, _state(2, 20))
    ckpt.link_checkpoint(root, root / "last", "best")
    monkeypatch.undo()
    assert len(checks) >= 8  # the observer saw the renames and the deletions
    gaps = [(when, last, best) for when, last, best in checks if not last or not best]
    assert not gaps, gaps[:3]
    assert ckpt.read_info(root / "last").step == 20 and ckpt.read_info(root / "best").step == 20
    assert sorted(p.name for p in root.iterdir()) == ["best", "last"]


def test_a_failure_between_the_two_renames_leaves_the_old_checkpoint_for_resume(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    ckpt.write_checkpoint(root, "last", _write_model, _state(1, 10))
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(src).name.startswith(".tmp-"):  # the new folder moving into place: the process dies here
            raise OSError("simulated crash")
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="simulated crash"):
        ckpt.write_checkpoint(root, "last", _write_model, _state(2, 20))
    monkeypatch.undo()
    latest = ckpt.find_latest(tmp_path)
    assert latest is not None and latest.step == 10 and latest.path.name.startswith(".old-last-")
    # The next run's start-up keeps the old copy (no complete `last` supersedes it) and resumes from it.
    ckpt.remove_stale_temporaries(root)
    assert ckpt.resolve_resume("auto", tmp_path).step == 10
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp-")]


def test_every_deletion_removes_the_marker_first(tmp_path, monkeypatch):
    """_replace (old copy), prune_step_checkpoints and remove_stale_temporaries: when the tree deletion starts,
    the folder has no COMPLETE marker any more, so a kill part-way leaves a folder resume never picks."""
    root = tmp_path / "checkpoints"
    ckpt.write_checkpoint(root, "last", _write_model, _state(1, 10))
    ckpt.write_checkpoint(root, "step-00000015", _write_model, _state(1, 15, 5))
    ckpt.link_checkpoint(root, root / "last", "best")
    seen: dict[str, bool] = {}
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):
        seen[Path(path).name] = (Path(path) / ckpt.MARKER).exists()
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    ckpt.write_checkpoint(root, "last", _write_model, _state(2, 20))  # replaces `last`: deletes `.old-last-*`
    ckpt.prune_step_checkpoints(root, keep=None)  # deletes step-00000015
    ckpt.link_checkpoint(root, root / "best", ".old-best-4242")  # a crashed writer's superseded copy
    ckpt.remove_stale_temporaries(root)  # `best` is complete: deletes `.old-best-4242`
    deleted = sorted(seen)
    assert "step-00000015" in deleted and ".old-best-4242" in deleted
    assert any(name.startswith(".old-last-") for name in deleted)
    assert not any(seen.values()), {name: marker for name, marker in seen.items() if marker}
    assert sorted(p.name for p in root.iterdir()) == ["best", "last"]


def test_partially_deleted_or_truncated_checkpoints_are_never_picked(tmp_path):
    root = tmp_path / "checkpoints"
    ckpt.write_checkpoint(root, "last", _write_model, _state(1, 10))
    # A deletion killed half-way without marker-first order: COMPLETE and the state, but no weights.
    gone = ckpt.write_checkpoint(root, "step-00000030", _write_model, _state(2, 30, 5))
    (gone / "model.safetensors").unlink()
    # A newer checkpoint whose weights file lost its last byte (a full disk, a copy cut short).
    cut = ckpt.write_checkpoint(root, "step-00000020", _write_model, _state(2, 20, 2))
    weights = cut / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    notes: list[str] = []
    latest = ckpt.find_latest(tmp_path, report=notes.append)
    assert latest.path.name == "last" and latest.step == 10
    assert len(notes) == 2 and any("step-00000020" in n and "truncated" in n for n in notes)
    assert any("step-00000030" in n and "no model.safetensors" in n for n in notes)
    for folder, reason in [(cut, "truncated"), (gone, "no model.safetensors")]:
        with pytest.raises(CheckpointError, match=reason):
            ckpt.resolve_resume(str(folder), tmp_path)
        with pytest.raises(CheckpointError, match=reason):
            ckpt.load_state(folder)


def test_model_file_check_reads_the_safetensors_header(tmp_path):
    """The intact check compares the size with 8 + header length + the last data offset (the safetensors layout:
    a little-endian u64 header length, a JSON header, the tensor bytes); here a 2x3 float32 and 5 float64."""
    path = tmp_path / "model.safetensors"
    save_file({"w": torch.zeros(2, 3), "b": torch.zeros(5, dtype=torch.float64)}, str(path))
    data = path.read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    assert len(data) == 8 + header_len + 2 * 3 * 4 + 5 * 8
    assert ckpt.model_file_problem(path) is None
    path.write_bytes(data[:-8])
    assert "truncated" in ckpt.model_file_problem(path)
    path.write_bytes(data + b"\0")  # longer than its header says: not a file save_file wrote either
    assert ckpt.model_file_problem(path) is not None
    path.write_bytes(data[: 8 + header_len // 2])  # cut inside the header
    assert "truncated" in ckpt.model_file_problem(path)
    path.write_bytes(b"weights")
    assert ckpt.model_file_problem(path) is not None
    assert ckpt.model_file_problem(tmp_path / "absent.safetensors") == "no absent.safetensors"
