"""Video output: official uint8 conversion, MP4/GIF/contact-sheet writers and the MP4 reader."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import vidiff.utils.video as video_mod
from vidiff.utils.video import (
    batch_to_uint8_frames,
    contact_sheet,
    read_video,
    save_video_outputs,
    video_to_uint8_frames,
    write_contact_sheet,
    write_gif,
    write_mp4,
)


def smooth_video(t: int, h: int, w: int) -> np.ndarray:
    """A moving colour gradient: smooth, so H.264 at crf 18 should reproduce it closely."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    frames = []
    for i in range(t):
        r = 128 + 100 * np.sin(2 * np.pi * (x / w + i / (2 * t)))
        g = 128 + 100 * np.cos(2 * np.pi * (y / h - i / (3 * t)))
        b = 40 + 150 * (x + y) / (h + w)
        frames.append(np.stack([r, g, b], -1))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------- uint8 conversion


def test_uint8_conversion_truncates_like_official() -> None:
    values = torch.tensor([-5.0, -1.0, -0.999, 0.0, 0.5, 0.999, 1.0, 7.0, float("inf"), float("-inf")])
    x = values.view(1, 1, 1, 1, -1).expand(1, 3, 1, 1, -1).clone()
    got = batch_to_uint8_frames(x)[0, 0, 0, :, 0].tolist()
    # (x+1)/2*255 then truncation: 0.999 -> 254.87 -> 254 (rounding would give 255); 0 -> 127.5 -> 127.
    assert got == [0, 0, 0, 127, 191, 254, 255, 255, 255, 0]


def test_uint8_conversion_layouts() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 5, 6, generator=g) * 2.2 - 1.1
    out = batch_to_uint8_frames(x)
    assert out.shape == (2, 4, 5, 6, 3) and out.dtype == torch.uint8
    ref = ((x.clamp(-1, 1) + 1) / 2 * 255).to(torch.uint8)
    assert torch.equal(out, ref.permute(0, 2, 3, 4, 1))
    single = video_to_uint8_frames(x[1])
    assert single.shape == (4, 5, 6, 3) and torch.equal(single, out[1])
    # bf16 input is upcast before the arithmetic, as the official .float() does
    assert torch.equal(video_to_uint8_frames(x[0].bfloat16()), video_to_uint8_frames(x[0].bfloat16().float()))


@pytest.mark.parametrize(
    "fn, arg, match",
    [
        (batch_to_uint8_frames, torch.zeros(3, 4, 5, 6), "5-D"),
        (video_to_uint8_frames, torch.zeros(1, 3, 4, 5, 6), "4-D"),
        (video_to_uint8_frames, torch.zeros(3, 4, 5, 6, dtype=torch.uint8), "floating-point"),
        (video_to_uint8_frames, torch.zeros(4, 4, 5, 6), "3 \\(RGB\\) channels"),
        (batch_to_uint8_frames, torch.zeros(1, 3, 0, 5, 6), "empty"),
        (video_to_uint8_frames, torch.full((3, 1, 2, 2), float("nan")), "NaN"),
        (video_to_uint8_frames, np.zeros((3, 1, 2, 2), np.float32), "torch.Tensor"),
    ],
    ids=["batch-4d", "single-5d", "uint8", "4-channels", "zero-frames", "nan", "numpy"],
)
def test_uint8_conversion_bad_inputs(fn, arg, match) -> None:
    with pytest.raises(ValueError, match=match):
        fn(arg)


# ---------------------------------------------------------------------------------------------- MP4


