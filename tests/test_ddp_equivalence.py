"""DDP at W processes x batch B trains like one process at batch W x B, for every preset family.

BatchNorm is what could make them differ: a trainable BN normalises each process's half-batch with that half's
statistics. Pretrained ResNets freeze it (``model.visual.frozen_bn``, on in ``lgrnet-r101``); where it trains
(``lgrnet-tiny`` / ``lgrnet-small``) DDP synchronises it. The alignment loss must see the global batch too
(``loss.align_gather``, set in these runs; only ``lgrnet-paper-swin-s`` gathers by default).

The end-to-end test trains the tiny twin of each family 3 steps in one process and, in one ``torchrun`` launch of
2 gloo processes (this file run as a script), the same configs at half the batch; the logged losses and the
weights and buffers agree to 1e-5 relative (weights trained with SGD there, see :func:`sgd`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_configs import TINY_TEXT, tiny_twin
from torch import nn

from lgrnet.config import Config, load_config
from lgrnet.engine.optim import build_optimizer
from lgrnet.model.visual import (
    CrossProcessBatchNorm,
    FrozenBatchNorm2d,
    freeze_batchnorm_,
    synchronise_batchnorm,
)

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]


# One preset per family: reference Swin, the paper's Swin, the pretrained ResNet, the from-scratch ResNet (tiny and
# small share their extractors; their twins are the same model).
FAMILIES = ["lgrnet-swin-s", "lgrnet-paper-swin-s", "lgrnet-r101", "lgrnet-tiny"]
STEPS = 3
LR = 1e-2


# ---------------------------------------------------------------------------------------------------------------
# BatchNorm layers on their own


def _bn_model(frozen: bool) -> nn.Module:
    from lgrnet.model.lgrnet import LGRNet

    config = tiny_twin("lgrnet-r101")
    model_config = dataclasses.replace(config.model, image_size=64,
                                       visual=dataclasses.replace(config.model.visual, frozen_bn=frozen))
    torch.manual_seed(0)
    return LGRNet(model_config, config.loss)


def test_presets_choose_frozen_bn_for_pretrained_resnets_only():
    assert load_config("lgrnet-r101").model.visual.frozen_bn
    assert tiny_twin("lgrnet-r101").model.visual.frozen_bn
    for preset in ("lgrnet-swin-s", "lgrnet-paper-swin-s", "lgrnet-tiny", "lgrnet-small"):
        assert not load_config(preset).model.visual.frozen_bn
    assert [p for p in FAMILIES if load_config(p).loss.align_gather] == ["lgrnet-paper-swin-s"]


def test_frozen_bn_gives_the_same_eval_outputs_and_never_changes():
    """Same state, eval mode: bit-identical outputs. Training: the statistics and affine stay, no BN parameter."""
    from model_helpers import make_inputs

    plain, frozen = _bn_model(False), _bn_model(True)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in plain.modules()) == 20  # resnet18: stem, 8 blocks x 2, 3 downsamples
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in frozen.modules()) == 20
    inputs = make_inputs(frozen.config, batch=2)
    plain.train()(**inputs)  # running statistics away from (0, 1), on every layer
    assert plain.state_dict().keys() == frozen.state_dict().keys()
    frozen.load_state_dict(plain.state_dict())
    plain.eval(), frozen.eval()
    with torch.no_grad():
        a, b = plain(**inputs), frozen(**inputs)
    assert torch.equal(a.pred_boxes, b.pred_boxes) and torch.equal(a.loss, b.loss)

    before = {k: v.clone() for k, v in frozen.state_dict().items() if ".bn" in k or "downsample.1" in k}
    frozen.train()
    frozen(**inputs).loss.backward()
    after = frozen.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    bn_params = [n for n, _ in frozen.named_parameters() if ".bn" in n or "downsample.1" in n]
    assert bn_params == []
    # In training mode it still normalises with the running statistics: x -> (x - mean) / sqrt(var + eps) * w + b.
    layer = FrozenBatchNorm2d(3)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor([1.0, -2.0, 0.5]))
        layer.running_var.copy_(torch.tensor([4.0, 0.25, 1.0]))
        layer.weight.copy_(torch.tensor([2.0, 1.0, -1.0]))
        layer.bias.copy_(torch.tensor([0.0, 1.0, 3.0]))
    x = torch.ones(1, 3, 1, 1)
    expected = torch.tensor([0.0, 3.0 / (0.25 + 1e-5) ** 0.5 + 1.0, -0.5 / (1.0 + 1e-5) ** 0.5 + 3.0])
    torch.testing.assert_close(layer.train()(x).flatten(), expected)


def test_freezing_refuses_other_batchnorm_classes():
    from lgrnet.config import ConfigError

    assert freeze_batchnorm_(nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))) == 1
    with pytest.raises(ConfigError, match="model.visual.frozen_bn: cannot freeze BatchNorm1d"):
        freeze_batchnorm_(nn.Sequential(nn.BatchNorm1d(3)))


def test_synchronised_bn_shares_parameters_and_keeps_frozen_layers():
    frozen = FrozenBatchNorm2d(4)
    model = nn.Sequential(nn.BatchNorm2d(4), nn.Sequential(nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)), frozen)
    weight, running_var = model[1][1].weight, model[1][1].running_var
    assert synchronise_batchnorm(model) is model
    assert isinstance(model[0], CrossProcessBatchNorm) and isinstance(model[1][1], CrossProcessBatchNorm)
    assert model[1][1].weight is weight and model[1][1].running_var is running_var and model[2] is frozen
    # Without a process group it is BatchNorm2d's computation, bit for bit.
    reference = nn.BatchNorm2d(4)
    x = torch.randn(3, 4, 5, 5)
    assert torch.equal(model[0](x), reference(x))
    assert torch.equal(model[0].running_var, reference.running_var)


# ---------------------------------------------------------------------------------------------------------------
# End to end: torchrun (gloo, 2 x batch 2) against one process at batch 4


def _dataset(folder: Path) -> Path:
    """12 small textured JPEGs with a box each: 3 steps of a global batch of 4."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    with (folder / "train.jsonl").open("w") as f:
        for i in range(12):
            w, h = (80, 60) if i % 2 else (60, 72)
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
            box = [5 + i, 8, 40 + i, 50]
            f.write(json.dumps({"image": str(folder / f"{i}.jpg"), "expression": f"the thing number {i} on the left",
                                "box": box, "id": str(i)}) + "\n")
    return folder


