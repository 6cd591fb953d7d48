"""LGR-NET: Language Guided Reasoning Network for referring expression comprehension."""

from lgrnet.config import Config, ConfigError, load_config

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "LGRNet", "Predictor", "Processor", "build_model", "load_config", "__version__"]


def __getattr__(name: str):
    # Lazy: `import lgrnet` (and the CLI's --help) must not pull in torch/transformers.
    if name == "LGRNet":
        from lgrnet.model.lgrnet import LGRNet

        return LGRNet
    if name == "Predictor":
        from lgrnet.inference.predictor import Predictor

        return Predictor
    if name == "build_model":
        from lgrnet.model.builder import build_model

        return build_model
    if name == "Processor":
        from lgrnet.inference.processor import Processor

        return Processor
    raise AttributeError(f"module 'lgrnet' has no attribute {name!r}")
