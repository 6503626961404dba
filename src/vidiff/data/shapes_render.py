"""Geometry and rendering of the shapes world: specs in, anti-aliased videos with exact ground truth out.

Coordinates are in pixels with pixel centres on integers: pixel (row i, column j) is centred at (x=j, y=i) and covers
[j - 0.5, j + 0.5] x [i - 0.5, i + 0.5]; the frame spans [-0.5, W - 0.5] x [-0.5, H - 0.5]. y points down, so "up"
is -y. Objects translate at constant velocity, which is what makes flow, centroids and boxes exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vidiff.data.shapes_vocab import (
    BACKGROUNDS,
    COLOURS,
    IMAGE_PHRASINGS,
    VIDEO_PHRASINGS,
    CaptionAttributes,
    ObjectAttributes,
    caption_text,
)
from vidiff.utils.video import video_to_uint8_frames

__all__ = [
    "ObjectTruth",
    "SampleSpec",
    "ShapeSpec",
    "ShapesSample",
    "render",
    "shape_area",
    "shape_extents",
    "to_uint8",
]

# A square of half-side sqrt(pi)/2 * r has the area of the circle of radius r; the triangle (equilateral, pointing up,
# centroid at the object position) is a little smaller than equal-area so its wide base does not dominate the layout.
SQUARE_HALF_SIDE = math.sqrt(math.pi) / 2
TRIANGLE_CIRCUMRADIUS = 1.4
_QUADRATURE = 8  # midpoint-rule points across an edge pixel where a chord is integrated
_HALF_DIAGONAL = math.sqrt(0.5)


def shape_extents(shape: str, radius: float) -> tuple[float, float, float, float]:
    """Distances (left, top, right, bottom) from the object position to its bounding-box sides."""
    if shape == "circle":
        return (radius, radius, radius, radius)
    if shape == "square":
        a = SQUARE_HALF_SIDE * radius
        return (a, a, a, a)
    if shape == "triangle":
        big_r = TRIANGLE_CIRCUMRADIUS * radius
        half_base = big_r * math.sqrt(3) / 2
        return (half_base, big_r, half_base, big_r / 2)
    raise ValueError(f"unknown shape {shape!r}")


def shape_area(shape: str, radius: float) -> float:
    """Exact area in pixels², e.g. to check that a mask was not clipped by the frame."""
    if shape == "circle":
        return math.pi * radius**2
    if shape == "square":
        return (2 * SQUARE_HALF_SIDE * radius) ** 2
    if shape == "triangle":
        return 3 * math.sqrt(3) / 4 * (TRIANGLE_CIRCUMRADIUS * radius) ** 2
    raise ValueError(f"unknown shape {shape!r}")


@dataclass(frozen=True)
class ShapeSpec:
    """One object: its attributes plus the geometry they were turned into (start at frame 0, velocity per frame)."""

    colour: str
    shape: str
    motion: str | None
    size: str
    speed: str
    radius: float
    start: tuple[float, float]
    velocity: tuple[float, float]  # pixels per rendered frame (already multiplied by the frame stride)

    def __post_init__(self) -> None:
        self.attributes()  # validates the words
        if not (math.isfinite(self.radius) and self.radius > 0):
            raise ValueError(f"radius must be a positive number of pixels, got {self.radius}")
        for name in ("start", "velocity"):
            value = getattr(self, name)
            if len(value) != 2 or not all(math.isfinite(v) for v in value):
                raise ValueError(f"{name} must be two finite numbers (x, y), got {value!r}")
        if self.motion in (None, "still") and any(v != 0 for v in self.velocity):
            raise ValueError(f"an object with motion {self.motion!r} must have zero velocity, got {self.velocity}")

    def attributes(self) -> ObjectAttributes:
        return ObjectAttributes(self.colour, self.shape, self.motion, self.size, self.speed)

    def positions(self, num_frames: int) -> np.ndarray:
        """Object position (x, y) at every frame, (T, 2) float64."""
        t = np.arange(num_frames, dtype=np.float64)[:, None]
        return np.asarray(self.start, dtype=np.float64) + t * np.asarray(self.velocity, dtype=np.float64)

    def boxes(self, num_frames: int) -> np.ndarray:
        """Exact bounding boxes (x0, y0, x1, y1) per frame, (T, 4) float64."""
        left, top, right, bottom = shape_extents(self.shape, self.radius)
        p = self.positions(num_frames)
        return np.stack([p[:, 0] - left, p[:, 1] - top, p[:, 0] + right, p[:, 1] + bottom], axis=1)


@dataclass(frozen=True)
class SampleSpec:
    """Everything needed to render one sample deterministically (no randomness is left in :func:`render`)."""

    primary: ShapeSpec
    second: ShapeSpec | None
    background: str
    height: int
    width: int
    num_frames: int
    stride: int
    base_fps: float
    phrasing: str

    def __post_init__(self) -> None:
        self.attributes()  # validates background and motion consistency between objects
        if self.height < 1 or self.width < 1 or self.num_frames < 1:
            raise ValueError(
                f"height, width and num_frames must be positive, got {self.height}, {self.width}, {self.num_frames}"
            )
        if self.stride < 1 or not self.base_fps > 0:
            raise ValueError(f"stride must be >= 1 and base_fps > 0, got {self.stride}, {self.base_fps}")
        allowed = IMAGE_PHRASINGS if self.is_image else VIDEO_PHRASINGS
        if self.phrasing not in allowed:
            raise ValueError(
                f"phrasing {self.phrasing!r} does not fit this {'image' if self.is_image else 'video'}; "
                f"expected one of {allowed}"
            )
        if self.second is not None and self.second.colour == self.primary.colour:
            raise ValueError(f"the two objects must have different colours, both are {self.primary.colour!r}")

    @property
    def is_image(self) -> bool:
        return self.primary.motion is None

    @property
    def fps(self) -> float:
        """Frame rate of the rendered clip: the world runs at ``base_fps`` and the clip keeps every stride-th frame."""
        return self.base_fps / self.stride

    def attributes(self) -> CaptionAttributes:
        return CaptionAttributes(
            primary=self.primary.attributes(),
            second=None if self.second is None else self.second.attributes(),
            background=self.background,
        )

    def fits(self) -> bool:
        """Whether every object stays fully inside the frame in every frame."""
        for obj in (self.primary, self.second):
            if obj is None:
                continue
            b = obj.boxes(self.num_frames)
            if (
                b[:, 0].min() < -0.5
                or b[:, 1].min() < -0.5
                or b[:, 2].max() > self.width - 0.5
                or b[:, 3].max() > self.height - 0.5
            ):
                return False
        return True


@dataclass(frozen=True)
class ObjectTruth:
    """Ground truth of one object: masks are *visible* coverage in [0, 1]; centroids and boxes are exact (amodal)."""

    masks: torch.Tensor  # (T, H, W) float32
    centroids: torch.Tensor  # (T, 2) float32, (x, y)
    boxes: torch.Tensor  # (T, 4) float32, (x0, y0, x1, y1)


@dataclass(frozen=True)
class ShapesSample:
    """A rendered sample. The main object is drawn on top, so ``masks`` is both its full and its visible coverage.

    ``flow[t]`` maps frame t to frame t+1: on every pixel an object touches in frame t it is that object's
    displacement (dx, dy) in pixels per frame (the top object where both touch), elsewhere 0.
    """

    video: torch.Tensor  # (3, T, H, W) float32 in [-1, 1]
    masks: torch.Tensor  # (T, H, W) float32 coverage of the main object
    centroids: torch.Tensor  # (T, 2) float32
    boxes: torch.Tensor  # (T, 4) float32
    flow: torch.Tensor  # (T - 1, 2, H, W) float32
    labels: dict[str, Any]
    caption: str
    fps: float
    stride: int
    second: ObjectTruth | None
    spec: SampleSpec = field(repr=False)

    def uint8_frames(self) -> torch.Tensor:
        """(T, H, W, 3) uint8, what the video writers take."""
        return video_to_uint8_frames(self.video)


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """Float video in [-1, 1], layout (3, T, H, W) or (3, H, W), to uint8 of the same layout (rounded)."""
    if not isinstance(video, torch.Tensor) or not video.is_floating_point():
        raise ValueError("expected a floating-point torch.Tensor in [-1, 1]")
    if video.ndim not in (3, 4) or video.shape[0] != 3:
        raise ValueError(f"expected (3, T, H, W) or (3, H, W), got shape {tuple(video.shape)}")
    return ((video.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


# --------------------------------------------------------------------------------------------------------------------
# rasterisation


def _circle(pos: np.ndarray, radius: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    # Pixels wholly inside or outside the disk are 1 or 0. For the ring of edge pixels the area is integrated along
    # the axis pointing away from the centre: the chord across the pixel is exact, only its 8-point average over the
    # other axis is approximate (per-pixel error ~2e-3, total area within ~3e-4 even at radius 2.4).
    dx = xs - pos[:, 0, None]  # (T, W)
    dy = ys - pos[:, 1, None]  # (T, H)
    dist = np.sqrt((dy * dy)[:, :, None] + (dx * dx)[:, None, :])
    cov = (dist <= radius - _HALF_DIAGONAL).astype(np.float32)
    t_idx, y_idx, x_idx = np.nonzero(np.abs(dist - np.float32(radius)) < _HALF_DIAGONAL)
    if t_idx.size:
        px, py = dx[t_idx, x_idx], dy[t_idx, y_idx]
        across = np.abs(px) >= np.abs(py)  # edge runs mostly vertically: integrate over rows
        along = np.where(across, py, px)[:, None] + _subsamples()[None, :]  # (N, K)
        chord_pos = np.where(across, px, py)[:, None]
        half_chord = np.sqrt(np.maximum(np.float32(radius**2) - along * along, 0.0))
        inside = np.minimum(chord_pos + 0.5, half_chord) - np.maximum(chord_pos - 0.5, -half_chord)
        cov[t_idx, y_idx, x_idx] = np.clip(inside, 0.0, 1.0).mean(axis=1)
    return cov


def _subsamples() -> np.ndarray:
    return ((np.arange(_QUADRATURE) + 0.5) / _QUADRATURE - 0.5).astype(np.float32)


def _interval_overlap(centres: np.ndarray, half: float, grid: np.ndarray) -> np.ndarray:
    lo = np.maximum(grid - 0.5, centres[:, None] - half)
    hi = np.minimum(grid + 0.5, centres[:, None] + half)
    return np.clip(hi - lo, 0.0, 1.0)


def _square(pos: np.ndarray, radius: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    # Exact area of pixel ∩ square: the product of the two 1-D overlaps.
    a = SQUARE_HALF_SIDE * radius
    return _interval_overlap(pos[:, 1], a, ys)[:, :, None] * _interval_overlap(pos[:, 0], a, xs)[:, None, :]


def _triangle_edges(radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Outward unit normals (3, 2) and offsets (3,): a point p relative to the centroid is inside iff
    normals @ p <= offsets for all three edges."""
    angles = np.deg2rad([90.0, 210.0, 330.0])  # edge normals of an upward triangle (y down): bottom, upper-left, right
    normals = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    offsets = np.full(3, TRIANGLE_CIRCUMRADIUS * radius / 2)  # inradius = circumradius / 2
    return normals, offsets


