"""The training loop: one process (CPU or one GPU) or ``torchrun`` DDP, mixed precision, gradient accumulation and
clipping, per-epoch validation, atomic checkpoints and exact resume (also from the middle of an epoch).

Departures from the reference's ``train.py``/``engine.py`` (spec section 15): the single-process sampler shuffles
(15.13); the gradient scaler is created once and checkpointed (15.12); clipping acts on unscaled gradients
(15.12); only rank 0 writes (15.14); DDP runs without ``find_unused_parameters`` (the model has no dead weights).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
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
from lgrnet.engine.evaluate import autocast, evaluate
from lgrnet.engine.logging import MetricsLogger, Progress
from lgrnet.engine.optim import (
    build_optimizer,
    build_scheduler,
    cosine_horizon,
    group_lrs,
    time_budget_horizon,
)
from lgrnet.errors import CheckpointError, LGRNetError

# Test hook "RANK:STEP": that rank raises before the step, to show that the other ranks stop instead of hanging.
FAIL_ENV = "LGRNET_TEST_FAIL_RANK_AT_STEP"


def _say(message: str) -> None:
    print(f"lgrnet train: {message}", flush=True)


def _maybe_fail(rank: int, step: int) -> None:
    target = os.environ.get(FAIL_ENV)
    if target and target == f"{rank}:{step}":
        raise RuntimeError(f"{FAIL_ENV}: rank {rank} fails at step {step} (test hook)")


class NonFiniteLossError(LGRNetError):
    """The loss became NaN/inf; training stopped before the update, the last checkpoint is untouched."""


@dataclass
class TrainResult:
    output_dir: Path
    epoch: int  # epochs completed (fractional progress is in `step`)
    step: int
    best_acc50: float
    val_metrics: dict[str, float] = field(default_factory=dict)
    stopped_early: str = ""  # "time_limit" / "max_steps" when the run ended before the last epoch
    last_checkpoint: Path | None = None


def _model_parts(config: Config, info: DistInfo, resume_from: Path | None) -> nn.Module:
    from lgrnet.model.lgrnet import LGRNet

    model = LGRNet(config.model, config.loss)
    if resume_from is not None:
        _load_weights(model, resume_from)
    elif config.train.init_from:
        init = Path(config.train.init_from)
        if not (init / "model.safetensors").is_file():
            raise CheckpointError(f"train.init_from {init}: not a model folder (no model.safetensors)")
        _load_weights(model, init)
        if info.is_main:
            print(f"lgrnet train: initialised from {init}", flush=True)
    return model.to(info.device)


def _load_weights(model: nn.Module, folder: Path) -> None:
    """Load ``model.safetensors`` into an already built model (text weights may be absent when not saved)."""
    from safetensors.torch import load_file

    path = folder / ckpt.MODEL_FILE
    problem = ckpt.model_file_problem(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {folder}: {problem}")
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith("text.")]
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {folder} does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


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
        self.tokenizer = _build_tokenizer(config)

        resume_info = None
        if self.info.is_main:
            ckpt.remove_stale_temporaries(self.ckpt_root)
            resume_info = ckpt.resolve_resume(resume, self.output_dir, report=_say)
        resume_info = broadcast_object(resume_info, self.info)
        self.resume_info: ckpt.CheckpointInfo | None = resume_info  # type: ignore[assignment]

        self.model = _model_parts(config, self.info, resume_info.path if resume_info else None)
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
            device_ids = [self.info.device.index] if self.info.device.type == "cuda" else None
            self.ddp = DistributedDataParallel(self.model, device_ids=device_ids)
        self.forward = torch.compile(self.ddp) if tc.compile else self.ddp

        self.val_loader = None
        if self.val_records:
            from lgrnet.data.dataset import build_dataloader

            self.val_loader = build_dataloader(self.val_records, config, self.tokenizer, train=False,
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
    # Loop

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
            print(f"lgrnet train: epoch {epoch} step {self.step}: val Acc@0.5 {m['acc50']:.2f} "
                  f"Acc@0.75 {m['acc75']:.2f} mIoU {m['miou']:.2f}", flush=True)
        return time.monotonic() - t0

    def run(self) -> TrainResult:
        tc = self.config.train
        device = self.info.device
        eval_s: float | None = None
        save_s = 0.0
        step_s = 0.0
        stop = ""
        last_path = None
        saved_step = self.step if self.resume_info is not None else -1  # step of the newest checkpoint
        # Throughput for the time-budget horizon, timed from this process's 5th step on (start-up excluded).
        steps_here, timing_from = 0, 0.0
        try:
            while self.epoch < tc.epochs and not stop:
                epoch = self.epoch
                self.sampler.set_epoch(epoch, self.batch_in_epoch * self.accum)  # type: ignore[attr-defined]
                self.model.train()
                progress = Progress(self.steps_per_epoch, epoch, tc.epochs, self.info.is_main,
                                    initial=self.batch_in_epoch)
                window_loss, window_n = 0.0, 0
                micro = 0
                step_start = time.monotonic()
                for batch in self.train_loader:
                    if micro == 0:
                        # Before each optimizer step: is there time for it plus the final validation and save?
                        reserve = self._reserve_s(eval_s, progress.samples_per_second, save_s) + step_s
                        stop = self._stop_reason(reserve)
                        if stop:
                            break
                    _maybe_fail(self.info.rank, self.step + 1)
                    batch = batch.to(device, non_blocking=True)
                    micro += 1
                    boundary = micro == self.accum
                    sync = contextlib.nullcontext() if boundary or not self.info.distributed else self.ddp.no_sync()
                    with sync:
                        with autocast(device, tc.precision):
                            output = self.forward(**batch.model_inputs())
                        loss = output.loss
                        # One small all-reduce per micro-batch: the mean loss for the log, and every rank sees a
                        # non-finite value on any rank, so all stop together instead of hanging in backward.
                        loss_sum = all_reduce_sum(loss.detach().float().reshape(1), self.info)
                        mean_loss = float(loss_sum) / self.info.world_size
                        if not math.isfinite(mean_loss):
                            raise NonFiniteLossError(
                                f"non-finite loss ({mean_loss}) at step {self.step + 1} (epoch {epoch + 1}, "
                                f"batch {self.batch_in_epoch * self.accum + micro}); training stopped, last good "
                                f"checkpoint: {last_path or ckpt.find_latest(self.output_dir) or 'none yet'}")
                        self.scaler.scale(loss / self.accum).backward()
                    window_loss += mean_loss
                    window_n += 1
                    if not boundary:
                        continue
                    micro = 0
                    if tc.clip_max_norm > 0:
                        self.scaler.unscale_(self.optimizer)  # clip the true gradients, not scaled ones
                        torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_max_norm)
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    steps_here += 1
                    if steps_here == 5:
                        timing_from = time.monotonic()
                    elif self.time_horizon and steps_here >= 10 and steps_here % 5 == 0:
                        self._update_time_horizon(steps_here - 5, time.monotonic() - timing_from, reserve)
                    self.scheduler.step()
                    step_s = time.monotonic() - step_start
                    step_start = time.monotonic()
                    self.step += 1
                    self.batch_in_epoch += 1
                    lr = self.optimizer.param_groups[self._main_group]["lr"]
                    progress.update(len(batch) * self.accum * self.info.world_size, mean_loss, lr)
                    if tc.log_every and self.step % tc.log_every == 0:
                        self.logger.log("train", self.step, {"loss": window_loss / window_n,
                                                             "samples_per_s": progress.samples_per_second,
                                                             **group_lrs(self.optimizer)}, epoch=epoch + 1)
                        window_loss, window_n = 0.0, 0
                    mid_epoch = self.batch_in_epoch < self.steps_per_epoch
                    if self.val_loader is not None and tc.eval_every_steps and mid_epoch \
                            and self.step % tc.eval_every_steps == 0:
                        eval_s = self._validate(epoch + 1)
                        if self.last_val["acc50"] > self.best_acc50:
                            self.best_acc50 = self.last_val["acc50"]
                            t0 = time.monotonic()
                            path = self.save(f"step-{self.step:08d}", self.last_val)
                            saved_step = self.step
                            if self.info.is_main and path is not None:
                                ckpt.link_checkpoint(self.ckpt_root, path, "best")
                            save_s = time.monotonic() - t0
                    if tc.checkpoint_every_steps and self.step % tc.checkpoint_every_steps == 0 \
                            and mid_epoch and saved_step != self.step:
                        t0 = time.monotonic()
                        self.save(f"step-{self.step:08d}", self.last_val)
                        saved_step = self.step
                        save_s = time.monotonic() - t0
                progress.close()
                if stop and saved_step == self.step:
                    break  # stopped right after a checkpoint (e.g. at an epoch boundary): nothing new to save
                end_of_epoch = self.batch_in_epoch >= self.steps_per_epoch
                if end_of_epoch:
                    self.epoch += 1
                    self.batch_in_epoch = 0
                do_eval = self.val_loader is not None and (
                    bool(stop) or self.epoch >= tc.epochs or (end_of_epoch and self.epoch % tc.eval_every == 0))
                if do_eval:
                    eval_s = self._validate(epoch + 1, log_epoch=self.epoch)
                t0 = time.monotonic()
                improved = do_eval and self.last_val["acc50"] > self.best_acc50
                if improved:
                    self.best_acc50 = self.last_val["acc50"]
                last_path = self.save("last", self.last_val)
                saved_step = self.step
                if self.info.is_main:
                    if improved:
                        ckpt.link_checkpoint(self.ckpt_root, last_path, "best")
                    if end_of_epoch and tc.checkpoint_every and self.epoch % tc.checkpoint_every == 0:
                        ckpt.link_checkpoint(self.ckpt_root, last_path, f"epoch-{self.epoch - 1:04d}")
                    ckpt.prune_step_checkpoints(self.ckpt_root, keep=None)
                barrier(self.info)
                save_s = time.monotonic() - t0
        finally:
            self.logger.close()
        return TrainResult(self.output_dir, self.epoch, self.step, self.best_acc50, self.last_val, stop,
                           last_path)


def train(config: Config, output_dir: str | Path, resume: str | None = None, device: str = "auto",
          start_time: float | None = None) -> TrainResult:
    """Train ``config`` into ``output_dir`` (``resume``: None, "auto" or a checkpoint path). ``start_time``
    (``time.monotonic()``) is where a wall-clock budget starts; default: now."""
    try:
        return Trainer(config, output_dir, resume, device, start_time).run()
    finally:
        cleanup_distributed()
