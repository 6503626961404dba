"""The procedural shapes world: seeded captioned videos/images with full ground truth, and torch datasets over it.

vidiff trains its small embedded text-to-video and image-to-video models on this world and its probes check prompt
adherence against the exact ground truth. Frame stride / fps variation is built in (VideoCrafter conditions on fps,
DynamiCrafter on frame stride): a clip at stride s keeps every s-th frame of a world running at ``base_fps``, so
objects move s times farther per frame and ``fps = base_fps / s``.

Words and parsing live in :mod:`vidiff.data.shapes_vocab`, geometry and rendering in :mod:`vidiff.data.shapes_render`;
this module samples specs and wraps everything in datasets. See ``docs/shapes_world.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vidiff.data.shapes_render import (
    ObjectTruth,
    SampleSpec,
    ShapeSpec,
    ShapesSample,
    render,
    shape_area,
    shape_extents,
    to_uint8,
)
from vidiff.data.shapes_vocab import (
    BACKGROUNDS,
    COLOURS,
    HELDOUT_TRIPLES,
    IMAGE_PHRASINGS,
    MOTIONS,
    PHRASINGS,
    SHAPES,
    SIZES,
    SPEEDS,
    SPLITS,
    TRAIN_TRIPLES,
    VIDEO_PHRASINGS,
    CaptionAttributes,
    ObjectAttributes,
    caption_text,
    parse_caption,
    triples_for_split,
    unknown_words,
    vocabulary,
)

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "HELDOUT_TRIPLES",
    "IMAGE_PHRASINGS",
    "MOTIONS",
    "PHRASINGS",
    "SHAPES",
    "SIZES",
    "SPEEDS",
    "TRAIN_TRIPLES",
    "VIDEO_PHRASINGS",
    "CaptionAttributes",
    "ObjectAttributes",
    "ObjectTruth",
    "SampleSpec",
    "ShapeSpec",
    "ShapesImageDataset",
    "ShapesSample",
    "ShapesVideoDataset",
    "ShapesWorld",
    "ShapesWorldConfig",
    "caption",
    "parse_caption",
    "render",
    "sample_spec",
    "shape_area",
    "shape_extents",
    "to_uint8",
    "triples_for_split",
    "unknown_words",
    "vocabulary",
]

# Object radius as a fraction of min(height, width).
SIZE_FRACTIONS: dict[str, float] = {"small": 0.075, "medium": 0.105, "large": 0.14}
# Speed as a fraction of the world's top speed (see ShapesWorld.top_speed).
SPEED_FACTORS: dict[str, float] = {"slow": 0.4, "normal": 0.7, "fast": 1.0}
DIRECTION_VECTORS: dict[str, tuple[float, float]] = {
    "left": (-1.0, 0.0),
    "right": (1.0, 0.0),
    "up": (0.0, -1.0),  # y points down in images
    "down": (0.0, 1.0),
    "still": (0.0, 0.0),
}
BORDER_MARGIN = 1.0  # pixels kept free between an object and the frame edge
MIN_SIDE = 32
_SECOND_OBJECT_TRIES = 8
_VIDEO_STREAM, _IMAGE_STREAM = 0, 1


def _check_subset(name: str, values: tuple, allowed: tuple | dict) -> None:
    if not isinstance(values, tuple) or not values:
        raise ValueError(f"{name} must be a non-empty tuple, got {values!r}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{name} has unknown entries {bad}; allowed: {tuple(allowed)}")


@dataclass(frozen=True)
class ShapesWorldConfig:
    """Knobs of the world. Sampling is uniform over every listed option."""

    height: int = 64
    width: int = 64
    num_frames: int = 16
    strides: tuple[int, ...] = (1, 2, 3, 4)
    base_fps: float = 16.0
    second_object_prob: float = 0.2
    sizes: tuple[str, ...] = SIZES
    speeds: tuple[str, ...] = SPEEDS
    backgrounds: tuple[str, ...] = tuple(BACKGROUNDS)
    phrasings: tuple[str, ...] = VIDEO_PHRASINGS
    image_phrasings: tuple[str, ...] = IMAGE_PHRASINGS
    seed: int = 0
    split: str = "train"

    def __post_init__(self) -> None:
        for name in ("height", "width", "num_frames", "seed"):
            if not isinstance(getattr(self, name), int | np.integer) or isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be an int, got {getattr(self, name)!r}")
        if self.height < MIN_SIDE or self.width < MIN_SIDE:
            raise ValueError(f"frames must be at least {MIN_SIDE}x{MIN_SIDE}, got {self.height}x{self.width}")
        if self.num_frames < 2:
            raise ValueError(f"num_frames must be >= 2 for videos, got {self.num_frames}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if (
            not isinstance(self.strides, tuple)
            or not self.strides
            or any(not isinstance(s, int | np.integer) or s < 1 for s in self.strides)
        ):
            raise ValueError(f"strides must be a non-empty tuple of ints >= 1, got {self.strides!r}")
        if not self.base_fps > 0:
            raise ValueError(f"base_fps must be > 0, got {self.base_fps}")
        if not 0.0 <= self.second_object_prob <= 1.0:
            raise ValueError(f"second_object_prob must be in [0, 1], got {self.second_object_prob}")
        _check_subset("sizes", self.sizes, SIZES)
        _check_subset("speeds", self.speeds, SPEEDS)
        _check_subset("backgrounds", self.backgrounds, BACKGROUNDS)
        _check_subset("phrasings", self.phrasings, VIDEO_PHRASINGS)
        _check_subset("image_phrasings", self.image_phrasings, IMAGE_PHRASINGS)
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")


def _as_rng(source: int | np.random.Generator, seed: int, stream: int) -> np.random.Generator:
    if isinstance(source, np.random.Generator):
        return source
    if isinstance(source, bool) or not isinstance(source, int | np.integer) or source < 0:
        raise ValueError(f"expected a non-negative sample index or a numpy Generator, got {source!r}")
    return np.random.default_rng([seed, int(source), stream])


def _pick(rng: np.random.Generator, options: tuple | list) -> Any:
    return options[int(rng.integers(len(options)))]


class ShapesWorld:
    """Samples and renders the world described by a :class:`ShapesWorldConfig`.

    Speeds are set by the config so that every combination of attributes fits: the world's top speed (``fast``,
    in pixels per base frame) is the one at which a large object of the widest shape crosses the whole free width in
    ``max(strides) * (num_frames - 1)`` base frames; ``normal`` and ``slow`` are 0.7 and 0.4 of it.
    """

    def __init__(self, config: ShapesWorldConfig | None = None) -> None:
        self.config = config or ShapesWorldConfig()
        if not isinstance(self.config, ShapesWorldConfig):
            raise ValueError(f"expected a ShapesWorldConfig, got {type(self.config).__name__}")
        c = self.config
        large = self.radius("large")
        widest = max(sum(shape_extents(s, large)[0::2]) for s in SHAPES)
        tallest = max(sum(shape_extents(s, large)[1::2]) for s in SHAPES)
        free = min(c.width - widest, c.height - tallest) - 2 * BORDER_MARGIN
        self.top_speed = free / (max(c.strides) * (c.num_frames - 1))

    # -- geometry --------------------------------------------------------------------------------------------------
    def radius(self, size: str) -> float:
        """Object radius in pixels for a size word."""
        if size not in SIZE_FRACTIONS:
            raise ValueError(f"unknown size {size!r}; expected one of {SIZES}")
        return SIZE_FRACTIONS[size] * min(self.config.height, self.config.width)

    def speed(self, speed: str) -> float:
        """Speed in pixels per *base* frame (per rendered frame it is this times the stride)."""
        if speed not in SPEED_FACTORS:
            raise ValueError(f"unknown speed {speed!r}; expected one of {SPEEDS}")
        return SPEED_FACTORS[speed] * self.top_speed

    def velocity(self, motion: str | None, speed: str, stride: int) -> tuple[float, float]:
        """Displacement (dx, dy) per rendered frame."""
        if motion is None:
            return (0.0, 0.0)
        if motion not in DIRECTION_VECTORS:
            raise ValueError(f"unknown motion {motion!r}; expected one of {MOTIONS}")
        dx, dy = DIRECTION_VECTORS[motion]
        v = self.speed(speed) * stride
        return (dx * v + 0.0, dy * v + 0.0)  # + 0.0 turns -0.0 into 0.0

    def _start_range(self, attrs: ObjectAttributes, velocity: tuple[float, float], num_frames: int) -> np.ndarray:
        """[[x_lo, x_hi], [y_lo, y_hi]] of start positions keeping the object inside the frame for the whole clip."""
        left, top, right, bottom = shape_extents(attrs.shape, self.radius(attrs.size))
        travel = np.asarray(velocity) * (num_frames - 1)
        lo = np.array([left, top]) - 0.5 + BORDER_MARGIN - np.minimum(travel, 0.0)
        hi = np.array([self.config.width - right, self.config.height - bottom]) - 0.5 - BORDER_MARGIN
        hi = hi - np.maximum(travel, 0.0)
        if np.any(hi < lo - 1e-9):
            raise ValueError(
                f"{attrs} at velocity {velocity} does not fit a {self.config.height}x{self.config.width} "
                f"frame for {num_frames} frames"
            )
        return np.stack([lo, np.maximum(hi, lo)], axis=1)

    def make_shape(
        self, attrs: ObjectAttributes, stride: int, rng: np.random.Generator, num_frames: int | None = None
    ) -> ShapeSpec:
        """Place an object with these attributes at a random start from which its whole motion stays in frame."""
        t = self.config.num_frames if num_frames is None else num_frames
        vel = self.velocity(attrs.motion, attrs.speed, stride)
        rng_box = self._start_range(attrs, vel, t)
        start = rng_box[:, 0] + rng.random(2) * (rng_box[:, 1] - rng_box[:, 0])
        return ShapeSpec(
            attrs.colour,
            attrs.shape,
            attrs.motion,
            attrs.size,
            attrs.speed,
            self.radius(attrs.size),
            (float(start[0]), float(start[1])),
            vel,
        )

    def _place_second(
        self, attrs: ObjectAttributes, primary: ShapeSpec, stride: int, rng: np.random.Generator, num_frames: int
    ) -> ShapeSpec:
        # The main object is drawn on top; try a few starts and keep the one whose swept box overlaps it least.
        def swept(obj: ShapeSpec) -> np.ndarray:
            b = obj.boxes(num_frames)
            return np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()])

        p = swept(primary)
        best, best_overlap = None, np.inf
        for _ in range(_SECOND_OBJECT_TRIES):
            cand = self.make_shape(attrs, stride, rng, num_frames)
            q = swept(cand)
            overlap = max(0.0, min(p[2], q[2]) - max(p[0], q[0])) * max(0.0, min(p[3], q[3]) - max(p[1], q[1]))
            if overlap < best_overlap:
                best, best_overlap = cand, overlap
            if overlap == 0.0:
                break
        return best

    def make_spec(
        self, attrs: CaptionAttributes, stride: int = 1, phrasing: str | None = None, rng: np.random.Generator | int = 0
    ) -> SampleSpec:
        """A renderable spec with exactly these attributes (positions drawn from ``rng``, or a seed)."""
        if not isinstance(attrs, CaptionAttributes):
            raise ValueError(f"expected CaptionAttributes, got {type(attrs).__name__}")
        if isinstance(stride, bool) or not isinstance(stride, int | np.integer) or stride < 1:
            raise ValueError(f"stride must be an int >= 1, got {stride!r}")
        if not isinstance(rng, np.random.Generator):
            rng = np.random.default_rng(rng)
        image = attrs.is_image
        num_frames = 1 if image else self.config.num_frames
        if phrasing is None:
            phrasing = "image_canonical" if image else "canonical"
        if not image and stride > max(self.config.strides):
            raise ValueError(
                f"stride {stride} is beyond this world's largest stride {max(self.config.strides)}; "
                "motion would not fit in the frame"
            )
        primary = self.make_shape(attrs.primary, stride, rng, num_frames)
        second = None
        if attrs.second is not None:
            second = self._place_second(attrs.second, primary, stride, rng, num_frames)
        return SampleSpec(
            primary,
            second,
            attrs.background,
            self.config.height,
            self.config.width,
            num_frames,
            int(stride) if not image else 1,
            self.config.base_fps,
            phrasing,
        )

    # -- sampling --------------------------------------------------------------------------------------------------
    def _sample_object(self, rng: np.random.Generator, triple: tuple[str, str, str]) -> ObjectAttributes:
        colour, shape, motion = triple
        size = _pick(rng, self.config.sizes)
        speed = "normal" if motion == "still" else _pick(rng, self.config.speeds)
        return ObjectAttributes(colour, shape, motion, size, speed)

    def _sample_still_object(self, rng: np.random.Generator, colours: tuple[str, ...]) -> ObjectAttributes:
        colour = _pick(rng, colours)
        return ObjectAttributes(colour, _pick(rng, SHAPES), None, _pick(rng, self.config.sizes))

    def sample_spec(self, source: int | np.random.Generator) -> SampleSpec:
        """Video spec for a sample index (deterministic per (config.seed, index)) or drawn from a numpy Generator."""
        c = self.config
        rng = _as_rng(source, c.seed, _VIDEO_STREAM)
        stride = int(_pick(rng, c.strides))
        primary = self._sample_object(rng, _pick(rng, triples_for_split(c.split)))
        background = _pick(rng, c.backgrounds)
        phrasing = _pick(rng, c.phrasings)
        second = None
        if rng.random() < c.second_object_prob:
            # Second objects never use a held-out triple outside the held-out split's main object.
            pool = triples_for_split("all" if c.split == "all" else "train")
            pool = [t for t in pool if t[0] != primary.colour]
            second = self._sample_object(rng, _pick(rng, pool))
        attrs = CaptionAttributes(primary, second, background)
        return self.make_spec(attrs, stride=stride, phrasing=phrasing, rng=rng)

    def sample_image_spec(self, source: int | np.random.Generator) -> SampleSpec:
        """Single-frame spec (no motion, image phrasings), deterministic per (config.seed, index)."""
        c = self.config
        rng = _as_rng(source, c.seed, _IMAGE_STREAM)
        primary = self._sample_still_object(rng, tuple(COLOURS))
        background = _pick(rng, c.backgrounds)
        phrasing = _pick(rng, c.image_phrasings)
        second = None
        if rng.random() < c.second_object_prob:
            second = self._sample_still_object(rng, tuple(x for x in COLOURS if x != primary.colour))
        return self.make_spec(CaptionAttributes(primary, second, background), stride=1, phrasing=phrasing, rng=rng)

    def sample(self, index: int) -> ShapesSample:
        return render(self.sample_spec(index))

    def spec_from_caption(self, text: str, stride: int = 1, seed: int = 0) -> SampleSpec:
        """Ground-truth spec for a prompt (e.g. for probes); the caption is kept in the canonical phrasing."""
        attrs = parse_caption(text)
        if attrs is None:
            unknown = unknown_words(text)
            hint = f" (unknown words: {', '.join(unknown)})" if unknown else ""
            raise ValueError(
                f"cannot parse {text!r} as a shapes-world caption{hint}; try e.g. 'a red circle moving left'"
            )
        if attrs.second is not None and attrs.second.colour == attrs.primary.colour:
            raise ValueError(f"the two objects in {text!r} must have different colours")
        return self.make_spec(attrs, stride=stride, rng=seed)


# --------------------------------------------------------------------------------------------------------------------
# module-level conveniences


def sample_spec(source: int | np.random.Generator, config: ShapesWorldConfig | None = None) -> SampleSpec:
    """Video spec for an index (deterministic per (seed, index)) or from a Generator, under ``config``."""
    return ShapesWorld(config).sample_spec(source)


def caption(spec: SampleSpec, phrasing: str | None = None, rng: np.random.Generator | None = None) -> str:
    """Caption of ``spec``: in ``phrasing`` if given, else a phrasing drawn from ``rng`` if given, else the spec's own."""
    if not isinstance(spec, SampleSpec):
        raise ValueError(f"caption expects a SampleSpec, got {type(spec).__name__}")
    if phrasing is None:
        if rng is not None:
            phrasing = _pick(rng, IMAGE_PHRASINGS if spec.is_image else VIDEO_PHRASINGS)
        else:
            phrasing = spec.phrasing
    return caption_text(spec.attributes(), phrasing)


