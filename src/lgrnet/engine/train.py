"""The training loop: one process (CPU or one GPU) or ``torchrun`` DDP, mixed precision, gradient accumulation and
clipping, per-epoch validation, atomic checkpoints and exact resume (also from the middle of an epoch).

Departures from the reference's ``train.py``/``engine.py`` (spec section 15): the single-process sampler shuffles
(15.13); the gradient scaler is created once and checkpointed (15.12); clipping acts on unscaled gradients
(15.12); only rank 0 writes (15.14); DDP runs without ``find_unused_parameters`` (the model has no dead weights).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lgrnet.config import Config
from lgrnet.engine import checkpoint as ckpt
from lgrnet.engine.data import build_train_loader
from lgrnet.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    seed_everything,
    set_deterministic,
)
from lgrnet.engine.evaluate import evaluate
from lgrnet.engine.logging import LossPosition, LossWindow, MetricsLogger, Progress, TimeBudget
from lgrnet.engine.optim import (
    build_optimizer,
    build_scheduler,
    cosine_horizon,
    group_lrs,
    time_budget_horizon,
)
from lgrnet.errors import CheckpointError, LGRNetError
from lgrnet.precision import autocast

# Called as hook(rank, step) before each micro-batch of optimizer step `step` (1-based): instrumentation, and fault
# injection in tests (a rank that raises here shows that the other ranks stop instead of hanging).
before_step_hooks: list[Callable[[int, int], None]] = []


def _say(message: str) -> None:
    print(f"lgrnet train: {message}", flush=True)


@contextlib.contextmanager
def _no_host_mask_checks() -> Iterator[None]:
    """Training forwards without transformers' "is every token real?" test before SDPA.

    The test (``padding_mask.all()`` read as a Python bool) makes the host wait for the device in every text encoder
    forward. Without it the attention mask is always passed to SDPA, as it is anyway for any batch with a padded
    expression (expressions are padded to ``max_length``): the same attention.
    """
    try:
        import transformers.masking_utils as masking
    except ImportError:
        yield
        return
    names = [n for n in ("_ignore_bidirectional_mask_sdpa", "_ignore_causal_mask_sdpa") if hasattr(masking, n)]
    saved = {name: getattr(masking, name) for name in names}
    for name in names:
        setattr(masking, name, _never_skip_mask)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(masking, name, function)


def _never_skip_mask(*args: Any, **kwargs: Any) -> bool:
    return False


class NonFiniteLossError(LGRNetError):
    """The loss became NaN/inf. It is read at the logging interval and before every validation and checkpoint, so
    training stops before anything computed from it is saved; the last checkpoint is untouched."""


@dataclass
class TrainResult:
    output_dir: Path
    epoch: int  # epochs completed (fractional progress is in `step`)
    step: int
    best_acc50: float
    val_metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: str = ""  # "time_limit" / "max_steps" when the run ended before the last epoch
    last_checkpoint: Path | None = None


def final_layer_losses(loss_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The last layer's loss terms (``l1``, ``giou``, ``align``, ``score``, ``coord``... as the criterion names them,
    unweighted), for the log: the auxiliary layers' copies (``l1_0``...) and the weighted total are left out."""
    return {name: value for name, value in loss_dict.items()
            if name != "loss" and not name.rpartition("_")[2].isdigit()}


def _model_parts(config: Config, info: DistInfo, resume_from: Path | None) -> nn.Module:
    from lgrnet.model.builder import build_model
    from lgrnet.model.io import load_weights

    model = build_model(config.model, config.loss)  # with the pretrained text encoder and backbone it names
    if resume_from is not None:
        load_weights(model, resume_from)
    elif config.train.init_from:
        # A one-line CheckpointError naming the folder when it does not fit; a position table of another image
        # size (model.image_size set on purpose) is resampled to this one's maps.
        load_weights(model, config.train.init_from, resample_positions=True)
        if info.is_main:
            print(f"lgrnet train: initialised from {config.train.init_from}", flush=True)
    return model.to(info.device)


