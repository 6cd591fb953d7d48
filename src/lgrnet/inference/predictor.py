"""Grounding a phrase in your own image with a trained LGR-NET: ``Predictor.from_pretrained(...).predict(...)``.

The predictor wraps a model and its :class:`~lgrnet.config.Config`, runs the same evaluation pipeline as the
engine (letterbox to the model's canvas, spec section 11.4; tokenisation; one forward pass), and maps the
predicted canvas box back to original-image pixels. Results are typed :class:`Prediction` objects; on request they
carry the prediction token's attention over visual tokens and over words for every TCA/TCF layer (paper Fig. 5/6).

Checkpoints are the folders written by :func:`lgrnet.model.io.save_model` (``config.yaml`` + ``model.safetensors``),
such as the engine's ``checkpoints/<name>/``; a Hugging Face hub id works where the user has a network
(:class:`huggingface_hub.ModelHubMixin` supplies ``save_pretrained`` / ``push_to_hub``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub import ModelHubMixin
from PIL import Image

from lgrnet.config import Config
from lgrnet.errors import DataError, LGRNetError
from lgrnet.inference.attention import (
    Letterbox,
    attention_on_image,
    merge_word_pieces,
    split_visual_attention,
)
from lgrnet.inference.images import DEFAULT_MAX_PIXELS, ImageInput, as_rgb_image, describe

DTypeLike = str | torch.dtype | None

_DTYPES = {
    "fp32": None, "float32": None, "float": None,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}


@dataclass
class Prediction:
    """One grounded expression. Boxes and points are clamped to the image.

    ``box_xyxy`` is in original-image pixels, ``box_normalized`` is it divided by (W, H, W, H); ``coord`` is the
    model's predicted 2-D coordinate (paper III-B, the Textual Feature Extender) as (x, y) normalised to the
    original image, ``coord_xy`` the same point in pixels. Attention fields are filled only when asked for.
    """

    expression: str
    image_size: tuple[int, int]  # (width, height) of the (EXIF-upright) original image
    box_xyxy: tuple[float, float, float, float]
    box_normalized: tuple[float, float, float, float]
    coord: tuple[float, float]
    coord_xy: tuple[float, float]
    letterbox: Letterbox
    # Set when the expression had more word pieces than the model reads (text.max_length): the tail was ignored.
    expression_truncated: bool = False
    # Per layer, per feature level: the prediction token's attention over visual tokens as a [h, w] grid.
    visual_attention: list[list[np.ndarray]] | None = None
    # Per layer: attention over the text tokens in `tokens` ([CLS], word pieces, [SEP]).
    word_attention: list[np.ndarray] | None = None
    tokens: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.visual_attention or self.word_attention or [])

    def attention_map(self, layer: int = -1, normalize: bool = True) -> np.ndarray:
        """The layer's attention over visual tokens as an [H, W] map over the original image (levels summed)."""
        if self.visual_attention is None:
            raise LGRNetError("this prediction has no attention: call predict(..., attention=True)")
        return attention_on_image(self.visual_attention[layer], self.letterbox, normalize=normalize)

    def words(self, layer: int = -1) -> list[tuple[str, float]]:
        """(word, attention) pairs for a layer, word pieces merged and special tokens dropped."""
        if self.word_attention is None or self.tokens is None:
            raise LGRNetError("this prediction has no attention: call predict(..., attention=True)")
        return merge_word_pieces(self.tokens, self.word_attention[layer])

    def to_dict(self, attention: bool = False) -> dict[str, Any]:
        """JSON-ready dict (the CLI's output); attention as nested lists when asked for."""
        out: dict[str, Any] = {
            "expression": self.expression,
            "image_size": list(self.image_size),
            "box_xyxy": [round(v, 2) for v in self.box_xyxy],
            "box_normalized": [round(v, 6) for v in self.box_normalized],
            "coord": [round(v, 6) for v in self.coord],
            "coord_xy": [round(v, 2) for v in self.coord_xy],
            "expression_truncated": self.expression_truncated,
        }
        if attention and self.visual_attention is not None:
            out["visual_attention"] = [[grid.round(6).tolist() for grid in layer] for layer in self.visual_attention]
            out["word_attention"] = [[[word, round(w, 6)] for word, w in self.words(i)] for i in range(self.num_layers)]
        out.update(self.extra)
        return out


