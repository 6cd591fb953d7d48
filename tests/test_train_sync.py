"""The training step never waits for the device: no host read of a tensor between logging intervals.

On a GPU, ``float(loss)``, ``.item()``, ``.tolist()`` or ``.cpu()`` make the CPU wait until the GPU has finished
everything queued, so the next step cannot be queued while the current one runs; so do the operations whose output
size depends on the data (``nonzero``, indexing with a boolean mask). These tests count both on the CPU (where they
cost nothing but are made all the same) during a short run: Python-level reads by patching the tensor methods,
operations through a ``TorchDispatchMode``. The loss is read once per logging interval, and before validations and
checkpoints, nowhere else. The data pipeline runs in a worker process, whose host tensors are not the device's.
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_engine import nan_loss_at_forward
from tiny_configs import tiny_twin
from torch.utils._python_dispatch import TorchDispatchMode

from lgrnet.config import Config, load_config
from lgrnet.engine import checkpoint as ckpt
from lgrnet.engine.logging import LossPosition, LossWindow
from lgrnet.engine.train import NonFiniteLossError, Trainer

HOST_READS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """12 small JPEGs with a box each."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    with (folder / "train.jsonl").open("w") as f:
        for i in range(12):
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / f"{i}.jpg")
            f.write(json.dumps({"image": str(folder / f"{i}.jpg"), "expression": f"thing {i} on the left",
                                "box": [4 + i, 6, 30 + i, 40], "id": str(i)}) + "\n")
    return folder


def _config(data: Path, *overrides: str) -> Config:
    return load_config(tiny_twin("lgrnet-swin-s"), [
        "data.format=jsonl", f"data.root={data}", "data.augment.scales=[64]", "model.image_size=64",
        "model.text.max_length=8", "train.precision=off", "train.batch_size=2", "train.eval_every=0",
        "train.checkpoint_every=0", "train.epochs=1", *overrides])


# Code whose tensors are on the host whatever the training device: the data pipeline (which the DataLoader's main
# process runs too: the sampler's index list) and torch.optim's step counters (CPU tensors unless "capturable").
HOST_SIDE = ("/torch/utils/data/", "/lgrnet/data/", "/lgrnet/engine/data.py", "/torch/optim/")


# Frames between a caller and the tensor method or operation it called: torch's wrappers and this file's.
PLUMBING = ("/torch/_tensor.py", "/torch/overrides.py", "/torch/_compile.py", "/torch/_dynamo/",
            "/torch/utils/_python_dispatch.py", __file__)


def _caller(frame):
    while frame is not None and any(part in frame.f_code.co_filename for part in PLUMBING):
        frame = frame.f_back
    return frame


def _host_side(frame) -> bool:
    frame = _caller(frame)
    return frame is not None and any(part in frame.f_code.co_filename for part in HOST_SIDE)


# Operations that read a device value on the host (scalar reads) or whose output size depends on the data.
SYNC_OPS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_dim",
            "repeat_interleave", "equal", "is_nonzero"}


def _boolean_index(name: str, args: tuple) -> bool:
    """``x[mask]`` / ``x[mask] = v``: a nonzero over the mask to size the result."""
    if not name.startswith("index"):
        return False
    indices = args[1] if len(args) > 1 and isinstance(args[1], (list, tuple)) else []
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


class SyncOps(TorchDispatchMode):
    """Records the aten operations that would make the host wait for a GPU, with their (Python) caller."""

    def __init__(self, counts_now=lambda: True) -> None:
        super().__init__()
        self.counts_now = counts_now
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if (name in SYNC_OPS or _boolean_index(name, args)) and self.counts_now() \
                and not _host_side(sys._getframe(1)):
            self.seen.append(f"{name} from\n" + "".join(traceback.format_stack(limit=6)[:-1]))
        return func(*args, **(kwargs or {}))


def _inter_union_without_masks(boxes1: torch.Tensor, boxes2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's ``_loss_inter_union`` (intersection and union of matching boxes) with ``torch.where`` instead of
    boolean-mask assignment: the same values and gradients, no data-dependent size."""
    x1, y1, x2, y2 = boxes1.unbind(dim=-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(dim=-1)
    left, top, right, bottom = torch.max(x1, x1g), torch.max(y1, y1g), torch.min(x2, x2g), torch.min(y2, y2g)
    overlap = (bottom > top) & (right > left)
    intersection = torch.where(overlap, (right - left) * (bottom - top), torch.zeros_like(x1))
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - intersection
    return intersection, union


class HostReads:
    """Counts host reads of tensors (the calls that sync with a GPU), split into those made inside the allowed
    sections (the loss check, checkpoint writing) and the others, with a stack for each other one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, allowed: list[tuple[type, str]]) -> None:
        self.inside = 0
        self.outside: list[str] = []
        self.depth = 0
        self.checks_at: list[int] = []
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(getattr(torch.Tensor, name)))
        for owner, name in allowed:
            monkeypatch.setattr(owner, name, self._allowing(getattr(owner, name)))

    def _counting(self, method):
        def counted(tensor, *args, **kwargs):
            if self.depth:
                self.inside += 1
            elif not _host_side(sys._getframe(1)):
                self.outside.append("".join(traceback.format_stack(limit=8)[:-1]))
            return method(tensor, *args, **kwargs)
        return counted

    def _allowing(self, method):
        def allowed(owner, *args, **kwargs):
            if method.__name__ == "_check_losses":
                self.checks_at.append(owner.step)
            self.depth += 1
            try:
                return method(owner, *args, **kwargs)
            finally:
                self.depth -= 1
        return allowed