def _half_plane_coverage(signed_dist: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Exact area of a unit pixel inside the half-plane ``normal . p <= offset``, from the signed distance of the pixel
    centre to the edge line (positive outside): the CDF of a sum of two uniforms, a trapezoid."""
    a, b = float(abs(normal[0])), float(abs(normal[1]))
    s = -signed_dist
    if min(a, b) < 1e-6:
        return np.clip(s / max(a, b) + 0.5, 0.0, 1.0)
    ramp = np.zeros_like(s)
    total = np.zeros_like(s)
    for corner, sign in (((a + b) / 2, 1.0), ((a - b) / 2, -1.0), ((b - a) / 2, -1.0), (-(a + b) / 2, 1.0)):
        np.add(s, np.float32(corner), out=ramp)
        np.maximum(ramp, 0.0, out=ramp)
        ramp *= ramp
        total += np.float32(sign) * ramp
    return np.clip(total / np.float32(2 * a * b), 0.0, 1.0, out=total)


def _triangle(pos: np.ndarray, radius: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    # Away from the corners a pixel meets at most one edge, where the coverage is the exact area cut by that edge
    # (the other two factors are 1). The few pixels near two edges (the corners) are integrated column-wise instead.
    normals, offsets = _triangle_edges(radius)
    dx = xs - pos[:, 0, None]  # (T, W)
    dy = ys - pos[:, 1, None]  # (T, H)
    cov = None
    near_edges = None
    for n, off in zip(normals, offsets):
        d = (np.float32(n[0]) * dx)[:, None, :] + (np.float32(n[1]) * dy - np.float32(off))[:, :, None]
        edge_cov = _half_plane_coverage(d, n)
        cov = edge_cov if cov is None else np.multiply(cov, edge_cov, out=cov)
        near = np.abs(d) < _HALF_DIAGONAL
        near_edges = near.astype(np.int8) if near_edges is None else near_edges + near
    t_idx, y_idx, x_idx = np.nonzero((near_edges >= 2) & (cov > 0))
    if t_idx.size:
        # Corner pixels: the vertical chord at abscissa u spans [-R + sqrt(3)|u|, R/2] (exact), averaged over 8 u's.
        big_r = np.float32(TRIANGLE_CIRCUMRADIUS * radius)
        u = dx[t_idx, x_idx][:, None] + _subsamples()[None, :]  # (N, K)
        v = dy[t_idx, y_idx][:, None]
        top = np.float32(math.sqrt(3)) * np.abs(u) - big_r
        inside = np.minimum(v + 0.5, big_r / 2) - np.maximum(v - 0.5, top)
        cov[t_idx, y_idx, x_idx] = np.clip(inside, 0.0, 1.0).mean(axis=1)
    return cov


_RASTERISERS = {"circle": _circle, "square": _square, "triangle": _triangle}


def _window(centres: np.ndarray, before: float, after: float, size: int) -> np.ndarray:
    """Per-frame pixel indices (T, n) of a window holding every pixel the object can touch along one axis."""
    n = min(math.ceil(before + after) + 3, size)
    origin = np.clip(np.floor(centres - before).astype(np.int64) - 1, 0, size - n)
    return origin[:, None] + np.arange(n)[None, :]


def _coverage(obj: ShapeSpec, num_frames: int, height: int, width: int) -> np.ndarray:
    # Only a window around the object is rasterised (pixels farther than half a pixel from its box are empty), which
    # is most of the speed. float32 keeps positions to ~1e-5 px at these sizes.
    pos = obj.positions(num_frames)
    left, top, right, bottom = shape_extents(obj.shape, obj.radius)
    xi = _window(pos[:, 0], left, right, width)
    yi = _window(pos[:, 1], top, bottom, height)
    local = _RASTERISERS[obj.shape](pos.astype(np.float32), obj.radius, xi.astype(np.float32), yi.astype(np.float32))
    cov = np.zeros((num_frames, height, width), dtype=np.float32)
    cov[np.arange(num_frames)[:, None, None], yi[:, :, None], xi[:, None, :]] = local
    return cov


def _labels(spec: SampleSpec) -> dict[str, Any]:
    labels: dict[str, Any] = {}
    for prefix, obj in (("", spec.primary), ("second_", spec.second)):
        for key in ("colour", "shape", "motion", "size", "speed"):
            value = None if obj is None else getattr(obj, key)
            labels[prefix + key] = "none" if value is None else value
    labels.update(
        has_second=spec.second is not None,
        background=spec.background,
        fps=spec.fps,
        stride=spec.stride,
        phrasing=spec.phrasing,
    )
    return labels


def _composite(image: np.ndarray, colour: str, cov: np.ndarray) -> None:
    for c, value in enumerate(COLOURS[colour]):
        channel = image[c]
        channel += (np.float32(value) - channel) * cov


def _paint_flow(flow: np.ndarray, on: np.ndarray, velocity: tuple[float, float]) -> None:
    for c in range(2):
        flow[:, c][on] = velocity[c]


def render(spec: SampleSpec) -> ShapesSample:
    """Render ``spec``: a pure function of the spec, so the same spec always gives bit-identical tensors."""
    if not isinstance(spec, SampleSpec):
        raise ValueError(f"render expects a SampleSpec, got {type(spec).__name__}")
    t, h, w = spec.num_frames, spec.height, spec.width
    image = np.empty((3, t, h, w), dtype=np.float32)
    for c, value in enumerate(BACKGROUNDS[spec.background]):
        image[c] = value
    flow = np.zeros((t - 1, 2, h, w), dtype=np.float32)
    cov1 = _coverage(spec.primary, t, h, w)
    second_truth = None
    if spec.second is not None:  # drawn first, so the main object covers it
        cov2 = _coverage(spec.second, t, h, w)
        _composite(image, spec.second.colour, cov2)
        if spec.second.motion != "still":
            _paint_flow(flow, cov2[:-1] > 0, spec.second.velocity)
        second_truth = ObjectTruth(
            masks=torch.from_numpy(cov2 * (1.0 - cov1)),
            centroids=torch.from_numpy(spec.second.positions(t).astype(np.float32)),
            boxes=torch.from_numpy(spec.second.boxes(t).astype(np.float32)),
        )
    _composite(image, spec.primary.colour, cov1)
    on1 = cov1[:-1] > 0
    _paint_flow(flow, on1, spec.primary.velocity)
    image *= 2.0
    image -= 1.0
    np.clip(image, -1.0, 1.0, out=image)
    return ShapesSample(
        video=torch.from_numpy(image),
        masks=torch.from_numpy(cov1),
        centroids=torch.from_numpy(spec.primary.positions(t).astype(np.float32)),
        boxes=torch.from_numpy(spec.primary.boxes(t).astype(np.float32)),
        flow=torch.from_numpy(flow),
        labels=_labels(spec),
        caption=caption_text(spec.attributes(), spec.phrasing),
        fps=spec.fps,
        stride=spec.stride,
        second=second_truth,
        spec=spec,
    )
