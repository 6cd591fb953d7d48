"""Pretrained initialisation of the visual extractor (spec section 10, "Initialisation sources").

* QRNet / mmdetection Mask R-CNN Swin checkpoints (``state_dict`` with the official Swin-Object-Detection key
  names ``backbone.*`` and ``neck.lateral_convs.*``) -> :func:`load_swin_mmdet_checkpoint`.
  mmdet's Swin puts ``downsample`` (patch merging) at the END of stage ``s``; timm at the START of stage ``s+1``.
* DETR / TransVG ResNet checkpoints (``model`` dict, ``backbone.0.body.{conv1,bn1,layer1..4}.*``) ->
  :func:`load_resnet_detr_checkpoint`.

Files are read with ``torch.load(weights_only=True)`` (or safetensors). Query-dynamic attention and the neck's
down-samplers are not part of these detectors: they stay randomly initialised and are reported as expected
missing keys. Detector parts LGR-NET does not use (RPN/RoI heads, FPN output convs, DETR's transformer) are
reported as ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lgrnet.errors import CheckpointError
from lgrnet.model.qda import REFERENCE_QDA_KEY_MAP

_QDA_FROM_REFERENCE = {ref: ours for ours, ref in REFERENCE_QDA_KEY_MAP.items()}


@dataclass
class LoadReport:
    """What a checkpoint import did. ``missing`` lists model keys that should have come from the file."""

    path: str
    loaded: list[str] = field(default_factory=list)  # model keys filled from the file
    missing: list[str] = field(default_factory=list)  # model keys the file should have had
    expected_missing: list[str] = field(default_factory=list)  # random by design (QDA, BN counters)
    unexpected: list[str] = field(default_factory=list)  # file keys that map to nothing we know
    ignored: list[str] = field(default_factory=list)  # file keys deliberately dropped (unused detector parts)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def summary(self) -> str:
        text = (f"{self.path}: loaded {len(self.loaded)} tensors; {len(self.expected_missing)} left at their "
                f"initialisation by design (query-dynamic attention etc.); {len(self.ignored)} unused file keys "
                f"ignored")
        if self.missing:
            text += f"; MISSING {len(self.missing)}: {', '.join(self.missing[:5])}{' ...' * (len(self.missing) > 5)}"
        if self.unexpected:
            text += (f"; UNEXPECTED {len(self.unexpected)}: {', '.join(self.unexpected[:5])}"
                     f"{' ...' * (len(self.unexpected) > 5)}")
        return text


def read_state_dict(path: str | Path, containers: tuple[str, ...] = ("state_dict", "model")) -> dict[str, torch.Tensor]:
    """Read a tensor dict from ``.pth``/``.pt`` (weights_only) or ``.safetensors``; unwrap ``state_dict``/``model``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refuses unsafe or corrupt files with many exception types
        raise CheckpointError(f"checkpoint {path} cannot be read safely (weights-only): {_reason(exc)}") from None
    if isinstance(data, dict):
        for key in containers:
            if isinstance(data.get(key), dict):
                data = data[key]
                break
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"checkpoint {path} holds no state dict of tensors (looked for {', '.join(containers)})")
    return {_strip_module(k): v for k, v in data.items()}