def test_a_training_step_reads_no_tensor_on_the_host_between_logging_intervals(data, tmp_path, monkeypatch):
    """6 steps, the loss read every 3: no host read and no data-dependent operation in the steps.

    torchvision's GIoU loss assigns through a boolean mask (a sync per call on a GPU, pinned by the xfail test
    below); here its intersection is computed with ``torch.where`` instead, so that the rest of the step is checked.
    """
    import torchvision.ops.giou_loss

    monkeypatch.setattr(torchvision.ops.giou_loss, "_loss_inter_union", _inter_union_without_masks)
    # One worker process makes the batches (its host tensors are not counted).
    trainer = Trainer(_config(data, "data.num_workers=1", "train.log_every=3", "train.max_steps=6"),
                      tmp_path / "run", device="cpu")
    reads = HostReads(monkeypatch, [(Trainer, "_check_losses"), (Trainer, "save")])
    with SyncOps(counts_now=lambda: reads.depth == 0) as ops:
        result = trainer.run()
    assert result.step == 6
    assert reads.outside == [], f"{len(reads.outside)} host reads in the steps, first from:\n{reads.outside[0]}"
    assert ops.seen == [], f"{len(ops.seen)} syncing operations in the steps, first: {ops.seen[0]}"
    # The loss was read at steps 3 and 6, and once more before the epoch's checkpoint (nothing left to read then).
    assert reads.checks_at == [3, 6, 6]
    assert reads.inside > 0  # the counting does see the reads it allows
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [3, 6]
    assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in rows if r["kind"] == "train")


def test_a_non_finite_loss_between_checks_stops_the_run_before_anything_is_saved(data, tmp_path, monkeypatch):
    """NaN at step 2, read at step 3 (the logging interval): the error names step 2 and nothing was written."""
    calls = nan_loss_at_forward(monkeypatch, 2)
    config = _config(data, "data.num_workers=0", "train.log_every=3", "train.max_steps=6")
    with pytest.raises(NonFiniteLossError, match=r"at step 2 \(epoch 1, batch 2\), read at step 3"):
        Trainer(config, tmp_path / "run", device="cpu").run()
    assert calls["n"] == 3 and ckpt.find_latest(tmp_path / "run") is None
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or "train" not in (
        tmp_path / "run" / "metrics.jsonl").read_text()


def test_loss_window_reads_once_and_means_over_processes():
    window = LossWindow()
    reads = []

    def reduce(losses: torch.Tensor) -> torch.Tensor:  # a stand-in for the all-reduce over 2 processes
        reads.append(losses.shape)
        return losses * 2 + torch.tensor([[1.0], [0.0], [-1.0]])  # one row per micro-batch: the total, no parts

    for i, value in enumerate([1.0, 2.0, 3.0]):
        window.add(torch.tensor(value), LossPosition(i + 1, 1, i + 1))
    assert window.pending == 3 and reads == []
    assert window.check(reduce, world_size=2) is None
    assert reads == [torch.Size([3, 1])] and window.pending == 0
    # (2x + [1, 0, -1]) / 2 = [1.5, 2, 2.5], mean 2
    assert window.take_means() == pytest.approx({"loss": 2.0}) and window.take_means() == {}
    window.add(torch.tensor(1.0), LossPosition(4, 1, 4))
    window.add(torch.tensor(float("inf")), LossPosition(5, 2, 1))
    window.add(torch.tensor(float("nan")), LossPosition(6, 2, 2))
    value, where = window.check(lambda x: x)
    assert value == float("inf") and where == LossPosition(5, 2, 1)


def test_loss_window_means_each_named_part_with_the_total():
    window = LossWindow()
    window.add(torch.tensor(3.0), LossPosition(1, 1, 1), {"l1": torch.tensor(1.0), "giou": torch.tensor(2.0)})
    window.add(torch.tensor(5.0), LossPosition(2, 1, 2), {"l1": torch.tensor(3.0), "giou": torch.tensor(2.0)})
    assert window.check(lambda rows: rows * 2, world_size=2) is None  # two processes with the same rows
    window.add(torch.tensor(7.0), LossPosition(3, 1, 3), {"l1": torch.tensor(5.0), "giou": torch.tensor(2.0)})
    assert window.check(lambda rows: rows) is None
    assert window.take_means() == pytest.approx({"loss": 5.0, "l1": 3.0, "giou": 2.0})
    assert window.take_means() == {}
    with pytest.raises(ValueError, match="loss parts changed"):
        window.add(torch.tensor(1.0), LossPosition(4, 1, 4), {"l1": torch.tensor(1.0)})


