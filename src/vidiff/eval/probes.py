"""Analytic prompt-adherence probes for shapes-world videos: does a generated clip show what its prompt says?

Every probe reads only the generated pixels, the prompt and the world's rules (palettes, sizes, speeds); it never sees
the ground truth of the clip. The pipeline:

1. **Segmentation, per frame.** The background colour is the per-channel median of the frame border (objects never touch
   the border in this world). Foreground pixels are far from it in RGB. Connected foreground blobs are objects; a blob
   whose confident pixels fall on two palette colours (two touching objects) is split by colour. Each object gets a
   soft coverage (the projection of each pixel onto the line from the background to the object's mean colour), so area,
   centroid and bounding box are sub-pixel accurate even for anti-aliased edges. Blobs that cannot be an object (too
   small, too large, or not one colour) are dropped, so noise and blank frames yield no object at all.
2. **Tracks.** Objects are linked across frames by their palette colour; a two-object prompt is matched to the two
   largest tracks by the assignment that agrees with it most (either way round).
3. **Probes** on the matched tracks (see :data:`PROBE_NAMES` and ``docs/probes.md``): colour, shape, motion, size,
   speed, background, temporal consistency, flicker and, for image-to-video, first-frame fidelity and identity kept.

The probes are validated by ``tests/test_probes.py``: ~100 % on ground-truth clips, near chance on corrupted ones.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from vidiff.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    SIZES,
    SPEEDS,
    CaptionAttributes,
    ObjectAttributes,
    ShapesWorld,
    ShapesWorldConfig,
    parse_caption,
    shape_area,
    unknown_words,
)
from vidiff.metrics.image_quality import psnr, ssim

__all__ = [
    "PROBE_NAMES",
    "BatchProbeResult",
    "DetectedObject",
    "ProbeResult",
    "ProbeScore",
    "ProbeThresholds",
    "Track",
    "VideoAnalysis",
    "analyse_video",
    "classify_shape",
    "confusion_matrix",
    "format_confusion",
    "nearest_colour",
    "parse_prompt",
    "probe_batch",
    "probe_video",
    "segment_frame",
]

PROBE_NAMES: tuple[str, ...] = (
    "colour",
    "shape",
    "motion",
    "size",
    "speed",
    "background",
    "consistency",
    "flicker",
    "second_colour",
    "second_shape",
    "second_motion",
    "first_frame",
    "identity",
)
# Probes that decide whether a video obeys its prompt (``ProbeResult.passed``); size / speed / background are reported
# but models are not required to get them right to "pass".
CORE_PROBES: tuple[str, ...] = (
    "colour",
    "shape",
    "motion",
    "consistency",
    "flicker",
    "second_colour",
    "second_shape",
    "second_motion",
    "first_frame",
    "identity",
)

_PALETTE_NAMES = tuple(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _PALETTE_NAMES], dtype=np.float64)  # (K, 3) in [0, 1]
_BG_NAMES = tuple(BACKGROUNDS)
_BG_PALETTE = np.array([BACKGROUNDS[b] for b in _BG_NAMES], dtype=np.float64)
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity
_CONFIDENT = 0.6  # a pixel at >= 60 % of the way from the background to a palette colour votes for that colour


@dataclass(frozen=True)
class ProbeThresholds:
    """Decision thresholds; the defaults are the validated ones (see ``docs/probes.md`` for why each has its value).

    Colours are in [0, 1] RGB units, flicker in uint8 levels, distances in pixels unless a name says otherwise.
    """

    foreground: float = 0.15  # RGB distance from the background above which a pixel is foreground
    core_fraction: float = 0.75  # object pixels this close to full strength define its colour
    split_fraction: float = 0.15  # a blob holding >= this fraction of confident pixels of a 2nd colour is split
    min_area_factor: float = 0.25  # object area must lie in [factor * smallest, max factor * largest] world area
    max_area_factor: float = 4.0
    max_colour_spread: float = 0.12  # RMS spread of an object's confident pixels around their mean colour
    triangle_skew: float = 0.25  # |vertical skewness| at or above this is a triangle (triangle -0.57, others 0)
    fill_triangle_circle: float = 0.64  # fill ratio (area / box area) below this is a triangle too (triangle 1/2)
    fill_circle_square: float = 0.9  # circle pi/4 < 0.9 < square 1
    still_fraction: float = 0.5  # |net displacement| below this fraction of the slowest expected one means "still"
    min_monotonicity: float = 0.5  # Kendall tau of the position along the direction of motion vs time
    min_presence: float = 0.9  # fraction of frames in which the object must be found
    max_fragment_frames: float = 0.1  # fraction of frames allowed to hold a second sizeable piece of the object
    max_area_cv: float = 0.2  # coefficient of variation of the object's area over frames
    max_colour_std: float = 0.05  # per-channel std of the object's colour over frames
    jump_radius_fraction: float = 0.3  # a step deviating from the typical step by this x small radius is a jump
    max_jumps: int = 2
    min_shape_agreement: float = 0.8  # fraction of frames whose shape is the object's majority shape
    max_background_flicker: float = 6.0  # mean |frame-to-frame change| of background pixels, uint8 levels
    max_object_flicker: float = 6.0  # mean |frame-to-frame change| of the object's mean colour, uint8 levels
    min_first_frame_psnr: float = 22.0  # dB
    min_first_frame_ssim: float = 0.75
    first_frame_shift_fraction: float = 0.3  # frame-0 objects within this x small radius of the conditioning image's
    max_first_frame_area_ratio: float = 1.33  # ... and their area within this factor
    identity_tail_fraction: float = 0.25  # "last frames" = this fraction of the clip (at least 3 frames)


@dataclass(frozen=True)
class ProbeScore:
    """One probe on one video: ``expected`` comes from the prompt, ``detected`` from the pixels."""

    name: str
    passed: bool
    score: float
    expected: Any
    detected: Any
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Strict-JSON-safe: a non-finite number (PSNR of identical images) becomes the string "inf" / "-inf" / "nan"."""
        return _json_safe(
            {
                "name": self.name,
                "passed": self.passed,
                "score": self.score,
                "expected": self.expected,
                "detected": self.detected,
                "reason": self.reason,
            }
        )


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer, np.bool_)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


