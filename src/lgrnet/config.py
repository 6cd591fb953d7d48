"""Typed configuration for LGR-NET: model, data and training, with named presets.

A config is a tree of dataclasses. It is written as YAML (``base:`` names a preset or another YAML file to start
from) and can be changed from the command line with ``--set train.lr=2e-4``. Unknown keys and values of the wrong
type are rejected with an error that names the full key, so a typo never silently falls back to a default.

Presets (``load_config("lgrnet-swin-s")``):

* ``lgrnet-swin-s``: the reference implementation's configuration, the one that produced the paper's numbers.
* ``lgrnet-paper-swin-s``: the model as the paper's text describes it (spec section 14).
* ``lgrnet-r101``: ResNet-101 visual extractor (paper Table III), otherwise the reference configuration.
* ``lgrnet-tiny``: a small model that trains on a CPU in minutes (frozen offline MiniLM text encoder).
* ``lgrnet-small``: ``lgrnet-tiny`` with a deeper, wider reasoning stack (6 layers of width 256); the shipped
  SynthRef model's size.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from lgrnet.errors import LGRNetError


class ConfigError(LGRNetError, ValueError):
    """A config file, preset name or override is invalid; the message names the key."""


# --------------------------------------------------------------------------------------------------------------
# Model


@dataclass
class TextConfig:
    """Text extractor (paper III-A, spec section 2)."""

    # Hugging Face hub id, local folder, or "minilm" for the offline all-MiniLM-L6-v2 package.
    name: str = "bert-base-uncased"
    # False: build the architecture from the name's config (or `config_overrides` alone) with random weights.
    pretrained: bool = True
    # transformers config fields applied on top (tiny test encoders: hidden_size, num_hidden_layers, ...).
    # With name "" and pretrained False, a BertConfig is built from these alone (no files needed).
    config_overrides: dict[str, Any] = field(default_factory=dict)
    # Token features = mean of the last K hidden layers (reference: 4).
    num_mean_layers: int = 4
    max_length: int = 40
    lowercase: bool = True
    # Frozen encoders get no gradient and are excluded from the shipped checkpoint when `save_weights` is False.
    freeze: bool = False
    # Whether the encoder's weights are stored in checkpoints (False for the offline MiniLM of the embedded model).
    save_weights: bool = True


@dataclass
class VisualConfig:
    """Visual extractor (paper III-A, spec section 3): timm backbone + query-dynamic attention + neck."""

    kind: Literal["swin", "resnet"] = "swin"
    timm_name: str = "swin_small_patch4_window7_224"
    # Extra keyword arguments for timm.create_model (tiny twins shrink embed_dim/depths/num_heads here).
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_path_rate: float = 0.2
    # Reference Swin pads the feature map to a multiple of the window before the cyclic shift (timm shifts
    # first). True reproduces the reference at sizes that are not multiples of the window.
    swin_pad_before_shift: bool = True
    # QRNet query-dynamic attention after each backbone stage and in the neck's down-samplers.
    query_modulation: bool = True
    qda_channel_gate: bool = True
    qda_spatial_gate: bool = True
    qda_rank: int = 30
    qda_reduction: int = 16
    neck_channels: int = 256
    # ResNet stages returned by timm (features_only); (1, 2, 3) drops the last stage and halves the output stride.
    out_indices: list[int] = field(default_factory=lambda: [1, 2, 3, 4])
    # Optional initialisation: QRNet/mmdet Mask R-CNN Swin checkpoint or DETR/TransVG ResNet checkpoint.
    checkpoint: str | None = None
    # BatchNorm with fixed statistics and affine (DETR/TransVG's frozen BN for pretrained ResNets). False: BN trains,
    # synchronised across processes under DDP. Eval outputs are the same either way on the same weights.
    frozen_bn: bool = False


@dataclass
class GrecConfig:
    """Generalized REC head (beyond the paper; off in every preset): zero, one or many boxes with a score each.

    ``num_queries`` prediction tokens, each with its own learned identity, predict a box and a target score; they
    are matched one-to-one to the target set (Hungarian matching, DETR-style) for the box losses, and every token's
    score is trained to say whether it was matched. Details and figures: docs/model.md.
    """

    enabled: bool = False
    num_queries: int = 5
    # A token's box counts as "found" when sigmoid(score) >= threshold; `lgrnet eval --sweep --save-threshold`
    # stores the threshold that maximises Precision@(F1=1, IoU>=0.5) on an evaluation split.
    threshold: float = 0.5
    # Duplicate suppression at inference: of two found boxes with IoU above nms_iou, the lower-scoring one is dropped
    # (torchvision's nms). One-to-one matching trains the tokens not to repeat an object, but a model trained briefly
    # still does; null keeps every found box.
    nms_iou: float | None = None
    # Matching cost = match_score * (-p) + match_l1 * L1 + match_giou * (-GIoU) (DETR's weighting of its terms).
    match_score: float = 2.0
    match_l1: float = 5.0
    match_giou: float = 2.0
    # Score loss: binary cross-entropy on every token of every supervised layer (matched = 1, others = 0).
    score_weight: float = 2.0


@dataclass
class ModelConfig:
    text: TextConfig = field(default_factory=TextConfig)
    visual: VisualConfig = field(default_factory=VisualConfig)
    image_size: int = 640
    hidden_dim: int = 256
    num_heads: int = 8
    ffn_dim: int = 2048
    dropout: float = 0.1
    num_layers: int = 6
    # Prediction token(s): reference uses one zero token (not a parameter); the paper a learnable one.
    num_pred_tokens: int = 1
    pred_token: Literal["zero", "learnable"] = "zero"
    # Projections to hidden_dim: reference one Linear per modality, paper "two MLP layers".
    proj_layers: int = 1
    # Coordinate embedding (paper Table VII): "qk" adds it to the prediction token's TCA query/key (reference),
    # "add" adds it to the prediction token itself before every layer (paper Eq. 4), "concat" concatenates it
    # to the prediction token and projects back, "none" disables the coordinate branch.
    coord_embed: Literal["qk", "add", "concat", "none"] = "qk"
    # TCF cross-attention with q/k/v input projections (paper) or projection-free (reference).
    cross_attn_projections: bool = False
    # Paper Table XI: the text attends to the image instead of the image attending to the text.
    text_attends_image: bool = False
    # Init of the fusion part: "reference" (torch defaults, Xavier prediction head) or "xavier" (paper).
    init: Literal["reference", "xavier"] = "reference"
    # Start of the learned visual position table (it is trained either way): "normal" N(0, 1) (reference, paper),
    # or "sine": each visual token's row starts as the 2-D sine embedding of its cell centre, the same embedding
    # the coordinate branch gives the prediction token, so its TCA query matches keys near the predicted point
    # from the first step (faster convergence from scratch; the prediction-token rows stay N(0, 1)).
    visual_pos_init: Literal["normal", "sine"] = "normal"
    # Also add the visual position table to the visual tokens once, at the input of the reasoning stack
    # (ViT-style), so attention *values* carry position. Reference and paper: False (position only in queries
    # and keys, DETR-style), which leaves the box head to infer where the attended tokens are - slow from scratch.
    visual_pos_input: bool = False
    # Generalized REC head (zero, one or many targets with a score each); off = the paper's single box.
    grec: GrecConfig = field(default_factory=GrecConfig)


@dataclass
class LossConfig:
    """Box losses and the cross-modal alignment loss (paper III-D, spec section 9)."""

    l1_weight: float = 1.0
    giou_weight: float = 1.0
    aux_loss: bool = True
    align: bool = True
    align_weight: float = 1.0
    align_symmetric: bool = True
    align_all_layers: bool = False
    align_temperature: float = 0.07
    # Gather negatives across ranks for the alignment loss (reference: local batch only).
    align_gather: bool = False
    # Supervision of the TFE coordinate point (beyond the paper; reference and paper: 0, the point is trained by no
    # loss): weight of the L1 distance between the point and the target box centre (the nearest target's centre
    # for a target set; no-target expressions add nothing).
    coord_weight: float = 0.0
    # Dense region loss (beyond the paper; reference and paper: 0): weight of the loss that makes the visual tokens
    # of the target box match the sentence embedding (model/losses.py), and the temperature of its softmax.
    # Single-target models only.
    region_weight: float = 0.0
    region_temperature: float = 0.1


# --------------------------------------------------------------------------------------------------------------
# Data


@dataclass
class AugmentConfig:
    """Training augmentations (spec section 11.3)."""

    crop: bool = True
    scales: list[int] = field(default_factory=lambda: [640, 608, 576, 544, 512, 480, 448])
    translate: bool = True
    color_jitter: float = 0.4
    color_jitter_prob: float = 0.8
    blur: bool = False
    flip: bool = False


#: The annotation formats the readers take: "transvg" split files, "refer" API files, "vg" region descriptions,
#: "jsonl" custom data, "synth" SynthRef, "hf-parquet" RefCOCO/+/g parquet downloads from the Hugging Face hub,
#: "grefcoco" the gRefCOCO release (grefs(unc).json + instances.json; zero, one or many targets per expression).
DataFormat = Literal["transvg", "refer", "vg", "jsonl", "synth", "hf-parquet", "grefcoco"]
DATA_FORMATS: tuple[str, ...] = typing.get_args(DataFormat)


@dataclass
class DataConfig:
    format: DataFormat = "transvg"
    # transvg: dataset key (unc, unc+, gref, gref_umd, referit, flickr); refer: dataset (refcoco, refcocog, ...).
    dataset: str = "unc"
    # Folder holding the annotations: transvg `split_root` (contains <dataset>/), refer folder, jsonl folder.
    root: str = "data"
    # Image folder; relative paths in records are joined to it (jsonl: relative to the JSONL file instead).
    image_root: str = "images"
    refer_split_by: str = "unc"
    # vg: evaluation split files (TransVG .pth or lgrnet .jsonl) whose COCO images are dropped from Visual Genome
    # through its image_data.json coco_id, so pre-training never sees an evaluation image ([] keeps every image).
    exclude_images_of: list[str] = field(default_factory=list)
    # Which expressions count as spatial (never cropped; the spatial/non-spatial metrics and statistics):
    # "substring" = the reference's rule (left/right/top/bottom/middle anywhere, so "leftmost" too),
    # "word" = whole words and their -most/-est forms (lgrnet.data.spatial).
    spatial_match: Literal["substring", "word"] = "substring"
    train_split: str = "train"
    val_split: str = "val"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 4
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2


# --------------------------------------------------------------------------------------------------------------
# Training


@dataclass
class TrainConfig:
    epochs: int = 90
    # Per-process batch size; global batch = batch_size * world_size * accumulation_steps.
    batch_size: int = 16
    accumulation_steps: int = 1
    lr: float = 1e-4
    lr_visual: float = 1e-5  # Swin/ResNet proper
    lr_neck_lateral: float = 1e-5  # neck 1x1 laterals
    lr_text: float = 1e-5
    lr_qda: float = 1e-4  # query-dynamic attention, backbone and neck
    weight_decay: float = 1e-4
    # "step": the reference's x lr_gamma at each of lr_drop_epochs; "cosine": decay to lr x min_lr_ratio over the
    # run (all epochs or max_steps, whichever ends it first; with time_limit_minutes, the steps that fit in the
    # budget, estimated from the throughput as the run goes), the better schedule for a fixed budget.
    lr_schedule: Literal["step", "cosine"] = "step"
    lr_drop_epochs: list[int] = field(default_factory=lambda: [60])
    lr_gamma: float = 0.1
    min_lr_ratio: float = 0.0
    warmup_steps: int = 0
    clip_max_norm: float = 0.0
    precision: Literal["off", "bf16", "fp16"] = "bf16"
    compile: bool = False
    seed: int = 7
    deterministic: bool = False
    eval_every: int = 1
    # Also validate every N optimizer steps inside an epoch (0 = only at epoch ends): learning curves of long
    # epochs. An improvement there is saved as the "best" checkpoint like one at an epoch end.
    eval_every_steps: int = 0
    checkpoint_every: int = 10
    checkpoint_every_steps: int = 0
    log_every: int = 20
    max_steps: int = 0  # 0 = no limit
    time_limit_minutes: float = 0.0  # 0 = no limit
    # Model folder whose weights start a run (fine-tuning; not a resume: optimizer and schedule start fresh).
    init_from: str | None = None
    # A frozen text encoder training on a CPU remembers each expression's token features, up to this many MB
    # (0 = off; not with compile): its output never changes, and later epochs skip it (a tenth of an lgrnet-small step).
    text_cache_mb: float = 1024.0


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    name: str = "lgrnet-swin-s"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------------------------
# Building from dictionaries with validation

_T = typing.TypeVar("_T")


def _check_value(value: Any, annotation: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value is False and "off" in args:  # YAML 1.1 reads a bare `off` as false
            value = "off"
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(annotation, value, key)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):
            # PyYAML reads "1e-4" (no dot) as a string; accept it where a number is expected.
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {annotation!r}")


def _build(cls: type[_T], data: dict[str, Any], prefix: str = "") -> _T:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in data:
        if key not in names:
            full = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"unknown config key '{full}' (valid keys here: {', '.join(sorted(names))})")
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        kwargs[key] = _check_value(value, hints[key], full)
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a validated :class:`Config` from a (possibly partial) nested dict."""
    merged = _deep_merge(Config().to_dict(), data)
    return _build(Config, merged)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in _OPAQUE_DICTS:
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Free-form dicts that are replaced, not merged, when a YAML file sets them.
_OPAQUE_DICTS = {"config_overrides", "timm_kwargs"}


