"""Evaluation loop (spec section 12): metrics on the canvas and in original pixels, and per-sample predictions;
for models with the generalized REC head also the GREC metrics (:mod:`lgrnet.engine.metrics`) and their sweep.

Every rank evaluates its share of the split (the data pipeline's evaluation sampler gives each sample to exactly
one rank, fixing spec 15.19), hits and IoU sums are added over ranks, and predictions are gathered on rank 0.
Evaluation runs without autocast by default, as the reference (fp32).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from lgrnet.data.records import target_kind
from lgrnet.data.spatial import SpatialMatch, is_spatial
from lgrnet.data.transforms import canvas_to_original
from lgrnet.engine.distributed import DistInfo
from lgrnet.engine.metrics import (
    SWEEP_THRESHOLDS,
    GrecAccumulator,
    GrecSample,
    MetricAccumulator,
    best_threshold,
    canvas_iou,
    grec_match,
    meets_min_n_acc,
    paired_iou,
)
from lgrnet.model.grec import select_boxes
from lgrnet.model.registry import CONFIG_FILE
from lgrnet.precision import autocast, normalize_precision

if TYPE_CHECKING:
    from lgrnet.config import Config, DataConfig, GrecConfig
    from lgrnet.data.records import Record


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, info: DistInfo, precision: str = "fp32",
             collect_predictions: bool = False, spatial_match: SpatialMatch = "substring",
             grec_threshold: float | None = None, sweep: bool = False, min_n_acc: float | None = None,
             ) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """Metrics of ``model`` on ``loader`` (reduced over ranks) and, when asked, the predictions (rank 0 only:
    others get None), each with its box in original-image pixels. ``spatial_match`` (``data.spatial_match``)
    decides the spatial/non-spatial split.

    A model with the generalized REC head (its output has ``token_boxes``) is also measured as GREC
    (:func:`grec_metrics`): the classic keys stay those of its top box, the ``grec_*`` keys are at
    ``grec_threshold`` (default: the model's ``model.grec.threshold``), ``grec_sweep`` (the figures at every
    threshold of :data:`SWEEP_THRESHOLDS`) is added when ``sweep``, ``min_n_acc`` constrains the best threshold
    (:func:`~lgrnet.engine.metrics.best_threshold`), and predictions carry the boxes found; the
    found boxes go through the model's duplicate suppression (``model.grec.nms_iou``) as at inference."""
    was_training = model.training
    model.eval()
    acc = MetricAccumulator()
    grec: GrecAccumulator | None = None
    predictions: list[dict[str, Any]] = []
    try:
        for batch in loader:
            batch = batch.to(info.device, non_blocking=True)
            inputs = batch.model_inputs()
            inputs.pop("target_boxes", None)
            inputs.pop("target_valid", None)
            with autocast(info.device, precision):
                output = model(**inputs)
            pred = output.pred_boxes.float().cpu()
            gt = batch.boxes.float().cpu()
            iou_c = canvas_iou(pred, gt)
            pred_orig = canvas_to_original(pred.clamp(0.0, 1.0), batch.meta, clamp=True)
            known = all(m.original_box is not None for m in batch.meta)
            iou_o = None
            if known:
                gt_orig = torch.tensor([list(m.original_box) for m in batch.meta], dtype=torch.float32)
                iou_o = paired_iou(pred_orig, gt_orig)
            spatial = [is_spatial(m.expression, spatial_match) for m in batch.meta]
            acc.update(iou_c, iou_o, spatial)
            samples = found = None
            if getattr(output, "token_boxes", None) is not None:
                if grec is None:
                    grec_config = _model_grec(model)
                    grec_threshold = grec_config.threshold if grec_threshold is None else grec_threshold
                    grec = GrecAccumulator((*SWEEP_THRESHOLDS, grec_threshold), grec_config.nms_iou)
                samples = grec_samples(output, pred_orig, batch.meta)
                # A sample whose target set is unknown has no GREC outcome (grec_count says how many had one).
                grec.update([sample for sample, meta in zip(samples, batch.meta) if sample_targets(meta) is not None])
                if collect_predictions:
                    found = select_boxes(torch.stack([sample.boxes for sample in samples]),
                                         output.token_logits[-1].float().cpu(), grec_threshold, grec.nms_iou)
            if collect_predictions:
                for i, meta in enumerate(batch.meta):
                    row = {
                        "id": meta.id,
                        "image": meta.image,
                        "expression": meta.expression,
                        "box": [round(v, 2) for v in pred_orig[i].tolist()],
                        "gt_box": list(meta.original_box) if meta.original_box is not None else None,
                        "box_format": "xyxy",  # box and gt_box: (x1, y1, x2, y2) in original-image pixels
                        "iou": round(float(iou_o[i]), 5) if iou_o is not None else None,
                        "iou_canvas": round(float(iou_c[i]), 5),
                        "spatial": spatial[i],
                    }
                    if samples is not None and found is not None:
                        row.update(_grec_prediction(samples[i], *found[i]))
                    predictions.append(row)
    finally:
        model.train(was_training)
    metrics: dict[str, Any] = acc.compute(info)
    if grec is not None:
        metrics.update(grec_metrics(grec.compute(info), grec_threshold, sweep=sweep, min_n_acc=min_n_acc))
    if not collect_predictions:
        return metrics, None
    return metrics, _gather_predictions(predictions, info)


