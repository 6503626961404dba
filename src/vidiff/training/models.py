"""Building the models of a training run from its config, and the module the optimiser sees.

Components come from a saved folder (``pretrained``), from constructor arguments (``config``: the class is called
directly, so a misspelt argument is an error rather than silently ignored), or from ``model.init_from``, a vidiff model
folder with ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/`` (``vidiff convert`` output or the
export of an earlier stage).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidiff.diffusion.schedule import NoiseSchedule
from vidiff.models.tokenizer import OpenCLIPTokenizer
from vidiff.training.config import ComponentConfig, ConfigError, ModelConfig

__all__ = ["DenoiserBundle", "TextToVideoComponents", "build_component", "build_t2v_components"]

DEFAULT_CLASSES = {
    "unet": "vidiff.models.unet3d:UNet3DModel",
    "vae": "vidiff.models.autoencoder:LDMAutoencoderKL",
    "text_encoder": "vidiff.models.text_encoder:OpenCLIPTextEncoder",
}


def import_class(path: str) -> type:
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigError(f"cannot import {module_name!r} (from class_path {path!r}): {err}") from err
    cls = getattr(module, attr, None)
    if not isinstance(cls, type):
        raise ConfigError(f"class_path {path!r}: {module_name} has no class {attr!r}")
    return cls


def build_component(name: str, comp: ComponentConfig, init_from: str | None) -> nn.Module:
    """One model component, from ``comp`` or else from ``init_from/<name>``."""
    cls = import_class(comp.class_path or DEFAULT_CLASSES[name])
    where = f"model.{name}"
    if comp.config is not None:
        try:
            return cls(**comp.config)
        except TypeError as err:
            raise ConfigError(f"{where}.config does not fit {cls.__name__}: {err}") from err
        except ValueError as err:
            raise ConfigError(f"{where}.config: {err}") from err
    folder = comp.pretrained
    if folder is None:
        if init_from is None:
            raise ConfigError(f"{where}: set 'pretrained' or 'config', or model.init_from")
        folder = str(Path(init_from) / name)
    if not Path(folder).is_dir():
        raise ConfigError(f"{where}: saved model folder {folder} not found")
    if not hasattr(cls, "from_pretrained"):
        raise ConfigError(f"{where}: {cls.__name__} has no from_pretrained, so 'pretrained' cannot be used")
    return cls.from_pretrained(folder)


@dataclass
class TextToVideoComponents:
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: OpenCLIPTokenizer
    schedule: NoiseSchedule
    defaults: dict = field(default_factory=dict)


def _init_index(init_from: str | None) -> dict[str, Any]:
    if init_from is None:
        return {}
    index = Path(init_from) / "model_index.json"
    if not Path(init_from).is_dir():
        raise ConfigError(f"model.init_from: {init_from} is not a folder")
    if not index.is_file():
        raise ConfigError(f"model.init_from: {init_from} has no model_index.json (not a vidiff model folder)")
    return json.loads(index.read_text())


def build_t2v_components(cfg: ModelConfig) -> TextToVideoComponents:
    """U-Net, autoencoder, text encoder, tokenizer and schedule, checked against each other."""
    from vidiff.models.autoencoder import latent_channels_of

    index = _init_index(cfg.init_from)
    unet = build_component("unet", cfg.unet, cfg.init_from)
    vae = build_component("vae", cfg.vae, cfg.init_from)
    text_encoder = build_component("text_encoder", cfg.text_encoder, cfg.init_from)

    text_len = text_encoder.config["context_length"] if isinstance(text_encoder.config, dict) else 77
    tok_dir = Path(cfg.init_from) / "tokenizer" if cfg.init_from else None
    if cfg.tokenizer_context_length is not None:
        tokenizer = OpenCLIPTokenizer(context_length=cfg.tokenizer_context_length)
    elif tok_dir is not None and tok_dir.is_dir():
        tokenizer = OpenCLIPTokenizer.from_pretrained(tok_dir)
    else:
        tokenizer = OpenCLIPTokenizer(context_length=text_len)
    if tokenizer.context_length > text_len:
        raise ConfigError(
            f"the tokenizer makes {tokenizer.context_length} tokens but the text encoder holds only {text_len}"
        )

    if cfg.schedule is not None:
        try:
            schedule = NoiseSchedule.from_dict(cfg.schedule)
        except (TypeError, ValueError) as err:
            raise ConfigError(f"model.schedule: {err}") from err
    elif cfg.init_from and (Path(cfg.init_from) / "scheduler").is_dir():
        schedule = NoiseSchedule.from_pretrained(Path(cfg.init_from) / "scheduler")
    else:
        schedule = NoiseSchedule()

    latent = latent_channels_of(vae)
    uc = unet.config
    if uc.out_channels != latent or uc.in_channels != latent:
        raise ConfigError(
            f"the U-Net maps {uc.in_channels} -> {uc.out_channels} channels but the autoencoder's latent has {latent} "
            "(a text-to-video U-Net needs in_channels = out_channels = latent channels)"
        )
    width = text_encoder.config["width"] if isinstance(text_encoder.config, dict) else None
    if width is not None and uc.context_dim != width:
        raise ConfigError(f"the U-Net's context_dim is {uc.context_dim} but the text encoder is {width} wide")
    defaults = {**index.get("defaults", {}), **cfg.defaults}
    return TextToVideoComponents(unet, vae, text_encoder, tokenizer, schedule, defaults)


class DenoiserBundle(nn.Module):
    """What the optimiser trains: the U-Net, plus the text encoder when that is trained too.

    ``forward`` takes either ``tokens`` (encoded here, so gradients reach a trainable text encoder) or a ready
    ``context``; it returns the U-Net output. Parameter names are ``unet.…`` and ``text_encoder.…``.
    """

    def __init__(self, unet: nn.Module, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        fps: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if tokens is not None:
            if self.text_encoder is None:
                raise ValueError("tokens were given but this bundle has no text encoder; pass context instead")
            context = self.text_encoder(tokens)
        return self.unet(sample.contiguous(), timestep, context, fps)  # see losses.encode_latents on memory format
