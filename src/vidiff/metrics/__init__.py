"""General video and image metrics with pinned protocols: FVD, KVD, FID, IS, CLIPSIM, PSNR, SSIM, frame consistency.

Every metric returns ``{"metric", "value", ..., "protocol"}``; see ``docs/metrics.md``.

Networks are never downloaded: I3D, Inception and CLIP weights are read from local files given by the user.
"""

from vidiff.metrics.clip_score import CLIPEvaluator, clip_frame_consistency, clipsim, load_clip
from vidiff.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from vidiff.metrics.i3d import InceptionI3D, VideoFeatures, extract_i3d_features, fvd, kvd, load_i3d, stack_features
from vidiff.metrics.image_quality import pixel_frame_consistency, psnr, ssim, video_psnr, video_ssim
from vidiff.metrics.inception import (
    FIDInceptionV3,
    ImageFeatures,
    extract_inception_features,
    fid,
    inception_score,
    inception_score_from_logits,
    load_inception,
)
from vidiff.metrics.kernel import KernelDistance, kernel_distance
from vidiff.metrics.protocols import metric_result, save_result, video_frames_as_images

__all__ = [
    "CLIPEvaluator",
    "FIDInceptionV3",
    "ImageFeatures",
    "InceptionI3D",
    "KernelDistance",
    "VideoFeatures",
    "clip_frame_consistency",
    "clipsim",
    "extract_i3d_features",
    "extract_inception_features",
    "feature_statistics",
    "fid",
    "frechet_distance",
    "frechet_distance_from_features",
    "fvd",
    "inception_score",
    "inception_score_from_logits",
    "kernel_distance",
    "kvd",
    "load_clip",
    "load_i3d",
    "load_inception",
    "metric_result",
    "pixel_frame_consistency",
    "psnr",
    "save_result",
    "ssim",
    "stack_features",
    "video_frames_as_images",
    "video_psnr",
    "video_ssim",
]
