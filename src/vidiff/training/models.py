"""Building the models of a training run from its config, and the module the optimiser sees.

Components come from a saved folder (``pretrained``), from constructor arguments (``config``: the class is called
directly, so a misspelt argument is an error rather than silently ignored), or from ``model.init_from``, a vidiff model
folder with ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/`` and ``scheduler/`` (``vidiff convert`` output or the
export of an earlier stage).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vidiff.diffusion.schedule import NoiseSchedule
from vidiff.model_folder import read_index
from vidiff.models.tokenizer import OpenCLIPTokenizer
from vidiff.training.config import ComponentConfig, ConfigError, ModelConfig

__all__ = ["DenoiserBundle", "VideoComponents", "build_component", "build_video_components"]

DEFAULT_CLASSES = {
    "unet": "vidiff.models.unet3d:UNet3DModel",
    "vae": "vidiff.models.autoencoder:LDMAutoencoderKL",
    "text_encoder": "vidiff.models.text_encoder:OpenCLIPTextEncoder",
    "image_encoder": "vidiff.models.image_encoder:OpenCLIPImageEncoder",
    "image_projector": "vidiff.models.resampler:Resampler",
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


def build_component(name: str, comp: ComponentConfig, init_from: str | None,
                    reports: dict[str, Any] | None = None) -> nn.Module:
    """One model component, from ``comp`` or else from ``init_from/<name>``.

    With both a ``config`` and an ``init_from`` folder that holds this component, the component is built from the
    config and *inflated* from the folder's weights (:func:`vidiff.models.inflation.inflate_from`): matching tensors
    load, new temporal / fps / image-stream layers start as identities; the report goes to ``reports[name]``.
    """
    cls = import_class(comp.class_path or DEFAULT_CLASSES[name])
    where = f"model.{name}"
    if comp.config is not None:
        try:
            module = cls(**comp.config)
        except TypeError as err:
            raise ConfigError(f"{where}.config does not fit {cls.__name__}: {err}") from err
        except ValueError as err:
            raise ConfigError(f"{where}.config: {err}") from err
        source = Path(init_from) / name if init_from is not None else None
        if source is not None and source.is_dir() and hasattr(cls, "from_pretrained"):
            from vidiff.models.inflation import inflate_from

            try:
                report = inflate_from(module, cls.from_pretrained(source))
            except ValueError as err:
                raise ConfigError(f"{where}: inflating from {source}: {err}") from err
            if reports is not None:
                reports[name] = report
        return module
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
class VideoComponents:
    unet: nn.Module
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: OpenCLIPTokenizer
    schedule: NoiseSchedule
    defaults: dict = field(default_factory=dict)
    image_encoder: nn.Module | None = None  # image-to-video only
    image_projector: nn.Module | None = None
    inflation: dict[str, Any] = field(default_factory=dict)  # component -> InflationReport (config + init_from)


def _init_index(init_from: str | None) -> dict[str, Any]:
    if init_from is None:
        return {}
    if not Path(init_from).is_dir():
        raise ConfigError(f"model.init_from: {init_from} is not a folder")
    return read_index(init_from, ConfigError)


def build_video_components(cfg: ModelConfig, task: str = "t2v") -> VideoComponents:
    """U-Net, autoencoder, text encoder, tokenizer, schedule (+ image encoder and projector for i2v), checked against
    each other."""
    from vidiff.models.autoencoder import latent_channels_of

    index = _init_index(cfg.init_from)
    reports: dict[str, Any] = {}
    unet = build_component("unet", cfg.unet, cfg.init_from, reports)
    vae = build_component("vae", cfg.vae, cfg.init_from, reports)
    text_encoder = build_component("text_encoder", cfg.text_encoder, cfg.init_from, reports)

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
    want_in = 2 * latent if (task == "i2v" and cfg.i2v_flavour == "dc") or task == "ref_t2v" else latent
    if task == "ref_t2v" and cfg.lowres_factor is not None:
        want_in = 3 * latent  # noisy latent, reference on frame 0, the upsampled lower-stage latent
    if task == "temporal_refiner":
        want_in = 2 * latent + 1  # noisy latent, keyframes and warps, the keyframe mask
    if uc.out_channels != latent or uc.in_channels != want_in:
        raise ConfigError(
            f"the U-Net maps {uc.in_channels} -> {uc.out_channels} channels but the autoencoder's latent has {latent}: "
            f"a {task} U-Net{' (its condition concatenated on channels)' if want_in != latent else ''} needs "
            f"in_channels = {want_in} "
            f"and out_channels = {latent}"
        )
    width = text_encoder.config["width"] if isinstance(text_encoder.config, dict) else None
    if width is not None and uc.context_dim != width:
        raise ConfigError(f"the U-Net's context_dim is {uc.context_dim} but the text encoder is {width} wide")
    defaults = {**index.get("defaults", {}), **cfg.defaults}
    comps = VideoComponents(unet, vae, text_encoder, tokenizer, schedule, defaults, inflation=reports)
    if task == "i2v":
        comps.image_encoder = build_component("image_encoder", cfg.image_encoder, cfg.init_from, reports)
        comps.image_projector = build_component("image_projector", cfg.image_projector, cfg.init_from, reports)
        _check_i2v(comps, cfg)
    elif task == "univid":
        comps.image_encoder = build_component("image_encoder", cfg.image_encoder, cfg.init_from, reports)
        _check_univid(comps)
    return comps


def _check_univid(comps: VideoComponents) -> None:
    """UniVid's image stream reads every patch token of the image encoder directly (no projector)."""
    uc = comps.unet.config
    if not uc.image_cross_attention:
        raise ConfigError("a UniVid U-Net needs its image stream: set image_cross_attention: true in model.unet")
    width = comps.image_encoder.config["width"]
    wanted = uc.get("image_context_dim") or uc.context_dim
    if width != wanted:
        raise ConfigError(f"the image encoder gives {width}-wide tokens but the U-Net's image stream takes {wanted} "
                          "(set model.unet image_context_dim)")


