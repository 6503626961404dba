"""CLIP-based video metrics: CLIPSIM (text-video alignment) and CLIP frame consistency.

CLIPSIM (Wu et al. 2021, used by Make-A-Video, VideoGen, ...): the cosine similarity between the prompt's CLIP text
embedding and each frame's CLIP image embedding, averaged over frames and videos. We follow the CLIPScore convention
of torchmetrics: per frame ``max(100 * cos, 0)``, so values are on a 0-100 scale; papers that print CLIPSIM around
0.29-0.31 report the raw cosine (use ``scale=1.0`` to match them; ``clip_at_zero`` only matters for negative cosines).

Frame consistency (Esser et al. 2023): the mean cosine similarity between the CLIP image embeddings of consecutive
frames (raw cosine, no scale, no clipping).

CLIP towers come from a local Hugging Face folder (``CLIPModel.from_pretrained(path, local_files_only=True)``); the text
is tokenised with that folder's tokenizer when it ships one, otherwise with vidiff's bundled CLIP BPE (the OpenAI CLIP
vocabulary). Frames are preprocessed like OpenAI CLIP: shortest side to the tower's input size (bicubic, antialiased),
center crop, CLIP mean/std (or the folder's ``preprocessor_config.json`` values).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vidiff.metrics.protocols import (
    CLIPModelProtocol,
    CLIPSIMProtocol,
    FrameConsistencyProtocol,
    as_videos,
    iter_batches,
    metric_result,
    sha256_file,
)

__all__ = ["CLIPEvaluator", "clip_frame_consistency", "clipsim", "load_clip"]

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_TOKENIZER_FILES = ("tokenizer.json", "vocab.json")
DEFAULT_MEAN = CLIPModelProtocol.image_mean
DEFAULT_STD = CLIPModelProtocol.image_std


class CLIPEvaluator:
    """A transformers ``CLIPModel`` plus its tokenizer and image preprocessing, producing unit-norm embeddings."""

    def __init__(
        self,
        model: Any,
        tokenizer: Callable[[list[str]], torch.Tensor] | None = None,
        image_mean: Sequence[float] = DEFAULT_MEAN,
        image_std: Sequence[float] = DEFAULT_STD,
        protocol: CLIPModelProtocol | None = None,
    ) -> None:
        from transformers import CLIPModel

        if not isinstance(model, CLIPModel):
            raise ValueError(f"model must be a transformers CLIPModel, got {type(model).__name__}")
        self.model = model.eval().requires_grad_(False)
        self.context_length = int(model.config.text_config.max_position_embeddings)
        self.image_size = int(model.config.vision_config.image_size)
        if tokenizer is None:
            from vidiff.models.tokenizer import OpenCLIPTokenizer

            tokenizer = OpenCLIPTokenizer(context_length=self.context_length)
            vocab_needed = 49408
            if model.config.text_config.vocab_size < vocab_needed:
                raise ValueError(f"the bundled CLIP tokenizer needs a text vocabulary of {vocab_needed} tokens, the "
                                 f"model has {model.config.text_config.vocab_size}; pass a matching tokenizer")
        self.tokenizer = tokenizer
        if len(image_mean) != 3 or len(image_std) != 3:
            raise ValueError("image_mean and image_std need 3 values (RGB)")
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        base = protocol or CLIPModelProtocol()
        self.protocol = CLIPModelProtocol(
            model_path=base.model_path,
            weights_sha256=base.weights_sha256,
            tokenizer=base.tokenizer,
            image_size=self.image_size,
            image_mean=self.image_mean,  # type: ignore[arg-type]
            image_std=self.image_std,  # type: ignore[arg-type]
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """float ``(n, 3, h, w)`` in [-1, 1] -> normalised ``(n, 3, S, S)`` pixel values for the vision tower."""
        x = (images.float() + 1.0) / 2.0
        h, w = x.shape[-2:]
        s = self.image_size
        new_h, new_w = (s, max(s, int(s * w / h))) if h <= w else (max(s, int(s * h / w)), s)
        if (new_h, new_w) != (h, w):
            x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=True)
        top, left = (new_h - s) // 2, (new_w - s) // 2
        x = x[:, :, top:top + s, left:left + s].clamp(0.0, 1.0)
        mean = torch.tensor(self.image_mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """float ``(n, 3, h, w)`` in [-1, 1] -> ``(n, d)`` float32 unit-norm image embeddings."""
        pixels = self.preprocess(images.to(self.device)).to(self.dtype)
        pooled = self.model.vision_model(pixel_values=pixels).pooler_output
        return F.normalize(self.model.visual_projection(pooled).float(), dim=-1)

    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """prompts -> ``(n, d)`` float32 unit-norm text embeddings."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError("prompts must be a sequence of strings")
        ids = torch.as_tensor(self.tokenizer(list(prompts)), dtype=torch.long).to(self.device)
        pooled = self.model.text_model(input_ids=ids).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1)


def _weight_hashes(folder: Path) -> tuple[tuple[str, str], ...]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    return tuple((p.name, sha256_file(p)) for p in files)