def _reason(exc: Exception) -> str:
    """One line out of torch's long weights-only refusal (the unpickler's own reason when there is one)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _strip_module(key: str) -> str:
    while key.startswith("module."):
        key = key[len("module."):]
    return key


# --------------------------------------------------------------------------------------------------------------
# Key mapping: file key -> our key, None = ignored on purpose; raising KeyError = unexpected


_SWIN_IGNORED = ("rpn_head.", "roi_head.", "bbox_head.", "mask_head.", "neck.fpn_convs.")


def swin_mmdet_key(key: str) -> str | None:
    """Map an mmdet / Swin-Object-Detection key onto the visual extractor's (timm) names.

    Raises ``KeyError`` for keys outside the known layout; returns None for keys ignored on purpose.
    """
    if key.startswith(_SWIN_IGNORED) or key.endswith(("relative_position_index", "attn_mask")):
        return None  # unused detector parts; index/mask buffers are recomputed by timm
    if m := re.fullmatch(r"backbone\.layers\.(\d+)\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)", key):
        return f"backbone.layers.{int(m[1]) + 1}.downsample.{m[2]}"  # end of stage s -> start of stage s+1
    if m := re.fullmatch(r"backbone\.layers\.(\d+)\.qdatt\.(.+)", key):
        return f"stage_qda.{m[1]}.{_QDA_FROM_REFERENCE[m[2]]}"
    if m := re.fullmatch(r"neck\.fpn_down\.(\d+)\.qdatt\.(.+)", key):
        return f"neck.down_qda.{m[1]}.{_QDA_FROM_REFERENCE[m[2]]}"
    if m := re.fullmatch(r"neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)", key):
        return f"neck.laterals.{m[1]}.{m[2]}"
    if re.fullmatch(r"backbone\.(patch_embed\.(proj|norm)\.(weight|bias)|norm\d\.(weight|bias)|"
                    r"layers\.\d+\.blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)|"
                    r"layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table)", key):
        return key
    raise KeyError(key)


_DETR_BODY = re.compile(r"(?:^|.*\.)backbone\.0\.body\.(.+)")


def resnet_detr_key(key: str) -> str | None:
    """Map a DETR/TransVG key (``[visumodel.]backbone.0.body.<torchvision name>``) onto ``backbone.<name>``.

    timm ResNets use torchvision's names (conv1, bn1, layerN.i.{conv,bn}k, downsample.{0,1}). Everything outside
    the backbone body (transformer, heads, input projection) is ignored.
    """
    if m := _DETR_BODY.fullmatch(key):
        if m[1].startswith("fc."):
            return None  # a classifier some ResNet checkpoints carry
        return f"backbone.{m[1]}"
    return None


# --------------------------------------------------------------------------------------------------------------
# Loading


def _load_mapped(module: nn.Module, prefix: str, state: dict[str, torch.Tensor],
                 mapper: Callable[[str], str | None], expected_missing: Callable[[str], bool], *,
                 absent_is_ignored: Callable[[str], bool], hint: str, layout: str, source: str) -> LoadReport:
    """Map ``state`` onto ``module`` key by key, load what fits and report the rest.

    ``mapper`` gives the module's key for a file key (None: dropped on purpose, KeyError: unknown); a mapped key the
    module lacks is ignored when ``absent_is_ignored`` says so, else unexpected; a shape mismatch is an error.
    """
    report = LoadReport(path=source)
    own = module.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        try:
            target = mapper(key)
        except KeyError:
            report.unexpected.append(key)
            continue
        if target is None:
            report.ignored.append(key)
            continue
        if target not in own:
            (report.ignored if absent_is_ignored(target) else report.unexpected).append(key)
            continue
        if own[target].shape != value.shape:
            raise CheckpointError(f"{prefix}: {key} has shape {list(value.shape)}, the model's {target} "
                                  f"expects {list(own[target].shape)} ({hint})")
        mapped[target] = value
    if not mapped:
        raise CheckpointError(f"{prefix}: no key matches {layout} (first keys: {', '.join(list(state)[:3])})")
    module.load_state_dict(mapped, strict=False)
    report.loaded = sorted(mapped)
    for key in own:
        if key not in mapped:
            (report.expected_missing if expected_missing(key) else report.missing).append(key)
    return report


def _load_visual(visual: nn.Module, path: str | Path, state: dict[str, torch.Tensor],
                 mapper: Callable[[str], str | None], expected_missing: Callable[[str], bool]) -> LoadReport:
    # QDA weights in the file are ignored when query modulation is off in this model.
    return _load_mapped(visual, f"checkpoint {path}", state, mapper, expected_missing,
                        absent_is_ignored=lambda target: "qda" in target, hint="wrong architecture in the config?",
                        layout="this visual extractor", source=str(path))


def load_swin_mmdet_checkpoint(visual: nn.Module, path: str | Path) -> LoadReport:
    """Load a QRNet / mmdet Mask R-CNN Swin checkpoint into a Swin :class:`~lgrnet.model.visual.VisualExtractor`."""
    if getattr(getattr(visual, "cfg", None), "kind", "swin") != "swin":
        raise CheckpointError(f"checkpoint {path}: a Swin detector checkpoint needs model.visual.kind 'swin'")
    state = read_state_dict(path, containers=("state_dict", "model"))
    return _load_visual(visual, path, state, swin_mmdet_key, lambda key: "qda" in key)


def load_resnet_detr_checkpoint(visual: nn.Module, path: str | Path) -> LoadReport:
    """Load a DETR / TransVG ResNet checkpoint into a ResNet :class:`~lgrnet.model.visual.VisualExtractor`.

    Only the backbone comes from the file; the neck laterals are expected missing too (DETR has no FPN), as are
    BatchNorm ``num_batches_tracked`` counters (DETR uses frozen BatchNorm without them).
    """
    if getattr(getattr(visual, "cfg", None), "kind", "resnet") != "resnet":
        raise CheckpointError(f"checkpoint {path}: a DETR ResNet checkpoint needs model.visual.kind 'resnet'")
    state = read_state_dict(path, containers=("model", "state_dict"))
    return _load_visual(visual, path, state, resnet_detr_key,
                        lambda key: "qda" in key or key.startswith("neck.") or key.endswith("num_batches_tracked"))


def load_visual_checkpoint(visual: nn.Module, path: str | Path) -> LoadReport:
    """Dispatch on the extractor's backbone kind (``model.visual.checkpoint``)."""
    if getattr(visual.cfg, "kind", None) == "resnet":
        return load_resnet_detr_checkpoint(visual, path)
    return load_swin_mmdet_checkpoint(visual, path)


