"""Tiny configs for tests (in the manner of HF's ``ModelTester``): every preset's "tiny twin" keeps all of the
preset's switches and shrinks every size, so a model builds in well under a second with random weights and no
files (no downloads, no pretrained checkpoints)."""

from __future__ import annotations

import copy
from typing import Any

from lgrnet.config import Config, config_from_dict, load_config

# Text encoder of the tiny twins: a small BERT built from a config (the standard BERT vocabulary size, so real
# tokenizers' ids fit), no files, random weights.
TINY_TEXT: dict[str, Any] = {
    "name": "",
    "pretrained": False,
    "config_overrides": {
        "vocab_size": 30522,
        "hidden_size": 32,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    },
    "freeze": False,
    "save_weights": True,
}


def tiny_twin(preset: str) -> Config:
    """``preset`` with every switch kept and every size shrunk (random weights, no downloads)."""
    data = load_config(preset).to_dict()
    model = data["model"]
    model["text"] = copy.deepcopy(TINY_TEXT)
    visual = model["visual"]
    if visual["kind"] == "swin":
        visual["timm_name"] = "swin_tiny_patch4_window7_224"
        visual["timm_kwargs"] = {"embed_dim": 16, "depths": [1, 1, 2, 1], "num_heads": [1, 2, 2, 4]}
    else:
        visual["timm_name"] = "resnet18"
        visual["timm_kwargs"] = {}
    visual.update({"qda_rank": 4, "qda_reduction": 4, "neck_channels": 32, "drop_path_rate": 0.0, "checkpoint": None})
    model.update({"image_size": 128, "hidden_dim": 32, "num_heads": 4, "ffn_dim": 64, "num_layers": 2})
    data["data"]["augment"]["scales"] = [128, 112, 96]
    data["train"]["precision"] = "off"
    data["name"] = f"{preset}-tiny-twin"
    return config_from_dict(data)


if __name__ == "__main__":  # prints a preset's tiny twin as YAML (benchmarks/gpu_benchmark.sh's smoke mode)
    import sys

    print(tiny_twin(sys.argv[1] if len(sys.argv) > 1 else "lgrnet-swin-s").to_yaml())
