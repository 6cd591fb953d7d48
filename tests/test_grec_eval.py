"""GREC evaluation: the grec_* metrics and predictions of evaluate() for a model with the generalized head (hand-
computed on fixed outputs), classic models untouched, and lgrnet eval on a tiny random GREC model checked against an
independent computation from the model's raw outputs, with --sweep and --save-threshold."""

from __future__ import annotations

import itertools
import json
import math
from types import SimpleNamespace

import pytest
import torch
from torchvision.ops import box_iou

from lgrnet.data.batch import Batch, SampleMeta
from lgrnet.engine.distributed import DistInfo
from lgrnet.engine.evaluate import evaluate

# One 200x100 image letterboxed into a 100 canvas: scale 0.5, centred vertically (offset dy = 25). Original box
# (0, 0, 100, 100) is canvas x [0, 50], y [25, 75]: (cx, cy, w, h) = (0.25, 0.5, 0.5, 0.5); (100, 0, 200, 50) is
# canvas x [50, 100], y [25, 50]: (0.75, 0.375, 0.5, 0.25).
LEFT, LEFT_CANVAS = (0.0, 0.0, 100.0, 100.0), [0.25, 0.5, 0.5, 0.5]
TOP_RIGHT, TOP_RIGHT_CANVAS = (100.0, 0.0, 200.0, 50.0), [0.75, 0.375, 0.5, 0.25]
WHOLE_CANVAS = [0.5, 0.5, 1.0, 1.0]  # original y [-50, 150] clamped to the image: (0, 0, 200, 100)


def _meta(name: str, targets: tuple) -> SampleMeta:
    return SampleMeta(id=name, expression="the shapes", image="x.jpg", original_size=(200, 100), scale=(0.5, 0.5),
                      offset=(0.0, 25.0), canvas_size=100, original_box=targets[0] if targets else (0.0, 0.0, 0.0, 0.0),
                      original_boxes=targets)


def _batch() -> Batch:
    meta = [_meta("none", ()), _meta("multi", (LEFT, TOP_RIGHT)), _meta("single", (LEFT,))]
    return Batch(images=torch.zeros(3, 3, 100, 100), image_mask=torch.zeros(3, 100, 100, dtype=torch.bool),
                 input_ids=torch.zeros(3, 4, dtype=torch.int64), attention_mask=torch.ones(3, 4, dtype=torch.int64),
                 boxes=torch.tensor([[0.0, 0.0, 0.0, 0.0], LEFT_CANVAS, LEFT_CANVAS]), meta=meta)


class _FixedGrecModel(torch.nn.Module):
    """Two tokens per sample with given canvas boxes and logits; the top box is the highest-scoring token's, as the
    generalized head returns it."""

    def __init__(self, boxes: torch.Tensor, logits: torch.Tensor):
        super().__init__()
        self.boxes, self.logits = boxes, logits
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images, **kwargs):
        top = self.logits.argmax(dim=1)
        return SimpleNamespace(pred_boxes=self.boxes[torch.arange(len(top)), top],
                               token_boxes=self.boxes[None], token_logits=self.logits[None])


def _fixed_model() -> _FixedGrecModel:
    boxes = torch.tensor([
        [LEFT_CANVAS, TOP_RIGHT_CANVAS],  # none: scores sigmoid(-2) = 0.12 and sigmoid(0) = 0.5
        [LEFT_CANVAS, TOP_RIGHT_CANVAS],  # multi: both targets, scores 0.88 and 0.73
        [WHOLE_CANVAS, LEFT_CANVAS],  # single: the whole image (IoU 0.5 in pixels) at 0.95, the exact box at 0.27
    ])
    logits = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [3.0, -1.0]])
    return _FixedGrecModel(boxes, logits)