@pytest.mark.parametrize("h, w", [(32, 48), (33, 35)], ids=["even", "odd"])
def test_mp4_round_trip(tmp_path: Path, h: int, w: int) -> None:
    frames = smooth_video(9, h, w)
    path = write_mp4(torch.from_numpy(frames), tmp_path / "v.mp4", fps=8)
    assert _names(tmp_path) == ["v.mp4"]
    with av.open(str(path)) as c:
        ctx = c.streams.video[0].codec_context
        assert (ctx.name, ctx.pix_fmt) == ("h264", "yuv420p")
    decoded, fps = read_video(path)
    # odd sizes are padded by one replicated row/column (documented); cropping gives the original size back
    assert decoded.shape == (9, h + h % 2, w + w % 2, 3) and decoded.dtype == np.uint8
    assert fps == pytest.approx(8.0)
    err = np.abs(decoded[:, :h, :w].astype(np.int16) - frames.astype(np.int16))
    assert err.mean() < 6, f"mean abs error {err.mean():.2f}/255"
    if h % 2:
        pad_err = np.abs(decoded[:, h, :w].astype(np.int16) - frames[:, h - 1].astype(np.int16))
        assert pad_err.mean() < 6
    if w % 2:
        pad_err = np.abs(decoded[:, :h, w].astype(np.int16) - frames[:, :, w - 1].astype(np.int16))
        assert pad_err.mean() < 6


def test_mp4_fractional_fps_and_single_frame(tmp_path: Path) -> None:
    _, fps = read_video(write_mp4(smooth_video(3, 16, 16), tmp_path / "a.mp4", fps=30000 / 1001))
    assert fps == pytest.approx(29.97, abs=0.01)
    decoded, _ = read_video(write_mp4(smooth_video(1, 16, 16), tmp_path / "b.mp4", fps=24))
    assert decoded.shape == (1, 16, 16, 3)


def test_mp4_falls_back_to_mpeg4_with_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_codec = av.codec.Codec

    def no_h264(name: str, mode: str = "r"):
        if name in ("libx264", "h264"):
            raise ValueError(f"unknown codec {name}")
        return real_codec(name, mode)

    monkeypatch.setattr(av.codec, "Codec", no_h264)
    frames = smooth_video(4, 32, 32)
    with pytest.warns(RuntimeWarning, match="H.264"):
        path = write_mp4(frames, tmp_path / "v.mp4", fps=8)
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "mpeg4"
    decoded, _ = read_video(path)
    assert decoded.shape == frames.shape
    assert np.abs(decoded.astype(np.int16) - frames).mean() < 6


def test_mp4_failure_leaves_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "v.mp4"
    target.write_bytes(b"previous")
    calls = {"n": 0}
    real = av.VideoFrame.from_ndarray

    def crash_on_third(arr, format):  # noqa: A002 - PyAV's keyword
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("encoder died")
        return real(arr, format=format)

    monkeypatch.setattr(av.VideoFrame, "from_ndarray", crash_on_third)
    with pytest.raises(RuntimeError, match="encoder died"):
        write_mp4(smooth_video(5, 16, 16), target, fps=8)
    assert target.read_bytes() == b"previous"
    assert _names(tmp_path) == ["v.mp4"]


@pytest.mark.parametrize(
    "frames, kwargs, match",
    [
        (np.zeros((2, 8, 8), np.uint8), {}, r"\(t, h, w, 3\)"),
        (np.zeros((2, 8, 8, 4), np.uint8), {}, r"\(t, h, w, 3\)"),
        (np.zeros((2, 8, 8, 3), np.float32), {}, "uint8"),
        (torch.zeros(2, 8, 8, 3), {}, "uint8"),
        (np.zeros((0, 8, 8, 3), np.uint8), {}, "zero frames"),
        (np.zeros((2, 0, 8, 3), np.uint8), {}, "empty frame size"),
        ([[1, 2, 3]], {}, "numpy array or torch tensor"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"fps": 0}, "fps"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"fps": float("nan")}, "fps"),
        (np.zeros((2, 8, 8, 3), np.uint8), {"name": "v.avi"}, "must end in"),
    ],
    ids=["3d", "4-channels", "float-numpy", "float-tensor", "zero-frames", "zero-height", "list", "fps0", "fps-nan", "suffix"],
)
def test_mp4_bad_inputs(tmp_path: Path, frames, kwargs, match) -> None:
    with pytest.raises(ValueError, match=match):
        write_mp4(frames, tmp_path / kwargs.get("name", "v.mp4"), fps=kwargs.get("fps", 8))
    assert _names(tmp_path) == []


