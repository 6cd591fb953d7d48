"""``lgrnet serve``: an HTTP server that grounds expressions in uploaded images, batching concurrent requests.

    lgrnet serve --checkpoint CKPT [--host 127.0.0.1] [--port 8000] [--max-batch 16] [--max-wait-ms 5] [--threshold S]

``POST /v1/ground`` (multipart ``image`` + ``expression`` fields, or JSON with a base64 ``image``), ``GET
/v1/model``, ``GET /healthz``; the OpenAPI page is at ``/docs``. Needs the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import sys
from pathlib import Path

from lgrnet.commands.options import add_model_command
from lgrnet.errors import LGRNetError

# (group, flag, type, help) of the flags that set a ServerLimits field of the same name.
_LIMIT_FLAGS = [
    ("batching", "--max-batch", int, "most expressions in one forward pass; 1 turns batching off"),
    ("batching", "--max-wait-ms", float, "how long the first expression of a batch waits for others"),
    ("batching", "--max-pending", int, "expressions waiting beyond which requests get 429"),
    ("request limits", "--max-image-pixels", int, "largest image, width x height"),
    ("request limits", "--max-expressions", int, "most expressions per request"),
    ("request limits", "--max-expression-chars", int, "longest expression in characters"),
]


def _field(flag: str) -> str:
    return flag.removeprefix("--").replace("-", "_")


def register(subparsers: argparse._SubParsersAction) -> None:
    from lgrnet.serve.limits import MIB, ServerLimits  # torch-free

    defaults = ServerLimits()
    parser = add_model_command(subparsers, "serve", help="serve a model over HTTP (batches concurrent requests)",
                               description="Serve a trained LGR-NET over HTTP: POST /v1/ground, GET /v1/model, "
                               "GET /healthz, OpenAPI page at /docs. Concurrent requests share forward passes.")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    groups = {name: parser.add_argument_group(name) for name in ("batching", "request limits")}
    for group, flag, kind, text in _LIMIT_FLAGS:
        groups[group].add_argument(flag, type=kind, default=getattr(defaults, _field(flag)),
                                   help=f"{text} (default: %(default)s)")
    limits = groups["request limits"]
    limits.add_argument("--max-body-mb", type=float, default=defaults.max_body_bytes / MIB,
                        help="largest request body in MiB (default: %(default)s)")
    limits.add_argument("--image-root", metavar="DIR",
                        help="let JSON requests name an image file under DIR (\"image_path\"); off by default")
    parser.add_argument("--threshold", type=float, metavar="SCORE",
                        help="score (0 to 1) a box needs, for a model with the generalized head, in answers to "
                             "requests that give no threshold of their own (default: the threshold stored with the "
                             "model)")
    parser.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                        help="uvicorn's log level (default: %(default)s)")
    parser.set_defaults(func=run)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as ``MALLOC_ARENA_MAX`` would) unless the environment sets it: with one arena
    per thread, the batching worker and the request threads each keep freed memory, and the server's resident
    memory grows under load (docs/performance.md, "Serving"). True when the cap was set."""
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL("libc.so.6").mallopt(-8, arenas) == 1  # -8 = M_ARENA_MAX in glibc's malloc.h
    except (OSError, AttributeError):  # not glibc (e.g. musl): nothing to cap
        return False


def run(args: argparse.Namespace) -> int:
    from lgrnet.serve.limits import MIB, ServerLimits

    if not 0 <= args.port <= 65535:
        raise LGRNetError(f"--port {args.port}: expected 0-65535")
    if not args.max_body_mb > 0:
        raise LGRNetError(f"--max-body-mb must be above 0, got {args.max_body_mb}")
    limit_malloc_arenas()  # before the model and the server start their threads
    limits = ServerLimits(**{_field(flag): getattr(args, _field(flag)) for _, flag, _, _ in _LIMIT_FLAGS},
                          max_body_bytes=max(int(args.max_body_mb * MIB), 1),
                          image_root=Path(args.image_root) if args.image_root else None)
    try:
        import uvicorn

        from lgrnet.serve.app import create_app
    except ImportError as exc:
        raise LGRNetError(f"the server needs the serve extra: pip install 'lgrnet[serve]' ({exc})") from None
    from lgrnet.inference.predictor import Predictor, apply_threshold_option, check_threshold_option

    check_threshold_option(args.threshold)
    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, dtype=args.precision,
                                          batch_size=limits.max_batch, max_image_pixels=limits.max_image_pixels)
    apply_threshold_option(predictor, args.threshold)
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
