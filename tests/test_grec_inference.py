"""Inference with the generalized head (``model.grec.enabled``): zero, one or many boxes with a score each, in the
Python API (``boxes``/``scores``/``found``, single and batched), ``lgrnet predict`` (text, --json, JSONL, COCO),
the server, the pictures and the demo; classic models keep their one box.

Expected values come from the model's raw outputs, caught by a forward hook: the last layer's token logits through
a sigmoid, sorted by hand, and its token boxes (clamped to the canvas) through the data layer's
``canvas_to_original`` with the letterbox of the test image written out by hand."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from inference_helpers import make_tiny_checkpoint
from PIL import Image
from torchvision.ops import box_iou

from lgrnet.cli import main
from lgrnet.config import apply_overrides
from lgrnet.data.transforms import canvas_to_original
from lgrnet.demo.app import DemoHandler, page_intro
from lgrnet.errors import LGRNetError
from lgrnet.inference.predictor import Prediction, Predictor
from lgrnet.inference.processor import Letterbox
from lgrnet.inference.visualize import GT_COLOR, POINT_COLOR, PRED_COLOR, draw_prediction
from lgrnet.serve import ServerLimits, create_app

WIDTH, HEIGHT = 90, 60  # the test image; the tiny twins' canvas is 128 px
TEXT = "the two red circles"


@pytest.fixture(scope="module")
def grec_checkpoint(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("grec") / "model", "lgrnet-tiny",
                                overrides=["model.grec.enabled=true"])


@pytest.fixture(scope="module")
def grec(grec_checkpoint) -> Predictor:
    return Predictor.from_pretrained(grec_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    path = tmp_path_factory.mktemp("grec-images") / "COCO_val2014_000000000042.png"
    Image.fromarray(rng.integers(0, 255, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)).save(path)
    return path


def _letterbox() -> Letterbox:
    """90 x 60 on a 128 canvas: the long side becomes 128 px, the short one round(60 * 128 / 90) = 85 px, centred
    with (128 - 85) // 2 = 21 px of padding above."""
    return Letterbox((WIDTH, HEIGHT), (128 / WIDTH, 85 / HEIGHT), (0, 21), 128)


class _Capture:
    """Keeps the model's last raw output (a forward hook) for as long as the ``with`` block lasts."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.out = model, None

    def __enter__(self) -> _Capture:
        self.handle = self.model.register_forward_hook(lambda _m, _i, out: setattr(self, "out", out))
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()


def _expected(out, index: int, threshold: float) -> tuple[list[list[float]], list[float], list[float], float]:
    """(boxes in original pixels, scores) of sample ``index`` whose score reaches ``threshold``, highest first;
    and the top token's box and score."""
    scores = torch.sigmoid(out.token_logits[-1][index].float()).tolist()
    canvas = out.token_boxes[-1][index].float().clamp(0.0, 1.0)
    order = sorted(range(len(scores)), key=lambda k: -scores[k])
    mapped = canvas_to_original(canvas[order], [_letterbox()] * len(order), clamp=True).tolist()
    kept = [i for i, k in enumerate(order) if scores[k] >= threshold]
    return [mapped[i] for i in kept], [scores[order[i]] for i in kept], mapped[0], scores[order[0]]


def _predict(predictor: Predictor, image, text: str = TEXT, **kwargs):
    with _Capture(predictor.model) as capture:
        prediction = predictor.predict(image, text, **kwargs)
    return prediction, capture.out


# ----------------------------------------------------------------------------------------------------------------
# Python API


def test_threshold_zero_gives_every_token_sorted_by_score(grec, image_path):
    p, out = _predict(grec, image_path, threshold=0.0)
    boxes, scores, top_box, top_score = _expected(out, 0, 0.0)
    assert p.letterbox == _letterbox()
    assert len(p.boxes) == len(p.scores) == grec.config.model.grec.num_queries == 5
    assert p.scores == pytest.approx(scores, abs=1e-6) and p.scores == sorted(p.scores, reverse=True)
    np.testing.assert_allclose(p.boxes, boxes, atol=1e-3)
    assert p.found and p.generalized and p.threshold == 0.0
    # The classic box is the highest-scoring token's: old code reading box_xyxy keeps working.
    assert p.box_xyxy == pytest.approx(top_box, abs=1e-3) and p.box_xyxy == pytest.approx(p.boxes[0])
    assert p.box_score == pytest.approx(top_score, abs=1e-6)
    assert p.box_normalized == pytest.approx((top_box[0] / WIDTH, top_box[1] / HEIGHT, top_box[2] / WIDTH,
                                              top_box[3] / HEIGHT), abs=1e-4)