@dataclass
class _Prepared:
    """One request after image decoding, letterboxing and tokenisation (the data pipeline's Item)."""

    item: Any  # lgrnet.data.dataset.Item
    letterbox: Letterbox
    truncated: bool


class Predictor(
    ModelHubMixin,
    library_name="lgrnet",
    repo_url="https://github.com/lgrnet/lgrnet",
    tags=["referring-expression-comprehension", "visual-grounding", "lgr-net"],
):
    """Inference with a trained LGR-NET.

    >>> predictor = Predictor.from_pretrained("checkpoints/lgrnet-tiny")      # doctest: +SKIP
    >>> p = predictor.predict("kitchen.jpg", "the red mug left of the kettle")  # doctest: +SKIP
    >>> p.box_xyxy, p.coord                                                      # doctest: +SKIP
    """

    def __init__(
        self,
        model: torch.nn.Module,
        config: Config,
        *,
        device: str | torch.device | None = None,
        dtype: DTypeLike = None,
        batch_size: int = 16,
        max_image_pixels: int = DEFAULT_MAX_PIXELS,
        tokenizer: Any = None,
    ) -> None:
        from lgrnet.data.transforms import EvalTransform

        self.config = config
        self.device = _resolve_device(device)
        self.autocast_dtype = _resolve_dtype(dtype, self.device)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise LGRNetError(f"batch_size must be at least 1, got {batch_size}")
        self.max_image_pixels = int(max_image_pixels)
        self.model = model.to(self.device).eval()
        if tokenizer is None:
            from lgrnet.model.text import build_tokenizer

            tokenizer = build_tokenizer(config.model.text)
        self.tokenizer = tokenizer
        self.image_size = int(config.model.image_size)
        self.max_length = int(config.model.text.max_length)
        self.lowercase = bool(config.model.text.lowercase)
        self.transform = EvalTransform(self.image_size)
        #: What a user must know about this model's boxes (set for shipped models by from_pretrained), else None.
        self.caveat: str | None = None

    # ----------------------------------------------------------------------------------------------------------
    # Loading and saving

    @classmethod
    def from_pretrained(  # type: ignore[override]
        cls,
        path_or_hub_id: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: DTypeLike = None,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        token: str | bool | None = None,
        local_files_only: bool = False,
        **kwargs: Any,
    ) -> Predictor:
        """Load a checkpoint folder (``config.yaml`` + ``model.safetensors``), a training output folder, a shipped
        model name (``"synthref"``) or a hub id ("owner/name")."""
        folder = resolve_checkpoint(path_or_hub_id, revision=revision, cache_dir=cache_dir, token=token,
                                    local_files_only=local_files_only)
        from lgrnet.model.io import load_model
        from lgrnet.model.registry import caveat_for

        model, config = load_model(str(folder), device="cpu")
        predictor = cls(model, config, device=device, dtype=dtype, **kwargs)
        predictor.caveat = caveat_for(folder)
        return predictor

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir: Any = None,
                         force_download: bool = False, local_files_only: bool = False, token: Any = None,
                         **model_kwargs: Any) -> Predictor:
        # ModelHubMixin's hook; from_pretrained above does the work without the mixin's config.json lookup.
        return cls.from_pretrained(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                   local_files_only=local_files_only, **model_kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        from lgrnet.model.io import save_model

        save_model(self.model, self.config, save_directory)

    # ----------------------------------------------------------------------------------------------------------
    # Prediction

    def predict(
        self,
        image: ImageInput | Sequence[tuple[ImageInput, str]],
        expression: str | Sequence[str] | None = None,
        *,
        attention: bool = False,
        batch_size: int | None = None,
    ) -> Prediction | list[Prediction]:
        """Ground expression(s) in an image.

        * ``predict(image, "the cat")`` -> one :class:`Prediction`;
        * ``predict(image, ["the cat", "the dog"])`` -> a list, one per expression (the image is decoded once);
        * ``predict([(image1, "the cat"), (image2, "the dog"), ...])`` -> a list, run in batches.

        ``image`` is a file path, a PIL image or an [H, W(, C)] array (uint8, uint16 or float in [0, 1]). With
        ``attention=True`` every prediction carries per-layer attention over visual tokens and words. Bad input
        raises :class:`~lgrnet.errors.DataError` naming the image or expression.
        """
        if expression is None:
            if isinstance(image, (str, os.PathLike, Image.Image, np.ndarray)) or not isinstance(image, Sequence):
                raise DataError("expression: missing (pass predict(image, expression) or a list of (image, expression))")
            pairs = [_as_pair(item, i) for i, item in enumerate(image)]
            return self._raise_first(self.predict_many(pairs, attention=attention, batch_size=batch_size))
        if isinstance(expression, str):
            return self._raise_first(self.predict_many([(image, expression)], attention=attention))[0]
        if not isinstance(expression, Sequence) or not expression:
            raise DataError("expression: expected a string or a non-empty list of strings")
        # Decode the image once for all its expressions.
        rgb = as_rgb_image(image, self.max_image_pixels)
        pairs = [(rgb, text) for text in expression]
        return self._raise_first(self.predict_many(pairs, attention=attention, batch_size=batch_size))

    def predict_many(
        self,
        pairs: Iterable[tuple[ImageInput, str]],
        *,
        attention: bool = False,
        batch_size: int | None = None,
    ) -> list[Prediction | LGRNetError]:
        """Run many (image, expression) pairs in batches; a pair that fails gets its error in its place.

        Images are decoded batch by batch, so a long list of paths never sits in memory at once.
        """
        results: list[Prediction | LGRNetError] = []
        for chunk in _chunks(pairs, batch_size or self.batch_size):
            prepared: list[_Prepared] = []
            slots: list[int] = []
            for image, text in chunk:
                try:
                    prepared.append(self.prepare(image, text))
                    slots.append(len(results))
                    results.append(DataError("pending"))
                except LGRNetError as exc:
                    results.append(exc)
            if prepared:
                for slot, prediction in zip(slots, self._forward(prepared, attention)):
                    results[slot] = prediction
        return results

    def prepare(self, image: ImageInput, expression: str) -> _Prepared:
        """Decode, letterbox and tokenise one request exactly as evaluation does (raises DataError)."""
        from lgrnet.data.batch import SampleMeta
        from lgrnet.data.dataset import Item, tokenize

        text = check_expression(expression)
        rgb = as_rgb_image(image, self.max_image_pixels)
        width, height = rgb.size
        full = (0.0, 0.0, float(width), float(height))  # the transform wants a box; the prediction ignores it
        sample = self.transform(rgb, text, full)
        ids, mask = tokenize(self.tokenizer, sample.expression, self.max_length, self.lowercase)
        letterbox = Letterbox((width, height), (float(sample.scale[0]), float(sample.scale[1])),
                              (float(sample.offset[0]), float(sample.offset[1])), self.image_size)
        meta = SampleMeta(id="", expression=sample.expression, image=describe(image), original_size=(width, height),
                          scale=sample.scale, offset=sample.offset, canvas_size=self.image_size)
        pieces = self._count_pieces(sample.expression)
        if pieces == 0:
            raise DataError(f"expression {_preview(text)}: no word the model's tokenizer can read")
        # Word pieces beyond max_length (special tokens included) are dropped by the reader; say so.
        truncated = pieces + (self.tokenizer.num_special_tokens_to_add() if hasattr(
            self.tokenizer, "num_special_tokens_to_add") else 2) > self.max_length
        return _Prepared(Item(sample.image, sample.mask, sample.box, ids, mask, meta), letterbox, truncated)

    def _count_pieces(self, text: str) -> int:
        text = text.lower() if self.lowercase else text
        return len(self.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])

    @torch.inference_mode()
    def _forward(self, prepared: list[_Prepared], attention: bool) -> list[Prediction]:
        from lgrnet.data.dataset import collate
        from lgrnet.data.transforms import canvas_to_original

        batch = collate([p.item for p in prepared]).to(self.device)
        with self._autocast():
            out = self.model(batch.images, batch.image_mask, batch.input_ids, batch.attention_mask,
                             output_attentions=attention)
        # [B, 4] xyxy original pixels, clamped to the image: the engine's evaluation mapping.
        boxes = canvas_to_original(out.pred_boxes.float().cpu().clamp(0.0, 1.0), batch.meta, clamp=True)
        if out.coord is not None:
            coords = out.coord.float().cpu().reshape(len(prepared), -1)[:, :2]  # [B, 2] (x, y) / S on the canvas
        else:  # coord_embed "none": no coordinate branch, report the box centre instead
            coords = out.pred_boxes.float().cpu()[:, :2]
        results = []
        for i, item in enumerate(prepared):
            width, height = item.letterbox.original_size
            box = tuple(float(v) for v in boxes[i])
            px, py = item.letterbox.canvas_to_original_xy(float(coords[i, 0]) * self.image_size,
                                                          float(coords[i, 1]) * self.image_size)
            point = (min(max(px, 0.0), float(width)), min(max(py, 0.0), float(height)))
            prediction = Prediction(
                expression=item.item.meta.expression,
                image_size=(width, height),
                box_xyxy=box,
                box_normalized=(box[0] / width, box[1] / height, box[2] / width, box[3] / height),
                coord=(point[0] / width, point[1] / height),
                coord_xy=point,
                letterbox=item.letterbox,
                expression_truncated=item.truncated,
            )
            if attention:
                self._attach_attention(prediction, out, i, batch.input_ids[i], batch.attention_mask[i])
            results.append(prediction)
        return results

    def _attach_attention(self, prediction: Prediction, out: Any, i: int, input_ids: torch.Tensor,
                          attention_mask: torch.Tensor) -> None:
        if getattr(out, "visual_attention", None) is None or getattr(out, "text_attention", None) is None:
            raise LGRNetError("the model returned no attention maps (output_attentions unsupported)")
        shapes = [tuple(int(v) for v in s) for s in out.token_shapes]
        prediction.visual_attention = [split_visual_attention(layer[i], shapes) for layer in out.visual_attention]
        real = int(attention_mask.sum())
        prediction.tokens = self.tokenizer.convert_ids_to_tokens(input_ids[:real].tolist())
        prediction.word_attention = [layer[i, :real].float().cpu().numpy() for layer in out.text_attention]

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    @staticmethod
    def _raise_first(results: list[Prediction | LGRNetError]) -> list[Prediction]:
        for result in results:
            if isinstance(result, LGRNetError):
                raise result
        return results  # type: ignore[return-value]

    def __repr__(self) -> str:
        dtype = "fp32" if self.autocast_dtype is None else str(self.autocast_dtype).replace("torch.", "")
        return f"Predictor({self.config.name}, image_size={self.image_size}, device={self.device}, dtype={dtype})"


