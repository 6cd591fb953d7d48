"""The web demo (``lgrnet demo``): upload an image, type an expression, see the box (for a model with the
generalized head: every box found with its score, or "no match"), the predicted coordinate point when the model's
coordinate head was trained, and the prediction token's attention maps (paper Fig. 5/6). Built with Gradio.

The request handler (:class:`DemoHandler`) is plain Python and never raises: every failure, from an undecodable
upload to an empty expression, comes back as a one-line message in the page, so no input can take the server down.
Uploads are capped in bytes (by Gradio, before they reach the handler) and in pixels; expressions in characters.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from lgrnet.errors import LGRNetError

log = logging.getLogger(__name__)

MAX_UPLOAD_MB = 10
MAX_PIXELS = 40_000_000
MAX_EXPRESSION_CHARS = 200


@dataclass
class DemoResult:
    overlay: Image.Image | None  # image with the box(es), the coordinate point (if trained) and caption
    attention: Image.Image | None  # heat maps of the layers and word attention
    result: dict[str, Any]  # JSON shown in the page: the prediction, or {"error": ...}
    message: str  # one line of status text


class DemoHandler:
    """Turns one (image file, expression) request into a :class:`DemoResult`; never raises."""

    def __init__(self, predictor: Any, max_pixels: int = MAX_PIXELS, max_chars: int = MAX_EXPRESSION_CHARS):
        self.predictor = predictor
        self.max_pixels = max_pixels
        self.max_chars = max_chars

    def __call__(self, image: Any, expression: str | None, layers: list[int] | None = None,
                 threshold: float | None = None) -> DemoResult:
        """``layers``: 1-based reasoning layers to draw heat maps for (default: all); ``threshold``: the score a
        generalized head's box needs (default: the predictor's)."""
        try:
            return self._run(image, expression, layers, threshold)
        except LGRNetError as exc:
            message = str(exc)
            if isinstance(image, str):  # name the upload as the user knows it, not by its server-side temp path
                message = message.replace(image, Path(image).name)
            return _failure(message)
        except Exception as exc:  # the server must survive anything a user can upload
            log.exception("demo request failed")
            return _failure(f"internal error ({type(exc).__name__}); the request was not processed")

    def _run(self, image: Any, expression: str | None, layers: list[int] | None,
             threshold: float | None) -> DemoResult:
        from lgrnet.inference.images import as_rgb_image
        from lgrnet.inference.visualize import draw_prediction, render_figure

        if image is None:
            return _failure("upload an image first (or pick an example below)")
        text = (expression or "").strip()
        if not text:
            return _failure("type an expression describing one object, e.g. \"the red circle on the left\"")
        if len(text) > self.max_chars:
            return _failure(f"the expression has {len(text)} characters; the demo accepts at most {self.max_chars}")
        rgb = as_rgb_image(image, max_pixels=self.max_pixels)
        prediction = self.predictor.predict(rgb, text, attention=True, threshold=threshold)
        overlay = draw_prediction(rgb, prediction)
        chosen = None
        if layers:
            count = prediction.num_layers
            chosen = sorted({int(v) - 1 for v in layers if 1 <= int(v) <= count}) or None
        figure = render_figure(rgb, prediction, layers=chosen, tile_height=260)
        result = prediction.to_dict()
        if prediction.generalized:  # every box found with its score, or "no match ..." first thing in the line
            message = prediction.describe("; ")
        else:
            message = (f"box {_fmt(prediction.box_xyxy)} px, coordinate ({prediction.coord[0]:.3f}, "
                       f"{prediction.coord[1]:.3f})")
        if prediction.expression_truncated:
            message += f"; note: only the first {self.predictor.max_length} word pieces were read"
        return DemoResult(overlay, figure, result, message)


def _failure(message: str) -> DemoResult:
    return DemoResult(None, None, {"error": message}, f"Error: {message}")


def _fmt(box: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in box) + ")"


def make_examples(folder: str | Path, count: int = 3) -> list[tuple[str, str]]:
    """``count`` SynthRef scenes as PNG files in ``folder`` with one expression each: (path, expression)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    try:
        from lgrnet.synth.generate import make_sample

        for index in range(count):
            _scene, image, entries, _ = make_sample(seed=0, split="val", index=index, num_expressions=1)
            path = folder / f"synthref-{index}.png"
            image.save(path, format="PNG")
            examples.append((str(path), entries[0]["expression"]))
    except Exception:  # the generator is optional for the demo: fall back to three hand-drawn scenes
        log.warning("SynthRef generator unavailable; using built-in example scenes", exc_info=True)
        examples = _fallback_examples(folder, count)
    return examples


