"""Atomic checkpoint folders, picking the newest complete one, safe loading, RNG round trip, the LR schedule."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from lgrnet.config import TrainConfig
from lgrnet.engine import checkpoint as ckpt
from lgrnet.engine.data import ResumableSampler
from lgrnet.engine.optim import CosineWithWarmup, StepDecayWithWarmup, build_scheduler
from lgrnet.errors import CheckpointError, DataError


def _state(epoch: int, step: int, batch_in_epoch: int = 0) -> dict:
    return {"epoch": epoch, "step": step, "batch_in_epoch": batch_in_epoch, "weights": torch.arange(3.0),
            "rng": [ckpt.capture_rng()], "config_yaml": "name: x\n", "val_metrics": {"acc50": 12.5}}


def _write_model(folder: Path) -> None:
    (folder / "model.safetensors").write_bytes(b"weights")
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