def _check_i2v(comps: VideoComponents, cfg: ModelConfig) -> None:
    uc, proj = comps.unet.config, comps.image_projector.config
    problems = []
    if not uc.image_cross_attention:
        problems.append("the U-Net has no image cross-attention (image_cross_attention: true)")
    if proj["embedding_dim"] != comps.image_encoder.config["width"]:
        problems.append(f"the projector takes {proj['embedding_dim']}-wide tokens, the image encoder gives "
                        f"{comps.image_encoder.config['width']}")
    if proj["output_dim"] != uc.context_dim:
        problems.append(f"the projector gives {proj['output_dim']}-wide tokens, the U-Net context is {uc.context_dim}")
    if proj["num_queries"] != uc.image_tokens_per_frame:
        problems.append(f"the projector makes {proj['num_queries']} tokens per image, the U-Net expects "
                        f"image_tokens_per_frame = {uc.image_tokens_per_frame}")
    if (proj["video_length"] is not None) != bool(uc.per_frame_image_tokens):
        problems.append("per-frame image tokens must be on in both the projector (video_length) and the U-Net "
                        "(per_frame_image_tokens), or off in both")
    if comps.tokenizer.context_length != uc.text_context_len:
        problems.append(f"the U-Net splits text from image tokens after text_context_len = {uc.text_context_len}, "
                        f"but the tokenizer makes {comps.tokenizer.context_length} text tokens")
    if problems:
        raise ConfigError("image-to-video components do not fit: " + "; ".join(problems))


class DenoiserBundle(nn.Module):
    """What the optimiser trains: the U-Net, plus the text encoder, image encoder and image projector when those train.

    ``forward`` takes either ``tokens`` (encoded here, so gradients reach a trainable text encoder) or a ready text
    ``context``; for image-to-video also either ``clip_images`` (pixels in [-1, 1], encoded here by a trainable image
    encoder) or ``clip_tokens`` (a frozen image encoder's output), projected here into the U-Net's ``image_context`` (as
    they are without a projector: UniVid), ``text_scale``/``image_scale`` (λ_t, λ_v per row) and ``c_concat`` (DynamiCrafter: concatenated to the noisy latent on channels). It returns the U-Net output. Parameter
    names are ``unet.…``, ``text_encoder.…``, ``image_encoder.…`` and ``image_projector.…``.
    """

    def __init__(
        self,
        unet: nn.Module,
        text_encoder: nn.Module | None = None,
        image_projector: nn.Module | None = None,
        image_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder
        self.image_projector = image_projector
        self.image_encoder = image_encoder

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        fps: torch.Tensor | None = None,
        tokens: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        clip_tokens: torch.Tensor | None = None,
        c_concat: torch.Tensor | None = None,
        clip_images: torch.Tensor | None = None,
        text_scale: float | torch.Tensor = 1.0,
        image_scale: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        if clip_images is not None:
            if self.image_encoder is None:
                raise ValueError("clip_images were given but this bundle has no (trainable) image encoder")
            if clip_tokens is not None:
                raise ValueError("give clip_images or clip_tokens, not both")
            clip_tokens = self.image_encoder(clip_images)
        if tokens is not None:
            if self.text_encoder is None:
                raise ValueError("tokens were given but this bundle has no text encoder; pass context instead")
            context = self.text_encoder(tokens)
        image_context = None
        if clip_tokens is not None:  # no projector (UniVid): the image stream reads the encoder's tokens directly
            image_context = clip_tokens if self.image_projector is None else \
                self.image_projector.image_context(clip_tokens, sample.shape[2])
        # contiguous: see losses.encode_latents on memory formats
        return self.unet(sample.contiguous(), timestep, context, image_context=image_context, concat=c_concat, fps=fps,
                         text_scale=text_scale, image_scale=image_scale)