def output_dir_problem(output_dir: Path) -> str | None:
    """Why the run cannot write into ``output_dir`` (created here when missing), or None: checked before any
    data loading or model building so that a bad ``--output-dir`` fails at once, not after the slow part."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"output folder {output_dir}: a file of that name is in the way"
    except OSError as exc:
        return f"output folder {output_dir}: cannot create it ({exc.strerror or exc})"
    if not output_dir.is_dir():  # e.g. a symlink to a file
        return f"output folder {output_dir}: not a folder"
    probe = output_dir / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"output folder {output_dir}: not writable ({exc.strerror or exc})"
    return None


def _build_tokenizer(config: Config) -> Any:
    from lgrnet.model.text import build_tokenizer

    return build_tokenizer(config.model.text)


class Trainer:
    """Holds the run's state; :meth:`run` trains to ``config.train.epochs`` (or a step/time limit)."""

    def __init__(self, config: Config, output_dir: str | Path, resume: str | None = None, device: str = "auto",
                 start_time: float | None = None):
        # train.time_limit_minutes counts from `start_time` (the command's start) when given.
        self.start_time = time.monotonic() if start_time is None else start_time
        self.config = config
        self.output_dir = Path(output_dir)
        self.info = init_distributed(device)
        tc = config.train
        set_deterministic(tc.deterministic)
        seed_everything(tc.seed, self.info.rank)
        self.ckpt_root = self.output_dir / "checkpoints"
        # The output folder first: rank 0 checks it (only it writes), every rank raises the same error.
        problem = broadcast_object(output_dir_problem(self.output_dir) if self.info.is_main else None, self.info)
        if problem:
            raise LGRNetError(str(problem))

        from lgrnet.data.readers import load_records

        # Data first: a missing file is reported before anything slow happens.
        self.train_records = load_records(config.data, config.data.train_split)
        self.val_records = load_records(config.data, config.data.val_split) if tc.eval_every > 0 else []
        if not config.model.grec.enabled:
            _check_one_target(self.train_records, config.data.train_split)
        self.tokenizer = _build_tokenizer(config)

        resume_info = None
        if self.info.is_main:
            ckpt.remove_stale_temporaries(self.ckpt_root)
            resume_info = ckpt.resolve_resume(resume, self.output_dir, report=_say)
        resume_info = broadcast_object(resume_info, self.info)
        self.resume_info: ckpt.CheckpointInfo | None = resume_info  # type: ignore[assignment]

        self.model = _model_parts(config, self.info, resume_info.path if resume_info else None)
        # On a GPU, keying rows would wait for the device every step; a compiled model would guard on the cache.
        if self.info.device.type == "cpu" and not tc.compile:
            self.model.text.cache_features(tc.text_cache_mb)
        self.train_loader = build_train_loader(self.train_records, config, self.tokenizer, self.info.world_size,
                                               self.info.rank)
        self.sampler = self.train_loader.sampler
        accum = max(1, tc.accumulation_steps)
        self.accum = accum
        self.steps_per_epoch = self.sampler.batches_per_epoch // accum  # type: ignore[attr-defined]
        if self.steps_per_epoch == 0:
            raise LGRNetError(f"one epoch has {self.sampler.batches_per_epoch} batches, fewer than "  # type: ignore[attr-defined]
                              f"train.accumulation_steps={accum}")
        self.optimizer = build_optimizer(self.model, tc)
        self.scheduler = build_scheduler(self.optimizer, tc, self.steps_per_epoch)
        # Cosine over a wall-clock budget: the horizon follows the measured throughput (_update_time_horizon).
        self.time_horizon = tc.lr_schedule == "cosine" and tc.time_limit_minutes > 0
        self.horizon_cap = cosine_horizon(tc, self.steps_per_epoch)
        names = [g["name"] for g in self.optimizer.param_groups]
        self._main_group = names.index("rest") if "rest" in names else 0  # the lr shown in the progress bar
        # Created once and checkpointed (the reference re-created it every epoch, spec 15.12).
        self.scaler = torch.amp.GradScaler(self.info.device.type, enabled=tc.precision == "fp16")

        self.epoch, self.step, self.batch_in_epoch = 0, 0, 0
        self.best_acc50 = -1.0
        self.last_val: dict[str, float] = {}
        if resume_info is not None:
            self._restore(resume_info)

        self.ddp: nn.Module = self.model
        if self.info.distributed:
            from lgrnet.model.visual import synchronise_batchnorm

            # BatchNorm that trains normalises with the global batch's statistics, as one process would (frozen BN,
            # model.visual.frozen_bn, stays as it is). Same parameter objects: the optimizer above keeps them.
            synchronise_batchnorm(self.model)
            device_ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.forward = torch.compile(self.ddp) if tc.compile else self.ddp

        self.val_loader = None
        if self.val_records:
            from lgrnet.data.dataset import build_eval_loader

            self.val_loader = build_eval_loader(self.val_records, config, self.tokenizer,
                                                distributed=self.info.distributed)
        self.logger = MetricsLogger(self.output_dir, enabled=self.info.is_main)
        if self.info.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "config.yaml").write_text(config.to_yaml())

    # ----------------------------------------------------------------------------------------------------------
    # Checkpoints

    def _restore(self, info: ckpt.CheckpointInfo) -> None:
        state = ckpt.load_state(info.path)
        # The checkpoint says where the schedule stands (its step count, base rates); this run's config says its
        # shape: a run stopped by max_steps or an epoch count and resumed with a longer one decays over the
        # longer run, not over the horizon of the one that stopped. A wall-clock cosine keeps the stopped run's
        # estimate until it measures its own (_update_time_horizon).
        shapes = [dict(vars(schedule)) for schedule in self.scheduler.lr_lambdas]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {info.path}: training state does not fit this run: {exc}") from None
        if not self.time_horizon:
            for schedule, shape in zip(self.scheduler.lr_lambdas, shapes):
                vars(schedule).update(shape)
            step = self.scheduler.last_epoch
            for group, base, schedule in zip(self.optimizer.param_groups, self.scheduler.base_lrs,
                                             self.scheduler.lr_lambdas):
                group["lr"] = base * schedule(step)
            self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.epoch, self.step, self.batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        self.best_acc50 = float(state.get("best_acc50", -1.0))
        self.last_val = dict(state.get("val_metrics", {}))
        rng = state.get("rng", [])
        if len(rng) == self.info.world_size:
            ckpt.restore_rng(rng[self.info.rank])
        else:  # another world size: data order is still exact, dropout streams restart from the seed
            seed_everything(self.config.train.seed + self.step, self.info.rank)
        if self.info.is_main:
            print(f"lgrnet train: resumed from {info.path} (epoch {self.epoch + 1}, batch {self.batch_in_epoch}, "
                  f"step {self.step})", flush=True)

    def _state(self, metrics: dict[str, float]) -> dict[str, Any]:
        rng = ckpt.capture_rng()
        if self.info.distributed:
            gathered: list[Any] = [None] * self.info.world_size
            dist.all_gather_object(gathered, rng)
            rng_all = gathered
        else:
            rng_all = [rng]
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.info.world_size,
            "rng": rng_all,
            "sampler": {"epoch": self.epoch, "start_batch": self.batch_in_epoch * self.accum,
                        "seed": self.config.train.seed},
            "config_yaml": self.config.to_yaml(),
            "val_metrics": metrics,
            "best_acc50": self.best_acc50,
        }

    def save(self, name: str, metrics: dict[str, float]) -> Path | None:
        """Write checkpoint ``name`` (collective: every rank contributes its RNG state; rank 0 writes)."""
        from lgrnet.model.io import save_model

        state = self._state(metrics)
        path = None
        if self.info.is_main:
            path = ckpt.write_checkpoint(self.ckpt_root, name, lambda d: save_model(self.model, self.config, d),
                                         state)
            ckpt.prune_step_checkpoints(self.ckpt_root, keep=name if name.startswith("step-") else None)
        barrier(self.info)
        return path

    # ----------------------------------------------------------------------------------------------------------
    # Loop: run -> epochs (_train_epoch) -> micro-batches (_forward_backward) and optimizer steps (_optimizer_step,
    # then _after_step: log, validate mid-epoch, periodic checkpoint) -> _finish_epoch (validate, save, publish)

    def run(self) -> TrainResult:
        tc = self.config.train
        self._loop = _LoopState(saved_step=self.step if self.resume_info is not None else -1)
        stop = ""
        try:
            while self.epoch < tc.epochs and not stop:
                epoch = self.epoch
                stop = self._train_epoch()
                self._check_losses()  # before this epoch's validation and checkpoint
                if stop and self._loop.saved_step == self.step:
                    break  # stopped right after a checkpoint (e.g. at an epoch boundary): nothing new to save
                self._finish_epoch(epoch, stop)
        finally:
            self.logger.close()
            self.model.text.cache_features(0)
        return TrainResult(self.output_dir, self.epoch, self.step, self.best_acc50, self.last_val, stop,
                           self._loop.last_path)

    def _train_epoch(self) -> str:
        """Train the rest of epoch ``self.epoch``; returns why it stopped early ("time_limit", "max_steps") or ""."""
        loop = self._loop
        self.sampler.set_epoch(self.epoch, self.batch_in_epoch * self.accum)  # type: ignore[attr-defined]
        self.model.train()
        progress = self._progress()
        loop.losses = LossWindow()
        micro = 0
        loop.step_start = time.monotonic()
        try:
            for batch in self.train_loader:
                if micro == 0:
                    # Before each optimizer step: is there time for it plus the final validation and save?
                    loop.reserve_s = self._reserve_s(loop.eval_s, progress.samples_per_second, loop.save_s) \
                        + loop.step_s
                    stop = self._stop_reason(loop.reserve_s)
                    if stop:
                        return stop
                for hook in before_step_hooks:
                    hook(self.info.rank, self.step + 1)
                micro += 1
                self._forward_backward(batch, micro)
                if micro < self.accum:
                    continue
                micro = 0
                self._optimizer_step()
                self._after_step(progress, len(batch) * self.accum * self.info.world_size)
        finally:
            progress.close()
        return ""

    def _progress(self) -> Progress:
        tc = self.config.train
        if tc.time_limit_minutes > 0:  # bounded by the clock, not by the epoch count: show the budget
            budget = TimeBudget(tc.time_limit_minutes * 60, lambda: time.monotonic() - self.start_time)
            return Progress(self.steps_per_epoch, self.epoch, tc.epochs, self.info.is_main,
                            initial=self.batch_in_epoch, step=self.step, budget=budget)
        return Progress(self.steps_per_epoch, self.epoch, tc.epochs, self.info.is_main, initial=self.batch_in_epoch)

    def _forward_backward(self, batch: Any, micro: int) -> None:
        """One micro-batch: forward, backward (gradients all-reduced only on the step's last one). The loss is
        queued on the device, not read: the step never waits for the device (see :meth:`_check_losses`)."""
        tc = self.config.train
        batch = batch.to(self.info.device, non_blocking=True)
        boundary = micro == self.accum
        sync = contextlib.nullcontext() if boundary or not self.info.distributed else self.ddp.no_sync()
        with sync:
            with autocast(self.info.device, tc.precision), _no_host_mask_checks():
                output = self.forward(**batch.model_inputs())
            loss = output.loss
            # A NaN on one rank reaches all through DDP's gradient all-reduce: nobody hangs in backward, and the
            # next check stops every rank.
            self._loop.losses.add(loss, LossPosition(self.step + 1, self.epoch + 1,
                                                     self.batch_in_epoch * self.accum + micro),
                                  final_layer_losses(output.loss_dict))
            self.scaler.scale(loss / self.accum).backward()

    def _optimizer_step(self) -> None:
        """Clip, step, schedule; times the steps for a wall-clock cosine and the time budget's reserve."""
        tc = self.config.train
        loop = self._loop
        if tc.clip_max_norm > 0:
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_max_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        # Throughput for the time-budget horizon, timed from this process's 5th step on (start-up excluded).
        loop.steps_here += 1
        if loop.steps_here == 5:
            loop.timing_from = time.monotonic()
        elif self.time_horizon and loop.steps_here >= 10 and loop.steps_here % 5 == 0:
            self._update_time_horizon(loop.steps_here - 5, time.monotonic() - loop.timing_from, loop.reserve_s)
        self.scheduler.step()
        now = time.monotonic()
        loop.step_s, loop.step_start = now - loop.step_start, now
        self.step += 1
        self.batch_in_epoch += 1

    def _after_step(self, progress: Progress, samples: int) -> None:
        """After an optimizer step of ``samples`` samples: the progress bar, the log line, and mid-epoch validation
        and checkpoints when they are due. The losses are read only when one of these is (:meth:`_check_losses`)."""
        tc = self.config.train
        loop = self._loop
        mid_epoch = self.batch_in_epoch < self.steps_per_epoch  # else the epoch's end validates and saves
        log_now = bool(tc.log_every) and self.step % tc.log_every == 0
        validate_now = mid_epoch and self.val_loader is not None and bool(tc.eval_every_steps) \
            and self.step % tc.eval_every_steps == 0
        save_now = mid_epoch and bool(tc.checkpoint_every_steps) and self.step % tc.checkpoint_every_steps == 0
        if log_now or validate_now or save_now:
            self._check_losses()
        means = loop.losses.take_means() if log_now else {}
        progress.update(samples, means.get("loss"), self.optimizer.param_groups[self._main_group]["lr"])
        if log_now:
            parts = {f"loss_{name}": value for name, value in means.items() if name != "loss"}
            self.logger.log("train", self.step, {"loss": means.get("loss"), **parts,
                                                 "samples_per_s": progress.samples_per_second,
                                                 **group_lrs(self.optimizer)}, epoch=self.epoch + 1)
        if validate_now:
            loop.eval_s = self._validate(self.epoch + 1)
            if self._take_best():
                self._save_checkpoint(f"step-{self.step:08d}", best=True)
        if save_now and loop.saved_step != self.step:
            self._save_checkpoint(f"step-{self.step:08d}")

    def _check_losses(self) -> None:
        """Read the losses queued since the last check (one all-reduce, one host read) and stop on a non-finite one.
        Called at the logging interval and before every validation and checkpoint, never elsewhere, so that a step
        does not wait for the device and nothing computed after a bad loss is saved. Every rank reads the same
        sums, so all stop together."""
        bad = self._loop.losses.check(lambda losses: all_reduce_sum(losses, self.info), self.info.world_size)
        if bad is not None:
            value, where = bad
            raise NonFiniteLossError(
                f"non-finite loss ({value}) at step {where.step} (epoch {where.epoch}, batch {where.batch}), read at "
                f"step {self.step}; training stopped before saving anything after it, last good checkpoint: "
                f"{self._loop.last_path or ckpt.find_latest(self.output_dir) or 'none yet'}")

    def _finish_epoch(self, epoch: int, stop: str) -> None:
        """After epoch ``epoch`` ended or the run stopped inside it: validate when due, save ``last`` and publish it
        as ``best`` (when it improved) and ``epoch-K`` (every ``train.checkpoint_every`` epochs)."""
        tc = self.config.train
        end_of_epoch = self.batch_in_epoch >= self.steps_per_epoch
        if end_of_epoch:
            self.epoch += 1
            self.batch_in_epoch = 0
        validate = self.val_loader is not None and (
            bool(stop) or self.epoch >= tc.epochs or (end_of_epoch and self.epoch % tc.eval_every == 0))
        if validate:
            self._loop.eval_s = self._validate(epoch + 1, log_epoch=self.epoch)
        keep_epoch = end_of_epoch and bool(tc.checkpoint_every) and self.epoch % tc.checkpoint_every == 0
        self._loop.last_path = self._save_checkpoint(
            "last", best=validate and self._take_best(), also=f"epoch-{self.epoch - 1:04d}" if keep_epoch else None)

    def _take_best(self) -> bool:
        """Whether the latest validation beats the best so far; if so it becomes the best (saved with the next
        checkpoint, which is then published as ``best``). The measure is Acc@0.5, or for a model with the
        generalized head Precision@(F1=1, IoU>=0.5) at its threshold (kept in the same ``best_acc50`` field)."""
        value = self.last_val.get("grec_precision", self.last_val["acc50"])
        if value <= self.best_acc50:
            return False
        self.best_acc50 = value
        return True

    def _save_checkpoint(self, name: str, best: bool = False, also: str | None = None) -> Path | None:
        """Save checkpoint ``name`` with the latest validation's metrics and publish it as ``best`` and as ``also``
        when asked; times the whole for the time budget's reserve. Collective; the path on rank 0."""
        t0 = time.monotonic()
        path = self.save(name, self.last_val)
        self._loop.saved_step = self.step
        links = (["best"] if best else []) + ([also] if also else [])
        if links:
            if self.info.is_main and path is not None:
                for link in links:
                    ckpt.link_checkpoint(self.ckpt_root, path, link)
            barrier(self.info)
        self._loop.save_s = time.monotonic() - t0
        return path

    # ----------------------------------------------------------------------------------------------------------
    # Time budget and validation

    def _stop_reason(self, reserve_s: float) -> str:
        tc = self.config.train
        if tc.max_steps and self.step >= tc.max_steps:
            return "max_steps"
        if tc.time_limit_minutes <= 0:
            return ""
        elapsed = time.monotonic() - self.start_time
        over = torch.tensor([float(elapsed + reserve_s >= tc.time_limit_minutes * 60)])
        # Rank clocks differ: stop when any rank is out of time, so that all ranks stop at the same step.
        return "time_limit" if float(all_reduce_sum(over, self.info)) > 0 else ""

    def _reserve_s(self, eval_s: float | None, samples_per_s: float, save_s: float) -> float:
        """Time kept back from a wall-clock budget for the final validation and checkpoint."""
        if eval_s is None:  # not measured yet: guess from the training throughput (none before the first step)
            eval_s = len(self.val_records) / samples_per_s / 2 if self.val_records and samples_per_s > 0 else 0.0
        return eval_s + save_s

    def _update_time_horizon(self, steps_timed: int, timed_s: float, reserve_s: float) -> None:
        """Point the cosine's end at the step where the time budget runs out, at the rate measured so far
        (validations included, as they recur). Averaged over ranks so that every rank keeps the same rates."""
        remaining = self.config.train.time_limit_minutes * 60 - (time.monotonic() - self.start_time) - reserve_s
        horizon = time_budget_horizon(self.step, steps_timed / max(timed_s, 1e-9), remaining, self.horizon_cap)
        horizon = float(all_reduce_sum(torch.tensor([float(horizon)]), self.info)) / self.info.world_size
        self.scheduler.lr_lambdas[0].total_steps = max(1, round(horizon))

    def _validate(self, epoch: int, log_epoch: int | None = None) -> float:
        """Evaluate on the val split into ``self.last_val``, log and print it; returns the seconds it took."""
        t0 = time.monotonic()
        # RNG-neutral: a run that validates at a point and one that resumes there draw the same
        # dropout streams afterwards (the eval loader's iterator seeds itself from the global RNG).
        rng = ckpt.capture_rng()
        self.last_val, _ = evaluate(self.model, self.val_loader, self.info,
                                    spatial_match=self.config.data.spatial_match)
        ckpt.restore_rng(rng)
        self.logger.log("val", self.step, self.last_val, epoch=epoch if log_epoch is None else log_epoch)
        if self.info.is_main:
            m = self.last_val
            grec = "".join(f" {label} {'-' if m[key] is None else format(m[key], '.2f')}" for label, key in (
                ("| Prec@F1=1", "grec_precision"), ("N-acc", "grec_n_acc"), ("single-target Acc@0.5",
                                                                              "grec_single_acc50")) if key in m)
            print(f"lgrnet train: epoch {epoch} step {self.step}: val Acc@0.5 {m['acc50']:.2f} "
                  f"Acc@0.75 {m['acc75']:.2f} mIoU {m['miou']:.2f}{grec}", flush=True)
        return time.monotonic() - t0


