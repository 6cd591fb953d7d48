"""End-to-end engine tests on the 30 real COCO samples of ../shared/data/real_smoke (tiny twin at 64 px, CPU):
overfitting, exact resume (end of epoch and mid-epoch), SIGKILL during a checkpoint write, torchrun DDP vs one
process, a failing rank, a non-finite loss, a missing data file, and ``lgrnet eval``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tiny_configs import TINY_TEXT, tiny_twin

from lgrnet.config import Config, TrainConfig, load_config
from lgrnet.engine import checkpoint as ckpt
from lgrnet.engine.optim import cosine_horizon, time_budget_horizon
from lgrnet.engine.train import NonFiniteLossError, train
from lgrnet.errors import DataError, LGRNetError

SMOKE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real_smoke"
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def smoke_rows() -> list[dict]:
    """The 30 real samples' manifest rows (../shared/data/real_smoke)."""
    if not (SMOKE / "manifest.jsonl").is_file():
        pytest.fail(f"{SMOKE} is missing: the tests need ../shared/data beside the checkout")
    return [json.loads(line) for line in (SMOKE / "manifest.jsonl").read_text().splitlines() if line.strip()]


def write_smoke_splits(out: Path, splits: dict[str, list[dict]]) -> Path:
    """Each split's manifest rows as ``out/<split>.jsonl`` in the custom JSONL format (absolute image paths)."""
    for name, rows in splits.items():
        (out / f"{name}.jsonl").write_text("".join(
            json.dumps({"image": str(SMOKE / r["image"]), "expression": r["expression"], "box": r["bbox_xyxy"],
                        "id": str(r["id"])}) + "\n" for r in rows))
    return out


@pytest.fixture(scope="module")
def smoke_dir(tmp_path_factory) -> Path:
    """The 30 real samples as custom-format JSONL (read by the JSONL reader): train = all 30, val = 6 of them."""
    rows = smoke_rows()
    return write_smoke_splits(tmp_path_factory.mktemp("smoke"), {"train": rows, "val": rows[::5], "all": rows})


def tiny(data_root: Path, *overrides: str) -> Config:
    """Tiny twin of the reference preset, shrunk to 64 px and 16 tokens, deterministic, no workers."""
    base = [
        "data.format=jsonl", f"data.root={data_root}", "data.num_workers=0", "data.augment.scales=[64,56,48]",
        "model.image_size=64", "model.text.max_length=16", "train.deterministic=true", "train.precision=off",
        "train.batch_size=10", "train.checkpoint_every=0", "train.log_every=1", "train.epochs=2",
    ]
    return load_config(tiny_twin("lgrnet-swin-s"), base + list(overrides))


def weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / name / "model.safetensors"))


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def first_moment_differences(reference: dict, other: dict) -> dict[int, float]:
    """Per parameter, the largest difference of AdamW's first moment (0.1 x gradient after one step) relative to
    the reference's largest value. Tensors whose gradient is zero in exact arithmetic (attention key biases:
    softmax is shift-invariant per query; QDA factors that start at zero) hold only round-off there, of either
    sign, and are left out: those below 1e-7 of the largest first moment of all."""
    largest = max(s["exp_avg"].abs().max().item() for s in reference.values())
    return {k: ((other[k]["exp_avg"] - s["exp_avg"]).abs().max() / s["exp_avg"].abs().max()).item()
            for k, s in reference.items() if s["exp_avg"].abs().max().item() > 1e-7 * largest}


def assert_first_moments_agree(run_a: Path, run_b: Path, limit: float) -> dict[int, float]:
    """The AdamW first moments in two runs' ``checkpoints/last`` agree to ``limit`` relative
    (:func:`first_moment_differences`, which must cover most parameters); returns the per-parameter differences."""
    ma = ckpt.load_state(run_a / "checkpoints" / "last")["optimizer"]["state"]
    mb = ckpt.load_state(run_b / "checkpoints" / "last")["optimizer"]["state"]
    assert ma.keys() == mb.keys() and len(ma) > 100
    relative = first_moment_differences(ma, mb)
    assert len(relative) > 0.75 * len(ma)
    assert max(relative.values()) < limit, sorted(relative.items(), key=lambda kv: -kv[1])[:3]
    return relative


