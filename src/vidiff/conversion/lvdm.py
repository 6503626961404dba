"""Whole official checkpoints (VideoCrafter1/2, DynamiCrafter) → a vidiff model folder.

A model folder is diffusers-style: ``model_index.json`` plus one sub-folder per component (JSON config + safetensors).
Every key of the source checkpoint is either consumed by a component converter or deliberately ignored (the reasons are
listed below and by each converter); anything else is an error, as is any missing key or shape mismatch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from ..diffusion.schedule import OFFICIAL_BUFFER_NAMES, NoiseSchedule, schedule_from_official_params
from ..model_folder import FAMILIES, Family, write_index
from .common import ConversionError, load_official_state_dict, strip_prefix
from .component import ConvertedComponent
from .text_encoder import convert_text_encoder
from .unet import convert_unet
from .vae import convert_vae

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model."
IMAGE_ENCODER_PREFIX = "embedder."
PROJECTOR_PREFIX = "image_proj_model."

# The diffusion buffers the official LatentDiffusion registers (recomputed from the schedule config; when the
# checkpoint holds real values they are compared with ours, so a checkpoint trained with another schedule is caught).
SCHEDULE_BUFFERS = (*OFFICIAL_BUFFER_NAMES, "scale_arr")


@dataclass(frozen=True)
class HeadCounts:
    """Attention head layouts, which the weights cannot show; ``None`` means the released models' value."""

    unet_head_channels: int | None = None  # U-Net head width (64)
    text_heads: int | None = None  # text encoder heads (width / 64)
    image_heads: int | None = None  # image encoder heads (16 for ViT-H/14)
    projector_heads: int | None = None  # Resampler heads (attention width / 64)
    projector_dim_head: int | None = None  # Resampler head width (64)


def detect_family(sd: Mapping[str, torch.Tensor]) -> str:
    """Tell the released configuration from the keys (and, where keys are identical, from buffer values)."""
    if not any(k.startswith(UNET_PREFIX) for k in sd):
        raise ConversionError(
            f"not a VideoCrafter/DynamiCrafter checkpoint: no '{UNET_PREFIX}*' keys "
            f"(first keys: {', '.join(list(sd)[:5])})"
        )
    conv_in = sd.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is None:
        raise ConversionError(f"U-Net input conv '{UNET_PREFIX}input_blocks.0.0.weight' is missing (truncated checkpoint?)")
    unet_keys = [k[len(UNET_PREFIX) :] for k in sd if k.startswith(UNET_PREFIX)]
    image = any(k.startswith((IMAGE_ENCODER_PREFIX, PROJECTOR_PREFIX)) for k in sd)
    if conv_in.shape[1] == 8:
        if any(k.startswith("framestride_embed.") or k.endswith("attn2.alpha") for k in unet_keys):
            return "dc_256"
        scale = sd.get("scale_arr")
        if scale is not None and scale.device.type != "meta" and abs(float(scale[-1]) - 0.3) < 1e-4:
            return "dc_1024"
        return "dc_512"
    if image:
        return "vc1_i2v_512"
    if any("relative_position_k" in k for k in unet_keys):
        return "vc1_t2v_1024" if any(k.startswith("fps_embedding.") for k in unet_keys) else "vc1_t2v_512"
    return "vc2_t2v_512"


@dataclass
class ConvertedCheckpoint:
    family: Family
    components: dict[str, ConvertedComponent]
    schedule: NoiseSchedule
    ignored: dict[str, str]  # full source key -> reason


def _component(
    sd: Mapping[str, torch.Tensor], prefix: str, name: str, fn: Callable[..., ConvertedComponent], **kwargs
) -> ConvertedComponent:
    part = strip_prefix(sd, prefix)
    if not part:
        raise ConversionError(f"the checkpoint has no {name} weights ('{prefix}*' keys): truncated or not this family?")
    try:
        return fn(part, **kwargs)
    except ConversionError as err:
        raise ConversionError(f"{name} ({prefix}*): {err}") from None


def _check_schedule_buffers(sd: Mapping[str, torch.Tensor], schedule: NoiseSchedule, family: str) -> set[str]:
    ours = schedule.official_buffers()
    found = {k for k in SCHEDULE_BUFFERS if k in sd}
    for key in sorted(found):
        theirs = sd[key]
        if key not in ours:
            raise ConversionError(f"buffer {key!r} is in the checkpoint but family {family} has no such buffer")
        if tuple(theirs.shape) != tuple(ours[key].shape):
            raise ConversionError(
                f"buffer {key!r}: shape {tuple(theirs.shape)} in the checkpoint, {tuple(ours[key].shape)} for family {family}"
            )
        if theirs.device.type != "meta":
            diff = (theirs.double() - ours[key].double()).abs().max().item()
            if diff > 1e-5 * max(1.0, ours[key].abs().max().item()):
                raise ConversionError(
                    f"buffer {key!r} differs from the {family} noise schedule by {diff:.3g}: "
                    "this checkpoint was trained with another schedule; pass --family if detection was wrong"
                )
    return found