def _model_grec(model: nn.Module) -> GrecConfig:
    """``model.grec`` of the model's config (through DDP / compile wrappers); the defaults without one."""
    from lgrnet.config import GrecConfig

    inner = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    inner = getattr(inner, "module", inner)  # DDP wrapper
    config = getattr(inner, "config", None)
    return config.grec if hasattr(config, "grec") else GrecConfig()


def sample_targets(meta: Any) -> tuple[tuple[float, float, float, float], ...] | None:
    """A sample's target set in original pixels: its ``original_boxes`` (possibly empty), else its one box; None
    when neither is known."""
    if meta.original_boxes is not None:
        return tuple(meta.original_boxes)
    return (meta.original_box,) if meta.original_box is not None else None


def grec_samples(output: Any, top_boxes: torch.Tensor, metas: list[Any]) -> list[GrecSample]:
    """The :class:`GrecSample` of every sample of a batch: the last layer's token boxes mapped to original pixels
    (clamped as the top box is), their probabilities, the target set, and the top box ``top_boxes`` [B, 4]."""
    tokens = output.token_boxes[-1].float().cpu().clamp(0.0, 1.0)  # [B, K, 4] canvas cxcywh / S
    scores = output.token_logits[-1].float().cpu().sigmoid()  # [B, K], as select_boxes computes them
    per_token = [canvas_to_original(tokens[:, k], metas, clamp=True) for k in range(tokens.shape[1])]
    boxes = torch.stack(per_token, dim=1)  # [B, K, 4] x1y1x2y2 original pixels
    return [GrecSample(boxes[i], scores[i], torch.tensor(sample_targets(meta) or (), dtype=torch.float64).reshape(-1, 4),
                       top_box=top_boxes[i]) for i, meta in enumerate(metas)]


def _grec_prediction(sample: GrecSample, found: torch.Tensor, scores: torch.Tensor) -> dict[str, Any]:
    """The GREC part of a prediction row: the boxes ``found`` (best first) with their ``scores``, the target set
    and the outcome."""
    outcome = grec_match(found, sample.targets)
    return {
        "boxes": [[round(v, 2) for v in box] for box in found.tolist()],
        "scores": [round(v, 5) for v in scores.tolist()],
        "gt_boxes": [list(box) for box in sample.targets.tolist()],
        "kind": target_kind(len(sample.targets)),
        "f1": round(outcome.f1, 5),
        "correct": outcome.correct,
    }


#: The keys of a GREC row (see :func:`lgrnet.engine.metrics.grec_row`) reported at the model's threshold, as
#: ``grec_<key>``.
_GREC_KEYS = ("precision", "n_acc", "t_acc", "single_acc50", "mean_f1", "precision_single", "precision_multi",
              "count", "single_count", "multi_count", "none_count")


def grec_metrics(rows: list[dict[str, Any]], threshold: float, sweep: bool = False,
                 min_n_acc: float | None = None) -> dict[str, Any]:
    """The flat ``grec_*`` metrics: the figures of the row at ``threshold`` (``grec_precision`` is
    Precision@(F1=1, IoU>=0.5), ``grec_n_acc``, ``grec_t_acc``, ``grec_single_acc50`` the top box's Acc@0.5 on
    single-target samples, ...), the swept ``grec_best_threshold`` with its ``grec_best_precision`` and
    ``grec_best_n_acc`` (with ``min_n_acc``: the best among those reaching that N-acc, ``grec_min_n_acc`` and
    ``grec_best_meets_min_n_acc`` saying whether one did), and with ``sweep`` the table ``grec_sweep`` (one row
    per threshold of :data:`SWEEP_THRESHOLDS`)."""
    at = next(row for row in rows if row["threshold"] == threshold)
    swept = [row for row in rows if row["threshold"] in SWEEP_THRESHOLDS]
    best = best_threshold(swept, min_n_acc)
    best_row = next(r for r in swept if r["threshold"] == best)
    metrics: dict[str, Any] = {"grec_threshold": threshold, **{f"grec_{k}": at[k] for k in _GREC_KEYS},
                               "grec_best_threshold": best, "grec_best_precision": best_row["precision"],
                               "grec_best_n_acc": best_row["n_acc"]}
    if min_n_acc is not None:
        metrics["grec_min_n_acc"] = min_n_acc
        metrics["grec_best_meets_min_n_acc"] = meets_min_n_acc(best_row, min_n_acc)
    if sweep:
        metrics["grec_sweep"] = [{k: row[k] for k in ("threshold", "precision", "n_acc", "t_acc", "mean_f1",
                                                      "precision_single", "precision_multi")} for row in swept]
    return metrics