# Runs the CLI in a child process with a fault hook installed (see the script's docstring).
FAULT_LAUNCHER = Path(__file__).resolve().parent / "fault_launcher.py"


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_overfit_real_samples_reaches_100_percent(smoke_dir, tmp_path):
    """Loss, gradients and box conventions end to end: the 30 real samples through the JSONL reader and the FULL
    train transform (crop, multi-scale, jitter, translate) are learned to 100% Acc@0.5 (eval transform)."""
    lr = "3e-3"
    config = tiny(smoke_dir, "train.batch_size=15", "train.epochs=60", "train.eval_every=5", "train.warmup_steps=10",
                  "model.dropout=0.0", "data.val_split=all", f"train.lr={lr}", f"train.lr_visual={lr}",
                  f"train.lr_text={lr}", f"train.lr_qda={lr}", f"train.lr_neck_lateral={lr}",
                  "train.lr_drop_epochs=[40]")
    assert config.data.augment.crop and config.data.augment.translate and config.data.augment.color_jitter > 0
    start = time.perf_counter()
    result = train(config, tmp_path / "run", device="cpu")
    elapsed = time.perf_counter() - start
    vals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if '"val"' in line]
    first_100 = next((v["step"] for v in vals if v["acc50"] == 100.0), None)
    print(f"overfit: Acc@0.5 by step {[(v['step'], round(v['acc50'], 1)) for v in vals]}; {elapsed:.1f} s")
    assert result.best_acc50 == 100.0, f"best Acc@0.5 {result.best_acc50} after {result.step} steps"
    assert first_100 is not None and first_100 <= 120  # measured: 100% from step 90 on
    best = ckpt.load_state(tmp_path / "run" / "checkpoints" / "best")
    assert best["val_metrics"]["acc50"] == 100.0 and best["val_metrics"]["count"] == 30


@pytest.mark.slow
def test_resume_is_bitwise_exact(smoke_dir, tmp_path):
    """2 epochs straight == 1 epoch + resume + 1 epoch == stop mid-epoch 2 + resume, bitwise (dropout on, so the
    restored RNG streams matter too)."""
    straight = train(tiny(smoke_dir, "model.dropout=0.1"), tmp_path / "straight", device="cpu")
    assert straight.step == 6 and straight.epoch == 2

    first = train(tiny(smoke_dir, "model.dropout=0.1", "train.epochs=1"), tmp_path / "split", device="cpu")
    assert first.step == 3
    second = train(tiny(smoke_dir, "model.dropout=0.1"), tmp_path / "split", resume="auto", device="cpu")
    assert second.step == 6
    assert_bitwise_equal(weights(tmp_path / "straight"), weights(tmp_path / "split"))

    # Mid-epoch: stop after step 4 (epoch 2, batch 1), then resume from that checkpoint.
    mid = train(tiny(smoke_dir, "model.dropout=0.1", "train.max_steps=4"), tmp_path / "mid", device="cpu")
    assert mid.stopped_early == "max_steps"
    info = ckpt.find_latest(tmp_path / "mid")
    assert (info.epoch, info.batch_in_epoch, info.step) == (1, 1, 4)
    train(tiny(smoke_dir, "model.dropout=0.1"), tmp_path / "mid", resume="auto", device="cpu")
    assert_bitwise_equal(weights(tmp_path / "straight"), weights(tmp_path / "mid"))
    a = ckpt.load_state(tmp_path / "straight" / "checkpoints" / "last")["optimizer"]["state"]
    b = ckpt.load_state(tmp_path / "mid" / "checkpoints" / "last")["optimizer"]["state"]
    assert all(torch.equal(a[k]["exp_avg_sq"], b[k]["exp_avg_sq"]) for k in a)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lgrnet.cli", *args]


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_then_resume_auto(smoke_dir, tmp_path):
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny(smoke_dir, "train.epochs=3").to_yaml())
    # Paused in the end-of-epoch-2 checkpoint (3 steps per epoch).
    launch = [sys.executable, str(FAULT_LAUNCHER), "--pause-checkpoint-at-step", "6", "--",
              "train", "--config", str(cfg), "--output-dir", str(run), "--device", "cpu"]
    proc = subprocess.Popen(launch, env=_env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            cwd=REPO)
    paused = False
    deadline = time.monotonic() + 240
    try:
        for line in proc.stderr:  # type: ignore[union-attr]
            if "LGRNET_TEST: paused writing checkpoint" in line:
                paused = True
                break
            assert time.monotonic() < deadline, "training never reached the checkpoint write"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert paused and proc.returncode == -signal.SIGKILL
    root = run / "checkpoints"
    half = [p for p in root.iterdir() if p.name.startswith(".tmp-last")]
    assert half and not (half[0] / ckpt.MARKER).exists()  # the killed write left an incomplete folder
    assert ckpt.read_info(root / "last").step == 3  # the previous checkpoint is intact

    done = subprocess.run(_cli("train", "--config", str(cfg), "--output-dir", str(run), "--device", "cpu",
                               "--resume", "auto"), env=_env(), capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resumed from" in done.stdout and "step 3)" in done.stdout
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 9 and summary["epochs"] == 3
    assert ckpt.read_info(root / "last").step == 9
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


