"""``lgrnet export onnx``: a trained model as an ONNX graph for onnxruntime (or any ONNX runtime)::

    lgrnet export onnx --checkpoint CKPT --out model.onnx [--opset N] [--dtype fp32|fp16]

Beside ``model.onnx`` it writes ``model.json`` (what the processor needs: canvas size, normalisation, tokenizer,
text length; the model's config; a ``schema_version``) and ``model.tokenizer/``. The graph takes letterboxed
pixels, their padding mask, token ids and the attention mask for any batch size, and returns the box and the
coordinate on the canvas (for a model with the generalized head also every token's box and score logit);
``Predictor.from_pretrained("model.onnx", backend="onnxruntime")`` runs it with the same pre- and post-processing
as the PyTorch model, boxes, scores and threshold included.
"""

from __future__ import annotations

import argparse
import time

from lgrnet.errors import LGRNetError

DTYPES = ("fp32", "fp16")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a trained model to another format (ONNX)",
                                   description="Export a trained LGR-NET to another format.")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT", required=True)
    onnx = formats.add_parser(
        "onnx", help="an ONNX graph (dynamic batch) + the JSON and tokenizer the processor needs",
        description="Export a trained LGR-NET as an ONNX graph with a dynamic batch axis, from letterboxed pixels, "
        "pad mask, token ids and attention mask to the box and the coordinate (and, for a model with the "
        "generalized head, every token's box and score logit); beside it a JSON (same name, "
        ".json) with what the pre- and post-processing need and the tokenizer's files (NAME.tokenizer/).")
    onnx.add_argument("--checkpoint", required=True,
                      help="the model to export: a model folder, a training output folder, a shipped model name "
                      "(synthref) or a hub id")
    onnx.add_argument("--out", required=True, metavar="MODEL.onnx", help="the graph to write")
    onnx.add_argument("--opset", type=int, help="ONNX opset to write (18 or newer; default: the exporter's)")
    onnx.add_argument("--dtype", choices=DTYPES, default="fp32",
                      help="weight precision; inputs and outputs stay float32 (fp16 is for GPU runtimes) "
                      "(default: %(default)s)")
    onnx.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lgrnet.inference.onnx import check_export_paths, check_opset

    check_export_paths(args.out, "--out")
    check_opset(args.opset)

    from lgrnet.inference.onnx import export_onnx
    from lgrnet.model.io import load_model
    from lgrnet.model.registry import caveat_for, resolve_model

    folder = resolve_model(args.checkpoint, "--checkpoint")
    model, config = load_model(folder, device="cpu", what="--checkpoint")
    start = time.perf_counter()
    written = export_onnx(model, config, args.out, opset=args.opset, dtype=args.dtype, caveat=caveat_for(folder))
    seconds = time.perf_counter() - start
    print(f"wrote {written.onnx_path} (opset {written.opset}, {written.dtype} weights, dynamic batch) in "
          f"{seconds:.0f} s")
    print(f"wrote {written.sidecar_path} and {written.tokenizer_dir}/ (the processor's settings and tokenizer)")
    if written.max_abs_diff is None:
        print("not checked: onnxruntime is not installed")
    else:
        print(f"checked: onnxruntime vs PyTorch on a sample batch, largest difference {written.max_abs_diff:.2g}")
    if args.dtype == "fp32" and written.max_abs_diff is not None and written.max_abs_diff > 1e-3:
        raise LGRNetError(f"the exported graph differs from PyTorch by {written.max_abs_diff:.2g} on a sample batch")
    return 0
