"""Video-text and image-text datasets read from a CSV (or a folder) of your own files, for training.

WebVid can no longer be downloaded, so these read the two layouts people actually have:

* WebVid-style metadata ``videoid,name,page_dir`` with videos at ``<root>/<page_dir>/<videoid>.mp4``;
* a plain ``path,caption`` CSV, paths relative to ``root`` (default: the CSV's folder) or absolute;

with optional ``fps`` and ``frames``/``num_frames`` columns that let a clip be planned without opening the file.

Each video sample is a dict ``{"video": float32 (3, T, H, W) in [-1, 1], "caption", "fps", "frame_stride", "path",
"index"}``. ``fps`` is the native frame rate divided by the frame stride: VideoCrafter conditions on it, DynamiCrafter
on the stride itself ("fs"). Images come out as 1-frame videos ``(3, 1, H, W)`` so both can share one training loop
(VideoCrafter's joint image-video training); :class:`JointImageVideoSampler` interleaves image and video batches.

A missing, corrupt or too-short file is logged, counted in ``dataset.skipped`` and replaced by the next usable row,
so one bad file never stops a run; when no row is usable at all a :class:`NoUsableSamplesError` says so.
"""

from __future__ import annotations

import csv
import logging
import math
import multiprocessing
import os
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from multiprocessing.context import get_spawning_popen
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset, Sampler, get_worker_info

from vidiff.data.video_reader import (
    VideoDecodeError,
    VideoTooShortError,
    cover_size,
    crop_offsets,
    probe_video,
    read_frames,
)

logger = logging.getLogger(__name__)

WEBVID_COLUMNS = ("videoid", "name", "page_dir")
_SKIP_SLOTS = 64
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")


class CSVFormatError(ValueError):
    """A metadata CSV that cannot be used; the message names the columns found and those expected."""


class NoUsableSamplesError(RuntimeError):
    """Every row of a dataset failed to load (all files missing, corrupt or too short)."""


