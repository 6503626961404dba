"""Training engine: ``vidiff train CONFIG.yaml [key=value ...]`` (see docs/training.md).

``load_config`` reads a YAML config with overrides; ``train`` runs or resumes it on one or many processes. The trainer
(and torch) are imported on first use, so reading a config stays fast.
"""

from vidiff.training.config import ConfigError, RunConfig, load_config

__all__ = ["ConfigError", "RunConfig", "TrainResult", "load_config", "train"]


def __getattr__(name: str):
    if name in ("TrainResult", "train"):
        from vidiff.training import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'vidiff.training' has no attribute {name!r}")
