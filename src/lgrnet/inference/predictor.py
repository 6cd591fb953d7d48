"""Grounding a phrase in your own image with a trained LGR-NET: ``Predictor.from_pretrained(...).predict(...)``.

The predictor wraps a model and its :class:`~lgrnet.config.Config`. Its
:class:`~lgrnet.inference.processor.Processor` prepares each request as evaluation does (letterbox to the model's
canvas, spec section 11.4; tokenisation) and maps the predicted canvas box and point back to original-image pixels;
in between is one forward pass, in the precision asked for (:mod:`lgrnet.precision`). Results are typed
:class:`Prediction` objects; on request they carry the prediction token's attention over visual tokens and over
words for every TCA/TCF layer (paper Fig. 5/6).

Checkpoints are the folders written by :func:`lgrnet.model.io.save_model` (``config.yaml`` + ``model.safetensors``),
such as the engine's ``checkpoints/<name>/``; a Hugging Face hub id works where the user has a network
(:class:`huggingface_hub.ModelHubMixin` supplies ``save_pretrained`` / ``push_to_hub``).
"""

from __future__ import annotations

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
from lgrnet.inference.attention import attention_on_image, merge_word_pieces, split_visual_attention
from lgrnet.inference.images import DEFAULT_MAX_PIXELS, ImageInput
from lgrnet.inference.processor import Letterbox, ProcessedSample, Processor
from lgrnet.precision import autocast, autocast_dtype, normalize_precision

DTypeLike = str | torch.dtype | None
#: What runs the model: PyTorch (the default) or onnxruntime on a graph written by ``lgrnet export onnx``.
BACKENDS = ("torch", "onnxruntime")
#: Version of the prediction record layout that `lgrnet predict --json`, its batch output and the server write
#: (Prediction.to_dict's fields); raised when a field changes meaning or goes away (new fields keep it: `boxes`,
#: `scores`, `found`, `threshold`, `box_score` and `coord_trained` joined version 1 with the generalized head).
PREDICTION_SCHEMA_VERSION = 1


