"""BatchNorm for DDP: frozen in pretrained ResNets, synchronised across processes where it trains.

A trainable BN normalises each process's part of the batch with that part's statistics, so W processes at batch B
would not train like one process at W x B. Pretrained ResNets freeze it (``model.visual.frozen_bn``, on in
``lgrnet-r101``); where it trains (``lgrnet-tiny`` / ``lgrnet-small``) :func:`synchronise_batchnorm` makes it use
the global batch's statistics. The alignment loss must see the global batch too (``loss.align_gather``; only
``lgrnet-paper-swin-s`` gathers by default).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lgrnet.config import load_config, tiny_twin
from lgrnet.model.visual import (
    CrossProcessBatchNorm,
    FrozenBatchNorm2d,
    freeze_batchnorm_,
    synchronise_batchnorm,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# One preset per family: reference Swin, the paper's Swin, the pretrained ResNet, the from-scratch ResNet (tiny and
# small share their extractors; their twins are the same model).
FAMILIES = ["lgrnet-swin-s", "lgrnet-paper-swin-s", "lgrnet-r101", "lgrnet-tiny"]


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
