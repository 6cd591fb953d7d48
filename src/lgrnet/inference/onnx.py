"""LGR-NET as an ONNX graph: :func:`export_onnx` writes it, :func:`load_onnx` runs it in onnxruntime.

The graph computes the model from its four inputs to its outputs, with a dynamic batch axis:

* ``images`` [B, 3, S, S] float32, ImageNet-normalised and letterboxed (zero padding);
* ``image_mask`` [B, S, S] bool, True on the padding;
* ``input_ids`` and ``attention_mask`` [B, L] int64, exactly ``max_length`` word pieces (1 = real token);
* ``pred_boxes`` [B, 4] float32: the box as (cx, cy, w, h) / S on the canvas;
* ``coord`` [B, 2] float32: the predicted coordinate as (x, y) / S on the canvas (the box centre for a model
  without a coordinate branch);
* for a model with the generalized head (``model.grec.enabled``) also ``token_boxes`` [B, K, 4] float32, every
  token's box of the last layer as (cx, cy, w, h) / S, and ``token_logits`` [B, K] float32, their score logits
  (score = sigmoid); ``pred_boxes`` is then the highest-scoring token's box.

Everything around the graph stays in Python and is the :class:`~lgrnet.inference.processor.Processor`'s: image
decoding, the letterbox, tokenisation and the mapping back to original-image pixels. A JSON file beside the graph
(``model.onnx`` -> ``model.json``) holds what the processor needs (canvas size, normalisation, tokenizer, text
length, lowercasing), the model's config and a ``schema_version``; the tokenizer's files are saved in a folder
beside it (``model.tokenizer/``), so the three together run without the training checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lgrnet.config import Config, ConfigError, config_from_dict
from lgrnet.data.dataset import tokenize
from lgrnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lgrnet.errors import CheckpointError, LGRNetError

#: Version of the sidecar JSON's layout; a reader refuses a newer one.
SCHEMA_VERSION = 1
SIDECAR_FORMAT = "lgrnet-onnx"
INPUT_NAMES = ("images", "image_mask", "input_ids", "attention_mask")
OUTPUT_NAMES = ("pred_boxes", "coord")
#: The further outputs of a model with the generalized head: its last layer's token boxes and score logits.
GREC_OUTPUT_NAMES = ("token_boxes", "token_logits")
#: Weight precisions of an exported graph; its inputs and outputs are float32 either way.
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
#: The lowest opset the dynamo exporter writes.
MIN_OPSET = 18
_INSTALL_HINT = "pip install 'lgrnet[onnx]'"
# Expressions of the sample batch the graph is traced and checked with (their lengths differ, so padding is seen).
_SAMPLE_EXPRESSIONS = ("the red mug on the left", "man")


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote, and how far onnxruntime's outputs on the sample batch are from PyTorch's."""

    onnx_path: Path
    sidecar_path: Path
    tokenizer_dir: Path
    opset: int
    dtype: str
    max_abs_diff: float | None  # None when onnxruntime is not installed


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """The JSON beside a graph: ``model.onnx`` -> ``model.json``."""
    return Path(onnx_path).with_suffix(".json")


def tokenizer_dir(onnx_path: str | os.PathLike) -> Path:
    """The tokenizer's folder beside a graph: ``model.onnx`` -> ``model.tokenizer/``."""
    path = Path(onnx_path)
    return path.with_name(f"{path.stem}.tokenizer")


def check_export_paths(onnx_path: str | os.PathLike, option: str = "--out") -> Path:
    """The graph's path ends in .onnx and it, the JSON and the tokenizer folder beside it can be written (a
    one-line LGRNetError naming ``option`` otherwise); checked before a model is loaded or traced."""
    from lgrnet.output_paths import check_output_dir, check_output_file

    path = Path(onnx_path)
    if path.suffix.lower() != ".onnx":
        raise LGRNetError(f"{option} {path}: expected a file name ending in .onnx")
    check_output_file(path, option)
    check_output_file(sidecar_path(path), f"{option} {path}: its JSON")
    check_output_dir(tokenizer_dir(path), f"{option} {path}: its tokenizer folder")
    return path


def check_opset(opset: int | None) -> None:
    """``opset`` is one the exporter can write (None: the exporter's default)."""
    if opset is None:
        return
    onnx = _require("onnx")
    newest = int(onnx.defs.onnx_opset_version())
    if not MIN_OPSET <= opset <= newest:
        raise LGRNetError(f"--opset {opset}: the exporter writes opsets {MIN_OPSET} to {newest}")


