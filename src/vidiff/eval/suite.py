"""Prompt suites for shapes-world evaluation: which prompts a model is asked for, with which seeds, in which world.

A suite is a fixed list of :class:`EvalPrompt` items plus the :class:`~vidiff.data.shapes.ShapesWorldConfig` the probes
read the videos with. Every random choice (generation seed, ground-truth object placement) derives from the suite seed
and a per-item key that does not depend on which other items are in the suite, so evaluating ``seen`` alone or
``seen,heldout`` together gives the same videos for the same prompts.

* :func:`canonical_suite`: the canonical prompt ``a {colour} {shape} moving {direction}`` / ``a {colour} {shape}
  standing still`` for every (colour, shape, motion) triple of the training split ("seen") or of the held-out split
  ("heldout", never shown to a model trained on the world), ``per_triple`` times each.
* :func:`read_prompt_file` / :func:`suite_from_file`: prompts (and, for already generated videos, their files) from a
  ``.txt``, ``.json`` or ``.csv`` file; see ``docs/eval.md`` for the formats.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vidiff.data.shapes import (
    HELDOUT_TRIPLES,
    TRAIN_TRIPLES,
    CaptionAttributes,
    ObjectAttributes,
    SampleSpec,
    ShapesWorld,
    ShapesWorldConfig,
    parse_caption,
    render,
    unknown_words,
)
from vidiff.data.shapes_vocab import ALL_TRIPLES, caption_text

__all__ = [
    "CANONICAL_SPLITS",
    "EvalPrompt",
    "PromptEntry",
    "PromptSuite",
    "SPLIT_TRIPLES",
    "SuiteError",
    "canonical_prompt",
    "canonical_suite",
    "derive_seed",
    "parse_splits",
    "read_prompt_file",
    "suite_from_file",
    "world_config_from_dict",
    "world_config_to_dict",
]

# Evaluation split name -> the shapes-world split its main-object triples come from.
CANONICAL_SPLITS: dict[str, str] = {"seen": "train", "heldout": "heldout"}
SPLIT_TRIPLES: dict[str, tuple[tuple[str, str, str], ...]] = {"seen": TRAIN_TRIPLES, "heldout": HELDOUT_TRIPLES}
GROUND_TRUTH_STREAM, FLOOR_STREAM = 0, 1  # two independent placements of the same prompts: the real set and the floor
_PROMPT_FILE_SUFFIXES = (".txt", ".json", ".csv")


class SuiteError(ValueError):
    """A prompt suite or prompt file that cannot be used; the message says which entry and why."""


def derive_seed(*key: int) -> int:
    """A 31-bit seed from integers (suite seed, item key...), stable across runs, platforms and suite compositions."""
    return int(np.random.SeedSequence([int(k) for k in key]).generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


def canonical_prompt(colour: str, shape: str, motion: str) -> str:
    """``a {colour} {shape} moving {direction}`` or ``a {colour} {shape} standing still`` (the world's own wording)."""
    return caption_text(CaptionAttributes(ObjectAttributes(colour, shape, motion)), "canonical")


@dataclass(frozen=True)
class EvalPrompt:
    """One video to evaluate.

    ``key`` identifies the item independently of the rest of the suite; the generation seed and the ground-truth
    placements derive from (suite seed, key). ``file`` / ``image`` / ``stride`` come from a manifest of existing
    videos (``image``: the conditioning image of an image-to-video clip).
    """

    prompt: str
    split: str
    key: tuple[int, ...]
    seed: int
    triple: tuple[str, str, str]
    file: str | None = None
    image: str | None = None
    stride: int | None = None

    def attributes(self) -> CaptionAttributes:
        attrs = parse_caption(self.prompt)
        if attrs is None:  # checked when the item was made; kept for a clear message if a caller builds one by hand
            raise SuiteError(f"{self.prompt!r} is not a shapes-world caption")
        return attrs

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt": self.prompt,
            "split": self.split,
            "seed": self.seed,
            "key": list(self.key),
            "triple": list(self.triple),
        }
        for name in ("file", "image", "stride"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


@dataclass(frozen=True)
class PromptSuite:
    """The prompts of one evaluation, the world config the probes read them with, and the seed everything derives from."""

    items: tuple[EvalPrompt, ...]
    world: ShapesWorldConfig
    seed: int
    source: str  # "canonical" or the prompt file it was read from
    per_triple: int = 1

    def __post_init__(self) -> None:
        if not self.items:
            raise SuiteError("the prompt suite is empty")

    def __len__(self) -> int:
        return len(self.items)

    @property
    def splits(self) -> list[str]:
        """Split names in order of first appearance."""
        return list(dict.fromkeys(item.split for item in self.items))

    def by_split(self, split: str) -> list[int]:
        """Indices (into ``items``) of one split."""
        return [i for i, item in enumerate(self.items) if item.split == split]

    def with_world(self, world: ShapesWorldConfig) -> PromptSuite:
        """The same prompts read in another world config (e.g. at the size a model generates)."""
        return dataclasses.replace(self, world=world)

    def stride_of(self, item: EvalPrompt, default: int) -> int:
        return item.stride if item.stride is not None else default

    def ground_truth_spec(self, item: EvalPrompt, stride: int, stream: int = GROUND_TRUTH_STREAM) -> SampleSpec:
        """The world's rendering of ``item.prompt`` with placements drawn from (suite seed, item key, stream)."""
        world = ShapesWorld(self.world)
        rng = np.random.default_rng([self.seed, *item.key, stream])
        try:
            return world.make_spec(item.attributes(), stride=stride, rng=rng)
        except ValueError as err:
            raise SuiteError(f"cannot render the ground truth of {item.prompt!r}: {err}") from err

    def ground_truth_videos(self, stride: int, stream: int = GROUND_TRUTH_STREAM) -> list[np.ndarray]:
        """uint8 ``(T, H, W, 3)`` ground-truth clips of every item (``stream`` 1 gives an independent second set)."""
        return [
            render(self.ground_truth_spec(item, self.stride_of(item, stride), stream)).uint8_frames().numpy()
            for item in self.items
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "seed": self.seed,
            "per_triple": self.per_triple,
            "splits": {s: len(self.by_split(s)) for s in self.splits},
            "num_prompts": len(self.items),
            "world": world_config_to_dict(self.world),
        }


# --------------------------------------------------------------------------------------------------------------------
# world configs


def world_config_to_dict(config: ShapesWorldConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}


def world_config_from_dict(data: dict[str, Any], where: str = "world config") -> ShapesWorldConfig:
    """A ShapesWorldConfig from JSON-style data (lists become tuples); unknown keys are an error naming them.

    Keys that configure a dataset rather than the world (``type``, ``length``) are ignored, so the ``data.videos``
    section of a training config can be passed as is.
    """
    if not isinstance(data, dict):
        raise SuiteError(f"{where} must be a JSON object of ShapesWorldConfig fields, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(ShapesWorldConfig)}
    values = {k: v for k, v in data.items() if k not in ("type", "length")}
    unknown = sorted(set(values) - names)
    if unknown:
        raise SuiteError(f"{where} has unknown fields {unknown}; ShapesWorldConfig fields: {sorted(names)}")
    try:
        return ShapesWorldConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    except (TypeError, ValueError) as err:
        raise SuiteError(f"{where}: {err}") from err


# --------------------------------------------------------------------------------------------------------------------
# canonical suites


def parse_splits(split: str | Sequence[str]) -> list[str]:
    """``"seen"``, ``"heldout"``, ``"seen,heldout"`` or a sequence of them -> list of split names (no repeats)."""
    names = [s.strip() for s in split.split(",")] if isinstance(split, str) else [str(s).strip() for s in split]
    names = [s for s in names if s]
    if not names:
        raise SuiteError(f"no split given; choose from {sorted(CANONICAL_SPLITS)}")
    bad = [s for s in names if s not in CANONICAL_SPLITS]
    if bad:
        raise SuiteError(f"unknown split(s) {bad}; choose from {sorted(CANONICAL_SPLITS)} (comma-separated)")
    return list(dict.fromkeys(names))


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise SuiteError(f"{what} must be a positive int, got {value!r}")
    return int(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise SuiteError(f"seed must be a non-negative int, got {seed!r}")
    return int(seed)


def canonical_suite(
    split: str | Sequence[str] = "seen",
    per_triple: int = 1,
    seed: int = 0,
    world_config: ShapesWorldConfig | None = None,
    max_triples: int | None = None,
) -> PromptSuite:
    """Canonical prompts for every triple of the split(s), ``per_triple`` items each (different seeds).

    ``max_triples`` keeps a seeded subset of that many triples per split (for quick checks); which ones depends only
    on (seed, split), and the kept items have the same seeds as in the full suite.
    """
    seed = _check_seed(seed)
    per_triple = _positive_int(per_triple, "per_triple")
    if max_triples is not None:
        max_triples = _positive_int(max_triples, "max_triples")
    items: list[EvalPrompt] = []
    for split_id, name in enumerate(parse_splits(split)):
        triples = list(SPLIT_TRIPLES[name])
        if max_triples is not None and max_triples < len(triples):
            keep = np.random.default_rng([seed, 7919, split_id]).choice(len(triples), max_triples, replace=False)
            triples = [triples[i] for i in sorted(keep)]
        for triple in triples:
            t = ALL_TRIPLES.index(triple)
            for r in range(per_triple):
                key = (t, r)
                items.append(EvalPrompt(canonical_prompt(*triple), name, key, derive_seed(seed, *key), triple))
    return PromptSuite(tuple(items), world_config or ShapesWorldConfig(), seed, "canonical", per_triple)


# --------------------------------------------------------------------------------------------------------------------
# prompt files and manifests


@dataclass(frozen=True)
class PromptEntry:
    """One line / object of a prompt file: the prompt and what the file says about it."""

    prompt: str
    file: str | None = None
    split: str | None = None
    image: str | None = None
    stride: int | None = None
    seed: int | None = None  # a recorded generation seed (e.g. in the manifest ``vidiff eval --model`` writes)
    where: str = ""  # "line 3" / "entry 2", for error messages


def _entry_from_mapping(obj: dict[str, Any], where: str, path: Path) -> PromptEntry:
    known = {"prompt", "file", "split", "image", "stride", "seed"}
    unknown = sorted(set(obj) - known)
    if unknown:
        raise SuiteError(f"{path}, {where}: unknown field(s) {unknown}; allowed: {sorted(known)}")
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise SuiteError(f"{path}, {where}: 'prompt' must be a non-empty string, got {prompt!r}")
    def integer(name: str, minimum: int) -> int | None:
        value = obj.get(name)
        if value in (None, ""):
            return None
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = None
        if number is None or isinstance(value, bool) or isinstance(value, float) or number < minimum:
            raise SuiteError(f"{path}, {where}: {name} must be an int >= {minimum}, got {value!r}")
        return number

    def text(name: str) -> str | None:
        value = obj.get(name)
        if value in (None, ""):
            return None
        if not isinstance(value, str):
            raise SuiteError(f"{path}, {where}: {name!r} must be a string, got {value!r}")
        return value.strip()

    return PromptEntry(
        prompt.strip(), text("file"), text("split"), text("image"), integer("stride", 1), integer("seed", 0), where
    )


def _read_txt(path: Path, text: str) -> list[PromptEntry]:
    entries = []
    for n, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line and not line.startswith("#"):
            entries.append(PromptEntry(line, where=f"line {n}"))
    return entries


def _read_json(path: Path, text: str) -> list[PromptEntry]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise SuiteError(f"{path} is not valid JSON: {err}") from None
    if isinstance(data, dict) and isinstance(data.get("prompts"), list):
        data = data["prompts"]
    if isinstance(data, dict):  # {"file.mp4": "prompt", ...}
        entries = []
        for file, prompt in data.items():
            entries.append(_entry_from_mapping({"file": file, "prompt": prompt}, f"entry {file!r}", path))
        return entries
    if not isinstance(data, list):
        raise SuiteError(
            f"{path}: expected a JSON list of prompts / objects, or an object mapping video files to prompts"
        )
    entries = []
    for i, obj in enumerate(data):
        where = f"entry {i}"
        if isinstance(obj, str):
            if not obj.strip():
                raise SuiteError(f"{path}, {where}: empty prompt")
            entries.append(PromptEntry(obj.strip(), where=where))
        elif isinstance(obj, dict):
            entries.append(_entry_from_mapping(obj, where, path))
        else:
            raise SuiteError(f"{path}, {where}: expected a prompt string or an object, got {type(obj).__name__}")
    return entries


def _read_csv(path: Path, text: str) -> list[PromptEntry]:
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or "prompt" not in [f.strip() for f in reader.fieldnames]:
        raise SuiteError(f"{path}: a CSV prompt file needs a header row with a 'prompt' column (and 'file' for videos)")
    entries = []
    for n, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items() if k is not None}
        if not any(row.values()):
            continue
        entries.append(_entry_from_mapping(row, f"line {n}", path))
    return entries


def read_prompt_file(path: str | os.PathLike) -> list[PromptEntry]:
    """Entries of a ``.txt`` (one prompt per line, ``#`` comments), ``.json`` or ``.csv`` (header ``file,prompt``) file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"prompt file not found: {path}")
    if not path.is_file():
        raise SuiteError(f"{path} is not a file; --prompts takes a .txt, .json or .csv file")
    suffix = path.suffix.lower()
    if suffix not in _PROMPT_FILE_SUFFIXES:
        raise SuiteError(f"prompt file must end in {', '.join(_PROMPT_FILE_SUFFIXES)}, got {path.name}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise SuiteError(f"{path} is not UTF-8 text: {err}") from None
    entries = {".txt": _read_txt, ".json": _read_json, ".csv": _read_csv}[suffix](path, text)
    if not entries:
        raise SuiteError(f"{path} holds no prompts")
    return entries


def _checked_attributes(entry: PromptEntry, path: Path) -> CaptionAttributes:
    attrs = parse_caption(entry.prompt)
    if attrs is None:
        unknown = unknown_words(entry.prompt)
        hint = f" (words outside the world's vocabulary: {', '.join(unknown)})" if unknown else ""
        raise SuiteError(
            f"{path}, {entry.where}: {entry.prompt!r} is not an unambiguous shapes-world caption{hint}; "
            "the probes need prompts like 'a red circle moving left'"
        )
    if attrs.is_image:
        raise SuiteError(
            f"{path}, {entry.where}: {entry.prompt!r} states no motion (an image caption); video evaluation needs "
            "'moving <left|right|up|down>' or 'standing still'"
        )
    if attrs.second is not None and attrs.second.colour == attrs.primary.colour:
        raise SuiteError(f"{path}, {entry.where}: the two objects in {entry.prompt!r} must have different colours")
    return attrs


def _default_split(triple: tuple[str, str, str]) -> str:
    return "heldout" if triple in HELDOUT_TRIPLES else "seen"


def suite_from_file(
    path: str | os.PathLike,
    seed: int = 0,
    world_config: ShapesWorldConfig | None = None,
    per_prompt: int = 1,
    require_files: bool = False,
) -> PromptSuite:
    """A suite from a prompt file; ``require_files`` (existing videos) makes the ``file`` field mandatory.

    An entry without a ``split`` is put in "heldout" when its main object's (colour, shape, motion) triple is held out
    of training and in "seen" otherwise, so accuracies are always reported per split.
    """
    path = Path(path)
    seed = _check_seed(seed)
    per_prompt = _positive_int(per_prompt, "per_prompt")
    entries = read_prompt_file(path)
    items = []
    for i, entry in enumerate(entries):
        attrs = _checked_attributes(entry, path)
        p = attrs.primary
        triple = (p.colour, p.shape, p.motion)
        if require_files and entry.file is None:
            raise SuiteError(
                f"{path}, {entry.where}: no video file; evaluating existing videos needs a manifest that names each "
                "video (CSV header 'file,prompt' or JSON [{\"file\": ..., \"prompt\": ...}])"
            )
        split = entry.split or _default_split(triple)
        repeats = 1 if entry.file is not None else per_prompt
        for r in range(repeats):
            key = (i, r)
            item_seed = entry.seed if entry.seed is not None else derive_seed(seed, *key)
            items.append(EvalPrompt(entry.prompt, split, key, item_seed, triple, entry.file, entry.image, entry.stride))
    if require_files:
        files = [item.file for item in items]
        dupes = sorted({f for f in files if files.count(f) > 1})
        if dupes:
            raise SuiteError(f"{path}: video file(s) listed more than once: {dupes[:5]}")
    return PromptSuite(tuple(items), world_config or ShapesWorldConfig(), seed, str(path), per_prompt)