def _hf_tokenizer(folder: Path, context_length: int) -> Callable[[list[str]], torch.Tensor]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)

    def tokenize(prompts: list[str]) -> torch.Tensor:
        return tok(prompts, padding="max_length", truncation=True, max_length=context_length,
                   return_tensors="pt")["input_ids"]

    return tokenize


def load_clip(
    path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> CLIPEvaluator:
    """CLIP towers from a local Hugging Face folder (config.json + weights); nothing is downloaded."""
    from transformers import CLIPModel

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"CLIP folder not found: {folder}. vidiff never downloads weights; pass a local "
                                "Hugging Face CLIPModel folder (config.json + model.safetensors)")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json, so it is not a Hugging Face CLIPModel folder")
    try:
        model = CLIPModel.from_pretrained(str(folder), local_files_only=True, dtype=dtype)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot load a CLIPModel from {folder}: {err}") from err
    model = model.to(device)
    context_length = int(model.config.text_config.max_position_embeddings)
    if any((folder / name).is_file() for name in _TOKENIZER_FILES):
        tokenizer = _hf_tokenizer(folder, context_length)
        tokenizer_name = f"Hugging Face tokenizer from {folder.name}, padded to {context_length}"
    else:
        tokenizer = None
        tokenizer_name = f"vidiff OpenCLIP BPE (OpenAI CLIP vocabulary), context {context_length}"
    mean, std = DEFAULT_MEAN, DEFAULT_STD
    preprocessor = folder / "preprocessor_config.json"
    if preprocessor.is_file():
        config = json.loads(preprocessor.read_text())
        mean, std = tuple(config.get("image_mean", mean)), tuple(config.get("image_std", std))
    protocol = CLIPModelProtocol(model_path=str(folder), weights_sha256=_weight_hashes(folder), tokenizer=tokenizer_name)
    return CLIPEvaluator(model, tokenizer, mean, std, protocol)


def _video_frame_embeddings(videos: Any, clip: CLIPEvaluator, batch_size: int) -> list[torch.Tensor]:
    """One ``(t, d)`` embedding matrix per video, frames batched through the image tower."""
    out = []
    for batch in iter_batches(videos, batch_size, "videos"):
        x = as_videos(torch.as_tensor(batch))
        n, c, t, h, w = x.shape
        if out and t != out[0].shape[0]:
            raise ValueError(f"all videos must have the same number of frames, got {out[0].shape[0]} and {t}")
        frames = x.transpose(1, 2).reshape(n * t, c, h, w)
        emb = torch.cat([clip.encode_images(frames[i:i + batch_size]) for i in range(0, n * t, batch_size)])
        out.extend(emb.reshape(n, t, -1).cpu())
    return out


def clipsim(
    videos: Any,
    prompts: Sequence[str],
    clip: CLIPEvaluator,
    batch_size: int = 32,
    scale: float = 100.0,
    clip_at_zero: bool = True,
) -> dict[str, Any]:
    """CLIPSIM: per frame ``max(scale * cos(text, frame), 0)``, mean over frames, then over videos (one prompt each)."""
    if not isinstance(clip, CLIPEvaluator):
        raise ValueError(f"clip must be a CLIPEvaluator (see load_clip), got {type(clip).__name__}")
    if isinstance(prompts, str):
        raise ValueError("prompts must be a sequence with one prompt per video, not a single string")
    embeddings = _video_frame_embeddings(videos, clip, batch_size)
    if len(prompts) != len(embeddings):
        raise ValueError(f"got {len(prompts)} prompts for {len(embeddings)} videos; pass one prompt per video")
    text = clip.encode_text(list(prompts)).cpu()
    per_video = []
    for frames, t in zip(embeddings, text):
        scores = scale * (frames @ t).double()
        if clip_at_zero:
            scores = scores.clamp(min=0.0)
        per_video.append(float(scores.mean()))
    protocol = CLIPSIMProtocol(num_videos=len(per_video), num_frames=int(embeddings[0].shape[0]), clip=clip.protocol,
                               scale=float(scale), clip_at_zero=bool(clip_at_zero))
    return metric_result("clipsim", float(np.mean(per_video)), protocol, std=float(np.std(per_video)),
                         per_video=per_video)


def clip_frame_consistency(videos: Any, clip: CLIPEvaluator, batch_size: int = 32) -> dict[str, Any]:
    """Mean cosine similarity of CLIP image embeddings of consecutive frames (per video, then averaged)."""
    if not isinstance(clip, CLIPEvaluator):
        raise ValueError(f"clip must be a CLIPEvaluator (see load_clip), got {type(clip).__name__}")
    embeddings = _video_frame_embeddings(videos, clip, batch_size)
    if embeddings[0].shape[0] < 2:
        raise ValueError("frame consistency needs videos with at least 2 frames")
    per_video = [float((e[:-1] * e[1:]).sum(dim=-1).double().mean()) for e in embeddings]
    protocol = FrameConsistencyProtocol(num_videos=len(per_video), num_frames=int(embeddings[0].shape[0]),
                                        space="clip", clip=clip.protocol)
    return metric_result("frame_consistency_clip", float(np.mean(per_video)), protocol,
                         std=float(np.std(per_video)), per_video=per_video)