def _torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "lgrnet.cli", *args]


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(smoke_dir, tmp_path):
    """torchrun (gloo, 2 x batch 2) == one process with batch 4 after 3 steps, within float tolerance. The
    alignment loss gathers negatives across ranks so that it sees the same global batch."""
    # No dropout anywhere (the BERT encoder has its own): the random masks of 2 ranks cannot equal those of 1.
    text = dict(TINY_TEXT["config_overrides"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    common = ("train.max_steps=3", "model.dropout=0.0", "loss.align_gather=true", "train.lr=1e-3",
              f"model.text.config_overrides={json.dumps(text)}")
    single = train(tiny(smoke_dir, "train.batch_size=4", *common), tmp_path / "single", device="cpu")
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(tiny(smoke_dir, "train.batch_size=2", *common).to_yaml())
    done = subprocess.run(_torchrun(2, "train", "--config", str(cfg), "--output-dir", str(tmp_path / "ddp"),
                                    "--device", "cpu"), env=_env(), capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = weights(tmp_path / "single"), weights(tmp_path / "ddp")
    # The key bias of softmax attention gets an exactly-zero gradient (softmax is shift-invariant per query);
    # AdamW turns its round-off, which depends on the summation order (1 vs 2 ranks), into +-lr steps: it carries
    # no signal and is left out. Everything else within float tolerance.
    diffs = {}
    for k in a:
        d = (a[k] - b[k]).abs()
        if k.endswith("in_proj_bias"):
            third = d.numel() // 3
            d = torch.cat([d[:third], d[2 * third:]])
        diffs[k] = d.max().item()
    diff = max(diffs.values())
    print(f"DDP vs single process: max |param diff| = {diff:.3g}")
    assert single.step == 3
    assert diff < 2e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:5]
    # AdamW moves every weight by about lr per step whatever the gradient's size, so the weights would hardly show
    # gradients of the wrong size (a sum over ranks instead of a mean): the first moments (a weighted sum of
    # the 3 gradients) would.
    assert_first_moments_agree(tmp_path / "single", tmp_path / "ddp", 1e-2)
    # Metrics are reduced over ranks: both runs evaluated the same 6 val samples.
    va = ckpt.load_state(tmp_path / "single" / "checkpoints" / "last")["val_metrics"]
    vb = ckpt.load_state(tmp_path / "ddp" / "checkpoints" / "last")["val_metrics"]
    assert va["count"] == vb["count"] == 6
    assert vb["miou"] == pytest.approx(va["miou"], abs=1e-3)


@pytest.mark.slow
def test_failing_rank_stops_the_job_instead_of_hanging(smoke_dir, tmp_path):
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(tiny(smoke_dir, "train.batch_size=2", "train.max_steps=4").to_yaml())
    start = time.monotonic()
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
              str(FAULT_LAUNCHER), "--fail-rank-at-step", "1:2", "--",
              "train", "--config", str(cfg), "--output-dir", str(tmp_path / "run"), "--device", "cpu"]
    done = subprocess.run(launch, env=_env(), capture_output=True, text=True, cwd=REPO, timeout=240)
    assert done.returncode != 0
    assert "rank 1 fails at step 2" in done.stderr
    assert time.monotonic() - start < 200


def nan_loss_at_forward(monkeypatch: pytest.MonkeyPatch, n: int) -> dict[str, int]:
    """The loss of the ``n``-th training forward becomes NaN; returns the count of training forwards (key "n")."""
    from lgrnet.model.lgrnet import LGRNet

    original = LGRNet.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == n:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(LGRNet, "forward", forward)
    return calls


def test_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(smoke_dir, tmp_path, monkeypatch):
    nan_loss_at_forward(monkeypatch, 3)
    config = tiny(smoke_dir, "train.checkpoint_every_steps=1", "train.epochs=1")
    with pytest.raises(NonFiniteLossError, match=r"at step 3 \(epoch 1, batch 3\)"):
        train(config, tmp_path / "run", device="cpu")
    latest = ckpt.find_latest(tmp_path / "run")
    assert latest.step == 2
    assert all(torch.isfinite(t).all() for t in weights(tmp_path / "run", latest.path.name).values())


def test_a_run_that_logged_keeps_its_folder_without_a_checkpoint(smoke_dir, tmp_path, monkeypatch):
    """Only a run that failed before logging anything removes its folder: a non-finite loss after two logged steps
    (no checkpoint yet) leaves metrics.jsonl with those two steps to read."""
    nan_loss_at_forward(monkeypatch, 3)
    with pytest.raises(NonFiniteLossError):
        train(tiny(smoke_dir, "train.epochs=1"), tmp_path / "run", device="cpu")
    assert ckpt.find_latest(tmp_path / "run") is None
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r["kind"] == "train"] == [1, 2]


