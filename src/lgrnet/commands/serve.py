"""``lgrnet serve``: an HTTP server that grounds expressions in uploaded images, batching concurrent requests.

    lgrnet serve --checkpoint CKPT [--host 127.0.0.1] [--port 8000] [--max-batch 16] [--max-wait-ms 5]

``POST /v1/ground`` (multipart ``image`` + ``expression`` fields, or JSON with a base64 ``image``), ``GET
/v1/model``, ``GET /healthz``; the OpenAPI page is at ``/docs``. Needs the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from lgrnet.commands.options import add_model_command
from lgrnet.errors import LGRNetError


def register(subparsers: argparse._SubParsersAction) -> None:
    from lgrnet.serve.limits import MIB, ServerLimits  # torch-free

    defaults = ServerLimits()
    parser = add_model_command(subparsers, "serve", help="serve a model over HTTP (batches concurrent requests)",
                               description="Serve a trained LGR-NET over HTTP: POST /v1/ground, GET /v1/model, "
                               "GET /healthz, OpenAPI page at /docs. Concurrent requests share forward passes.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    batching = parser.add_argument_group("batching")
    batching.add_argument("--max-batch", type=int, default=defaults.max_batch,
                          help="most expressions in one forward pass; 1 turns batching off (default: %(default)s)")
    batching.add_argument("--max-wait-ms", type=float, default=defaults.max_wait_ms,
                          help="how long the first expression of a batch waits for others (default: %(default)s)")
    batching.add_argument("--max-pending", type=int, default=defaults.max_pending,
                          help="expressions waiting beyond which requests get 429 (default: %(default)s)")
    limits = parser.add_argument_group("request limits")
    limits.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / MIB,
                        help="largest request body in MiB (default: %(default)s)")
    limits.add_argument("--max-image-pixels", type=int, default=defaults.max_image_pixels,
                        help="largest image, width x height (default: %(default)s)")
    limits.add_argument("--max-expressions", type=int, default=defaults.max_expressions,
                        help="most expressions per request (default: %(default)s)")
    limits.add_argument("--max-expression-chars", type=int, default=defaults.max_expression_chars,
                        help="longest expression in characters (default: %(default)s)")
    limits.add_argument("--image-root", metavar="DIR",
                        help="let JSON requests name an image file under DIR (\"image_path\"); off by default")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default: %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from lgrnet.serve.limits import MIB, ServerLimits

    if not 0 <= args.port <= 65535:
        raise LGRNetError(f"--port {args.port}: expected 0-65535")
    if not args.max_body_mb > 0:
        raise LGRNetError(f"--max-body-mb must be above 0, got {args.max_body_mb}")
    limits = ServerLimits(
        max_body_bytes=max(int(args.max_body_mb * MIB), 1),
        max_image_pixels=args.max_image_pixels,
        max_expressions=args.max_expressions,
        max_expression_chars=args.max_expression_chars,
        max_pending=args.max_pending,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        image_root=Path(args.image_root) if args.image_root else None,
    )
    try:
        import uvicorn

        from lgrnet.serve.app import create_app
    except ImportError as exc:
        raise LGRNetError(f"the server needs the serve extra: pip install 'lgrnet[serve]' ({exc})") from None
    from lgrnet.inference.predictor import Predictor

    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, dtype=args.precision,
                                          batch_size=limits.max_batch, max_image_pixels=limits.max_image_pixels)
    if predictor.caveat:
        print(f"lgrnet serve: note: {predictor.caveat}", file=sys.stderr)
    app = create_app(predictor, limits)
    print(f"lgrnet serve: {predictor.config.name} on http://{args.host}:{args.port} (API page: /docs)",
          file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level))
    with contextlib.suppress(SystemExit):  # uvicorn exits when it cannot bind; the command says why on one line
        server.run()
    if not server.started:
        raise LGRNetError(f"could not listen on {args.host}:{args.port} (in use, or not an address of this machine)")
    return 0