# --------------------------------------------------------------------------------------------------------------
# Reference-implementation checkpoints (whole LGR-NET, spec section 13) -> LGRNet


_REFERENCE_DECODER = "vl_transformer_decoder.transformer.decoder."
_REFERENCE_FIXED = {
    "visu_pos_embed.weight": "visual_pos.weight",
    "vl_transformer_decoder.text_query_embed.weight": "text_pos.weight",
    "text_proj.weight": "tfe.text_proj.weight",
    "text_proj.bias": "tfe.text_proj.bias",
    "visu_proj.weight": "visual_proj.weight",
    "visu_proj.bias": "visual_proj.bias",
    "bertcls_proj.weight": "tfe.sentence_proj.weight",
    "bertcls_proj.bias": "tfe.sentence_proj.bias",
    "class_proj.weight": "criterion.object_proj.weight",
    "class_proj.bias": "criterion.object_proj.bias",
    "logit_scale": "criterion.logit_scale",
}
_REFERENCE_LAYER = re.compile(r"layers\.\d+\.(self_attn\.(in_proj_weight|in_proj_bias|out_proj\.(weight|bias))|"
                              r"cross_attn\.out_proj\.(weight|bias)|(linear1|linear2|norm1|norm2|norm3)\.(weight|bias))")


def reference_key(key: str) -> str | None:
    """Map a key of the reference implementation's ``model`` state dict onto :class:`~lgrnet.model.LGRNet`'s.

    Returns None for the reference's dead modules (``rpn_head``, ``query_scale``, the BERT pooler) and for
    buffers we recompute; raises ``KeyError`` for keys outside the layout of spec section 13.
    """
    if key in _REFERENCE_FIXED:
        return _REFERENCE_FIXED[key]
    if key.startswith("visumodel."):
        target = swin_mmdet_key(key[len("visumodel."):])  # Swin + neck: mmdet names, rpn_head ignored there
        return None if target is None else f"visual.{target}"
    if key.startswith("textmodel.bert."):
        sub = key[len("textmodel.bert."):]
        if sub.startswith("pooler.") or sub.endswith(("position_ids", "token_type_ids")):
            return None
        return f"text.encoder.{sub}"
    if key.startswith(_REFERENCE_DECODER):
        sub = key[len(_REFERENCE_DECODER):]
        if sub.startswith("query_scale."):
            return None
        if _REFERENCE_LAYER.fullmatch(sub) or re.fullmatch(r"norm\.(weight|bias)", sub):
            return f"reasoning.{sub}"
        if re.fullmatch(r"coordinate_head\.layers\.[01]\.(weight|bias)", sub):
            return f"tfe.{sub}"
    if re.fullmatch(r"prediction\.layers\.[012]\.(weight|bias)", key):
        return f"head.{key[len('prediction.'):]}"
    raise KeyError(key)


def import_reference_checkpoint(model: nn.Module, state_dict_or_path: dict[str, torch.Tensor] | str | Path
                                ) -> LoadReport:
    """Load a checkpoint written by the reference LGR-NET code (its ``model`` state dict) into ``model``.

    ``model`` should be built from ``lgrnet-swin-s`` (same sizes). Only the ``model`` entry of a ``.pth`` file is
    read (weights-only; the pickled ``args`` of the reference need a full unpickler, so strip them first if
    ``torch.load`` refuses the file). Dead modules are reported as ignored; every parameter of ``model`` not in
    the file is reported as missing; a shape mismatch is a :class:`CheckpointError`.
    """
    if isinstance(state_dict_or_path, dict):
        source = "reference state dict"
        state = {_strip_module(k): v for k, v in state_dict_or_path.items()}
    else:
        source = str(state_dict_or_path)
        state = read_state_dict(state_dict_or_path, containers=("model",))
    model = getattr(model, "module", model)
    params = {name for name, _ in model.named_parameters()}
    # Buffers the file lacks (e.g. transformers' position_ids) are expected; parameters are reported missing.
    return _load_mapped(model, source, state, reference_key, lambda key: key not in params,
                        absent_is_ignored=lambda target: False, hint="build the model from lgrnet-swin-s",
                        layout="the reference layout", source=source)