def _gather_predictions(local: list[dict[str, Any]], info: DistInfo) -> list[dict[str, Any]] | None:
    """Rank 0 gets all predictions in dataset order (rank r holds samples r, r + W, ...: interleave them)."""
    if not info.distributed:
        return local
    parts: list[Any] = [None] * info.world_size
    dist.all_gather_object(parts, local)
    if not info.is_main:
        return None
    merged = []
    longest = max(len(p) for p in parts)
    for k in range(longest):
        for part in parts:
            if k < len(part):
                merged.append(part[k])
    return merged


def write_predictions(predictions: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in predictions:
            f.write(json.dumps(row) + "\n")


def _data_missing_hint(config_data: Any) -> str:
    if config_data.format == "synth":  # the val/testA/testB the shipped SynthRef model was measured on
        return f", or write SynthRef's val/testA/testB there: lgrnet synth --out {config_data.root} --num-train 0"
    return ""


def _single_file_records(root: Path, split: str | None) -> tuple[list[Record], str]:
    """A single JSONL file is a split of its own: all its records (``split`` None), or those whose ``split`` key
    is ``split`` or absent. Returns the records and the split name to report."""
    from lgrnet.data.readers import read_jsonl
    from lgrnet.errors import DataError

    records = read_jsonl(root)
    if not records:
        raise DataError(f"{root}: no records")
    found = sorted({r.split for r in records if r.split})
    if split is None:
        return records, found[0] if len(found) == 1 else root.stem
    chosen = [r for r in records if not r.split or r.split == split]
    if not chosen:
        raise DataError(f"--split {split}: {root} has no records of split {split!r} (its records are of split "
                        f"{', '.join(map(repr, found))}); leave out --split to evaluate the whole file")
    return chosen, split


def split_records(data: DataConfig, split: str | None = None) -> tuple[list[Record], str]:
    """The records of ``split`` of ``data`` (a config's data section) and the split's name. ``split`` None: a
    single JSONL file whole (named after its records' split, or the file), other data its ``val_split``."""
    from lgrnet.data.readers import load_records

    root = Path(data.root)
    if data.format in ("jsonl", "synth") and root.is_file():
        return _single_file_records(root, split)
    split = split or data.val_split
    return load_records(data, split), split


@dataclass
class SplitEvaluation:
    split: str  # the name of the evaluated split
    metrics: dict[str, Any]  # reduced over ranks (numbers; a GREC model's grec_sweep is a list of rows)
    predictions: list[dict[str, Any]] | None  # when asked for, on rank 0 (see evaluate)


def evaluate_split(model: nn.Module, config: Config, split: str | None = None, *, info: DistInfo | None = None,
                   batch_size: int | None = None, precision: str = "fp32", collect_predictions: bool = False,
                   limit: int | None = None, sweep: bool = False,
                   min_n_acc: float | None = None) -> SplitEvaluation:
    """Evaluate ``model`` on ``split`` of ``config.data`` (see :func:`split_records`): records -> dataset (the
    eval transform and tokenizer of ``config.model``) -> loader -> :func:`evaluate`. ``limit``: only the first
    ``limit`` records. ``batch_size`` defaults to ``config.train.batch_size``. ``info`` None: one process, on the
    device the model is on (else the model must already be on ``info.device``). A model with the GREC head
    (``config.model.grec.enabled``) is measured at ``config.model.grec.threshold``; ``sweep`` adds the sweep,
    ``min_n_acc`` constrains the best threshold (see :func:`grec_metrics`)."""
    from lgrnet.data.dataset import build_eval_loader
    from lgrnet.model.text import build_tokenizer

    records, name = split_records(config.data, split)
    if limit is not None:
        records = records[:limit]
    if info is None:
        parameter = next(model.parameters(), None)
        info = DistInfo(device=parameter.device if parameter is not None else torch.device("cpu"))
    loader = build_eval_loader(records, config, build_tokenizer(config.model.text), batch_size=batch_size,
                               distributed=info.distributed)
    grec_threshold = config.model.grec.threshold if config.model.grec.enabled else None
    metrics, predictions = evaluate(model, loader, info, precision=precision,
                                    collect_predictions=collect_predictions, spatial_match=config.data.spatial_match,
                                    grec_threshold=grec_threshold, sweep=sweep, min_n_acc=min_n_acc)
    return SplitEvaluation(name, metrics, predictions)


def evaluate_checkpoint(checkpoint: str, data_spec: str | None = None, split: str | None = None,
                        batch_size: int | None = None, output: str | Path | None = None, device: str = "auto",
                        precision: str = "fp32", sweep: bool = False, save_threshold: bool = False,
                        min_n_acc: float | None = None) -> dict[str, Any]:
    """``lgrnet eval``: load a checkpoint (a model folder, training output folder, shipped name or hub id),
    evaluate it on ``split`` of ``data_spec`` (see :mod:`lgrnet.engine.dataspec`), optionally write per-sample
    predictions (original pixels) as JSONL. ``split`` None: a single JSONL file is evaluated whole, other data on
    its ``val_split``. Works in one process or under ``torchrun`` (samples are split over ranks and counted
    once). The output path is checked before anything is loaded.

    A model with the GREC head also gets the ``grec_*`` metrics (``sweep``: with the sweep table);
    ``save_threshold`` writes the swept best threshold into the model folder's config (``model.grec.threshold``),
    which must be a local, writable folder that is not a shipped model (checked before the evaluation)."""
    from lgrnet.data.readers.standard import split_provenance
    from lgrnet.engine.dataspec import parse_dataspec
    from lgrnet.engine.distributed import init_distributed
    from lgrnet.errors import CheckpointError, DataError
    from lgrnet.model.io import load_model
    from lgrnet.output_paths import check_output_file

    precision = normalize_precision(precision, what="--precision")
    if output is not None:
        check_output_file(output, "--output")
    threshold_folder = threshold_folder_for(checkpoint) if save_threshold else None
    info = init_distributed(device)
    model, config = load_model(checkpoint, device=str(info.device), what="--checkpoint")
    if save_threshold and not config.model.grec.enabled:
        raise CheckpointError(f"--save-threshold: {checkpoint} has no GREC head (model.grec.enabled is false), so "
                              "no score threshold to store")
    config.data = parse_dataspec(data_spec, config.data)
    root = Path(config.data.root)
    if data_spec is None and not root.exists():
        raise DataError(f"--checkpoint {checkpoint}: its data ({config.data.format} at {root}) is not here; pass "
                        f"--data DATASPEC{_data_missing_hint(config.data)}")
    evaluation = evaluate_split(model, config, split, info=info, batch_size=batch_size, precision=precision,
                                collect_predictions=output is not None, sweep=sweep, min_n_acc=min_n_acc)
    # What the number was measured on: dataset, split-by, the split's size and whether it is the standard one.
    provenance = split_provenance(config.data, evaluation.split, int(evaluation.metrics["count"]))
    result: dict[str, Any] = {"checkpoint": checkpoint, "data": config.data.format, "root": config.data.root,
                              **provenance, **evaluation.metrics}
    if output is not None and evaluation.predictions is not None:
        write_predictions(evaluation.predictions, Path(output))
        result["predictions"] = str(output)
    if threshold_folder is not None:
        best = float(evaluation.metrics["grec_best_threshold"])
        if info.is_main:
            save_grec_threshold(threshold_folder, best)
        result["grec_saved_threshold"] = best
        result["grec_saved_to"] = str(threshold_folder / CONFIG_FILE)
    return result


def threshold_folder_for(checkpoint: str) -> Path:
    """The model folder ``lgrnet eval --save-threshold`` may write the threshold into: ``checkpoint`` must be a
    local folder (a model folder or a training output folder), not one of the package's shipped models, and
    writable. Else a one-line :class:`~lgrnet.errors.CheckpointError`."""
    from lgrnet.errors import CheckpointError
    from lgrnet.model.registry import WEIGHTS_DIR, is_shipped_name, resolve_model

    path = Path(checkpoint).expanduser()
    if not path.exists():
        what = "a shipped model" if is_shipped_name(checkpoint) else "not a local folder"
        raise CheckpointError(f"--save-threshold: --checkpoint {checkpoint} is {what}; the threshold is stored in "
                              "a model folder of your own (copy the model's folder and evaluate the copy)")
    if not path.is_dir():
        raise CheckpointError(f"--save-threshold: --checkpoint {checkpoint} is not a folder")
    folder = resolve_model(path, "--checkpoint", hub=False)
    if folder.resolve().is_relative_to(WEIGHTS_DIR.resolve()):
        raise CheckpointError(f"--save-threshold: --checkpoint {checkpoint} is a shipped model of the package; "
                              "copy its folder and evaluate the copy")
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"--save-threshold: model folder {folder}: missing {CONFIG_FILE}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CheckpointError(f"--save-threshold: model folder {folder} is not writable")
    return folder


def save_grec_threshold(folder: Path, threshold: float) -> Path:
    """Set ``model.grec.threshold`` in ``folder``'s config file, atomically (a temporary file in the folder, then
    renamed over it), keeping everything else of the file and its permissions. Returns the config's path."""
    import stat
    import tempfile

    import yaml

    from lgrnet.config import config_from_dict

    path = Path(folder) / CONFIG_FILE
    data = yaml.safe_load(path.read_text()) or {}
    data.setdefault("model", {}).setdefault("grec", {})["threshold"] = float(threshold)
    if "base" not in data:
        config_from_dict(data)  # what is written must load (a model folder's config is complete, without a base)
    fd, tmp = tempfile.mkstemp(prefix=f".{CONFIG_FILE}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(yaml.safe_dump(data, sort_keys=False))
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ----------------------------------------------------------------------------------------------------------------
# The accuracy a model folder records (its metrics.json): measured on a fixed SynthRef sample at export, checked
# again by the tests

#: In a model folder: the accuracy recorded at export on a fixed SynthRef sample (see check_recorded).
RECORD_FILE = "metrics.json"
#: Metric names of files written before the engine's names were used everywhere (read, never written).
_OLD_NAMES = {"acc@0.5": "acc50", "acc@0.75": "acc75", "acc@0.5_original": "orig_acc50"}


def summarize_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The headline metrics (the engine's names: ``acc50``, ``acc75``, ``miou``, ``orig_acc50``, in percent,
    rounded to 2 decimals) and the sample ``count``."""
    summary = {"acc50": round(metrics["acc50"], 2), "acc75": round(metrics["acc75"], 2),
               "miou": round(metrics["miou"], 2), "orig_acc50": round(metrics["orig_acc50"], 2),
               "count": int(metrics["count"])}
    for key in GREC_HEADLINE:  # a model with the generalized head
        if metrics.get(key) is not None:
            summary[key] = round(metrics[key], 2)
    return summary


#: The generalized-REC metrics :func:`summarize_metrics` keeps when they are there.
GREC_HEADLINE = ("grec_precision", "grec_n_acc", "grec_single_acc50", "grec_threshold")


def read_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A metrics mapping with the old spellings (``acc@0.5`` ...) renamed to the engine's (``acc50`` ...)."""
    return {_OLD_NAMES.get(k, k): v for k, v in metrics.items()}


def sample_accuracy(model: nn.Module, config: Config, cache: Path, seed: int, num: int,
                    split: str = "val") -> dict[str, float]:
    """:func:`summarize_metrics` of ``model`` on a fixed SynthRef sample: ``num`` expressions of ``split`` for
    ``seed`` (generated into ``cache`` once), on the CPU. Model folders record this at export. A model with the
    generalized head is measured on SynthRef-G (single-, multi- and no-target expressions) instead."""
    import copy

    from lgrnet.synth import ensure_synthref

    grec = config.model.grec.enabled
    folder = cache / f"synthref{'-g' if grec else ''}-{seed}-{split}{num}"
    ensure_synthref(folder, seed=seed, num_train=0, num_val=num if split == "val" else 0,
                    num_test=num if split != "val" else 0, grec=grec)
    config = copy.deepcopy(config)
    config.data.format, config.data.root, config.data.num_workers = "synth", str(folder), 0
    evaluation = evaluate_split(model.to("cpu"), config, split, batch_size=32)
    return summarize_metrics(evaluation.metrics)


def check_recorded(folder: Path, cache: Path) -> tuple[float, float, int]:
    """(measured, recorded) Acc@0.5 of the model folder on the sample named in its ``metrics.json``, and the
    sample size."""
    from lgrnet.errors import CheckpointError
    from lgrnet.model.io import load_model

    record_path = folder / RECORD_FILE
    if not record_path.is_file():
        raise CheckpointError(f"{folder}: no {RECORD_FILE} with the accuracy recorded at export")
    record = read_metrics(json.loads(record_path.read_text())["sample"])
    model, config = load_model(folder)
    measured = sample_accuracy(model, config, cache, record["seed"], record["num"], record["split"])
    return measured["acc50"], float(record["acc50"]), int(record["num"])