def output_names(config: Config) -> tuple[str, ...]:
    """The graph's outputs for a model of ``config``: (pred_boxes, coord), and the token boxes and logits of a
    generalized head."""
    return OUTPUT_NAMES + (GREC_OUTPUT_NAMES if config.model.grec.enabled else ())


class GroundingGraph(nn.Module):
    """The model from (images, image_mask, input_ids, attention_mask) to (pred_boxes, coord[, token_boxes,
    token_logits]): the function the ONNX graph holds. The model's weights may be in another precision; inputs and
    outputs stay float32."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.weight_dtype = next(model.parameters()).dtype

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self.weight_dtype != torch.float32:
            images = images.to(self.weight_dtype)
        out = self.model(images, image_mask, input_ids, attention_mask)
        # Without a coordinate branch the box centre stands in for the coordinate (as in Predictor).
        coord = out.coord if out.coord is not None else out.pred_boxes[:, :2]
        outputs = (out.pred_boxes.float(), coord.float())
        if out.token_boxes is not None:  # the generalized head: its last layer's tokens
            outputs += (out.token_boxes[-1].float(), out.token_logits[-1].float())
        return outputs


def sample_inputs(config: Config, tokenizer: Any, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A batch in the graph's input layout: random normalised pixels with letterbox padding (right half of one
    sample, bottom quarter of another) and real tokenised expressions of different lengths."""
    size = config.model.image_size
    text = config.model.text
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, size, size, generator=generator)
    image_mask = torch.zeros(batch, size, size, dtype=torch.bool)
    image_mask[0, :, size // 2:] = True
    image_mask[1 % batch, size * 3 // 4:, :] = True
    images[image_mask[:, None].expand_as(images)] = 0.0
    encoded = [tokenize(tokenizer, _SAMPLE_EXPRESSIONS[i % len(_SAMPLE_EXPRESSIONS)], text.max_length, text.lowercase)
               for i in range(batch)]
    input_ids = torch.tensor([ids for ids, _ in encoded], dtype=torch.int64)
    attention_mask = torch.tensor([mask for _, mask in encoded], dtype=torch.int64)
    return images, image_mask, input_ids, attention_mask


def export_onnx(model: nn.Module, config: Config, out: str | os.PathLike, *, tokenizer: Any = None,
                opset: int | None = None, dtype: str = "fp32", caveat: str | None = None,
                verify: bool = True) -> OnnxExport:
    """Write ``model`` as an ONNX graph with a dynamic batch axis (``torch.onnx.export(..., dynamo=True)``), the
    JSON beside it and the tokenizer's files; the model itself is left as it was.

    ``dtype`` "fp16" stores the weights in half precision (inputs and outputs stay float32); ``caveat`` is what a
    user must know about the model's boxes (carried to the predictor that loads the graph). With ``verify`` the
    graph is run in onnxruntime on a sample batch and its largest difference from PyTorch is returned.
    """
    if dtype not in EXPORT_DTYPES:
        raise LGRNetError(f"--dtype {dtype}: expected one of {', '.join(EXPORT_DTYPES)}")
    check_opset(opset)
    path = check_export_paths(out)
    _require("onnxscript")
    if tokenizer is None:
        from lgrnet.model.text import build_tokenizer

        tokenizer = build_tokenizer(config.model.text)
    graph = GroundingGraph(copy.deepcopy(model).to("cpu", EXPORT_DTYPES[dtype]).eval()).eval()
    inputs = sample_inputs(config, tokenizer)
    batch = torch.export.Dim("batch", min=1)
    dynamic_shapes = {name: {0: batch} for name in INPUT_NAMES}
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(graph, inputs, dynamo=True, dynamic_shapes=dynamic_shapes, opset_version=opset,
                                    input_names=list(INPUT_NAMES), output_names=list(output_names(config)),
                                    verbose=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path))
    written_opset = _default_opset(program.model_proto)
    tokenizer_folder = tokenizer_dir(path)
    tokenizer.save_pretrained(str(tokenizer_folder))
    sidecar = _sidecar(config, path, tokenizer_folder, written_opset, dtype, caveat)
    sidecar_path(path).write_text(json.dumps(sidecar, indent=2) + "\n")
    difference = _max_difference(graph, path, inputs, output_names(config)) if verify else None
    return OnnxExport(path, sidecar_path(path), tokenizer_folder, written_opset, dtype, difference)


def _sidecar(config: Config, path: Path, tokenizer_folder: Path, opset: int, dtype: str,
             caveat: str | None) -> dict[str, Any]:
    size = config.model.image_size
    text = config.model.text
    outputs = {
        "pred_boxes": {"shape": ["batch", 4], "dtype": "float32", "meaning": "(cx, cy, w, h) / image_size"},
        "coord": {"shape": ["batch", 2], "dtype": "float32", "meaning": "(x, y) / image_size"},
    }
    if config.model.grec.enabled:
        k = config.model.grec.num_queries
        outputs["token_boxes"] = {"shape": ["batch", k, 4], "dtype": "float32",
                                  "meaning": "every token's box, (cx, cy, w, h) / image_size"}
        outputs["token_logits"] = {"shape": ["batch", k], "dtype": "float32",
                                   "meaning": "score logits: a box is found when sigmoid(logit) >= threshold "
                                              "(config.model.grec.threshold); when config.model.grec.nms_iou is "
                                              "set, a found box overlapping a higher-scoring one by more than that "
                                              "IoU is dropped"}
    return {
        "schema_version": SCHEMA_VERSION,
        "format": SIDECAR_FORMAT,
        "onnx_file": path.name,
        "model_name": config.name,
        "opset": opset,
        "dtype": dtype,
        "image_size": size,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "letterbox": "long side resized to image_size, centred, zero padding (image_mask True on the padding)",
        "max_length": text.max_length,
        "lowercase": text.lowercase,
        "tokenizer": {"name": text.name, "files": tokenizer_folder.name},
        "inputs": {
            "images": {"shape": ["batch", 3, size, size], "dtype": "float32"},
            "image_mask": {"shape": ["batch", size, size], "dtype": "bool"},
            "input_ids": {"shape": ["batch", text.max_length], "dtype": "int64"},
            "attention_mask": {"shape": ["batch", text.max_length], "dtype": "int64"},
        },
        "outputs": outputs,
        "caveat": caveat,
        "config": config.to_dict(),
    }


def _max_difference(graph: GroundingGraph, path: Path, inputs: tuple[torch.Tensor, ...],
                    names: tuple[str, ...]) -> float | None:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs on ``inputs``."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(list(names), {name: x.numpy() for name, x in zip(INPUT_NAMES, inputs)})
    with torch.no_grad():
        expected = graph(*inputs)
    return max(float((torch.from_numpy(g) - e).abs().max()) for g, e in zip(got, expected))


def _default_opset(model_proto: Any) -> int:
    return next(int(entry.version) for entry in model_proto.opset_import if entry.domain in ("", "ai.onnx"))


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress notes: the onnxscript optimizer logs every constant it cannot fold, and
    torch warns that the four inputs share one batch axis (which is what is meant)."""
    logger = logging.getLogger("onnxscript")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*axis name.*")
            yield
    finally:
        logger.setLevel(level)


# --------------------------------------------------------------------------------------------------------------
# Running an exported graph


@dataclass
class OnnxOutput:
    """The graph's outputs as tensors (the attributes of the PyTorch model's output that Predictor reads). The
    token boxes and logits of a generalized head come with a leading layer axis of one (the last layer), as the
    PyTorch model's [N, B, K, ...] outputs are read at ``[-1]``."""

    pred_boxes: torch.Tensor
    coord: torch.Tensor
    token_boxes: torch.Tensor | None = None  # [1, B, K, 4]
    token_logits: torch.Tensor | None = None  # [1, B, K]


