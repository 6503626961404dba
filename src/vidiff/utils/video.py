"""Turning model output into frames and files: uint8 conversion, MP4 / GIF / contact-sheet writers, MP4 reading.

Layouts are part of the function names because a 4-D tensor alone is ambiguous:

* model output (decoded latents) is float in [-1, 1], ``(b, c, t, h, w)`` or ``(c, t, h, w)`` with c = 3 (RGB);
* frames are uint8 ``(t, h, w, 3)`` (numpy array or CPU tensor), which is what every writer takes.

All writers are atomic: they write a hidden temporary file in the target folder (with the real extension, which PyAV and
Pillow use to pick the format) and rename it into place.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

from vidiff.utils.io import atomic_write_with

__all__ = [
    "batch_to_uint8_frames",
    "contact_sheet",
    "pad_to_even",
    "read_video",
    "save_video_outputs",
    "video_to_uint8_frames",
    "write_contact_sheet",
    "write_gif",
    "write_mp4",
]

FramesLike = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------------------------------
# float model output -> uint8 frames


def _float_to_uint8(x: torch.Tensor) -> torch.Tensor:
    # Same op order as the official save_videos: clamp in float32, (x + 1) / 2, * 255, cast (truncates toward zero).
    x = torch.clamp(x.float(), -1.0, 1.0)
    x = (x + 1.0) / 2.0
    return (x * 255).to(torch.uint8)


def _check_float_video(video: torch.Tensor, ndim: int, layout: str) -> None:
    if not isinstance(video, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor {layout}, got {type(video).__name__}")
    if video.ndim != ndim:
        raise ValueError(f"expected a {ndim}-D video tensor {layout}, got shape {tuple(video.shape)}")
    if not video.is_floating_point():
        raise ValueError(
            f"expected a floating-point video in [-1, 1] {layout}, got dtype {video.dtype}; "
            "uint8 frames (t, h, w, 3) can be passed to the writers directly"
        )
    c_dim = 1 if ndim == 5 else 0
    if video.shape[c_dim] != 3:
        raise ValueError(f"expected 3 (RGB) channels in dim {c_dim} of {layout}, got shape {tuple(video.shape)}")
    if video.numel() == 0:
        raise ValueError(f"video {layout} is empty: shape {tuple(video.shape)}")
    if torch.isnan(video).any():
        raise ValueError("video contains NaN values; the model output is broken (check dtype / weights)")


def batch_to_uint8_frames(videos: torch.Tensor) -> torch.Tensor:
    """Float ``(b, c, t, h, w)`` in [-1, 1] → uint8 ``(b, t, h, w, c)`` on the CPU, exactly as the official scripts.

    Values are clamped to [-1, 1] and ``(x + 1) / 2 * 255`` is *truncated* (0.999 → 254), not rounded, so our files match
    the official ones byte for byte before encoding.
    """
    _check_float_video(videos, 5, "(b, c, t, h, w)")
    return _float_to_uint8(videos.detach()).permute(0, 2, 3, 4, 1).contiguous().cpu()


def video_to_uint8_frames(video: torch.Tensor) -> torch.Tensor:
    """Float ``(c, t, h, w)`` in [-1, 1] → uint8 ``(t, h, w, c)``; see :func:`batch_to_uint8_frames`."""
    _check_float_video(video, 4, "(c, t, h, w)")
    return _float_to_uint8(video.detach()).permute(1, 2, 3, 0).contiguous().cpu()


def _as_frames(frames: FramesLike, what: str = "frames") -> np.ndarray:
    """Validate uint8 ``(t, h, w, 3)`` frames and return them as a C-contiguous numpy array."""
    if isinstance(frames, torch.Tensor):
        if frames.dtype != torch.uint8:
            raise ValueError(
                f"{what} must be uint8 (t, h, w, 3), got dtype {frames.dtype}; "
                "convert float model output with video_to_uint8_frames first"
            )
        frames = frames.detach().cpu().numpy()
    elif not isinstance(frames, np.ndarray):
        raise ValueError(f"{what} must be a numpy array or torch tensor of uint8 (t, h, w, 3), got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(
            f"{what} must be uint8 (t, h, w, 3), got dtype {frames.dtype}; "
            "convert float model output with video_to_uint8_frames first"
        )
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{what} must have shape (t, h, w, 3), got {tuple(frames.shape)}")
    t, h, w, _ = frames.shape
    if t == 0:
        raise ValueError(f"{what} has zero frames")
    if h == 0 or w == 0:
        raise ValueError(f"{what} has an empty frame size {h}x{w}")
    return np.ascontiguousarray(frames)


def _check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive finite number, got {fps!r}")
    return float(fps)


def _check_suffix(path: Path, allowed: tuple[str, ...], what: str) -> None:
    if path.suffix.lower() not in allowed:
        raise ValueError(f"{what} path must end in {' or '.join(allowed)}, got {path}")


# --------------------------------------------------------------------------------------------------------------------
# MP4


def pad_to_even(frames: np.ndarray) -> np.ndarray:
    """Pad odd heights/widths by repeating the last row/column, because yuv420p subsamples chroma by 2 in each axis."""
    _, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _video_encoder() -> str:
    import av

    for name in ("libx264", "h264"):
        try:
            codec = av.codec.Codec(name, "w")
        except Exception:  # PyAV raises UnknownCodecError (a ValueError subclass in some versions, not in others)
            continue
        if codec.is_encoder:
            return name
    try:
        av.codec.Codec("mpeg4", "w")
    except Exception as err:
        raise RuntimeError(
            "this PyAV/FFmpeg build has neither an H.264 (libx264) nor an MPEG-4 encoder; "
            "install the PyPI 'av' wheels, which bundle libx264"
        ) from err
    warnings.warn(
        "PyAV has no H.264 encoder (libx264); writing MPEG-4 Part 2 video instead, which plays in fewer browsers",
        RuntimeWarning,
        stacklevel=3,
    )
    return "mpeg4"


def write_mp4(frames: FramesLike, path: str | os.PathLike, fps: float, crf: int = 18) -> Path:
    """Write uint8 ``(t, h, w, 3)`` RGB frames as H.264 (libx264, yuv420p, ``crf``) in an MP4 container.

    yuv420p needs an even width and height: an odd size is padded by one replicated last row / column, so the file is
    ``(h + h % 2) × (w + w % 2)`` and cropping it back to ``h × w`` gives the original content. Falls back to MPEG-4
    Part 2 with a warning if the PyAV build has no H.264 encoder.
    """
    import av

    arr = pad_to_even(_as_frames(frames))
    path = Path(path)
    _check_suffix(path, (".mp4", ".mov", ".mkv"), "write_mp4")
    rate = Fraction(_check_fps(fps)).limit_denominator(1001)
    if not 0 <= crf <= 51:
        raise ValueError(f"crf must be in [0, 51] (lower is better quality), got {crf}")
    codec_name = _video_encoder()
    _, h, w, _ = arr.shape

    def write(tmp: Path) -> None:
        with av.open(str(tmp), mode="w") as container:
            stream = container.add_stream(codec_name, rate=rate)
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            if codec_name == "mpeg4":
                stream.bit_rate = int(min(50e6, max(2e6, 0.6 * w * h * float(rate))))
            else:
                stream.options = {"crf": str(crf)}
            for frame_arr in arr:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame_arr, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)

    return atomic_write_with(path, write)


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """Decode every frame of the first video stream as uint8 RGB ``(t, h, w, 3)`` and return it with the frame rate."""
    import av

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as err:
        raise ValueError(f"cannot open {path} as a video: {err}") from err
    with container:
        if not container.streams.video:
            raise ValueError(f"{path} has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        frames = [f.to_ndarray(format="rgb24", threads=1) for f in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path} has a video stream but no decodable frames")
    return np.stack(frames), float(rate) if rate else float("nan")


# --------------------------------------------------------------------------------------------------------------------
# GIF and contact sheet


def write_gif(frames: FramesLike, path: str | os.PathLike, fps: float) -> Path:
    """Write uint8 ``(t, h, w, 3)`` frames as an endlessly looping GIF (Pillow, adaptive palette per frame).

    GIF stores delays in 1/100 s, so the frame rate is approximated. Note that Pillow merges *identical consecutive*
    frames into one longer frame, so a static stretch yields fewer GIF frames (same playback duration).
    """
    from PIL import Image

    arr = _as_frames(frames)
    path = Path(path)
    _check_suffix(path, (".gif",), "write_gif")
    duration_ms = max(10, round(1000.0 / _check_fps(fps) / 10) * 10)
    images = [Image.fromarray(f) for f in arr]

    def write(tmp: Path) -> None:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration_ms, loop=0)

    return atomic_write_with(path, write)


def write_png(frames: FramesLike, path: str | os.PathLike) -> Path:
    """Write the single frame of uint8 ``(1, h, w, 3)`` frames (a text-to-image result) as a PNG."""
    from PIL import Image

    arr = _as_frames(frames)
    path = Path(path)
    _check_suffix(path, (".png",), "write_png")
    if arr.shape[0] != 1:
        raise ValueError(f"a PNG holds one image, got {arr.shape[0]} frames (write an .mp4 instead)")
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_with(path, lambda tmp: Image.fromarray(arr[0]).save(tmp, format="PNG"))


def _subsample(arr: np.ndarray, columns: int | None) -> np.ndarray:
    t = arr.shape[0]
    if columns is None or columns >= t:
        return arr
    idx = np.unique(np.round(np.linspace(0, t - 1, columns)).astype(np.int64))
    return arr[idx]


def contact_sheet(
    videos: FramesLike | Sequence[FramesLike], columns: int | None = None, padding: int = 2
) -> np.ndarray:
    """Grid of frames, one row per video and frames across, as a uint8 ``(H, W, 3)`` image.

    ``videos`` is one video ``(t, h, w, 3)``, a batch ``(n, t, h, w, 3)`` or a list of ``(t, h, w, 3)`` videos of one
    frame size. ``columns`` keeps at most that many evenly spaced frames per row (first and last included).
    Tiles are separated by ``padding`` black pixels (none at the border); short rows are filled with black.
    """
    if columns is not None and (isinstance(columns, bool) or not isinstance(columns, int) or columns < 1):
        raise ValueError(f"columns must be a positive int or None, got {columns!r}")
    if not isinstance(padding, int) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")
    if isinstance(videos, (np.ndarray, torch.Tensor)) and videos.ndim == 5:
        videos = list(videos)
    elif isinstance(videos, (np.ndarray, torch.Tensor)):
        videos = [videos]
    elif not isinstance(videos, Sequence) or isinstance(videos, (str, bytes)):
        raise ValueError(f"videos must be frames (t, h, w, 3), a batch (n, t, h, w, 3) or a list, got {type(videos).__name__}")
    if len(videos) == 0:
        raise ValueError("contact sheet needs at least one video")
    rows = [_subsample(_as_frames(v, f"video {i}"), columns) for i, v in enumerate(videos)]
    sizes = {r.shape[1:3] for r in rows}
    if len(sizes) != 1:
        raise ValueError(f"all videos of a contact sheet must have one frame size, got {sorted(sizes)}")
    (h, w) = sizes.pop()
    n_cols = max(r.shape[0] for r in rows)
    sheet = np.zeros((len(rows) * h + (len(rows) - 1) * padding, n_cols * w + (n_cols - 1) * padding, 3), np.uint8)
    for i, row in enumerate(rows):
        for j, frame in enumerate(row):
            y, x = i * (h + padding), j * (w + padding)
            sheet[y : y + h, x : x + w] = frame
    return sheet


def write_contact_sheet(
    videos: FramesLike | Sequence[FramesLike],
    path: str | os.PathLike,
    columns: int | None = None,
    padding: int = 2,
) -> Path:
    """Write :func:`contact_sheet` as a PNG: a quick look at a whole video (or a batch) in one image."""
    from PIL import Image

    path = Path(path)
    _check_suffix(path, (".png",), "write_contact_sheet")
    image = Image.fromarray(contact_sheet(videos, columns=columns, padding=padding))
    return atomic_write_with(path, lambda tmp: image.save(tmp, format="PNG"))


def save_video_outputs(
    video_uint8: FramesLike,
    out_path: str | os.PathLike,
    fps: float,
    gif: bool = False,
    contact_sheet: bool = False,
    sheet_columns: int | None = 8,
) -> list[Path]:
    """Write ``out_path`` (.mp4) and optionally ``<stem>.gif`` and ``<stem>_sheet.png`` next to it; return the paths.

    ``video_uint8`` is uint8 ``(t, h, w, 3)``. Missing parent folders are created.
    """
    arr = _as_frames(video_uint8, "video_uint8")
    out_path = Path(out_path)
    _check_suffix(out_path, (".mp4",), "save_video_outputs")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    written = [write_mp4(arr, out_path, fps)]
    if gif:
        written.append(write_gif(arr, out_path.with_suffix(".gif"), fps))
    if contact_sheet:
        written.append(write_contact_sheet(arr, out_path.with_name(f"{out_path.stem}_sheet.png"), columns=sheet_columns))
    return written
