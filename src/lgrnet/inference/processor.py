"""The model's pre- and post-processing in one place: :class:`Processor` (in the manner of Hugging Face's processors).

Before the model: an image (file path, PIL image or array) becomes an upright RGB image, its long side is resized
to the model's canvas and centred on it (the evaluation letterbox, spec 11.4), and the expression is tokenised to
``text.max_length`` word pieces, exactly as evaluation prepares a sample. After the model: its canvas boxes and
points are mapped back to original-image pixels by the functions evaluation uses
(:func:`lgrnet.data.transforms.canvas_to_original` and :func:`~lgrnet.data.transforms.canvas_points_to_original`);
for a model with the generalized head, :meth:`Processor.post_process_sets` keeps the boxes whose score reaches a
threshold.

    >>> processor = Processor.from_config(config)                                  # doctest: +SKIP
    >>> inputs = processor("kitchen.jpg", "the red mug")                           # doctest: +SKIP
    >>> out = model(**inputs.batch.model_inputs())                                 # doctest: +SKIP
    >>> boxes, points = processor.post_process(out.pred_boxes, inputs.letterboxes, out.coord)  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from lgrnet.config import Config
from lgrnet.data.batch import Batch, SampleMeta
from lgrnet.data.dataset import tokenize
from lgrnet.data.transforms import EvalTransform, canvas_points_to_original, canvas_to_original
from lgrnet.errors import DataError
from lgrnet.inference.images import DEFAULT_MAX_PIXELS, ImageInput, as_rgb_image, describe

# Upper bound on expression length in characters; the model reads at most text.max_length word pieces anyway.
MAX_EXPRESSION_CHARS = 10_000


@dataclass(frozen=True)
class Letterbox:
    """Where the original image sits on the square model canvas: canvas = original * scale + offset."""

    original_size: tuple[int, int]  # (width, height)
    scale: tuple[float, float]  # (sx, sy)
    offset: tuple[float, float]  # (dx, dy) canvas pixels
    canvas_size: int

    def canvas_to_original_xy(self, x: float, y: float) -> tuple[float, float]:
        """A point in canvas pixels in original-image pixels (not clamped to the image)."""
        point = torch.tensor([[x, y]], dtype=torch.float64) / self.canvas_size
        mapped = canvas_points_to_original(point, [self], clamp=False)
        return float(mapped[0, 0]), float(mapped[0, 1])


@dataclass
class ProcessedSample:
    """One (image, expression) pair ready for the model (what :meth:`Processor.prepare` returns)."""

    image: torch.Tensor  # [3, S, S] float32, ImageNet-normalised, zero padding
    image_mask: torch.Tensor  # [S, S] bool, True = padding
    input_ids: list[int]  # exactly text.max_length long
    attention_mask: list[int]
    meta: SampleMeta  # the stripped expression, the image's name and the letterbox
    # The expression had more word pieces than the model reads (text.max_length): the tail was dropped.
    truncated: bool

    @property
    def letterbox(self) -> Letterbox:
        meta = self.meta
        return Letterbox(meta.original_size, meta.scale, meta.offset, meta.canvas_size)


@dataclass
class ProcessorOutput:
    """A batch the model takes (``batch.model_inputs()``) and, per sample, its letterbox and truncation flag."""

    batch: Batch  # no target boxes; batch.meta[i] holds sample i's expression, image name and letterbox
    letterboxes: list[Letterbox]
    truncated: list[bool]

    def __len__(self) -> int:
        return len(self.letterboxes)


class PostProcessed(NamedTuple):
    """Model outputs in original-image pixels, clamped to each image."""

    boxes: torch.Tensor  # [B, 4] float32 (x1, y1, x2, y2)
    points: torch.Tensor | None  # [B, 2] float64 (x, y); None when no coordinates were given


class Processor:
    """Prepares (image, expression) pairs for an LGR-NET and maps its outputs back to the images.

    ``image_size`` is the model's square canvas S, ``tokenizer`` a Hugging Face tokenizer matching the text
    encoder, ``max_length`` and ``lowercase`` the text settings (``config.model.text``); images above
    ``max_image_pixels`` are refused before they are decoded. :meth:`from_config` reads all of it from a config.
    """

    def __init__(self, image_size: int, tokenizer: Any, max_length: int, lowercase: bool = True,
                 max_image_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.image_size = int(image_size)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.lowercase = bool(lowercase)
        self.max_image_pixels = int(max_image_pixels)
        self.transform = EvalTransform(self.image_size)

    @classmethod
    def from_config(cls, config: Config, tokenizer: Any = None,
                    max_image_pixels: int = DEFAULT_MAX_PIXELS) -> Processor:
        """The processor of a model config; the tokenizer is built from ``config.model.text`` unless given."""
        text = config.model.text
        if tokenizer is None:
            from lgrnet.model.text import build_tokenizer

            tokenizer = build_tokenizer(text)
        return cls(config.model.image_size, tokenizer, text.max_length, text.lowercase, max_image_pixels)

    def load_image(self, image: ImageInput) -> Image.Image:
        """An upright RGB PIL image (DataError naming the image when it cannot be used)."""
        return as_rgb_image(image, self.max_image_pixels)

    def prepare(self, image: ImageInput, expression: str, name: str | None = None) -> ProcessedSample:
        """Check the expression, decode and letterbox the image, tokenise; DataError naming what is wrong.
        ``name`` is the image's name in the sample's meta (default: the path, or a description of the input)."""
        text = check_expression(expression)
        rgb = self.load_image(image)
        sample = self.transform(rgb, text)
        pieces = self.count_word_pieces(sample.expression)
        if pieces == 0:
            raise DataError(f"expression {_preview(text)}: no word the model's tokenizer can read")
        ids, mask = tokenize(self.tokenizer, sample.expression, self.max_length, self.lowercase)
        meta = SampleMeta(id="", expression=sample.expression, image=name or describe(image), original_size=rgb.size,
                          scale=sample.scale, offset=sample.offset, canvas_size=self.image_size)
        return ProcessedSample(sample.image, sample.mask, ids, mask, meta,
                               truncated=pieces + self._special_tokens() > self.max_length)

    def collate(self, samples: Sequence[ProcessedSample]) -> ProcessorOutput:
        """Stack prepared samples into one batch."""
        batch = Batch(
            images=torch.stack([s.image for s in samples]),
            image_mask=torch.stack([s.image_mask for s in samples]),
            input_ids=torch.tensor([s.input_ids for s in samples], dtype=torch.int64),
            attention_mask=torch.tensor([s.attention_mask for s in samples], dtype=torch.int64),
            meta=[s.meta for s in samples],
        )
        return ProcessorOutput(batch, [s.letterbox for s in samples], [s.truncated for s in samples])

    def __call__(self, images: ImageInput | Sequence[ImageInput], expressions: str | Sequence[str]) -> ProcessorOutput:
        """One image and one expression, one image and several expressions (decoded once), or equal-length lists
        of images and expressions -> one batch. The first bad input raises its DataError."""
        if isinstance(expressions, str):
            expressions = [expressions]
        if not isinstance(expressions, Sequence) or not expressions:
            raise DataError("expression: expected a string or a non-empty list of strings")
        if _is_one_image(images):
            rgb, name = self.load_image(images), describe(images)
            return self.collate([self.prepare(rgb, text, name) for text in expressions])
        if not isinstance(images, Sequence) or len(images) != len(expressions):
            count = len(images) if isinstance(images, Sequence) else type(images).__name__
            raise DataError(f"images: expected one image or one per expression ({len(expressions)}), got {count}")
        return self.collate([self.prepare(image, text) for image, text in zip(images, expressions)])

    def post_process(self, pred_boxes: torch.Tensor, letterboxes: Sequence[Letterbox | SampleMeta],
                     coords: torch.Tensor | None = None) -> PostProcessed:
        """The model's canvas outputs in original-image pixels, clamped to each image.

        ``pred_boxes`` [B, 4] are (cx, cy, w, h) / S on the canvas, first clamped to the canvas as evaluation
        does; ``coords`` [B, 2] (or more columns, the first two used) are (x, y) / S on the canvas. ``letterboxes``
        are the per-sample :class:`Letterbox` (or the batch's ``SampleMeta``).
        """
        boxes = canvas_to_original(pred_boxes.float().cpu().clamp(0.0, 1.0), letterboxes, clamp=True)
        points = None
        if coords is not None:
            flat = coords.float().cpu().reshape(len(letterboxes), -1)[:, :2]
            points = canvas_points_to_original(flat, letterboxes, clamp=True)
        return PostProcessed(boxes, points)

    def post_process_sets(self, token_boxes: torch.Tensor, token_logits: torch.Tensor,
                          letterboxes: Sequence[Letterbox | SampleMeta], threshold: float,
                          nms_iou: float | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A generalized head's token boxes in original-image pixels: per sample, the boxes whose score
        sigmoid(logit) is at least ``threshold``, highest score first, as ``(boxes [n, 4] x1y1x2y2, scores [n])``;
        with ``nms_iou`` (``model.grec.nms_iou``), duplicates are then suppressed in original pixels
        (:func:`~lgrnet.model.grec.select_boxes`).

        ``token_boxes`` [B, K, 4] are (cx, cy, w, h) / S on the canvas (clamped to it first, as
        :meth:`post_process` does), ``token_logits`` [B, K] the tokens' score logits.
        """
        from lgrnet.model.grec import select_boxes

        # Every token's box in original pixels first, so that the suppression measures IoU as evaluation does.
        canvas = token_boxes.float().cpu().clamp(0.0, 1.0)
        batch, tokens = canvas.shape[:2]
        per_token = [letterbox for letterbox in letterboxes for _ in range(tokens)]
        boxes = canvas_to_original(canvas.reshape(-1, 4), per_token, clamp=True).reshape(batch, tokens, 4)
        return select_boxes(boxes, token_logits.float().cpu(), threshold, nms_iou)

    def count_word_pieces(self, expression: str) -> int:
        """Word pieces of the expression, special tokens not counted, before any truncation."""
        text = expression.lower() if self.lowercase else expression
        return len(self.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])

    def _special_tokens(self) -> int:
        if hasattr(self.tokenizer, "num_special_tokens_to_add"):
            return int(self.tokenizer.num_special_tokens_to_add())
        return 2  # [CLS] and [SEP]

    def __repr__(self) -> str:
        return (f"Processor(image_size={self.image_size}, max_length={self.max_length}, lowercase={self.lowercase}, "
                f"tokenizer={type(self.tokenizer).__name__})")


def check_expression(expression: object) -> str:
    """The expression, stripped; DataError when it is not text, is empty or absurdly long."""
    if not isinstance(expression, str):
        raise DataError(f"expression: expected a string, got {type(expression).__name__}")
    text = expression.strip()
    if not text:
        raise DataError("expression: empty (type a phrase describing one object)")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise DataError(f"expression: {len(text):,} characters, above the limit of {MAX_EXPRESSION_CHARS:,}")
    return text


def _is_one_image(image: object) -> bool:
    return isinstance(image, (str, os.PathLike, Image.Image, np.ndarray))


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
