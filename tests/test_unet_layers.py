"""Swappable U-Net layers: a registered layer type is a config entry, built with its level, called through the layer
protocol, and initialised as an identity by the model's own method."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vidiff.models.attention import TemporalTransformer
from vidiff.models.conditions import FrameConditions, UNetLevel
from vidiff.models.inflation import inflate_from
from vidiff.models.layers import layer_names, register_layer
from vidiff.models.unet3d import UNet3DModel

UNET = dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
            attention_resolutions=(1, 2, 4), num_head_channels=16, context_dim=32, temporal_attention=True,
            addition_attention=False, temporal_length=8, fps_condition=False)
BUILT: list[tuple[UNetLevel, dict]] = []


class FrameMixer(nn.Module):
    """A toy temporal layer: adds a learned per-level multiple of the frame mean (zero at identity)."""

    def __init__(self, channels: int, level: UNetLevel, gain: float) -> None:
        super().__init__()
        self.level = level
        self.weight = nn.Parameter(torch.full((channels,), gain))

    def unet_forward(self, x: torch.Tensor, emb: torch.Tensor, cond: FrameConditions, num_frames: int) -> torch.Tensor:
        assert cond.text is not None and cond.text.shape[0] == x.shape[0]  # per-frame rows of the caption
        video = x.unflatten(0, (-1, num_frames))
        mean = video.mean(dim=1, keepdim=True).expand_as(video).flatten(0, 1)
        return x + self.weight[None, :, None, None] * mean

    def init_identity(self) -> list[str]:
        with torch.no_grad():
            self.weight.zero_()
        return ["weight"]


@register_layer("temporal_attention", "test_frame_mixer")
def _frame_mixer(config, channels: int, out_channels: int, level: UNetLevel, gain: float = 1.0) -> FrameMixer:
    BUILT.append((level, {"gain": gain}))
    return FrameMixer(channels, level, gain)


def test_a_registered_layer_is_a_config_entry_built_with_its_level():
    BUILT.clear()
    unet = UNet3DModel(**UNET, layer_types={"temporal_attention": "test_frame_mixer"},
                       layer_options={"temporal_attention": {"gain": 0.5}})
    assert "test_frame_mixer" in layer_names("temporal_attention")
    mixers = [m for m in unet.modules() if isinstance(m, FrameMixer)]
    assert mixers and not any(isinstance(m, TemporalTransformer) for m in unet.modules())
    stages = [(lvl.stage, lvl.index) for lvl, _ in BUILT]
    # one per attention level going down, one in the middle, two per level coming up
    assert stages == [("down", 0), ("down", 1), ("down", 2), ("middle", 2), ("up", 2), ("up", 2), ("up", 1),
                      ("up", 1), ("up", 0), ("up", 0)]
    assert all(opts == {"gain": 0.5} for _, opts in BUILT)
    assert BUILT[2][0].factor == 4 and BUILT[2][0].depth == 1.0 and BUILT[0][0].depth == 0.0
    # the config round-trips, so a model folder of this U-Net loads with the same layers
    again = UNet3DModel.from_config(unet.config)
    assert sum(isinstance(m, FrameMixer) for m in again.modules()) == len(mixers)


def test_identity_initialisation_reaches_registered_layers():
    torch.manual_seed(0)
    plain = UNet3DModel(**{**UNET, "temporal_attention": False}).eval()
    mixed = UNet3DModel(**UNET, layer_types={"temporal_attention": "test_frame_mixer"}).eval()
    inflate_from(mixed, plain, identity=False)  # the same spatial weights, the mixers left at gain 1
    x, ctx = torch.randn(1, 4, 8, 16, 16), torch.randn(1, 7, 32)
    with torch.no_grad():
        assert not torch.allclose(mixed(x, 10, ctx), plain(x, 10, ctx))  # gain 1: frames mix
        names = mixed.init_identity_layers()
        assert sum(n.endswith(".weight") for n in names) == 10
        assert torch.equal(mixed(x, 10, ctx), plain(x, 10, ctx))


def test_unknown_layer_types_get_one_clear_error():
    with pytest.raises(ValueError, match="unknown temporal_attention layer type 'pyramid'; registered: .*lvdm"):
        UNet3DModel(**UNET, layer_types={"temporal_attention": "pyramid"})
    with pytest.raises(ValueError, match="unknown layer kind 'attention'"):
        UNet3DModel(**UNET, layer_types={"attention": "lvdm"})
    with pytest.raises(ValueError, match="already registered"):
        register_layer("temporal_attention", "lvdm")(_frame_mixer)
