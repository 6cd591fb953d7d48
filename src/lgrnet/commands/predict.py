"""``lgrnet predict``: ground one expression in one image, or many (image, expression) pairs from a JSONL file.

One pair::

    lgrnet predict --checkpoint CKPT --image kitchen.jpg --text "the red mug" [--out overlay.png] [--json]

Many pairs (one JSON object per line: ``{"image": "...", "expression": "..."}``, optional ``"id"``; relative image
paths are taken relative to the JSONL file)::

    lgrnet predict --checkpoint CKPT --input requests.jsonl --output predictions.jsonl
    lgrnet predict --checkpoint CKPT --input requests.jsonl --output results.json --format coco

Boxes are (x1, y1, x2, y2) in pixels of the original image (``box_xyxy``). A model with the generalized head
(``model.grec.enabled``) returns zero, one or many boxes: ``boxes`` with their ``scores`` (highest first) and
``found``, the boxes whose score reaches ``--threshold`` (default: the model's own); ``box_xyxy`` stays its
highest-scoring box, found or not. A classic model's record has ``boxes`` = [box_xyxy], ``scores`` null and
``found`` true. ``--format coco`` writes COCO detection results instead (``[{"image_id", "category_id", "bbox":
[x, y, w, h], "score"}]``, what pycocotools' ``COCO.loadRes`` reads; one entry per box found, with its score, or
score 1.0 for a classic model): the image id comes from a request's ``"image_id"`` or from a COCO file name.

A bad line or image is reported on stderr with its line number and skipped; the other lines are still written.
The exit status is 0 when every line was predicted, 1 when some were skipped, 2 on a fatal error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from lgrnet.commands.options import add_model_command
from lgrnet.errors import DataError, LGRNetError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_model_command(subparsers, "predict",
                               help="ground an expression in an image (or many, from a JSONL file)",
                               description="Ground a referring expression in an image with a trained LGR-NET "
                               "checkpoint.")
    single = parser.add_argument_group("one image")
    single.add_argument("--image", help="image file")
    single.add_argument("--text", help="the referring expression")
    single.add_argument("--out", metavar="IMAGE.png|.jpg",
                        help="write the image at its own size with the box(es) (PNG or JPEG, by suffix); with "
                             "--attention a figure of 320 px high tiles with the heat maps")
    single.add_argument("--json", action="store_true", help="print the prediction as one JSON object")
    single.add_argument("--gt", metavar="X1,Y1,X2,Y2", help="ground-truth box in image pixels, drawn in --out")
    single.add_argument("--attention", action="store_true",
                        help="add per-layer attention heat maps and word attention to --out (and to --json)")
    single.add_argument("--layers", metavar="I,J", help="layers (1-based) to draw with --attention; default: all")
    many = parser.add_argument_group("many pairs")
    many.add_argument("--input", help="JSONL file of {\"image\": ..., \"expression\": ...} requests")
    many.add_argument("--output", help="JSONL file to write the predictions to")
    many.add_argument("--format", choices=("jsonl", "coco"), default="jsonl",
                      help="jsonl: one prediction per line (box_xyxy pixels); coco: one COCO results JSON list "
                           "(bbox x, y, w, h pixels; one entry per box found with its score, score 1.0 for a "
                           "classic model) (default: %(default)s)")
    parser.add_argument("--threshold", type=float, metavar="SCORE",
                        help="score (0 to 1) a box needs, for a model with the generalized head (default: the "
                             "threshold stored with the model)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per forward pass (JSONL mode)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (JSONL mode)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    single = args.image is not None or args.text is not None
    many = args.input is not None or args.output is not None
    if single == many:
        raise LGRNetError("give either --image and --text, or --input and --output")
    if single and (args.image is None or args.text is None):
        raise LGRNetError("--image and --text go together")
    if many and (args.input is None or args.output is None):
        raise LGRNetError("--input and --output go together")
    if single and args.format != "jsonl":
        raise LGRNetError(f"--format {args.format} goes with --input and --output")
    if args.batch_size < 1:
        raise LGRNetError(f"--batch-size must be at least 1, got {args.batch_size}")
    gt = _parse_box(args.gt) if args.gt else None
    layers = _parse_layers(args.layers) if args.layers else None
    _check_paths(args, single)

    from lgrnet.inference.predictor import Predictor, apply_threshold_option, check_threshold_option

    check_threshold_option(args.threshold)
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, dtype=args.precision,
                                          batch_size=args.batch_size)
    apply_threshold_option(predictor, args.threshold)
    if single:
        return _run_single(predictor, args, gt, layers)
    return _run_many(predictor, Path(args.input), Path(args.output), args.batch_size, not args.no_progress,
                     args.format)


def _check_paths(args: argparse.Namespace, single: bool) -> None:
    """Inputs exist and outputs can be written, before the model is loaded."""
    from lgrnet.output_paths import check_output_file

    if single:
        if not Path(args.image).is_file():
            raise DataError(f"--image {args.image}: no such file")
        if args.out:
            from lgrnet.inference.visualize import IMAGE_FORMATS

            if Path(args.out).suffix.lower() not in IMAGE_FORMATS:
                raise LGRNetError(f"--out {args.out}: unknown image suffix; use one of {', '.join(IMAGE_FORMATS)}")
            check_output_file(args.out, "--out")
    else:
        if not Path(args.input).is_file():
            raise DataError(f"--input {args.input}: no such file")
        check_output_file(args.output, "--output")


def _run_single(predictor, args: argparse.Namespace, gt, layers) -> int:
    from lgrnet.inference.predictor import PREDICTION_SCHEMA_VERSION

    num_layers = int(predictor.config.model.num_layers)
    if layers is not None and max(layers) > num_layers:
        raise LGRNetError(f"--layers {args.layers}: the model has {num_layers} layers")
    image = predictor.processor.load_image(args.image)  # decoded once, for the prediction and the picture
    prediction = predictor.predict(image, args.text, attention=args.attention)
    if args.out:
        from lgrnet.inference.visualize import draw_prediction, render_figure, save_image

        if args.attention:
            chosen = [v - 1 for v in layers] if layers is not None else None
            picture = render_figure(image, prediction, layers=chosen, ground_truth=gt)
        else:  # the image as it is, so that the box's pixel coordinates are the printed ones
            picture = draw_prediction(image, prediction, ground_truth=gt, caption=False)
        save_image(picture, args.out)
    record = {"schema_version": PREDICTION_SCHEMA_VERSION, "image": args.image,
              **prediction.to_dict(attention=args.attention)}
    if args.out:
        record["overlay"] = args.out
    if predictor.caveat:
        record["model_caveat"] = predictor.caveat
        print(f"lgrnet predict: note: {predictor.caveat}", file=sys.stderr)
    if args.json:
        print(json.dumps(record, ensure_ascii=False))
    else:
        print(prediction.describe("\n  "))
        if prediction.expression_truncated:
            print(f"note: the expression was cut to {predictor.max_length} word pieces", file=sys.stderr)
        if args.out:
            print(f"wrote {args.out}")
    return 0


def _read_requests(path: Path):
    """Yield (line number, request dict or error message) for each non-blank line."""
    base = path.resolve().parent
    with path.open(encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, f"not valid JSON ({exc.msg})"
                continue
            if not isinstance(request, dict):
                yield number, "expected a JSON object"
                continue
            image = request.get("image")
            expression = request.get("expression", request.get("text"))
            if not isinstance(image, str) or not image:
                yield number, "missing \"image\" (a path)"
                continue
            if not isinstance(expression, str):
                yield number, "missing \"expression\" (a string)"
                continue
            image_path = Path(image) if Path(image).is_absolute() else base / image
            yield number, {"id": request.get("id"), "image": image, "path": image_path, "expression": expression,
                           "image_id": request.get("image_id")}


def _run_many(predictor, source: Path, target: Path, batch_size: int, progress: bool, fmt: str = "jsonl") -> int:
    from tqdm import tqdm

    from lgrnet.inference.export import to_coco_results
    from lgrnet.inference.predictor import PREDICTION_SCHEMA_VERSION

    with source.open("rb") as handle:
        total = sum(1 for line in handle if line.strip())
    target.parent.mkdir(parents=True, exist_ok=True)
    written = skipped = unmatched = 0
    bar = tqdm(total=total, unit="pair", desc="predict", disable=not progress, file=sys.stderr)
    if predictor.caveat:
        print(f"lgrnet predict: note: {predictor.caveat}", file=sys.stderr)

    def report(number: int, message: str) -> None:
        nonlocal skipped
        skipped += 1
        tqdm.write(f"lgrnet predict: {source}:{number}: skipped: {message}", file=sys.stderr)

    def flush(batch: list[tuple[int, dict[str, Any]]], out) -> None:
        nonlocal written, unmatched
        results = predictor.predict_many([(r["path"], r["expression"]) for _, r in batch], batch_size=batch_size)
        for (number, request), result in zip(batch, results):
            if isinstance(result, LGRNetError):
                report(number, str(result))
                continue
            record = {"schema_version": PREDICTION_SCHEMA_VERSION, "line": number, "id": request["id"],
                      "image": request["image"], **result.to_dict()}
            if fmt == "coco":  # written as one list at the end
                try:
                    coco.extend(to_coco_results([{**record, "image_id": request["image_id"]}]))
                except LGRNetError as exc:
                    report(number, str(exc).removeprefix("prediction 0: "))
                    continue
            else:
                if predictor.caveat:
                    record["model_caveat"] = predictor.caveat
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
            unmatched += not result.found
        bar.update(len(batch))

    coco: list[dict[str, Any]] = []
    with target.open("w", encoding="utf-8") as out:
        batch: list[tuple[int, dict[str, Any]]] = []
        for number, request in _read_requests(source):
            if isinstance(request, str):
                report(number, request)
                bar.update(1)
                continue
            batch.append((number, request))
            if len(batch) == batch_size:
                flush(batch, out)
                batch = []
        if batch:
            flush(batch, out)
        if fmt == "coco":
            json.dump(coco, out)
    bar.close()
    summary = f"lgrnet predict: wrote {written} predictions to {target}"
    if predictor.generalized:
        summary += f" ({unmatched} with no match at score {predictor.threshold:.2f})"
    print(summary + (f", skipped {skipped} lines" if skipped else ""), file=sys.stderr)
    return 1 if skipped else 0


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise LGRNetError(f"--gt {text!r}: expected four numbers X1,Y1,X2,Y2") from None
    if len(values) != 4:
        raise LGRNetError(f"--gt {text!r}: expected four numbers X1,Y1,X2,Y2")
    return values  # type: ignore[return-value]


def _parse_layers(text: str) -> list[int]:
    try:
        layers = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise LGRNetError(f"--layers {text!r}: expected 1-based layer numbers such as 1,3,6") from None
    if not layers or min(layers) < 1:
        raise LGRNetError(f"--layers {text!r}: expected 1-based layer numbers such as 1,3,6")
    return layers