# --------------------------------------------------------------------------------------------------------------
# Helpers

# Upper bound on expression length in characters; the model reads at most text.max_length word pieces anyway.
MAX_EXPRESSION_CHARS = 10_000


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


def _preview(text: str, limit: int = 40) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def resolve_checkpoint(path_or_hub_id: str | os.PathLike, **hub_kwargs: Any) -> Path:
    """A model folder, a training output folder (its checkpoints/best, else last), a shipped model name
    (``synthref``) or a hub id downloaded with ``snapshot_download``
    (:func:`lgrnet.model.registry.resolve_model`); CheckpointError otherwise."""
    from lgrnet.model.registry import resolve_model

    return resolve_model(path_or_hub_id, "checkpoint", **hub_kwargs)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    """The requested device (default: CUDA when available), with a clear error for one this machine lacks."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise LGRNetError(f"device {device!r}: expected cpu, cuda, cuda:N, mps") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise LGRNetError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise LGRNetError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise LGRNetError(f"device {device!r}: MPS is not available on this machine")
    return resolved


def _resolve_dtype(dtype: DTypeLike, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32). Weights stay fp32; autocast runs matmuls in the low precision."""
    if dtype is None or dtype == torch.float32:
        return None
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif isinstance(dtype, str) and dtype.lower() in _DTYPES:
        resolved = _DTYPES[dtype.lower()]
    else:
        raise LGRNetError(f"dtype {dtype!r}: expected one of fp32, bf16, fp16")
    if resolved is None:
        return None
    if resolved not in (torch.bfloat16, torch.float16):
        raise LGRNetError(f"dtype {dtype!r}: expected one of fp32, bf16, fp16")
    if resolved == torch.float16 and device.type == "cpu":
        raise LGRNetError("dtype fp16: not supported on the CPU, use bf16 or fp32")
    return resolved


def _as_pair(item: object, index: int) -> tuple[ImageInput, str]:
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        raise DataError(f"pair {index}: expected (image, expression), got {type(item).__name__}")
    return item[0], item[1]


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
