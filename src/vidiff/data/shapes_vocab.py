"""The words of the shapes world: attributes, caption phrasings, the parser and the held-out split.

This module is pure text (no geometry, no numpy), so probes and the demo can parse prompts and check vocabulary without
rendering anything. See ``docs/shapes_world.md`` for the world described in prose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "BACKGROUNDS",
    "COLOURS",
    "DEFAULT_BACKGROUND",
    "DIRECTIONS",
    "HELDOUT_TRIPLES",
    "IMAGE_PHRASINGS",
    "MOTIONS",
    "PHRASINGS",
    "SHAPES",
    "SIZES",
    "SPEEDS",
    "SPLITS",
    "TRAIN_TRIPLES",
    "VIDEO_PHRASINGS",
    "CaptionAttributes",
    "ObjectAttributes",
    "caption_text",
    "parse_caption",
    "triples_for_split",
    "unknown_words",
    "vocabulary",
]

# Object colours (RGB in [0, 1]). Chosen far apart so that "which palette colour is nearest" is a reliable probe.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.90, 0.10, 0.10),
    "green": (0.10, 0.75, 0.20),
    "blue": (0.15, 0.30, 1.00),
    "yellow": (0.95, 0.90, 0.10),
    "white": (1.00, 1.00, 1.00),
    "purple": (0.60, 0.15, 0.80),
    "orange": (1.00, 0.55, 0.00),
    "cyan": (0.10, 0.90, 0.90),
}
# Background colours are a separate, darker/duller palette so no object ever vanishes into its background and a colour
# word is never ambiguous between object and background.
BACKGROUNDS: dict[str, tuple[float, float, float]] = {
    "black": (0.0, 0.0, 0.0),
    "gray": (0.40, 0.40, 0.40),
    "navy": (0.05, 0.05, 0.30),
    "brown": (0.35, 0.20, 0.08),
}
DEFAULT_BACKGROUND = "black"
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
MOTIONS: tuple[str, ...] = (*DIRECTIONS, "still")
SIZES: tuple[str, ...] = ("small", "medium", "large")
SPEEDS: tuple[str, ...] = ("slow", "normal", "fast")
SPLITS: tuple[str, ...] = ("train", "heldout", "all")

# Only non-default attributes get a word, so a caption determines its attributes exactly.
SIZE_WORDS: dict[str, str] = {"small": "small", "large": "large"}
SPEED_WORDS: dict[str, str] = {"slow": "slowly", "fast": "quickly"}

VIDEO_PHRASINGS: tuple[str, ...] = ("canonical", "moves_to", "is_moving", "there_is", "heading")
IMAGE_PHRASINGS: tuple[str, ...] = ("image_canonical", "image_picture", "image_plain")
PHRASINGS: tuple[str, ...] = VIDEO_PHRASINGS + IMAGE_PHRASINGS


# --------------------------------------------------------------------------------------------------------------------
# held-out split


def _heldout_triples() -> tuple[tuple[str, str, str], ...]:
    # k -> (k mod 8, k mod 3, k mod 5) is a bijection on Z/120 (8, 3, 5 pairwise coprime), so k = 1..12 gives 12
    # distinct triples (10 %) that spread evenly: every shape 4 times, every colour 1-2 times, every motion 2-3 times.
    # k = 0 ("a red circle moving left", the canonical example prompt) is deliberately not held out.
    n = len(COLOURS) * len(SHAPES) * len(MOTIONS)
    colours = tuple(COLOURS)
    return tuple(
        (colours[k % len(colours)], SHAPES[k % len(SHAPES)], MOTIONS[k % len(MOTIONS)]) for k in range(1, n // 10 + 1)
    )


HELDOUT_TRIPLES: tuple[tuple[str, str, str], ...] = _heldout_triples()
ALL_TRIPLES: tuple[tuple[str, str, str], ...] = tuple((c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS)
TRAIN_TRIPLES: tuple[tuple[str, str, str], ...] = tuple(t for t in ALL_TRIPLES if t not in set(HELDOUT_TRIPLES))


def triples_for_split(split: str) -> tuple[tuple[str, str, str], ...]:
    """The (colour, shape, motion) triples a split draws its main object from."""
    if split == "train":
        return TRAIN_TRIPLES
    if split == "heldout":
        return HELDOUT_TRIPLES
    if split == "all":
        return ALL_TRIPLES
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


# --------------------------------------------------------------------------------------------------------------------
# attributes


def _check_choice(what: str, value: object, allowed: tuple[str, ...] | dict) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; expected one of {tuple(allowed)}")


@dataclass(frozen=True)
class ObjectAttributes:
    """What a caption says about one object. ``motion`` is None for still images (no motion at all)."""

    colour: str
    shape: str
    motion: str | None
    size: str = "medium"
    speed: str = "normal"

    def __post_init__(self) -> None:
        _check_choice("colour", self.colour, COLOURS)
        _check_choice("shape", self.shape, SHAPES)
        if self.motion is not None:
            _check_choice("motion", self.motion, MOTIONS)
        _check_choice("size", self.size, SIZES)
        _check_choice("speed", self.speed, SPEEDS)
        if self.motion in (None, "still") and self.speed != "normal":
            raise ValueError(f"speed {self.speed!r} needs a moving object, got motion {self.motion!r}")


@dataclass(frozen=True)
class CaptionAttributes:
    """Everything a caption conveys: the main object, an optional second object and the background."""

    primary: ObjectAttributes
    second: ObjectAttributes | None = None
    background: str = DEFAULT_BACKGROUND

    def __post_init__(self) -> None:
        _check_choice("background", self.background, BACKGROUNDS)
        if self.second is not None and (self.second.motion is None) != (self.primary.motion is None):
            raise ValueError("both objects must be moving-or-still (video) or both motionless (image)")

    @property
    def is_image(self) -> bool:
        return self.primary.motion is None


# --------------------------------------------------------------------------------------------------------------------
# caption generation


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(obj: ObjectAttributes) -> str:
    words = [SIZE_WORDS[obj.size]] if obj.size in SIZE_WORDS else []
    return " ".join([*words, obj.colour, obj.shape])


def _with_article(obj: ObjectAttributes) -> str:
    np_ = _noun_phrase(obj)
    return f"{_article(np_)} {np_}"


def _speed_suffix(obj: ObjectAttributes) -> str:
    return f" {SPEED_WORDS[obj.speed]}" if obj.speed in SPEED_WORDS else ""


def _speed_prefix(obj: ObjectAttributes) -> str:
    return f"{SPEED_WORDS[obj.speed]} " if obj.speed in SPEED_WORDS else ""


def _clause(obj: ObjectAttributes, phrasing: str, first: bool) -> str:
    m = obj.motion
    if phrasing == "canonical":
        motion = "standing still" if m == "still" else f"moving {m}{_speed_suffix(obj)}"
        return f"{_with_article(obj)} {motion}"
    if phrasing == "moves_to":
        if m == "still":
            motion = "stays still"
        elif m in ("left", "right"):
            motion = f"moves {_speed_prefix(obj)}to the {m}"
        else:
            motion = f"moves {_speed_prefix(obj)}{m}"
        return f"{_noun_phrase(obj)} {motion}"
    if phrasing == "is_moving":
        motion = "is not moving" if m == "still" else f"is moving {_speed_prefix(obj)}{m}wards"
        return f"the {_noun_phrase(obj)} {motion}"
    if phrasing == "there_is":
        motion = "that stays in place" if m == "still" else f"that travels {m}{_speed_suffix(obj)}"
        return f"{'there is ' if first else ''}{_with_article(obj)} {motion}"
    if phrasing == "heading":
        motion = "at rest" if m == "still" else f"heading {m}{_speed_suffix(obj)}"
        return f"{_noun_phrase(obj)} {motion}"
    if phrasing == "image_canonical":
        return _with_article(obj)
    if phrasing == "image_picture":
        return f"{'a picture of ' if first else ''}{_with_article(obj)}"
    if phrasing == "image_plain":
        return _noun_phrase(obj)
    raise ValueError(f"unknown phrasing {phrasing!r}; expected one of {PHRASINGS}")


# (template, mention the default background too?)
_BACKGROUND_SUFFIX: dict[str, tuple[str, bool]] = {
    "canonical": (" on {a} {bg} background", False),
    "moves_to": (" on {a} {bg} background", True),
    "is_moving": (" against {a} {bg} background", False),
    "there_is": (", {bg} background", True),
    "heading": (" over {a} {bg} background", False),
    "image_canonical": (" on {a} {bg} background", False),
    "image_picture": (" on {a} {bg} background", True),
    "image_plain": (", {bg} background", True),
}


def caption_text(attrs: CaptionAttributes, phrasing: str = "canonical") -> str:
    """Caption for ``attrs`` in one phrasing; every phrasing states every non-default attribute, so it parses back."""
    _check_choice("phrasing", phrasing, PHRASINGS)
    if attrs.is_image != (phrasing in IMAGE_PHRASINGS):
        kind = "an image" if attrs.is_image else "a video"
        raise ValueError(
            f"phrasing {phrasing!r} does not fit {kind}; use one of "
            f"{IMAGE_PHRASINGS if attrs.is_image else VIDEO_PHRASINGS}"
        )
    text = _clause(attrs.primary, phrasing, first=True)
    if attrs.second is not None:
        text += " and " + _clause(attrs.second, phrasing, first=False)
    template, always = _BACKGROUND_SUFFIX[phrasing]
    if always or attrs.background != DEFAULT_BACKGROUND:
        text += template.format(a=_article(attrs.background), bg=attrs.background)
    return text


# --------------------------------------------------------------------------------------------------------------------
# parsing

_DIRECTION_WORDS: dict[str, str] = {}
for _d in DIRECTIONS:
    for _form in (_d, f"{_d}ward", f"{_d}wards"):
        _DIRECTION_WORDS[_form] = _d
_STILL_WORDS = frozenset({"still", "not", "place", "rest", "motionless"})
_SIZE_BY_WORD = {w: s for s, w in SIZE_WORDS.items()}
_SPEED_BY_WORD = {w: s for s, w in SPEED_WORDS.items()}
_SPELLINGS = {"grey": "gray"}  # accepted alternative spellings
_FILLER = frozenset(
    "a an the and on of is that there to in at over against background moving moves standing stays travels heading "
    "picture".split()
)
_TOKEN = re.compile(r"[a-z0-9]+")


def _tokens(text: str) -> list[str]:
    if not isinstance(text, str):
        raise ValueError(f"expected caption text (str), got {type(text).__name__}")
    return [_SPELLINGS.get(t, t) for t in _TOKEN.findall(text.lower())]


def vocabulary() -> set[str]:
    """Every word the parser understands (all words the generator produces, plus a few spellings)."""
    return set(
        {*COLOURS, *BACKGROUNDS, *SHAPES, *_DIRECTION_WORDS, *_STILL_WORDS, *_SIZE_BY_WORD, *_SPEED_BY_WORD, *_FILLER}
        | set(_SPELLINGS)
    )


def unknown_words(text: str) -> list[str]:
    """Words of ``text`` outside the world's vocabulary, in order of first appearance (e.g. to warn a demo user)."""
    if not isinstance(text, str):
        raise ValueError(f"expected caption text (str), got {type(text).__name__}")
    known = vocabulary()
    seen: list[str] = []
    for raw in _TOKEN.findall(text.lower()):
        if raw not in known and raw not in seen:
            seen.append(raw)
    return seen


