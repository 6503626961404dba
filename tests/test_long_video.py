"""Long videos by co-denoising overlapping windows (Gen-L-Video fusion, FreeNoise noise rescheduling)."""

from __future__ import annotations

import pytest
import torch

from vidiff.cli import main as cli_main
from vidiff.cli_common import EMBEDDED_MODELS
from vidiff.diffusion.long_video import reschedule_noise, window_starts, window_weights, windowed_denoiser


def test_windows_cover_every_frame_and_end_at_the_last():
    assert window_starts(16, 16, 4) == [0]
    assert window_starts(10, 16, 4) == [0]
    assert window_starts(40, 16, 4) == [0, 4, 8, 12, 16, 20, 24]
    assert window_starts(30, 16, 8) == [0, 8, 14]  # the last window is moved back to end at frame 29
    w = window_weights(16)
    assert w.min() > 0 and torch.equal(w, w.flip(0)) and w[7] == w.max()
    with pytest.raises(ValueError, match="must not exceed"):
        window_starts(40, 8, 9)


def test_fusion_is_exact_for_a_frame_local_model_and_mixes_windows_otherwise():
    x, t = torch.randn(2, 3, 37, 4, 4), torch.tensor([500, 500])
    local = lambda v, tt: torch.tanh(v) * 2 + 1  # noqa: E731  (each frame on its own)
    assert torch.allclose(windowed_denoiser(local, 16, 4)(x, t), local(x, t), atol=1e-6)
    # a model that sees its whole input: each frame's output is the weighted mean over its windows
    seen = []

    def global_mean(v, tt):
        seen.append(v.shape[2])
        return v.mean(dim=2, keepdim=True).expand_as(v)

    out = windowed_denoiser(global_mean, 16, 8)(x, t)
    assert seen == [16, 16, 16, 16]  # windows at 0, 8, 16, 21
    means = [x[:, :, s:s + 16].mean(dim=2) for s in (0, 8)]
    w = window_weights(16)
    # frame 10 is in windows 0 (position 10) and 8 (position 2)
    expected = (means[0] * w[10] + means[1] * w[2]) / (w[10] + w[2])
    assert torch.allclose(out[:, :, 10], expected, atol=1e-6)
    short = torch.randn(1, 3, 16, 4, 4)
    assert torch.equal(windowed_denoiser(global_mean, 16, 4)(short, t[:1]), global_mean(short, t[:1]))


def test_noise_rescheduling_repeats_the_first_window_shuffled():
    noise = torch.randn(1, 2, 40, 3, 3)
    out = reschedule_noise(noise, 16, 4, torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :, :16], noise[:, :, :16])
    for k, start in enumerate(range(16, 40, 4)):
        src = (k % 4) * 4
        block = out[:, :, start:start + 4]
        originals = noise[:, :, src:src + 4]
        # the same frames in some order
        matches = [[torch.equal(block[:, :, i], originals[:, :, j]) for j in range(4)] for i in range(4)]
        assert all(sum(row) == 1 for row in matches) and all(sum(col) == 1 for col in zip(*matches))
    assert torch.equal(reschedule_noise(noise[:, :, :16], 16, 4), noise[:, :, :16])


def test_pipeline_long_video_is_unchanged_up_to_the_window_and_spans_all_frames():
    from vidiff.pipelines.base import PipelineError
    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(EMBEDDED_MODELS / "shapes_t2v")
    kw = dict(num_inference_steps=4, seed=0, output_type="latent", progress=False, sampler="dpmpp_2m")
    plain = pipe("a red circle moving left", **kw).frames
    assert torch.equal(pipe("a red circle moving left", window=16, **kw).frames, plain)  # 16 frames: plain path
    long = pipe("a red circle moving left", num_frames=28, window=16, window_stride=4, **kw).frames
    assert long.shape[2] == 28 and torch.isfinite(long).all()
    # the first window's noise reappears later, so later frames resemble earlier ones more than fresh noise would
    fresh = pipe("a red circle moving left", num_frames=28, window=16, window_stride=4, noise_rescheduling=False,
                 **kw).frames
    assert not torch.equal(long, fresh)
    with pytest.raises(PipelineError, match="cannot be combined with window"):
        pipe("a red circle", num_frames=28, window=16, deep_cache=2, **kw)
    with pytest.raises(PipelineError, match="window_stride needs window"):
        pipe("a red circle", window_stride=4, **kw)


def test_cli_long_video(tmp_path, capsys):
    from vidiff.utils.video import read_video

    out = tmp_path / "long.mp4"
    assert cli_main(["generate", "a red circle moving left", "--frames", "24", "--window", "16", "--steps", "3",
                     "--sampler", "dpmpp_2m", "--threads", "1", "-o", str(out)]) == 0
    assert read_video(str(out))[0].shape[0] == 24
    assert "frames past the trained length" not in capsys.readouterr().err
    assert cli_main(["generate", "a red circle", "--window-stride", "4", "-o", str(tmp_path / "x.mp4")]) != 0
    assert cli_main(["generate", "a red circle", "--window", "8", "--window-stride", "9",
                     "-o", str(tmp_path / "y.mp4")]) != 0
    err = capsys.readouterr().err
    assert "need --window N" in err and "must not exceed --window (8)" in err and "Traceback" not in err


def test_image_to_video_extends_autoregressively_from_each_last_frame():
    from vidiff.pipelines.base import PipelineError
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    pipe = ImageToVideoPipeline.from_pretrained(EMBEDDED_MODELS / "shapes_i2v")
    image = str(EMBEDDED_MODELS.parent / "examples" / "red_circle.png")
    kw = dict(num_inference_steps=3, seed=0, progress=False, sampler="dpmpp_2m", output_type="pt")
    plain = pipe(image, "a red circle moving right", **kw)
    assert plain.seam_psnr is None
    same = pipe(image, "a red circle moving right", window=16, **kw)
    assert torch.equal(same.frames, plain.frames)  # within one window: the plain path
    long = pipe(image, "a red circle moving right", num_frames=40, window=16, **kw)
    assert long.frames.shape[2] == 40 and long.latents.shape[2] == 40
    # the first clip is the plain clip (same generator stream); the next ones continue from its last frame
    assert torch.equal(long.frames[:, :, :16], plain.frames)
    assert long.seam_psnr.shape == (1, 2) and (long.seam_psnr > 20).all()
    with pytest.raises(PipelineError, match="cannot be combined with loop"):
        pipe(image, "a red circle", num_frames=40, window=16, loop=True, **kw)


def test_cli_animate_long_video_reports_its_seams(tmp_path, capsys):
    out = tmp_path / "long.mp4"
    image = str(EMBEDDED_MODELS.parent / "examples" / "red_circle.png")
    assert cli_main(["animate", image, "a red circle moving right", "--frames", "24", "--window", "16", "--steps",
                     "3", "--sampler", "dpmpp_2m", "--threads", "1", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "seams: each clip's first frame against the frame it continues:" in printed and " dB" in printed
    assert cli_main(["animate", image, "x", "--window", "1", "-o", str(tmp_path / "x.mp4")]) != 0
    assert "at least 2 frames" in capsys.readouterr().err