def test_the_log_has_each_loss_term_and_they_add_up_to_the_total(smoke_dir, tmp_path):
    """metrics.jsonl carries the last layer's unweighted terms next to the total; with distinct weights and no
    auxiliary layers, the weighted terms must add up to the logged total (a swapped or missing term would not)."""
    config = tiny(smoke_dir, "train.epochs=1", "loss.aux_loss=false", "loss.l1_weight=2.0", "loss.giou_weight=3.0",
                  "loss.align_weight=0.5")
    train(config, tmp_path / "run", device="cpu")
    rows = [r for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
            if r["kind"] == "train"]
    assert rows and all({"loss_l1", "loss_giou", "loss_align"} <= r.keys() for r in rows)
    assert not any(key.rpartition("_")[2].isdigit() for r in rows for key in r)  # no auxiliary-layer copies
    for r in rows:
        assert r["loss"] == pytest.approx(2.0 * r["loss_l1"] + 3.0 * r["loss_giou"] + 0.5 * r["loss_align"], rel=1e-5)
    assert len({round(r["loss_l1"], 6) for r in rows}) > 1  # each step its own terms, not one repeated value


def test_missing_data_file_is_a_clear_error(tmp_path):
    config = tiny(tmp_path / "nowhere")
    with pytest.raises(DataError, match="nowhere"):
        train(config, tmp_path / "run", device="cpu")
    # The failed run leaves no empty run folder, nor the parents it created; a folder that was there stays.
    assert not (tmp_path / "run").exists()
    with pytest.raises(DataError, match="nowhere"):
        train(config, tmp_path / "new" / "runs" / "run", device="cpu")
    assert not (tmp_path / "new").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("kept")
    with pytest.raises(DataError, match="nowhere"):
        train(config, tmp_path / "mine", device="cpu")
    with pytest.raises(DataError, match="nowhere"):
        train(config, tmp_path / "mine" / "run", device="cpu")
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    from lgrnet.cli import main

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(config.to_yaml())
    assert main(["train", "--config", str(cfg), "--output-dir", str(tmp_path / "run2"), "--device", "cpu"]) == 2
    assert not (tmp_path / "run2").exists()