@dataclass(frozen=True)
class DetectedObject:
    """One object in one frame. ``rgb`` is its colour (median of its strong pixels, a mean that edge pixels mixed with a
    touching object cannot drag), ``alpha`` its soft coverage (H, W) in [0, 1]; ``centroid`` is (x, y) in pixels."""

    colour: str
    rgb: tuple[float, float, float]
    colour_spread: float
    pixels: int
    area: float
    centroid: tuple[float, float]
    width: float
    height: float
    fill: float
    skew: float
    shape: str
    alpha: np.ndarray = field(repr=False)
    support: np.ndarray = field(repr=False)  # bool (H, W): pixels attributed to the object (incl. its faint rim)


@dataclass
class Track:
    """The objects of one palette colour across frames (``None`` where absent) plus what they add up to."""

    colour: str
    objects: list[DetectedObject | None]
    fragments: list[int]  # per frame: number of extra sizeable pieces of this colour
    shape: str = "none"
    motion: str = "none"
    displacement: tuple[float, float] = (0.0, 0.0)
    monotonicity: float = 0.0
    jumps: int = 0

    @property
    def presence(self) -> float:
        return sum(o is not None for o in self.objects) / max(len(self.objects), 1)

    @property
    def total_area(self) -> float:
        return sum(o.area for o in self.objects if o is not None)

    def present(self) -> list[tuple[int, DetectedObject]]:
        return [(t, o) for t, o in enumerate(self.objects) if o is not None]


@dataclass
class VideoAnalysis:
    """Everything the probes read from a clip: per-frame backgrounds and objects, and tracks by colour."""

    frames: np.ndarray  # (T, H, W, 3) float64 in [0, 1]
    backgrounds: np.ndarray  # (T, 3)
    objects: list[list[DetectedObject]]
    tracks: list[Track]  # sorted by total area, largest first
    background: str


# --------------------------------------------------------------------------------------------------------------------
# input checks


def _as_uint8_frames(video: Any, what: str) -> np.ndarray:
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    if not isinstance(video, np.ndarray):
        raise ValueError(f"{what} must be a uint8 numpy array or torch tensor (T, H, W, 3), got {type(video).__name__}")
    if video.dtype != np.uint8:
        raise ValueError(
            f"{what} must be uint8 (T, H, W, 3), got dtype {video.dtype}; convert float model output in [-1, 1] with "
            "vidiff.utils.video.video_to_uint8_frames first"
        )
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"{what} must have shape (T, H, W, 3), got {tuple(video.shape)}")
    if min(video.shape[:3]) < 1:
        raise ValueError(f"{what} is empty: shape {tuple(video.shape)}")
    return video


def _as_uint8_image(image: Any, what: str) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    if isinstance(image, np.ndarray) and image.ndim == 3:
        image = image[None]
    return _as_uint8_frames(image, what)[0]


def parse_prompt(prompt: str) -> CaptionAttributes:
    """The prompt's attributes, or a ValueError that says why it is not a shapes-world caption."""
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
    attrs = parse_caption(prompt)
    if attrs is None:
        unknown = unknown_words(prompt)
        hint = f" (words outside the world's vocabulary: {', '.join(unknown)})" if unknown else ""
        raise ValueError(
            f"cannot probe against {prompt!r}: it is not an unambiguous shapes-world caption{hint}; "
            "use e.g. 'a red circle moving left' or 'a blue square standing still and a small green triangle moving up'"
        )
    return attrs


# --------------------------------------------------------------------------------------------------------------------
# segmentation


def nearest_colour(rgb: Sequence[float] | np.ndarray) -> str:
    """Name of the palette colour nearest (Euclidean, RGB in [0, 1]) to ``rgb``."""
    d = np.linalg.norm(_PALETTE - np.asarray(rgb, dtype=np.float64)[None], axis=1)
    return _PALETTE_NAMES[int(np.argmin(d))]


def _nearest_background(rgb: np.ndarray) -> str:
    return _BG_NAMES[int(np.argmin(np.linalg.norm(_BG_PALETTE - rgb[None], axis=1)))]


def classify_shape(fill: float, skew: float, thresholds: ProbeThresholds | None = None) -> str:
    """Shape from two blur-robust numbers of the soft mask.

    ``skew`` (skewness of the vertical mass distribution) is -0.57 for the world's up-pointing triangle and 0 for the
    symmetric shapes, and blur barely moves it (-0.4 at a 1 px Gaussian blur of the smallest triangle), so it decides
    triangles. ``fill`` (area / box area; triangle 1/2, circle pi/4, square 1) separates circles from squares.
    """
    th = thresholds or ProbeThresholds()
    if abs(skew) >= th.triangle_skew or fill < th.fill_triangle_circle:
        return "triangle"
    if fill < th.fill_circle_square:
        return "circle"
    return "square"


def _border_median(frame: np.ndarray) -> np.ndarray:
    border = np.concatenate([frame[0], frame[-1], frame[1:-1, 0], frame[1:-1, -1]], axis=0)
    return np.median(border, axis=0)


