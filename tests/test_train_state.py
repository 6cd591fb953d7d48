"""Training state that a careless change could break without any other test noticing: the learning-rate schedule
across a resume, per-group learning rates, gradient accumulation, periodic epoch checkpoints, resuming past a
truncated checkpoint, and a bad output folder. Tiny Swin twin at 64 px on the real samples of
../shared/data/real_smoke, CPU, a handful of steps each."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from test_engine import (
    assert_bitwise_equal,
    assert_first_moments_agree,
    smoke_rows,
    tiny,
    weights,
    write_smoke_splits,
)
from tiny_configs import TINY_TEXT, tiny_twin

from lgrnet.cli import main
from lgrnet.config import TrainConfig
from lgrnet.engine import checkpoint as ckpt
from lgrnet.engine.optim import build_optimizer
from lgrnet.engine.train import train

# Per-group rates, all different, so that a parameter in the wrong group or a group with the wrong field shows.
GROUP_LRS = {"lr": 1e-3, "lr_visual": 2e-4, "lr_neck_lateral": 3e-5, "lr_text": 4e-6, "lr_qda": 5e-4}
FIELD_OF_GROUP = {"rest": "lr", "visual": "lr_visual", "neck_lateral": "lr_neck_lateral", "text": "lr_text",
                  "qda": "lr_qda"}
NO_DROPOUT_TEXT = json.dumps(dict(TINY_TEXT["config_overrides"], hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The real samples as JSONL splits: train (30), eight (8), four (4), val (7)."""
    rows = smoke_rows()
    return write_smoke_splits(tmp_path_factory.mktemp("state"),
                              {"train": rows, "eight": rows[:8], "four": rows[:4], "val": rows[::4][:7]})


pytestmark = pytest.mark.usefixtures("one_thread")


def logged(run: Path, kind: str = "train") -> list[dict]:
    return [row for row in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if row["kind"] == kind]


def step_factor(s: int, steps_per_epoch: int, drops: list[int], gamma: float, warmup: int) -> float:
    """The reference's step decay (x gamma at each drop epoch) times a linear warm-up over `warmup` steps, for the
    optimizer step with 0-based index s."""
    epoch = s // steps_per_epoch
    warm = (s + 1) / warmup if s < warmup else 1.0
    return gamma ** sum(epoch >= d for d in drops) * warm


def cosine_factor(s: int, total: int, warmup: int, min_ratio: float) -> float:
    if s < warmup:
        return (s + 1) / warmup
    t = min(1.0, (s - warmup) / (total - warmup))
    return min_ratio + (1 - min_ratio) * (1 + math.cos(math.pi * t)) / 2


# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["step", "cosine"])
def test_resume_restores_the_schedule_across_warmup_and_an_lr_drop(data_dir, tmp_path, schedule):
    """4 training samples at batch 2: 2 steps per epoch, 3 epochs. The first run stops after step 1 (max_steps),
    inside the 3-step warm-up; the resumed run crosses the warm-up's end (step 3) and, with the step schedule, the
    drop at epoch 2 (step 4). Every group's logged rate after each step follows the formula above (the cosine
    over all 6 steps, not over the stopped run's 1), and the resumed run ends bitwise equal to one that never
    stopped."""
    sets = ["data.train_split=four", "train.batch_size=2", "train.epochs=3", "train.eval_every=0",
            "train.warmup_steps=3", f"train.lr_schedule={schedule}", "train.lr_drop_epochs=[2]", "train.lr_gamma=0.1",
            "train.min_lr_ratio=0.1", *(f"train.{k}={v}" for k, v in GROUP_LRS.items())]
    straight = train(tiny(data_dir, *sets), tmp_path / "straight", device="cpu")
    first = train(tiny(data_dir, *sets, "train.max_steps=1"), tmp_path / "split", device="cpu")
    assert (straight.step, first.step, first.stopped_early) == (6, 1, "max_steps")
    assert ckpt.load_state(tmp_path / "split" / "checkpoints" / "last")["scheduler"]["last_epoch"] == 1
    train(tiny(data_dir, *sets), tmp_path / "split", resume="auto", device="cpu")

    def factor(s: int) -> float:
        if schedule == "cosine":
            return cosine_factor(s, total=6, warmup=3, min_ratio=0.1)
        return step_factor(s, steps_per_epoch=2, drops=[2], gamma=0.1, warmup=3)

    rows = logged(tmp_path / "split")
    assert [r["step"] for r in rows] == list(range(1, 7))
    for row in rows[1:]:  # the first row is the stopped run's, logged with its own 1-step horizon
        # Logged after optimizer step k (1-based): the rate the next step uses, i.e. the factor at index k.
        for group, field in FIELD_OF_GROUP.items():
            assert row[f"lr_{group}"] == pytest.approx(GROUP_LRS[field] * factor(row["step"]), rel=1e-9), \
                (row["step"], group)
    assert [r["lr_qda"] for r in rows[1:]] == [r["lr_qda"] for r in logged(tmp_path / "straight")[1:]]
    assert_bitwise_equal(weights(tmp_path / "straight"), weights(tmp_path / "split"))


