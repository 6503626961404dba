"""The image-conditioning components of image-to-video checkpoints (OpenCLIP image tower and Resampler projector)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from ..models.image_encoder import OpenCLIPImageEncoder
from ..models.resampler import Resampler
from .common import ConversionError, strip_prefix
from .component import ConvertedComponent
from .image_encoder import convert_image_encoder
from .resampler import convert_resampler

if TYPE_CHECKING:
    from ..model_folder import Family

I2V_BUILDERS = {"image_encoder": OpenCLIPImageEncoder.from_config, "image_projector": Resampler.from_config}


def convert_i2v_components(
    sd: Mapping[str, torch.Tensor],
    family: Family,
    *,
    image_heads: int | None = None,
    projector_heads: int | None = None,
    projector_dim_head: int | None = None,
) -> dict[str, ConvertedComponent]:
    """Head counts are invisible in the weights; the defaults are the released ViT-H/14 and Resampler ones."""
    out = {}
    for name, prefix, convert in (
        ("image_encoder", "embedder.", lambda part: convert_image_encoder(part, num_heads=image_heads)),
        (
            "image_projector",
            "image_proj_model.",
            lambda part: convert_resampler(
                part, flavour=family.flavour, heads=projector_heads, dim_head=projector_dim_head
            ),
        ),
    ):
        part = strip_prefix(sd, prefix)
        if not part:
            raise ConversionError(f"{family.name} checkpoints hold '{prefix}*' weights; none found (truncated?)")
        try:
            out[name] = convert(part)
        except ConversionError as err:
            raise ConversionError(f"{name} ({prefix}*): {err}") from None
    return out
