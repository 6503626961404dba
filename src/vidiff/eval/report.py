"""Shapes-world evaluation runs: generate a prompt suite with a model (or read existing videos), probe every clip,
compute the distribution metrics next to their real-vs-real floors, and write ``report.json``, ``accuracy.png`` and
``failures.png``.

Everything that changes a number is written into ``report.json`` under ``protocol`` (model folder, sampling settings,
seeds, clip size, stride and fps conditioning, world config, probe thresholds, sample counts, metric protocols), and a
``reproduce`` command line is derived from it. See ``docs/eval.md``.

Entry points: :func:`evaluate_model` (``vidiff eval --model``) and :func:`evaluate_video_folder` (``vidiff eval
--videos``); both end in :func:`evaluate_videos`, which takes uint8 clips already in memory (as does
:func:`vidiff.eval.autoencoder_eval.evaluate_autoencoder`, ``vidiff eval --autoencoder``).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import io
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from vidiff.data.shapes import ShapesWorldConfig
from vidiff.eval.probes import CORE_PROBES, PROBE_NAMES, BatchProbeResult, ProbeResult, ProbeThresholds, probe_batch
from vidiff.eval.suite import (
    FLOOR_STREAM,
    GROUND_TRUTH_STREAM,
    SPLIT_TRIPLES,
    PromptSuite,
    world_config_from_dict,
)
from vidiff.model_folder import read_index
from vidiff.utils.io import atomic_write_json, atomic_write_text, atomic_write_with

__all__ = [
    "EvalError",
    "EvalResult",
    "GenerationSettings",
    "MetricSettings",
    "evaluate_model",
    "evaluate_video_folder",
    "evaluate_videos",
    "format_table",
    "print_table",
    "read_world_file",
    "write_accuracy_chart",
    "write_failure_sheet",
]

REPORT_NAME, ACCURACY_NAME, FAILURES_NAME = "report.json", "accuracy.png", "failures.png"
VIDEOS_DIR, MANIFEST_NAME = "videos", "manifest.csv"
PASSED_LABEL = "passed"  # the chart / table row for "every core probe passed"
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Evaluation sets are small next to the feature dimension (128 for FVD-shapes, 400 for I3D), so the covariances are
# singular: the eigendecomposition route computes tr sqrt(S1 S2) exactly there, where scipy's sqrtm needs an eps retry.
SQRTM_METHOD = "eigh"


class EvalError(ValueError):
    """Bad evaluation input (arguments, model folder, videos, metric weights); the message says what to change."""


# --------------------------------------------------------------------------------------------------------------------
# settings


@dataclass(frozen=True)
class GenerationSettings:
    """Sampling settings for ``--model``; None means the model folder's default (resolved values go into the report).

    ``batch_size`` > 1 samples several prompts per pipeline call: faster, but a video then depends on its batch (its
    noise comes from the batch seed, the first item's seed). With 1, each video is exactly what ``vidiff generate``
    (or ``vidiff animate``) gives for its prompt and seed.
    """

    steps: int | None = None
    guidance: float | None = None
    guidance_rescale: float | None = None
    image_guidance: float | None = None
    eta: float | None = None
    negative_prompt: str | None = None
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: int | None = None
    sampler: str = "ddim"
    timestep_spacing: str | None = None
    deep_cache: int | None = None
    deep_cache_depth: int = 1
    attention_broadcast: bool = False
    batch_size: int = 1
    dtype: str = "fp32"
    device: str = "cpu"
    lora: tuple[tuple[str, float], ...] = ()  # LoRA files and scales loaded onto the model (docs/lora.md)

    def __post_init__(self) -> None:
        for name in ("steps", "frames", "height", "width"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EvalError(f"{name} must be a positive int, got {value!r}")
        if self.fps is not None and (isinstance(self.fps, bool) or not isinstance(self.fps, int) or self.fps < 0):
            raise EvalError(f"fps must be a non-negative int, got {self.fps!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise EvalError(f"batch_size must be a positive int, got {self.batch_size!r}")
        if self.dtype not in DTYPES:
            raise EvalError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        from vidiff.diffusion.samplers import SOLVER_SPACINGS, sampler_names

        if self.sampler not in sampler_names():
            raise EvalError(f"sampler must be one of {', '.join(sampler_names())}, got {self.sampler!r}")
        if self.timestep_spacing is not None and self.timestep_spacing not in SOLVER_SPACINGS:
            raise EvalError(f"timestep_spacing must be one of {', '.join(SOLVER_SPACINGS)}, got {self.timestep_spacing!r}")
        if self.dtype == "fp16" and not str(self.device).startswith("cuda"):
            raise EvalError("dtype fp16 needs a GPU (--device cuda); use bf16 or fp32 on the CPU")


@dataclass(frozen=True)
class MetricSettings:
    """Optional metrics. Networks come from local files only (``shapes_classifier`` None: the packaged classifier)."""

    fvd_shapes: bool = False
    shapes_classifier: str | None = None
    i3d: str | None = None
    inception: str | None = None
    clip: str | None = None
    device: str = "cpu"
    batch_size: int = 16


@dataclass
class EvalResult:
    """The report (what ``report.json`` holds), the files written, and the probe results per split."""

    report: dict[str, Any]
    paths: dict[str, Path]
    probes: dict[str, BatchProbeResult]

    def accuracy(self, split: str) -> dict[str, float]:
        return self.report["splits"][split]["accuracy"]


# --------------------------------------------------------------------------------------------------------------------
# small helpers


def _json_ready(obj: Any) -> Any:
    """Plain JSON values: numpy scalars unwrapped, tuples as lists, non-finite floats as null (strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _sha256_text(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit] or "video"


def _check_out_dir(out_dir: str | os.PathLike, overwrite: bool) -> Path:
    """Fail before any work when the output folder cannot take a report; nothing is created here."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise EvalError(f"output path {out} exists and is not a folder")
    if (out / REPORT_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out / REPORT_NAME} already exists; choose another -o folder or pass --overwrite")
    return out


def read_world_file(path: str | os.PathLike) -> ShapesWorldConfig:
    """A ShapesWorldConfig from a JSON file of its fields (e.g. ``{"height": 64, "width": 64, "strides": [1, 2]}``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"world config file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EvalError(f"{path} is not valid JSON: {err}") from None
    return world_config_from_dict(data, str(path))


def _resized_world(world: ShapesWorldConfig, frames: int, height: int, width: int, what: str) -> ShapesWorldConfig:
    try:
        return dataclasses.replace(world, num_frames=frames, height=height, width=width)
    except ValueError as err:
        raise EvalError(f"the probes cannot read {what}: {err}") from None


def _resolve_stride(stride: int | None, world: ShapesWorldConfig) -> int:
    """The default is the world's largest stride: the clearest motion the world has (fps = base_fps / stride)."""
    if stride is None:
        return max(world.strides)
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise EvalError(f"stride must be a positive int, got {stride!r}")
    if stride > max(world.strides):
        raise EvalError(f"stride {stride} is beyond the world's largest stride {max(world.strides)} (strides "
                        f"{world.strides}); objects would leave the frame")
    return stride


def _check_item_strides(suite: PromptSuite) -> None:
    top = max(suite.world.strides)
    bad = [item for item in suite.items if item.stride is not None and item.stride > top]
    if bad:
        raise EvalError(f"{bad[0].file or bad[0].prompt}: stride {bad[0].stride} is beyond the world's largest stride "
                        f"{top}")


# --------------------------------------------------------------------------------------------------------------------
# metric networks


@dataclass
class _Networks:
    classifier: Any = None
    i3d: Any = None
    inception: Any = None
    clip: Any = None


def _load_networks(metrics: MetricSettings, world: ShapesWorldConfig) -> _Networks:
    """Load (and check against the clip size) every requested network before any slow work starts."""
    nets = _Networks()
    if metrics.fvd_shapes:
        from vidiff.eval.shapes_classifier import load_shapes_classifier

        nets.classifier = load_shapes_classifier(metrics.shapes_classifier, device=metrics.device)
        c = nets.classifier.config
        if (c.num_frames, c.height, c.width) != (world.num_frames, world.height, world.width):
            raise EvalError(
                f"the FVD-shapes classifier takes {c.num_frames}x{c.height}x{c.width} clips (frames x height x width) "
                f"but the videos are {world.num_frames}x{world.height}x{world.width}; evaluate at that size or pass a "
                "matching --shapes-classifier"
            )
    if metrics.i3d is not None:
        from vidiff.metrics.i3d import I3D_MIN_FRAMES, load_i3d

        if world.num_frames < I3D_MIN_FRAMES:
            raise EvalError(f"FVD (I3D) needs clips of at least {I3D_MIN_FRAMES} frames, got {world.num_frames}")
        nets.i3d = load_i3d(metrics.i3d, device=metrics.device)
    if metrics.inception is not None:
        from vidiff.metrics.inception import load_inception

        nets.inception = load_inception(metrics.inception, device=metrics.device)
    if metrics.clip is not None:
        from vidiff.metrics.clip_score import load_clip

        nets.clip = load_clip(metrics.clip, device=metrics.device)
    return nets


def _skipped(reason: str) -> dict[str, Any]:
    return {"skipped": reason}


def paired_quality(real: np.ndarray, fake: np.ndarray, batch_size: int, prefix: str) -> dict[str, Any]:
    """``{prefix}_psnr`` / ``{prefix}_ssim`` of paired uint8 clips, each with its mean (``value``) and ``min``."""
    from vidiff.metrics.image_quality import video_psnr, video_ssim

    out: dict[str, Any] = {}
    for name, fn in (("psnr", video_psnr), ("ssim", video_ssim)):
        res = fn(real, fake, batch_size)
        res["min"] = float(np.min(res.pop("per_video")))
        out[f"{prefix}_{name}"] = res
    return out


def _split_metrics(
    fake: np.ndarray,
    real: np.ndarray,
    floor: np.ndarray,
    prompts: list[str],
    nets: _Networks,
    metrics: MetricSettings,
    paired: bool,
) -> dict[str, Any]:
    """Metrics of one split: each beside the value a perfect generator gets (floor / the same metric on real clips)."""
    import torch

    from vidiff.metrics.image_quality import pixel_frame_consistency, video_psnr, video_ssim

    bs = metrics.batch_size
    out: dict[str, Any] = {}
    n = len(fake)
    consistency = pixel_frame_consistency(fake, bs)
    consistency["reference"] = pixel_frame_consistency(real, bs)["value"]
    consistency.pop("per_video", None)
    out["frame_consistency_pixel"] = consistency
    if paired:
        # Same start as the ground truth (the conditioning image is its first frame), so pixel fidelity means something.
        for name, fn in (("psnr_vs_ground_truth", video_psnr), ("ssim_vs_ground_truth", video_ssim)):
            res = fn(real, fake, bs)
            res.pop("per_video", None)
            out[name] = res
        # Frame 0 against the conditioning image: DynamiCrafter's first-frame fidelity (the model re-generates it).
        out.update(paired_quality(real[:, :1], fake[:, :1], bs, "first_frame"))
    if nets.classifier is not None:
        if n < 2:
            out["fvd_shapes"] = _skipped("needs at least 2 videos in the split")
        else:
            from vidiff.eval.fvd_shapes import fvd_shapes

            res = fvd_shapes(real, fake, nets.classifier, batch_size=bs, sqrtm_method=SQRTM_METHOD)
            res["floor"] = fvd_shapes(real, floor, nets.classifier, batch_size=bs, sqrtm_method=SQRTM_METHOD)["value"]
            res["ratio_to_floor"] = res["value"] / res["floor"] if res["floor"] > 0 else None
            out["fvd_shapes"] = res
    if nets.i3d is not None:
        if n < 2:
            out["fvd"] = _skipped("needs at least 2 videos in the split")
        else:
            from vidiff.metrics.i3d import extract_i3d_features, fvd

            t = min(16, fake.shape[1])
            feats = [extract_i3d_features(v, nets.i3d, batch_size=bs, frames_per_clip=t) for v in (real, fake, floor)]
            res = fvd(feats[0], feats[1], sqrtm_method=SQRTM_METHOD)
            res["floor"] = fvd(feats[0], feats[2], sqrtm_method=SQRTM_METHOD)["value"]
            res["ratio_to_floor"] = res["value"] / res["floor"] if res["floor"] > 0 else None
            out["fvd"] = res
    if nets.inception is not None:
        from vidiff.metrics.inception import extract_inception_features, fid, inception_score
        from vidiff.metrics.protocols import video_frames_as_images

        feats = [extract_inception_features(video_frames_as_images(v), nets.inception, batch_size=bs)
                 for v in (real, fake, floor)]
        res = fid(feats[0], feats[1], sqrtm_method=SQRTM_METHOD)
        res["floor"] = fid(feats[0], feats[2], sqrtm_method=SQRTM_METHOD)["value"]
        out["fid_frames"] = res
        splits = min(10, len(feats[1]))
        score = inception_score(feats[1], splits=splits)
        score["reference"] = inception_score(feats[0], splits=splits)["value"]
        out["inception_score_frames"] = score
    if nets.clip is not None:
        from vidiff.metrics.clip_score import clip_frame_consistency, clipsim

        res = clipsim(torch.from_numpy(fake), prompts, nets.clip, batch_size=bs)
        res["reference"] = clipsim(torch.from_numpy(real), prompts, nets.clip, batch_size=bs)["value"]
        res.pop("per_video", None)
        out["clipsim"] = res
        cons = clip_frame_consistency(torch.from_numpy(fake), nets.clip, batch_size=bs)
        cons["reference"] = clip_frame_consistency(torch.from_numpy(real), nets.clip, batch_size=bs)["value"]
        cons.pop("per_video", None)
        out["frame_consistency_clip"] = cons
    return out


# --------------------------------------------------------------------------------------------------------------------
# the shared evaluation


def evaluate_videos(
    suite: PromptSuite,
    videos: Sequence[np.ndarray],
    out_dir: str | os.PathLike,
    stride: int | None = None,
    condition_images: Sequence[np.ndarray | None] | None = None,
    metrics: MetricSettings | None = None,
    protocol: dict[str, Any] | None = None,
    files: Sequence[str | None] | None = None,
    max_failures: int = 12,
    overwrite: bool = False,
    networks: _Networks | None = None,
    title: str = "",
    paired_ground_truth: bool = False,
    extra_metrics: dict[str, dict[str, Any]] | None = None,
) -> EvalResult:
    """Probe and measure uint8 ``(T, H, W, 3)`` clips (one per suite item) and write the report and the two PNGs.

    ``suite.world`` must have the clips' size. ``stride`` (default: the world's largest) is the frame stride the clips
    were made at unless an item states its own; the ground truth is rendered at it. ``protocol`` (e.g. the model and
    sampling settings) is merged into the report's ``protocol``. ``paired_ground_truth`` says the clips started from
    the ground truth's first frame (image-to-video conditioned on it), which adds PSNR / SSIM against the ground truth.
    ``networks`` are metric networks already loaded by :func:`evaluate_model`. ``extra_metrics`` (split -> name ->
    metric result) are measurements only the caller can make, e.g. the reconstruction PSNR of an autoencoder round
    trip; they join the split's metrics in the report and the table.
    """
    metrics = metrics or MetricSettings()
    out = _check_out_dir(out_dir, overwrite)
    world = suite.world
    stride = _resolve_stride(stride, world)
    _check_item_strides(suite)
    if len(videos) != len(suite):
        raise EvalError(f"got {len(videos)} videos for {len(suite)} prompts")
    shape = (world.num_frames, world.height, world.width, 3)
    for i, v in enumerate(videos):
        if not isinstance(v, np.ndarray) or v.dtype != np.uint8 or v.shape != shape:
            got = f"{v.dtype} {v.shape}" if isinstance(v, np.ndarray) else type(v).__name__
            raise EvalError(f"video {i} ({suite.items[i].prompt!r}) must be uint8 {shape}, got {got}")
    conditions = list(condition_images) if condition_images is not None else [None] * len(videos)
    if len(conditions) != len(videos):
        raise EvalError(f"got {len(conditions)} condition images for {len(videos)} videos")
    if any(c is not None for c in conditions) and any(c is None for c in conditions):
        raise EvalError("either every video has a conditioning image or none has (image-to-video vs text-to-video)")
    image_to_video = conditions[0] is not None
    nets = networks if networks is not None else _load_networks(metrics, world)

    strides = [suite.stride_of(item, stride) for item in suite.items]
    real = np.stack(suite.ground_truth_videos(stride, GROUND_TRUTH_STREAM))
    floor = np.stack(suite.ground_truth_videos(stride, FLOOR_STREAM))
    fake = np.stack(list(videos))
    thresholds = ProbeThresholds()

    probes: dict[str, BatchProbeResult] = {}
    splits: dict[str, Any] = {}
    split_metrics: dict[str, Any] = {}
    per_video: list[dict[str, Any]] = [{} for _ in suite.items]
    for split in suite.splits:
        idx = suite.by_split(split)
        prompts = [suite.items[i].prompt for i in idx]
        batch = probe_batch(
            [fake[i] for i in idx], prompts, world,
            condition_images=[conditions[i] for i in idx] if image_to_video else None,
            strides=[strides[i] for i in idx], thresholds=thresholds,
        )
        probes[split] = batch
        splits[split] = {
            "num_videos": len(idx),
            "accuracy": {**batch.accuracy, PASSED_LABEL: batch.pass_rate},
            "counts": {**batch.counts, PASSED_LABEL: len(idx)},
            "pass_rate": batch.pass_rate,
        }
        split_metrics[split] = _split_metrics(fake[idx], real[idx], floor[idx], prompts, nets, metrics,
                                              paired_ground_truth)
        split_metrics[split].update((extra_metrics or {}).get(split, {}))
        for i, res in zip(idx, batch.results):
            item = suite.items[i]
            per_video[i] = {
                "index": i,
                **item.to_dict(),
                "stride": strides[i],
                "file": files[i] if files is not None else item.file,
                "passed": res.passed,
                "failed_probes": [name for name, s in res.scores.items() if name in CORE_PROBES and not s.passed],
                "probes": res.to_dict()["scores"],
            }

    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "report": out / REPORT_NAME,
        "accuracy": out / ACCURACY_NAME,
        "failures": out / FAILURES_NAME,
    }
    full_protocol = {
        **(protocol or {}),
        "suite": suite.to_dict(),
        "stride": stride,
        "clip_fps": world.base_fps / stride,
        "ground_truth": (
            "each prompt rendered by the shapes world at the clip size and stride, object placements drawn from "
            f"numpy default_rng([suite seed, *item key, {GROUND_TRUTH_STREAM}]); the real-vs-real floor set uses "
            f"stream {FLOOR_STREAM} (an independent placement of the same prompts)"
        ),
        "probes": {
            "thresholds": dataclasses.asdict(thresholds),
            "core_probes": list(CORE_PROBES),
            "passed": "every core probe that applies passed",
            "input": _PROBE_INPUT.get((protocol or {}).get("mode"), "uint8 frames decoded from the video files"),
        },
    }
    report = {
        "vidiff_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "title": title,
        "protocol": full_protocol,
        "splits": splits,
        "metrics": split_metrics,
        "videos": per_video,
        "files": {k: p.name for k, p in paths.items()},
    }
    report = _json_ready(report)
    write_accuracy_chart({s: splits[s]["accuracy"] for s in splits}, paths["accuracy"],
                         counts={s: splits[s]["num_videos"] for s in splits}, title=title)
    write_failure_sheet(suite, fake, [r for s in suite.splits for r in _results_in_order(suite, probes, s)],
                        paths["failures"], conditions if image_to_video else None, max_failures)
    atomic_write_json(paths["report"], report)
    return EvalResult(report=report, paths=paths, probes=probes)


_PROBE_INPUT = {
    "model": "uint8 frames as generated (before MP4 encoding)",
    "autoencoder": "uint8 frames as reconstructed (clamped to [-1, 1], truncated to uint8, never MP4-encoded)",
}


def _results_in_order(suite: PromptSuite, probes: dict[str, BatchProbeResult], split: str) -> list[tuple[int, Any]]:
    return list(zip(suite.by_split(split), probes[split].results))


def _version() -> str:
    from vidiff import __version__

    return __version__


# --------------------------------------------------------------------------------------------------------------------
# --videos: existing files


def evaluate_video_folder(
    videos_dir: str | os.PathLike,
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    stride: int | None = None,
    seed: int = 0,
    world: ShapesWorldConfig | None = None,
    metrics: MetricSettings | None = None,
    max_failures: int = 12,
    overwrite: bool = False,
) -> EvalResult:
    """Evaluate the videos a manifest names (paths relative to ``videos_dir``) against their prompts."""
    from vidiff.eval.suite import suite_from_file
    from vidiff.utils.video import read_video

    folder = Path(videos_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"videos folder not found: {folder}")
    _check_out_dir(out_dir, overwrite)
    suite = suite_from_file(manifest, seed=seed, world_config=world, require_files=True)
    missing = [item.file for item in suite.items if not (folder / item.file).is_file()]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise FileNotFoundError(f"{len(missing)} video(s) of {manifest} not found in {folder}: {missing[:5]}{more}")
    videos = [read_video(folder / item.file)[0] for item in suite.items]
    shapes = {v.shape for v in videos}
    if len(shapes) != 1:
        by_shape = {s: next(item.file for item, v in zip(suite.items, videos) if v.shape == s) for s in shapes}
        raise EvalError(f"the videos must share one size (frames, height, width, 3); found {by_shape}")
    t, h, w, _ = videos[0].shape
    base = world or ShapesWorldConfig()
    suite = suite.with_world(_resized_world(base, t, h, w, f"{t}x{h}x{w} videos"))
    conditions = None
    if any(item.image for item in suite.items):
        conditions = [_read_condition(folder, item.image, (h, w), manifest) for item in suite.items]
    protocol = {
        "mode": "videos",
        "videos": {
            "folder": str(folder.resolve()),
            "manifest": str(Path(manifest).resolve()),
            "manifest_sha256": _sha256_text(Path(manifest)),
        },
        "world_config_source": "given" if world is not None else "defaults",
    }
    return evaluate_videos(
        suite, videos, out_dir, stride, conditions, metrics, protocol, max_failures=max_failures,
        overwrite=overwrite, title=f"videos: {folder.name}",
    )


def _read_condition(folder: Path, image: str | None, size: tuple[int, int], manifest: Any) -> np.ndarray:
    from vidiff.pipelines.image_io import open_image

    if image is None:
        raise EvalError(f"{manifest}: some entries name a conditioning image and others do not; give one for each "
                        "image-to-video clip, or none")
    arr = np.asarray(open_image(folder / image), dtype=np.uint8)
    if arr.shape[:2] != size:
        raise EvalError(f"conditioning image {image} is {arr.shape[0]}x{arr.shape[1]}, the videos are {size[0]}x{size[1]}")
    return arr


# --------------------------------------------------------------------------------------------------------------------
# --model: generate, then evaluate


def _model_index(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise FileNotFoundError(f"model folder not found: {folder}")
    return read_index(folder, EvalError)


def _training_world(index: dict[str, Any], where: str = "model_index.json training.config.data.videos"
                    ) -> ShapesWorldConfig | None:
    """The world a vidiff training run saw (the shapes data of ``index["training"]["config"]``), if it says."""
    videos = (((index.get("training") or {}).get("config") or {}).get("data") or {}).get("videos")
    if isinstance(videos, dict) and videos.get("type") == "shapes":
        return world_config_from_dict(videos, where)
    return None


def _training_conditioning(index: dict[str, Any]) -> str | None:
    return (((index.get("training") or {}).get("config") or {}).get("model") or {}).get("conditioning")


def _load_pipeline(folder: Path, index: dict[str, Any], settings: GenerationSettings) -> tuple[Any, bool]:
    import torch

    from vidiff.pipelines.image_to_video import ImageToVideoPipeline
    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    dtype = getattr(torch, DTYPES[settings.dtype])
    image_to_video = index.get("_class_name") == "ImageToVideoPipeline"
    cls = ImageToVideoPipeline if image_to_video else TextToVideoPipeline
    pipe = cls.from_pretrained(folder, torch_dtype=dtype, device=settings.device, lora=list(settings.lora) or None)
    return pipe, image_to_video


def _write_generated(
    out: Path, suite: PromptSuite, videos: list[np.ndarray], conditions: list[np.ndarray | None],
    strides: list[int], fps: float,
) -> tuple[list[str], Path]:
    """Save every clip (and conditioning image) under ``videos/`` with a manifest ``--videos`` mode reads back."""
    from PIL import Image

    from vidiff.utils.video import write_mp4

    root = out / VIDEOS_DIR
    rows, files = [], []
    for i, (item, video, cond, stride) in enumerate(zip(suite.items, videos, conditions, strides)):
        sub = _slug(item.split, 32)
        (root / sub).mkdir(parents=True, exist_ok=True)
        rel = f"{sub}/{i:04d}_{_slug(item.prompt)}.mp4"
        write_mp4(video, root / rel, fps=fps)
        row = {"file": rel, "prompt": item.prompt, "split": item.split, "stride": stride, "seed": item.seed}
        if cond is not None:
            image_rel = rel.removesuffix(".mp4") + "_image.png"
            picture = Image.fromarray(cond)
            atomic_write_with(root / image_rel, lambda tmp, p=picture: p.save(tmp, format="PNG"))
            row["image"] = image_rel
        rows.append(row)
        files.append(f"{VIDEOS_DIR}/{rel}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest = atomic_write_text(root / MANIFEST_NAME, buf.getvalue())
    return files, manifest


def evaluate_model(
    model: str | os.PathLike,
    suite: PromptSuite,
    out_dir: str | os.PathLike,
    stride: int | None = None,
    generation: GenerationSettings | None = None,
    metrics: MetricSettings | None = None,
    world: ShapesWorldConfig | None = None,
    save_videos: bool = True,
    max_failures: int = 12,
    overwrite: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Generate every suite prompt with a model folder and evaluate the clips.

    The world config is ``world`` if given, else the one a vidiff-trained folder records in ``model_index.json``
    (``training.config.data.videos``), else the defaults; its clip size is set to the size generated (explicit
    settings, else the world's, else the model's defaults). Image-to-video folders are conditioned on the ground
    truth's first frame, and get the first-frame and identity probes.
    """
    from tqdm.auto import tqdm

    settings = generation or GenerationSettings()
    metrics = metrics or MetricSettings()
    folder = Path(model)
    index = _model_index(folder)
    training_world = _training_world(index)
    base_world = world or training_world
    out = _check_out_dir(out_dir, overwrite)
    pipe, image_to_video = _load_pipeline(folder, index, settings)

    frames = settings.frames or (base_world.num_frames if base_world else None) or pipe.defaults["num_frames"]
    height = settings.height or (base_world.height if base_world else None) or pipe.defaults["height"]
    width = settings.width or (base_world.width if base_world else None) or pipe.defaults["width"]
    world_cfg = _resized_world(base_world or ShapesWorldConfig(), frames, height, width,
                               f"{frames}x{height}x{width} clips (set --frames/--height/--width)")
    suite = suite.with_world(world_cfg)
    stride = _resolve_stride(stride, world_cfg)
    _check_item_strides(suite)
    nets = _load_networks(metrics, world_cfg)

    steps = pipe.resolve("num_inference_steps", settings.steps)
    guidance = float(pipe.resolve("guidance_scale", settings.guidance))
    rescale = float(pipe.resolve("guidance_rescale", settings.guidance_rescale))
    eta = float(pipe.resolve("eta", settings.eta))
    spacing = pipe.resolve("timestep_spacing", settings.timestep_spacing)
    pipe.check_sampler(settings.sampler, spacing)
    conditioning = _training_conditioning(index)
    stride_conditioned = conditioning == "frame_stride" or (image_to_video and pipe.fps_is_frame_stride)
    strides = [suite.stride_of(item, stride) for item in suite.items]

    def fps_for(s: int) -> int:
        if settings.fps is not None:
            return settings.fps
        return s if stride_conditioned else int(round(world_cfg.base_fps / s))

    conditions: list[np.ndarray | None] = [None] * len(suite)
    if image_to_video:
        conditions = [v[0] for v in suite.ground_truth_videos(stride, GROUND_TRUTH_STREAM)]

    bs = settings.batch_size
    # Batches never mix strides (one fps conditioning per call).
    order = sorted(range(len(suite)), key=lambda i: (strides[i], i))
    batches = [order[i:i + bs] for i in range(0, len(order), bs)]
    batches = [b2 for b in batches for b2 in _split_by(b, lambda i: strides[i])]
    videos: list[np.ndarray | None] = [None] * len(suite)
    bar = tqdm(total=len(suite), desc="generating", unit="video", disable=not progress, file=sys.stderr)
    started = time.perf_counter()
    try:
        for batch in batches:
            prompts = [suite.items[i].prompt for i in batch]
            common = dict(
                negative_prompt=settings.negative_prompt, num_frames=frames, height=height, width=width,
                num_inference_steps=steps, guidance_scale=guidance, guidance_rescale=rescale,
                fps=fps_for(strides[batch[0]]), eta=eta, seed=suite.items[batch[0]].seed, progress=False,
                sampler=settings.sampler, timestep_spacing=spacing,
                deep_cache=None if settings.deep_cache is None else (settings.deep_cache, settings.deep_cache_depth),
                attention_broadcast=settings.attention_broadcast,
            )
            if image_to_video:
                out_frames = pipe([conditions[i] for i in batch], prompts,
                                  image_guidance_scale=settings.image_guidance, **common).frames
            else:
                out_frames = pipe(prompts, **common).frames
            for i, v in zip(batch, out_frames):
                videos[i] = v.cpu().numpy() if hasattr(v, "cpu") else np.asarray(v)
            bar.update(len(batch))
    finally:
        bar.close()
    generation_seconds = time.perf_counter() - started
    if videos[0].shape[0] != frames:  # e.g. a pipeline that drops a frame; the world must describe what was made
        raise EvalError(f"the model returned {videos[0].shape[0]} frames, {frames} were asked for")

    files: list[str | None] = [None] * len(suite)
    manifest = None
    if save_videos:
        files, manifest = _write_generated(out, suite, videos, conditions, strides, fps=world_cfg.base_fps / stride)

    protocol = {
        "mode": "model",
        "model": {
            "folder": str(folder.resolve()),
            "pipeline": "ImageToVideoPipeline" if image_to_video else "TextToVideoPipeline",
            "family": index.get("family"),
            "flavour": index.get("flavour"),
            "model_index_sha256": _sha256_text(folder / "model_index.json"),
            "training_step": (index.get("training") or {}).get("step"),
        },
        "world_config_source": "given" if world is not None else (
            "model_index.json training config" if training_world is not None else "defaults"),
        "generation": {
            "lora": [{"path": str(p), "scale": s} for p, s in settings.lora],
            "sampler": settings.sampler,
            "timestep_spacing": spacing,
            "deep_cache": None if settings.deep_cache is None else {"interval": settings.deep_cache,
                                                                     "depth": settings.deep_cache_depth},
            "attention_broadcast": settings.attention_broadcast,
            "num_inference_steps": steps,
            "guidance_scale": guidance,
            "guidance_rescale": rescale,
            "image_guidance_scale": (settings.image_guidance if settings.image_guidance is not None
                                     else pipe.defaults.get("image_guidance_scale")) if image_to_video else None,
            "eta": eta,
            "negative_prompt": settings.negative_prompt or "",
            "num_frames": frames,
            "height": height,
            "width": width,
            "fps_conditioning": fps_for(stride),
            "fps_conditioning_means": "fixed by --fps" if settings.fps is not None else (
                "frame stride" if stride_conditioned else "frames per second (base_fps / stride, rounded)"),
            "batch_size": bs,
            "seeds": "per video (listed under videos[].seed); a batch uses its first video's seed",
            "dtype": settings.dtype,
            "device": str(settings.device),
            "conditioning_image": "the ground truth's first frame" if image_to_video else None,
            "wall_seconds": round(generation_seconds, 3),  # sampling and decoding of every video
        },
        "reproduce": _reproduce_command(folder, suite, stride, settings, metrics, save_videos, image_to_video,
                                        world is not None),
    }
    result = evaluate_videos(
        suite, videos, out, stride, conditions if image_to_video else None, metrics, protocol, files=files,
        max_failures=max_failures, overwrite=True, networks=nets, title=f"model: {folder.name}",
        paired_ground_truth=image_to_video,
    )
    if manifest is not None:
        result.paths["videos"] = out / VIDEOS_DIR
        result.paths["manifest"] = manifest
    return result


def _split_by(batch: list[int], key: Callable[[int], Any]) -> list[list[int]]:
    groups: list[list[int]] = []
    for i in batch:
        if groups and key(groups[-1][-1]) == key(i):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _reproduce_command(
    folder: Path, suite: PromptSuite, stride: int, s: GenerationSettings, m: MetricSettings, save_videos: bool,
    image_to_video: bool, world_given: bool,
) -> str:
    """A command line that repeats the run; OUT_DIR (and WORLD.json, when a world file was given) stand for paths the
    reader chooses."""
    import shlex

    w = suite.world
    parts = ["vidiff", "eval", "--model", str(folder.resolve()), *_suite_args(suite, stride, world_given)]
    parts += ["--frames", str(w.num_frames), "--height", str(w.height), "--width", str(w.width)]
    for flag, value in (("--steps", s.steps), ("--guidance", s.guidance), ("--guidance-rescale", s.guidance_rescale),
                        ("--eta", s.eta), ("--fps", s.fps), ("--negative-prompt", s.negative_prompt),
                        ("--timestep-spacing", s.timestep_spacing)):
        if value is not None:
            parts += [flag, str(value)]
    if image_to_video and s.image_guidance is not None:
        parts += ["--image-guidance", str(s.image_guidance)]
    if s.sampler != "ddim":
        parts += ["--sampler", s.sampler]
    if s.deep_cache is not None:
        parts += ["--deep-cache", str(s.deep_cache), "--deep-cache-depth", str(s.deep_cache_depth)]
    if s.attention_broadcast:
        parts.append("--attention-broadcast")
    parts += ["--batch-size", str(s.batch_size), "--dtype", s.dtype, *_metric_args(m)]
    if not save_videos:
        parts.append("--no-videos")
    parts += ["-o", "OUT_DIR"]
    return shlex.join(parts)


def _suite_args(suite: PromptSuite, stride: int, world_given: bool) -> list[str]:
    """The command-line flags that select ``suite``; WORLD.json stands for the report's protocol.suite.world saved to a
    file."""
    if suite.source == "canonical":
        parts = ["--suite", ",".join(suite.splits), "--per-triple", str(suite.per_triple)]
        counts = {sp: len(suite.by_split(sp)) // suite.per_triple for sp in suite.splits}
        if any(counts[sp] < len(SPLIT_TRIPLES[sp]) for sp in suite.splits):
            parts += ["--max-triples", str(max(counts.values()))]
    else:
        parts = ["--prompts", suite.source, "--per-prompt", str(suite.per_triple)]
    if world_given:
        parts += ["--world", "WORLD.json"]
    return parts + ["--seed", str(suite.seed), "--stride", str(stride)]


def _metric_args(m: MetricSettings) -> list[str]:
    parts = []
    if m.fvd_shapes:
        parts.append("--fvd-shapes")
        if m.shapes_classifier:
            parts += ["--shapes-classifier", str(m.shapes_classifier)]
    for flag, value in (("--i3d", m.i3d), ("--inception", m.inception), ("--clip", m.clip)):
        if value is not None:
            parts += [flag, str(value)]
    return parts


# --------------------------------------------------------------------------------------------------------------------
# pictures


_SPLIT_COLOURS = [(76, 114, 176), (221, 132, 82), (85, 168, 104), (196, 78, 82), (129, 114, 179), (147, 120, 96)]


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _ordered_probes(accuracy: dict[str, dict[str, float]]) -> list[str]:
    present = {name for acc in accuracy.values() for name in acc}
    names = [p for p in PROBE_NAMES if p in present]
    return names + [PASSED_LABEL] if PASSED_LABEL in present else names


def _save_png(image: Any, path: Path) -> Path:
    if path.suffix.lower() != ".png":
        raise EvalError(f"picture path must end in .png, got {path}")
    return atomic_write_with(path, lambda tmp: image.save(tmp, format="PNG"))


def write_accuracy_chart(
    accuracy: dict[str, dict[str, float]],
    path: str | os.PathLike,
    counts: dict[str, int] | None = None,
    title: str = "",
) -> Path:
    """Grouped bar chart of probe accuracy (%), one bar per split in each probe group, as a PNG (Pillow only)."""
    from PIL import Image, ImageDraw

    if not accuracy:
        raise EvalError("no accuracies to plot")
    probes = _ordered_probes(accuracy)
    splits = list(accuracy)
    label_font, small, title_font = _font(12), _font(10), _font(15)
    bar_w, gap = 24, 16
    probe_label = {p: "all core" if p == PASSED_LABEL else p for p in probes}
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    group_w = max(len(splits) * bar_w + gap, max(int(measure.textlength(probe_label[p], font=label_font)) + 10
                                                  for p in probes))
    left, right, top, plot_h, bottom = 56, 20, 92, 240, 40
    width = max(520, left + right + group_w * len(probes))
    height = top + plot_h + bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    y0 = top + plot_h
    for pct in (0, 25, 50, 75, 100):
        y = y0 - pct / 100 * plot_h
        draw.line([(left, y), (width - right, y)], fill=(225, 225, 225) if pct else (120, 120, 120))
        draw.text((left - 8, y), f"{pct}%", fill=(60, 60, 60), font=small, anchor="rm")
    draw.text((left, 12), title or "Probe accuracy", fill="black", font=title_font)
    draw.text((left, 32), "share of videos passing each probe (\"all core\": every core probe)", fill=(90, 90, 90),
              font=small)
    x = left + 10
    for i, split in enumerate(splits):  # legend
        colour = _SPLIT_COLOURS[i % len(_SPLIT_COLOURS)]
        n = f" (n={counts[split]})" if counts and split in counts else ""
        draw.rectangle([x, 52, x + 10, 62], fill=colour)
        draw.text((x + 14, 57), f"{split}{n}", fill="black", font=label_font, anchor="lm")
        x += 24 + int(draw.textlength(f"{split}{n}", font=label_font))
    for g, probe in enumerate(probes):
        gx = left + g * group_w + (group_w - len(splits) * bar_w) / 2
        for i, split in enumerate(splits):
            value = accuracy[split].get(probe)
            bx = gx + i * bar_w
            if value is None:
                continue
            colour = _SPLIT_COLOURS[i % len(_SPLIT_COLOURS)]
            y = y0 - float(value) * plot_h
            draw.rectangle([bx + 1, y, bx + bar_w - 2, y0], fill=colour)
            draw.text((bx + bar_w / 2, y - 2), f"{round(100 * value)}", fill=(40, 40, 40), font=small, anchor="mb")
        cx = left + g * group_w + group_w / 2
        draw.text((cx, y0 + 8), probe_label[probe], fill="black", font=label_font, anchor="mt")
    return _save_png(image, Path(path))


def _fit(draw: Any, text: str, font: Any, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _describe_failure(result: ProbeResult) -> str:
    parts, nothing = [], []
    for name, s in result.scores.items():
        if name in CORE_PROBES and not s.passed:
            if s.detected == "none":
                nothing.append(name)
            elif isinstance(s.detected, str | int | float):
                parts.append(f"{name} (wanted {s.expected}, got {s.detected})")
            else:
                parts.append(name)
    if nothing:
        parts.insert(0, f"no matching object ({', '.join(nothing)})")
    return "failed: " + ", ".join(parts)


def write_failure_sheet(
    suite: PromptSuite,
    videos: np.ndarray | Sequence[np.ndarray],
    results: Sequence[tuple[int, ProbeResult]],
    path: str | os.PathLike,
    condition_images: Sequence[np.ndarray | None] | None = None,
    max_rows: int = 12,
    columns: int = 8,
) -> Path:
    """Contact sheet of failing clips: per row the prompt, the failed probes, then evenly spaced frames (upscaled).

    With image-to-video clips the conditioning image comes first. When nothing failed the sheet says so.
    """
    from PIL import Image, ImageDraw

    failing = [(i, r) for i, r in results if not r.passed]
    shown = failing[:max(0, max_rows)]
    font, small = _font(13), _font(11)
    h, w = (int(videos[0].shape[1]), int(videos[0].shape[2])) if len(videos) else (64, 64)
    scale = max(1, math.ceil(96 / h))
    th, tw, pad, label_h = h * scale, w * scale, 4, 38
    n_cols = min(columns, int(videos[0].shape[0])) + (1 if condition_images is not None else 0)
    width = max(560, n_cols * (tw + pad) + pad)
    header_h = 30
    height = header_h + len(shown) * (label_h + th + pad) + pad
    sheet = Image.new("RGB", (width, height), (245, 245, 245))
    draw = ImageDraw.Draw(sheet)
    if failing:
        head = f"{len(failing)} of {len(results)} videos failed a core probe" + (
            f" (first {len(shown)} shown)" if len(shown) < len(failing) else "")
    else:
        head = f"all {len(results)} videos passed every core probe"
    draw.text((pad, 8), head, fill="black", font=font)
    y = header_h
    for i, result in shown:
        item = suite.items[i]
        draw.text((pad, y + 2), _fit(draw, f"[{item.split}] {item.prompt}", font, width - 2 * pad), fill="black",
                  font=font)
        draw.text((pad, y + 20), _fit(draw, _describe_failure(result), small, width - 2 * pad), fill=(170, 30, 30),
                  font=small)
        y += label_h
        video = np.asarray(videos[i])
        t = video.shape[0]
        picks = np.unique(np.round(np.linspace(0, t - 1, min(columns, t))).astype(np.int64))
        tiles = [video[k] for k in picks]
        if condition_images is not None and condition_images[i] is not None:
            tiles = [np.asarray(condition_images[i]), *tiles]
        x = pad
        for k, tile in enumerate(tiles):
            im = Image.fromarray(np.ascontiguousarray(tile)).resize((tw, th), Image.Resampling.NEAREST)
            sheet.paste(im, (x, y))
            if k == 0 and condition_images is not None:
                draw.rectangle([x, y, x + tw - 1, y + th - 1], outline=(30, 120, 200), width=2)
            x += tw + pad
        y += th + pad
    return _save_png(sheet, Path(path))


# --------------------------------------------------------------------------------------------------------------------
# table


_METRIC_ORDER = ("fvd_shapes", "fvd", "fid_frames", "inception_score_frames", "clipsim", "frame_consistency_clip",
                 "frame_consistency_pixel", "psnr_vs_ground_truth", "ssim_vs_ground_truth", "first_frame_psnr",
                 "first_frame_ssim", "reconstruction_psnr",
                 "reconstruction_ssim")


def _metric_cell(res: dict[str, Any] | None) -> str:
    if not res:
        return "-"
    if "skipped" in res:
        return "skipped"
    value = res.get("value")
    text = "-" if value is None else f"{value:.4g}"
    if res.get("floor") is not None:
        text += f" (floor {res['floor']:.4g})"
    elif res.get("reference") is not None:
        text += f" (real {res['reference']:.4g})"
    elif res.get("min") is not None:
        text += f" (min {res['min']:.4g})"
    return text


def _table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]], list[list[str]]]:
    splits = list(report["splits"])
    header = ["probe"] + [f"{s} (n={report['splits'][s]['num_videos']})" for s in splits]
    accuracy = {s: report["splits"][s]["accuracy"] for s in splits}
    rows = []
    for probe in _ordered_probes(accuracy):
        cells = []
        for s in splits:
            acc, n = accuracy[s].get(probe), report["splits"][s]["counts"].get(probe)
            cells.append("-" if acc is None else f"{100 * acc:.1f}% ({n})")
        rows.append(["all core probes" if probe == PASSED_LABEL else probe] + cells)
    metric_names = [m for m in _METRIC_ORDER if any(m in report["metrics"].get(s, {}) for s in splits)]
    metric_rows = [[m] + [_metric_cell(report["metrics"].get(s, {}).get(m)) for s in splits] for m in metric_names]
    return header, rows, metric_rows


def format_table(report: dict[str, Any]) -> str:
    """Plain-text table: probe accuracies (videos the probe applies to) and metrics per split."""
    header, rows, metric_rows = _table_rows(report)
    all_rows = [header, *rows] + ([["metric"] + [""] * (len(header) - 1), *metric_rows] if metric_rows else [])
    widths = [max(len(r[c]) for r in all_rows) for c in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(cell.ljust(wd) if c == 0 else cell.rjust(wd) for c, (cell, wd) in enumerate(zip(r, widths)))

    out = [line(header), "  ".join("-" * wd for wd in widths), *(line(r) for r in rows)]
    if metric_rows:
        out += ["", line(["metric"] + [""] * (len(header) - 1)), "  ".join("-" * wd for wd in widths)]
        out += [line(r) for r in metric_rows]
    return "\n".join(out)


def print_table(report: dict[str, Any], file: TextIO | None = None) -> None:
    """Print the table with rich when it is installed, else as plain text."""
    file = file or sys.stdout
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(format_table(report), file=file)
        return
    header, rows, metric_rows = _table_rows(report)
    console = Console(file=file, width=max(100, 24 * len(header)))
    table = Table(title=report.get("title") or "shapes-world evaluation")
    for i, name in enumerate(header):
        table.add_column(name, justify="left" if i == 0 else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    if metric_rows:
        metrics = Table(title="metrics (beside: real-vs-real floor, or the same metric on real clips)")
        for i, name in enumerate(["metric", *header[1:]]):
            metrics.add_column(name, justify="left" if i == 0 else "right")
        for r in metric_rows:
            metrics.add_row(*r)
        console.print(metrics)