def test_train_loader_pins_memory_on_cuda_and_keeps_its_workers(data, monkeypatch):
    from lgrnet.engine.data import build_train_loader
    from lgrnet.model.text import build_tokenizer

    config = _config(data, "data.num_workers=2")
    tokenizer = build_tokenizer(config.model.text)
    records = [object()] * 12
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    loader = build_train_loader(records, config, tokenizer, world_size=1, rank=0)
    assert loader.pin_memory and loader.persistent_workers and loader.num_workers == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not build_train_loader(records, config, tokenizer, world_size=1, rank=0).pin_memory
    without = load_config(config, ["data.num_workers=0"])
    assert not build_train_loader(records, without, tokenizer, world_size=1, rank=0).persistent_workers


def test_giou_loss_has_no_data_dependent_operation():
    """torchvision's generalized_box_iou_loss assigns through a boolean mask, a host sync per call (and per aux
    layer) on a GPU; the project's GIoU computes the intersection with torch.where instead."""
    from lgrnet.model.losses import giou_loss

    pred = torch.tensor([[0.5, 0.5, 0.4, 0.3], [0.2, 0.3, 0.1, 0.1]], requires_grad=True)
    target = torch.tensor([[0.45, 0.5, 0.3, 0.3], [0.8, 0.8, 0.2, 0.2]])
    with SyncOps() as ops:
        giou_loss(pred, target).backward()
    assert ops.seen == [], f"{len(ops.seen)} syncing operations, first: {ops.seen[0]}"


def test_where_form_of_the_intersection_is_torchvisions_bit_for_bit():
    """The replacement used above (and suggested for the loss) changes nothing: values and gradients are equal."""
    from torchvision.ops import generalized_box_iou_loss
    from torchvision.ops import giou_loss as module

    torch.manual_seed(0)
    xy = torch.rand(64, 2)
    boxes = torch.cat([xy, xy + torch.rand(64, 2) * 0.5], dim=1)  # many overlapping pairs, many disjoint ones
    xy = torch.rand(64, 2)
    targets = torch.cat([xy, xy + torch.rand(64, 2) * 0.5], dim=1)
    results = []
    for inter_union in (module._loss_inter_union, _inter_union_without_masks):
        pred = boxes.clone().requires_grad_(True)
        original = module._loss_inter_union
        module._loss_inter_union = inter_union
        try:
            loss = generalized_box_iou_loss(pred, targets, reduction="mean")
        finally:
            module._loss_inter_union = original
        loss.backward()
        results.append((loss.detach(), pred.grad))
    (loss_a, grad_a), (loss_b, grad_b) = results
    overlapping = _inter_union_without_masks(boxes, targets)[0] > 0
    assert 0 < int(overlapping.sum()) < 64
    assert torch.equal(loss_a, loss_b) and torch.equal(grad_a, grad_b)


def test_giou_loss_is_torchvisions_bit_for_bit():
    """The sync-free GIoU loss gives torchvision's values and gradients exactly (overlapping and disjoint pairs,
    one box inside another, identical boxes)."""
    from torchvision.ops import box_convert, generalized_box_iou_loss

    from lgrnet.model.losses import giou_loss

    torch.manual_seed(0)
    pred = torch.cat([torch.rand(64, 2), torch.rand(64, 2) * 0.5 + 0.01], dim=1)  # (cx, cy, w, h)
    target = torch.cat([torch.rand(64, 2), torch.rand(64, 2) * 0.5 + 0.01], dim=1)
    target[:4] = pred[:4]
    target[4:8, :2], target[4:8, 2:] = pred[4:8, :2], pred[4:8, 2:] / 2
    results = []
    for loss_of in (giou_loss, lambda p, t: generalized_box_iou_loss(
            box_convert(p, "cxcywh", "xyxy"), box_convert(t, "cxcywh", "xyxy"), reduction="mean")):
        boxes = pred.clone().requires_grad_(True)
        loss = loss_of(boxes, target)
        loss.backward()
        results.append((loss.detach(), boxes.grad))
    (ours, our_grad), (reference, reference_grad) = results
    overlapping = _inter_union_without_masks(box_convert(pred, "cxcywh", "xyxy"),
                                             box_convert(target, "cxcywh", "xyxy"))[0] > 0
    assert 8 < int(overlapping.sum()) < 64
    assert torch.equal(ours, reference) and torch.equal(our_grad, reference_grad)