def test_read_video_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video at all" * 10)
    with pytest.raises(ValueError, match="cannot open"):
        read_video(tmp_path / "junk.mp4")


# ---------------------------------------------------------------------------------------------- GIF / sheet / bundle


def test_gif(tmp_path: Path) -> None:
    frames = smooth_video(6, 20, 24)
    path = write_gif(frames, tmp_path / "v.gif", fps=10)
    with Image.open(path) as im:
        assert im.n_frames == 6 and im.size == (24, 20)
        assert im.info["loop"] == 0 and im.info["duration"] == 100
        im.seek(3)
        err = np.abs(np.asarray(im.convert("RGB")).astype(np.int16) - frames[3])
        assert err.mean() < 8  # palette quantisation of a smooth gradient
    assert _names(tmp_path) == ["v.gif"]
    with pytest.raises(ValueError, match=".gif"):
        write_gif(frames, tmp_path / "v.png", fps=10)


def test_contact_sheet_layout() -> None:
    a, b = smooth_video(5, 10, 12), smooth_video(5, 10, 12)[::-1].copy()
    sheet = contact_sheet([a, b], columns=3, padding=2)
    assert sheet.shape == (2 * 10 + 2, 3 * 12 + 2 * 2, 3)
    # evenly spaced frames 0, 2, 4 across; one row per video
    assert np.array_equal(sheet[0:10, 0:12], a[0])
    assert np.array_equal(sheet[0:10, 14:26], a[2])
    assert np.array_equal(sheet[0:10, 28:40], a[4])
    assert np.array_equal(sheet[12:22, 28:40], b[4])
    assert not sheet[10:12].any() and not sheet[:, 12:14].any()
    # a batch (n, t, h, w, 3) tensor, all frames, no padding
    batch = torch.from_numpy(np.stack([a, b]))
    assert contact_sheet(batch, padding=0).shape == (20, 60, 3)


def test_contact_sheet_errors() -> None:
    with pytest.raises(ValueError, match="one frame size"):
        contact_sheet([smooth_video(2, 8, 8), smooth_video(2, 8, 10)])
    with pytest.raises(ValueError, match="columns"):
        contact_sheet(smooth_video(2, 8, 8), columns=0)
    with pytest.raises(ValueError, match="at least one"):
        contact_sheet([])
    with pytest.raises(ValueError, match="video 1"):
        contact_sheet([smooth_video(2, 8, 8), np.zeros((2, 8, 8, 3), np.float32)])


def test_write_contact_sheet_png(tmp_path: Path) -> None:
    frames = smooth_video(16, 10, 12)
    path = write_contact_sheet(frames, tmp_path / "s.png", columns=4, padding=0)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (48, 10)
        assert np.array_equal(np.asarray(im)[:, 36:48], frames[15])


def test_save_video_outputs(tmp_path: Path) -> None:
    frames = smooth_video(10, 16, 20)
    out = tmp_path / "samples" / "clip.mp4"
    paths = save_video_outputs(frames, out, fps=8)
    assert paths == [out] and _names(out.parent) == ["clip.mp4"]
    paths = save_video_outputs(frames, out, fps=8, gif=True, contact_sheet=True)
    assert paths == [out, out.with_name("clip.gif"), out.with_name("clip_sheet.png")]
    assert _names(out.parent) == ["clip.gif", "clip.mp4", "clip_sheet.png"]
    assert read_video(out)[0].shape == (10, 16, 20, 3)
    with Image.open(paths[2]) as im:  # default: at most 8 columns
        assert im.size == (8 * 20 + 7 * 2, 16)
    with pytest.raises(ValueError, match=".mp4"):
        save_video_outputs(frames, tmp_path / "clip.gif", fps=8)


def test_encoder_choice_is_h264_here() -> None:
    # the PyPI av wheels bundle libx264; if this fails the install lost H.264 support
    assert video_mod._video_encoder() in ("libx264", "h264")