def test_threshold_above_every_score_finds_nothing(grec, image_path):
    _, out = _predict(grec, image_path, threshold=0.0)
    _, _, top_box, top_score = _expected(out, 0, 0.0)
    assert top_score < 0.999  # random weights: no token is sure
    p = grec.predict(image_path, TEXT, threshold=top_score + 1e-3)
    assert not p.found and p.boxes == [] and p.scores == []
    assert p.box_xyxy == pytest.approx(top_box, abs=1e-3) and p.box_score == pytest.approx(top_score, abs=1e-6)
    record = p.to_dict()
    assert record["found"] is False and record["boxes"] == [] and record["scores"] == []
    assert p.describe().startswith("no match")


def test_default_threshold_is_the_models_and_a_cut_between_scores_keeps_those_above(grec, grec_checkpoint,
                                                                                   image_path):
    assert grec.threshold == grec.config.model.grec.threshold == 0.5
    _, out = _predict(grec, image_path, threshold=0.0)
    boxes, scores, _, _ = _expected(out, 0, 0.0)
    cut = (scores[1] + scores[2]) / 2  # between the second and third score: two boxes
    p = grec.predict(image_path, TEXT, threshold=cut)
    assert len(p.boxes) == 2 and p.scores == pytest.approx(scores[:2], abs=1e-6)
    np.testing.assert_allclose(p.boxes, boxes[:2], atol=1e-3)
    assert grec.threshold == 0.5  # a call's threshold is for that call only
    default, out = _predict(grec, image_path)
    kept, kept_scores, _, _ = _expected(out, 0, 0.5)
    assert default.threshold == 0.5 and default.scores == pytest.approx(kept_scores, abs=1e-6)
    assert len(default.boxes) == len(kept) and default.found == bool(kept)
    chosen = Predictor.from_pretrained(grec_checkpoint, device="cpu", threshold=cut)
    assert chosen.threshold == cut and chosen.predict(image_path, TEXT).scores == pytest.approx(p.scores)


def test_duplicates_are_suppressed_at_the_models_nms_iou(grec, image_path):
    _, out = _predict(grec, image_path, threshold=0.0)
    boxes, scores, _, _ = _expected(out, 0, 0.0)
    overlaps = box_iou(torch.tensor(boxes), torch.tensor(boxes))
    pairs = sorted({float(overlaps[i, j]) for i in range(len(boxes)) for j in range(i)})
    assert pairs[-1] > 0.0  # random tokens overlap
    nms_iou = (pairs[-1] + pairs[-2]) / 2 if len(pairs) > 1 else pairs[-1] / 2  # between the two largest overlaps
    kept: list[int] = []  # greedy suppression by hand, from the highest score down
    for i in range(len(boxes)):
        if all(float(overlaps[i, j]) <= nms_iou for j in kept):
            kept.append(i)
    assert len(kept) < len(boxes)
    grec.config.model.grec.nms_iou = nms_iou
    try:
        p = grec.predict(image_path, TEXT, threshold=0.0)
    finally:
        grec.config.model.grec.nms_iou = None
    assert p.scores == pytest.approx([scores[i] for i in kept], abs=1e-6)
    np.testing.assert_allclose(p.boxes, [boxes[i] for i in kept], atol=1e-3)
    assert len(grec.predict(image_path, TEXT, threshold=0.0).boxes) == len(boxes)


