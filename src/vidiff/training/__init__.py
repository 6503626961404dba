"""Training engine: ``vidiff train CONFIG.yaml [key=value ...]`` (see docs/training.md).

``load_config`` reads a YAML config with overrides; ``train`` runs or resumes it on one or many processes.
"""

from vidiff.training.config import ConfigError, RunConfig, load_config
from vidiff.training.trainer import TrainResult, train

__all__ = ["ConfigError", "RunConfig", "TrainResult", "load_config", "train"]