def _explain(diff: np.ndarray, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel: index of the palette colour whose line from the background explains it best, and its strength.

    An anti-aliased pixel is ``bg + a * (colour - bg)``; the residual off that line is ~0 for the right colour.
    """
    lines = _PALETTE - bg[None]  # (K, 3)
    norms2 = np.maximum((lines * lines).sum(axis=1), 1e-9)
    strength = np.clip(diff @ lines.T / norms2[None], 0.0, None)  # (N, K)
    resid = np.linalg.norm(diff[:, None, :] - strength[:, :, None] * lines[None], axis=2)
    label = np.argmin(resid, axis=1)
    return label, strength[np.arange(len(label)), label]


def _expected_area_range(world: ShapesWorld, th: ProbeThresholds) -> tuple[float, float]:
    areas = [shape_area(s, world.radius(z)) for s in SHAPES for z in SIZES]
    return th.min_area_factor * min(areas), th.max_area_factor * max(areas)


def _describe(
    frame: np.ndarray, bg: np.ndarray, support_core: np.ndarray, free: np.ndarray, th: ProbeThresholds
) -> DetectedObject | None:
    """Measure one object from its foreground pixels; None when they are not one uniformly coloured thing."""
    pix = frame[support_core]
    dist = np.linalg.norm(pix - bg[None], axis=1)
    strong = dist >= th.core_fraction * np.percentile(dist, 90)
    core = pix[strong]
    # Medians, so pixels mixed with a touching object (or a few bad ones) do not drag the colour.
    mean = np.median(core, axis=0)
    direction = mean - bg
    norm2 = float(direction @ direction)
    if norm2 < th.foreground**2:
        return None
    # Spread off the background-to-colour line: anti-aliasing moves pixels along it, a second colour or noise does not.
    rel = core - bg[None]
    off_line = rel - np.outer(rel @ direction / norm2, direction)
    spread = float(np.median(np.linalg.norm(off_line, axis=1)))
    # Faint rim: background-like pixels next to the object still carry a little coverage. Work in a window around the
    # object (everything else is zero) because this runs for every object of every frame.
    rows, cols = np.flatnonzero(support_core.any(axis=1)), np.flatnonzero(support_core.any(axis=0))
    h, w = support_core.shape
    win = (slice(max(rows[0] - 1, 0), min(rows[-1] + 2, h)), slice(max(cols[0] - 1, 0), min(cols[-1] + 2, w)))
    local_core = support_core[win]
    local_support = local_core | (ndimage.binary_dilation(local_core, structure=_EIGHT) & free[win])
    local_alpha = np.zeros(local_core.shape, dtype=np.float64)
    local_alpha[local_support] = np.clip((frame[win][local_support] - bg[None]) @ direction / norm2, 0.0, 1.0)
    area = float(local_alpha.sum())
    if area <= 0:
        return None
    cx = float(local_alpha.sum(axis=0) @ np.arange(win[1].start, win[1].stop)) / area
    cy = float(local_alpha.sum(axis=1) @ np.arange(win[0].start, win[0].stop)) / area
    width = float(local_alpha.max(axis=0).sum())
    height = float(local_alpha.max(axis=1).sum())
    fill = area / max(width * height, 1e-9)
    dy = np.arange(win[0].start, win[0].stop) - cy
    row_mass = local_alpha.sum(axis=1)
    var_y = float(row_mass @ dy**2) / area
    skew = float(row_mass @ dy**3) / area / max(var_y, 1e-9) ** 1.5
    alpha = np.zeros((h, w), dtype=np.float64)
    alpha[win] = local_alpha
    support = np.zeros((h, w), dtype=bool)
    support[win] = local_support
    return DetectedObject(
        colour=nearest_colour(mean),
        rgb=(float(mean[0]), float(mean[1]), float(mean[2])),
        colour_spread=spread,
        pixels=int(support_core.sum()),
        area=area,
        centroid=(cx, cy),
        width=width,
        height=height,
        fill=fill,
        skew=skew,
        shape=classify_shape(fill, skew, th),
        alpha=alpha,
        support=support,
    )


def segment_frame(
    frame: np.ndarray,
    world: ShapesWorld | None = None,
    thresholds: ProbeThresholds | None = None,
    background: np.ndarray | None = None,
) -> list[DetectedObject]:
    """Objects in one frame (H, W, 3) uint8 or float in [0, 1], largest first, without any ground truth."""
    th = thresholds or ProbeThresholds()
    world = world or ShapesWorld()
    frame = _as_float_frame(frame)
    bg = _border_median(frame) if background is None else background
    diff = frame - bg[None, None]
    fg = np.linalg.norm(diff, axis=2) > th.foreground
    blobs, n = ndimage.label(fg, structure=_EIGHT)
    if n == 0:
        return []
    lo, hi = _expected_area_range(world, th)
    sizes = np.bincount(blobs.ravel(), minlength=n + 1)
    free = ~fg
    pieces: list[np.ndarray] = []
    # Blobs too small for an object, or too big for even two touching ones (noise, a blown-out frame), are skipped.
    keep = (sizes >= max(3, lo / 4)) & (sizes <= 2 * hi)
    for b in np.flatnonzero(keep):
        if b == 0:
            continue
        blob = blobs == b
        pieces.extend(_split_by_colour(blob, diff, bg, th))
    found: list[DetectedObject] = []
    for piece in pieces:
        obj = _describe(frame, bg, piece, free, th)
        if obj is None or not lo <= obj.area <= hi or obj.colour_spread > th.max_colour_spread:
            continue
        found.append(obj)
    found.sort(key=lambda o: -o.area)
    return found


def _as_float_frame(frame: Any) -> np.ndarray:
    if isinstance(frame, torch.Tensor):
        frame = frame.detach().cpu().numpy()
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3 or min(frame.shape[:2]) < 3:
        raise ValueError(
            f"expected one frame (H, W, 3), uint8 or float in [0, 1]; got {getattr(frame, 'shape', frame)}"
        )
    if frame.dtype == np.uint8:
        return frame.astype(np.float64) / 255.0
    if not np.issubdtype(frame.dtype, np.floating) or not np.isfinite(frame).all():
        raise ValueError(f"a frame must be uint8 or finite floats in [0, 1], got dtype {frame.dtype}")
    return frame.astype(np.float64, copy=False)


def _split_by_colour(blob: np.ndarray, diff: np.ndarray, bg: np.ndarray, th: ProbeThresholds) -> list[np.ndarray]:
    """One blob, or its pieces when its confident pixels lie on two or more palette colours (touching objects)."""
    idx = np.flatnonzero(blob.ravel())
    label, strength = _explain(diff.reshape(-1, 3)[idx], bg)
    confident = strength >= _CONFIDENT
    counts = np.bincount(label[confident], minlength=len(_PALETTE))
    n_conf = int(confident.sum())
    significant = np.flatnonzero(counts >= max(3, th.split_fraction * max(n_conf, 1)))
    if len(significant) < 2:
        return [blob]
    # Re-explain each pixel with the significant colours only, then keep connected pieces per colour.
    lines = _PALETTE[significant] - bg[None]
    norms2 = np.maximum((lines * lines).sum(axis=1), 1e-9)
    d = diff.reshape(-1, 3)[idx]
    s = np.clip(d @ lines.T / norms2[None], 0.0, None)
    resid = np.linalg.norm(d[:, None, :] - s[:, :, None] * lines[None], axis=2)
    own = np.argmin(resid, axis=1)
    pieces = []
    for k in range(len(significant)):
        mask = np.zeros(blob.size, dtype=bool)
        mask[idx[own == k]] = True
        mask = mask.reshape(blob.shape)
        parts, m = ndimage.label(mask, structure=_EIGHT)
        for p in range(1, m + 1):
            pieces.append(parts == p)
    return pieces


# --------------------------------------------------------------------------------------------------------------------
# tracks and trajectories


def _theil_sen(t: np.ndarray, v: np.ndarray) -> float:
    """Median of pairwise slopes: robust to a few bad frames (breakdown point ~29 %)."""
    i, j = np.triu_indices(len(t), k=1)
    return float(np.median((v[j] - v[i]) / (t[j] - t[i])))


def _kendall_tau(t: np.ndarray, v: np.ndarray) -> float:
    i, j = np.triu_indices(len(t), k=1)
    s = np.sign(t[j] - t[i]) * np.sign(v[j] - v[i])
    return float(s.mean()) if len(s) else 0.0


def _still_threshold(world: ShapesWorld, num_frames: int, stride: int | None, th: ProbeThresholds) -> float:
    """Net displacement (px over the clip) below which an object counts as standing still."""
    slowest = min(world.speed(s) for s in world.config.speeds)
    s = stride if stride is not None else min(world.config.strides)
    return th.still_fraction * slowest * s * (num_frames - 1)


def _fit_track(track: Track, world: ShapesWorld, stride: int | None, th: ProbeThresholds) -> None:
    present = track.present()
    if not present:
        return
    counts = Counter(o.shape for _, o in present)
    track.shape = counts.most_common(1)[0][0]
    if len(present) < 2:
        track.motion = "none"
        return
    t = np.array([i for i, _ in present], dtype=np.float64)
    c = np.array([o.centroid for _, o in present], dtype=np.float64)
    n = len(track.objects)
    dx = _theil_sen(t, c[:, 0]) * (n - 1)
    dy = _theil_sen(t, c[:, 1]) * (n - 1)
    track.displacement = (dx, dy)
    if math.hypot(dx, dy) < _still_threshold(world, n, stride, th):
        track.motion = "still"
        track.monotonicity = 1.0
    else:
        if abs(dx) >= abs(dy):
            track.motion = "right" if dx > 0 else "left"
            along = c[:, 0] * np.sign(dx)
        else:
            track.motion = "down" if dy > 0 else "up"
            along = c[:, 1] * np.sign(dy)
        track.monotonicity = _kendall_tau(t, along)
    # Jumps: steps between consecutive frames that stray from the typical (median) step.
    steps = np.diff(c, axis=0) / np.diff(t)[:, None]
    typical = np.median(steps, axis=0)
    limit = max(1.0, th.jump_radius_fraction * world.radius("small"))
    track.jumps = int((np.linalg.norm(steps - typical[None], axis=1) > limit).sum())


def analyse_video(
    video: Any,
    world_config: ShapesWorldConfig | None = None,
    stride: int | None = None,
    thresholds: ProbeThresholds | None = None,
) -> VideoAnalysis:
    """Segment every frame of a (T, H, W, 3) uint8 clip and link the objects into colour tracks."""
    frames_u8 = _as_uint8_frames(video, "video")
    th = thresholds or ProbeThresholds()
    world = ShapesWorld(world_config)
    frames = frames_u8.astype(np.float64) / 255.0
    backgrounds = np.stack([_border_median(f) for f in frames])
    objects = [segment_frame(f, world, th, bg) for f, bg in zip(frames, backgrounds)]
    by_colour: dict[str, Track] = {}
    for t, objs in enumerate(objects):
        for obj in objs:
            track = by_colour.setdefault(obj.colour, Track(obj.colour, [None] * len(frames), [0] * len(frames)))
            if track.objects[t] is None:
                track.objects[t] = obj  # objects are sorted largest first
            elif obj.area >= 0.25 * track.objects[t].area:
                track.fragments[t] += 1
    tracks = sorted(by_colour.values(), key=lambda tr: -tr.total_area)
    for tr in tracks:
        _fit_track(tr, world, stride, th)
    background = _nearest_background(np.median(backgrounds, axis=0))
    return VideoAnalysis(frames=frames, backgrounds=backgrounds, objects=objects, tracks=tracks, background=background)


def _agreement(track: Track, obj: ObjectAttributes) -> int:
    score = 4 * (track.colour == obj.colour) + 2 * (track.shape == obj.shape)
    return score + (obj.motion is not None and track.motion == obj.motion)


def _assign(tracks: list[Track], attrs: CaptionAttributes) -> tuple[Track | None, Track | None]:
    """Prompt objects -> tracks. One object: the largest track. Two: the pairing of the three largest that agrees most."""
    if not tracks:
        return None, None
    if attrs.second is None:
        return tracks[0], None
    candidates = tracks[:3]
    if len(candidates) == 1:
        only = candidates[0]
        if _agreement(only, attrs.second) > _agreement(only, attrs.primary):
            return None, only
        return only, None
    best, best_key = (None, None), None
    for i, a in enumerate(candidates):
        for j, b in enumerate(candidates):
            if i == j:
                continue
            key = (_agreement(a, attrs.primary) + _agreement(b, attrs.second), -i - j, -i)
            if best_key is None or key > best_key:
                best, best_key = (a, b), key
    return best


# --------------------------------------------------------------------------------------------------------------------
# probes


def _missing(name: str, expected: Any, which: str = "object") -> ProbeScore:
    return ProbeScore(name, False, 0.0, expected, "none", f"no {which} found in the video")


def _colour_probe(name: str, track: Track | None, expected: str) -> ProbeScore:
    if track is None:
        return _missing(name, expected)
    votes = Counter(o.colour for _, o in track.present())
    ok = track.colour == expected
    mean = np.mean([o.rgb for _, o in track.present()], axis=0)
    rgb = "(" + ", ".join(f"{round(255 * v)}" for v in mean) + ")"
    reason = f"object colour {rgb} is nearest to {track.colour}" + ("" if ok else f", not {expected}")
    return ProbeScore(name, ok, float(ok), expected, track.colour, reason + f" ({sum(votes.values())} frames)")


def _shape_probe(name: str, track: Track | None, expected: str) -> ProbeScore:
    if track is None:
        return _missing(name, expected)
    shapes = [o.shape for _, o in track.present()]
    frac = shapes.count(expected) / len(shapes)
    ok = track.shape == expected
    fill = float(np.median([o.fill for _, o in track.present()]))
    skew = float(np.median([o.skew for _, o in track.present()]))
    reason = (
        f"median vertical skewness {skew:+.2f} (triangle -0.57, else 0), box fill {fill:.2f} (circle 0.79, "
        f"square 1.00): {track.shape} in "
        f"{shapes.count(track.shape)}/{len(shapes)} frames" + ("" if ok else f", expected {expected}")
    )
    return ProbeScore(name, ok, frac, expected, track.shape, reason)


def _motion_probe(
    name: str, track: Track | None, expected: str, world: ShapesWorld, n: int, stride: int | None, th: ProbeThresholds
) -> ProbeScore:
    if track is None:
        return _missing(name, expected)
    dx, dy = track.displacement
    limit = _still_threshold(world, n, stride, th)
    detected = track.motion
    if detected not in MOTIONS:
        return ProbeScore(name, False, 0.0, expected, detected, "object found in fewer than 2 frames")
    if detected != "still" and track.monotonicity < th.min_monotonicity:
        detected = "erratic"
    ok = detected == expected
    reason = f"net displacement ({dx:+.1f}, {dy:+.1f}) px (still below {limit:.1f} px)"
    if track.motion != "still":
        reason += f", progress monotonicity {track.monotonicity:.2f}"
    reason += f": {detected}" + ("" if ok else f", expected {expected}")
    score = float(ok) if detected in ("still", "erratic") else float(ok) * max(track.monotonicity, 0.0)
    return ProbeScore(name, ok, score, expected, detected, reason)


def _size_probe(track: Track | None, expected: str, world: ShapesWorld) -> ProbeScore:
    if track is None:
        return _missing("size", expected)
    area = float(np.median([o.area for _, o in track.present()]))
    shape = track.shape if track.shape in SHAPES else "circle"
    logs = {z: abs(math.log(area / shape_area(shape, world.radius(z)))) for z in SIZES}
    detected = min(logs, key=logs.get)
    ok = detected == expected
    reason = f"median area {area:.1f} px^2 for a {shape}: {detected}" + ("" if ok else f", expected {expected}")
    return ProbeScore("size", ok, float(ok), expected, detected, reason)


def _speed_probe(track: Track | None, expected: str, world: ShapesWorld, n: int, stride: int) -> ProbeScore:
    if track is None:
        return _missing("speed", expected)
    per_base = math.hypot(*track.displacement) / ((n - 1) * stride)
    logs = {s: abs(math.log(max(per_base, 1e-6) / world.speed(s))) for s in SPEEDS}
    detected = min(logs, key=logs.get)
    ok = detected == expected
    reason = (
        f"{per_base:.3f} px per base frame (slow {world.speed('slow'):.3f}, normal {world.speed('normal'):.3f}, "
        f"fast {world.speed('fast'):.3f}): {detected}" + ("" if ok else f", expected {expected}")
    )
    return ProbeScore("speed", ok, float(ok), expected, detected, reason)


def _background_probe(analysis: VideoAnalysis, expected: str) -> ProbeScore:
    rgb = np.median(analysis.backgrounds, axis=0)
    ok = analysis.background == expected
    reason = f"border colour ({', '.join(str(round(255 * v)) for v in rgb)}) is nearest to {analysis.background}"
    return ProbeScore("background", ok, float(ok), expected, analysis.background, reason)


def _consistency_probe(track: Track | None, th: ProbeThresholds) -> ProbeScore:
    if track is None:
        return _missing("consistency", "one coherent object")
    present = track.present()
    n = len(track.objects)
    areas = np.array([o.area for _, o in present])
    colours = np.array([o.rgb for _, o in present])
    shapes = [o.shape for _, o in present]
    checks = {
        "presence": (track.presence >= th.min_presence, f"found in {len(present)}/{n} frames"),
        "fragments": (
            sum(f > 0 for f in track.fragments) <= th.max_fragment_frames * n,
            f"split into pieces in {sum(f > 0 for f in track.fragments)} frames",
        ),
        "area": (
            areas.std() / max(areas.mean(), 1e-9) <= th.max_area_cv,
            f"area CV {areas.std() / max(areas.mean(), 1e-9):.2f}",
        ),
        "colour": (
            float(colours.std(axis=0).max()) <= th.max_colour_std,
            f"colour std {255 * float(colours.std(axis=0).max()):.1f}/255",
        ),
        "jumps": (track.jumps <= th.max_jumps, f"{track.jumps} jumps off a steady path"),
        "shape": (
            shapes.count(track.shape) >= th.min_shape_agreement * len(shapes),
            f"{track.shape} in {shapes.count(track.shape)}/{len(shapes)} frames",
        ),
    }
    failed = [k for k, (ok, _) in checks.items() if not ok]
    detail = "; ".join(msg for _, msg in checks.values())
    score = 1.0 - len(failed) / len(checks)
    reason = ("consistent: " if not failed else f"inconsistent ({', '.join(failed)}): ") + detail
    return ProbeScore("consistency", not failed, score, "one coherent object", "ok" if not failed else failed, reason)


def _flicker_probe(analysis: VideoAnalysis, track: Track | None, th: ProbeThresholds) -> ProbeScore:
    frames = analysis.frames
    if len(frames) < 2:
        return ProbeScore("flicker", True, 1.0, "steady", "single frame", "a single frame cannot flicker")
    occupied = np.zeros(frames.shape[:3], dtype=bool)
    for t, objs in enumerate(analysis.objects):
        for o in objs:
            occupied[t] |= o.support
    occupied = ndimage.binary_dilation(occupied, structure=_EIGHT[None])
    # Pixels that are not background in one frame (foreground that failed the object tests) count as well.
    fg = np.linalg.norm(frames - analysis.backgrounds[:, None, None], axis=3) > th.foreground
    still_bg = ~(occupied | fg)
    both = still_bg[1:] & still_bg[:-1]
    change = np.abs(np.diff(frames, axis=0)).mean(axis=3) * 255.0
    bg_flicker = float(change[both].mean()) if both.any() else float("inf")
    if track is None or sum(o is not None for o in track.objects) < 2:
        reason = f"background flicker {bg_flicker:.2f} levels; no object to follow"
        return ProbeScore("flicker", False, 0.0, "steady", {"background": bg_flicker, "object": None}, reason)
    cols = [np.array(o.rgb) if o is not None else None for o in track.objects]
    diffs = [np.abs(a - b).mean() * 255.0 for a, b in zip(cols[:-1], cols[1:]) if a is not None and b is not None]
    obj_flicker = float(np.mean(diffs)) if diffs else float("inf")
    ok = bg_flicker <= th.max_background_flicker and obj_flicker <= th.max_object_flicker
    reason = (
        f"mean frame-to-frame change: background {bg_flicker:.2f} (max {th.max_background_flicker}), object colour "
        f"{obj_flicker:.2f} (max {th.max_object_flicker}) uint8 levels"
    )
    score = 1.0 / (1.0 + max(bg_flicker / th.max_background_flicker, obj_flicker / th.max_object_flicker))
    return ProbeScore("flicker", ok, score, "steady", {"background": bg_flicker, "object": obj_flicker}, reason)


def _same_object(a: DetectedObject, b: DetectedObject, max_shift: float, th: ProbeThresholds) -> str | None:
    """Why ``b`` is not a copy of ``a`` (colour, shape, place, size), or None when it is."""
    if a.colour != b.colour:
        return f"{a.colour} became {b.colour}"
    if a.shape != b.shape:
        return f"{a.colour} {a.shape} became a {b.shape}"
    shift = math.dist(a.centroid, b.centroid)
    if shift > max_shift:
        return f"{a.colour} {a.shape} moved {shift:.1f} px (max {max_shift:.1f})"
    ratio = b.area / a.area
    if not 1 / th.max_first_frame_area_ratio <= ratio <= th.max_first_frame_area_ratio:
        return f"{a.colour} {a.shape} area changed x{ratio:.2f}"
    return None


def _first_frame_probe(
    analysis: VideoAnalysis,
    quality: tuple[float, float],
    cond_objects: list[DetectedObject],
    world: ShapesWorld,
    th: ProbeThresholds,
) -> ProbeScore:
    """Frame 0 must reproduce the conditioning image: close in PSNR / SSIM *and* the same objects in the same places.

    The object check matters because a small object on a flat background barely moves PSNR / SSIM.
    """
    p, s = quality
    problems = []
    if p < th.min_first_frame_psnr:
        problems.append(f"PSNR {p:.1f} dB < {th.min_first_frame_psnr}")
    if s < th.min_first_frame_ssim:
        problems.append(f"SSIM {s:.3f} < {th.min_first_frame_ssim}")
    object_problems = [] if cond_objects else ["no object in the conditioning image"]
    max_shift = max(1.0, th.first_frame_shift_fraction * world.radius("small"))
    frame_objects = {o.colour: o for o in reversed(analysis.objects[0])}  # largest of each colour wins
    for obj in cond_objects[:2]:
        match = frame_objects.get(obj.colour)
        why = f"the {obj.colour} {obj.shape} is missing" if match is None else _same_object(obj, match, max_shift, th)
        if why:
            object_problems.append(why)
    problems += object_problems
    ok = not problems
    reason = f"frame 0 vs conditioning image: PSNR {p:.1f} dB, SSIM {s:.3f}, " + (
        f"objects {', '.join(f'{o.colour} {o.shape}' for o in cond_objects[:2])} reproduced"
        if ok
        else "; ".join(problems)
    )
    detected = {"psnr": p, "ssim": s, "objects_match": not object_problems}
    return ProbeScore("first_frame", ok, min(1.0, max(s, 0.0)) * ok, "matches the conditioning image", detected, reason)


def _identity_probe(
    analysis: VideoAnalysis,
    cond_objects: list[DetectedObject],
    attrs: CaptionAttributes,
    th: ProbeThresholds,
) -> ProbeScore:
    """The prompt's main object, as the conditioning image shows it, must still be there, unchanged, at the end."""
    if not cond_objects:
        return ProbeScore("identity", False, 0.0, "none", "none", "no object found in the conditioning image")
    cond_tracks = [Track(o.colour, [o], [0], shape=o.shape) for o in cond_objects]
    cond_track, _ = _assign(cond_tracks, attrs)
    if cond_track is None:
        cond_track = cond_tracks[0]
    expected = f"{cond_track.colour} {cond_track.shape}"
    n = len(analysis.frames)
    tail = range(max(0, n - max(3, math.ceil(th.identity_tail_fraction * n))), n)
    same = next((tr for tr in analysis.tracks if tr.colour == cond_track.colour), None)
    tail_objs = [] if same is None else [same.objects[t] for t in tail if same.objects[t] is not None]
    if len(tail_objs) * 2 < len(tail):
        largest = Counter(objs[0].colour for objs in (analysis.objects[t] for t in tail) if objs)
        now = largest.most_common(1)[0][0] if largest else "nothing"
        reason = f"the {expected} of the conditioning image is gone from the last {len(tail)} frames (largest: {now})"
        return ProbeScore("identity", False, 0.0, expected, now, reason)
    shape = Counter(o.shape for o in tail_objs).most_common(1)[0][0]
    detected = f"{cond_track.colour} {shape}"
    ok = shape == cond_track.shape
    reason = f"conditioning image shows a {expected}; the last {len(tail)} frames show a {detected}"
    return ProbeScore("identity", ok, float(ok), expected, detected, reason)


# --------------------------------------------------------------------------------------------------------------------
# public entry points


@dataclass
class ProbeResult:
    """All probes of one video. ``passed`` means every core probe that applies passed (see :data:`CORE_PROBES`)."""

    prompt: str
    attributes: CaptionAttributes
    scores: dict[str, ProbeScore]

    @property
    def passed(self) -> bool:
        return all(s.passed for name, s in self.scores.items() if name in CORE_PROBES)

    @property
    def failures(self) -> list[str]:
        return [f"{name}: {s.reason}" for name, s in self.scores.items() if not s.passed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "passed": self.passed,
            "scores": {name: s.to_dict() for name, s in self.scores.items()},
        }


def _check_stride(stride: int | None) -> int | None:
    if stride is None:
        return None
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
        raise ValueError(f"stride must be a positive int or None, got {stride!r}")
    return int(stride)


@dataclass
class _Checked:
    """One validated probe request."""

    frames: np.ndarray
    prompt: str
    attrs: CaptionAttributes
    stride: int | None
    condition: np.ndarray | None


def _check_request(
    video: Any, prompt: str, world: ShapesWorld, condition_image: Any, stride: int | None, what: str = "video_uint8"
) -> _Checked:
    attrs = parse_prompt(prompt)
    frames = _as_uint8_frames(video, what)
    _, h, w, _ = frames.shape
    if (h, w) != (world.config.height, world.config.width):
        raise ValueError(
            f"{what} is {h}x{w} but the world config is {world.config.height}x{world.config.width}; pass the "
            "ShapesWorldConfig the model was trained on (sizes and speeds are relative to the frame)"
        )
    condition = None
    if condition_image is not None:
        condition = _as_uint8_image(condition_image, "condition_image")
        if condition.shape != (h, w, 3):
            raise ValueError(f"condition_image must be ({h}, {w}, 3) like the video frames, got {condition.shape}")
    return _Checked(frames, prompt, attrs, _check_stride(stride), condition)


def _image_quality_batch(pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[float, float]]:
    """PSNR (dB) and SSIM of uint8 (H, W, 3) image pairs, in one call of the package's shared metrics."""
    if not pairs:
        return []
    x = torch.from_numpy(np.stack([a for a, _ in pairs])).permute(0, 3, 1, 2).double() / 255.0
    y = torch.from_numpy(np.stack([b for _, b in pairs])).permute(0, 3, 1, 2).double() / 255.0
    return list(zip(psnr(x, y, 1.0).tolist(), ssim(x, y, 1.0).tolist()))


def _probe(
    req: _Checked, world: ShapesWorld, th: ProbeThresholds, quality: tuple[float, float] | None = None
) -> ProbeResult:
    frames, attrs, stride, t = req.frames, req.attrs, req.stride, len(req.frames)
    analysis = analyse_video(frames, world.config, stride, th)
    primary, second = _assign(analysis.tracks, attrs)
    p = attrs.primary
    scores: dict[str, ProbeScore] = {
        "colour": _colour_probe("colour", primary, p.colour),
        "shape": _shape_probe("shape", primary, p.shape),
    }
    if p.motion is not None and t >= 2:
        scores["motion"] = _motion_probe("motion", primary, p.motion, world, t, stride, th)
        if stride is not None and p.motion != "still":
            scores["speed"] = _speed_probe(primary, p.speed, world, t, stride)
    scores["size"] = _size_probe(primary, p.size, world)
    scores["background"] = _background_probe(analysis, attrs.background)
    if t >= 2:
        scores["consistency"] = _consistency_probe(primary, th)
        scores["flicker"] = _flicker_probe(analysis, primary, th)
    if attrs.second is not None:
        s = attrs.second
        scores["second_colour"] = _colour_probe("second_colour", second, s.colour)
        scores["second_shape"] = _shape_probe("second_shape", second, s.shape)
        if s.motion is not None and t >= 2:
            scores["second_motion"] = _motion_probe("second_motion", second, s.motion, world, t, stride, th)
    if req.condition is not None:
        if quality is None:
            quality = _image_quality_batch([(frames[0], req.condition)])[0]
        cond_objects = segment_frame(req.condition, world, th)
        scores["first_frame"] = _first_frame_probe(analysis, quality, cond_objects, world, th)
        scores["identity"] = _identity_probe(analysis, cond_objects, attrs, th)
    return ProbeResult(prompt=req.prompt, attributes=attrs, scores=scores)


def probe_video(
    video_uint8: Any,
    prompt: str,
    world_config: ShapesWorldConfig | None = None,
    condition_image: Any = None,
    stride: int | None = None,
    thresholds: ProbeThresholds | None = None,
) -> ProbeResult:
    """Run every applicable probe on one generated clip (T, H, W, 3) uint8.

    ``stride`` (frame stride the clip was generated at, fps = base_fps / stride) sharpens the still-vs-moving decision
    and enables the speed probe; without it the world's smallest stride is assumed. ``condition_image`` (H, W, 3) uint8
    adds the image-to-video probes (first-frame fidelity, identity kept).
    """
    world = ShapesWorld(world_config)
    req = _check_request(video_uint8, prompt, world, condition_image, stride)
    return _probe(req, world, thresholds or ProbeThresholds())


@dataclass
class BatchProbeResult:
    """Per-video results plus, per probe, the fraction of videos (where it applies) that passed."""

    results: list[ProbeResult]
    accuracy: dict[str, float]
    counts: dict[str, int]
    pass_rate: float

    def confusion(self, probe: str) -> tuple[list[str], list[str], np.ndarray]:
        return confusion_matrix(self.results, probe)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "counts": self.counts,
            "pass_rate": self.pass_rate,
            "results": [r.to_dict() for r in self.results],
        }