def test_evaluate_grec_metrics_sweep_and_predictions():
    metrics, preds = evaluate(_fixed_model(), [_batch()], DistInfo(), collect_predictions=True, grec_threshold=0.5,
                              sweep=True)
    # At 0.5: "none" claims its second token (0.5 >= 0.5): wrong; "multi" finds both targets: right; "single" claims
    # the whole image, whose IoU with (0, 0, 100, 100) in pixels is 100*100 / (200*100) = 0.5 (inclusive): right.
    assert metrics["grec_threshold"] == 0.5
    assert metrics["grec_count"] == 3
    assert (metrics["grec_single_count"], metrics["grec_multi_count"], metrics["grec_none_count"]) == (1, 1, 1)
    assert metrics["grec_precision"] == pytest.approx(200 / 3)
    assert metrics["grec_n_acc"] == 0.0
    assert metrics["grec_t_acc"] == 100.0
    assert metrics["grec_single_acc50"] == 100.0  # the top box, IoU 0.5 in pixels (0.25 on the canvas)
    assert metrics["grec_precision_multi"] == 100.0 and metrics["grec_precision_single"] == 100.0
    # Sweep: from 0.55 to 0.70 all three are right ("multi" keeps 0.73); at 0.75 "multi" loses a target.
    rows = {round(r["threshold"], 2): r for r in metrics["grec_sweep"]}
    assert len(rows) == 19
    assert [t for t, r in rows.items() if r["precision"] == 100.0] == [0.55, 0.6, 0.65, 0.7]
    assert rows[0.75]["precision"] == pytest.approx(200 / 3)
    # 0.25: "none" claims a box, "single" claims the exact box too (0.27): one right answer, duplicated.
    assert rows[0.25]["precision"] == pytest.approx(100 / 3)
    assert metrics["grec_best_threshold"] == 0.55 and metrics["grec_best_precision"] == 100.0
    # Classic keys are those of the top box against each sample's first box ("none": an empty box, IoU 0).
    assert metrics["count"] == 3 and metrics["orig_acc50"] == pytest.approx(200 / 3)
    none, multi, single = preds
    assert none["kind"] == "none" and none["boxes"] == [list(TOP_RIGHT)] and none["correct"] is False
    assert none["scores"] == [0.5] and none["f1"] == 0.0 and none["gt_boxes"] == []
    assert multi["boxes"] == [list(LEFT), list(TOP_RIGHT)]  # best first
    assert multi["scores"] == pytest.approx([1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-1))], abs=1e-5)
    assert multi["correct"] is True and multi["f1"] == 1.0 and multi["kind"] == "multi"
    assert single["boxes"] == [[0.0, 0.0, 200.0, 100.0]] and single["correct"] is True
    assert single["box"] == [0.0, 0.0, 200.0, 100.0]  # the classic row keeps the top box


def test_evaluate_grec_defaults_to_the_model_threshold_and_omits_the_sweep():
    model = _fixed_model()
    model.config = SimpleNamespace(grec=SimpleNamespace(threshold=0.6, nms_iou=None))
    metrics, _ = evaluate(model, [_batch()], DistInfo())
    assert metrics["grec_threshold"] == 0.6 and metrics["grec_precision"] == 100.0 and metrics["grec_n_acc"] == 100.0
    assert "grec_sweep" not in metrics
    # A threshold outside the sweep is measured as well: at 0.42 "none" claims its 0.5 token again.
    metrics, _ = evaluate(model, [_batch()], DistInfo(), grec_threshold=0.42)
    assert metrics["grec_threshold"] == 0.42 and metrics["grec_precision"] == pytest.approx(200 / 3)


def test_evaluate_grec_suppresses_duplicates_at_the_models_nms_iou():
    # At 0.25 "single" claims the whole image (0.95) and the exact box (0.27), whose IoU in pixels is
    # 100*100 / (200*100) = 0.5: a duplicate above nms_iou 0.45, not above 0.5.
    model = _fixed_model()
    model.config = SimpleNamespace(grec=SimpleNamespace(threshold=0.25, nms_iou=0.45))
    metrics, preds = evaluate(model, [_batch()], DistInfo(), collect_predictions=True, sweep=True)
    rows = {round(r["threshold"], 2): r for r in metrics["grec_sweep"]}
    # "none" still claims a box at 0.25; "multi" keeps both (disjoint); "single" is right once the duplicate goes.
    assert metrics["grec_precision"] == pytest.approx(200 / 3) and rows[0.25]["precision"] == pytest.approx(200 / 3)
    assert preds[2]["boxes"] == [[0.0, 0.0, 200.0, 100.0]] and preds[2]["correct"] is True
    assert preds[1]["boxes"] == [list(LEFT), list(TOP_RIGHT)]
    model.config.grec.nms_iou = 0.5
    metrics, preds = evaluate(model, [_batch()], DistInfo(), collect_predictions=True)
    assert metrics["grec_precision"] == pytest.approx(100 / 3) and len(preds[2]["boxes"]) == 2


