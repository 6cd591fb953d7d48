"""Textual Feature Extender: the 2-D sine embedding against a direct formula, coordinate and sentence outputs."""

from __future__ import annotations

import math

import pytest
import torch

from lgrnet.model.tfe import TextualFeatureExtender, sine_embedding


def direct_sine(x: float, y: float, dim: int) -> list[float]:
    """Spec section 4 written out: per axis k < dim/4, w_k = 2*pi / 10000^(2k/(dim/2)); [sin, cos] pairs; y first."""
    def axis(c: float) -> list[float]:
        values = []
        for k in range(dim // 4):
            w = 2 * math.pi / 10000 ** (2 * k / (dim // 2))
            values += [math.sin(c * w), math.cos(c * w)]
        return values
    return axis(y) + axis(x)


@pytest.mark.parametrize("dim", [256, 32])
def test_sine_embedding_matches_direct_formula(dim):
    coords = torch.tensor([[0.0, 0.0], [0.25, 0.75], [1.0, 0.5], [0.13, 0.91]], dtype=torch.float64)
    emb = sine_embedding(coords, dim)
    assert emb.shape == (4, dim)
    expected = torch.tensor([direct_sine(x, y, dim) for x, y in coords.tolist()], dtype=torch.float64)
    assert torch.allclose(emb, expected, atol=1e-5)


def test_sine_embedding_y_first_then_x():
    a = sine_embedding(torch.tensor([[0.2, 0.7]]), 256)
    b = sine_embedding(torch.tensor([[0.9, 0.7]]), 256)
    assert torch.equal(a[:, :128], b[:, :128]) and not torch.equal(a[:, 128:], b[:, 128:])
    assert a[0, 128] == pytest.approx(math.sin(0.2 * 2 * math.pi))  # first x channel: sin(x * 2 pi)
    assert a[0, 129] == pytest.approx(math.cos(0.2 * 2 * math.pi))


def test_sine_embedding_needs_multiple_of_four():
    with pytest.raises(ValueError, match="multiple of 4"):
        sine_embedding(torch.zeros(1, 2), 30)


def test_tfe_outputs_and_reference_sizes():
    tfe = TextualFeatureExtender(text_dim=768, hidden_dim=256)
    assert sum(p.numel() for p in tfe.coordinate_head.parameters()) == 66_306
    assert sum(p.numel() for p in tfe.text_proj.parameters()) == 196_864
    assert sum(p.numel() for p in tfe.sentence_proj.parameters()) == 196_864
    tokens = torch.randn(3, 40, 768)
    words = tfe.word_embeddings(tokens)
    coord = tfe.coordinate(words[:, 0])
    assert words.shape == (3, 40, 256) and coord.shape == (3, 2)
    assert ((coord > 0) & (coord < 1)).all()
    assert torch.equal(tfe.coordinate_embedding(coord), sine_embedding(coord, 256))
    sentence = tfe.sentence_embedding(tokens[:, 0])
    assert torch.allclose(sentence.norm(dim=-1), torch.ones(3), atol=1e-5)


def test_optional_parts():
    tfe = TextualFeatureExtender(text_dim=64, hidden_dim=32, proj_layers=2, coordinate=False, sentence=False)
    assert tfe.coordinate_head is None and tfe.sentence_proj is None
    assert len(tfe.text_proj.layers) == 2
    with pytest.raises(RuntimeError, match="coord_embed='none'"):
        tfe.coordinate(torch.zeros(1, 32))


def test_sine_position_init_lets_the_coordinate_query_find_its_cell():
    """model.visual_pos_init=sine: the visual rows of the position table are the sine embedding of the cell
    centres, so the prediction token's TCA query (the sine embedding of its predicted point) has its largest dot
    product with the key of the cell holding that point, in every map; "normal" keeps N(0, 1) rows."""
    from tiny_configs import tiny_twin

    from lgrnet.model.lgrnet import LGRNet, grid_sine_embedding

    config = tiny_twin("lgrnet-swin-s").model
    config.image_size, config.visual_pos_init = 128, "sine"
    torch.manual_seed(0)
    model = LGRNet(config)
    shapes, d = model.token_shapes, config.hidden_dim
    table = model.visual_pos.weight.detach()
    torch.testing.assert_close(table[config.num_pred_tokens:], grid_sine_embedding(shapes, d))
    offset = config.num_pred_tokens
    for h, w in shapes:
        rows = table[offset:offset + h * w]
        for i, j in [(0, 0), (h - 1, w - 1), (h // 2, 1)]:
            point = torch.tensor([(j + 0.3) / w, (i + 0.6) / h])
            assert int((rows @ sine_embedding(point, d)).argmax()) == i * w + j
        offset += h * w
    config.visual_pos_init = "normal"
    torch.manual_seed(0)
    normal = LGRNet(config).visual_pos.weight.detach()
    assert abs(float(normal.std()) - 1.0) < 0.1