def _target_set_rows(rows: list[dict]) -> list[dict]:
    """The real samples with target sets: every third has none, every third two (its own box and another
    expression's box on the same image), the rest one."""
    by_image: dict[str, list[list[float]]] = {}
    for r in rows:
        by_image.setdefault(r["image"], []).append(r["bbox_xyxy"])
    out = []
    for i, r in enumerate(rows):
        others = [b for b in by_image[r["image"]] if b != r["bbox_xyxy"]]
        boxes = [] if i % 3 == 0 else [r["bbox_xyxy"], others[0]] if i % 3 == 2 and others else [r["bbox_xyxy"]]
        out.append({"image": str(SMOKE / r["image"]), "expression": r["expression"], "boxes": boxes, "id": str(r["id"])})
    return out


def test_classic_model_refuses_target_sets_before_training(tmp_path):
    rows = _target_set_rows(smoke_rows())
    for name in ("train", "val"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(LGRNetError, match=r"record \S+: no target, but this model predicts exactly one box"):
        train(tiny(tmp_path), tmp_path / "run", device="cpu")
    assert not (tmp_path / "run").exists()


def test_generalized_head_trains_and_keeps_the_best_by_grec_precision(tmp_path):
    rows = _target_set_rows(smoke_rows())
    for name in ("train", "val"):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny(tmp_path, "model.grec.enabled=true", "model.grec.num_queries=3", "train.epochs=2")
    result = train(config, tmp_path / "run", device="cpu")
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    precision = [x["grec_precision"] for x in lines if x["kind"] == "val"]
    assert len(precision) == 2 and result.best_acc50 == max(precision)
    assert all(x["loss"] > 0 for x in lines if x["kind"] == "train")


def test_eval_command_prints_metrics_and_writes_predictions(smoke_dir, tmp_path, capsys):
    from lgrnet.cli import main

    result = train(tiny(smoke_dir, "train.max_steps=1"), tmp_path / "run", device="cpu")
    capsys.readouterr()
    preds = tmp_path / "preds.jsonl"
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", str(smoke_dir), "--split", "val",
                 "--batch-size", "4", "--output", str(preds), "--device", "cpu"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("acc50", "acc75", "miou", "acc50_spatial", "acc50_non_spatial", "orig_acc50", "orig_miou"):
        assert key in metrics
    assert metrics["count"] == 6
    # Same weights, same data, same rule as the trainer's own validation.
    assert metrics["miou"] == pytest.approx(result.val_metrics["miou"], abs=1e-4)
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 6 and all(len(r["box"]) == 4 for r in rows)
    # Shorthand DATASPEC and a clear error for a bad one.
    assert main(["eval", "--checkpoint", str(tmp_path / "run" / "checkpoints" / "last"),
                 "--data", f"jsonl:{smoke_dir}", "--split", "val", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["count"] == 6
    assert main(["eval", "--checkpoint", str(tmp_path / "run"), "--data", "bogus:x", "--device", "cpu"]) == 2
    assert "--data bogus:x" in capsys.readouterr().err


def test_time_limit_stops_with_a_validated_resumable_checkpoint_and_cosine_fits_the_budget(smoke_dir, tmp_path,
                                                                                          monkeypatch):
    """A 6 s budget on a virtual clock that advances 0.25 s per training forward pass (and only then): the run
    sees the same throughput on an idle or a loaded machine, stops in time for its final validation, and its
    cosine, over 1000 epochs by the config, decays over the ~22 steps that fit."""
    import types

    import lgrnet.engine.logging
    import lgrnet.engine.train
    from lgrnet.model.lgrnet import LGRNet

    clock = {"now": 1000.0}

    def now() -> float:
        return clock["now"]

    virtual = types.SimpleNamespace(monotonic=now, perf_counter=now, time=time.time)
    monkeypatch.setattr(lgrnet.engine.train, "time", virtual)
    monkeypatch.setattr(lgrnet.engine.logging, "time", virtual)
    original = LGRNet.forward

    def forward(self, *args, **kwargs):
        if self.training:
            clock["now"] += 0.25
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LGRNet, "forward", forward)
    shown = []  # the progress bar's description after each step

    class RecordingProgress(lgrnet.engine.logging.Progress):
        def update(self, *args, **kwargs):
            super().update(*args, **kwargs)
            shown.append(self.bar.desc.rstrip(": "))

    monkeypatch.setattr(lgrnet.engine.train, "Progress", RecordingProgress)
    config = tiny(smoke_dir, "train.epochs=1000", "train.time_limit_minutes=0.1", "train.lr_schedule=cosine",
                  "train.batch_size=2", "train.eval_every=1000")
    start = time.monotonic()
    result = train(config, tmp_path / "run", device="cpu", start_time=now())
    print(f"6 s virtual budget: {result.step} steps, {time.monotonic() - start:.1f} s")
    assert result.stopped_early == "time_limit"
    assert clock["now"] - 1000.0 <= 6.0  # the final validation and checkpoint fit in the budget
    assert result.val_metrics["count"] == 6
    info = ckpt.find_latest(tmp_path / "run")
    assert info is not None and info.step == result.step
    # 1000 epochs would keep the rate near its top; the time budget's horizon brings it down by the end.
    lrs = [row["lr_rest"] for row in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
           if row["kind"] == "train"]
    base = config.train.lr
    assert len(lrs) == result.step and 18 <= result.step <= 24  # 24 steps of 0.25 s fill 6 s
    assert lrs[5] == pytest.approx(base, rel=1e-3) and lrs[-1] < 0.1 * base
    # The bar shows the budget, not "epoch 1/1000": steps done, virtual seconds spent (0.25 per step) / 6 s.
    assert shown[0] == "step 1, 0:00/0:06" and shown[7] == "step 8, 0:02/0:06"
    assert shown[-1] == f"step {result.step}, 0:0{int(result.step * 0.25)}/0:06" and len(shown) == result.step


def test_time_budget_label_counts_minutes_and_hours():
    from lgrnet.engine.logging import TimeBudget

    assert TimeBudget(15 * 60, lambda: 3 * 60 + 12.9).label(37) == "step 37, 3:12/15:00"
    assert TimeBudget(2 * 3600, lambda: 3600 + 2 * 60 + 5).label(5) == "step 5, 1:02:05/2:00:00"


def test_cosine_horizon_is_the_first_limit_and_the_time_budget_caps_it():
    assert cosine_horizon(TrainConfig(epochs=3, max_steps=0), steps_per_epoch=10) == 30
    assert cosine_horizon(TrainConfig(epochs=3, max_steps=12), steps_per_epoch=10) == 12
    assert cosine_horizon(TrainConfig(epochs=3, max_steps=50), steps_per_epoch=10) == 30
    # 100 steps done at 5 steps/s with 20 s left: ends at 200, unless the step limit comes first.
    assert time_budget_horizon(100, 5.0, 20.0, cap=1000) == 200
    assert time_budget_horizon(100, 5.0, 20.0, cap=150) == 150
    assert time_budget_horizon(100, 5.0, -3.0, cap=1000) == 101  # out of time: always one step ahead


CONFIGS = REPO / "configs"


@pytest.mark.parametrize("name", ["refcoco", "refcoco+", "refcocog-umd", "refcocog-google", "referit", "flickr30k"])
def test_paper_configs_follow_the_reference_recipe(name):
    c = load_config(CONFIGS / f"{name}.yaml")
    t = c.train
    assert (t.lr, t.lr_visual, t.lr_neck_lateral, t.lr_text, t.lr_qda, t.weight_decay) == \
        (1e-4, 1e-5, 1e-5, 1e-5, 1e-4, 1e-4)
    assert (t.epochs, t.lr_drop_epochs, t.lr_gamma) == (90, [60], 0.1)
    assert t.batch_size * 8 * t.accumulation_steps == 128  # paper: 8 GPUs
    assert (c.model.image_size, c.model.text.max_length, c.data.format) == (640, 40, "transvg")
    assert c.name == name


def test_other_configs_load():
    dataset = {"refcoco+": "unc+", "refcocog-umd": "gref_umd", "refcocog-google": "gref", "referit": "referit",
               "flickr30k": "flickr"}
    for name, key in dataset.items():
        assert load_config(CONFIGS / f"{name}.yaml").data.dataset == key
    vg, ft = load_config(CONFIGS / "vg-pretrain.yaml"), load_config(CONFIGS / "refcocog-umd-finetune.yaml")
    assert (vg.data.format, vg.train.epochs, ft.train.epochs) == ("vg", 6, 50)
    assert ft.train.init_from == "runs/vg-pretrain/checkpoints/last"
    custom = load_config(CONFIGS / "custom.yaml", ["data.root=somewhere", "train.time_limit_minutes=5"])
    assert (custom.data.format, custom.data.root, custom.train.time_limit_minutes) == ("jsonl", "somewhere", 5.0)
    assert load_config(CONFIGS / "tiny-cpu.yaml").name == "tiny-cpu"


def test_eval_every_steps_validates_mid_epoch_and_keeps_the_best(smoke_dir, tmp_path):
    """train.eval_every_steps=2 with 3 steps per epoch: val at steps 2 (mid epoch 1), 3 (epoch end), 4 (mid
    epoch 2) and 6; the best of them is published as checkpoints/best with its metrics."""
    result = train(tiny(smoke_dir, "train.eval_every_steps=2"), tmp_path / "run", device="cpu")
    assert result.step == 6
    vals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if '"val"' in line]
    assert [v["step"] for v in vals] == [2, 3, 4, 6]
    best = ckpt.load_state(tmp_path / "run" / "checkpoints" / "best")
    assert best["val_metrics"]["acc50"] == max(v["acc50"] for v in vals)
    # Only the newest step checkpoint survives pruning; "best" is a copy that outlives it.
    steps = [p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.startswith("step-")]
    assert len(steps) <= 1


def test_frozen_text_encoder_cache_runs_each_expression_once_and_trains_the_same(smoke_dir, tmp_path):
    """On a CPU a frozen text encoder's features are remembered per expression (train.text_cache_mb): the encoder
    runs once per distinct expression instead of once per sample and validation, and the weights come out as
    without the cache."""
    from torch.nn.modules.module import register_module_forward_hook

    rows: list[int] = []

    def count(module, args, kwargs, out):
        if type(module).__name__ == "BertModel":
            rows.append(kwargs["input_ids"].shape[0])

    handle = register_module_forward_hook(count, with_kwargs=True)
    try:
        plain = train(tiny(smoke_dir, "model.text.freeze=true", "train.text_cache_mb=0"), tmp_path / "plain",
                      device="cpu")
        plain_rows, rows[:] = sum(rows), []
        cached = train(tiny(smoke_dir, "model.text.freeze=true"), tmp_path / "cached", device="cpu")
        cached_rows = sum(rows)
    finally:
        handle.remove()
    distinct = len({r["expression"].lower() for r in smoke_rows()})
    assert plain.step == cached.step == 6
    assert plain_rows == 2 * 30 + 2 * 6  # two epochs of 30, two validations of 6
    assert cached_rows <= distinct  # validation's expressions are among the training ones
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "cached")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