class SampleSkipped(Exception):
    """One sample cannot be used; ``reason`` is a short category counted in ``skip_stats``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class MediaRecord:
    """One CSV row, resolved: absolute path, caption, and the optional fps / frame count it declares."""

    path: str
    caption: str
    fps: float | None = None
    num_frames: int | None = None


# --------------------------------------------------------------------------------------------------- CSV parsing


def _read_rows(csv_path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not csv_path.is_file():
        raise FileNotFoundError(f"metadata CSV not found: {csv_path}")
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None:
            raise CSVFormatError(f"{csv_path} is empty: expected a header row such as 'path,caption'")
        columns = [c.strip() for c in reader.fieldnames]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    if not rows:
        raise CSVFormatError(f"{csv_path} has a header ({', '.join(columns)}) but no rows")
    return columns, rows


def _optional_number(row: dict[str, str], names: Sequence[str], kind: type, csv_path: Path, line: int) -> Any:
    for name in names:
        text = row.get(name, "")
        if text == "":
            continue
        try:
            value = kind(float(text)) if kind is int else kind(text)
        except ValueError:
            raise CSVFormatError(f"{csv_path}, line {line}: column '{name}' should be a number, got {text!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise CSVFormatError(f"{csv_path}, line {line}: column '{name}' must be positive, got {text!r}")
        return value
    return None


def read_video_csv(
    csv_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    path_column: str = "path",
    caption_column: str = "caption",
    video_extension: str = ".mp4",
) -> list[MediaRecord]:
    """Parse a WebVid-style (``videoid,name,page_dir``) or simple (``path,caption``) CSV into records.

    The format is recognised from the header; ``root`` defaults to the CSV's folder. Raises :class:`CSVFormatError`
    for an empty file, a header without rows, missing columns or a malformed ``fps``/``frames`` cell.
    """
    csv_path = Path(csv_path)
    base = Path(root) if root is not None else csv_path.parent
    columns, rows = _read_rows(csv_path)
    webvid = all(c in columns for c in WEBVID_COLUMNS)
    if not webvid and not (path_column in columns and caption_column in columns):
        raise CSVFormatError(
            f"{csv_path} has columns [{', '.join(columns)}]; expected either "
            f"[{', '.join(WEBVID_COLUMNS)}] (WebVid layout) or [{path_column}, {caption_column}] "
            "(optionally with fps and frames/num_frames)"
        )
    records = []
    for line, row in enumerate(rows, start=2):
        if webvid:
            if not row["videoid"] or not row["page_dir"]:
                raise CSVFormatError(f"{csv_path}, line {line}: empty videoid or page_dir")
            path = base / row["page_dir"] / f"{row['videoid']}{video_extension}"
            caption = row["name"]
        else:
            if not row[path_column]:
                raise CSVFormatError(f"{csv_path}, line {line}: empty '{path_column}'")
            path = base / row[path_column]  # an absolute path replaces the base
            caption = row[caption_column]
        records.append(
            MediaRecord(
                path=os.fspath(path),
                caption=caption,
                fps=_optional_number(row, ("fps",), float, csv_path, line),
                num_frames=_optional_number(row, ("frames", "num_frames"), int, csv_path, line),
            )
        )
    return records


# --------------------------------------------------------------------------------------------------- skipping base


def _pair(value: int | Sequence[int] | None, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    if len(value) != 2 or any(int(v) != v or v <= 0 for v in value):
        raise ValueError(f"{name} must be an int or (H, W) of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


class _SkippingDataset(Dataset, ABC):
    """Replaces unusable samples by the next usable row, logs and counts each, and stays deterministic.

    Randomness (stride, clip start, crop) comes from a generator derived from ``(seed, epoch, index)``, so a given
    index yields the same sample whichever DataLoader worker loads it. Without a seed the generator is drawn from
    torch's global RNG, which the DataLoader seeds per worker: runs are then reproducible under
    ``torch.manual_seed``.
    """

    records: list[MediaRecord]

    def __init__(self, seed: int | None) -> None:
        self.seed = seed
        self.epoch = 0
        self._bad: set[int] = set()
        self.skip_stats: Counter[str] = Counter()
        self.skipped_paths: list[str] = []
        # Shared memory, one slot per process (main = 0, worker w = w + 1), so the main process sees the workers'
        # skips. Lock-free (each slot has one writer), hence usable with fork, spawn and forkserver workers alike.
        self._shared_skips = multiprocessing.RawArray("q", _SKIP_SLOTS)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def skipped(self) -> int:
        """Skip events across this process and its DataLoader workers (each worker meets a bad file once)."""
        return int(sum(self._shared_skips)) if self._shared_skips is not None else sum(self.skip_stats.values())

    def set_epoch(self, epoch: int) -> None:
        """Draw fresh strides/crops for a new epoch when a fixed ``seed`` is used."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            base = int(torch.randint(0, 2**62, (1,)).item())
            return np.random.default_rng([base, index])
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self.records)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a dataset of {n} samples")
        index %= n
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._bad:
                continue
            try:
                sample = self._load(i, self._rng(i))
            except SampleSkipped as err:
                self._record_skip(i, err)
                continue
            sample["index"] = i
            return sample
        raise NoUsableSamplesError(
            f"none of the {n} samples of {type(self).__name__} could be loaded "
            f"({', '.join(f'{c} {r}' for r, c in sorted(self.skip_stats.items()))}); first failures: "
            + "; ".join(self.skipped_paths[:3])
        )

    def _record_skip(self, i: int, err: SampleSkipped) -> None:
        self._bad.add(i)
        self.skip_stats[err.reason] += 1
        if len(self.skipped_paths) < 100:
            self.skipped_paths.append(f"{self.records[i].path} ({err.reason})")
        if self._shared_skips is not None:
            worker = get_worker_info()
            self._shared_skips[0 if worker is None else 1 + worker.id % (_SKIP_SLOTS - 1)] += 1
        logger.warning("skipping sample %d: %s", i, err)

    @abstractmethod
    def _load(self, i: int, rng: np.random.Generator) -> dict[str, Any]:
        """Sample ``i`` without the ``index`` key; raise :class:`SampleSkipped` when it cannot be used."""

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if get_spawning_popen() is None:
            # Plain pickling/deepcopy (not a worker start): shared memory may not travel, so count locally.
            state["_shared_skips"] = None
        return state


def _to_unit_range(frames: np.ndarray) -> torch.Tensor:
    """(T, H, W, 3) uint8 -> (3, T, H, W) float32 in [-1, 1]."""
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2).float()
    return video.div_(127.5).sub_(1.0)


