"""The bad-input corpus (tests/inference_helpers.make_bad_inputs) through the Python API, the command line and the
demo's request handler: each case gives a prediction inside the image or a clear one-line error, never a crash."""

from __future__ import annotations

import json

import numpy as np
import pytest
from inference_helpers import CORPUS_NAMES, EXPRESSIONS, make_bad_inputs

from lgrnet.cli import main
from lgrnet.demo.app import DemoHandler
from lgrnet.errors import DataError
from lgrnet.inference.predictor import Prediction

NAMES = CORPUS_NAMES


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return {c.name: c for c in make_bad_inputs(tmp_path_factory.mktemp("bad_inputs"))}


def test_corpus_is_complete(corpus):
    assert sorted(corpus) == sorted(NAMES)
    assert sum(not c.ok for c in corpus.values()) == 7 and sum(c.ok for c in corpus.values()) == 10


def _inside(p: Prediction, size: tuple[int, int]) -> None:
    assert p.image_size == size
    x1, y1, x2, y2 = p.box_xyxy
    assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1]
    assert np.isfinite(p.box_xyxy).all() and all(0 <= v <= 1 for v in p.coord)


@pytest.mark.parametrize("name", NAMES)
def test_api_image_corpus(predictor, corpus, name):
    case = corpus[name]
    if case.ok:
        p = predictor.predict(case.path, "the yellow square", attention=True)
        _inside(p, case.size)
        # Attention maps survive degenerate shapes (1 x 1, 4000 x 2) too.
        assert p.attention_map().shape == (case.size[1], case.size[0])
    else:
        with pytest.raises(DataError) as info:
            predictor.predict(case.path, "the yellow square")
        message = str(info.value)
        assert case.name in message and case.error in message and "\n" not in message


@pytest.mark.parametrize("index", range(len(EXPRESSIONS)))
def test_api_expressions(predictor, corpus, index):
    text, ok = EXPRESSIONS[index]
    image = corpus["rgb.png"]
    if ok:
        p = predictor.predict(image.path, text)
        _inside(p, image.size)
        assert p.expression_truncated == (len(text) > 1000)
    else:
        with pytest.raises(DataError, match="expression"):
            predictor.predict(image.path, text)


def test_api_other_inputs(predictor):
    with pytest.raises(DataError, match="expression: missing"):
        predictor.predict(np.zeros((8, 8, 3), np.uint8), None)
    with pytest.raises(DataError, match="expected a string"):
        predictor.predict(np.zeros((8, 8, 3), np.uint8), [42])  # type: ignore[list-item]
    with pytest.raises(DataError, match="characters"):
        predictor.predict(np.zeros((8, 8, 3), np.uint8), "x" * 10_001)
    with pytest.raises(DataError, match="shape"):
        predictor.predict(np.zeros((8, 8, 5), np.uint8), "a")
    with pytest.raises(DataError, match="empty"):
        predictor.predict(np.zeros((0, 8, 3), np.uint8), "a")
    with pytest.raises(DataError, match="NaN"):
        predictor.predict(np.full((8, 8), np.nan, np.float32), "a")
    with pytest.raises(DataError, match="expected a file path"):
        predictor.predict(12345, "a")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="no such file"):
        predictor.predict("/nonexistent/picture.jpg", "a")
    _inside(predictor.predict(np.full((8, 8), 60000, np.uint16), "a"), (8, 8))


@pytest.mark.parametrize("name", ["truncated.jpg", "text.jpg", "bomb.png", "cmyk.jpg", "exif_rotated.jpg",
                                  "elongated.png"])
def test_cli_image_corpus(checkpoint, corpus, capsys, name):
    case = corpus[name]
    code = main(["predict", "--checkpoint", str(checkpoint), "--image", str(case.path), "--text", "the square",
                 "--json"])
    out, err = capsys.readouterr()
    if case.ok:
        assert code == 0, err
        record = json.loads(out)
        x1, y1, x2, y2 = record["box_xyxy"]
        assert 0 <= x1 <= x2 <= case.size[0] and 0 <= y1 <= y2 <= case.size[1]
        assert len(record["coord"]) == 2
    else:
        assert code == 2 and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("lgrnet predict: error:") and name in lines[0]


