"""``lgrnet predict``: one image (text, --json, --out PNG), many pairs from JSONL (bad lines reported by number and
skipped), argument errors, and the real COCO images of shared/data/real_smoke through the installed command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lgrnet.cli import main


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    Image.new("RGB", (80, 50), (30, 120, 200)).save(folder / "a.png")
    Image.new("RGB", (40, 70), (200, 120, 30)).save(folder / "b.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    return folder


def test_single_text_json_and_overlay(checkpoint, images, tmp_path, capsys):
    out_png = tmp_path / "overlay.png"
    args = ["predict", "--checkpoint", str(checkpoint), "--image", str(images / "a.png"), "--text", "the blue thing"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("box (x1, y1, x2, y2) = (") and "coordinate" in text

    assert main(args + ["--json", "--out", str(out_png), "--attention", "--layers", "1,2", "--gt", "1,2,30,40"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["schema_version"] == 1  # the versioned layout the server answers with too
    assert len(record["box_xyxy"]) == 4 and len(record["coord"]) == 2
    x1, y1, x2, y2 = record["box_xyxy"]
    assert 0 <= x1 <= x2 <= 80 and 0 <= y1 <= y2 <= 50
    assert record["overlay"] == str(out_png) and len(record["visual_attention"]) == 2
    figure = Image.open(out_png)
    assert figure.format == "PNG" and figure.width > 3 * 80  # overlay + two heat maps side by side


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "either --image and --text"),
        (["--image", "x.png"], "--image and --text go together"),
        (["--input", "r.jsonl"], "--input and --output go together"),
        (["--input", "missing.jsonl", "--output", "o.jsonl"], "missing.jsonl: no such file"),
        (["--image", "x.png", "--text", "a", "--gt", "1,2,3"], "four numbers"),
        (["--image", "x.png", "--text", "a", "--layers", "0"], "1-based"),
        (["--image", "x.png", "--text", "a", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_argument_errors_are_one_line(checkpoint, capsys, extra, message):
    assert main(["predict", "--checkpoint", str(checkpoint), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lgrnet predict: error:") and message in err[0]


def test_missing_checkpoint(images, tmp_path, capsys):
    args = ["predict", "--checkpoint", str(tmp_path / "nope"), "--image", str(images / "a.png"), "--text", "a"]
    assert main(args) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize("name, fmt, magic", [("o.jpg", "JPEG", b"\xff\xd8\xff"), ("o.JPEG", "JPEG", b"\xff\xd8\xff"),
                                              ("o.png", "PNG", b"\x89PNG")])
def test_out_is_the_original_size_in_the_suffix_format(checkpoint, images, tmp_path, capsys, name, fmt, magic):
    out = tmp_path / name
    args = ["predict", "--checkpoint", str(checkpoint), "--image", str(images / "a.png"), "--text", "the blue thing",
            "--json", "--out", str(out)]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert out.read_bytes()[: len(magic)] == magic
    overlay = Image.open(out)
    assert overlay.format == fmt and overlay.size == (80, 50)  # a.png is 80 x 50: not shrunk, no caption band
    # The red box outline is drawn at the printed pixel coordinates (clamped to the image).
    x1, y1, x2, y2 = record["box_xyxy"]
    column, row = min(round(x1), 79), min(round((y1 + y2) / 2), 49)
    red, green, blue = overlay.convert("RGB").getpixel((column, row))
    assert red > 180 and green < 90 and blue < 90  # PRED_COLOR (230, 40, 40), JPEG-blurred at most a little


@pytest.mark.parametrize("name", ["o.gif", "o.webp", "overlay"])
def test_unknown_out_suffix_is_rejected_before_the_model_loads(images, tmp_path, capsys, name):
    # A checkpoint that does not exist: the suffix error must come first, so nothing was loaded.
    args = ["predict", "--checkpoint", str(tmp_path / "never-loaded"), "--image", str(images / "a.png"),
            "--text", "a", "--out", str(tmp_path / name)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lgrnet predict: error: --out ") and name in err[0]
    assert "never-loaded" not in err[0] and not (tmp_path / name).exists()


def test_precision_and_its_old_name(checkpoint, images, capsys):
    base = ["predict", "--checkpoint", str(checkpoint), "--image", str(images / "a.png"), "--text", "a", "--json"]
    boxes = {}
    for extra in (["--precision", "bf16"], ["--dtype", "bf16"], ["--precision", "off"], []):
        assert main(base + extra) == 0
        captured = capsys.readouterr()
        boxes[" ".join(extra)] = json.loads(captured.out)["box_xyxy"]
        assert ("is now --precision" in captured.err) == (extra[:1] == ["--dtype"])
    assert boxes["--precision bf16"] == boxes["--dtype bf16"]  # the same autocast
    assert boxes["--precision off"] == boxes[""]  # off = fp32
    from lgrnet.cli import build_parser

    help_text = build_parser()._subparsers._group_actions[0].choices["predict"].format_help()
    assert "--precision" in help_text and "--dtype" not in help_text


def test_jsonl_skips_bad_lines_and_writes_the_rest(checkpoint, images, tmp_path, capsys):
    requests = tmp_path / "requests.jsonl"
    lines = [
        {"id": "one", "image": str(images / "a.png"), "expression": "the blue thing"},  # 1: absolute path
        "this is not json",  # 2
        {"image": str(images / "missing.png"), "expression": "x"},  # 3: no such file
        {"image": str(images / "a.png")},  # 4: no expression
        "",  # blank line: ignored, not counted
        {"id": 7, "image": os.path.relpath(images / "b.jpg", tmp_path), "text": "the orange one"},  # 6: relative
        {"image": str(images / "broken.jpg"), "expression": "x"},  # 7: corrupt image
        {"image": str(images / "a.png"), "expression": "   "},  # 8: empty expression
        ["not", "an", "object"],  # 9
        {"image": str(images / "b.jpg"), "expression": "the top"},  # 10
    ]
    requests.write_text("\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n")
    output = tmp_path / "out" / "predictions.jsonl"
    code = main(["predict", "--checkpoint", str(checkpoint), "--input", str(requests), "--output", str(output),
                 "--batch-size", "2"])
    err = capsys.readouterr().err
    assert code == 1  # some lines were skipped
    for number in (2, 3, 4, 7, 8, 9):
        assert f"requests.jsonl:{number}: skipped:" in err
    assert "wrote 3 predictions" in err and "skipped 6 lines" in err
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["line"] for r in rows] == [1, 6, 10] and [r["id"] for r in rows] == ["one", 7, None]
    assert {r["schema_version"] for r in rows} == {1}
    assert rows[1]["expression"] == "the orange one"
    for row, size in zip(rows, [(80, 50), (40, 70), (40, 70)]):
        x1, y1, x2, y2 = row["box_xyxy"]
        assert 0 <= x1 <= x2 <= size[0] and 0 <= y1 <= y2 <= size[1] and len(row["coord"]) == 2


@pytest.mark.slow  # two fresh processes (torch import) over 30 real images
def test_real_smoke_images_through_the_command(checkpoint, shared_data, tmp_path):
    """The real COCO images (random weights: the pipeline, not accuracy) via the installed ``lgrnet`` script."""
    smoke = shared_data / "real_smoke"
    rows = [json.loads(line) for line in (smoke / "manifest.jsonl").read_text().splitlines() if line.strip()]
    requests = tmp_path / "requests.jsonl"
    requests.write_text("".join(json.dumps({"id": r["id"], "image": str(smoke / r["image"]),
                                            "expression": r["expression"]}) + "\n" for r in rows))
    output = tmp_path / "predictions.jsonl"
    script = Path(sys.executable).with_name("lgrnet")
    done = subprocess.run([str(script), "predict", "--checkpoint", str(checkpoint), "--input", str(requests),
                           "--output", str(output), "--batch-size", "8"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "predict:" in done.stderr  # the progress bar
    predictions = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(predictions) == len(rows) >= 3
    for row, prediction in zip(rows, predictions):
        assert prediction["id"] == row["id"]
        width, height = Image.open(smoke / row["image"]).size
        assert prediction["image_size"] == [width, height] == [row["width"], row["height"]]
        x1, y1, x2, y2 = prediction["box_xyxy"]
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
    # One bad image through the real process: non-zero exit, one line on stderr.
    bad = subprocess.run([str(script), "predict", "--checkpoint", str(checkpoint), "--image", str(requests),
                          "--text", "zebra"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "requests.jsonl" in bad.stderr