def test_batch_prediction_matches_one_at_a_time(grec, image_path):
    other = Image.fromarray(np.random.default_rng(8).integers(0, 255, size=(40, 70, 3), dtype=np.uint8))
    pairs = [(image_path, TEXT), (other, "every square"), (image_path, "the purple star")]
    batched = grec.predict(pairs, batch_size=3, threshold=0.45)
    single = [grec.predict(image, text, threshold=0.45) for image, text in pairs]
    for a, b in zip(batched, single):
        assert a.expression == b.expression and a.found == b.found and len(a.boxes) == len(b.boxes)
        assert a.scores == pytest.approx(b.scores, abs=1e-5)
        np.testing.assert_allclose(np.array(a.boxes).reshape(-1, 4), np.array(b.boxes).reshape(-1, 4), atol=1e-3)
    many = grec.predict(image_path, [TEXT, "the purple star"], threshold=0.45)
    assert [m.scores for m in many] == [pytest.approx(batched[0].scores), pytest.approx(batched[2].scores)]


def test_threshold_errors(grec, grec_checkpoint, predictor, image_path):
    for bad in (1.5, -0.1, "high"):
        with pytest.raises(LGRNetError, match="between 0 and 1"):
            grec.predict(image_path, TEXT, threshold=bad)
    with pytest.raises(LGRNetError, match="between 0 and 1"):
        Predictor.from_pretrained(grec_checkpoint, device="cpu", threshold=2.0)
    assert predictor.threshold is None and not predictor.generalized
    with pytest.raises(LGRNetError, match="no generalized head"):
        predictor.predict(image_path, TEXT, threshold=0.5)


def test_classic_model_keeps_its_one_box(predictor, image_path):
    p, out = _predict(predictor, image_path)
    assert out.token_boxes is None
    box = canvas_to_original(out.pred_boxes.float().clamp(0.0, 1.0), [_letterbox()], clamp=True)[0].tolist()
    assert p.box_xyxy == pytest.approx(box, abs=1e-3)
    assert p.boxes == [p.box_xyxy] and p.scores is None and p.found and p.threshold is None
    assert p.box_score is None and not p.generalized
    record = p.to_dict()
    assert record["boxes"] == [record["box_xyxy"]] and record["scores"] is None and record["found"] is True
    assert p.describe().startswith("box (x1, y1, x2, y2) = (")


# ----------------------------------------------------------------------------------------------------------------
# lgrnet predict