# --------------------------------------------------------------------------------------------------------------------
# datasets


class ShapesVideoDataset(Dataset):
    """Indexable, deterministic per (config.seed, index): the same index always gives the same tensors.

    Items are dicts: ``video`` (3, T, H, W) float32 in [-1, 1], ``caption``, ``fps`` (float32 scalar),
    ``frame_stride`` (int64 scalar), ``index``, ``labels`` (flat dict of str / numbers) and, with ``ground_truth``,
    ``masks`` (T, H, W), ``centroids`` (T, 2), ``boxes`` (T, 4), ``flow`` (T-1, 2, H, W) for the main object and
    ``second_masks`` / ``second_centroids`` / ``second_boxes`` (zeros when ``labels['has_second']`` is False), so the
    default collate function batches them.
    """

    def __init__(self, config: ShapesWorldConfig | None = None, length: int = 100_000, ground_truth: bool = True):
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        self.world = ShapesWorld(config)
        self.config = self.world.config
        self.length = length
        self.ground_truth = ground_truth

    def __len__(self) -> int:
        return self.length

    def _check_index(self, index: int) -> int:
        if isinstance(index, torch.Tensor):
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int | np.integer):
            raise TypeError(f"dataset index must be an int, got {type(index).__name__}")
        if index < 0:
            index += self.length
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of length {self.length}")
        return int(index)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        sample = render(self.world.sample_spec(index))
        item: dict[str, Any] = {
            "video": sample.video,
            "caption": sample.caption,
            "fps": torch.tensor(sample.fps, dtype=torch.float32),
            "frame_stride": torch.tensor(sample.stride, dtype=torch.int64),
            "index": index,
            "labels": sample.labels,
        }
        if self.ground_truth:
            item.update(masks=sample.masks, centroids=sample.centroids, boxes=sample.boxes, flow=sample.flow)
            item.update(_second_truth(sample))
        return item