@pytest.mark.parametrize("text", ["", "   ", "\u200b"])
def test_cli_bad_expression(checkpoint, corpus, capsys, text):
    code = main(["predict", "--checkpoint", str(checkpoint), "--image", str(corpus["rgb.png"].path), "--text", text])
    _, err = capsys.readouterr()
    assert code == 2 and len(err.strip().splitlines()) == 1 and "expression" in err


@pytest.mark.parametrize("name", NAMES)
def test_demo_handler_image_corpus(predictor, corpus, name):
    case = corpus[name]
    result = DemoHandler(predictor)(str(case.path), "the yellow square")
    if case.ok:
        assert result.overlay is not None and result.attention is not None
        assert result.overlay.size[0] == case.size[0]  # overlay = the image (+ caption band below)
        assert "box_xyxy" in result.result and result.message.startswith("box")
    else:
        assert result.overlay is None and result.attention is None
        assert name in result.result["error"] and result.message.startswith("Error:")


@pytest.mark.parametrize("index", range(len(EXPRESSIONS)))
def test_demo_handler_expressions(predictor, corpus, index):
    text, ok = EXPRESSIONS[index]
    result = DemoHandler(predictor, max_chars=200)(str(corpus["rgb.png"].path), text)
    if ok and len(text) <= 200:
        assert "box_xyxy" in result.result, result.message
    else:
        assert "error" in result.result and result.overlay is None
        if len(text) > 200:
            assert "at most 200" in result.message


def test_demo_handler_survives_unexpected_errors(corpus):
    class Exploding:
        max_length = 40

        def predict(self, *args, **kwargs):
            raise RuntimeError("boom")

    handler = DemoHandler(Exploding())
    result = handler(str(corpus["rgb.png"].path), "the square")
    assert "internal error" in result.message and result.overlay is None
    assert "upload an image" in handler(None, "x").message
    big = DemoHandler(Exploding(), max_pixels=100)(str(corpus["rgb.png"].path), "the square")
    assert "pixels" in big.message


def test_demo_handler_layer_choice(predictor, corpus):
    handler = DemoHandler(predictor)
    path = str(corpus["rgb.png"].path)
    one, both = handler(path, "the square", [2]), handler(path, "the square", [1, 2])
    everything, nonsense = handler(path, "the square", None), handler(path, "the square", [7])
    assert one.attention.width < both.attention.width == everything.attention.width == nonsense.attention.width


def test_demo_page_states_the_limits_it_enforces(corpus):
    """The page tells the user both upload limits (10 MB and 40 Mpx) and the expression limit, and the handler
    enforces the stated pixel limit (a smaller cap given to the page is the one stated and enforced)."""
    from lgrnet.demo.app import MAX_PIXELS, MAX_UPLOAD_MB, page_intro

    assert (MAX_UPLOAD_MB, MAX_PIXELS) == (10, 40_000_000)
    intro = page_intro()
    assert "10 MB" in intro and "40 megapixels" in intro and "200 characters" in intro
    small = page_intro(max_chars=50, max_pixels=2_500_000)
    assert "2.5 megapixels" in small and "50 characters" in small
    assert "Note" not in intro  # a model of the user's own carries no caveat
    from lgrnet.model.registry import CAVEATS

    shipped = page_intro(caveat=CAVEATS["synthref-small"])
    assert "**Note:** The shipped synthref model knows only SynthRef" in shipped and "photographs" in shipped

    class Unused:
        max_length = 40

    assert DemoHandler(Unused()).max_pixels == 40_000_000
    # rgb.png is larger than 100 px: refused by a handler capped there, with the count in the message.
    width, height = corpus["rgb.png"].size
    message = DemoHandler(Unused(), max_pixels=100)(str(corpus["rgb.png"].path), "the square").message
    assert f"{width * height:,} pixels" in message and "limit of 100" in message
