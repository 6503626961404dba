"""The autoencoder ceiling: shapes-world scores of ground-truth clips round-tripped through a first-stage autoencoder.

A latent video diffusion model only ever produces what its autoencoder can decode, so the probe accuracies and
FVD-shapes of perfectly reconstructed training-distribution clips bound what the generator can reach; model cards
report them beside the generated-model scores, with the round trip's reconstruction PSNR / SSIM (the first-stage
numbers the field reports).

Which clips: the suite's ground truth from the *floor* stream (``FLOOR_STREAM``, an independent placement of every
prompt), rendered as float frames in [-1, 1] exactly as the training data loader gives them. :func:`evaluate_videos`
uses stream ``GROUND_TRUTH_STREAM`` as FVD's real set and the unreconstructed floor-stream clips as its real-vs-real
floor, so the round-tripped clips are never a reconstruction of the real set itself (which would make FVD a paired
comparison no generator could match), and ``value / floor`` isolates what the autoencoder alone costs: both sides
hold the same placements, one of them reconstructed.

Round trip: posterior mode (no sampling), decode, clamp to [-1, 1], uint8 by truncation, as the pipelines do.

Entry point: :func:`evaluate_autoencoder` (``vidiff eval --autoencoder``); see ``docs/eval.md``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vidiff.data.shapes import ShapesWorldConfig
from vidiff.eval.report import (
    EvalError,
    EvalResult,
    MetricSettings,
    _check_item_strides,
    _check_out_dir,
    _load_networks,
    _metric_args,
    _resolve_stride,
    _sha256_text,
    _suite_args,
    _training_world,
    evaluate_videos,
    paired_quality,
)
from vidiff.eval.suite import FLOOR_STREAM, GROUND_TRUTH_STREAM, PromptSuite
from vidiff.model_folder import read_index

__all__ = ["AUTOENCODER_CLASSES", "evaluate_autoencoder", "load_autoencoder_folder", "round_trip"]

AUTOENCODER_CLASSES = ("LDMAutoencoderKL", "AutoencoderKL")  # per-frame image autoencoders vidiff's pipelines use
FRAMES_PER_CALL = 16  # frames per encoder / decoder call: bounds memory for large frames without changing results
_EXPECTED = ("an autoencoder folder (config.json + diffusion_pytorch_model.safetensors, what `vidiff train "
             "configs/shapes_vae.yaml` exports to outputs/RUN/model) or a model folder with a vae/ subfolder")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise EvalError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise EvalError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def _resolve_folder(folder: Path) -> tuple[Path, dict[str, Any] | None, str]:
    """(the autoencoder's own folder, the training record that names its world, where that record is)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"autoencoder folder not found: {folder}")
    index_path = folder / "model_index.json"
    if index_path.is_file():
        vae_dir = folder / "vae"
        if not (vae_dir / "config.json").is_file():
            raise EvalError(f"{folder} is a model folder without a vae/ subfolder (vae/config.json); --autoencoder "
                            f"takes {_EXPECTED}")
        return vae_dir, read_index(folder, EvalError).get("training"), "model_index.json training.config.data.videos"
    if not (folder / "config.json").is_file():
        raise EvalError(f"{folder} is not an autoencoder folder (no config.json or model_index.json); --autoencoder "
                        f"takes {_EXPECTED}")
    training_path = folder / "training.json"
    training = _read_json(training_path) if training_path.is_file() else None
    return folder, training, "training.json config.data.videos"


def load_autoencoder_folder(folder: str | os.PathLike) -> tuple[Any, Path, ShapesWorldConfig | None, dict[str, Any]]:
    """Load the autoencoder of an autoencoder or model folder: (vae in eval mode, its folder, training world, info).

    ``info`` (class, scaling factor, spatial factor, latent channels, config hash, training step) goes into the report.
    """
    from vidiff.models.autoencoder import LDMAutoencoderKL, latent_channels_of, spatial_factor_of

    folder = Path(folder)
    vae_dir, training, where = _resolve_folder(folder)
    config = _read_json(vae_dir / "config.json")
    cls = config.get("_class_name")
    if cls not in AUTOENCODER_CLASSES:
        raise EvalError(f"{vae_dir / 'config.json'} describes a {cls or 'model without _class_name'}, not an "
                        f"autoencoder ({' or '.join(AUTOENCODER_CLASSES)}); --autoencoder takes {_EXPECTED}")
    for name in ("in_channels", "out_channels"):
        if config.get(name, 3) != 3:
            raise EvalError(f"{vae_dir}: the autoencoder has {name} = {config[name]}; RGB clips need 3")
    try:
        vae = LDMAutoencoderKL.from_pretrained(vae_dir)
    except (OSError, ValueError, RuntimeError) as err:
        raise EvalError(f"cannot load the autoencoder from {vae_dir}: {err}") from None
    vae.eval()
    info = {
        "folder": str(folder.resolve()),
        "vae_folder": str(vae_dir.resolve()),
        "class": cls,
        "config_sha256": _sha256_text(vae_dir / "config.json"),
        "scaling_factor": float(vae.config.scaling_factor),
        "spatial_factor": spatial_factor_of(vae),
        "latent_channels": latent_channels_of(vae),
        "training_step": (training or {}).get("step"),
    }
    return vae, vae_dir, _training_world({"training": training}, where), info


def round_trip(vae: Any, videos: Any, device: str = "cpu") -> np.ndarray:
    """Float clips ``(b, 3, t, H, W)`` in [-1, 1] -> uint8 ``(b, t, H, W, 3)`` reconstructions.

    Encodes with the posterior mode, decodes, then clamps and truncates to uint8 exactly as the pipelines' output.
    """
    import torch

    from vidiff.models.autoencoder import decode_video, encode_video
    from vidiff.utils.video import batch_to_uint8_frames

    vae.to(device)
    with torch.inference_mode():
        x = torch.as_tensor(videos, dtype=torch.float32)
        latents = encode_video(vae, x, sample=False, chunk_size=FRAMES_PER_CALL)
        return batch_to_uint8_frames(decode_video(vae, latents, chunk_size=FRAMES_PER_CALL).float()).numpy()


def _reconstruction_metrics(inputs: np.ndarray, recon: np.ndarray, batch_size: int) -> dict[str, Any]:
    out = paired_quality(inputs, recon, batch_size, "reconstruction")
    for res in out.values():
        res["reference_clips"] = f"the round trip's own inputs (ground-truth stream {FLOOR_STREAM}, uint8)"
    return out


def _reproduce(folder: Path, suite: PromptSuite, stride: int, batch_size: int, m: MetricSettings,
               world_given: bool) -> str:
    import shlex

    parts = ["vidiff", "eval", "--autoencoder", str(folder.resolve()), *_suite_args(suite, stride, world_given),
             "--batch-size", str(batch_size), *_metric_args(m), "-o", "OUT_DIR"]
    return shlex.join(parts)


def evaluate_autoencoder(
    folder: str | os.PathLike,
    suite: PromptSuite,
    out_dir: str | os.PathLike,
    stride: int | None = None,
    metrics: MetricSettings | None = None,
    world: ShapesWorldConfig | None = None,
    batch_size: int = 4,
    device: str = "cpu",
    max_failures: int = 12,
    overwrite: bool = False,
    progress: bool = True,
) -> EvalResult:
    """Round-trip the suite's ground truth through an autoencoder and evaluate the reconstructions like generated clips.

    ``folder`` is an autoencoder folder or a model folder (its ``vae/``). The world is ``world`` if given, else the one
    the folder's training record names (``training.json`` / ``model_index.json``), else the defaults; the clips have
    that world's size. ``batch_size`` clips go through the autoencoder per call. The report holds the usual probe
    accuracies and metrics plus ``reconstruction_psnr`` / ``reconstruction_ssim`` (mean and min over the clips) per
    split.
    """
    import torch
    from tqdm.auto import tqdm

    from vidiff.data.shapes import render

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise EvalError(f"batch_size must be a positive int, got {batch_size!r}")
    metrics = metrics or MetricSettings()
    folder = Path(folder)
    out = _check_out_dir(out_dir, overwrite)
    vae, _, training_world, info = load_autoencoder_folder(folder)
    world_cfg = world or training_world or ShapesWorldConfig()
    factor = info["spatial_factor"]
    if world_cfg.height % factor or world_cfg.width % factor:
        raise EvalError(f"the clips are {world_cfg.height}x{world_cfg.width}, not a multiple of the autoencoder's "
                        f"spatial factor {factor}; pass a --world with a matching height and width")
    suite = suite.with_world(world_cfg)
    stride = _resolve_stride(stride, world_cfg)
    _check_item_strides(suite)
    nets = _load_networks(metrics, world_cfg)

    inputs: list[np.ndarray] = []
    recon: list[np.ndarray] = []
    bar = tqdm(total=len(suite), desc="round trip", unit="video", disable=not progress, file=sys.stderr)
    try:
        for start in range(0, len(suite), batch_size):
            items = suite.items[start:start + batch_size]
            samples = [render(suite.ground_truth_spec(item, suite.stride_of(item, stride), FLOOR_STREAM))
                       for item in items]
            inputs += [s.uint8_frames().numpy() for s in samples]
            recon += list(round_trip(vae, torch.stack([s.video for s in samples]), device))
            bar.update(len(items))
    finally:
        bar.close()

    stacked_inputs, stacked_recon = np.stack(inputs), np.stack(recon)
    extra = {split: _reconstruction_metrics(stacked_inputs[suite.by_split(split)], stacked_recon[suite.by_split(split)],
                                            metrics.batch_size)
             for split in suite.splits}
    protocol = {
        "mode": "autoencoder",
        "source": "autoencoder round trip",
        "autoencoder": info,
        "world_config_source": "given" if world is not None else (
            "the folder's training record" if training_world is not None else "defaults"),
        "round_trip": {
            "input": f"ground-truth stream {FLOOR_STREAM} (the floor set's placements, independent of the stream "
                     f"{GROUND_TRUTH_STREAM} real set), float frames in [-1, 1] as the training data loader renders "
                     "them",
            "encode": "posterior mode (mean), each frame as an image",
            "decode": "clamp to [-1, 1], (x + 1) / 2 * 255 truncated to uint8 (as the pipelines)",
            "batch_size": batch_size,
            "device": str(device),
            "dtype": "fp32",
            "fvd_shapes_floor": "the same stream-1 clips unreconstructed: value / floor is the autoencoder's cost",
        },
        "reproduce": _reproduce(folder, suite, stride, batch_size, metrics, world is not None),
    }
    name = f"{folder.resolve().parent.name}/{folder.name}" if folder.name in ("model", "vae") else folder.name
    return evaluate_videos(
        suite, recon, out, stride, None, metrics, protocol, max_failures=max_failures, overwrite=True, networks=nets,
        title=f"autoencoder round trip: {name}", extra_metrics=extra,
    )
