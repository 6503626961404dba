"""The OpenCLIP ViT image tower as the i2v models use it (``FrozenOpenCLIPImageEmbedderV2``), on transformers' CLIP.

The official embedder returns *all* token states (class token + patches) of the last residual block, before ``ln_post``
and ``proj``: DynamiCrafter's projector needs the patch tokens, not the pooled CLIP embedding. Its preprocessing is
kornia's antialiased bicubic resize with ``align_corners=True`` (torch's own antialias filter differs), then the CLIP
mean/std normalisation; we run it in float32 whatever the model dtype, so bf16 only affects the transformer.
"""

from __future__ import annotations

import kornia
import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from vidiff.models.persistence import SafetensorsPersistence

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class OpenCLIPImageEncoder(SafetensorsPersistence, nn.Module):
    """Images in [-1, 1] (b, 3, H, W) -> CLIP tokens (b, 1 + (image_size / patch_size)², width).

    Defaults are OpenCLIP ViT-H/14 (every released VideoCrafter i2v / DynamiCrafter checkpoint): 224 px, patch 14,
    width 1280, 32 blocks, 16 heads of 80, MLP 5120 -> (b, 257, 1280).
    """

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 14,
        width: int = 1280,
        layers: int = 32,
        heads: int = 16,
        mlp_width: int | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("image_size", image_size), ("patch_size", patch_size), ("width", width),
                            ("layers", layers), ("heads", heads)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        mlp_width = 4 * width if mlp_width is None else mlp_width
        if not isinstance(mlp_width, int) or mlp_width < 1:
            raise ValueError(f"mlp_width must be a positive int, got {mlp_width!r}")
        self.config = {
            "image_size": image_size,
            "patch_size": patch_size,
            "width": width,
            "layers": layers,
            "heads": heads,
            "mlp_width": mlp_width,
        }
        clip_config = CLIPVisionConfig(
            hidden_size=width,
            intermediate_size=mlp_width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_channels=3,
            image_size=image_size,
            patch_size=patch_size,
            hidden_act="gelu",  # exact erf GELU, as nn.GELU() in open_clip
            layer_norm_eps=1e-5,
            attention_dropout=0.0,
        )
        clip_config._attn_implementation = "sdpa"
        self.clip = CLIPVisionModel(clip_config)
        # ln_post is never applied by the official embedder; an identity keeps HF's pooled output harmless and leaves
        # no dead parameters in our state dict.
        self.clip.post_layernorm = nn.Identity()
        # position_ids is a non-persistent buffer that forward reads: after a meta build + assign-load it would stay on
        # meta. A load_state_dict hook (not just SafetensorsPersistence._after_assign_load) also covers direct loads.
        self.register_load_state_dict_post_hook(_restore_position_ids)

    @property
    def dtype(self) -> torch.dtype:
        return self.clip.embeddings.patch_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.clip.embeddings.patch_embedding.weight.device

    @property
    def num_tokens(self) -> int:
        return (self.config["image_size"] // self.config["patch_size"]) ** 2 + 1

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images of any size -> CLIP-normalised float32 (b, 3, image_size, image_size), as the official."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a (batch, 3, height, width) tensor in [-1, 1], got {shape}")
        if not images.is_floating_point():
            raise ValueError(
                f"images must be floating point in [-1, 1], got {images.dtype} (map uint8 with (u8 / 255 - 0.5) * 2)"
            )
        size = self.config["image_size"]
        x = images.to(device=self.device, dtype=torch.float32)
        x = kornia.geometry.transform.resize(x, (size, size), interpolation="bicubic", align_corners=True,
                                             antialias=True)
        x = (x + 1.0) / 2.0
        # Constants made here (not buffers) so that casting the module to bf16 never rounds them.
        mean = torch.tensor(CLIP_MEAN, device=x.device)
        std = torch.tensor(CLIP_STD, device=x.device)
        return kornia.enhance.normalize(x, mean, std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """All tokens after the last residual block (no ln_post / proj): (b, num_tokens, width)."""
        return self.encode_preprocessed(self.preprocess(images))

    def encode_preprocessed(self, pixels: torch.Tensor) -> torch.Tensor:
        """The transformer part alone, for inputs that already went through :meth:`preprocess`."""
        size = self.config["image_size"]
        if pixels.dim() != 4 or tuple(pixels.shape[1:]) != (3, size, size):
            raise ValueError(f"preprocessed pixels must be (batch, 3, {size}, {size}), got {tuple(pixels.shape)}")
        return self.clip(pixel_values=pixels.to(self.dtype)).last_hidden_state

    def encode_uncond(self, batch: int = 1, height: int = 224, width: int = 224) -> torch.Tensor:
        """The official unconditional image embedding: the tokens of an all-zero image (mid-grey after (x+1)/2)."""
        for name, value in (("batch", batch), ("height", height), ("width", width)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        return self(torch.zeros(batch, 3, height, width, device=self.device))


def _restore_position_ids(module: OpenCLIPImageEncoder, incompatible_keys: object) -> None:
    """Re-create HF's non-persistent position ids on the weights' device when a meta-built model was assign-loaded."""
    emb = module.clip.embeddings
    device = emb.position_embedding.weight.device
    if device.type == "meta":
        return
    if emb.position_ids.device != device:
        emb.position_ids = torch.arange(emb.num_positions, device=device).unsqueeze(0)
