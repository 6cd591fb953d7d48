"""Training data order and augmentation randomness that make resuming exact and DDP equal to one process.

* :class:`ResumableSampler` shuffles every epoch from ``seed + epoch`` (also with one process: spec 15.13 fixes
  the reference's unshuffled single-process training), drops the tail so every rank gets the same number of full
  batches (no rank waits for a batch that never comes), hands rank r the indices r, r + W, ... so that the W
  per-rank batches of a step together are exactly the single-process batch of W times the size, and can start in
  the middle of an epoch.
* :class:`SeededDataset` draws each sample's augmentation from a seed derived from (seed, epoch, index) rather
  than from a worker's running RNG, so a sample looks the same whichever rank, worker or resume fetches it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from lgrnet.data.dataset import RECDataset, collate, worker_options
from lgrnet.data.records import Record
from lgrnet.data.transforms import TrainTransform
from lgrnet.errors import DataError


class ResumableSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for this rank; see the module docstring."""

    def __init__(self, dataset_len: int, batch_size: int, world_size: int = 1, rank: int = 0, seed: int = 0):
        global_batch = batch_size * world_size
        if dataset_len < global_batch:
            raise DataError(
                f"the training split has {dataset_len} samples, fewer than one global batch of {global_batch} "
                f"({batch_size} per process x {world_size} processes); lower train.batch_size"
            )
        self.dataset_len, self.batch_size, self.world_size, self.rank, self.seed = (
            dataset_len, batch_size, world_size, rank, seed)
        self.usable = dataset_len // global_batch * global_batch
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        return self.usable // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Next iteration covers ``epoch`` starting after ``start_batch`` of this rank's batches."""
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.dataset_len, generator=generator)[: self.usable]
        mine = order[self.rank:: self.world_size].tolist()
        for index in mine[self.start_batch * self.batch_size:]:
            yield self.epoch, index

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class SeededDataset(Dataset):
    """Wraps a dataset so that item ``(epoch, index)`` is produced under RNGs seeded from (seed, epoch, index).

    The caller's python/numpy/torch-CPU RNG states are restored afterwards, so loading in the main process
    (``num_workers=0``) does not disturb the model's dropout stream.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        item_seed = hash((self.seed, epoch, index)) % (2**63 - 1)  # ints hash deterministically
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(item_seed)
            np.random.seed(item_seed % 2**32)
            torch.default_generator.manual_seed(item_seed)
            return self.dataset[index]
        finally:
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


def build_train_loader(records: Sequence[Record], config: Any, tokenizer: Any, world_size: int,
                       rank: int) -> DataLoader:
    """The training DataLoader (full train transform, resumable sampler, full batches only); call
    ``loader.sampler.set_epoch(e, start)`` before each epoch. (Evaluation batches come from
    :func:`lgrnet.data.dataset.build_eval_loader`.)"""
    text = config.model.text
    transform = TrainTransform(config.model.image_size, config.data.augment, config.data.spatial_match)
    dataset = RECDataset(records, transform, tokenizer, text.max_length, text.lowercase)
    sampler = ResumableSampler(len(dataset), config.train.batch_size, world_size, rank, config.train.seed)
    return DataLoader(
        SeededDataset(dataset, config.train.seed),
        batch_size=config.train.batch_size,
        sampler=sampler,
        collate_fn=collate,
        drop_last=True,
        # Own generator: creating an iterator must not consume the global RNG (exact mid-epoch resume).
        generator=torch.Generator().manual_seed(config.train.seed),
        **worker_options(config.data),
    )
