"""Shared test fixtures: the path of the real test data beside the checkout."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def one_thread():
    """Tests that train use one intra-op thread (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    from model_helpers import one_intraop_thread

    with one_intraop_thread():
        yield


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"real test data not found at {SHARED_DATA}: CI lays ../shared beside the checkout")
    return SHARED_DATA


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly initialised tiny model folder (random weights) for the inference tests of one module."""
    from inference_helpers import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def predictor(checkpoint: Path):
    from lgrnet.inference.predictor import Predictor

    return Predictor.from_pretrained(checkpoint, device="cpu")