# --------------------------------------------------------------------------------------------------- videos


class VideoTextDataset(_SkippingDataset):
    """Clips of ``num_frames`` frames with their captions, from a CSV plus a folder of videos (see module doc).

    Args:
        csv_path: WebVid-style or ``path,caption`` CSV.
        root: folder the CSV's paths are relative to (WebVid: the folder holding the ``page_dir`` folders);
            defaults to the CSV's folder.
        num_frames: frames per clip (T).
        frame_stride: a fixed stride, or ``(min, max)`` for a stride drawn uniformly per sample (DynamiCrafter
            trains with 1..6). Ignored when ``target_fps`` is set.
        target_fps: choose the stride per video as ``round(native_fps / target_fps)`` (at least 1), so clips play
            at about this rate whatever the source rate.
        resolution: output (H, W) (or one int for square); each frame is resized to cover it and cropped.
            ``None`` keeps the native size (only batchable with batch size 1 or equal-size videos).
        crop: ``"center"`` or ``"random"``.
        clip_position: where the clip starts inside the video: ``"random"``, ``"start"`` or ``"center"``.
        allow_stride_reduction: a video long enough for ``num_frames`` but too short for the stride gets the
            largest stride that fits (returned in ``frame_stride``) instead of being skipped.
        fps_max: clamp the returned fps (the official WebVid loader's ``fps_max``).
        seed: makes stride, start and crop a function of ``(seed, epoch, index)``; see :meth:`set_epoch`.
    """

    def __init__(
        self,
        csv_path: str | os.PathLike,
        root: str | os.PathLike | None = None,
        *,
        num_frames: int = 16,
        frame_stride: int | tuple[int, int] = 1,
        target_fps: float | None = None,
        resolution: int | tuple[int, int] | None = (256, 256),
        crop: str = "center",
        clip_position: str = "random",
        allow_stride_reduction: bool = True,
        fps_max: float | None = None,
        seed: int | None = None,
        path_column: str = "path",
        caption_column: str = "caption",
        video_extension: str = ".mp4",
    ) -> None:
        super().__init__(seed)
        if int(num_frames) != num_frames or num_frames < 1:
            raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
        self.num_frames = int(num_frames)
        self.stride_range = self._check_stride(frame_stride)
        if target_fps is not None:
            if not (isinstance(target_fps, int | float) and math.isfinite(target_fps) and target_fps > 0):
                raise ValueError(f"target_fps must be a positive number, got {target_fps!r}")
            if self.stride_range != (1, 1):
                raise ValueError("pass either frame_stride or target_fps, not both (target_fps picks the stride)")
        self.target_fps = target_fps
        self.resolution = _pair(resolution, "resolution")
        if crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
        if clip_position not in ("random", "start", "center"):
            raise ValueError(f"clip_position must be 'random', 'start' or 'center', got {clip_position!r}")
        self.crop = crop
        self.clip_position = clip_position
        self.allow_stride_reduction = allow_stride_reduction
        self.fps_max = fps_max
        self.records = read_video_csv(
            csv_path, root, path_column=path_column, caption_column=caption_column, video_extension=video_extension
        )

    @staticmethod
    def _check_stride(frame_stride: int | tuple[int, int]) -> tuple[int, int]:
        lo, hi = (frame_stride, frame_stride) if isinstance(frame_stride, int) else tuple(frame_stride)
        if int(lo) != lo or int(hi) != hi or lo < 1 or hi < lo:
            raise ValueError(
                f"frame_stride must be a positive int or (min, max) with 1 <= min <= max, got {frame_stride!r}"
            )
        return int(lo), int(hi)

    def plan_clip(self, total_frames: int, native_fps: float, rng: np.random.Generator) -> tuple[list[int], int]:
        """Frame indices of one clip and the stride used; raises :class:`SampleSkipped` when the video is too short."""
        t = self.num_frames
        if total_frames < t:
            raise SampleSkipped("too_short", f"has {total_frames} frames, {t} needed")
        if self.target_fps is not None:
            stride = max(1, round(native_fps / self.target_fps))
        else:
            lo, hi = self.stride_range
            stride = int(rng.integers(lo, hi + 1)) if hi > lo else lo
        if t > 1:
            fitting = (total_frames - 1) // (t - 1)
            if stride > fitting:
                if not self.allow_stride_reduction:
                    raise SampleSkipped(
                        "too_short", f"has {total_frames} frames, {(t - 1) * stride + 1} needed at stride {stride}"
                    )
                stride = fitting
        slack = total_frames - ((t - 1) * stride + 1)
        if self.clip_position == "random":
            start = int(rng.integers(0, slack + 1))
        elif self.clip_position == "center":
            start = slack // 2
        else:
            start = 0
        return [start + stride * k for k in range(t)], stride

    def _load(self, i: int, rng: np.random.Generator) -> dict[str, Any]:
        record = self.records[i]
        total, native_fps = record.num_frames, record.fps
        try:
            if total is None or native_fps is None:  # the CSV did not say: read the container header
                info = probe_video(record.path)
                total = total if total is not None else info.num_frames
                native_fps = native_fps if native_fps is not None else info.fps
            indices, stride = self.plan_clip(total, native_fps, rng)
            frames = read_frames(record.path, indices, cover=self.resolution)
        except FileNotFoundError as err:
            raise SampleSkipped("missing", str(err)) from err
        except VideoTooShortError as err:
            raise SampleSkipped("too_short", str(err)) from err
        except VideoDecodeError as err:
            raise SampleSkipped("decode_error", str(err)) from err
        if self.resolution is not None:
            top, left = crop_offsets(frames.shape[1:3], self.resolution, self.crop, rng)
            frames = frames[:, top : top + self.resolution[0], left : left + self.resolution[1]]
        fps = native_fps / stride
        if self.fps_max is not None:
            fps = min(fps, float(self.fps_max))
        return {
            "video": _to_unit_range(frames),
            "caption": record.caption,
            "fps": float(fps),
            "frame_stride": int(stride),
            "path": record.path,
        }