def test_predict_cli_json_and_text(grec, grec_checkpoint, image_path, capsys):
    _, out = _predict(grec, image_path, threshold=0.0)
    boxes, scores, _, top_score = _expected(out, 0, 0.0)
    single = ["predict", "--checkpoint", str(grec_checkpoint), "--image", str(image_path), "--text", TEXT,
              "--device", "cpu"]
    assert main([*single, "--json", "--threshold", "0"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["schema_version"] == 1 and record["found"] is True and record["threshold"] == 0.0
    assert record["scores"] == pytest.approx(scores, abs=1e-6)
    np.testing.assert_allclose(record["boxes"], boxes, atol=0.01)  # rounded to 2 decimals
    assert record["box_xyxy"] == record["boxes"][0] and record["coord_trained"] is False
    assert main([*single, "--json"]) == 0  # the model's own threshold, 0.5
    record = json.loads(capsys.readouterr().out)
    assert record["threshold"] == 0.5 and len(record["boxes"]) == sum(s >= 0.5 for s in scores)

    assert main([*single, "--threshold", "0"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("found 5 boxes scoring 0.00 or more\n") and text.count("box (x1, y1, x2, y2)") == 5
    assert "coordinate" not in text  # an untrained coordinate head's point is not offered as an answer
    assert main([*single, "--threshold", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"no match: no box scored 1.00 or more (best score {top_score:.2f})")


def test_predict_cli_threshold_errors(grec_checkpoint, checkpoint, image_path, capsys):
    for model, value, message in ((grec_checkpoint, "1.5", "--threshold 1.5: expected a score between 0 and 1"),
                                  (checkpoint, "0.5", "--threshold 0.5: the model lgrnet-swin-s-tiny-twin has no "
                                                      "generalized head")):
        code = main(["predict", "--checkpoint", str(model), "--image", str(image_path), "--text", TEXT,
                     "--threshold", value, "--device", "cpu"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("lgrnet predict: error:") and message in err[0]


def test_predict_cli_jsonl_and_coco(grec, grec_checkpoint, image_path, tmp_path, capsys):
    _, out = _predict(grec, image_path, threshold=0.0)
    _, scores, _, _ = _expected(out, 0, 0.0)
    requests = tmp_path / "requests.jsonl"
    requests.write_text(json.dumps({"image": str(image_path), "expression": TEXT, "id": "a"}) + "\n")
    common = ["predict", "--checkpoint", str(grec_checkpoint), "--input", str(requests), "--no-progress",
              "--device", "cpu"]
    assert main([*common, "--output", str(tmp_path / "rows.jsonl"), "--threshold", "0"]) == 0
    row = json.loads((tmp_path / "rows.jsonl").read_text())
    assert row["id"] == "a" and len(row["boxes"]) == 5 and row["scores"] == pytest.approx(scores, abs=1e-6)
    assert main([*common, "--output", str(tmp_path / "coco.json"), "--format", "coco", "--threshold", "0"]) == 0
    coco = json.loads((tmp_path / "coco.json").read_text())
    assert [(r["image_id"], r["id"]) for r in coco] == [(42, "a")] * 5  # one detection per box found
    assert [r["score"] for r in coco] == pytest.approx(scores, abs=1e-6)
    for result, (x1, y1, x2, y2) in zip(coco, row["boxes"]):
        assert result["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.011)
    capsys.readouterr()
    assert main([*common, "--output", str(tmp_path / "none.json"), "--format", "coco", "--threshold", "1"]) == 0
    assert json.loads((tmp_path / "none.json").read_text()) == []
    assert "(1 with no match at score 1.00)" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# Server, pictures, demo


def test_server_answers_with_the_boxes_and_scores(grec, image_path):
    expected = []
    for text in (TEXT, "the purple star"):
        _, out = _predict(grec, image_path, text)
        expected.append(_expected(out, 0, grec.threshold))
    with TestClient(create_app(grec, ServerLimits())) as client:
        files = {"image": ("scene.png", image_path.read_bytes(), "image/png")}
        response = client.post("/v1/ground", files=files, data={"expression": [TEXT, "the purple star"]})
        model = client.get("/v1/model").json()
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["schema_version"] == 1 and model["generalized"] is True and model["threshold"] == 0.5
    for prediction, (boxes, scores, top_box, top_score) in zip(body["predictions"], expected):
        assert prediction["found"] == bool(boxes) and prediction["threshold"] == 0.5
        assert prediction["scores"] == pytest.approx(scores, abs=1e-5)
        np.testing.assert_allclose(np.array(prediction["boxes"]).reshape(-1, 4), np.array(boxes).reshape(-1, 4),
                                   atol=0.011)
        assert prediction["box_xyxy"] == pytest.approx(top_box, abs=0.011)
        assert prediction["box_score"] == pytest.approx(top_score, abs=1e-5)


def test_server_takes_a_threshold_per_request(grec, image_path):
    """A request's own threshold (form field or JSON key) picks its boxes; the server's stays for the others."""
    _, out = _predict(grec, image_path, threshold=0.0)
    all_boxes, all_scores, _, top_score = _expected(out, 0, 0.0)
    image = image_path.read_bytes()
    with TestClient(create_app(grec, ServerLimits())) as client:
        def form(threshold=None):
            data = {"expression": TEXT} if threshold is None else {"expression": TEXT, "threshold": threshold}
            return client.post("/v1/ground", files={"image": ("scene.png", image, "image/png")}, data=data)

        every, default, nothing = form("0"), form(), form(str(min(1.0, top_score + 1e-3)))
        payload = {"image": base64.b64encode(image).decode(), "expression": TEXT, "threshold": 0}
        as_json = client.post("/v1/ground", json=payload)
    for response in (every, default, nothing, as_json):
        assert response.status_code == 200, response.text
    for response in (every, as_json):
        prediction = response.json()["predictions"][0]
        assert prediction["threshold"] == 0.0 and len(prediction["boxes"]) == 5
        assert prediction["scores"] == pytest.approx(all_scores, abs=1e-5)
        np.testing.assert_allclose(np.array(prediction["boxes"]), np.array(all_boxes), atol=0.011)
    assert default.json()["predictions"][0]["threshold"] == grec.threshold == 0.5
    assert default.json()["predictions"][0]["scores"] == pytest.approx([s for s in all_scores if s >= 0.5], abs=1e-5)
    assert nothing.json()["predictions"][0]["found"] is False and nothing.json()["predictions"][0]["boxes"] == []


@pytest.mark.parametrize("send, status, words", [
    (lambda c, image: c.post("/v1/ground", files={"image": ("s.png", image, "image/png")},
                             data={"expression": TEXT, "threshold": "high"}), 400, ["threshold", "'high'"]),
    (lambda c, image: c.post("/v1/ground", files={"image": ("s.png", image, "image/png")},
                             data={"expression": TEXT, "threshold": ["0.1", "0.2"]}), 400, ["threshold: one"]),
    (lambda c, image: c.post("/v1/ground", files={"image": ("s.png", image, "image/png")},
                             data={"expression": TEXT, "threshold": "1.5"}), 422, ["threshold 1.5", "between 0 and 1"]),
    (lambda c, image: c.post("/v1/ground", json={"image": base64.b64encode(image).decode(), "expression": TEXT,
                                                 "threshold": True}), 400, ["threshold", "number", "bool"]),
    (lambda c, image: c.post("/v1/ground", json={"image": base64.b64encode(image).decode(), "expression": TEXT,
                                                 "threshold": "0.3"}), 400, ["threshold", "number", "str"]),
])
def test_server_refuses_a_bad_threshold_in_one_line(grec, image_path, send, status, words):
    with TestClient(create_app(grec, ServerLimits())) as client:
        response = send(client, image_path.read_bytes())
        assert client.get("/healthz").json()["pairs"] == 0  # refused before any forward pass
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert "\n" not in detail and all(word in detail for word in words), detail


def test_server_of_a_classic_model_refuses_a_threshold(predictor, image_path):
    with TestClient(create_app(predictor, ServerLimits())) as client:
        response = client.post("/v1/ground", files={"image": ("s.png", image_path.read_bytes(), "image/png")},
                               data={"expression": TEXT, "threshold": "0.5"})
    assert response.status_code == 422 and "has no generalized head" in response.json()["detail"]


def test_batcher_runs_one_forward_per_threshold_and_answers_each_pair_its_own():
    from lgrnet.serve.batcher import Batcher

    class Recording:
        def __init__(self) -> None:
            self.calls = []

        def predict_many(self, pairs, batch_size=None, threshold=None):
            self.calls.append(([text for _image, text in pairs], threshold))
            return [f"{text}@{threshold}" for _image, text in pairs]

    recording = Recording()
    batcher = Batcher(recording, max_batch=4, max_wait_ms=5000)  # type: ignore[arg-type]
    image = Image.new("RGB", (4, 4))
    try:  # four pairs fill the batch at once: no waiting for the deadline
        low = batcher.submit([(image, "a"), (image, "b")], threshold=0.2)
        high = batcher.submit([(image, "c")], threshold=0.7)
        own = batcher.submit([(image, "d")])
        assert [f.result(30) for f in low + high + own] == ["a@0.2", "b@0.2", "c@0.7", "d@None"]
    finally:
        batcher.close()
    assert recording.calls == [(["a", "b"], 0.2), (["c"], 0.7), (["d"], None)]
    assert batcher.stats.forwards == 3 and batcher.stats.pairs == 4


def _hand_prediction(boxes, scores, found=None, coord_trained=False) -> Prediction:
    top = boxes[0] if boxes else (5.0, 5.0, 20.0, 20.0)
    return Prediction(expression="both squares", image_size=(200, 100), box_xyxy=top,
                      box_normalized=(top[0] / 200, top[1] / 100, top[2] / 200, top[3] / 100), coord=(0.5, 0.5),
                      coord_xy=(100.0, 50.0), letterbox=Letterbox((200, 100), (0.64, 0.64), (0, 32), 128),
                      boxes=list(boxes), scores=list(scores), found=bool(boxes) if found is None else found,
                      threshold=0.5, box_score=scores[0] if scores else 0.3, coord_trained=coord_trained)


def test_pictures_show_every_box_found_or_no_match():
    image = Image.new("RGB", (200, 100), (128, 128, 128))
    two = _hand_prediction([(110.0, 40.0, 190.0, 90.0), (20.0, 40.0, 90.0, 90.0)], [0.9, 0.6])
    px = draw_prediction(image, two, ground_truth=[(15, 35, 95, 95), (105, 35, 195, 95)], caption=False).load()
    assert px[110, 70] == PRED_COLOR and px[190, 70] == PRED_COLOR  # both boxes' left and right edges
    assert px[20, 70] == PRED_COLOR and px[90, 70] == PRED_COLOR
    assert px[17, 35] == GT_COLOR and px[107, 35] == GT_COLOR  # both targets, dashed
    assert px[100, 50] == (128, 128, 128)  # the untrained coordinate head's point is not drawn
    # Each box carries its score on a red tab above its top-left corner: the tab has white text pixels.
    tab = [px[x, y] for x in range(110, 140) for y in range(25, 40)]
    assert PRED_COLOR in tab and any(c[0] > 200 and c[1] > 200 for c in tab)

    none = _hand_prediction([], [])
    drawn = draw_prediction(image, none, caption=False)
    pixels = np.asarray(drawn)
    red = (pixels == PRED_COLOR).all(axis=-1)
    assert red[:30, :].any() and not red[40:, :].any()  # "no match" written at the top, no box drawn
    assert drawn.load()[10, 10] != (128, 128, 128)

    trained = _hand_prediction([(20.0, 40.0, 90.0, 90.0)], [0.9], coord_trained=True)
    assert draw_prediction(image, trained, caption=False).load()[100, 50] == POINT_COLOR
    assert draw_prediction(image, trained, caption=False, point=False).load()[100, 50] == (128, 128, 128)


def test_demo_page_has_a_threshold_slider_only_for_a_generalized_model(grec, predictor):
    from lgrnet.demo.app import build_app

    def sliders(app) -> list[dict]:
        return [c["props"] for c in app.config["components"] if c.get("props", {}).get("elem_id") == "threshold"]

    examples = [("unused.png", "unused")]
    with_head = sliders(build_app(grec, examples=examples))
    assert len(with_head) == 1 and with_head[0]["value"] == 0.5 and with_head[0]["maximum"] == 1
    assert sliders(build_app(predictor, examples=examples)) == []


def test_coordinate_point_drawn_only_for_a_model_trained_with_a_coordinate_loss(grec, image_path):
    assert not grec.coord_trained and not grec.predict(image_path, TEXT).coord_trained
    config = apply_overrides(grec.config, ["loss.coord_weight=1.0"])
    trained = Predictor(grec.model, config, device="cpu", tokenizer=grec.tokenizer)
    assert trained.coord_trained and trained.predict(image_path, TEXT).coord_trained


def test_demo_says_no_match_plainly(grec, image_path):
    handler = DemoHandler(grec)
    try:
        grec.threshold = 1.0
        nothing = handler(str(image_path), TEXT, [1])
        grec.threshold = 0.0
        everything = handler(str(image_path), TEXT, [1])
    finally:
        grec.threshold = None  # back to the model's own
    assert grec.threshold == 0.5
    assert nothing.message.startswith("no match: no box scored 1.00 or more") and nothing.result["found"] is False
    assert nothing.overlay is not None and nothing.attention is not None
    assert everything.message.startswith("found 5 boxes") and everything.message.count("score 0.") == 5
    chosen = handler(str(image_path), TEXT, [1], threshold=0.0)  # the page's slider, for one request
    assert chosen.message.startswith("found 5 boxes") and chosen.result["threshold"] == 0.0 and grec.threshold == 0.5
    intro = page_intro(generalized=True, threshold=0.5)
    assert "**no match**" in intro and "under 0.50" in intro and "no yellow dot" in intro
    assert "yellow dot: the point" in page_intro(coord_trained=True)
