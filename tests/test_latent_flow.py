"""VideoGen's latent temporal super-resolution primitives (design doc A4): the warp direction and flow units, the
blend mask against ghosts, the frequency fusion, keyframes kept exactly, lengths, and flow ≠ lerp on motion, = lerp
on static content."""

from __future__ import annotations

import pytest
import torch

from vidiff.data.shapes import ShapesVideoDataset, ShapesWorldConfig
from vidiff.data.shapes_flow import bilateral_flow
from vidiff.models.latent_flow import (
    LatentFlowNet,
    backward_warp,
    bilateral_merge,
    fuse_frequencies,
    interpolate_latents,
    lerp,
    lowpass,
    pixel_flow_to_latent,
    slerp,
)


def _clip(motion: str, seed: int = 1):
    world = ShapesWorldConfig(height=64, width=64, num_frames=8, second_object_prob=0.0, seed=seed)
    ds = ShapesVideoDataset(world, length=200)
    for i in range(200):
        item = ds[i]
        if item["labels"]["motion"] == motion and item["labels"]["speed"] == "fast":
            return item
    raise AssertionError(f"no fast clip moving {motion}")


def _blobs(mask: torch.Tensor) -> int:
    """Connected components of a boolean (H, W) mask (4-neighbourhood)."""
    seen = torch.zeros_like(mask)
    count = 0
    h, w = mask.shape
    for y in range(h):
        for x in range(w):
            if mask[y, x] and not seen[y, x]:
                count += 1
                stack = [(y, x)]
                seen[y, x] = True
                while stack:
                    cy, cx = stack.pop()
                    for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                        if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
    return count


def test_oracle_flow_puts_the_object_at_the_midpoint_without_a_ghost_where_lerp_makes_two():
    item = _clip("right")
    video, masks, flow, centroids = item["video"], item["masks"], item["flow"], item["centroids"]
    m = 3
    to0, to1, weight = bilateral_flow(masks, flow, m)
    k0, k1 = video[:, m - 1][None], video[:, m + 1][None]
    mid = bilateral_merge(k0, k1, to0[None], to1[None], weight[None])[0]
    background = video[:, 0, 0, 0]
    differs = lambda x: (x - background[:, None, None]).abs().amax(0) > 0.3  # noqa: E731
    assert _blobs(differs(mid)) == 1
    ys, xs = torch.nonzero(differs(mid), as_tuple=True)
    assert abs(float(xs.float().mean()) - float(centroids[m, 0])) < 1.0  # at the midpoint, not at 1.5 d
    assert abs(float(ys.float().mean()) - float(centroids[m, 1])) < 1.0
    area = float(differs(video[:, m]).sum())
    assert abs(float(differs(mid).sum()) - area) <= 0.3 * area  # one object of the right size
    assert float(differs(lerp(k0, k1)[0]).sum()) > 1.3 * area  # lerp: two half-transparent copies (a ghost)
    assert (mid - video[:, m]).abs().mean() < (lerp(k0, k1)[0] - video[:, m]).abs().mean() / 3


def test_pixel_flow_becomes_latent_pixels_and_the_warp_moves_content_by_the_flow():
    flow = torch.zeros(1, 2, 64, 64)
    flow[:, 0] = 8.0  # 8 pixels along x
    latent = pixel_flow_to_latent(flow, 4)
    assert latent.shape == (1, 2, 16, 16) and torch.allclose(latent[:, 0], torch.full((1, 16, 16), 2.0))
    z = torch.zeros(1, 1, 16, 16)
    z[:, :, 5, 9] = 1.0
    moved = backward_warp(z, latent)  # out(p) = z(p + 2): the spike appears 2 latent pixels to the left
    assert moved[0, 0, 5, 7] == 1.0 and moved.sum() == 1.0
    with pytest.raises(ValueError, match="not a multiple of the factor"):
        pixel_flow_to_latent(torch.zeros(1, 2, 30, 30), 4)