def probe_batch(
    videos: Sequence[Any] | np.ndarray | torch.Tensor,
    prompts: Sequence[str],
    world_config: ShapesWorldConfig | None = None,
    condition_images: Sequence[Any] | None = None,
    strides: Sequence[int | None] | int | None = None,
    thresholds: ProbeThresholds | None = None,
) -> BatchProbeResult:
    """:func:`probe_video` over many clips (a sequence of (T, H, W, 3) uint8 or one (N, T, H, W, 3) array)."""
    if isinstance(prompts, str):
        raise ValueError("prompts must be a sequence of str, one per video (got a single str)")
    n = len(videos)
    if len(prompts) != n:
        raise ValueError(f"got {n} videos but {len(prompts)} prompts")
    if n == 0:
        raise ValueError("probe_batch needs at least one video")
    if condition_images is not None and len(condition_images) != n:
        raise ValueError(f"got {n} videos but {len(condition_images)} condition images")
    if strides is None or isinstance(strides, int | np.integer):
        strides = [strides] * n
    if len(strides) != n:
        raise ValueError(f"got {n} videos but {len(strides)} strides")
    world = ShapesWorld(world_config)
    th = thresholds or ProbeThresholds()
    conditions = [None] * n if condition_images is None else list(condition_images)
    reqs = [_check_request(videos[i], prompts[i], world, conditions[i], strides[i], f"videos[{i}]") for i in range(n)]
    # PSNR / SSIM in one batched call: per-clip calls of small torch ops are slow on busy machines.
    with_condition = [r for r in reqs if r.condition is not None]
    qualities = iter(_image_quality_batch([(r.frames[0], r.condition) for r in with_condition]))
    results = [_probe(r, world, th, next(qualities) if r.condition is not None else None) for r in reqs]
    accuracy: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name in PROBE_NAMES:
        applicable = [r.scores[name].passed for r in results if name in r.scores]
        if applicable:
            accuracy[name] = float(np.mean(applicable))
            counts[name] = len(applicable)
    pass_rate = float(np.mean([r.passed for r in results]))
    return BatchProbeResult(results=results, accuracy=accuracy, counts=counts, pass_rate=pass_rate)


