"""Opt-in extra object colours for the shapes world (a new word for a LoRA to learn), and a colour measure for them.

The world's palette (:data:`vidiff.data.shapes_vocab.COLOURS`) never changes: the default data, the held-out split and
the shipped models stay as they are. A training config asks for more colours with two keys of a ``shapes`` dataset::

    data:
      images: {type: shapes, ..., extra_colours: {pink: [1.0, 0.5, 0.75]}, extra_colour_prob: 0.5}

and :class:`RecolouredShapes` repaints the main object of that share of the items (chosen per index, so the data stay
deterministic) in an extra colour, exactly: the renderer composites ``pixel = below + (colour - below) · coverage``, so
adding ``(new - old) · coverage`` gives the pixel the renderer would have drawn in the new colour. The caption's colour
word is replaced.

:func:`object_colour` / :func:`nearest_colour_name` are the measure ``docs/lora.md`` reports: the object's colour is the
median of the pixels far from the background (the border median), and it is named by the nearest colour of the palette
plus the extra colours.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .shapes_vocab import BACKGROUNDS, COLOURS

__all__ = ["PALETTE_KEYS", "RecolouredShapes", "check_extra_colours", "nearest_colour_name", "object_colour"]

PALETTE_KEYS = ("extra_colours", "extra_colour_prob")
_MIN_DISTANCE = 0.25  # an extra colour closer than this (RGB in [0, 1]) to a palette or background colour is refused


def check_extra_colours(colours: Any) -> dict[str, tuple[float, float, float]]:
    """``{word: [r, g, b]}`` with r, g, b in [0, 1], new words, far enough from every palette and background colour
    that the nearest-colour measure can tell them apart; a ValueError says what is wrong."""
    if not isinstance(colours, Mapping) or not colours:
        raise ValueError(f"extra_colours must be a non-empty mapping of word -> [r, g, b], got {colours!r}")
    out = {}
    taken = {**COLOURS, **BACKGROUNDS}
    for word, rgb in colours.items():
        if not isinstance(word, str) or not re.fullmatch(r"[a-z]+", word):
            raise ValueError(f"extra colour names must be lower-case words, got {word!r}")
        if word in taken:
            raise ValueError(f"extra colour {word!r} is already a colour of the world")
        if not isinstance(rgb, Sequence) or len(rgb) != 3 or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in rgb):
            raise ValueError(f"extra colour {word!r} must be [r, g, b] with values in [0, 1], got {rgb!r}")
        near, d = min(((name, float(np.linalg.norm(np.subtract(rgb, c)))) for name, c in taken.items()),
                      key=lambda x: x[1])
        if d < _MIN_DISTANCE:
            raise ValueError(f"extra colour {word!r} {list(rgb)} is {d:.2f} from {near!r}; keep it at least "
                             f"{_MIN_DISTANCE} away so it can be told apart")
        out[word] = tuple(float(v) for v in rgb)
        taken[word] = out[word]
    return out


class RecolouredShapes(Dataset):
    """A shapes dataset (built with ``ground_truth=True``) whose main object is repainted in an extra colour in a
    ``probability`` share of the items; ``keep_truth`` keeps the ground-truth masks (training drops them otherwise)."""

    def __init__(self, dataset: Dataset, colours: Mapping[str, Sequence[float]], probability: float = 0.5,
                 seed: int = 0, keep_truth: bool = False) -> None:
        if isinstance(probability, bool) or not isinstance(probability, int | float) or not 0 < probability <= 1:
            raise ValueError(f"extra_colour_prob must be in (0, 1], got {probability!r}")
        self.dataset = dataset
        self.colours = check_extra_colours(colours)
        self.probability = float(probability)
        self.seed = int(seed)
        self.keep_truth = keep_truth

    def __len__(self) -> int:
        return len(self.dataset)

    def choice(self, index: int) -> str | None:
        """The extra colour item ``index`` gets, or None (a pure function of seed and index)."""
        rng = np.random.default_rng([self.seed, 7919, int(index)])
        if rng.random() >= self.probability:
            return None
        names = sorted(self.colours)
        return names[int(rng.integers(len(names)))]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.dataset[index])
        new = self.choice(index if index >= 0 else index + len(self))
        if new is not None:
            old = item["labels"]["colour"]
            key, mask_key = ("video", "masks") if "video" in item else ("image", "mask")
            cov = item[mask_key].float()
            delta = 2.0 * (torch.tensor(self.colours[new]) - torch.tensor(COLOURS[old]))  # pixels are in [-1, 1]
            shape = (3,) + (1,) * cov.ndim
            item[key] = (item[key] + delta.view(shape) * cov[None]).clamp(-1.0, 1.0)
            item["caption"] = re.sub(rf"\b{old}\b", new, item["caption"])
            item["labels"] = {**item["labels"], "colour": new}
        if not self.keep_truth:
            for k in ("masks", "centroids", "boxes", "flow", "second_masks", "second_centroids", "second_boxes",
                      "mask", "centroid", "box", "second_mask", "second_centroid", "second_box"):
                item.pop(k, None)
        return item


def object_colour(image: np.ndarray | torch.Tensor, threshold: float = 0.25) -> np.ndarray | None:
    """RGB in [0, 1] of the object in a uint8 (H, W, 3) frame: the median of the pixels at least ``threshold`` from
    the background (the median of the border) and at least half as far as the farthest one; None when no pixel is."""
    frame = np.asarray(image, dtype=np.float64) / 255.0
    border = np.concatenate([frame[0], frame[-1], frame[1:-1, 0], frame[1:-1, -1]], axis=0)
    bg = np.median(border, axis=0)
    dist = np.linalg.norm(frame - bg, axis=-1)
    if dist.max() < threshold:
        return None
    strong = frame[dist >= max(threshold, 0.5 * dist.max())]
    return np.median(strong, axis=0)


def nearest_colour_name(rgb: Sequence[float], extra: Mapping[str, Sequence[float]]) -> str:
    """The name of the colour of the palette plus ``extra`` nearest (Euclidean, RGB in [0, 1]) to ``rgb``."""
    palette = {**COLOURS, **{k: tuple(v) for k, v in extra.items()}}
    names = list(palette)
    d = np.linalg.norm(np.asarray([palette[n] for n in names]) - np.asarray(rgb, dtype=np.float64)[None], axis=1)
    return names[int(np.argmin(d))]