def test_frequency_fusion_keeps_the_warps_low_and_the_refiners_high_band():
    g = torch.Generator().manual_seed(0)
    z_w, z_r = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    fused = fuse_frequencies(z_w, z_r, 2)
    torch.testing.assert_close(lowpass(fused, 2), lowpass(z_w, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(fused - lowpass(fused, 2), z_r - lowpass(z_r, 2), atol=1e-5, rtol=0)
    assert torch.equal(fuse_frequencies(z_w, z_r, 1), z_w)  # N = 1: everything is "low": the warp


def test_interpolation_keeps_keyframes_exactly_and_chains_to_eight_times():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(1, 4, 16, 8, 8, generator=g)
    out = z
    for expected in (31, 61, 121):
        out = interpolate_latents(out, "slerp")
        assert out.shape[2] == expected
    assert torch.equal(interpolate_latents(z, "lerp")[:, :, 0::2], z)
    assert torch.equal(out[:, :, 0::8], z)  # the original keyframes, bit for bit, after three passes
    with pytest.raises(ValueError, match="frames >= 2"):
        interpolate_latents(z[:, :, :1])


def test_flow_interpolation_equals_lerp_on_static_content_and_the_untrained_net_is_lerp():
    static = torch.randn(1, 4, 8, 8).expand(2, -1, -1, -1).clone()
    zero = torch.zeros(2, 2, 8, 8)
    half = torch.full((2, 1, 8, 8), 0.5)
    torch.testing.assert_close(bilateral_merge(static, static, zero, zero, half), lerp(static, static))
    net = LatentFlowNet(4, width=16)
    a, b = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    f0, f1, mask = net(a, b)
    assert not f0.any() and not f1.any() and torch.allclose(mask, torch.full_like(mask, 0.5))
    torch.testing.assert_close(bilateral_merge(a, b, f0, f1, mask), lerp(a, b))
    s = slerp(a, a * 2)
    torch.testing.assert_close(s / s.norm(), a / a.norm(), atol=1e-5, rtol=0)  # parallel inputs keep the direction


# --------------------------------------------------------------------------------- training, pipeline, command line


def _flow_run(tmp_path, steps: int = 3):
    from test_training import TINY_VAE, tiny_config

    return tiny_config(tmp_path, task="latent_flow", model={"vae": {"config": dict(TINY_VAE)}, "flow_net": {"width": 16}},
                       data={"videos": {"type": "shapes", "height": 32, "width": 32, "num_frames": 5, "length": 32,
                                        "seed": 5}, "batch_size": 4, "seed": 7},
                       train={"max_steps": steps, "ema": False, "threads": 1},
                       sample={"every": 0, "at_end": False, "num_reconstructions": 2},
                       export={"at_end": True}, binding={"every": 0})


def test_flow_distillation_learns_the_oracle_and_exports_a_temporal_super_resolution_model(tmp_path, capsys):
    from test_training import run_config

    from vidiff.cli import main
    from vidiff.data.csv_datasets import collate_video_batch
    from vidiff.pipelines.base import PipelineError
    from vidiff.pipelines.temporal_sr import TemporalSuperResolutionPipeline
    from vidiff.training.config import config_from_dict
    from vidiff.training.data import build_datasets
    from vidiff.training.losses import sample_generators
    from vidiff.training.tasks import make_task

    raw = _flow_run(tmp_path / "run")
    task = make_task(config_from_dict(raw), torch.device("cpu"))
    data, _, _ = build_datasets(task.cfg.data, truth=True)
    batch = collate_video_batch([data[i] for i in range(4)])
    assert {"masks", "flow"} <= set(batch) and batch["flow"].abs().sum() > 0
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(task.module.parameters(), lr=3e-3)
    history = []
    for _ in range(60):  # the objective is learnable: the flow error on a fixed batch falls
        loss, metrics = task.loss(task.module, batch, sample_generators(0, 0, 0, list(range(4))))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(metrics["flow_l1"])
    assert history[-1] < 0.7 * history[0], history[::10]
    (sheet,) = task.preview(tmp_path, "preview")  # keyframe 0, lerp, flow, truth, keyframe 1
    assert sheet.is_file()

    result = run_config(raw)
    assert result.finished
    pipe = TemporalSuperResolutionPipeline.from_pretrained(result.model_dir)

    video = batch["video"][:1, :, :3]
    out = pipe(video, factor=4, output_type="latent")
    assert out.latents.shape[2] == 9
    from vidiff.models.autoencoder import encode_video

    keys = encode_video(pipe.vae, video, sample=False)
    assert torch.equal(out.latents[:, :, 0::4], keys)  # keyframes kept bit for bit
    lerped = pipe(video, factor=2, guidance="lerp", output_type="latent").latents
    torch.testing.assert_close(lerped[:, :, 1], (keys[:, :, 0] + keys[:, :, 1]) / 2)
    for bad, message in ((dict(factor=3), "power of two"), (dict(guidance="cubic"), "guidance must be one of"),
                         (dict(latents=keys), "one of them")):
        with pytest.raises(PipelineError, match=message):
            pipe(video, **bad)

    from vidiff.utils.video import batch_to_uint8_frames, write_mp4

    clip = tmp_path / "clip.mp4"
    write_mp4(batch_to_uint8_frames(batch["video"][:1])[0], clip, fps=4)
    target = tmp_path / "x4.mp4"
    assert main(["interpolate", str(clip), "--model", str(result.model_dir), "--factor", "4", "-o", str(target)]) == 0
    assert "5 frames at 4 fps -> 17 frames at 16 fps" in capsys.readouterr().out
    assert main(["interpolate", str(clip), "--model", str(result.model_dir), "--factor", "3", "-o", str(target)]) == 2
    assert "power of two" in capsys.readouterr().err
    assert main(["interpolate", str(clip), "--model", "src/vidiff/assets/models/shapes_t2v", "-o", str(target)]) == 2
    assert "not a temporal super-resolution model" in capsys.readouterr().err


def test_refiner_conditions_on_keyframes_and_warps_and_the_pipeline_keeps_keyframes_and_the_warps_low_band(tmp_path):
    from test_training import TINY_TEXT, TINY_UNET, run_config, tiny_config

    from vidiff.models.autoencoder import encode_video
    from vidiff.pipelines.temporal_sr import TemporalRefinerPipeline, TemporalSuperResolutionPipeline
    from vidiff.training.config import config_from_dict
    from vidiff.training.tasks import make_task

    raw = tiny_config(tmp_path / "refiner", task="temporal_refiner",
                      model={"unet": {"config": {**TINY_UNET, "in_channels": 9, "temporal_length": 8}},
                             "vae": {"config": {**_flow_run(tmp_path)["model"]["vae"]["config"]}},
                             "text_encoder": {"config": dict(TINY_TEXT), "trainable": False},
                             "defaults": {"num_frames": 5, "height": 32, "width": 32, "fps": 16}},
                      data={"videos": {"type": "shapes", "height": 32, "width": 32, "num_frames": 5, "strides": [1],
                                       "length": 16, "seed": 5}, "batch_size": 2, "seed": 7},
                      train={"max_steps": 2, "ema": False, "cond_dropout": {"text": 0.0}},
                      export={"at_end": True}, binding={"every": 0})
    task = make_task(config_from_dict(raw), torch.device("cpu"))
    from vidiff.data.csv_datasets import collate_video_batch
    from vidiff.training.data import build_datasets

    data, _, _ = build_datasets(task.cfg.data, truth=True)
    batch = collate_video_batch([data[i] for i in range(2)])
    z = encode_video(task.vae, batch["video"], sample=False)
    cond = task.refiner_condition(z, batch["masks"], batch["flow"])
    assert cond.shape == (2, 5, 5, 8, 8)
    assert torch.equal(cond[:, :4, 0::2], z[:, :, 0::2])  # keyframes as they are
    assert torch.equal(cond[:, 4, 0::2], torch.ones_like(cond[:, 4, 0::2])) and not cond[:, 4, 1::2].any()
    assert not torch.equal(cond[:, :4, 1::2], z[:, :, 1::2])  # inserted frames: warps, not the truth
    refiner_dir = run_config(raw).model_dir
    refiner = TemporalRefinerPipeline.from_pretrained(refiner_dir)
    assert refiner.window == 5

    flow_dir = run_config(_flow_run(tmp_path / "flow")).model_dir
    pipe = TemporalSuperResolutionPipeline.from_pretrained(flow_dir, refiner=refiner_dir)
    video = batch["video"][:1, :, :4]
    keys = encode_video(pipe.vae, video, sample=False)
    plain = pipe(video, factor=2, refine=False, output_type="latent").latents
    refined = pipe(video, factor=2, fusion=2, refine_steps=2, output_type="latent").latents
    assert refined.shape[2] == 7 and torch.equal(refined[:, :, 0::2], keys)  # keyframes kept exactly
    from vidiff.models.latent_flow import lowpass

    torch.testing.assert_close(lowpass(refined[0, :, 1::2].transpose(0, 1), 2),
                               lowpass(plain[0, :, 1::2].transpose(0, 1), 2), atol=1e-5, rtol=0)  # the warp's low band
    assert (refined - plain).abs().max() > 1e-4  # and the refiner's high band
    assert torch.equal(pipe(video, factor=2, fusion=1, refine_steps=2, output_type="latent").latents, plain)


def test_interpolation_eval_ranks_the_oracle_warp_above_lerp_and_nearest(tmp_path):
    """V4's instrument on the embedded autoencoder: the oracle warp puts one object in the right place, lerp ghosts
    (two half objects), nearest lags; an untrained flow net is a lerp."""
    from vidiff.cli_common import EMBEDDED_MODELS
    from vidiff.eval.interpolation_eval import compare_interpolations, dense_clips
    from vidiff.models.autoencoder import LDMAutoencoderKL
    from vidiff.pipelines.temporal_sr import TemporalSuperResolutionPipeline

    vae = LDMAutoencoderKL.from_pretrained(EMBEDDED_MODELS / "shapes_t2v" / "vae").eval()
    pipe = TemporalSuperResolutionPipeline(vae, LatentFlowNet(4, width=16).eval())
    truth = dense_clips(4, seed=3, frames=5)
    r = compare_interpolations(pipe, truth)
    assert set(r) == {"autoencoder", "nearest", "lerp", "slerp", "flow", "oracle"}
    assert r["oracle"]["ghost_rate"] < r["lerp"]["ghost_rate"]
    assert r["oracle"]["centroid_error"] < r["nearest"]["centroid_error"]
    assert r["oracle"]["psnr"] > r["lerp"]["psnr"]
    assert abs(r["flow"]["psnr"] - r["lerp"]["psnr"]) < 1e-3  # the untrained net blends as lerp does


def test_the_shipped_temporal_sr_model_beats_interpolation_and_is_the_interpolate_default(tmp_path, capsys):
    from vidiff.cli import main
    from vidiff.cli_common import EMBEDDED_MODELS
    from vidiff.eval.interpolation_eval import compare_interpolations, dense_clips
    from vidiff.pipelines.temporal_sr import TemporalSuperResolutionPipeline
    from vidiff.utils.video import batch_to_uint8_frames, write_mp4

    folder = EMBEDDED_MODELS / "shapes_temporal_sr"
    assert "configs/videogen_shapes_flow.yaml" in (folder / "MODEL_CARD.md").read_text()
    pipe = TemporalSuperResolutionPipeline.from_pretrained(folder)
    truth = dense_clips(6, seed=77, frames=5)
    r = compare_interpolations(pipe, truth, variants=("lerp", "flow"))
    assert r["flow"]["psnr"] > r["lerp"]["psnr"] + 2.0  # the card: +4.8 dB over lerp on 16 clips
    assert r["flow"]["centroid_error"] < r["lerp"]["centroid_error"]
    clip = tmp_path / "clip.mp4"
    write_mp4(batch_to_uint8_frames(truth["video"][:1, :, 0::2])[0], clip, fps=4)
    assert main(["interpolate", str(clip), "--factor", "2", "-o", str(tmp_path / "x2.mp4")]) == 0
    assert "3 frames at 4 fps -> 5 frames at 8 fps" in capsys.readouterr().out
