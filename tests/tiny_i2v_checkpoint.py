"""Assemble a tiny checkpoint in the official DynamiCrafter-512 layout from the reference fixture parts.

From the fixtures: the U-Net (`dc_unet_tiny`, variant dc_512_1024), the autoencoder (`vae_tiny`) and the dc_512 noise
schedule buffers. Synthesised with seeded random values in the official layout (README conventions: norm weights
1 ± 0.1, matrices std fan_in^-1/2, biases std 0.05):

* the OpenCLIP text tower, with the full 49408-token vocabulary and the U-Net's context width (`text_tiny` has neither);
* the OpenCLIP image tower, 64 wide (one 64-wide head). `image_tiny` is 32 wide with 8-wide heads, and the head count
  is not stored in a checkpoint: the converter infers it as width/64 (ViT-H: width/80), which is 0 for width 32, and
  ``convert_checkpoint`` has no image-head override;
* the DynamiCrafter Resampler (dim 32, one 64-wide head, 16 queries × 4 frames, 64 → U-Net context width).
  `resampler_dc_tiny` takes 40-wide tokens (no fitting image tower) and uses 3 heads of 8, which the converter cannot
  infer either (it assumes 64-wide heads when none are given).

Usage: ``python tests/tiny_i2v_checkpoint.py OUT.ckpt``; convert with ``family="dc_512"``,
``HeadCounts(unet_head_channels=UNET_HEAD_CHANNELS, text_heads=TEXT_HEADS)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lvdm_fixtures import fixture_folders, load_config, load_tensors  # noqa: E402
from tiny_checkpoint import TEXT_HEADS, openclip_text_tower  # noqa: E402

from vidiff.conversion.common import strip_prefix  # noqa: E402
from vidiff.conversion.unet import expected_unet_shapes, rename_official_key, unet_config_from_official  # noqa: E402
from vidiff.diffusion.schedule import schedule_from_official_params  # noqa: E402
from vidiff.model_folder import FAMILIES  # noqa: E402

FAMILY = "dc_512"
UNET_VARIANT = "dc_512_1024"
IMAGE_WIDTH, IMAGE_LAYERS, IMAGE_SIZE, IMAGE_PATCH = 64, 2, 224, 14
RESAMPLER_DIM, RESAMPLER_DEPTH, RESAMPLER_INNER, QUERIES, VIDEO_LENGTH = 32, 2, 64, 16, 4
__all__ = ["FAMILY", "TEXT_HEADS", "UNET_HEAD_CHANNELS", "VIDEO_LENGTH", "save_tiny_i2v_checkpoint", "tiny_i2v_state_dict"]


def _find_unet_folder() -> Path | None:
    return next((f for f in fixture_folders("dc_unet") if UNET_VARIANT in load_config(f)["variants"]), None)


def _unet_folder() -> Path:
    folder = _find_unet_folder()
    if folder is None:
        raise FileNotFoundError(f"no dc_unet fixture folder with the {UNET_VARIANT} variant under the fixtures root")
    return folder


# None without the fixtures: importing must still work so the tests that need them can skip.
_FOLDER = _find_unet_folder()
UNET_HEAD_CHANNELS = (load_config(_FOLDER)["variants"][UNET_VARIANT]["kwargs"]["num_head_channels"]
                      if _FOLDER is not None else None)


class _Random:
    """Seeded values with the fixture README's statistics."""

    def __init__(self, seed: int) -> None:
        self.g = torch.Generator().manual_seed(seed)

    def matrix(self, *shape: int) -> torch.Tensor:
        fan_in = 1
        for s in shape[1:]:
            fan_in *= s
        return torch.randn(*shape, generator=self.g) * fan_in**-0.5

    def norm(self, n: int) -> dict[str, torch.Tensor]:
        return {"weight": 1 + 0.1 * torch.randn(n, generator=self.g), "bias": 0.05 * torch.randn(n, generator=self.g)}

    def bias(self, n: int) -> torch.Tensor:
        return 0.05 * torch.randn(n, generator=self.g)

    def embedding(self, *shape: int, std: float) -> torch.Tensor:
        return torch.randn(*shape, generator=self.g) * std


def _norm(prefix: str, r: _Random, n: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in r.norm(n).items()}