def test_classic_model_gets_no_grec_keys():
    class Classic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = torch.nn.Parameter(torch.zeros(1))

        def forward(self, images, **kwargs):
            return SimpleNamespace(pred_boxes=torch.tensor([LEFT_CANVAS] * images.shape[0]))

    metrics, preds = evaluate(Classic(), [_batch()], DistInfo(), collect_predictions=True, sweep=True)
    assert not [k for k in metrics if k.startswith("grec")]
    assert set(preds[0]) == {"id", "image", "expression", "box", "gt_box", "box_format", "iou", "iou_canvas",
                             "spatial"}


# ----------------------------------------------------------------------------------------------------------------
# lgrnet eval on a tiny random GREC model

THRESHOLDS = [round(0.05 * i, 2) for i in range(1, 20)]


def _max_matching(predictions: torch.Tensor, targets: torch.Tensor) -> int:
    """The largest number of disjoint (prediction, target) pairs with IoU >= 0.5, by trying every assignment."""
    if not len(predictions) or not len(targets):
        return 0
    ok = box_iou(predictions.double(), targets.double()) >= 0.5
    for size in range(min(len(predictions), len(targets)), 0, -1):
        for chosen in itertools.combinations(range(len(predictions)), size):
            for assigned in itertools.permutations(range(len(targets)), size):
                if all(ok[p, t] for p, t in zip(chosen, assigned)):
                    return size
    return 0


def _raw_outputs(model, records, config):
    """Per sample (in record order): the last layer's token boxes in original pixels [K, 4] and their scores [K]."""
    from lgrnet.data.dataset import build_eval_loader
    from lgrnet.data.transforms import canvas_to_original
    from lgrnet.model.text import build_tokenizer

    loader = build_eval_loader(records, config, build_tokenizer(config.model.text), batch_size=2)
    out = []
    with torch.no_grad():
        for batch in loader:
            output = model(batch.images, batch.image_mask, batch.input_ids, batch.attention_mask)
            tokens = output.token_boxes[-1].clamp(0.0, 1.0)
            boxes = torch.stack([canvas_to_original(tokens[:, k], batch.meta) for k in range(tokens.shape[1])], 1)
            out += list(zip(boxes, output.token_logits[-1].sigmoid()))
    return out


@pytest.fixture(scope="module")
def grec_folder(tmp_path_factory):
    """A tiny random GREC model folder (3 tokens, scores spread over (0, 1)) and a JSONL set of 5 expressions on two
    images whose target sets are built from the model's own boxes: none; the top token's box; the two best tokens'
    boxes; the top box and a box far from every token; a far box alone."""
    from PIL import Image
    from tiny_configs import tiny_twin

    from lgrnet.config import load_config
    from lgrnet.data.readers import read_jsonl
    from lgrnet.model.io import save_model
    from lgrnet.model.lgrnet import LGRNet

    root = tmp_path_factory.mktemp("grec")
    Image.new("RGB", (160, 120), (200, 60, 60)).save(root / "wide.png")
    Image.new("RGB", (90, 150), (60, 60, 200)).save(root / "tall.png")
    images = ["wide.png", "tall.png", "wide.png", "tall.png", "wide.png"]
    expressions = ["no such thing", "the red one", "both squares", "all the circles", "the green star"]

    def write(path, target_sets):
        path.write_text("".join(json.dumps({"id": f"s{i}", "image": image, "expression": text, "boxes": targets})
                                + "\n" for i, (image, text, targets) in enumerate(zip(images, expressions,
                                                                                         target_sets))))

    config = load_config(tiny_twin("lgrnet-tiny"), ["model.grec.enabled=true", "model.grec.num_queries=3",
                                                    "data.format=jsonl", "data.num_workers=0"])
    torch.manual_seed(3)
    model = LGRNet(config.model, config.loss).eval()
    write(root / "draft.jsonl", [[]] * 5)
    records = read_jsonl(root / "draft.jsonl")
    # Random logits lie close together: stretch them over [-3, 3] (an affine change of the score head) so that the
    # sweep's thresholds fall between the tokens' scores.
    logits = torch.stack([scores for _, scores in _raw_outputs(model, records, config)]).logit()
    scale = 6.0 / float(logits.max() - logits.min())
    with torch.no_grad():
        model.grec.score_head.weight.mul_(scale)
        model.grec.score_head.bias.mul_(scale).sub_(scale * float(logits.max() + logits.min()) / 2)
    raw = _raw_outputs(model, records, config)
    far = {"wide.png": [150.0, 110.0, 159.0, 119.0], "tall.png": [80.0, 140.0, 89.0, 149.0]}

    def box(boxes, scores, rank):
        return [round(v, 3) for v in boxes[scores.argsort(descending=True)[rank]].tolist()]

    (_, _), (b1, s1), (b2, s2), (b3, s3), _ = raw
    targets = [[], [box(b1, s1, 0)], [box(b2, s2, 0), box(b2, s2, 1)], [box(b3, s3, 0), far["tall.png"]],
               [far["wide.png"]]]
    write(root / "set.jsonl", targets)
    save_model(model, config, root / "model")
    return root, raw, targets


