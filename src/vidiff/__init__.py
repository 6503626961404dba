"""vidiff: video diffusion (VideoCrafter, DynamiCrafter, ...) in clean, checkpoint-exact PyTorch.

``from vidiff import TextToVideoPipeline`` works; the names are imported on first use, so ``import vidiff`` (and the
command line's start) stays free of torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "TextToVideoPipeline": "vidiff.pipelines.text_to_video",
    "ImageToVideoPipeline": "vidiff.pipelines.image_to_video",
    "VideoToVideoPipeline": "vidiff.pipelines.video_to_video",
    "UnifiedVideoPipeline": "vidiff.pipelines.unified",
    "ReferenceVideoPipeline": "vidiff.pipelines.reference",
    "CascadedVideoPipeline": "vidiff.pipelines.cascade",
    "TemporalSuperResolutionPipeline": "vidiff.pipelines.temporal_sr",
    "TemporalDecoderAutoencoderKL": "vidiff.models.video_decoder",
    "VideoPipelineOutput": "vidiff.pipelines.base",
    "PipelineError": "vidiff.pipelines.base",
    "UNet3DModel": "vidiff.models.unet3d",
    "NoiseSchedule": "vidiff.diffusion.schedule",
}
__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'vidiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