class OnnxGroundingModel(nn.Module):
    """An exported graph in an onnxruntime session, called like the PyTorch model (no parameters: moving it to a
    device or into eval mode changes nothing; the session's providers decide where it runs). ``output_names`` are
    the graph's outputs (default: the session's)."""

    def __init__(self, session: Any, output_names: tuple[str, ...] | None = None) -> None:
        super().__init__()
        self.session = session
        self.output_names = tuple(output_names or (o.name for o in session.get_outputs()))

    def forward(self, images: torch.Tensor, image_mask: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor, output_attentions: bool = False) -> OnnxOutput:
        if output_attentions:
            raise LGRNetError("the ONNX graph holds no attention maps: use the torch backend for attention=True")
        feeds = {"images": images.float(), "image_mask": image_mask.bool(), "input_ids": input_ids.long(),
                 "attention_mask": attention_mask.long()}
        got = self.session.run(list(self.output_names), {name: x.detach().cpu().numpy() for name, x in feeds.items()})
        outputs = dict(zip(self.output_names, (torch.from_numpy(array) for array in got)))
        token_boxes, token_logits = outputs.get("token_boxes"), outputs.get("token_logits")
        return OnnxOutput(outputs["pred_boxes"], outputs["coord"],
                          None if token_boxes is None else token_boxes[None],
                          None if token_logits is None else token_logits[None])


@dataclass
class LoadedOnnx:
    """What :func:`load_onnx` returns: the runnable graph and what the processor and predictor need."""

    model: OnnxGroundingModel
    config: Config
    tokenizer: Any
    caveat: str | None
    sidecar: dict[str, Any]


