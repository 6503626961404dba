"""Official LVDM U-Net state dicts (VideoCrafter / DynamiCrafter) → :class:`vidiff.models.unet3d.UNet3DModel`."""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from ..models.unet3d import UNet3DModel
from .common import ConversionError, check_shapes
from .component import ConvertedComponent

# Official key fragments renamed in vidiff (the misspelling, the one-element init_attn container, DC-256's fs MLP).
_RENAMES = (("temopral_conv.", "temporal_conv."), ("init_attn.0.", "init_attn."), ("framestride_embed.", "fps_embedding."))

_COMMON_KWARGS = (
    "in_channels",
    "out_channels",
    "model_channels",
    "attention_resolutions",
    "num_res_blocks",
    "channel_mult",
    "dropout",
    "num_head_channels",
    "transformer_depth",
    "context_dim",
    "use_linear",
    "temporal_conv",
    "temporal_attention",
    "use_causal_attention",
    "addition_attention",
    "use_relative_position",
    "temporal_length",
)
# Official options that change the architecture in ways no released checkpoint uses.
_UNSUPPORTED = {
    "use_scale_shift_norm": True,
    "resblock_updown": True,
    "tempspatial_aware": True,
    "temporal_selfatt_only": False,
    "dims": 3,
}


def unet_config_from_official(kwargs: Mapping, flavour: str) -> dict:
    """Map the official ``UNetModel`` constructor kwargs (VC or DC flavour) to a :class:`UNet3DModel` config."""
    if flavour not in ("vc", "dc"):
        raise ValueError(f"flavour must be 'vc' (VideoCrafter) or 'dc' (DynamiCrafter), got {flavour!r}")
    for key, bad in _UNSUPPORTED.items():
        if kwargs.get(key) == bad:
            raise ConversionError(f"official U-Net option {key}={bad!r} is not used by any released model and is not supported")
    if kwargs.get("num_head_channels", 64) == -1:
        raise ConversionError("num_head_channels=-1 (fixed head count) is not supported; released models use 64")
    config = {k: kwargs[k] for k in _COMMON_KWARGS if k in kwargs}
    for k in ("attention_resolutions", "channel_mult"):
        if k in config:
            config[k] = list(config[k])
    if flavour == "vc":
        config["temporal_transformer_depth"] = kwargs.get("temporal_transformer_depth", 1)
        config["fps_condition"] = bool(kwargs.get("fps_cond", False))
        config["default_fps"] = 16
        config["image_cross_attention"] = bool(kwargs.get("use_image_attention", False))
    else:
        config["temporal_transformer_depth"] = kwargs.get("transformer_depth", 1)
        config["fps_condition"] = bool(kwargs.get("fs_condition", False))
        config["default_fps"] = int(kwargs.get("default_fs", 3))
        config["image_cross_attention"] = bool(kwargs.get("image_cross_attention", False))
        config["image_cross_attention_scale_learnable"] = bool(kwargs.get("image_cross_attention_scale_learnable", False))
        config["per_frame_image_tokens"] = True
        config["truncate_text_context"] = True
    return config


def _count(sd: Mapping[str, torch.Tensor], pattern: str) -> int:
    rx = re.compile(pattern)
    return len({m.group(1) for k in sd if (m := rx.match(k))})


