"""Pre-computed latents and text embeddings, so training skips video decoding, the VAE and the text encoder.

:func:`build_latent_cache` runs a dataset through two encoder callables (you pass the VAE and text encoder wrapped
as functions, so this module depends on no model) and writes shards of safetensors; :class:`LatentCacheDataset`
reads them back lazily (memory-mapped) and yields the dataset's dict with ``latents``/``text_embeddings`` in place of
``video``.

Layout of ``out_dir``::

    shard-00000.safetensors   "<j>.latents", "<j>.text_embeddings" per sample j, plus "fps", "frame_stride",
    shard-00001.safetensors   "index" vectors; captions and paths as JSON in the safetensors metadata
    manifest.json             written last: its presence means the cache is complete

Every file is written to a temporary name in ``out_dir`` and renamed, so an interrupted build leaves only whole
shards, and rerunning it re-encodes only the missing ones. Per-sample keys let one shard hold samples of different
shapes (e.g. variable text lengths). A cache freezes one draw of the random stride/crop per sample: cache several
epochs (``dataset.set_epoch``) into separate folders if you want that augmentation back.
"""

from __future__ import annotations

import bisect
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from vidiff.data.csv_datasets import collate_video_batch
from vidiff.utils.io import atomic_save_safetensors, atomic_write_json

CACHE_FORMAT = "vidiff-latent-cache"
CACHE_VERSION = 1
MANIFEST_NAME = "manifest.json"


class LatentCacheError(ValueError):
    """A cache folder that is missing, incomplete or not in this format."""


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _shard_is_complete(path: Path, first: int, count: int, dataset_len: int, with_text: bool) -> bool:
    try:
        with safe_open(os.fspath(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError):
        return False
    expected = {
        "format": CACHE_FORMAT,
        "first": str(first),
        "count": str(count),
        "dataset_len": str(dataset_len),
        "text_embeddings": str(int(with_text)),
    }
    return all(meta.get(k) == v for k, v in expected.items())


def _per_sample(out: Any, batch_size: int, what: str) -> list[torch.Tensor]:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"{what} must return a torch.Tensor, got {type(out).__name__}")
    if out.dim() == 0 or out.shape[0] != batch_size:
        raise ValueError(
            f"{what} returned shape {tuple(out.shape)}; its first dimension must be the batch ({batch_size})"
        )
    return list(out.detach().cpu().unbind(0))


