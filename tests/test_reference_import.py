"""Importing a reference-implementation checkpoint (spec section 13) into LGRNet.

The reference-layout state dicts are generated from the spec's key names and shapes (not from our model's keys),
once at tiny sizes with random tensors and once at the real sizes on the meta device.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from model_helpers import make_inputs
from tiny_configs import tiny_twin

from lgrnet.config import load_config
from lgrnet.errors import CheckpointError
from lgrnet.model.checkpoints import import_reference_checkpoint, reference_key
from lgrnet.model.lgrnet import LGRNet


@dataclass
class RefSizes:
    embed: int = 96
    depths: tuple[int, ...] = (2, 2, 18, 2)
    heads: tuple[int, ...] = (3, 6, 12, 24)
    window: int = 7
    rank: int = 30
    reduction: int = 16
    neck: int = 256
    text: int = 768
    text_layers: int = 12
    text_ffn: int = 3072
    vocab: int = 30522
    text_positions: int = 512
    d: int = 256
    ffn: int = 2048
    layers: int = 6
    visual_tokens: int = 500
    pred: int = 1
    max_len: int = 40


def reference_shapes(s: RefSizes) -> dict[str, tuple[int, ...]]:
    """Every key of the reference ``model`` state dict with its shape, written from spec section 13."""
    out: dict[str, tuple[int, ...]] = {}

    def linear(name, o, i, bias=True):
        out[f"{name}.weight"] = (o, i)
        if bias:
            out[f"{name}.bias"] = (o,)

    def norm(name, c):
        out[f"{name}.weight"] = (c,)
        out[f"{name}.bias"] = (c,)

    def qda(prefix, c):
        hidden = c // s.reduction
        linear(f"{prefix}.qdatt.ChannelGate.mlp.0.decoder.decoder", (c + 1) * s.rank, s.text)
        out[f"{prefix}.qdatt.ChannelGate.mlp.0.decoder.V"] = (s.rank, hidden)
        linear(f"{prefix}.qdatt.ChannelGate.mlp.2.decoder.decoder", (hidden + 1) * s.rank, s.text)
        out[f"{prefix}.qdatt.ChannelGate.mlp.2.decoder.V"] = (s.rank, c)
        linear(f"{prefix}.qdatt.SpatialGate.spatial.decoder.decoder", (c + 1) * s.rank, s.text)
        out[f"{prefix}.qdatt.SpatialGate.spatial.decoder.V"] = (s.rank, 1)

    bb = "visumodel.backbone"
    out[f"{bb}.patch_embed.proj.weight"] = (s.embed, 3, 4, 4)
    out[f"{bb}.patch_embed.proj.bias"] = (s.embed,)
    norm(f"{bb}.patch_embed.norm", s.embed)
    channels = [s.embed * 2**i for i in range(4)]
    for st, (c, depth, heads) in enumerate(zip(channels, s.depths, s.heads)):
        for b in range(depth):
            p = f"{bb}.layers.{st}.blocks.{b}"
            norm(f"{p}.norm1", c)
            out[f"{p}.attn.relative_position_bias_table"] = ((2 * s.window - 1) ** 2, heads)
            out[f"{p}.attn.relative_position_index"] = (s.window**2, s.window**2)
            linear(f"{p}.attn.qkv", 3 * c, c)
            linear(f"{p}.attn.proj", c, c)
            norm(f"{p}.norm2", c)
            linear(f"{p}.mlp.fc1", 4 * c, c)
            linear(f"{p}.mlp.fc2", c, 4 * c)
        if st < 3:
            norm(f"{bb}.layers.{st}.downsample.norm", 4 * c)
            linear(f"{bb}.layers.{st}.downsample.reduction", 2 * c, 4 * c, bias=False)
        qda(f"{bb}.layers.{st}", c)
        norm(f"{bb}.norm{st}", c)
    for i, c in enumerate(channels):
        out[f"visumodel.neck.lateral_convs.{i}.conv.weight"] = (s.neck, c, 1, 1)
        out[f"visumodel.neck.lateral_convs.{i}.conv.bias"] = (s.neck,)
    for i in range(3):
        qda(f"visumodel.neck.fpn_down.{i}", s.neck)
    for name, o, k in (("rpn_conv", s.neck, 3), ("rpn_cls", 3, 1), ("rpn_reg", 12, 1)):
        out[f"visumodel.rpn_head.{name}.weight"] = (o, s.neck, k, k)
        out[f"visumodel.rpn_head.{name}.bias"] = (o,)

    t = "textmodel.bert"
    out[f"{t}.embeddings.word_embeddings.weight"] = (s.vocab, s.text)
    out[f"{t}.embeddings.position_embeddings.weight"] = (s.text_positions, s.text)
    out[f"{t}.embeddings.token_type_embeddings.weight"] = (2, s.text)
    norm(f"{t}.embeddings.LayerNorm", s.text)
    for i in range(s.text_layers):
        p = f"{t}.encoder.layer.{i}"
        for n in ("query", "key", "value"):
            linear(f"{p}.attention.self.{n}", s.text, s.text)
        linear(f"{p}.attention.output.dense", s.text, s.text)
        norm(f"{p}.attention.output.LayerNorm", s.text)
        linear(f"{p}.intermediate.dense", s.text_ffn, s.text)
        linear(f"{p}.output.dense", s.text, s.text_ffn)
        norm(f"{p}.output.LayerNorm", s.text)
    linear(f"{t}.pooler.dense", s.text, s.text)

    v = "vl_transformer_decoder"
    out[f"{v}.text_query_embed.weight"] = (s.max_len, s.d)
    dec = f"{v}.transformer.decoder"
    for i in range(s.layers):
        p = f"{dec}.layers.{i}"
        out[f"{p}.self_attn.in_proj_weight"] = (3 * s.d, s.d)
        out[f"{p}.self_attn.in_proj_bias"] = (3 * s.d,)
        linear(f"{p}.self_attn.out_proj", s.d, s.d)
        linear(f"{p}.cross_attn.out_proj", s.d, s.d)
        linear(f"{p}.linear1", s.ffn, s.d)
        linear(f"{p}.linear2", s.d, s.ffn)
        for n in ("norm1", "norm2", "norm3"):
            norm(f"{p}.{n}", s.d)
    norm(f"{dec}.norm", s.d)
    linear(f"{dec}.query_scale.layers.0", s.d, s.d)
    linear(f"{dec}.query_scale.layers.1", s.d, s.d)
    linear(f"{dec}.coordinate_head.layers.0", s.d, s.d)
    linear(f"{dec}.coordinate_head.layers.1", 2, s.d)
    linear("prediction.layers.0", s.d, s.d)
    linear("prediction.layers.1", s.d, s.d)
    linear("prediction.layers.2", 4, s.d)
    linear("class_proj", s.d, s.d)
    linear("bertcls_proj", s.d, s.text)
    out["logit_scale"] = ()
    out["visu_pos_embed.weight"] = (s.visual_tokens + s.pred, s.d)
    linear("text_proj", s.d, s.text)
    linear("visu_proj", s.d, s.neck)
    return out


TINY = RefSizes(embed=16, depths=(1, 1, 2, 1), heads=(1, 2, 2, 4), rank=4, reduction=4, neck=32, text=32,
                text_layers=4, text_ffn=64, vocab=30522, text_positions=64, d=32, ffn=64, layers=2,
                visual_tokens=16 + 4)


def random_reference_state(sizes: RefSizes, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in reference_shapes(sizes).items():
        if key.endswith("relative_position_index"):
            state[key] = torch.randint(0, (2 * sizes.window - 1) ** 2, shape, generator=g)
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def tiny_model(seed: int) -> tuple[LGRNet, object]:
    cfg = tiny_twin("lgrnet-swin-s")
    torch.manual_seed(seed)
    return LGRNet(cfg.model, cfg.loss).eval(), cfg


def test_full_size_reference_layout_covers_every_parameter():
    shapes = reference_shapes(RefSizes())
    params = sum(torch.Size(s).numel() for k, s in shapes.items() if not k.endswith("relative_position_index"))
    assert params == 274_183_360  # the spec's (and the paper's) count, dead modules included
    cfg = load_config("lgrnet-swin-s", ["model.text.pretrained=false"])
    with torch.device("meta"):
        model = LGRNet(cfg.model, cfg.loss)
    own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = {}
    for key, shape in shapes.items():
        target = reference_key(key)
        if target is not None:
            assert own[target] == shape, key
            mapped[target] = key
    assert set(mapped) == {n for n, _ in model.named_parameters()}
    dropped = {k for k in shapes if reference_key(k) is None}
    dropped_params = sum(torch.Size(shapes[k]).numel() for k in dropped if not k.endswith("relative_position_index"))
    assert dropped_params == 593_935 + 131_584 + 590_592  # rpn_head, query_scale, BERT pooler


def test_tiny_reference_state_imports_completely_and_exactly():
    state = random_reference_state(TINY)
    model, _ = tiny_model(seed=1)
    report = import_reference_checkpoint(model, state)
    assert report.ok, report.summary()
    assert report.missing == [] and report.unexpected == []
    assert {k for k in state if "rpn_head" in k or "query_scale" in k or "pooler" in k} <= set(report.ignored)
    own = model.state_dict()
    for key, value in state.items():
        target = reference_key(key)
        if target is not None:
            assert torch.equal(own[target], value), key
    # Semantic spot checks of the renames: Swin patch merging moves to the next timm stage, heads and tables.
    assert torch.equal(own["visual.backbone.layers.1.downsample.reduction.weight"],
                       state["visumodel.backbone.layers.0.downsample.reduction.weight"])
    assert torch.equal(own["text_pos.weight"], state["vl_transformer_decoder.text_query_embed.weight"])
    assert torch.equal(own["criterion.logit_scale"], state["logit_scale"])


def test_imported_models_compute_the_same_outputs():
    state = random_reference_state(TINY, seed=5)
    a, cfg = tiny_model(seed=1)
    b, _ = tiny_model(seed=2)
    inputs = make_inputs(cfg.model)
    with torch.no_grad():
        before = a(**inputs).layer_boxes
        import_reference_checkpoint(a, state)
        import_reference_checkpoint(b, {f"module.{k}": v for k, v in state.items()})  # DDP prefix stripped
        out_a, out_b = a(**inputs), b(**inputs)
    assert not torch.equal(before, out_a.layer_boxes)
    assert torch.equal(out_a.layer_boxes, out_b.layer_boxes)
    assert torch.equal(out_a.loss, out_b.loss)


def test_import_from_file_and_reports(tmp_path):
    state = random_reference_state(TINY)
    state["some.unknown.weight"] = torch.zeros(2)
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": state, "epoch": 3}, path)
    model, _ = tiny_model(seed=0)
    report = import_reference_checkpoint(model, path)
    assert report.unexpected == ["some.unknown.weight"]
    assert not report.ok and "UNEXPECTED 1" in report.summary()
    del state["some.unknown.weight"], state["prediction.layers.2.bias"]
    report = import_reference_checkpoint(model, state)
    assert report.missing == ["head.layers.2.bias"]


def test_shape_mismatch_and_foreign_files_are_errors():
    state = random_reference_state(TINY)
    state["visu_proj.weight"] = torch.zeros(5, 5)
    model, _ = tiny_model(seed=0)
    with pytest.raises(CheckpointError, match="visu_proj.weight has shape"):
        import_reference_checkpoint(model, state)
    with pytest.raises(CheckpointError, match="no key matches"):
        import_reference_checkpoint(model, {"foo.weight": torch.zeros(1)})
