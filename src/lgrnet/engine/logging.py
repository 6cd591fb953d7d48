"""Training logs written by rank 0 only (spec section 15.14: the reference let every rank write): a JSONL metrics
log, optional TensorBoard scalars, a tqdm progress bar with loss, lr, samples/s and ETA, and the on-device loss
window the log and the non-finite check read at intervals instead of every step."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm


class MetricsLogger:
    """Appends one JSON object per event to ``OUT/metrics.jsonl`` and mirrors scalars to TensorBoard if it is
    installed. A no-op on ranks other than 0."""

    def __init__(self, output_dir: Path, enabled: bool, tensorboard: bool = True) -> None:
        self.enabled = enabled
        self.path = output_dir / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # optional dependency: JSONL log only
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self.writer = SummaryWriter(log_dir=str(output_dir / "tensorboard"))

    def log(self, kind: str, step: int, values: dict[str, Any], **extra: Any) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **extra, **values}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _clock(seconds: float) -> str:
    """``192`` -> ``3:12``, ``3725`` -> ``1:02:05``."""
    hours, rest = divmod(max(0, int(seconds)), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass(frozen=True)
class TimeBudget:
    """A run bounded by the clock (``train.time_limit_minutes``): the budget and how much of it is spent."""

    budget_s: float
    elapsed_s: Callable[[], float]

    def label(self, step: int) -> str:
        """The progress bar's description, e.g. ``step 37, 3:12/15:00`` (steps done, time spent / budget)."""
        return f"step {step}, {_clock(self.elapsed_s())}/{_clock(self.budget_s)}"


class Progress:
    """Per-epoch progress bar (rank 0): tqdm shows the ETA; the postfix shows loss, lr and samples/s. The description
    is ``epoch E/EPOCHS``, or for a run with a :class:`TimeBudget` (where the epoch count is only an upper bound)
    the steps done and the time spent of the budget.

    The loss shown is a host number the caller already has (the logging interval's mean): the bar never reads a
    device tensor, so updating it every step costs no host-device synchronisation."""

    def __init__(self, total: int, epoch: int, epochs: int, enabled: bool, initial: int = 0, step: int = 0,
                 budget: TimeBudget | None = None) -> None:
        self.budget = budget
        self.step = step
        desc = budget.label(step) if budget is not None else f"epoch {epoch + 1}/{epochs}"
        self.bar = tqdm(total=total, initial=initial, desc=desc, disable=not enabled,
                        dynamic_ncols=True, file=sys.stderr, leave=False)
        self.start = time.perf_counter()
        self.samples = 0
        self.loss: float | None = None

    def update(self, samples: int, loss: float | None, lr: float) -> None:
        """One optimizer step of ``samples`` samples; ``loss`` None keeps the last loss shown."""
        self.step += 1
        if self.budget is not None:
            self.bar.set_description(self.budget.label(self.step), refresh=False)
        self.samples += samples
        if loss is not None:
            self.loss = float(loss)
        rate = self.samples / max(time.perf_counter() - self.start, 1e-9)
        shown = "-" if self.loss is None else f"{self.loss:.4f}"
        self.bar.set_postfix(loss=shown, lr=f"{lr:.2e}", samples_s=f"{rate:.1f}", refresh=False)
        self.bar.update(1)

    def set_loss(self, loss: float) -> None:
        """The loss to show from now on (a host float, e.g. the mean of the last logging interval)."""
        self.loss = float(loss)

    @property
    def samples_per_second(self) -> float:
        return self.samples / max(time.perf_counter() - self.start, 1e-9)

    def close(self) -> None:
        self.bar.close()


@dataclass(frozen=True)
class LossPosition:
    """Where a micro-batch's loss came from: the optimizer step it belongs to, epoch and batch (1-based)."""

    step: int
    epoch: int
    batch: int


class LossWindow:
    """The training losses since the last check, kept on the device so that a step never waits for the GPU.

    :meth:`add` only queues a detached row (the total loss and its named parts; no host read). :meth:`check` stacks
    what is pending, sums it over the processes with ``reduce`` (one collective for the whole interval) and reads it
    on the host once; it returns the first non-finite total with its position, if any, and adds the rest to the
    running sums that :meth:`take_means` hands to the log (means over processes and micro-batches since the last
    log).
    """

    def __init__(self) -> None:
        self._pending: list[torch.Tensor] = []
        self._positions: list[LossPosition] = []
        self._names: tuple[str, ...] | None = None  # the parts' names, fixed by the first add
        self._totals: list[float] = []
        self._count = 0

    def add(self, loss: torch.Tensor, position: LossPosition, parts: dict[str, torch.Tensor] | None = None) -> None:
        parts = parts or {}
        names = tuple(parts)
        if self._names is None:
            self._names = names
        elif names != self._names:
            raise ValueError(f"loss parts changed from {self._names} to {names}")
        row = [loss.detach().float().reshape(())] + [parts[name].detach().float().reshape(()) for name in names]
        self._pending.append(torch.stack(row))
        self._positions.append(position)

    def check(self, reduce: Callable[[torch.Tensor], torch.Tensor],
              world_size: int = 1) -> tuple[float, LossPosition] | None:
        """Read the pending losses (mean over ``world_size`` processes after ``reduce`` sums them); returns the first
        non-finite total and where it came from, else None. Nothing is pending afterwards."""
        if not self._pending:
            return None
        rows = (reduce(torch.stack(self._pending)) / world_size).tolist()
        positions = self._positions
        self._pending, self._positions = [], []
        for row, position in zip(rows, positions):
            if not math.isfinite(row[0]):
                return row[0], position
        sums = [sum(column) for column in zip(*rows)]
        self._totals = sums if not self._totals else [a + b for a, b in zip(self._totals, sums)]
        self._count += len(rows)
        return None

    @property
    def pending(self) -> int:
        return len(self._pending)

    def take_means(self) -> dict[str, float]:
        """Means of the checked losses since the last call: ``loss`` (the total) and each part by its name; empty if
        there were none. Starts a new interval."""
        if self._count == 0:
            return {}
        means = dict(zip(("loss",) + (self._names or ()), (total / self._count for total in self._totals)))
        self._totals, self._count = [], 0
        return means
