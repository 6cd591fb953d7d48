"""The quickstart (``lgrnet quickstart``): the whole system working on a fresh CPU machine in a few minutes.

1. A SynthRef set (:mod:`lgrnet.synth`) is generated once and cached: val/testA/testB for evaluation (200
   expressions each by default) and a small train split for the fine-tune.
2. The start model is the shipped SynthRef model (``synthref``, the folder ``lgrnet/weights/synthref-small/``:
   ``config.yaml`` + ``model.safetensors`` without the frozen MiniLM text encoder, which is loaded from its
   package; ``--checkpoint`` names another model) or, with ``--from-scratch`` or when the package holds no shipped
   weights (said plainly), a fresh ``lgrnet-tiny``.
3. It is evaluated on val/testA/testB with :func:`lgrnet.engine.evaluate.evaluate_split`, trained for a
   wall-clock budget with the engine's :func:`lgrnet.engine.train.train` (``train.time_limit_minutes``; the start
   weights enter through ``train.init_from``), written to ``DIR/model/`` and evaluated again.
4. ``DIR/metrics.json`` holds the final model's metrics per split (the engine's names: ``acc50``, ``acc75``,
   ``miou``, ``orig_acc50``, ``count``) plus ``before``; ``DIR/predictions.png`` a grid of the final model's
   predictions on val (:mod:`lgrnet.inference.grid`: ground truth, predicted box, coordinate point, expression). ``--train-minutes 0`` evaluates
   the start model only. A run that fails leaves the output folder as it was (a new one is removed).
5. Generalized REC: when the shipped SynthRef-G model (``synthref-g``, the folder ``lgrnet/weights/synthref-g-small/``,
   or ``--grec-checkpoint``) is there, a small SynthRef-G val set (zero, one or many targets per expression; cached
   like the classic set) is generated, the model is evaluated on it as it is (Precision@(F1=1, IoU>=0.5), N-acc,
   single-target Acc@0.5 of the top box: ``metrics.json``'s ``grec``) and ``DIR/grec_predictions.png`` draws its
   boxes with their scores, or "no match", on a no-target, a multi-target and a single-target example at least.
   Without that model the output says so and the part is skipped.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lgrnet.config import Config, load_config
from lgrnet.errors import CheckpointError, LGRNetError
from lgrnet.model.registry import DEFAULT_MODEL, GREC_MODEL, has_model, shipped_model_folder

if TYPE_CHECKING:
    from lgrnet.data.records import Record
    from lgrnet.inference.grid import GroundTruth
    from lgrnet.inference.predictor import Prediction

#: Where the package keeps the shipped SynthRef model (absent until it has been trained and exported).
SHIPPED_MODEL_DIR = shipped_model_folder("synthref-small")
EVAL_SPLITS = ("val", "testA", "testB")
#: Expressions of the train split whose mean loss is reported before and after training (the same batches).
LOSS_SAMPLES = 64
#: The target-set kinds of grec_predictions.png's tiles, in order (repeated when more tiles are asked for).
GREC_TILE_KINDS = ("none", "multi", "single", "multi")


def shipped_model_dir() -> Path:
    """The folder the quickstart loads the shipped model from (``$LGRNET_SHIPPED_MODEL`` or the package's)."""
    return shipped_model_folder(DEFAULT_MODEL)


def default_cache_dir() -> Path:
    """``$LGRNET_CACHE``, else ``$XDG_CACHE_HOME/lgrnet``, else ``~/.cache/lgrnet``."""
    if os.environ.get("LGRNET_CACHE"):
        return Path(os.environ["LGRNET_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "lgrnet"


@dataclass
class QuickstartOptions:
    output_dir: Path = Path("runs/quickstart")
    train_minutes: float = 2.0  # wall-clock training budget (fine-tune, or from scratch)
    from_scratch: bool = False
    num_eval: int = 100  # expressions in each of val, testA, testB
    num_train: int = 3000  # train expressions generated for the fine-tune
    seed: int = 0  # SynthRef seed and training seed
    checkpoint: str | Path | None = None  # start model (folder or shipped name); None: shipped_model_dir()
    config: str | Config = "lgrnet-tiny"  # the from-scratch model (preset name, YAML file or Config)
    overrides: list[str] = field(default_factory=list)  # "a.b=c" applied to the training config
    cache_dir: Path | None = None
    batch_size: int | None = None  # default: the model config's train.batch_size
    max_steps: int = 0  # optional step limit on top of the time budget (tests)
    num_examples: int = 8  # tiles in predictions.png (grec_predictions.png: half of them, at least 3)
    device: str = "auto"
    grec_checkpoint: str | Path | None = None  # model with the generalized head; None: the shipped synthref-g
    num_grec: int = 60  # SynthRef-G val expressions the generalized model is evaluated on (0: no GREC part)


@dataclass
class _Start:
    model: torch.nn.Module
    config: Config
    source: str  # "shipped" or "from-scratch"
    note: str  # one line for the user


def _check(options: QuickstartOptions) -> None:
    if options.train_minutes < 0:
        raise LGRNetError(f"--train-minutes {options.train_minutes}: must be >= 0")
    if options.num_eval < 1:
        raise LGRNetError(f"--num-eval {options.num_eval}: must be at least 1")
    if options.num_train < 1:
        raise LGRNetError(f"--num-train {options.num_train}: must be at least 1")
    if options.num_examples < 0:
        raise LGRNetError(f"--examples {options.num_examples}: must be >= 0")
    if options.from_scratch and options.train_minutes == 0 and options.max_steps == 0:
        raise LGRNetError("--minutes 0: a model trained from scratch needs a training budget")
    if options.batch_size is not None and options.batch_size < 1:
        raise LGRNetError(f"--batch-size {options.batch_size}: must be at least 1")
    if options.num_grec < 0:
        raise LGRNetError(f"--grec-num-eval {options.num_grec}: must be >= 0 (0 skips the generalized-REC part)")


def _cached_synthref(folder: Path, **counts: Any) -> str:
    """:func:`lgrnet.synth.ensure_synthref` into ``folder``; says whether it was reused or generated, and how long
    that took."""
    from lgrnet.synth import ensure_synthref

    meta = folder / "meta.json"
    before = meta.stat().st_mtime_ns if meta.exists() else None
    t0 = time.perf_counter()
    ensure_synthref(folder, **counts)
    reused = before is not None and meta.stat().st_mtime_ns == before
    return f"{'reused from' if reused else 'generated into'} {folder} ({time.perf_counter() - t0:.1f} s)"


def prepare_data(options: QuickstartOptions, say: Callable[[str], None]) -> Path:
    """The cached SynthRef folder (train + val/testA/testB) for this seed and these sizes."""
    cache = options.cache_dir or default_cache_dir()
    folder = cache / f"synthref-{options.seed}-train{options.num_train}-eval{options.num_eval}"
    done = _cached_synthref(folder, seed=options.seed, num_train=options.num_train, num_val=options.num_eval,
                            num_test=options.num_eval)
    say(f"SynthRef (seed {options.seed}): {options.num_eval} expressions in each of val/testA/testB, "
        f"{options.num_train} train, {done}")
    return folder


def _fresh_model(options: QuickstartOptions) -> tuple[torch.nn.Module, Config]:
    from lgrnet.engine.distributed import seed_everything
    from lgrnet.model.builder import build_model

    config = load_config(options.config)
    seed_everything(options.seed, 0)
    return build_model(config.model, config.loss), config


def start_model(options: QuickstartOptions, say: Callable[[str], None]) -> _Start:
    """The shipped model, or a fresh one (asked for, or because the package holds no shipped weights)."""
    from lgrnet.model.io import load_model

    if not options.from_scratch:
        if options.checkpoint is not None:  # the user named a model: an error, not a fallback, if it is not one
            from lgrnet.model.registry import resolve_model

            folder = resolve_model(options.checkpoint, "--checkpoint")
            if not has_model(folder):
                raise CheckpointError(f"--checkpoint {options.checkpoint}: not a model folder "
                                      "(config.yaml + model.safetensors)")
        else:
            folder = shipped_model_dir()
        if has_model(folder):
            model, config = load_model(folder)
            note = f"Loaded the shipped SynthRef model from {folder}."
            say(note)
            return _Start(model, config, "shipped", note)
        model, config = _fresh_model(options)
        note = (f"No shipped SynthRef model in this build ({folder} holds no config.yaml + model.safetensors). "
                f"Running the --from-scratch path instead: a fresh {config.name} trained for "
                f"{options.train_minutes:g} min, which is far from a trained model. "
                "scripts/train_synthref.sh trains and exports the shipped model.")
        say(note)
        return _Start(model, config, "from-scratch", note)
    model, config = _fresh_model(options)
    note = f"From scratch: a fresh {config.name} trained for {options.train_minutes:g} min."
    say(note)
    return _Start(model, config, "from-scratch", note)


def training_config(base: Config, options: QuickstartOptions, data_root: Path, init_from: Path,
                    fine_tune: bool = False) -> Config:
    """The start model's config set up for a time-limited run on the cached SynthRef train split.

    ``fine_tune`` (a trained start model): every learning rate is scaled to the rate the model's own recipe
    ended at (x ``lr_gamma`` per drop of a step schedule, x ``min_lr_ratio`` of a cosine one), so that a short
    run continues its training instead of jolting it. Either run keeps its rate constant."""
    config = copy.deepcopy(base)
    config.name = "quickstart"
    data = config.data
    data.format, data.root, data.train_split, data.val_split = "synth", str(data_root), "train", "val"
    data.num_workers = 1  # two cores: one loads while the other computes
    data.persistent_workers = False
    tc = config.train
    tc.time_limit_minutes = options.train_minutes
    tc.max_steps = options.max_steps
    tc.epochs = 10_000  # the budget ends the run, not the epoch count
    tc.warmup_steps = 0
    tc.eval_every = 0  # evaluated here, on all three splits, after the run
    tc.checkpoint_every, tc.checkpoint_every_steps = 0, 0
    tc.log_every = 1
    tc.seed = options.seed
    tc.init_from = str(init_from)
    if fine_tune:
        from lgrnet.engine.optim import GROUP_LR_FIELDS, final_lr_factor

        final = final_lr_factor(tc)
        for name in GROUP_LR_FIELDS.values():
            setattr(tc, name, getattr(tc, name) * final)
    tc.lr_schedule, tc.lr_drop_epochs = "step", []
    if options.batch_size:
        tc.batch_size = options.batch_size
    if options.device == "cpu" or not torch.cuda.is_available():
        tc.precision = "off"
    return load_config(config, options.overrides)


def evaluate_splits(model: torch.nn.Module, config: Config, device: str,
                    splits: tuple[str, ...] = EVAL_SPLITS) -> dict[str, dict[str, float]]:
    """Acc@0.5/Acc@0.75/mIoU of ``model`` on ``splits`` of ``config.data``."""
    from lgrnet.engine.distributed import init_distributed
    from lgrnet.engine.evaluate import evaluate_split, summarize_metrics

    info = init_distributed(device)
    model = model.to(info.device)
    return {split: summarize_metrics(evaluate_split(model, config, split, info=info).metrics) for split in splits}


def fixed_set_loss(model: torch.nn.Module, config: Config, device: str,
                   num: int = LOSS_SAMPLES) -> tuple[float, int]:
    """Mean training loss of ``model`` on the first ``num`` train expressions (and how many there were), without
    augmentation and in fixed batches: the same samples before and after training, so the two numbers compare."""
    from lgrnet.data.dataset import build_eval_loader
    from lgrnet.data.readers import load_records
    from lgrnet.engine.distributed import init_distributed
    from lgrnet.model.text import build_tokenizer

    info = init_distributed(device)
    records = load_records(config.data, config.data.train_split)[:num]
    loader = build_eval_loader(records, config, build_tokenizer(config.model.text), batch_size=16, distributed=False)
    model = model.to(info.device)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        with torch.no_grad():
            for batch in loader:
                batch = batch.to(info.device)
                total += float(model(**batch.model_inputs()).loss) * len(batch)
                count += len(batch)
    finally:
        model.train(was_training)
    return total / max(count, 1), count


def write_model_folder(checkpoint: Path, folder: Path) -> tuple[torch.nn.Module, Config]:
    """Copy a training checkpoint's model into ``folder`` (config without the run's time limit or init) and
    return the model as :func:`lgrnet.model.io.load_model` reads it back."""
    from lgrnet.model.io import load_model, save_model

    model, config = load_model(checkpoint)
    config.train.init_from = None
    config.train.time_limit_minutes = 0.0
    config.train.max_steps = 0
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, config, tmp)
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return load_model(folder)


def _replace(staged: Path, final: Path) -> None:
    """Move a finished file or folder into place (a folder replaces the previous one)."""
    if staged.is_dir():
        shutil.rmtree(final, ignore_errors=True)
    staged.replace(final)


def render_predictions(model: torch.nn.Module, config: Config, path: Path, count: int, device: str,
                       title: str) -> Path:
    """A grid of ``count`` val predictions (box, coordinate point, ground truth, caption), one image per tile as
    long as there are images enough."""
    from lgrnet.data.readers import load_records

    records = load_records(config.data, "val")
    # One expression per image first (SynthRef has several per image), so the grid shows different scenes.
    seen: set[str] = set()
    distinct = [r for r in records if not (r.image in seen or seen.add(r.image))]
    chosen = (distinct + [r for r in records if all(r is not d for d in distinct)])[:count]
    draw_grid(model, config, chosen, [r.box for r in chosen], title, path, device)
    return path


def draw_grid(model: torch.nn.Module, config: Config, records: list[Record], ground_truths: list[GroundTruth],
              title: str, path: Path, device: str) -> list[Prediction]:
    """``model``'s predictions on ``records`` drawn as a grid with ``ground_truths`` under ``title`` and the
    colours' legend (the coordinate point is drawn only for a model whose coordinate head was trained), saved to
    ``path``; returns the predictions."""
    from lgrnet.inference.grid import prediction_grid
    from lgrnet.inference.predictor import Predictor
    from lgrnet.inference.visualize import legend, save_png

    predictor = Predictor(model, config, device="cpu" if device == "cpu" else None)
    predictions = predictor.predict([(r.image, r.expression) for r in records])
    text = legend(bool(predictions) and predictions[0].coord_trained)
    grid = prediction_grid([r.image for r in records], predictions, ground_truths,
                           f"{title}. {text[:1].upper()}{text[1:]}")
    save_png(grid, path)
    return predictions


def grec_model_folder(options: QuickstartOptions) -> Path | None:
    """The folder of the model with the generalized head (checked before any long work), or None without a GREC
    part (``num_grec`` 0). The shipped one may be absent (the part is then skipped, said plainly); a model the user
    named must be one with the head."""
    if options.num_grec == 0:
        return None
    if options.grec_checkpoint is None:
        folder = shipped_model_folder(GREC_MODEL)
        what = f"the shipped {GREC_MODEL} model ({folder})"
        if not has_model(folder):
            return folder
    else:
        from lgrnet.model.registry import resolve_model

        folder = resolve_model(options.grec_checkpoint, "--grec-checkpoint")
        what = f"--grec-checkpoint {options.grec_checkpoint}"
        if not has_model(folder):
            raise CheckpointError(f"{what}: not a model folder (config.yaml + model.safetensors)")
    if not load_config(folder / "config.yaml").model.grec.enabled:
        raise CheckpointError(f"{what}: the model has no generalized head (model.grec.enabled is false); "
                              "the GREC part needs one (--grec-num-eval 0 skips it)")
    return folder


def prepare_grec_data(options: QuickstartOptions, say: Callable[[str], None]) -> Path:
    """The cached SynthRef-G val set (``num_grec`` expressions) for this seed."""
    cache = options.cache_dir or default_cache_dir()
    folder = cache / f"synthref-g-{options.seed}-val{options.num_grec}"
    done = _cached_synthref(folder, seed=options.seed, num_train=0, num_val=options.num_grec, num_test=0, grec=True)
    say(f"SynthRef-G (seed {options.seed}): {options.num_grec} val expressions with zero, one or many targets, "
        f"{done}")
    return folder


def grec_tiles(records: list[Record], count: int) -> list[Record]:
    """``count`` val records for grec_predictions.png, by target-set kind in the order of
    :data:`GREC_TILE_KINDS` (a kind the set lacks is left out), each on an image not shown yet where possible."""
    by_kind: dict[str, list[Record]] = {}
    for record in records:
        by_kind.setdefault(record.kind, []).append(record)
    chosen: list[Record] = []
    shown: set[str] = set()
    kinds = [k for k in GREC_TILE_KINDS if by_kind.get(k)]
    while kinds and len(chosen) < count:
        for kind in list(kinds):
            left = [r for r in by_kind[kind] if all(r is not c for c in chosen)]
            if not left:
                kinds.remove(kind)
                continue
            record = next((r for r in left if r.image not in shown), left[0])
            chosen.append(record)
            shown.add(record.image)
            if len(chosen) == count:
                break
    return chosen


def evaluate_grec(folder: Path, data_root: Path, options: QuickstartOptions, stage: Path) -> dict[str, Any]:
    """The generalized model of ``folder`` on the SynthRef-G val set as it is: GREC figures at its threshold
    (percent; None over no sample) and, with examples asked for, ``stage/grec_predictions.png``."""
    from lgrnet.engine.distributed import init_distributed
    from lgrnet.engine.evaluate import evaluate_split
    from lgrnet.model.io import load_model

    model, config = load_model(folder)
    config = copy.deepcopy(config)
    data = config.data
    data.format, data.root, data.val_split = "synth", str(data_root), "val"
    data.num_workers, data.persistent_workers = 0, False  # a few dozen samples: no worker start-up
    info = init_distributed(options.device)
    model = model.to(info.device)
    m = evaluate_split(model, config, "val", info=info, batch_size=16).metrics

    def pct(key: str) -> float | None:
        return None if m[key] is None else round(float(m[key]), 2)

    result: dict[str, Any] = {
        "model": str(folder), "name": config.name, "threshold": float(m["grec_threshold"]),
        "precision": pct("grec_precision"), "n_acc": pct("grec_n_acc"), "t_acc": pct("grec_t_acc"),
        "single_acc50": pct("grec_single_acc50"),
        **{k: int(m[f"grec_{k}"]) for k in ("count", "single_count", "multi_count", "none_count")},
        "data": {"root": str(data_root), "seed": options.seed, "num_val": options.num_grec},
        "examples": [],
    }
    if options.num_examples:
        result["examples"] = render_grec_predictions(model, config, stage / "grec_predictions.png",
                                                     max(3, options.num_examples // 2), options.device, result)
    return result


def render_grec_predictions(model: torch.nn.Module, config: Config, path: Path, count: int, device: str,
                            figures: dict[str, Any]) -> list[dict[str, Any]]:
    """A grid of the generalized model's predictions on SynthRef-G val examples of each kind (its boxes with their
    scores, or "no match"; the ground truth's whole target set); returns what each tile shows."""
    from lgrnet.data.readers import load_records

    chosen = grec_tiles(load_records(config.data, "val"), count)
    title = (f"{figures['name']} on SynthRef-G val: Precision@(F1=1) {_pct(figures['precision'])}, N-acc "
             f"{_pct(figures['n_acc'])}, score threshold {figures['threshold']:.2f}")
    predictions = draw_grid(model, config, chosen, [r.targets for r in chosen], title, path, device)
    return [{"id": r.id, "kind": r.kind, "expression": r.expression, "targets": len(r.targets),
             "boxes": len(p.boxes) if p.found else 0, "scores": [round(v, 3) for v in p.scores or []]}
            for r, p in zip(chosen, predictions)]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def format_grec_table(grec: dict[str, Any]) -> str:
    """The generalized model's figures on SynthRef-G val, one row."""
    head = (f"{'SynthRef-G val':16s} {'n':>4s} {'single/multi/none':>17s} {'Prec@(F1=1)':>12s} {'N-acc':>7s} "
            f"{'T-acc':>7s} {'single Acc@0.5':>15s}")
    kinds = f"{grec['single_count']}/{grec['multi_count']}/{grec['none_count']}"
    row = (f"{grec['name'][:16]:16s} {grec['count']:4d} {kinds:>17s} {_pct(grec['precision']):>12s} "
           f"{_pct(grec['n_acc']):>7s} {_pct(grec['t_acc']):>7s} {_pct(grec['single_acc50']):>15s}")
    return f"{head}\n{row}"


def format_table(before: dict[str, dict[str, float] | None], after: dict[str, dict[str, float]]) -> str:
    lines = [f"{'split':6s} {'n':>5s} {'Acc@0.5 before':>15s} {'Acc@0.5 after':>14s} {'mIoU after':>11s}"]
    for split in EVAL_SPLITS:
        b, a = before.get(split), after[split]
        was = f"{b['acc50']:14.1f}%" if b else f"{'-':>15s}"
        lines.append(f"{split:6s} {a['count']:5d} {was} {a['acc50']:13.1f}% {a['miou']:10.1f}%")
    return "\n".join(lines)


def run_quickstart(options: QuickstartOptions, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the quickstart into ``options.output_dir``; returns what ``metrics.json`` holds. On failure the output
    folder is left as it was (one this run created is removed)."""
    from lgrnet.output_paths import check_output_dir

    _check(options)
    out = Path(options.output_dir)
    check_output_dir(out, "--output-dir")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    # Everything is written into a staging folder and moved into place at the end.
    stage = Path(tempfile.mkdtemp(prefix=".quickstart-", dir=out))
    try:
        report = _run(options, out, stage, say)
    except BaseException:
        shutil.rmtree(out if created else stage, ignore_errors=True)
        raise
    shutil.rmtree(stage, ignore_errors=True)
    return report


def _run(options: QuickstartOptions, out: Path, stage: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from lgrnet.engine.train import train
    from lgrnet.model.io import save_model

    t_start = time.perf_counter()
    seconds: dict[str, float] = {}
    grec_folder = grec_model_folder(options)  # a bad --grec-checkpoint fails before any long work
    data_root = prepare_data(options, say)
    seconds["data"] = time.perf_counter() - t_start

    t0 = time.perf_counter()
    start = start_model(options, say)
    init = stage / "init"
    config = training_config(start.config, options, data_root, init, fine_tune=start.source == "shipped")
    # The exact start weights with the run's config (data: the cached SynthRef set), handed to the trainer or,
    # without training, written as the output model.
    save_model(start.model, config, init)
    if options.train_minutes == 0 and options.max_steps == 0 and start.source == "from-scratch":
        raise LGRNetError("--minutes 0: a model trained from scratch needs a training budget")
    # A fresh model is at chance on every split: its val score is shown, testA/testB are not spent time on.
    before_splits = EVAL_SPLITS if start.source == "shipped" else ("val",)
    say(f"Evaluating the {'shipped' if start.source == 'shipped' else 'untrained'} model on "
        f"{'/'.join(before_splits)} ...")
    before = evaluate_splits(start.model, config, options.device, before_splits)
    training = options.train_minutes > 0 or options.max_steps > 0
    loss_before, loss_samples = fixed_set_loss(start.model, config, options.device) if training else (None, 0)
    seconds["eval_before"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    steps, samples, stopped = 0, 0, ""
    if training:
        say(f"Training for {options.train_minutes:g} min (batch {config.train.batch_size}) ...")
        result = train(config, stage / "train", device=options.device)
        checkpoint = result.last_checkpoint or stage / "train" / "checkpoints" / "last"
        steps, stopped = result.step, result.stopped_early
        samples = steps * config.train.batch_size * max(1, config.train.accumulation_steps)
    else:
        say("--train-minutes 0: no training, the start model is evaluated and written as it is.")
        checkpoint = init
    seconds["train"] = time.perf_counter() - t0
    model, final_config = write_model_folder(checkpoint, stage / "model")
    shutil.rmtree(init, ignore_errors=True)

    t0 = time.perf_counter()
    after = evaluate_splits(model, final_config, options.device)
    loss_after = fixed_set_loss(model, final_config, options.device)[0] if training else None
    seconds["eval_after"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if options.num_examples:
        title = f"{start.source}, {options.train_minutes:g} min training, val Acc@0.5 {after['val']['acc50']:.1f}%"
        render_predictions(model, final_config, stage / "predictions.png", options.num_examples, options.device,
                           title)
    seconds["render"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    grec, grec_note = None, None
    if grec_folder is not None and not has_model(grec_folder):
        grec_note = (f"No shipped SynthRef-G model in this build ({grec_folder} holds no config.yaml + "
                     "model.safetensors): the generalized-REC part (zero, one or many boxes per expression) is "
                     "skipped.")
        say(grec_note)
    elif grec_folder is not None:
        grec_root = prepare_grec_data(options, say)
        say(f"Evaluating the generalized model ({grec_folder}) on SynthRef-G val ...")
        grec = evaluate_grec(grec_folder, grec_root, options, stage)
    seconds["grec"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_start

    report: dict[str, Any] = {
        **after,
        "minutes": options.train_minutes,
        "before": before,
        "start": start.source,
        "note": start.note,
        "train": {"steps": steps, "samples_seen": samples, "batch_size": config.train.batch_size,
                  "loss_before": loss_before, "loss_after": loss_after,
                  "loss_samples": loss_samples, "stopped": stopped or "completed"},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "data": {"root": str(data_root), "seed": options.seed, "num_eval_per_split": options.num_eval,
                 "num_train": options.num_train},
        "model_dir": str(out / "model"),
        "grec": grec,
    }
    if grec_note:
        report["grec_note"] = grec_note
    (stage / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    # Into place: the training run (its log and checkpoints), the model, the grid, then the metrics.
    for name in ("train", "model", "predictions.png", "grec_predictions.png", "metrics.json"):
        if (stage / name).exists():
            _replace(stage / name, out / name)
        elif (out / name).is_dir():  # a previous run's, which this run does not replace
            shutil.rmtree(out / name)
        else:
            (out / name).unlink(missing_ok=True)
    say("")
    losses = (f", mean loss on {loss_samples} fixed train expressions {loss_before:.3f} -> {loss_after:.3f}"
              if loss_before is not None and loss_after is not None else "")
    say(f"Start: {start.source}. Trained {seconds['train'] / 60:.1f} min: {steps} steps, {samples} samples "
        f"seen{losses}.")
    say(format_table(before, after))
    if grec is not None:
        say(format_grec_table(grec))
    pictures = ["predictions.png", *(["grec_predictions.png"] if grec and grec["examples"] else [])]
    say(f"Wrote {out / 'model'}/ (lgrnet predict/eval --checkpoint), {out / 'metrics.json'}"
        + "".join(f", {out / name}" for name in pictures if options.num_examples)
        + f". Total {seconds['total'] / 60:.1f} min.")
    return report