# --------------------------------------------------------------------------------------------------- images


def _scan_image_folder(folder: Path, recursive: bool) -> list[MediaRecord]:
    pattern = "**/*" if recursive else "*"
    images = sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise CSVFormatError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {folder}")
    records = []
    missing_captions = 0
    for image in images:
        caption_file = image.with_suffix(".txt")
        if caption_file.is_file():
            caption = caption_file.read_text(encoding="utf-8").strip()
        else:
            caption = ""
            missing_captions += 1
        records.append(MediaRecord(path=os.fspath(image), caption=caption))
    if missing_captions:
        logger.warning("%d of %d images in %s have no .txt caption; using ''", missing_captions, len(images), folder)
    return records


def read_image_csv(
    csv_path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    path_column: str = "path",
    caption_column: str = "caption",
) -> list[MediaRecord]:
    """Parse a ``path,caption`` image CSV (paths relative to ``root``, default the CSV's folder, or absolute)."""
    csv_path = Path(csv_path)
    base = Path(root) if root is not None else csv_path.parent
    columns, rows = _read_rows(csv_path)
    if path_column not in columns or caption_column not in columns:
        raise CSVFormatError(
            f"{csv_path} has columns [{', '.join(columns)}]; expected [{path_column}, {caption_column}]"
        )
    records = []
    for line, row in enumerate(rows, start=2):
        if not row[path_column]:
            raise CSVFormatError(f"{csv_path}, line {line}: empty '{path_column}'")
        records.append(MediaRecord(path=os.fspath(base / row[path_column]), caption=row[caption_column]))
    return records


