"""Dataset, tokenisation, collation into :class:`~lgrnet.data.batch.Batch`, samplers and the DataLoader.

Tokenisation (spec 2, dataset side): optional lower-casing, the text encoder's tokenizer with ``[CLS] ... [SEP]``,
truncation to ``max_length`` *including* the special tokens, padding to ``max_length``, attention mask 1 = real.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from lgrnet.data.batch import Batch, SampleMeta
from lgrnet.data.image import load_image
from lgrnet.data.records import Record
from lgrnet.data.transforms import EvalTransform


def tokenize(tokenizer: Any, expression: str, max_length: int, lowercase: bool = True) -> tuple[list[int], list[int]]:
    """Token ids and attention mask of one expression, both exactly ``max_length`` long."""
    text = expression.lower() if lowercase else expression
    enc = tokenizer(text, max_length=max_length, truncation=True, padding="max_length")
    return list(enc["input_ids"]), list(enc["attention_mask"])


@dataclass
class Item:
    """One transformed, tokenised sample (what ``RECDataset.__getitem__`` returns and ``collate`` stacks)."""

    image: torch.Tensor
    mask: torch.Tensor
    box: torch.Tensor | None  # None for a no-target record
    input_ids: list[int]
    attention_mask: list[int]
    meta: SampleMeta
    boxes: torch.Tensor | None = None  # [N, 4] the target set of a generalized record; None for a classic one


class RECDataset(Dataset):
    """Records -> :class:`Item` (image decoded and transformed, expression tokenised)."""

    def __init__(self, records: Sequence[Record], transform: Any, tokenizer: Any, max_length: int = 40,
                 lowercase: bool = True):
        self.records = list(records)
        self.transform = transform
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.lowercase = lowercase

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Item:
        record = self.records[index]
        image = load_image(record.image, record_id=record.id)
        if record.boxes is None:
            sample = self.transform(image, record.expression, record.box)
        else:
            sample = self.transform(image, record.expression, boxes=record.boxes)
        ids, attn = tokenize(self.tokenizer, sample.expression, self.max_length, self.lowercase)
        meta = SampleMeta(
            id=record.id,
            expression=sample.expression,
            image=record.image,
            original_size=sample.original_size,
            scale=sample.scale,
            offset=sample.offset,
            canvas_size=sample.canvas_size,
            original_box=tuple(record.box),
            original_boxes=record.boxes,
        )
        return Item(sample.image, sample.mask, sample.box, ids, attn, meta, sample.boxes)


def collate(items: Sequence[Item]) -> Batch:
    """Stack items into a :class:`Batch` (spec 11.5): images [B,3,S,S], masks [B,S,S], ids/mask [B,L] int64,
    boxes [B,4]; when an item has a target set, also the padded sets [B,T,4] and their validity [B,T]."""
    target_boxes = target_valid = None
    if any(it.boxes is not None for it in items):
        sets = [it.boxes if it.boxes is not None else it.box[None] for it in items]
        target_boxes = torch.zeros(len(items), max(1, max(len(s) for s in sets)), 4)
        target_valid = torch.zeros(target_boxes.shape[:2], dtype=torch.bool)
        for i, boxes in enumerate(sets):
            target_boxes[i, : len(boxes)] = boxes
            target_valid[i, : len(boxes)] = True
    return Batch(
        images=torch.stack([it.image for it in items]),
        image_mask=torch.stack([it.mask for it in items]),
        input_ids=torch.tensor([it.input_ids for it in items], dtype=torch.int64),
        attention_mask=torch.tensor([it.attention_mask for it in items], dtype=torch.int64),
        boxes=torch.stack([it.box if it.box is not None else torch.zeros(4) for it in items]).float(),
        meta=[it.meta for it in items],
        target_boxes=target_boxes,
        target_valid=target_valid,
    )


class EvalDistributedSampler(Sampler[int]):
    """Gives every index to exactly one rank (rank r gets r, r + W, r + 2W, ...): no padding, no duplicates.

    Ranks may get lengths differing by one; metrics must be summed (hits, counts) across ranks, not averaged.
    """

    def __init__(self, dataset_len: int, num_replicas: int | None = None, rank: int | None = None):
        if num_replicas is None:
            num_replicas = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.dataset_len, self.num_replicas, self.rank = dataset_len, num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.dataset_len, self.num_replicas))

    def __len__(self) -> int:
        return max(0, math.ceil((self.dataset_len - self.rank) / self.num_replicas))

    def set_epoch(self, epoch: int) -> None:  # same interface as DistributedSampler; order is fixed
        pass


def build_eval_loader(
    records: Sequence[Record],
    config: Any,  # lgrnet.config.Config
    tokenizer: Any,
    batch_size: int | None = None,
    distributed: bool | None = None,
) -> DataLoader:
    """Evaluation DataLoader over ``records``: the eval transform of ``config``, records in order, every batch kept.

    ``distributed=None`` means "when torch.distributed is initialised"; then :class:`EvalDistributedSampler`
    gives each sample to exactly one rank. ``batch_size`` defaults to ``config.train.batch_size``. (Training
    batches come from :func:`lgrnet.engine.data.build_train_loader`.)
    """
    text = config.model.text
    dataset = RECDataset(records, EvalTransform(config.model.image_size), tokenizer, text.max_length, text.lowercase)
    if distributed is None:
        distributed = dist.is_available() and dist.is_initialized()
    sampler: Sampler[int] = EvalDistributedSampler(len(dataset)) if distributed else SequentialSampler(dataset)
    return DataLoader(dataset, batch_size=batch_size or config.train.batch_size, sampler=sampler, collate_fn=collate,
                      **worker_options(config.data))


def worker_options(data: Any) -> dict[str, Any]:
    """The DataLoader settings ``config.data`` decides, the same for training and evaluation: worker processes,
    pinned memory (on CUDA), persistent workers and prefetching."""
    workers = max(0, int(data.num_workers))
    if workers > 0:  # a Rust tokenizer used before fork would otherwise warn (and may deadlock) in workers
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return {
        "num_workers": workers,
        "pin_memory": bool(data.pin_memory) and torch.cuda.is_available(),
        "persistent_workers": bool(data.persistent_workers) and workers > 0,
        "prefetch_factor": data.prefetch_factor if workers > 0 else None,
    }
