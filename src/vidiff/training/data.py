"""Training data: datasets from the config, a deterministic per-epoch batch order, and a resumable batch stream.

The batch order is a pure function of (data seed, epoch, batch index): :class:`~vidiff.data.csv_datasets.
JointImageVideoSampler` builds global batches (pure video or pure image batches, as VideoCrafter's joint training does)
and hands each process its slice. Resuming therefore needs only (epoch, batches consumed), and a run on N processes
sees the same global batches as a run on one process with an N-times larger batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from vidiff.data.csv_datasets import (
    ImageTextDataset,
    JointImageVideoSampler,
    NoUsableSamplesError,
    VideoTextDataset,
    collate_video_batch,
)
from vidiff.training.config import ConfigError, DataConfig

__all__ = ["BatchStream", "TrainingSample", "build_datasets", "build_batch_sampler"]

_KEEP = ("video", "latents", "text_embeddings", "caption", "fps", "frame_stride", "index", "foreground")
_TRUTH = ("masks", "flow")  # the main object's coverage and velocity, for tasks that learn motion (latent_flow)


def _foreground(item: dict[str, Any]) -> torch.Tensor | None:
    """(1, T, H, W) union of the object masks of a shapes-world item (video or image), or None without masks."""
    if "masks" in item:
        masks = item["masks"].float()
        if "second_masks" in item:
            masks = torch.maximum(masks, item["second_masks"].float())
        return masks[None]
    if "mask" in item:
        mask = item["mask"].float()
        if "second_mask" in item:
            mask = torch.maximum(mask, item["second_mask"].float())
        return mask[None, None]
    return None


class TrainingSample(Dataset):
    """A view of a dataset that yields only the keys training uses, with images turned into 1-frame videos.

    ``static_frames`` > 1 repeats still images into static clips of that many frames.
    """

    def __init__(self, dataset: Dataset, *, image_fps: float = 0.0, static_frames: int = 1,
                 keep_truth: bool = False) -> None:
        self.dataset = dataset
        self.keep = _KEEP + _TRUTH if keep_truth else _KEEP
        self.image_fps = float(image_fps)
        self.static_frames = int(static_frames)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        if "image" in item and "video" not in item:  # ShapesImageDataset: (3, H, W)
            item = {**item, "video": item["image"][:, None], "fps": self.image_fps, "frame_stride": 0}
        out = {k: item[k] for k in self.keep if k in item}
        fg = _foreground(item)
        if fg is not None:
            out["foreground"] = fg
        if "video" in out and self.static_frames > 1 and out["video"].shape[1] == 1:
            out["video"] = out["video"].expand(-1, self.static_frames, -1, -1).contiguous()
            if "foreground" in out:
                out["foreground"] = out["foreground"].expand(-1, self.static_frames, -1, -1).contiguous()
        for key, kind in (("fps", float), ("frame_stride", int), ("index", int)):
            value = out.get(key)
            if isinstance(value, torch.Tensor):
                out[key] = kind(value.item())
            elif value is not None:
                out[key] = kind(value)
        if "index" not in out:
            out["index"] = int(index)
        return out


def _recoloured(dataset: Dataset, extra: dict, where: str, seed: int, masks: bool) -> Dataset:
    """The opt-in extra colours of a shapes dataset (:mod:`vidiff.data.shapes_palette`)."""
    from vidiff.data.shapes_palette import RecolouredShapes

    if "extra_colours" not in extra:
        raise ConfigError(f"{where}.extra_colour_prob needs {where}.extra_colours")
    try:
        return RecolouredShapes(dataset, extra["extra_colours"], extra.get("extra_colour_prob", 0.5), seed,
                                keep_truth=masks)
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None


def _shapes_config(kwargs: dict, where: str):
    from vidiff.data.shapes import ShapesWorldConfig

    # the opt-in extra colours are not world settings (the binding probe measures the world's own palette)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("extra_colours", "extra_colour_prob")}
    names = {f.name for f in fields(ShapesWorldConfig)}
    unknown = sorted(set(kwargs) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown shapes-world settings {unknown}; accepted: {sorted(names)} and 'length'")
    world = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    try:
        return ShapesWorldConfig(**world)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: {err}") from err


def _build_one(spec: dict, where: str, seed: int, kind: str, masks: bool = False) -> Dataset:
    spec = dict(spec)
    typ = spec.pop("type")
    try:
        if typ == "shapes":
            from vidiff.data.shapes import ShapesImageDataset, ShapesVideoDataset

            length = spec.pop("length", 100_000)
            cls = ShapesVideoDataset if kind == "videos" else ShapesImageDataset
            extra = {k: spec.pop(k) for k in ("extra_colours", "extra_colour_prob") if k in spec}
            if not extra:
                return cls(_shapes_config(spec, where), length=length, ground_truth=masks)
            return _recoloured(cls(_shapes_config(spec, where), length=length, ground_truth=True), extra, where,
                               spec.get("seed", 0), masks)
        if typ == "csv" and kind == "videos":
            if "frame_stride" in spec and isinstance(spec["frame_stride"], list):
                spec["frame_stride"] = tuple(spec["frame_stride"])
            spec.setdefault("seed", seed)
            return VideoTextDataset(**spec)
        if typ in ("csv", "folder") and kind == "images":
            spec.setdefault("seed", seed)
            source = spec.pop("csv_path", None) or spec.pop("source", None) or spec.pop("folder", None)
            if source is None:
                raise ConfigError(f"{where}: give the image CSV or folder as 'source'")
            return ImageTextDataset(source, **spec)
        if typ == "latent_cache" and kind == "videos":
            from vidiff.data.latent_cache import LatentCacheDataset

            return LatentCacheDataset(spec.pop("path"), **spec)
    except KeyError as err:
        raise ConfigError(f"{where}: missing setting {err}") from err
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from err
    allowed = "shapes, csv, latent_cache" if kind == "videos" else "shapes, csv, folder"
    raise ConfigError(f"{where}.type must be one of {allowed}, got {typ!r}")


def build_datasets(cfg: DataConfig, num_frames_hint: int | None = None, *, images_only: bool = False,
                   masks: bool = False, truth: bool = False) -> tuple[Dataset, int, int]:
    """``(dataset, num_videos, num_images)``; with images the dataset is ``ConcatDataset([videos, images])``.

    ``images_only`` (text-to-image training): the images are the whole dataset, as 1-frame clips, counted as videos.
    ``masks``: shapes-world items carry a ``foreground`` mask (for ``train.foreground_weight``); ``truth``: video
    items also carry the main object's ``masks`` and ``flow`` (motion ground truth).
    """
    if images_only:
        spec = dict(cfg.images)
        spec.pop("fps", None)
        images = TrainingSample(_build_one(spec, "data.images", cfg.seed, "images", masks))
        if len(images) < 1:
            raise ConfigError("data.images is empty")
        _check_readable(images, "data.images")
        return images, len(images), 0
    videos = TrainingSample(_build_one(cfg.videos, "data.videos", cfg.seed, "videos", masks or truth),
                            keep_truth=truth)
    if len(videos) < 1:
        raise ConfigError("data.videos is empty")
    _check_readable(videos, "data.videos")
    if cfg.images is None:
        return videos, len(videos), 0
    spec = dict(cfg.images)
    image_fps = float(spec.pop("fps", 0.0)) if spec.get("type") == "shapes" else 0.0
    frames = num_frames_hint if cfg.images_as_static_clips and num_frames_hint else 1
    images = TrainingSample(_build_one(spec, "data.images", cfg.seed, "images", masks), image_fps=image_fps,
                            static_frames=frames)
    return ConcatDataset([videos, images]), len(videos), len(images)


def _check_readable(dataset: Dataset, where: str) -> None:
    """Load one sample now: a dataset none of whose files can be read must say so before batch sizes are checked
    (otherwise "6 videos cannot fill one batch of 8" hides that none of the 6 could be read)."""
    try:
        dataset[0]
    except NoUsableSamplesError as err:
        raise ConfigError(f"{where}: {err}") from None


def build_batch_sampler(cfg: DataConfig, num_videos: int, num_images: int, num_replicas: int, rank: int):
    """Per-process batch sampler over the global batch order (see module docstring)."""
    ratio = cfg.image_batches_per_video_batch if num_images else 0.0
    try:
        return JointImageVideoSampler(
            num_videos,
            num_images,
            cfg.batch_size,
            cfg.image_batch_size,
            ratio,
            shuffle=cfg.shuffle,
            seed=cfg.seed,
            drop_last=True,
            num_replicas=num_replicas,
            rank=rank,
        )
    except ValueError as err:
        raise ConfigError(f"data: {err}") from err


class _SkipFirst(Sampler[list[int]]):
    """A batch sampler that drops the first ``skip`` batches of another (index lists only: no data is loaded)."""

    def __init__(self, batch_sampler: Sampler, skip: int) -> None:
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self) -> Iterator[list[int]]:
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


@dataclass
class StreamPosition:
    epoch: int
    batch_in_epoch: int


class BatchStream:
    """Endless micro-batches in the deterministic order, starting at any (epoch, batch) position.

    Each epoch gets a fresh DataLoader iterator (workers re-created, datasets told the epoch). The DataLoader draws
    its worker seed from a private generator, so iterating never consumes the global RNG that checkpoints restore.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_sampler: Any,
        *,
        num_workers: int = 0,
        epoch: int = 0,
        batch_in_epoch: int = 0,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        self.dataset, self.batch_sampler = dataset, batch_sampler
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.position = StreamPosition(epoch, batch_in_epoch)
        self.batches_per_epoch = len(batch_sampler)
        if self.batches_per_epoch < 1:
            raise ConfigError("the data yields no full batch per epoch: lower data.batch_size or add data")
        self._iter: Iterator | None = None
        self._loader: DataLoader | None = None

    def _start_epoch(self) -> None:
        epoch, skip = self.position.epoch, self.position.batch_in_epoch
        self.batch_sampler.set_epoch(epoch)
        for ds in getattr(self.dataset, "datasets", [self.dataset]):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        self._loader = DataLoader(
            self.dataset,
            batch_sampler=_SkipFirst(self.batch_sampler, skip),
            collate_fn=collate_video_batch,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            generator=generator,
        )
        self._iter = iter(self._loader)

    def next(self) -> dict[str, Any]:
        """The next micro-batch; advances the position (rolling over to the next epoch)."""
        if self.position.batch_in_epoch >= self.batches_per_epoch:
            self.close()
            self.position = StreamPosition(self.position.epoch + 1, 0)
        if self._iter is None:
            self._start_epoch()
        batch = next(self._iter)
        self.position = StreamPosition(self.position.epoch, self.position.batch_in_epoch + 1)
        return batch

    def close(self) -> None:
        """Stop the current iterator (joins DataLoader workers)."""
        it = self._iter
        self._iter, self._loader = None, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