def _config(preset: str, data: Path, batch_size: int) -> Config:
    # No dropout anywhere (the BERT encoder has its own): the masks of 2 ranks cannot equal those of 1.
    text = dict(TINY_TEXT["config_overrides"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    twin = tiny_twin(preset)
    # A ResNet-18 of a quarter the width (lgrnet-tiny's own slimming) keeps the ResNet runs as quick as the Swin ones.
    slim = ['model.visual.timm_kwargs={"channels": [16, 32, 64, 128], "stem_width": 16}'] \
        if twin.model.visual.kind == "resnet" else []
    return load_config(twin, [*slim,
        "data.format=jsonl", f"data.root={data}", "data.num_workers=0", "data.augment.scales=[64,56,48]",
        "model.image_size=64", "model.text.max_length=12", "model.dropout=0.0",
        f"model.text.config_overrides={json.dumps(text)}", "loss.align_gather=true",
        "train.deterministic=true", "train.precision=off", f"train.batch_size={batch_size}",
        f"train.max_steps={STEPS}", "train.epochs=1", "train.eval_every=0", "train.checkpoint_every=0",
        "train.log_every=1", "train.warmup_steps=0",
        *[f"train.{name}={LR}" for name in ("lr", "lr_visual", "lr_text", "lr_qda", "lr_neck_lateral")],
    ])


def _losses(run: Path) -> list[float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["kind"] == "train"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "checkpoints" / "last" / "model.safetensors"))


def sgd(model: nn.Module, train_config) -> torch.optim.Optimizer:
    """Plain SGD over the trainer's parameter groups (same parameters, rates and names as its AdamW).

    AdamW divides each gradient by its own running size, so an element whose gradient is round-off (a key bias of
    softmax attention, which is exactly zero in exact arithmetic, or any element near zero) moves by +-lr whatever
    the round-off was, and the order of summation (one process or two) decides the sign: measured, single elements
    1.2e-3 apart at lr 1e-3 while the rest agree to 1e-6. With SGD a weight's change is its gradient times lr, so
    the weights compare the gradients themselves.
    """
    adamw = build_optimizer(model, train_config)
    return torch.optim.SGD([{"params": g["params"], "lr": g["lr"], "name": g["name"]} for g in adamw.param_groups],
                           lr=LR, momentum=0.0)


def _worker(configs: list[str], outputs: list[str]) -> None:
    """Runs under torchrun: train each config in turn in the one process group."""
    from lgrnet.engine import train as train_module
    from lgrnet.engine.distributed import cleanup_distributed
    from lgrnet.engine.train import Trainer

    torch.set_num_threads(1)
    train_module.build_optimizer = sgd
    finished = False
    try:
        for config, output in zip(configs, outputs):
            Trainer(load_config(config), output, device="cpu").run()
        finished = True
    finally:
        cleanup_distributed(synchronize=finished)


@pytest.mark.slow  # one torchrun launch of 2 processes training 4 models: about a minute on 2 cores
def test_two_processes_train_like_one_for_every_preset_family(tmp_path, monkeypatch):
    from lgrnet.engine import train as train_module
    from lgrnet.engine.train import train

    monkeypatch.setattr(train_module, "build_optimizer", sgd)

    data = _dataset(tmp_path / "data")
    configs, ddp_runs = [], []
    for preset in FAMILIES:
        path = tmp_path / f"{preset}.yaml"
        path.write_text(_config(preset, data, 2).to_yaml())
        configs.append(str(path))
        ddp_runs.append(str(tmp_path / "ddp" / preset))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    launch = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__,
         json.dumps(configs), json.dumps(ddp_runs)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for preset in FAMILIES:  # the single-process runs while torchrun starts its two
            train(_config(preset, data, 4), tmp_path / "single" / preset, device="cpu")
        log, _ = launch.communicate(timeout=600)
    finally:
        launch.kill()
    assert launch.returncode == 0, log[-4000:]

    report = {}
    for preset, ddp_run in zip(FAMILIES, ddp_runs):
        single, ddp = tmp_path / "single" / preset, Path(ddp_run)
        ls, ld = _losses(single), _losses(ddp)
        assert len(ls) == len(ld) == STEPS
        loss_rel = max(abs(a - b) / abs(a) for a, b in zip(ls, ld))
        a, b = _weights(single), _weights(ddp)
        assert a.keys() == b.keys()
        worst = 0.0
        for name in a:
            x, y = a[name].double(), b[name].double()
            # Relative to the tensor's size (max |w|), with a floor for tensors that are (near) zero.
            rel = ((x - y).abs().max() / x.abs().max().clamp(min=1e-2)).item() if x.numel() else 0.0
            worst = max(worst, rel)
        report[preset] = (loss_rel, worst)
    print("DDP vs one process (max relative difference of losses, of weights and buffers):", report)
    for preset, (loss_rel, worst) in report.items():
        assert loss_rel < 1e-5 and worst < 1e-5, (preset, report[preset])


if __name__ == "__main__":  # under torchrun, from the test above
    _worker(json.loads(sys.argv[1]), json.loads(sys.argv[2]))