def apply_overrides(config: Config, overrides: list[str] | None) -> Config:
    """Apply ``key.sub=value`` strings (values parsed as YAML) and re-validate."""
    data = config.to_dict()
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {dotted}: cannot parse value {raw!r}: {exc}") from None
        node = data
        parts = dotted.strip().split(".")
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key '{'.'.join(parts[: i + 1])}' in override {item!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key '{dotted}' in override {item!r}")
        node[parts[-1]] = value
    return _build(Config, data)


# --------------------------------------------------------------------------------------------------------------
# Presets


def _reference() -> dict[str, Any]:
    return {"name": "lgrnet-swin-s"}


def _paper() -> dict[str, Any]:
    return {
        "name": "lgrnet-paper-swin-s",
        "model": {
            "visual": {"query_modulation": False},
            "pred_token": "learnable",
            "proj_layers": 2,
            "coord_embed": "add",
            "cross_attn_projections": True,
            "init": "xavier",
        },
        "loss": {"align_weight": 2.0, "align_symmetric": False, "align_all_layers": True, "align_gather": True},
        "data": {"augment": {"translate": True}},
    }


def _r101() -> dict[str, Any]:
    return {
        "name": "lgrnet-r101",
        "model": {"visual": {"kind": "resnet", "timm_name": "resnet101", "drop_path_rate": 0.0, "frozen_bn": True}},
    }


def _tiny() -> dict[str, Any]:
    # Small enough to train on a CPU: MiniLM (frozen, offline), a slim ResNet-18 cut after its third stage (output
    # stride 16, so 128 px still gives 8x8 + 4x4 visual tokens), 3 fusion layers. From scratch the fusion layers
    # first learn text priors and ignore the image (docs/synthref.md), so the preset starts the visual position
    # table from the sine embedding the coordinate branch uses and also adds it to the visual tokens (values carry
    # position); the shipped SynthRef model also starts its backbone from a SynthRef-pretrained one.
    return {
        "name": "lgrnet-tiny",
        "model": {
            "text": {"name": "minilm", "pretrained": True, "freeze": True, "save_weights": False, "max_length": 20},
            "visual": {
                "kind": "resnet",
                "timm_name": "resnet18",
                "timm_kwargs": {"channels": [32, 64, 128, 256], "stem_width": 32},
                "out_indices": [1, 2, 3],
                "drop_path_rate": 0.0,
                "qda_rank": 8,
                "neck_channels": 128,
            },
            "image_size": 128,
            "hidden_dim": 128,
            "num_heads": 4,
            "ffn_dim": 512,
            "num_layers": 3,
            "dropout": 0.0,
            "visual_pos_init": "sine",
            "visual_pos_input": True,
        },
        "train": {"batch_size": 16, "lr": 5e-4, "lr_visual": 2e-4, "lr_neck_lateral": 5e-4, "lr_qda": 5e-4,
                  "epochs": 12, "lr_drop_epochs": [10], "warmup_steps": 100, "clip_max_norm": 0.5,
                  "precision": "off"},
        # No colour jitter (colour words) and no crop; small scale/translation jitter only.
        "data": {"augment": {"scales": [128, 112, 96], "crop": False, "color_jitter": 0.0}, "num_workers": 1},
    }


def _small() -> dict[str, Any]:
    # lgrnet-tiny's extractors with twice the reasoning depth and width: the tiny model levels off at 84.6% SynthRef
    # val, this one passes 85% (docs/synthref.md). Trains at batch 128 on a GPU in minutes; slow on a CPU.
    config = _tiny()
    config["name"] = "lgrnet-small"
    config["model"].update({"hidden_dim": 256, "num_heads": 8, "ffn_dim": 1024, "num_layers": 6})
    return config


PRESETS: dict[str, typing.Callable[[], dict[str, Any]]] = {
    "lgrnet-swin-s": _reference,
    "lgrnet-paper-swin-s": _paper,
    "lgrnet-r101": _r101,
    "lgrnet-tiny": _tiny,
    "lgrnet-small": _small,
}

def load_config(source: str | Path | dict[str, Any] | Config = "lgrnet-swin-s",
                overrides: list[str] | None = None) -> Config:
    """Load a preset name, a YAML file (which may say ``base: <preset or file>``), or a dict; then overrides."""
    if isinstance(source, Config):
        config = copy.deepcopy(source)
    elif isinstance(source, dict):
        config = config_from_dict(source)
    else:
        config = config_from_dict(_resolve(str(source), seen=()))
    return apply_overrides(config, overrides)


def _resolve(source: str, seen: tuple[str, ...]) -> dict[str, Any]:
    if source in PRESETS:
        return PRESETS[source]()
    path = Path(source)
    if not path.is_file():
        raise ConfigError(f"config {source!r} is neither a preset ({', '.join(PRESETS)}) nor a YAML file")
    if str(path.resolve()) in seen:
        raise ConfigError(f"config {source}: 'base' chain loops back to itself")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {source}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {source}: expected a mapping at the top level")
    base = data.pop("base", None)
    if base is None:
        return data
    base_path = base if base in PRESETS else str(path.parent / base)
    return _deep_merge(_resolve(base_path, seen + (str(path.resolve()),)), data)


# --------------------------------------------------------------------------------------------------------------
# Training configs that start from a model folder (train.init_from)


def _leaf_keys(data: dict[str, Any], prefix: str = "") -> set[str]:
    keys: set[str] = set()
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, dict) and value and key not in _OPAQUE_DICTS:
            keys |= _leaf_keys(value, dotted)
        else:
            keys.add(dotted)
    return keys