def convert_state_dict(
    sd: Mapping[str, torch.Tensor],
    family: str | None = None,
    heads: HeadCounts | None = None,
) -> ConvertedCheckpoint:
    """Convert a flat official state dict (real or meta tensors) into vidiff components, accounting for every key."""
    heads = heads or HeadCounts()
    name = family or detect_family(sd)
    if name not in FAMILIES:
        raise ConversionError(f"unknown family {name!r}; choose one of {', '.join(FAMILIES)}")
    fam = FAMILIES[name]
    if fam.task != "t2v":
        from .i2v import convert_i2v_components  # image encoder + projector converters

        extra = convert_i2v_components(
            sd,
            fam,
            image_heads=heads.image_heads,
            projector_heads=heads.projector_heads,
            projector_dim_head=heads.projector_dim_head,
        )
    else:
        extra = {}
    unet_overrides = dict(fam.unet)
    if heads.unet_head_channels is not None:
        unet_overrides["num_head_channels"] = heads.unet_head_channels
    components = {
        "unet": _component(sd, UNET_PREFIX, "U-Net", convert_unet, official_kwargs=None, flavour=fam.flavour,
                           **unet_overrides),
        "vae": _component(sd, VAE_PREFIX, "autoencoder", convert_vae),
        "text_encoder": _component(sd, TEXT_PREFIX, "text encoder", convert_text_encoder, num_heads=heads.text_heads),
        **extra,
    }
    schedule = schedule_from_official_params(fam.model_params)
    accounted = _check_schedule_buffers(sd, schedule, name)
    ignored: dict[str, str] = {}
    prefixes = {"unet": UNET_PREFIX, "vae": VAE_PREFIX, "text_encoder": TEXT_PREFIX,
                "image_encoder": IMAGE_ENCODER_PREFIX, "image_projector": PROJECTOR_PREFIX}
    for comp_name, comp in components.items():
        prefix = prefixes[comp_name]
        accounted |= {prefix + k for k in comp.consumed}
        ignored.update({prefix + k: why for k, why in comp.ignored.items()})
    accounted |= set(ignored)
    unknown = sorted(k for k in sd if k not in accounted)
    if unknown:
        head = ", ".join(unknown[:10]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 10 else "")
        raise ConversionError(f"keys that no {name} component uses: {head}")
    return ConvertedCheckpoint(fam, components, schedule, ignored)


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return sd
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()}


def _build(component: str, config: dict) -> torch.nn.Module:
    from ..models.autoencoder import LDMAutoencoderKL
    from ..models.text_encoder import OpenCLIPTextEncoder
    from ..models.unet3d import UNet3DModel

    builders: dict[str, Callable[[dict], torch.nn.Module]] = {
        "unet": UNet3DModel.from_config,
        "vae": LDMAutoencoderKL.from_config,
        "text_encoder": OpenCLIPTextEncoder.from_config,
    }
    if component in ("image_encoder", "image_projector"):
        from .i2v import I2V_BUILDERS

        builders.update(I2V_BUILDERS)
    with torch.device("meta"):
        return builders[component](config)


def save_model_folder(converted: ConvertedCheckpoint, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Write the converted components into ``out_dir`` (an existing, empty, temporary folder)."""
    from ..models.tokenizer import OpenCLIPTokenizer

    out = Path(out_dir)
    modules = {}
    for name, comp in converted.components.items():
        model = _build(name, comp.config)
        model.load_state_dict(_cast(comp.state_dict, dtype), strict=True, assign=True)
        model.save_pretrained(out / name)
        modules[name] = model
    context = converted.components["text_encoder"].config.get("context_length", 77)
    OpenCLIPTokenizer(context_length=context).save_pretrained(out / "tokenizer")
    converted.schedule.save_pretrained(out / "scheduler")
    fam = converted.family
    index = {
        "_class_name": "TextToVideoPipeline" if fam.task == "t2v" else "ImageToVideoPipeline",
        "family": fam.name,
        "flavour": fam.flavour,
        "components": sorted([*converted.components, "tokenizer", "scheduler"]),
        "defaults": fam.defaults,
        "ignored_keys": converted.ignored,
    }
    write_index(out, index, modules)


def convert_checkpoint(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    family: str | None = None,
    *,
    heads: HeadCounts | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> ConvertedCheckpoint:
    """Convert an official checkpoint file into a vidiff model folder, atomically (nothing half-written is left)."""
    from ..utils.io import atomic_directory

    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ConversionError(f"output folder {out_dir} already exists (use --overwrite to replace it)")
    sd = load_official_state_dict(checkpoint)
    converted = convert_state_dict(sd, family, heads)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        save_model_folder(converted, tmp, dtype)
    return converted