def _expected(raw, targets, threshold):
    """Correct / no-target-correct / target-found counts at ``threshold``, computed directly."""
    correct = none_correct = found = 0
    for (boxes, scores), target in zip(raw, targets):
        predicted = boxes[scores >= threshold]
        target = torch.tensor(target, dtype=torch.float64).reshape(-1, 4)
        tp = _max_matching(predicted, target)
        correct += tp == len(predicted) == len(target)
        none_correct += not len(target) and not len(predicted)
        found += bool(len(target)) and bool(len(predicted))
    return correct, none_correct, found


def test_lgrnet_eval_grec_matches_a_direct_computation_and_saves_the_threshold(grec_folder):
    from cli_helpers import run_cli_captured

    from lgrnet.config import load_config

    root, raw, targets = grec_folder
    before = load_config(root / "model" / "config.yaml").to_dict()
    code, out, err = run_cli_captured(["eval", "--checkpoint", str(root / "model"), "--data", str(root / "set.jsonl"),
                                       "--sweep", "--save-threshold", "--device", "cpu"])
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    counts = {t: _expected(raw, targets, t) for t in THRESHOLDS}
    assert len({c for c, _, _ in counts.values()}) > 1  # the set tells thresholds apart
    rows = {round(r["threshold"], 2): r for r in result["grec_sweep"]}
    assert list(rows) == THRESHOLDS
    for t, (correct, none_correct, found) in counts.items():
        assert rows[t]["precision"] == pytest.approx(100 * correct / 5), t
        assert rows[t]["n_acc"] == pytest.approx(100 * none_correct), t
        assert rows[t]["t_acc"] == pytest.approx(100 * found / 4), t
    correct, none_correct, found = _expected(raw, targets, 0.5)
    assert result["grec_threshold"] == 0.5 and result["grec_precision"] == pytest.approx(100 * correct / 5)
    assert result["grec_n_acc"] == pytest.approx(100 * none_correct)
    assert (result["grec_single_count"], result["grec_multi_count"], result["grec_none_count"]) == (2, 2, 1)
    # Top box (highest score) on the single-target samples: s1's target is its top box, s4's is far from all.
    tops = [boxes[scores.argmax()] for boxes, scores in raw]
    single_hits = [box_iou(tops[i][None].double(), torch.tensor([targets[i][0]], dtype=torch.float64))[0, 0] >= 0.5
                   for i in (1, 4)]
    assert single_hits[0] and result["grec_single_acc50"] == pytest.approx(50.0 * sum(map(bool, single_hits)))
    # The chosen threshold: most correct, then closest to 0.5, then the higher.
    best = max(THRESHOLDS, key=lambda t: (counts[t][0], -round(abs(t - 0.5), 9), t))
    assert result["grec_best_threshold"] == best and result["grec_saved_threshold"] == best
    after = load_config(root / "model" / "config.yaml").to_dict()
    assert after["model"]["grec"]["threshold"] == best
    after["model"]["grec"]["threshold"] = before["model"]["grec"]["threshold"]
    assert after == before  # nothing else of the config changed
    assert sorted(p.name for p in (root / "model").iterdir()) == ["config.yaml", "model.safetensors"]
    assert f"Precision@(F1=1, IoU>=0.5)  {result['grec_precision']:.2f}" in err
    assert f"saved threshold {best:.2f}" in err and len(err.strip().splitlines()) == 6 + 1 + 19 + 1
    # Evaluated again, the model reports at its new threshold.
    code, out, err = run_cli_captured(["eval", "--checkpoint", str(root / "model"), "--data", str(root / "set.jsonl"),
                                       "--device", "cpu"])
    again = json.loads(out.strip().splitlines()[-1])
    assert again["grec_threshold"] == best and again["grec_precision"] == pytest.approx(100 * counts[best][0] / 5)
    assert "grec_sweep" not in again