def openclip_image_tower(width: int = IMAGE_WIDTH, layers: int = IMAGE_LAYERS, seed: int = 1) -> dict[str, torch.Tensor]:
    """``FrozenOpenCLIPImageEmbedderV2`` state dict (keys after ``embedder.``), with the unused text-side leftovers."""
    r = _Random(seed)
    grid = IMAGE_SIZE // IMAGE_PATCH
    sd = {
        "model.visual.class_embedding": r.embedding(width, std=width**-0.5),
        "model.visual.positional_embedding": r.embedding(grid * grid + 1, width, std=0.01),
        "model.visual.conv1.weight": r.matrix(width, 3, IMAGE_PATCH, IMAGE_PATCH),
        "model.visual.proj": r.matrix(width, 16),
        **_norm("model.visual.ln_pre", r, width),
        **_norm("model.visual.ln_post", r, width),
        # text-side parameters the official embedder keeps (and never uses)
        "model.token_embedding.weight": r.embedding(1000, 16, std=0.02),
        "model.positional_embedding": r.embedding(77, 16, std=0.01),
        **_norm("model.ln_final", r, 16),
        "model.text_projection": r.matrix(16, 16),
        "model.logit_scale": torch.tensor(4.6052),
    }
    for i in range(layers):
        p = f"model.visual.transformer.resblocks.{i}."
        sd.update({
            **_norm(p + "ln_1", r, width), **_norm(p + "ln_2", r, width),
            p + "attn.in_proj_weight": r.matrix(3 * width, width), p + "attn.in_proj_bias": r.bias(3 * width),
            p + "attn.out_proj.weight": r.matrix(width, width), p + "attn.out_proj.bias": r.bias(width),
            p + "mlp.c_fc.weight": r.matrix(4 * width, width), p + "mlp.c_fc.bias": r.bias(4 * width),
            p + "mlp.c_proj.weight": r.matrix(width, 4 * width), p + "mlp.c_proj.bias": r.bias(width),
        })
    return sd


def dc_resampler(embedding_dim: int, output_dim: int, seed: int = 2) -> dict[str, torch.Tensor]:
    """DynamiCrafter ``Resampler`` state dict (keys after ``image_proj_model.``)."""
    r = _Random(seed)
    dim, inner = RESAMPLER_DIM, RESAMPLER_INNER
    sd = {
        "latents": r.embedding(1, QUERIES * VIDEO_LENGTH, dim, std=dim**-0.5),
        "proj_in.weight": r.matrix(dim, embedding_dim), "proj_in.bias": r.bias(dim),
        "proj_out.weight": r.matrix(output_dim, dim), "proj_out.bias": r.bias(output_dim),
        **_norm("norm_out", r, output_dim),
    }
    for i in range(RESAMPLER_DEPTH):
        p = f"layers.{i}."
        sd.update({
            **_norm(p + "0.norm1", r, dim), **_norm(p + "0.norm2", r, dim),
            p + "0.to_q.weight": r.matrix(inner, dim), p + "0.to_kv.weight": r.matrix(2 * inner, dim),
            p + "0.to_out.weight": r.matrix(dim, inner),
            **_norm(p + "1.0", r, dim),
            p + "1.1.weight": r.matrix(4 * dim, dim), p + "1.3.weight": r.matrix(dim, 4 * dim),
        })
    return sd


def tiny_i2v_state_dict() -> dict[str, torch.Tensor]:
    folder = _unet_folder()
    cfg = load_config(folder)
    kwargs = cfg["variants"][UNET_VARIANT]["kwargs"]
    expected = expected_unet_shapes(unet_config_from_official(kwargs, "dc"))
    weights = strip_prefix(load_tensors(folder / cfg["weights_file"]), cfg["key_prefix"])
    sd = {"model.diffusion_model." + k: v for k, v in weights.items() if rename_official_key(k) in expected}
    sd.update(load_tensors(fixture_folders("vae")[0] / "weights.safetensors"))
    context_dim = kwargs["context_dim"]
    sd.update({"cond_stage_model." + k: v for k, v in openclip_text_tower(context_dim).items()})
    sd.update({"embedder." + k: v for k, v in openclip_image_tower().items()})
    sd.update({"image_proj_model." + k: v for k, v in dc_resampler(IMAGE_WIDTH, context_dim).items()})
    sd.update(schedule_from_official_params(FAMILIES[FAMILY].model_params).official_buffers())
    return sd


def save_tiny_i2v_checkpoint(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": tiny_i2v_state_dict(), "epoch": 0, "global_step": 0}, path)
    return path


if __name__ == "__main__":
    print(save_tiny_i2v_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "outputs/tiny_dc512.ckpt"))
