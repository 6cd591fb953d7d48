"""``lgrnet demo --checkpoint CKPT [--host 127.0.0.1] [--port 7860]``: the Gradio web demo."""

from __future__ import annotations

import argparse
import importlib.util

from lgrnet.commands.options import add_model_command
from lgrnet.errors import LGRNetError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = add_model_command(subparsers, "demo",
                               help="web demo: upload an image, type an expression, see the box and the attention maps",
                               description="Serve the LGR-NET web demo (Gradio) for a trained checkpoint.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.port < 65536:
        raise LGRNetError(f"--port {args.port}: expected 1..65535")
    # Whether gradio is there, without importing it (seconds): a bad checkpoint is reported first and fast.
    if importlib.util.find_spec("gradio") is None:
        raise LGRNetError("the demo needs gradio: pip install -e '.[demo]' in the lgrnet checkout")
    from lgrnet.inference.predictor import Predictor

    predictor = Predictor.from_pretrained(args.checkpoint, device=args.device, dtype=args.precision)
    from lgrnet.demo.app import launch

    print(f"lgrnet demo: {args.checkpoint} ({predictor.config.name}); Ctrl-C stops the server", flush=True)
    try:
        launch(predictor, host=args.host, port=args.port)
    except OSError as exc:  # port taken, address not available on this machine
        raise LGRNetError(f"cannot serve on {args.host}:{args.port}: {str(exc).splitlines()[0]}") from None
    return 0