def test_lgrnet_eval_min_n_acc_constrains_the_saved_threshold(grec_folder):
    from cli_helpers import one_line_error, run_cli_captured

    from lgrnet.config import load_config

    root, raw, targets = grec_folder
    counts = {t: _expected(raw, targets, t) for t in THRESHOLDS}
    # One no-target sample: N-acc is 100 where it gets no box, else 0.
    quiet = [t for t in THRESHOLDS if counts[t][1] == 1]
    assert quiet and len(quiet) < len(THRESHOLDS)  # the constraint rules some thresholds out
    best = max(quiet, key=lambda t: (counts[t][0], -round(abs(t - 0.5), 9), t))
    code, out, err = run_cli_captured(["eval", "--checkpoint", str(root / "model"), "--data", str(root / "set.jsonl"),
                                       "--min-n-acc", "100", "--save-threshold", "--device", "cpu"])
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["grec_best_threshold"] == best and result["grec_saved_threshold"] == best
    assert result["grec_best_n_acc"] == 100.0 and result["grec_best_meets_min_n_acc"] is True
    assert result["grec_min_n_acc"] == 100.0
    assert load_config(root / "model" / "config.yaml").model.grec.threshold == best
    assert f"best threshold {best:.2f} (of those with N-acc >= 100)" in err
    code, out, err = run_cli_captured(["eval", "--checkpoint", str(root / "model"), "--data", str(root / "set.jsonl"),
                                       "--min-n-acc", "150", "--device", "cpu"])
    assert code != 0
    assert one_line_error(err, "eval") == "lgrnet eval: error: --min-n-acc 150: must be a percentage from 0 to 100"


@pytest.mark.parametrize("kind", ["shipped-name", "shipped-folder", "hub-id", "file", "classic"])
def test_save_threshold_refuses_what_it_cannot_write(kind, grec_folder, tmp_path):
    from cli_helpers import one_line_error, run_cli_captured
    from model_helpers import build

    from lgrnet.model.io import save_model
    from lgrnet.model.registry import WEIGHTS_DIR

    root, _, _ = grec_folder
    if kind == "classic":
        model, config = build("lgrnet-tiny")
        checkpoint, expected = str(save_model(model, config, tmp_path / "classic")), "has no GREC head"
    else:
        (tmp_path / "model.yaml").write_text("x: 1\n")
        checkpoint, expected = {
            "shipped-name": ("synthref", "is a shipped model"),
            "shipped-folder": (str(WEIGHTS_DIR / "synthref-small"), "is a shipped model of the package"),
            "hub-id": ("someone/some-model", "not a local folder"),
            "file": (str(tmp_path / "model.yaml"), "is not a folder"),
        }[kind]
    code, out, err = run_cli_captured(["eval", "--checkpoint", checkpoint, "--data", str(root / "set.jsonl"),
                                       "--save-threshold", "--device", "cpu"])
    assert code != 0 and out == ""
    line = one_line_error(err, "eval")
    assert "--save-threshold" in line and expected in line and checkpoint in line


def test_save_threshold_checks_the_folder_is_writable_before_loading(grec_folder, monkeypatch):
    import os

    from cli_helpers import one_line_error, run_cli_captured

    import lgrnet.model.io

    root, _, _ = grec_folder
    folder = root / "model"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if os.fspath(path) == os.fspath(folder)
                        else real_access(path, mode))

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before the folder was checked")

    monkeypatch.setattr(lgrnet.model.io, "load_model", no_loading)
    before = (folder / "config.yaml").read_bytes()
    code, _, err = run_cli_captured(["eval", "--checkpoint", str(folder), "--data", str(root / "set.jsonl"),
                                     "--save-threshold", "--device", "cpu"])
    assert code != 0
    assert one_line_error(err, "eval").endswith(f"--save-threshold: model folder {folder} is not writable")
    assert (folder / "config.yaml").read_bytes() == before
