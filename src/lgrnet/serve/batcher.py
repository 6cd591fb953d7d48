"""Dynamic batching: (image, expression) pairs from concurrent requests share one forward pass.

Requests hand their pairs to :meth:`Batcher.predict` (a coroutine) and wait; one worker thread takes the first
waiting pair, gathers more for at most ``max_wait_ms`` (or until ``max_batch`` are there) and runs them through
:meth:`Predictor.predict_many` as one batch (one per score threshold, when requests asked for different ones).
The forward pass runs off the event loop, so the server keeps accepting and answering requests meanwhile, and
pairs that arrive during a forward pass form the next batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from lgrnet.errors import LGRNetError
from lgrnet.inference.predictor import Prediction, Predictor


class Overloaded(LGRNetError):
    """More pairs are waiting than the server takes (:attr:`ServerLimits.max_pending`)."""


@dataclass
class BatchStats:
    """Counters since the server started."""

    forwards: int = 0  # forward passes run
    pairs: int = 0  # (image, expression) pairs predicted
    largest_batch: int = 0

    @property
    def mean_batch_size(self) -> float:
        return self.pairs / self.forwards if self.forwards else 0.0


@dataclass
class _Pair:
    image: Image.Image
    expression: str
    future: concurrent.futures.Future
    threshold: float | None = None  # None: the predictor's own


_STOP = object()


class Batcher:
    """Groups pairs from concurrent callers into forward passes of up to ``max_batch`` on one worker thread."""

    def __init__(self, predictor: Predictor, max_batch: int = 16, max_wait_ms: float = 5.0,
                 max_pending: int = 256) -> None:
        self.predictor = predictor
        self.max_batch = int(max_batch)
        self.max_wait_s = float(max_wait_ms) / 1000.0
        self.max_pending = int(max_pending)
        self.stats = BatchStats()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Pairs submitted and not yet answered."""
        return self._pending

    def start(self) -> None:
        """Start the worker thread (once; submitting starts it too)."""
        with self._lock:
            if self._closed:
                raise LGRNetError("the batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="lgrnet-batcher", daemon=True)
                self._thread.start()

    def close(self, timeout: float | None = 30.0) -> None:
        """Finish the pairs already submitted, then stop the worker thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def submit(self, pairs: Sequence[tuple[Image.Image, str]],
               threshold: float | None = None) -> list[concurrent.futures.Future]:
        """Queue pairs, to be answered at score ``threshold`` (None: the predictor's own; check it first with
        :meth:`Predictor.call_threshold`); each future gets a :class:`Prediction` or the pair's
        :class:`LGRNetError`. :class:`Overloaded` when the queue is full (nothing is queued then)."""
        self.start()
        with self._lock:
            if self._pending + len(pairs) > self.max_pending:
                raise Overloaded(f"the server is busy ({self._pending} expressions waiting); try again shortly")
            self._pending += len(pairs)
        futures = []
        for image, expression in pairs:
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.add_done_callback(self._done)
            futures.append(future)
            self._queue.put(_Pair(image, expression, future, threshold))
        return futures

    async def predict(self, pairs: Sequence[tuple[Image.Image, str]],
                      threshold: float | None = None) -> list[Prediction | LGRNetError]:
        """Predict pairs in the batches of the worker thread, without blocking the event loop."""
        futures = self.submit(pairs, threshold)
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def _done(self, _future: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending -= 1

    def _work(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            batch = [first]
            deadline = time.monotonic() + self.max_wait_s
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:  # pairs already waiting are taken at once; otherwise wait until the deadline
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                batch.append(item)
            self._run(batch)
        # A pair submitted while the batcher was closing gets an answer rather than a wait forever.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(LGRNetError("the server is shutting down"))

    def _run(self, batch: list[_Pair]) -> None:
        live = [pair for pair in batch if pair.future.set_running_or_notify_cancel()]
        by_threshold: dict[float | None, list[_Pair]] = {}
        for pair in live:  # the threshold picks the boxes after the forward pass: one pass per threshold asked
            by_threshold.setdefault(pair.threshold, []).append(pair)
        for threshold, group in by_threshold.items():
            self._forward(group, threshold)

    def _forward(self, group: list[_Pair], threshold: float | None) -> None:
        try:
            results = self.predictor.predict_many([(p.image, p.expression) for p in group], batch_size=len(group),
                                                  threshold=threshold)
        except Exception as exc:  # the model itself failed: every caller of this batch hears of it
            for pair in group:
                pair.future.set_exception(exc)
            return
        self.stats.forwards += 1
        self.stats.pairs += len(group)
        self.stats.largest_batch = max(self.stats.largest_batch, len(group))
        for pair, result in zip(group, results):
            pair.future.set_result(result)