def _second_truth(sample: ShapesSample) -> dict[str, torch.Tensor]:
    if sample.second is not None:
        s = sample.second
        return {"second_masks": s.masks, "second_centroids": s.centroids, "second_boxes": s.boxes}
    return {
        "second_masks": torch.zeros_like(sample.masks),
        "second_centroids": torch.zeros_like(sample.centroids),
        "second_boxes": torch.zeros_like(sample.boxes),
    }


class ShapesImageDataset(ShapesVideoDataset):
    """Single still frames captioned like "a red circle" for joint image-video training.

    Items: ``image`` (3, H, W) in [-1, 1], ``caption``, ``index``, ``labels`` (motion "none") and, with
    ``ground_truth``, ``mask`` (H, W), ``centroid`` (2,), ``box`` (4,) and ``second_mask`` / ``second_centroid`` /
    ``second_box``. Held-out triples concern motion, so images use every colour and shape.
    """

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        sample = render(self.world.sample_image_spec(index))
        item: dict[str, Any] = {
            "image": sample.video[:, 0],
            "caption": sample.caption,
            "index": index,
            "labels": sample.labels,
        }
        if self.ground_truth:
            item.update(mask=sample.masks[0], centroid=sample.centroids[0], box=sample.boxes[0])
            second = _second_truth(sample)
            item.update(
                second_mask=second["second_masks"][0],
                second_centroid=second["second_centroids"][0],
                second_box=second["second_boxes"][0],
            )
        return item
