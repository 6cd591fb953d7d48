"""Training logs written by rank 0 only (spec section 15.14: the reference let every rank write): a JSONL metrics
log, optional TensorBoard scalars, and a tqdm progress bar with loss, lr, samples/s and ETA."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

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


class Progress:
    """Per-epoch progress bar (rank 0): tqdm shows the ETA; the postfix shows loss, lr and samples/s."""

    def __init__(self, total: int, epoch: int, epochs: int, enabled: bool, initial: int = 0) -> None:
        self.bar = tqdm(total=total, initial=initial, desc=f"epoch {epoch + 1}/{epochs}", disable=not enabled,
                        dynamic_ncols=True, file=sys.stderr, leave=False)
        self.start = time.perf_counter()
        self.samples = 0

    def update(self, samples: int, loss: float, lr: float) -> None:
        self.samples += samples
        rate = self.samples / max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}", refresh=False)
        self.bar.update(1)

    @property
    def samples_per_second(self) -> float:
        return self.samples / max(time.perf_counter() - self.start, 1e-9)

    def close(self) -> None:
        self.bar.close()