def test_parameter_groups_by_name_get_their_learning_rates():
    """The groups of spec section 10 in this model's names: the text encoder, the visual backbone proper, the
    neck's lateral 1x1 convolutions, the query-dynamic attention of the backbone stages and of the neck's
    down-samplers (QRNet's `qdatt` and `fpn_down`, at the main rate in the reference), and everything else."""
    from lgrnet.model.lgrnet import LGRNet

    config = tiny_twin("lgrnet-swin-s")
    assert config.model.visual.query_modulation
    model = LGRNet(config.model, config.loss)
    by_prefix = [("text.", "text"), ("visual.stage_qda.", "qda"), ("visual.neck.down_qda.", "qda"),
                 ("visual.neck.laterals.", "neck_lateral"), ("visual.backbone.", "visual")]

    def expected_group(name: str) -> str:
        group = next((g for prefix, g in by_prefix if name.startswith(prefix)), "rest")
        assert group != "rest" or not name.startswith("visual."), f"{name}: visual part not in the table"
        return group

    optimizer = build_optimizer(model, TrainConfig(**GROUP_LRS))
    names = {id(p): n for n, p in model.named_parameters()}
    seen: dict[str, set[str]] = {}
    for group in optimizer.param_groups:
        assert group["lr"] == GROUP_LRS[FIELD_OF_GROUP[group["name"]]], group["name"]
        members = {names[id(p)] for p in group["params"]}
        wrong = sorted(n for n in members if expected_group(n) != group["name"])
        assert not wrong, (group["name"], wrong[:5])
        seen[group["name"]] = members
    assert set(seen) == set(FIELD_OF_GROUP)  # every group is present in the twin with QDA on
    all_names = set(names.values())
    assert set().union(*seen.values()) == all_names and sum(map(len, seen.values())) == len(all_names)
    assert "visual.stage_qda.0.channel_gate.mlp.0.V" in seen["qda"]
    assert "visual.neck.down_qda.0.spatial_gate.linear.proj.weight" in seen["qda"]
    assert "visual.neck.laterals.0.weight" in seen["neck_lateral"]
    assert "visual.backbone.patch_embed.proj.weight" in seen["visual"]
    assert "criterion.logit_scale" in seen["rest"] and "visual_proj.weight" in seen["rest"]


