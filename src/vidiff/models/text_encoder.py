"""The OpenCLIP text tower as the LVDM models use it (``FrozenOpenCLIPEmbedder``), on top of transformers' CLIP.

The official embedder returns all token states of the *penultimate* residual block followed by the final LayerNorm,
with a causal mask only (open_clip has no padding mask: the zero-padded positions attend causally like any other
token and are part of the UNet's cross-attention context). ``text_projection`` and EOT pooling are not used.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
LAYERS = ("penultimate", "last")

LayerChoice = Literal["penultimate", "last"]


class OpenCLIPTextEncoder(nn.Module):
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

    @classmethod
    def from_config(cls, config: dict) -> OpenCLIPTextEncoder:
        """Build (randomly initialised) from a config dict such as ``ConvertedComponent.config``."""
        unknown = set(config) - set(_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown text encoder config keys: {sorted(unknown)} (known: {sorted(_CONFIG_KEYS)})")
        return cls(**config)

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
    def save_pretrained(self, folder: str | os.PathLike) -> None:
        """config.json + model.safetensors; each file is written atomically."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{WEIGHTS_NAME}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(state, tmp, metadata={"format": "pt"})
            os.replace(tmp, folder / WEIGHTS_NAME)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        config = {"_class_name": type(self).__name__, **self.config}
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{CONFIG_NAME}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(config, indent=2) + "\n")
            os.replace(tmp, folder / CONFIG_NAME)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, torch_dtype: torch.dtype | None = None) -> OpenCLIPTextEncoder:
        """Load what save_pretrained wrote, without a random initialisation pass (built on meta, weights assigned)."""
        folder = Path(folder)
        config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} not found (is {folder} a saved {cls.__name__}?)")
        try:
            config = json.loads(config_path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path} is not valid JSON: {err}") from err
        class_name = config.pop("_class_name", cls.__name__)
        if class_name != cls.__name__:
            raise ValueError(f"{config_path} describes a {class_name}, not an {cls.__name__}")
        with torch.device("meta"):
            model = cls.from_config(config)
        state = load_file(str(weights_path))
        if torch_dtype is not None:
            state = {k: v.to(torch_dtype) if v.is_floating_point() else v for k, v in state.items()}
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise ValueError(f"{weights_path} does not match {config_path}: {err}") from err
        model.clip.embeddings.position_ids = torch.arange(config.get("context_length", 77)).unsqueeze(0)
        return model.eval()


_CONFIG_KEYS = ("vocab_size", "context_length", "width", "layers", "heads", "mlp_width", "layer")