def _fallback_examples(folder: Path, count: int) -> list[tuple[str, str]]:
    scenes = [
        ([("ellipse", (40, 60, 140, 160), "red"), ("rectangle", (200, 50, 300, 150), "blue")], "the red circle"),
        ([("rectangle", (30, 120, 120, 200), "green"), ("ellipse", (180, 30, 290, 140), "orange")],
         "the orange circle at the top right"),
        ([("ellipse", (20, 20, 90, 90), "purple"), ("ellipse", (150, 100, 300, 220), "purple")],
         "the bigger purple circle"),
    ]
    examples = []
    for index, (shapes, expression) in enumerate(scenes[:count]):
        image = Image.new("RGB", (320, 240), (235, 230, 220))
        draw = ImageDraw.Draw(image)
        for kind, box, colour in shapes:
            getattr(draw, kind)(box, fill=colour)
        path = folder / f"example-{index}.png"
        image.save(path, format="PNG")
        examples.append((str(path), expression))
    return examples


def _undecoded_upload(component: Any) -> Any:
    """Make a ``gr.Image`` hand the handler the uploaded file's path without decoding it.

    Gradio's own ``Image.preprocess`` opens every upload with PIL first, so an undecodable file ends in a generic
    "could not preprocess" error; here the handler decodes it (bomb check included) and says what is wrong. (An
    instance attribute rather than a subclass: gradio writes a .pyi stub beside any module defining a component.)
    """
    import gradio as gr

    decode = component.preprocess

    def preprocess(payload: Any) -> Any:
        if payload is None:
            return None
        if payload.path and not (payload.url or "").startswith("data:"):
            return str(payload.path)
        try:  # pasted (base64) images: gradio decodes them
            return decode(payload)
        except Exception as exc:
            raise gr.Error(f"the image could not be read ({type(exc).__name__})") from None

    component.preprocess = preprocess
    return component


def page_intro(max_chars: int = MAX_EXPRESSION_CHARS, max_pixels: int = MAX_PIXELS,
               max_upload_mb: int = MAX_UPLOAD_MB, caveat: str | None = None, generalized: bool = False,
               threshold: float | None = None, coord_trained: bool = False) -> str:
    """The page's heading and instructions, stating the limits the server enforces, what the drawing shows for
    this model (``generalized``: it has the generalized head, with ``threshold``; ``coord_trained``: its
    coordinate head was trained by a loss) and, for a shipped model, what it cannot do."""
    if generalized:
        names = "that names what to find: one object, several, or one that may not be there"
        cut = f" {threshold:.2f}" if threshold is not None else " the model's threshold"
        boxes = (f"Red: every box the model found, with its score (boxes scoring under{cut} are left out - the "
                 "**Score threshold** slider moves the cut -; **no match** when none is left)")
    else:
        names, boxes = "that names one object", "Red: predicted box"
    if coord_trained:
        point = "yellow dot: the point the model's coordinate head predicts from the expression alone"
    else:
        point = ("no yellow dot: this model's coordinate head has no loss of its own (as in the paper), so its "
                 "point need not mark the object and is not drawn (the JSON still lists it as `coord`)")
    text = (
        "# LGR-NET: ground a phrase in an image\n"
        f"Upload an image (at most {max_upload_mb} MB and {max_pixels / 1e6:g} megapixels), type an expression "
        f"{names} (at most {max_chars} characters) and press **Locate**. {boxes}; {point}; heat maps: where the "
        "prediction token looks in each reasoning layer."
    )
    if caveat:
        text += f"\n\n**Note:** {caveat[0].upper() + caveat[1:]}. For real images, serve a model trained on your " \
                "own data (`lgrnet train --config configs/custom.yaml`)."
    return text


