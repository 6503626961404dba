"""The OpenCLIP text tower as the LVDM models use it (``FrozenOpenCLIPEmbedder``), on top of transformers' CLIP.

The official embedder returns all token states of the *penultimate* residual block followed by the final LayerNorm,
with a causal mask only (open_clip has no padding mask: the zero-padded positions attend causally like any other
token and are part of the UNet's cross-attention context). ``text_projection`` and EOT pooling are not used.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

from vidiff.models.persistence import SafetensorsPersistence

LAYERS = ("penultimate", "last")

LayerChoice = Literal["penultimate", "last"]


class OpenCLIPTextEncoder(SafetensorsPersistence, nn.Module):
    """``FrozenOpenCLIPEmbedder`` numerics: tokens (b, L) int64 -> states (b, L, width).

    Defaults are OpenCLIP ViT-H-14's text tower (the one every released VideoCrafter/DynamiCrafter checkpoint holds).
    """

    def __init__(
        self,
        vocab_size: int = 49408,
        context_length: int = 77,
        width: int = 1024,
        layers: int = 24,
        heads: int = 16,
        mlp_width: int | None = None,
        layer: LayerChoice = "penultimate",
    ) -> None:
        super().__init__()
        for name, value in (("vocab_size", vocab_size), ("context_length", context_length), ("width", width),
                            ("layers", layers), ("heads", heads)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
        if layer == "penultimate" and layers < 2:
            raise ValueError("layer='penultimate' needs at least 2 residual blocks")
        mlp_width = 4 * width if mlp_width is None else mlp_width
        if not isinstance(mlp_width, int) or mlp_width < 1:
            raise ValueError(f"mlp_width must be a positive int, got {mlp_width!r}")
        self.config = {
            "vocab_size": vocab_size,
            "context_length": context_length,
            "width": width,
            "layers": layers,
            "heads": heads,
            "mlp_width": mlp_width,
            "layer": layer,
        }
        clip_config = CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=mlp_width,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=context_length,
            hidden_act="gelu",  # exact erf GELU, as nn.GELU() in open_clip
            layer_norm_eps=1e-5,
            attention_dropout=0.0,
            pad_token_id=0,
            bos_token_id=vocab_size - 2,
            eos_token_id=vocab_size - 1,
            attn_implementation="sdpa",
        )
        self.clip = CLIPTextModel(clip_config)

    @property
    def dtype(self) -> torch.dtype:
        return self.clip.embeddings.token_embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.clip.embeddings.token_embedding.weight.device

    def forward(self, tokens: torch.Tensor, layer: LayerChoice | None = None) -> torch.Tensor:
        """All token states after ``layer`` ('penultimate' skips the last block) and the final LayerNorm."""
        layer = self.config["layer"] if layer is None else layer
        if layer not in LAYERS:
            raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
        tokens = self._check_tokens(tokens)
        length = tokens.shape[1]
        clip = self.clip
        positions = torch.arange(length, device=tokens.device).unsqueeze(0)
        hidden = clip.embeddings(input_ids=tokens, position_ids=positions)
        # Additive causal mask (works with the eager and SDPA attention back ends alike).
        mask = torch.full((length, length), torch.finfo(hidden.dtype).min, dtype=hidden.dtype, device=hidden.device)
        mask = mask.triu(1)[None, None]
        blocks = clip.encoder.layers
        n_run = len(blocks) - 1 if layer == "penultimate" else len(blocks)
        for block in blocks[:n_run]:
            hidden = block(hidden, mask)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        return clip.final_layer_norm(hidden)

    def _check_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
            shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
            raise ValueError(f"tokens must be a (batch, length) tensor of ids, got {shape}")
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")
        if tokens.shape[1] > self.config["context_length"]:
            raise ValueError(f"{tokens.shape[1]} tokens exceed the context length {self.config['context_length']}")
        if tokens.numel() and tokens.device.type != "meta":
            low, high = int(tokens.min()), int(tokens.max())
            if low < 0 or high >= self.config["vocab_size"]:
                raise ValueError(f"token ids must lie in [0, {self.config['vocab_size']}), got [{low}, {high}]")
        return tokens.to(device=self.device, dtype=torch.long)

    # ------------------------------------------------------------------ persistence
    def _after_assign_load(self) -> None:
        """HF's non-persistent position ids stay on meta after an assign-load; forward never reads them, but a
        module with meta tensors cannot be moved with ``.to()``."""
        self.clip.embeddings.position_ids = torch.arange(self.config["context_length"]).unsqueeze(0)
