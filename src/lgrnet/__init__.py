"""LGR-NET: Language Guided Reasoning Network for referring expression comprehension."""

from lgrnet.config import Config, ConfigError, load_config, tiny_twin

__version__ = "0.1.0"

__all__ = ["Config", "ConfigError", "load_config", "tiny_twin", "__version__"]
