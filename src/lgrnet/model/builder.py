"""The model builder: construct an :class:`~lgrnet.model.lgrnet.LGRNet`, then load its pretrained parts.

``LGRNet(config)`` builds modules only and reads no weights. :func:`build_model` (in the manner of timm's
``build_model_with_cfg``) is how a run starts from the configured pretrained sources:

* ``model.text.pretrained``: the encoder's weights from ``model.text.name`` (the offline MiniLM, a local folder or
  a hub id), copied into the built encoder (same modules, same state-dict keys);
* ``model.visual.checkpoint``: a detector checkpoint (mmdet Swin or DETR ResNet) mapped onto the visual extractor
  (:mod:`lgrnet.model.checkpoints`); what it loaded is in ``model.visual.checkpoint_report``.

A trained model folder needs neither: :func:`lgrnet.model.io.load_model` builds with the plain constructor and
loads the folder's weights.
"""

from __future__ import annotations

import logging

from lgrnet.config import LossConfig, ModelConfig
from lgrnet.model.checkpoints import load_visual_checkpoint
from lgrnet.model.lgrnet import LGRNet
from lgrnet.model.text import load_pretrained_text, read_pretrained_text_encoder
from lgrnet.model.visual import VisualExtractor

log = logging.getLogger(__name__)


def build_model(config: ModelConfig, loss: LossConfig | None = None, *, pretrained: bool = True) -> LGRNet:
    """``LGRNet(config, loss)`` with the pretrained text encoder and visual checkpoint the config names loaded
    (``pretrained=False``: random weights everywhere, no file read).

    Random numbers are drawn in the order ``LGRNet`` builds its parts, text encoder first: the pretrained encoder
    is read before the model is built (reading draws some for any weights its checkpoint lacks), and the built
    encoder's placeholder weights are drawn from a forked generator, so they shift no other part's init.
    """
    text_encoder = read_pretrained_text_encoder(config.text) if pretrained and config.text.pretrained else None
    model = LGRNet(config, loss)
    if text_encoder is not None:
        load_pretrained_text(model.text, config.text, text_encoder)
    if pretrained and config.visual.checkpoint:
        load_visual_pretrained(model.visual)
    return model


def load_visual_pretrained(visual: VisualExtractor) -> None:
    """Load ``visual.cfg.checkpoint`` into the visual extractor and keep the report on it
    (``visual.checkpoint_report``; logged: info when every expected tensor loaded, a warning otherwise)."""
    report = load_visual_checkpoint(visual, visual.cfg.checkpoint)
    visual.checkpoint_report = report
    (log.info if report.ok else log.warning)(report.summary())