def _check_one_target(records: list, split: str) -> None:
    """A classic model learns exactly one box per expression: refuse no-target and multi-target records up front."""
    for record in records:
        if record.boxes is not None and len(record.boxes) != 1:
            kind = "no target" if not record.boxes else f"{len(record.boxes)} targets"
            raise LGRNetError(f"split {split!r}, record {record.id}: {kind}, but this model predicts exactly one box; "
                              "train with model.grec.enabled=true (the generalized head) or on one-target data")


@dataclass
class _LoopState:
    """What the loop carries between steps within one :meth:`Trainer.run`."""

    saved_step: int  # step of the newest checkpoint (-1: none yet)
    last_path: Path | None = None  # the newest `last` checkpoint written by this run
    eval_s: float | None = None  # duration of the latest validation (None: not measured yet)
    save_s: float = 0.0  # duration of the latest checkpoint
    step_s: float = 0.0  # duration of the latest optimizer step
    reserve_s: float = 0.0  # time kept back for the final validation and save, as of the latest step
    step_start: float = 0.0
    steps_here: int = 0  # optimizer steps done by this process (the time horizon times steps 5 and later)
    timing_from: float = 0.0
    losses: LossWindow = field(default_factory=LossWindow)  # this epoch's losses on the device (_check_losses)