@dataclass
class Prediction:
    """One grounded expression. Boxes and points are clamped to the image.

    ``box_xyxy`` is in original-image pixels, ``box_normalized`` is it divided by (W, H, W, H); ``coord`` is the
    model's predicted 2-D coordinate (paper III-B, the Textual Feature Extender) as (x, y) normalised to the
    original image, ``coord_xy`` the same point in pixels. Attention fields are filled only when asked for.

    Zero, one or many boxes: ``boxes`` (x1, y1, x2, y2 original pixels) with their ``scores``, highest first, and
    ``found`` (at least one box). A model with the generalized head (``model.grec.enabled``) gives the tokens whose
    score reaches ``threshold``, and ``box_xyxy`` stays its highest-scoring token's box whether or not it reaches
    it; a classic model always finds its one box: ``boxes == [box_xyxy]``, ``scores`` None (it has no score),
    ``found`` True, ``threshold`` None.

    ``coord_trained`` says whether the model's coordinate head was trained by a loss of its own
    (``loss.coord_weight > 0``). The paper's has none (it learns only what helps the box through its embedding),
    so its point need not mark the object; pictures draw it only when True.
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
    boxes: list[tuple[float, float, float, float]] | None = None  # None: [box_xyxy] (a classic model's one box)
    scores: list[float] | None = None
    found: bool = True
    threshold: float | None = None
    box_score: float | None = None  # a generalized head's score of box_xyxy (its top token), found or not
    coord_trained: bool = True

    def __post_init__(self) -> None:
        if self.boxes is None:
            self.boxes = [tuple(self.box_xyxy)]

    @property
    def generalized(self) -> bool:
        """The boxes come from a model with the generalized head (they have scores and may be none)."""
        return self.scores is not None

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

    def describe(self, separator: str = "\n") -> str:
        """The answer in words: a classic model's box and coordinate; for a generalized head every box found with
        its score, or "no match" with the best score against the threshold (and the coordinate only when the
        model's coordinate head was trained)."""
        coordinate = f"coordinate (x, y) = ({self.coord[0]:.3f}, {self.coord[1]:.3f})"
        if not self.generalized:
            x1, y1, x2, y2 = self.box_xyxy
            return f"box (x1, y1, x2, y2) = ({x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}) px; {coordinate}"
        threshold = self.threshold if self.threshold is not None else float("nan")
        if not self.found:
            best = "" if self.box_score is None else f" (best score {self.box_score:.2f})"
            lines = [f"no match: no box scored {threshold:.2f} or more{best}"]
        else:
            count = len(self.boxes or [])
            lines = [f"found {count} box{'es' if count > 1 else ''} scoring {threshold:.2f} or more"]
            lines += [f"box (x1, y1, x2, y2) = ({x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}) px, score {score:.2f}"
                      for (x1, y1, x2, y2), score in zip(self.boxes or [], self.scores or [])]
        if self.coord_trained:
            lines.append(coordinate)
        return separator.join(lines)

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
            "boxes": [[round(v, 2) for v in box] for box in self.boxes],
            "scores": None if self.scores is None else [round(v, 6) for v in self.scores],
            "found": self.found,
            "threshold": self.threshold,
            "box_score": None if self.box_score is None else round(self.box_score, 6),
            "coord_trained": self.coord_trained,
        }
        if attention and self.visual_attention is not None:
            out["visual_attention"] = [[grid.round(6).tolist() for grid in layer] for layer in self.visual_attention]
            out["word_attention"] = [[[word, round(w, 6)] for word, w in self.words(i)] for i in range(self.num_layers)]
        out.update(self.extra)
        return out


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

    For a model with the generalized head, ``threshold`` (default: the model's ``model.grec.threshold``) is the
    score a box needs to be returned; ``predict(..., threshold=...)`` overrides it for one call. A classic model
    has no scores, and a threshold given for it is an error.
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
        threshold: float | None = None,
    ) -> None:
        self.config = config
        self.threshold = threshold
        self.device = _resolve_device(device)
        # "dtype" in the errors: the argument's name here (an fp32/bf16/fp16 name, an alias or a torch dtype).
        self.autocast_dtype = autocast_dtype(dtype, self.device, what="dtype")
        self.precision = normalize_precision(dtype, what="dtype")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise LGRNetError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.to(self.device).eval()
        #: Pre- and post-processing: images, letterbox, tokenisation, canvas -> original pixels.
        self.processor = Processor.from_config(config, tokenizer=tokenizer, max_image_pixels=max_image_pixels)
        #: What a user must know about this model's boxes (set for shipped models by from_pretrained), else None.
        self.caveat: str | None = None

    @property
    def generalized(self) -> bool:
        """The model has the generalized head (zero, one or many boxes with a score each)."""
        return bool(self.config.model.grec.enabled)

    @property
    def coord_trained(self) -> bool:
        """The model's coordinate head was trained by a loss (``loss.coord_weight > 0``): its point means
        something. The paper's coordinate head is trained by none; without one the box centre stands in."""
        return self.config.model.coord_embed != "none" and float(self.config.loss.coord_weight) > 0

    @property
    def threshold(self) -> float | None:
        """The score a generalized head's box needs to be returned (None for a classic model, which has no
        scores). Setting None restores the model's own (``model.grec.threshold``)."""
        return self._threshold

    @threshold.setter
    def threshold(self, value: float | None) -> None:
        self._threshold = self._check_threshold(value, self.config.model.grec.threshold)

    def call_threshold(self, threshold: float | None) -> float | None:
        """The threshold a call given ``threshold`` uses (None: this predictor's own); :class:`LGRNetError` when
        it is not a score between 0 and 1, or when the model has no generalized head and one is given."""
        return self._check_threshold(threshold, self.threshold)

    def _check_threshold(self, threshold: float | None, default: float | None = None) -> float | None:
        if not self.generalized:
            if threshold is not None:
                raise LGRNetError(f"threshold {threshold!r}: the model {self.config.name} has no generalized head "
                                  "(model.grec.enabled), so its one box has no score to compare")
            return None
        value = default if threshold is None else threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise LGRNetError(f"threshold {value!r}: expected a score between 0 and 1")
        return float(value)

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def image_size(self) -> int:
        """The model's square canvas side in pixels."""
        return self.processor.image_size

    @property
    def max_length(self) -> int:
        """The most word pieces (special tokens included) the model reads of an expression."""
        return self.processor.max_length

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
        backend: str = "torch",
        **kwargs: Any,
    ) -> Predictor:
        """Load a checkpoint folder (``config.yaml`` + ``model.safetensors``), a training output folder, a shipped
        model name (``"synthref"``) or a hub id ("owner/name").

        ``backend="onnxruntime"`` runs a graph written by ``lgrnet export onnx`` instead (``path_or_hub_id`` is the
        .onnx file, or a folder holding one): the same processing and results, in the precision the graph was
        exported in, on "cpu" (the default) or "cuda"; attention maps need the torch backend."""
        if backend == "onnxruntime":
            return cls._from_onnx(path_or_hub_id, device, dtype, **kwargs)
        if backend != "torch":
            raise LGRNetError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        from lgrnet.model.io import load_model
        from lgrnet.model.registry import caveat_for, resolve_model

        folder = resolve_model(path_or_hub_id, "checkpoint", revision=revision, cache_dir=cache_dir, token=token,
                               local_files_only=local_files_only)
        model, config = load_model(folder, device="cpu")
        predictor = cls(model, config, device=device, dtype=dtype, **kwargs)
        predictor.caveat = caveat_for(folder)
        return predictor

    @classmethod
    def _from_onnx(cls, path: str | os.PathLike, device: str | torch.device | None, dtype: DTypeLike,
                   **kwargs: Any) -> Predictor:
        from lgrnet.inference.onnx import load_onnx

        if normalize_precision(dtype, what="dtype") != "fp32":
            raise LGRNetError(f"dtype {dtype!r}: the onnxruntime backend runs in the precision the graph was "
                              "exported in (lgrnet export onnx --dtype)")
        resolved = _resolve_device(device or "cpu")
        loaded = load_onnx(path, resolved)
        kwargs.setdefault("tokenizer", loaded.tokenizer)
        predictor = cls(loaded.model, loaded.config, device=resolved, **kwargs)
        predictor.caveat = loaded.caveat
        return predictor

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None = None, cache_dir: Any = None,
                         force_download: bool = False, local_files_only: bool = False, token: Any = None,
                         **model_kwargs: Any) -> Predictor:
        # ModelHubMixin's hook; from_pretrained above does the work without the mixin's config.json lookup.
        return cls.from_pretrained(model_id, revision=revision, cache_dir=cache_dir, token=token,
                                   local_files_only=local_files_only, **model_kwargs)

    def _save_pretrained(self, save_directory: Path) -> None:
        from lgrnet.inference.onnx import OnnxGroundingModel
        from lgrnet.model.io import save_model

        if isinstance(self.model, OnnxGroundingModel):
            raise LGRNetError("an onnxruntime predictor has no PyTorch weights to save: copy the .onnx file and the "
                              "files beside it")
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
        threshold: float | None = None,
    ) -> Prediction | list[Prediction]:
        """Ground expression(s) in an image.

        * ``predict(image, "the cat")`` -> one :class:`Prediction`;
        * ``predict(image, ["the cat", "the dog"])`` -> a list, one per expression (the image is decoded once);
        * ``predict([(image1, "the cat"), (image2, "the dog"), ...])`` -> a list, run in batches.

        ``image`` is a file path, a PIL image or an [H, W(, C)] array (uint8, uint16 or float in [0, 1]). With
        ``attention=True`` every prediction carries per-layer attention over visual tokens and words. ``threshold``
        overrides the predictor's for this call (generalized head only). Bad input raises
        :class:`~lgrnet.errors.DataError` naming the image or expression.
        """
        options = {"attention": attention, "threshold": threshold}
        if expression is None:
            if isinstance(image, (str, os.PathLike, Image.Image, np.ndarray)) or not isinstance(image, Sequence):
                raise DataError("expression: missing (pass predict(image, expression) or a list of (image, expression))")
            pairs = [_as_pair(item, i) for i, item in enumerate(image)]
            return self._raise_first(self.predict_many(pairs, batch_size=batch_size, **options))
        if isinstance(expression, str):
            return self._raise_first(self.predict_many([(image, expression)], **options))[0]
        if not isinstance(expression, Sequence) or not expression:
            raise DataError("expression: expected a string or a non-empty list of strings")
        # Decode the image once for all its expressions.
        rgb = self.processor.load_image(image)
        pairs = [(rgb, text) for text in expression]
        return self._raise_first(self.predict_many(pairs, batch_size=batch_size, **options))

    def predict_many(
        self,
        pairs: Iterable[tuple[ImageInput, str]],
        *,
        attention: bool = False,
        batch_size: int | None = None,
        threshold: float | None = None,
    ) -> list[Prediction | LGRNetError]:
        """Run many (image, expression) pairs in batches; a pair that fails gets its error in its place.

        Images are decoded batch by batch, so a long list of paths never sits in memory at once.
        """
        threshold = self._check_threshold(threshold, self.threshold)
        results: list[Prediction | LGRNetError] = []
        for chunk in _chunks(pairs, batch_size or self.batch_size):
            prepared: list[ProcessedSample] = []
            slots: list[int] = []
            for image, text in chunk:
                try:
                    prepared.append(self.processor.prepare(image, text))
                    slots.append(len(results))
                    results.append(DataError("pending"))
                except LGRNetError as exc:
                    results.append(exc)
            if prepared:
                for slot, prediction in zip(slots, self._forward(prepared, attention, threshold)):
                    results[slot] = prediction
        return results

    @torch.inference_mode()
    def _forward(self, prepared: list[ProcessedSample], attention: bool, threshold: float | None
                 ) -> list[Prediction]:
        inputs = self.processor.collate(prepared)
        batch = inputs.batch.to(self.device)
        with autocast(self.device, self.precision):
            out = self.model(batch.images, batch.image_mask, batch.input_ids, batch.attention_mask,
                             output_attentions=attention)
        # Without a coordinate branch (coord_embed "none") the box centre stands in for the coordinate.
        coords = out.coord if out.coord is not None else out.pred_boxes[:, :2]
        boxes, points = self.processor.post_process(out.pred_boxes, inputs.letterboxes, coords)
        sets = top_scores = None
        if threshold is not None:  # the generalized head: its last layer's tokens
            sets = self.processor.post_process_sets(out.token_boxes[-1], out.token_logits[-1], inputs.letterboxes,
                                                    threshold, self.config.model.grec.nms_iou)
            top_scores = out.token_logits[-1].float().sigmoid().amax(dim=-1).cpu().tolist()
        results = []
        for i, letterbox in enumerate(inputs.letterboxes):
            width, height = letterbox.original_size
            box = tuple(float(v) for v in boxes[i])
            point = (float(points[i, 0]), float(points[i, 1]))
            prediction = Prediction(
                expression=batch.meta[i].expression,
                image_size=(width, height),
                box_xyxy=box,
                box_normalized=(box[0] / width, box[1] / height, box[2] / width, box[3] / height),
                coord=(point[0] / width, point[1] / height),
                coord_xy=point,
                letterbox=letterbox,
                expression_truncated=inputs.truncated[i],
                coord_trained=self.coord_trained,
            )
            if sets is not None:
                found_boxes, scores = sets[i]
                prediction.boxes = [tuple(float(v) for v in row) for row in found_boxes]
                prediction.scores = [float(v) for v in scores]
                prediction.found = bool(prediction.boxes)
                prediction.threshold = threshold
                prediction.box_score = top_scores[i]
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


def check_threshold_option(value: float | None, option: str = "--threshold") -> None:
    """A command's threshold flag is a score between 0 and 1 (checked before a model is loaded)."""
    if value is not None and not 0.0 <= value <= 1.0:
        raise LGRNetError(f"{option} {value:g}: expected a score between 0 and 1")


def apply_threshold_option(predictor: Predictor, value: float | None, option: str = "--threshold") -> None:
    """Give ``predictor`` a command's threshold flag (None: keep the model's); an error for a classic model."""
    if value is None:
        return
    if not predictor.generalized:
        raise LGRNetError(f"{option} {value:g}: the model {predictor.config.name} has no generalized head "
                          "(model.grec.enabled): its one box has no score")
    predictor.threshold = value


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