class ImageTextDataset(_SkippingDataset):
    """Image-caption pairs as 1-frame videos ``(3, 1, H, W)`` in [-1, 1], for joint image-video training.

    ``source`` is a ``path,caption`` CSV or a folder of images with same-stem ``.txt`` captions (an image without one
    gets the empty caption, which classifier-free-guidance training can use). ``repeat_to_frames`` > 1 repeats the
    image into a static clip. Images carry no motion, so ``fps`` and ``frame_stride`` are constants you choose
    (default 0 marks "still image").
    """

    def __init__(
        self,
        source: str | os.PathLike,
        root: str | os.PathLike | None = None,
        *,
        resolution: int | tuple[int, int] | None = (256, 256),
        crop: str = "center",
        repeat_to_frames: int = 1,
        fps: float = 0.0,
        frame_stride: int = 0,
        recursive: bool = False,
        seed: int | None = None,
        path_column: str = "path",
        caption_column: str = "caption",
    ) -> None:
        super().__init__(seed)
        if int(repeat_to_frames) != repeat_to_frames or repeat_to_frames < 1:
            raise ValueError(f"repeat_to_frames must be a positive int, got {repeat_to_frames!r}")
        if crop not in ("center", "random"):
            raise ValueError(f"crop must be 'center' or 'random', got {crop!r}")
        self.resolution = _pair(resolution, "resolution")
        self.crop = crop
        self.repeat_to_frames = int(repeat_to_frames)
        self.fps = float(fps)
        self.frame_stride = int(frame_stride)
        source = Path(source)
        if source.is_dir():
            self.records = _scan_image_folder(source, recursive)
        else:
            self.records = read_image_csv(source, root, path_column=path_column, caption_column=caption_column)

    def _load(self, i: int, rng: np.random.Generator) -> dict[str, Any]:
        record = self.records[i]
        try:
            with Image.open(record.path) as im:
                image = ImageOps.exif_transpose(im).convert("RGB")
        except FileNotFoundError as err:
            raise SampleSkipped("missing", f"image not found: {record.path}") from err
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise SampleSkipped("decode_error", f"cannot read image {record.path}: {err}") from err
        if self.resolution is not None:
            h, w = cover_size(image.height, image.width, self.resolution)
            if (h, w) != (image.height, image.width):
                image = image.resize((w, h), Image.Resampling.BICUBIC, reducing_gap=3.0)
            top, left = crop_offsets((h, w), self.resolution, self.crop, rng)
            image = image.crop((left, top, left + self.resolution[1], top + self.resolution[0]))
        frames = np.array(image)[None]
        video = _to_unit_range(frames)
        if self.repeat_to_frames > 1:
            video = video.repeat(1, self.repeat_to_frames, 1, 1)
        return {
            "video": video,
            "caption": record.caption,
            "fps": self.fps,
            "frame_stride": self.frame_stride,
            "path": record.path,
        }


# --------------------------------------------------------------------------------------------------- batching

_FRAME_KEYS = ("video", "latents")  # tensors laid out (C, T, H, W) whose T may differ between images and videos


def collate_video_batch(samples: Sequence[dict[str, Any]], *, mix: str = "error") -> dict[str, Any]:
    """Batch samples: tensors stacked, ``fps`` float tensor, ``frame_stride``/``index`` long tensors, strings listed.

    Images (T=1) and videos (T>1) do not stack. VideoCrafter's joint training keeps them in separate batches (use
    :class:`JointImageVideoSampler`); ``mix="repeat"`` instead repeats 1-frame samples to the batch's frame count
    (a static clip). The default ``mix="error"`` refuses mixed batches with an explanation.
    """
    if not samples:
        raise ValueError("cannot collate an empty batch")
    if mix not in ("error", "repeat"):
        raise ValueError(f"mix must be 'error' or 'repeat', got {mix!r}")
    keys = list(samples[0])
    for s in samples[1:]:
        if list(s) != keys:
            raise ValueError(f"samples have different keys: {keys} vs {list(s)}")
    batch: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, torch.Tensor):
            if key in _FRAME_KEYS:
                values = _match_frames(values, key, mix)
            shapes = {tuple(v.shape) for v in values}
            if len(shapes) > 1:
                raise ValueError(f"cannot stack '{key}' of shapes {sorted(shapes)}: use one resolution per batch")
            batch[key] = torch.stack(values)
        elif isinstance(first, bool) or first is None or isinstance(first, str):
            batch[key] = values
        elif key in ("frame_stride", "index") or isinstance(first, int):
            batch[key] = torch.tensor(values, dtype=torch.long)
        elif isinstance(first, float):
            batch[key] = torch.tensor(values, dtype=torch.float32)
        else:
            batch[key] = values
    return batch