def build_latent_cache(
    dataset: Dataset,
    encode_fn_video: Callable[[torch.Tensor], torch.Tensor],
    encode_fn_text: Callable[[list[str]], torch.Tensor] | None,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    samples_per_shard: int = 256,
    num_workers: int = 0,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Encode every sample of ``dataset`` and write a shard cache to ``out_dir``; returns the manifest's path.

    ``encode_fn_video`` gets the batched ``video`` (B, 3, T, H, W) in [-1, 1] and returns latents with a leading
    batch dimension (for an LDM: the VAE mean times the scale factor); ``encode_fn_text`` gets the list of captions
    and returns (B, ...) embeddings, or is None to cache latents only. Both run under ``torch.no_grad()``; move
    inputs to your device inside them. ``dtype`` (e.g. ``torch.float16``) casts what is stored.

    A folder holding a complete cache is refused unless ``overwrite``; a partly built one is resumed.
    """
    if batch_size < 1 or samples_per_shard < 1:
        raise ValueError("batch_size and samples_per_shard must be positive")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("cannot cache an empty dataset")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST_NAME
    if manifest_path.exists():
        if not overwrite:
            raise FileExistsError(f"{out} already holds a complete latent cache; pass overwrite=True to rebuild it")
        manifest_path.unlink()
        for old in out.glob("shard-*.safetensors"):
            old.unlink()

    # Temporaries of a build killed mid-write (vidiff.utils.io names them ".<name>.<random>.tmp<suffix>").
    for pattern in (".shard-*.tmp*", f".{MANIFEST_NAME}.*.tmp*"):
        for stale in out.glob(pattern):
            stale.unlink()
    with_text = encode_fn_text is not None
    plan = [(k, first, min(samples_per_shard, n - first)) for k, first in enumerate(range(0, n, samples_per_shard))]
    todo = [
        (k, first, count)
        for k, first, count in plan
        if not _shard_is_complete(out / _shard_name(k), first, count, n, with_text)
    ]
    indices = [i for _, first, count in todo for i in range(first, first + count)]

    if indices:
        loader = DataLoader(
            Subset(dataset, indices),
            batch_size=batch_size,
            shuffle=False,
            num_workers=num_workers,
            collate_fn=collate_video_batch,
        )
        pending: list[dict[str, Any]] = []
        shard_iter = iter(todo)
        current = next(shard_iter)
        bar = tqdm(total=len(indices), desc="caching latents", disable=not progress, unit="sample")
        for batch in loader:
            missing = [key for key in ("video", "caption") if key not in batch]
            if missing:
                raise KeyError(f"dataset samples lack {missing}; build_latent_cache needs 'video' and 'caption'")
            bsz = len(batch["caption"])
            with torch.no_grad():
                latents = _per_sample(encode_fn_video(batch["video"]), bsz, "encode_fn_video")
                texts = (
                    _per_sample(encode_fn_text(list(batch["caption"])), bsz, "encode_fn_text")
                    if encode_fn_text is not None
                    else [None] * bsz
                )
            for j in range(bsz):
                pending.append(
                    {
                        "latents": latents[j],
                        "text_embeddings": texts[j],
                        "caption": batch["caption"][j],
                        "path": batch["path"][j] if "path" in batch else "",
                        "fps": float(batch["fps"][j]) if "fps" in batch else 0.0,
                        "frame_stride": int(batch["frame_stride"][j]) if "frame_stride" in batch else 0,
                        "index": int(batch["index"][j]) if "index" in batch else -1,
                    }
                )
                while current is not None and len(pending) >= current[2]:
                    k, first, count = current
                    _write_shard(out / _shard_name(k), pending[:count], first, n, dtype, with_text)
                    pending = pending[count:]
                    current = next(shard_iter, None)
            bar.update(bsz)
        bar.close()
        if current is not None or pending:
            raise RuntimeError(f"the data loader ended before all {len(indices)} samples were cached")

    planned = {_shard_name(k) for k, _, _ in plan}
    for old in out.glob("shard-*.safetensors"):  # left by an earlier build with another shard size
        if old.name not in planned:
            old.unlink()
    skipped = getattr(dataset, "skipped", None)
    manifest = {
        "format": CACHE_FORMAT,
        "version": CACHE_VERSION,
        "num_samples": n,
        "has_text_embeddings": with_text,
        "shards": [{"file": _shard_name(k), "first": first, "count": count} for k, first, count in plan],
        "source": type(dataset).__name__,
        "skipped_while_building": int(skipped) if isinstance(skipped, int) else None,
    }
    atomic_write_json(manifest_path, manifest, indent=1)
    return manifest_path


def _write_shard(
    path: Path,
    samples: Sequence[dict[str, Any]],
    first: int,
    dataset_len: int,
    dtype: torch.dtype | None,
    with_text: bool,
) -> None:
    tensors: dict[str, torch.Tensor] = {}
    for j, s in enumerate(samples):
        for key in ("latents", "text_embeddings"):
            value = s[key]
            if value is None:
                continue
            if dtype is not None and value.is_floating_point():
                value = value.to(dtype)
            tensors[f"{j}.{key}"] = value
    tensors["fps"] = torch.tensor([s["fps"] for s in samples], dtype=torch.float64)
    tensors["frame_stride"] = torch.tensor([s["frame_stride"] for s in samples], dtype=torch.int64)
    tensors["index"] = torch.tensor([s["index"] for s in samples], dtype=torch.int64)
    metadata = {
        "format": CACHE_FORMAT,
        "version": str(CACHE_VERSION),
        "first": str(first),
        "count": str(len(samples)),
        "dataset_len": str(dataset_len),
        "text_embeddings": str(int(with_text)),
        "captions": json.dumps([s["caption"] for s in samples], ensure_ascii=False),
        "paths": json.dumps([s["path"] for s in samples], ensure_ascii=False),
    }
    atomic_save_safetensors(tensors, path, metadata=metadata)


class LatentCacheDataset(Dataset):
    """Samples of a cache written by :func:`build_latent_cache`, loaded lazily shard by shard.

    Yields ``{"latents", "text_embeddings" (when cached), "caption", "fps", "frame_stride", "path", "index"}``, the
    keys :func:`~vidiff.data.csv_datasets.collate_video_batch` batches. At most ``max_open_shards`` shard files are
    kept open (memory-mapped) per process.
    """

    def __init__(self, cache_dir: str | os.PathLike, *, max_open_shards: int = 8) -> None:
        self.cache_dir = Path(cache_dir)
        manifest_path = self.cache_dir / MANIFEST_NAME
        if not manifest_path.is_file():
            raise LatentCacheError(
                f"{self.cache_dir} has no {MANIFEST_NAME}: not a latent cache, or its build did not finish "
                "(rerun build_latent_cache to complete it)"
            )
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as err:
            raise LatentCacheError(f"{manifest_path} is not valid JSON: {err}") from err
        if manifest.get("format") != CACHE_FORMAT or manifest.get("version") != CACHE_VERSION:
            raise LatentCacheError(
                f"{manifest_path} is format {manifest.get('format')!r} v{manifest.get('version')!r}; "
                f"expected {CACHE_FORMAT!r} v{CACHE_VERSION}"
            )
        self.manifest = manifest
        self.has_text_embeddings = bool(manifest["has_text_embeddings"])
        self._shards = [(self.cache_dir / s["file"], int(s["first"]), int(s["count"])) for s in manifest["shards"]]
        for path, _, _ in self._shards:
            if not path.is_file():
                raise LatentCacheError(f"the cache lists {path.name} but the file is missing")
        self._firsts = [first for _, first, _ in self._shards]
        self._len = int(manifest["num_samples"])
        if sum(count for _, _, count in self._shards) != self._len or self._firsts[:1] != [0]:
            raise LatentCacheError(f"{manifest_path}: the shards do not cover {self._len} samples")
        self.max_open_shards = max(1, int(max_open_shards))
        self._open: OrderedDict[int, tuple[Any, dict[str, Any]]] = OrderedDict()

    def __len__(self) -> int:
        return self._len

    def _shard(self, k: int) -> tuple[Any, dict[str, Any]]:
        if k in self._open:
            self._open.move_to_end(k)
            return self._open[k]
        path = self._shards[k][0]
        try:
            handle = safe_open(os.fspath(path), framework="pt")
            meta = handle.metadata() or {}
            info = {
                "captions": json.loads(meta["captions"]),
                "paths": json.loads(meta["paths"]),
                "fps": handle.get_tensor("fps").tolist(),
                "frame_stride": handle.get_tensor("frame_stride").tolist(),
                "index": handle.get_tensor("index").tolist(),
            }
        except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
            raise LatentCacheError(f"cannot read cache shard {path}: {err}") from err
        self._open[k] = (handle, info)
        while len(self._open) > self.max_open_shards:
            self._open.popitem(last=False)
        return handle, info

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -self._len <= index < self._len:
            raise IndexError(f"index {index} out of range for a cache of {self._len} samples")
        index %= self._len
        k = bisect.bisect_right(self._firsts, index) - 1
        j = index - self._shards[k][1]
        handle, info = self._shard(k)
        sample: dict[str, Any] = {"latents": handle.get_tensor(f"{j}.latents")}
        if self.has_text_embeddings:
            sample["text_embeddings"] = handle.get_tensor(f"{j}.text_embeddings")
        sample.update(
            caption=info["captions"][j],
            fps=float(info["fps"][j]),
            frame_stride=int(info["frame_stride"][j]),
            path=info["paths"][j],
            index=int(info["index"][j]),
        )
        return sample

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()  # open shard handles cannot be pickled; each worker reopens its own
        return state
