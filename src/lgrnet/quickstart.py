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
from typing import Any

import torch

from lgrnet.config import Config, load_config
from lgrnet.errors import CheckpointError, LGRNetError
from lgrnet.model.registry import DEFAULT_MODEL, has_model, shipped_model_folder

#: Where the package keeps the shipped SynthRef model (absent until it has been trained and exported).
SHIPPED_MODEL_DIR = shipped_model_folder("synthref-small")
EVAL_SPLITS = ("val", "testA", "testB")
#: Expressions of the train split whose mean loss is reported before and after training (the same batches).
LOSS_SAMPLES = 64


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
    num_examples: int = 8  # tiles in predictions.png
    device: str = "auto"


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


def prepare_data(options: QuickstartOptions, say: Callable[[str], None]) -> Path:
    """The cached SynthRef folder (train + val/testA/testB) for this seed and these sizes."""
    from lgrnet.synth import ensure_synthref

    cache = options.cache_dir or default_cache_dir()
    folder = cache / f"synthref-{options.seed}-train{options.num_train}-eval{options.num_eval}"
    meta = folder / "meta.json"
    before = meta.stat().st_mtime_ns if meta.exists() else None
    t0 = time.perf_counter()
    ensure_synthref(folder, seed=options.seed, num_train=options.num_train, num_val=options.num_eval,
                    num_test=options.num_eval)
    reused = before is not None and meta.stat().st_mtime_ns == before
    say(f"SynthRef (seed {options.seed}): {options.num_eval} expressions in each of val/testA/testB, "
        f"{options.num_train} train, {'reused from' if reused else 'generated into'} {folder} "
        f"({time.perf_counter() - t0:.1f} s)")
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
    from lgrnet.inference.grid import prediction_grid
    from lgrnet.inference.predictor import Predictor
    from lgrnet.inference.visualize import save_png

    records = load_records(config.data, "val")
    # One expression per image first (SynthRef has several per image), so the grid shows different scenes.
    seen: set[str] = set()
    distinct = [r for r in records if not (r.image in seen or seen.add(r.image))]
    chosen = (distinct + [r for r in records if all(r is not d for d in distinct)])[:count]
    predictor = Predictor(model, config, device="cpu" if device == "cpu" else None)
    predictions = predictor.predict([(r.image, r.expression) for r in chosen])
    grid = prediction_grid([r.image for r in chosen], predictions, [r.box for r in chosen], title)
    return save_png(grid, path)


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
        title = (f"{start.source}, {options.train_minutes:g} min training, val Acc@0.5 "
                 f"{after['val']['acc50']:.1f}%. Red: predicted box, yellow: predicted coordinate, "
                 "green dashed: ground truth")
        render_predictions(model, final_config, stage / "predictions.png", options.num_examples, options.device,
                           title)
    seconds["render"] = time.perf_counter() - t0
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
    }
    (stage / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
    # Into place: the training run (its log and checkpoints), the model, the grid, then the metrics.
    for name in ("train", "model", "predictions.png", "metrics.json"):
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
    say(f"Wrote {out / 'model'}/ (lgrnet predict/eval --checkpoint), {out / 'metrics.json'}"
        + (f", {out / 'predictions.png'}" if options.num_examples else "")
        + f". Total {seconds['total'] / 60:.1f} min.")
    return report
