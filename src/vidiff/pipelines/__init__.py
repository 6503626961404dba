"""Generation pipelines over a model folder: text-to-video, image-to-video, video-to-video (editing), UniVid's
unified text/image-to-video and VideoGen's reference-guided text-to-video."""

from vidiff.pipelines.base import PipelineError, VideoPipelineOutput
from vidiff.pipelines.cascade import CascadedVideoPipeline
from vidiff.pipelines.image_to_video import ImageToVideoPipeline
from vidiff.pipelines.reference import ReferenceVideoPipeline
from vidiff.pipelines.temporal_sr import TemporalSuperResolutionPipeline
from vidiff.pipelines.text_to_video import TextToVideoPipeline
from vidiff.pipelines.unified import UnifiedVideoPipeline
from vidiff.pipelines.video_to_video import VideoToVideoPipeline

__all__ = ["CascadedVideoPipeline", "ImageToVideoPipeline", "PipelineError", "ReferenceVideoPipeline",
           "TemporalSuperResolutionPipeline", "TextToVideoPipeline", "UnifiedVideoPipeline", "VideoPipelineOutput",
           "VideoToVideoPipeline"]