def _yaml_chain_keys(source: str) -> set[str]:
    """Keys the YAML file ``source`` and the YAML files of its ``base:`` chain set (a preset's are not counted)."""
    keys: set[str] = set()
    seen: set[str] = set()
    path: Path | None = Path(source)
    while path is not None and path.is_file() and str(path.resolve()) not in seen:
        seen.add(str(path.resolve()))
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            break
        base = data.pop("base", None)
        keys |= _leaf_keys(data)
        path = None if base is None or base in PRESETS else path.parent / base
    return keys


def explicit_keys(source: str | Path | dict[str, Any] | Config, overrides: list[str] | None = None) -> set[str]:
    """The dotted keys a config source sets on purpose: those in its YAML file and the YAML files of its
    ``base:`` chain, and those of the overrides. Values that come from a preset (``base: lgrnet-tiny``) or from
    the defaults are not explicit. A :class:`Config` object sets every key."""
    if isinstance(source, Config):
        keys = _leaf_keys(source.to_dict())
    elif isinstance(source, dict):
        keys = _leaf_keys(source)
    elif str(source) in PRESETS:
        keys = set()
    else:
        keys = _yaml_chain_keys(str(source))
    for item in overrides or []:
        dotted, _, raw = item.partition("=")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        dotted = dotted.strip()
        keys |= _leaf_keys(value, dotted) if isinstance(value, dict) and value else {dotted}
    return keys
