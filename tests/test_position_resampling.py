"""Fine-tuning at another image size: the learned visual position table is resampled map by map."""

from __future__ import annotations

import pytest
import torch

from lgrnet.errors import CheckpointError
from lgrnet.model.io import resample_visual_positions
from lgrnet.model.losses import token_centres


def _table(shapes: list[tuple[int, int]], num_pred: int = 1) -> torch.Tensor:
    """Rows: num_pred prediction rows of 7s, then per map (row-major) the token's (x, y) centre in [0, 1]."""
    return torch.cat((torch.full((num_pred, 2), 7.0), token_centres(shapes)))


def test_the_same_shapes_give_the_same_table():
    table = _table([(8, 8), (4, 4)])
    assert torch.allclose(resample_visual_positions(table, [(8, 8), (4, 4)], len(table)), table)


def test_a_larger_grid_keeps_the_prediction_rows_and_each_maps_layout():
    old = _table([(8, 8), (4, 4)], num_pred=2)
    new = resample_visual_positions(old, [(10, 10), (5, 5)], 2 + 100 + 25)
    assert new.shape == (127, 2)
    assert torch.equal(new[:2], old[:2])
    first = new[2:102].view(10, 10, 2)
    # Each map is interpolated on its own: x grows along rows, y down columns, and both stay inside [0, 1].
    assert (first[:, 1:, 0] > first[:, :-1, 0]).all() and (first[1:, :, 1] > first[:-1, :, 1]).all()
    assert first.min() >= 0 and first.max() <= 1
    second = new[102:].view(5, 5, 2)
    assert (second[:, 1:, 0] > second[:, :-1, 0]).all()
    assert second[2, 2].tolist() == pytest.approx([0.5, 0.5], abs=0.02)  # the centre stays the centre


def test_a_table_of_no_image_size_is_a_one_line_error():
    with pytest.raises(CheckpointError, match="visual_pos.weight has 50 rows"):
        resample_visual_positions(torch.zeros(50, 4), [(10, 10), (5, 5)], 126)