def find_onnx_file(ref: str | os.PathLike) -> Path:
    """The graph ``ref`` names: a .onnx file, or a folder holding exactly one (CheckpointError otherwise)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        graphs = sorted(path.glob("*.onnx"))
        if len(graphs) != 1:
            found = "no .onnx file" if not graphs else f"{len(graphs)} .onnx files (name one)"
            raise CheckpointError(f"ONNX model {path}: the folder holds {found}")
        return graphs[0]
    if not path.is_file():
        raise CheckpointError(f"ONNX model {path}: no such file (give the .onnx file written by lgrnet export onnx)")
    if path.suffix.lower() != ".onnx":
        raise CheckpointError(f"ONNX model {path}: expected a .onnx file written by lgrnet export onnx")
    return path


def read_sidecar(onnx_path: Path) -> dict[str, Any]:
    """The JSON beside a graph, checked: its format, a schema version this reader knows, and the normalisation
    the processor applies."""
    path = sidecar_path(onnx_path)
    if not path.is_file():
        raise CheckpointError(f"ONNX model {onnx_path}: missing {path.name} beside it (written by lgrnet export onnx)")
    try:
        sidecar = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise CheckpointError(f"{path}: not an lgrnet ONNX sidecar (no \"format\": \"{SIDECAR_FORMAT}\")")
    version = sidecar.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > SCHEMA_VERSION:
        raise CheckpointError(f"{path}: schema_version {version!r}; this lgrnet reads up to {SCHEMA_VERSION} "
                              "(upgrade lgrnet)")
    for key, expected in (("mean", IMAGENET_MEAN), ("std", IMAGENET_STD)):
        if [float(v) for v in sidecar.get(key) or []] != list(expected):
            raise CheckpointError(f"{path}: {key} {sidecar.get(key)!r}, but the processor normalises with "
                                  f"{list(expected)}")
    return sidecar


def load_onnx(ref: str | os.PathLike, device: str | torch.device = "cpu", *,
              session_options: Any = None) -> LoadedOnnx:
    """An exported graph in an onnxruntime session, with its config, tokenizer and caveat. ``device`` "cuda"
    (or "cuda:N") runs it with onnxruntime's CUDA provider, which must be installed."""
    onnxruntime = _require("onnxruntime")
    onnx_path = find_onnx_file(ref)
    sidecar = read_sidecar(onnx_path)
    where = sidecar_path(onnx_path)
    try:
        config = config_from_dict(sidecar["config"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise CheckpointError(f"{where}: bad model config ({exc})") from None
    for key, value in (("image_size", config.model.image_size), ("max_length", config.model.text.max_length),
                       ("lowercase", config.model.text.lowercase)):
        if sidecar.get(key) != value:
            raise CheckpointError(f"{where}: {key} {sidecar.get(key)!r} disagrees with its config ({value!r})")
    tokenizer = _load_tokenizer(onnx_path, sidecar, config)
    session = onnxruntime.InferenceSession(str(onnx_path), sess_options=session_options,
                                           providers=_providers(onnxruntime, torch.device(device)))
    names = output_names(config)
    missing = sorted(set(names) - {o.name for o in session.get_outputs()})
    if missing:
        raise CheckpointError(f"ONNX model {onnx_path}: the graph lacks the output(s) {', '.join(missing)} its "
                              "config calls for (export it again with lgrnet export onnx)")
    return LoadedOnnx(OnnxGroundingModel(session, names), config, tokenizer, sidecar.get("caveat"), sidecar)


def _load_tokenizer(onnx_path: Path, sidecar: dict[str, Any], config: Config) -> Any:
    """The tokenizer saved beside the graph, else the one its config names."""
    files = (sidecar.get("tokenizer") or {}).get("files")
    folder = onnx_path.parent / files if isinstance(files, str) and files else None
    if folder is not None and folder.is_dir():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{folder}: cannot load the tokenizer ({exc})") from None
    from lgrnet.model.text import build_tokenizer

    return build_tokenizer(config.model.text)


def _providers(onnxruntime: Any, device: torch.device) -> list[Any]:
    if device.type == "cpu":
        return ["CPUExecutionProvider"]
    if device.type == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise LGRNetError(f"device {device}: this onnxruntime has no CUDA provider (pip install onnxruntime-gpu)")
        return [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    raise LGRNetError(f"device {device}: the onnxruntime backend runs on cpu or cuda")


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise LGRNetError(f"ONNX needs the package {module} ({_INSTALL_HINT})") from None