def test_gradient_accumulation_of_2_x_8_equals_one_batch_of_16(data_dir, tmp_path):
    """One optimizer step over the same 16 samples (the sampler's first 16 of the epoch's permutation either way).

    Exactness needs a loss that is a plain per-sample mean: the Swin twin normalises with LayerNorm only (per
    sample; asserted below), so there is no BatchNorm whose batch statistics would differ between two halves and
    the whole; dropout is off (the masks of 2 x 8 cannot equal those of 16); and the alignment loss is off, since
    its in-batch negatives couple the samples of a batch. Adam's first step is nearly invariant to the gradient's
    scale (lr x g / |g|), so a missing division by the accumulation steps barely moves the weights: the test also
    compares the optimizer's first moment, which is 0.1 x the gradient after one step."""
    from lgrnet.model.lgrnet import LGRNet

    common = ["train.max_steps=1", "train.eval_every=0", "model.dropout=0.0", "loss.align=false",
              f"model.text.config_overrides={NO_DROPOUT_TEXT}"]
    config = tiny(data_dir, "train.batch_size=16", *common)
    norms = {type(m).__name__ for m in LGRNet(config.model, config.loss).modules() if "Norm" in type(m).__name__}
    assert norms == {"LayerNorm"}
    whole = train(config, tmp_path / "whole", device="cpu")
    parts = train(tiny(data_dir, "train.batch_size=8", "train.accumulation_steps=2", *common), tmp_path / "parts",
                  device="cpu")
    assert whole.step == parts.step == 1
    a, b = weights(tmp_path / "whole"), weights(tmp_path / "parts")
    # The key bias of softmax attention gets an exactly-zero gradient (softmax is shift-invariant per query); Adam
    # turns its round-off, which depends on the summation order, into steps of up to lr: compare it separately.
    diffs, key_bias = {}, 0.0
    for k in a:
        d = (a[k] - b[k]).abs().flatten()
        if k.endswith(("in_proj_bias", "qkv.bias")):
            third = d.numel() // 3
            key_bias = max(key_bias, d[third: 2 * third].max().item())
            d = torch.cat([d[:third], d[2 * third:]])
        diffs[k] = d.max().item()
    assert max(diffs.values()) < 1e-7, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    assert key_bias <= config.train.lr * 1.001
    # Round-off: ~1e-6 relative; a gradient off by the factor 2 of a missing division: 0.5 or 1.
    assert_first_moments_agree(tmp_path / "whole", tmp_path / "parts", 1e-3)


def test_epoch_checkpoints_and_resume_auto_past_a_truncated_checkpoint(data_dir, tmp_path, capsys):
    """4 samples at batch 2 (2 steps per epoch), 3 epochs, train.checkpoint_every=2: one `epoch-NNNN` copy after
    epoch 2, named by its 0-based index as the reference (epoch-0001, step 4), none after epochs 1 and 3. Then the
    newest checkpoint's weights are cut short: `--resume auto` passes over it, says so, and continues from the
    newest intact one; `--resume` naming the cut one is a one-line error."""
    run = tmp_path / "run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny(data_dir, "data.train_split=four", "train.batch_size=2", "train.eval_every=0",
                        "train.epochs=3", "train.checkpoint_every=2").to_yaml())
    args = ["train", "--config", str(cfg), "--output-dir", str(run), "--device", "cpu"]
    assert main(args) == 0
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["epoch-0001", "last"]
    assert (ckpt.read_info(root / "epoch-0001").step, ckpt.read_info(root / "epoch-0001").epoch) == (4, 2)
    assert ckpt.read_info(root / "last").step == 6

    model_file = root / "last" / "model.safetensors"
    model_file.write_bytes(model_file.read_bytes()[:-100])
    capsys.readouterr()
    assert main([*args, "--resume", str(root / "last")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lgrnet train: error: --resume") and "truncated" in err

    assert main([*args, "--resume", "auto"]) == 0
    out = capsys.readouterr().out
    assert f"passed over checkpoint {root / 'last'}: model.safetensors is truncated" in out
    assert f"resumed from {root / 'epoch-0001'}" in out
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 6
    assert ckpt.read_info(root / "last").step == 6 and ckpt.model_file_problem(model_file) is None


def test_a_bad_output_folder_fails_before_data_loading_and_model_building(data_dir, tmp_path, monkeypatch, capsys):
    import lgrnet.data.readers
    import lgrnet.engine.train

    def must_not_run(*args, **kwargs):
        raise AssertionError("reached data loading or model building")

    monkeypatch.setattr(lgrnet.data.readers, "load_records", must_not_run)
    monkeypatch.setattr(lgrnet.engine.train, "_model_parts", must_not_run)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(tiny(data_dir).to_yaml())
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = [(a_file / "run", "cannot create it"), (a_file, "a file of that name is in the way")]
    if Path("/proc/self").is_dir():  # an existing folder nobody may write into, not even root
        cases.append((Path("/proc"), "not writable"))
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        cases += [(locked, "not writable"), (locked / "run", "cannot create it")]
    for output_dir, reason in cases:
        code = main(["train", "--config", str(cfg), "--output-dir", str(output_dir), "--device", "cpu"])
        err = capsys.readouterr().err.strip()
        assert code == 2, err
        assert err == err.splitlines()[0] and err.startswith(f"lgrnet train: error: output folder {output_dir}: ")
        assert reason in err
    assert not list(Path("/proc").glob(".write-test-*"))