def _match_frames(values: list[torch.Tensor], key: str, mix: str) -> list[torch.Tensor]:
    frames = {v.shape[1] for v in values if v.dim() >= 2}
    if len(frames) <= 1:
        return values
    if mix == "error":
        raise ValueError(
            f"batch mixes '{key}' with {sorted(frames)} frames (images are 1-frame videos): batch images and videos "
            "separately with JointImageVideoSampler, or pass mix='repeat' to repeat images into static clips"
        )
    longest = max(frames)
    if frames - {1, longest}:
        raise ValueError(f"mix='repeat' only repeats 1-frame samples; got frame counts {sorted(frames)}")
    return [v.expand(v.shape[0], longest, *v.shape[2:]).contiguous() if v.shape[1] == 1 else v for v in values]


class JointImageVideoSampler(Sampler[list[int]]):
    """Batch sampler over ``ConcatDataset([videos, images])`` that yields pure video batches and pure image batches.

    VideoCrafter trains jointly on images and videos with images as 1-frame videos; keeping each batch one kind lets
    image batches be larger and avoids padding. After the k-th video batch, image batches are emitted until
    ``floor(k * image_batches_per_video_batch)`` have been, so the ratio is exact and the pattern deterministic. An
    epoch is one pass over the videos; images cycle (reshuffled each cycle) as long as needed.

    With ``num_replicas`` > 1 (DDP), every rank sees the same sequence of batch kinds and its own slice of each
    global batch, so all ranks run the same kind of step together. Call :meth:`set_epoch` each epoch.
    """

    def __init__(
        self,
        num_videos: int,
        num_images: int,
        video_batch_size: int,
        image_batch_size: int,
        image_batches_per_video_batch: float = 1.0,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        for name, value in (
            ("video_batch_size", video_batch_size),
            ("image_batch_size", image_batch_size),
            ("num_replicas", num_replicas),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if num_videos < 1:
            raise ValueError("JointImageVideoSampler needs at least one video")
        if image_batches_per_video_batch < 0 or not math.isfinite(image_batches_per_video_batch):
            raise ValueError(f"image_batches_per_video_batch must be >= 0, got {image_batches_per_video_batch!r}")
        if image_batches_per_video_batch > 0 and num_images < 1:
            raise ValueError("image batches were requested but the image dataset is empty")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.num_videos, self.num_images = int(num_videos), int(num_images)
        self.video_batch_size, self.image_batch_size = int(video_batch_size), int(image_batch_size)
        self.ratio = Fraction(image_batches_per_video_batch).limit_denominator(1000)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.epoch = 0
        global_video = self.video_batch_size * self.num_replicas
        if drop_last:
            self._video_batches = self.num_videos // global_video
        else:
            self._video_batches = math.ceil(self.num_videos / global_video)
        if self._video_batches == 0:
            raise ValueError(
                f"{self.num_videos} videos cannot fill one batch of {global_video} (batch size x replicas) with "
                "drop_last=True"
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self._video_batches + math.floor(self._video_batches * self.ratio)

    def _permutation(self, n: int, stream: int, cycle: int) -> list[int]:
        if not self.shuffle:
            return list(range(n))
        return np.random.default_rng([self.seed, self.epoch, stream, cycle]).permutation(n).tolist()

    def _image_stream(self) -> Iterator[int]:
        cycle = 0
        while True:
            yield from self._permutation(self.num_images, 1, cycle)
            cycle += 1

    def __iter__(self) -> Iterator[list[int]]:
        videos = self._permutation(self.num_videos, 0, 0)
        global_video = self.video_batch_size * self.num_replicas
        global_image = self.image_batch_size * self.num_replicas
        images = self._image_stream()
        emitted_images = 0
        for k in range(self._video_batches):
            chunk = videos[k * global_video : (k + 1) * global_video]
            if len(chunk) < global_video and self.num_replicas > 1:
                chunk = chunk + videos[: global_video - len(chunk)]  # pad like DistributedSampler
            yield self._rank_slice(chunk, self.video_batch_size)
            due = math.floor((k + 1) * self.ratio)
            while emitted_images < due:
                chunk = [self.num_videos + next(images) for _ in range(global_image)]
                yield self._rank_slice(chunk, self.image_batch_size)
                emitted_images += 1

    def _rank_slice(self, chunk: list[int], per_rank: int) -> list[int]:
        if self.num_replicas == 1:
            return chunk
        return chunk[self.rank * per_rank : (self.rank + 1) * per_rank]