def infer_official_unet_kwargs(
    sd: Mapping[str, torch.Tensor], flavour: str, num_head_channels: int | None = None
) -> dict:
    """Recover the official constructor kwargs from the keys and shapes of a U-Net state dict.

    The head width cannot be read from the weights unless relative-position tables exist; released models use 64.
    """
    try:
        conv_in = sd["input_blocks.0.0.weight"]
    except KeyError:
        raise ConversionError("not an LVDM U-Net: 'input_blocks.0.0.weight' is missing") from None
    mc = conv_in.shape[0]
    kw: dict = {"in_channels": conv_in.shape[1], "model_channels": mc}
    if "out.2.weight" not in sd:
        raise ConversionError("U-Net output conv 'out.2.weight' is missing (truncated checkpoint?)")
    kw["out_channels"] = sd["out.2.weight"].shape[0]

    channel_mult, attn_res, res_per_level, level, n_res = [], [], [], 0, 0
    i = 1
    while f"input_blocks.{i}.0.op.weight" in sd or f"input_blocks.{i}.0.in_layers.0.weight" in sd:
        if f"input_blocks.{i}.0.op.weight" in sd:
            res_per_level.append(n_res)
            level, n_res = level + 1, 0
        else:
            out_ch = sd[f"input_blocks.{i}.0.out_layers.3.weight"].shape[0]
            if n_res == 0:
                channel_mult.append(out_ch // mc)
            n_res += 1
            if f"input_blocks.{i}.1.norm.weight" in sd and 2**level not in attn_res:
                attn_res.append(2**level)
        i += 1
    res_per_level.append(n_res)
    if len(set(res_per_level)) != 1:
        raise ConversionError(f"inconsistent ResBlock counts per level {res_per_level} (truncated checkpoint?)")
    kw.update(channel_mult=channel_mult, num_res_blocks=res_per_level[0], attention_resolutions=sorted(attn_res, reverse=True))

    first_st = next((k[: -len("proj_in.weight")] for k in sd if re.match(r"input_blocks\.\d+\.1\.proj_in\.weight$", k)), None)
    if first_st is None:
        first_st = "middle_block.1."
        if first_st + "proj_in.weight" not in sd:
            raise ConversionError("U-Net has no spatial transformer (truncated checkpoint?)")
    kw["use_linear"] = sd[first_st + "proj_in.weight"].ndim == 2
    kw["context_dim"] = sd[first_st + "transformer_blocks.0.attn2.to_k.weight"].shape[1]
    kw["transformer_depth"] = _count(sd, re.escape(first_st) + r"transformer_blocks\.(\d+)\.norm1\.weight")
    kw["temporal_transformer_depth"] = _count(sd, r"middle_block\.2\.transformer_blocks\.(\d+)\.norm1\.weight") or 1
    kw["temporal_attention"] = "middle_block.2.norm.weight" in sd
    kw["temporal_conv"] = any(".temopral_conv." in k for k in sd)
    kw["addition_attention"] = any(k.startswith("init_attn.") for k in sd)
    rel = next((v for k, v in sd.items() if k.endswith("relative_position_k.embeddings_table")), None)
    kw["use_relative_position"] = rel is not None
    kw["num_head_channels"] = num_head_channels or (rel.shape[1] if rel is not None else 64)
    kw["temporal_length"] = (rel.shape[0] - 1) // 2 if rel is not None else 16
    if kw["addition_attention"]:
        kw["init_attention_heads"] = sd["init_attn.0.proj_in.weight"].shape[0] // kw["num_head_channels"]
    has_fps = "fps_embedding.0.weight" in sd or "framestride_embed.0.weight" in sd
    has_image = any(k.endswith("attn2.to_k_ip.weight") for k in sd)
    if flavour == "vc":
        kw.update(fps_cond=has_fps, use_image_attention=has_image)
    else:
        kw.update(
            fs_condition=has_fps,
            image_cross_attention=has_image,
            image_cross_attention_scale_learnable=any(k.endswith("attn2.alpha") for k in sd),
        )
    return kw


def rename_official_key(key: str) -> str:
    for old, new in _RENAMES:
        key = key.replace(old, new)
    return key


def expected_unet_shapes(config: Mapping) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the model a config describes, without allocating it."""
    with torch.device("meta"):
        model = UNet3DModel.from_config(dict(config))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def convert_unet(
    sd: Mapping[str, torch.Tensor],
    official_kwargs: Mapping | None = None,
    flavour: str = "vc",
    **overrides,
) -> ConvertedComponent:
    """Convert a U-Net state dict (keys without the ``model.diffusion_model.`` prefix).

    ``official_kwargs`` are the official constructor kwargs; when absent they are inferred from the weights.
    ``overrides`` set vidiff config values directly (e.g. ``default_fps``, ``dropout``, ``num_head_channels``).
    """
    if official_kwargs is not None:
        kwargs = dict(official_kwargs)
    else:
        kwargs = infer_official_unet_kwargs(sd, flavour, overrides.get("num_head_channels"))
    init_heads = kwargs.pop("init_attention_heads", None)
    config = unet_config_from_official(kwargs, flavour)
    if init_heads is not None:
        config["init_attention_heads"] = init_heads
    config.update(overrides)

    converted = {rename_official_key(k): v for k, v in sd.items()}
    if len(converted) != len(sd):
        raise ConversionError("U-Net checkpoint holds both old and new names for the same weights")
    expected = expected_unet_shapes(config)
    unknown = sorted(k for k, k2 in zip(sd, converted) if k2 not in expected)
    if unknown:
        head = ", ".join(unknown[:8]) + (f", ... ({len(unknown)} in all)" if len(unknown) > 8 else "")
        raise ConversionError(f"U-Net: keys this architecture does not have: {head}")
    check_shapes(expected, converted, "U-Net")
    return ConvertedComponent(config=config, state_dict=converted, consumed=set(sd), ignored={})