def build_app(predictor: Any, examples: list[tuple[str, str]] | None = None,
              max_chars: int = MAX_EXPRESSION_CHARS, max_pixels: int = MAX_PIXELS):
    """The Gradio Blocks app around a :class:`~lgrnet.inference.predictor.Predictor`."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local demo
    import gradio as gr

    handler = DemoHandler(predictor, max_pixels=max_pixels, max_chars=max_chars)
    if examples is None:
        examples = make_examples(Path(tempfile.mkdtemp(prefix="lgrnet-demo-")))

    def respond(image_path: str | None, expression: str | None, layers: list[int] | None,
                threshold: float | None = None):
        out = handler(image_path, expression, layers, threshold)
        return out.overlay, out.attention, out.result, out.message

    generalized = bool(getattr(predictor, "generalized", False))

    with gr.Blocks(title="LGR-NET demo") as app:
        gr.Markdown(page_intro(max_chars=max_chars, max_pixels=max_pixels, caveat=getattr(predictor, "caveat", None),
                               generalized=generalized,
                               threshold=getattr(predictor, "threshold", None),
                               coord_trained=bool(getattr(predictor, "coord_trained", False))))
        with gr.Row():
            with gr.Column(scale=1):
                # "filepath" so that the handler decodes (and bomb-checks) the upload itself.
                image_in = _undecoded_upload(gr.Image(type="filepath", image_mode=None, label="Image",
                                                      elem_id="image-in", sources=["upload", "clipboard"], height=320))
                text_in = gr.Textbox(label="Expression", max_lines=2, max_length=max_chars, elem_id="expression",
                                     placeholder="e.g. the small blue square left of the circle")
                count = int(predictor.config.model.num_layers)
                default = list(range(1, count + 1)) if count <= 3 else [1, (count + 1) // 2, count]
                layers_in = gr.CheckboxGroup(choices=[(f"layer {i}", i) for i in range(1, count + 1)], value=default,
                                             label="Attention maps of layers", elem_id="layers")
                threshold_in = gr.Slider(0.0, 1.0, value=predictor.threshold, step=0.01, label="Score threshold",
                                         elem_id="threshold") if generalized else None
                button = gr.Button("Locate", variant="primary", elem_id="locate")
                status = gr.Textbox(label="Result", interactive=False, elem_id="status")
            with gr.Column(scale=1):
                overlay_out = gr.Image(type="pil", label="Prediction", elem_id="overlay", format="png", height=320)
                result_out = gr.JSON(label="Prediction (JSON)", elem_id="result", height=220)
        attention_out = gr.Image(type="pil", label="Attention per layer (heat maps, words)", elem_id="attention",
                                 format="png")
        gr.Examples(examples=[list(e) for e in examples], inputs=[image_in, text_in], label="SynthRef examples",
                    elem_id="examples")
        outputs = [overlay_out, attention_out, result_out, status]
        inputs = [image_in, text_in, layers_in] + ([threshold_in] if threshold_in is not None else [])
        button.click(respond, inputs=inputs, outputs=outputs, api_name="locate")
        text_in.submit(respond, inputs=inputs, outputs=outputs)
    return app


def launch(predictor: Any, host: str = "127.0.0.1", port: int = 7860, **kwargs: Any) -> None:
    """Build the app and serve it (blocks until interrupted)."""
    app = build_app(predictor)
    app.queue(default_concurrency_limit=1)
    app.launch(server_name=host, server_port=port, max_file_size=f"{MAX_UPLOAD_MB}mb", show_error=True, **kwargs)