_LABELS: dict[str, tuple[str, ...]] = {
    "colour": _PALETTE_NAMES,
    "shape": SHAPES,
    "motion": MOTIONS,
    "size": SIZES,
    "speed": SPEEDS,
    "background": _BG_NAMES,
}


def confusion_matrix(results: Sequence[ProbeResult], probe: str) -> tuple[list[str], list[str], np.ndarray]:
    """Counts of (expected, detected) labels for a categorical probe: (row labels, column labels, matrix)."""
    base = probe.removeprefix("second_")
    if base not in _LABELS:
        raise ValueError(f"no confusion matrix for probe {probe!r}; categorical probes: {sorted(_LABELS)}")
    pairs = [(r.scores[probe].expected, str(r.scores[probe].detected)) for r in results if probe in r.scores]
    rows = list(_LABELS[base])
    cols = rows + sorted({d for _, d in pairs} - set(rows))
    m = np.zeros((len(rows), len(cols)), dtype=np.int64)
    for e, d in pairs:
        m[rows.index(e), cols.index(d)] += 1
    return rows, cols, m


def format_confusion(rows: Sequence[str], cols: Sequence[str], matrix: np.ndarray) -> str:
    """A confusion matrix as aligned text (rows: expected, columns: detected)."""
    width = max(6, *(len(c) for c in cols), *(len(r) for r in rows)) + 1
    lines = ["expected\\detected".ljust(width) + "".join(c.rjust(width) for c in cols)]
    for r, row in zip(rows, matrix):
        lines.append(r.ljust(width) + "".join(str(int(v)).rjust(width) for v in row))
    return "\n".join(lines)