def _one(values: list[str]) -> str | None | bool:
    """The single distinct value, None if there is none, False if they disagree."""
    distinct = set(values)
    if len(distinct) > 1:
        return False
    return next(iter(distinct)) if distinct else None


def _parse_object(tokens: list[str]) -> ObjectAttributes | None:
    colour = _one([t for t in tokens if t in COLOURS])
    shape = _one([t for t in tokens if t in SHAPES])
    size = _one([_SIZE_BY_WORD[t] for t in tokens if t in _SIZE_BY_WORD])
    speed = _one([_SPEED_BY_WORD[t] for t in tokens if t in _SPEED_BY_WORD])
    direction = _one([_DIRECTION_WORDS[t] for t in tokens if t in _DIRECTION_WORDS])
    still = any(t in _STILL_WORDS for t in tokens)
    if not colour or not shape or size is False or speed is False or direction is False:
        return None
    if still and direction:
        return None
    motion = "still" if still else direction
    if speed and motion in (None, "still"):
        return None
    return ObjectAttributes(colour=colour, shape=shape, motion=motion, size=size or "medium", speed=speed or "normal")


def parse_caption(text: str) -> CaptionAttributes | None:
    """Attributes stated by ``text``, or None when it does not describe one or two objects unambiguously.

    Unknown words are ignored (use :func:`unknown_words` to report them); unstated size / speed / background take the
    world's defaults (medium, normal, black), exactly as the generator leaves them unstated. A caption without any
    motion words describes an image (``motion`` None).
    """
    tokens = _tokens(text)
    background = DEFAULT_BACKGROUND
    marks = [i for i, t in enumerate(tokens) if t == "background"]
    if len(marks) > 1:
        return None
    if marks:
        i = marks[0]
        if i == 0 or tokens[i - 1] not in BACKGROUNDS:
            return None
        background = tokens[i - 1]
        tokens = tokens[: i - 1] + tokens[i + 1 :]
    clauses: list[list[str]] = [[]]
    for t in tokens:
        if t == "and":
            clauses.append([])
        else:
            clauses[-1].append(t)
    clauses = [c for c in clauses if c]
    if not 1 <= len(clauses) <= 2:
        return None
    objects = [_parse_object(c) for c in clauses]
    if any(o is None for o in objects):
        return None
    if len(objects) == 2 and (objects[0].motion is None) != (objects[1].motion is None):
        return None
    return CaptionAttributes(
        primary=objects[0], second=objects[1] if len(objects) == 2 else None, background=background
    )
