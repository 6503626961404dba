"""The public names: ``from vidiff import TextToVideoPipeline`` and friends, imported lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest


def test_top_level_names_resolve_to_the_classes():
    import vidiff
    from vidiff.models.unet3d import UNet3DModel
    from vidiff.pipelines import ImageToVideoPipeline, TextToVideoPipeline, VideoToVideoPipeline
    from vidiff.pipelines.text_to_video import TextToVideoPipeline as Direct

    assert vidiff.TextToVideoPipeline is TextToVideoPipeline is Direct
    assert vidiff.ImageToVideoPipeline is ImageToVideoPipeline and vidiff.VideoToVideoPipeline is VideoToVideoPipeline
    assert vidiff.UNet3DModel is UNet3DModel
    assert set(vidiff.__all__) <= set(dir(vidiff))
    with pytest.raises(AttributeError, match="no attribute 'TextToVideo'"):
        vidiff.TextToVideo  # noqa: B018


def test_importing_vidiff_does_not_import_torch():
    code = "import sys, vidiff; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