def train(config: Config, output_dir: str | Path, resume: str | None = None, device: str = "auto",
          start_time: float | None = None) -> TrainResult:
    """Train ``config`` into ``output_dir`` (``resume``: None, "auto" or a checkpoint path). ``start_time``
    (``time.monotonic()``) is where a wall-clock budget starts; default: now.

    A run that fails before it has logged anything (bad data, a bad config) removes the folders it created for its
    output: they would hold nothing to resume, use or read. Once a run has trained far enough to log, its folder
    stays (``metrics.jsonl`` says how it went, e.g. up to a non-finite loss) even without a checkpoint."""
    output_dir = Path(output_dir)
    # Rank 0 creates the folder (the others may find it already there); the RANK that torchrun sets says which.
    created = _first_missing(output_dir) if int(os.environ.get("RANK", "0")) == 0 else None
    finished = False
    try:
        result = Trainer(config, output_dir, resume, device, start_time).run()
        finished = True
        return result
    except BaseException:
        if created is not None and ckpt.find_latest(output_dir) is None and not (output_dir / "metrics.jsonl").exists():
            _remove_created(created, output_dir)
        raise
    finally:
        cleanup_distributed(synchronize=finished)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (``path`` itself or one of its parents), or None."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists() or folder.is_symlink():
            break
        missing = folder
    return missing


def _remove_created(top: Path, output_dir: Path) -> None:
    """Delete ``output_dir`` and its empty parents up to ``top``, the outermost folder this run created."""
    shutil.rmtree(output_dir, ignore_errors=True)
    for folder in output_dir.parents:
        if not folder.is_relative_to(top):
            break
        try:
            folder.rmdir()  # only when empty: nothing but this run wrote there
        except OSError:
            break
