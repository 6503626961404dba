"""Assemble a tiny checkpoint in the official VideoCrafter2 layout from the reference fixture parts.

U-Net: `vc_unet_tiny` (variant vc2_t2v_512); autoencoder: `vae_tiny`; diffusion buffers: the VC2 schedule. The text
tower is synthesised (seeded) in the OpenCLIP layout with the full 49408-token vocabulary and the U-Net's context width,
because `text_tiny` has neither. Usage: ``python tests/tiny_checkpoint.py OUT.ckpt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lvdm_fixtures import fixture_folders, load_config, load_tensors  # noqa: E402

from vidiff.conversion.common import strip_prefix  # noqa: E402
from vidiff.conversion.unet import expected_unet_shapes, rename_official_key, unet_config_from_official  # noqa: E402
from vidiff.diffusion.schedule import schedule_from_official_params  # noqa: E402
from vidiff.model_folder import FAMILIES  # noqa: E402

UNET_VARIANT = "vc2_t2v_512"
TEXT_LAYERS, TEXT_HEADS, VOCAB, CONTEXT = 2, 2, 49408, 77


def openclip_text_tower(width: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape, std=None):
        std = std if std is not None else shape[-1] ** -0.5
        return torch.randn(*shape, generator=g) * std

    sd = {
        "model.token_embedding.weight": rand(VOCAB, width, std=0.02),
        "model.positional_embedding": rand(CONTEXT, width, std=0.01),
        "model.ln_final.weight": 1 + rand(width, std=0.05),
        "model.ln_final.bias": rand(width, std=0.05),
        "model.text_projection": rand(width, width),
        "model.logit_scale": torch.tensor(4.6052),
    }
    for i in range(TEXT_LAYERS):
        p = f"model.transformer.resblocks.{i}."
        sd.update({
            p + "ln_1.weight": 1 + rand(width, std=0.05), p + "ln_1.bias": rand(width, std=0.05),
            p + "attn.in_proj_weight": rand(3 * width, width), p + "attn.in_proj_bias": rand(3 * width, std=0.05),
            p + "attn.out_proj.weight": rand(width, width), p + "attn.out_proj.bias": rand(width, std=0.05),
            p + "ln_2.weight": 1 + rand(width, std=0.05), p + "ln_2.bias": rand(width, std=0.05),
            p + "mlp.c_fc.weight": rand(4 * width, width), p + "mlp.c_fc.bias": rand(4 * width, std=0.05),
            p + "mlp.c_proj.weight": rand(width, 4 * width), p + "mlp.c_proj.bias": rand(width, std=0.05),
        })
    return sd


def has_fixtures() -> bool:
    """Whether the fixtures this checkpoint is assembled from are present (tests skip without them)."""
    return bool(fixture_folders("vae")) and any(UNET_VARIANT in load_config(f)["variants"]
                                                for f in fixture_folders("vc_unet"))


def tiny_state_dict() -> dict[str, torch.Tensor]:
    unet_folder = next(f for f in fixture_folders("vc_unet") if UNET_VARIANT in load_config(f)["variants"])
    cfg = load_config(unet_folder)
    kwargs = cfg["variants"][UNET_VARIANT]["kwargs"]
    expected = expected_unet_shapes(unet_config_from_official(kwargs, "vc"))
    weights = strip_prefix(load_tensors(unet_folder / cfg["weights_file"]), cfg["key_prefix"])
    sd = {"model.diffusion_model." + k: v for k, v in weights.items() if rename_official_key(k) in expected}
    vae_folder = fixture_folders("vae")[0]
    sd.update(load_tensors(vae_folder / "weights.safetensors"))
    sd.update({"cond_stage_model." + k: v for k, v in openclip_text_tower(kwargs["context_dim"]).items()})
    sd.update(schedule_from_official_params(FAMILIES["vc2_t2v_512"].model_params).official_buffers())
    return sd


def save_tiny_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": tiny_state_dict(), "epoch": 0, "global_step": 0}, path)
    return path


UNET_HEAD_CHANNELS = 8  # vc_unet_tiny's num_head_channels, passed to `vidiff convert --num-head-channels`

if __name__ == "__main__":
    print(save_tiny_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "outputs/tiny_vc2.ckpt"))
