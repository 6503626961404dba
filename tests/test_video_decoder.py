"""VideoGen's video decoder (design doc A4): equal to the image decoder at init, temporal after training (a frame's
output depends on its neighbours), gradients reach the temporal layers, decode_video decodes whole temporal chunks,
and the folder round trip keeps the class."""

from __future__ import annotations

import pytest
import torch

from vidiff.models.autoencoder import LDMAutoencoderKL, decode_video
from vidiff.models.video_decoder import TemporalDecoderAutoencoderKL

TINY_VAE = dict(block_out_channels=[32, 32, 32], down_block_types=["DownEncoderBlock2D"] * 3,
                up_block_types=["UpDecoderBlock2D"] * 3, layers_per_block=1, latent_channels=4, norm_num_groups=32,
                sample_size=32, scaling_factor=0.5)


def image_vae(seed: int = 0) -> LDMAutoencoderKL:
    torch.manual_seed(seed)
    return LDMAutoencoderKL(**TINY_VAE).eval()


def randomise_temporal(vae: TemporalDecoderAutoencoderKL, std: float = 0.05, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in vae.temporal_modules():
            for p in m.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * std)


def latents(b: int = 2, t: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 4, t, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_from_image_autoencoder_equals_the_image_decoder_at_init():
    image = image_vae()
    video = TemporalDecoderAutoencoderKL.from_image_autoencoder(image, decode_chunk_frames=4, temporal_length=8).eval()
    z = latents()
    with torch.no_grad():
        per_frame = decode_video(image, z, chunk_size=None)
        temporal = decode_video(video, z)
    assert temporal.shape == (2, 3, 4, 32, 32)
    torch.testing.assert_close(temporal, per_frame, atol=1e-5, rtol=0)
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():  # the encoder and latent space are the image autoencoder's
        assert torch.equal(video.encode(x).latent_dist.mean, image.encode(x).latent_dist.mean)


def test_trained_temporal_layers_mix_neighbouring_frames_and_one_frame_is_the_image_decoder():
    image = image_vae()
    video = TemporalDecoderAutoencoderKL.from_image_autoencoder(image, decode_chunk_frames=6, temporal_length=8).eval()
    randomise_temporal(video)
    z = latents(b=1, t=6)
    bumped = z.clone()
    bumped[:, :, 3] += 1.0
    with torch.no_grad():
        a, b = decode_video(video, z), decode_video(video, bumped)
        per_frame_a, per_frame_b = decode_video(image, z), decode_video(image, bumped)
        one = video.decode(z[:, :, 0] / 0.5, num_frames=1).sample
    change = (a - b).abs().amax(dim=(0, 1, 3, 4))
    assert change[2] > 1e-3 and change[4] > 1e-3  # frames 2 and 4 see frame 3
    assert (per_frame_a - per_frame_b).abs().amax(dim=(0, 1, 3, 4))[[0, 1, 2, 4, 5]].max() == 0  # per-frame: none
    torch.testing.assert_close(one, image.decode(z[:, :, 0] / 0.5).sample, atol=1e-5, rtol=0)


def test_video_loss_trains_the_temporal_layers():
    video = TemporalDecoderAutoencoderKL.from_image_autoencoder(image_vae(), temporal_length=8).train()
    z = latents(b=1, t=4)
    out = video.decode(z.permute(0, 2, 1, 3, 4).flatten(0, 1), num_frames=4).sample
    (out - torch.linspace(-1, 1, out.numel()).view_as(out)).abs().mean().backward()
    from vidiff.models.univid import TemporalConv1d

    convs = [m for m in video.temporal_modules() if isinstance(m, TemporalConv1d)]
    assert len(convs) == 1 + 2 + 3 * 2 + 2 + 1  # conv_in, mid resnets, up resnets, upsamplers, conv_out
    assert all(m.conv.weight.grad is not None and m.conv.weight.grad.abs().sum() > 0 for m in convs)
    attention = video.temporal_mid_attention.proj_out.weight.grad  # zero at init: its output projection moves first
    assert attention is not None and attention.abs().sum() > 0


def test_decode_video_splits_long_clips_into_temporal_chunks():
    video = TemporalDecoderAutoencoderKL.from_image_autoencoder(image_vae(), decode_chunk_frames=4, temporal_length=8)
    randomise_temporal(video.eval())
    z = latents(b=2, t=6)
    with torch.no_grad():
        whole = decode_video(video, z, chunk_size=1)  # chunk_size does not split a temporal chunk
        first = video.decode(z[1, :, :4].permute(1, 0, 2, 3) / 0.5, num_frames=4).sample
        rest = video.decode(z[1, :, 4:].permute(1, 0, 2, 3) / 0.5, num_frames=2).sample
    torch.testing.assert_close(whole[1].permute(1, 0, 2, 3), torch.cat([first, rest]), atol=1e-6, rtol=0)


def test_bad_calls_are_clear_errors_and_the_folder_round_trip_keeps_the_class(tmp_path):
    from vidiff.model_folder import load_component, write_index

    video = TemporalDecoderAutoencoderKL.from_image_autoencoder(image_vae(), decode_chunk_frames=4, temporal_length=8)
    with pytest.raises(ValueError, match="cover 8 frames, got 9"):
        video.decode(torch.randn(9, 4, 8, 8), num_frames=9)
    with pytest.raises(ValueError, match="cannot be split into videos of 4 frames"):
        video.decode(torch.randn(6, 4, 8, 8), num_frames=4)
    with pytest.raises(TypeError, match="unknown temporal option"):
        TemporalDecoderAutoencoderKL.from_image_autoencoder(image_vae(), temporal_kernel=3)
    with pytest.raises(ValueError, match="decode_chunk_frames must be in"):
        TemporalDecoderAutoencoderKL(**TINY_VAE, decode_chunk_frames=32, temporal_length=16)
    randomise_temporal(video)
    video.save_pretrained(tmp_path / "vae")
    write_index(tmp_path, {"_class_name": "TextToVideoPipeline"}, {"vae": video})
    loaded = load_component(tmp_path, "vae")
    assert type(loaded) is TemporalDecoderAutoencoderKL and loaded.decode_window == 4
    z = latents(b=1, t=4)
    with torch.no_grad():
        torch.testing.assert_close(decode_video(loaded, z), decode_video(video.eval(), z), atol=0, rtol=0)


# ------------------------------------------------------------------------------------------------- degradations, task


def test_degradations_touch_the_input_only_and_are_seeded():
    from vidiff.data.degrade import DegradeConfig, degrade_clip, draw_degradation

    clean = torch.rand(3, 4, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    keep = clean.clone()
    cfg = DegradeConfig(blur_prob=1.0, noise_prob=1.0, jpeg_prob=1.0)
    a = degrade_clip(clean, cfg, torch.Generator().manual_seed(5))
    b = degrade_clip(clean, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(clean, keep) and torch.equal(a, b) and a.shape == clean.shape
    psnr = 10 * torch.log10(4 / (a - clean).square().mean())
    assert psnr < 35 and a.min() >= -1 and a.max() <= 1
    noise_only = DegradeConfig(blur_prob=0.0, noise_prob=1.0, jpeg_prob=0.0, noise_std=[0.05, 0.05])
    frames = degrade_clip(torch.zeros(3, 4, 16, 16), noise_only, torch.Generator().manual_seed(1))
    assert not torch.equal(frames[:, 0], frames[:, 1])  # noise is drawn per frame
    assert abs(float(frames.std()) - 0.05) < 0.01
    off = DegradeConfig(blur_prob=0.0, noise_prob=0.0, jpeg_prob=0.0)
    assert draw_degradation(off, torch.Generator().manual_seed(0)).noise_std is None
    with pytest.raises(ValueError, match="blur_prob must be in"):
        DegradeConfig(blur_prob=1.5)
    with pytest.raises(ValueError, match="jpeg_quality must be at most 100"):
        DegradeConfig(jpeg_quality=[50, 120])


def _decoder_run(tmp_path, **train):
    from test_training import tiny_config

    source = tmp_path / "image_vae"
    if not source.is_dir():
        image_vae().save_pretrained(source)
    return tiny_config(tmp_path, task="video_decoder",
                       model={"vae": {"pretrained": str(source)},
                              "video_decoder": {"temporal_length": 4, "temporal_attention_head_dim": 32}},
                       train={"max_steps": 3, "ema": False, "trainable": ["@video_decoder"], "recon_loss": "l1",
                              **train},
                       sample={"every": 0, "at_end": False, "num_reconstructions": 1},
                       export={"at_end": True})


def test_video_decoder_training_exports_a_vae_that_keeps_the_encoder(tmp_path):
    from test_training import run_config

    from vidiff.model_folder import write_index
    from vidiff.training.config import ConfigError, config_from_dict
    from vidiff.training.tasks import make_task

    raw = _decoder_run(tmp_path / "run")
    task = make_task(config_from_dict(raw), torch.device("cpu"))
    start = {k: v.clone() for k, v in task.autoencoder.state_dict().items()}
    assert all(torch.equal(start[k], v) for k, v in image_vae().state_dict().items())
    clips = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    loss, metrics = task.loss(task.module, {"video": clips.clone()}, gens)
    assert torch.isfinite(loss) and set(metrics) == {"loss", "l1"}
    (sheet,) = task.preview(tmp_path, "preview")  # clean, degraded, image decoder, video decoder
    assert sheet.is_file()
    result = run_config(raw)
    assert result.finished and (result.model_dir / "config.json").is_file()
    (tmp_path / "folder").mkdir()
    write_index(tmp_path / "folder", {"_class_name": "TextToVideoPipeline"}, {"vae": task.autoencoder})
    (tmp_path / "folder" / "vae").symlink_to(result.model_dir)
    from vidiff.model_folder import load_component

    trained = load_component(tmp_path / "folder", "vae")
    assert type(trained).__name__ == "TemporalDecoderAutoencoderKL"
    state = trained.state_dict()
    for k, v in start.items():
        if k.startswith(("encoder.", "quant_conv.")):
            assert torch.equal(state[k], v), k  # the latent space is the image autoencoder's
    assert any(not torch.equal(state[k], v) for k, v in start.items() if k.startswith("temporal_"))
    assert trained.config.scaling_factor == TINY_VAE["scaling_factor"]

    with pytest.raises(ConfigError, match="keeps the image encoder frozen"):
        make_task(config_from_dict(_decoder_run(tmp_path / "bad", trainable=["*"])), torch.device("cpu"))
    bad = _decoder_run(tmp_path / "bad2")
    bad["model"]["video_decoder"] = {"temporal_kernel": 3}
    with pytest.raises(ConfigError, match="model.video_decoder: unknown temporal option"):
        make_task(config_from_dict(bad), torch.device("cpu"))


def test_a_video_decoder_replaces_a_model_folders_autoencoder_in_the_pipelines_and_the_cli(tmp_path, capsys):
    """The embedded T2V default decodes with a video decoder built on its own autoencoder (identity at init: the same
    video); an autoencoder of another latent space is refused in one line."""
    from vidiff.cli import main
    from vidiff.cli_common import EMBEDDED_MODELS
    from vidiff.pipelines.base import PipelineError
    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    model = EMBEDDED_MODELS / "shapes_t2v"
    image = LDMAutoencoderKL.from_pretrained(model / "vae")
    TemporalDecoderAutoencoderKL.from_image_autoencoder(image).save_pretrained(tmp_path / "video_vae")
    kw = dict(num_inference_steps=2, num_frames=4, seed=0, progress=False, output_type="pt")
    plain = TextToVideoPipeline.from_pretrained(model)("a red circle moving left", **kw).frames
    swapped = TextToVideoPipeline.from_pretrained(model, vae=tmp_path / "video_vae")
    assert type(swapped.vae).__name__ == "TemporalDecoderAutoencoderKL"
    # the pipeline decodes one frame per call by default, the video decoder a clip per call: the convolutions' batch
    # size changes their rounding (<1e-4 here, an eightieth of a grey level)
    torch.testing.assert_close(swapped("a red circle moving left", **kw).frames, plain, atol=5e-4, rtol=0)

    image_vae().save_pretrained(tmp_path / "other")  # another latent space (scaling factor 0.5)
    with pytest.raises(PipelineError, match="does not share this model's latent space"):
        TextToVideoPipeline.from_pretrained(model, vae=tmp_path / "other")
    out = tmp_path / "v.mp4"
    assert main(["generate", "a red circle moving left", "--vae", str(tmp_path / "video_vae"), "--steps", "2",
                 "--frames", "4", "-o", str(out)]) == 0 and out.is_file()
    capsys.readouterr()
    assert main(["generate", "a red circle", "--vae", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert "autoencoder folder not found" in capsys.readouterr().err


def test_decoder_comparison_scores_both_decoders_on_the_same_latents(tmp_path):
    """V5's instrument: at init the video decoder scores as the image decoder; degraded inputs score worse than clean
    ones; noise added to the latents shows up as temporal error; the command writes its table."""
    from vidiff.cli_common import EMBEDDED_MODELS
    from vidiff.eval.video_decoder_eval import compare_decoders, main, shapes_clips

    image = LDMAutoencoderKL.from_pretrained(EMBEDDED_MODELS / "shapes_t2v" / "vae")
    video = TemporalDecoderAutoencoderKL.from_image_autoencoder(image)
    clips, captions, world = shapes_clips(2, seed=3, num_frames=8)
    r = compare_decoders(image, video, clips, captions, world)
    for condition in ("clean", "degraded", "noisy_latents"):
        for key in ("psnr", "edge_ratio", "temporal_error"):
            assert abs(r[condition]["image"][key] - r[condition]["video"][key]) < 1e-2, (condition, key)
    assert r["clean"]["image"]["psnr"] > r["degraded"]["image"]["psnr"] > 15
    assert r["noisy_latents"]["image"]["temporal_error"] > r["clean"]["image"]["temporal_error"]
    video.save_pretrained(tmp_path / "video_vae")
    assert main(["--video-vae", str(tmp_path / "video_vae"), "--image-vae", str(EMBEDDED_MODELS / "shapes_t2v"),
                 "--clips", "2", "--threads", "1", "-o", str(tmp_path / "out")]) == 0
    assert "| noisy_latents | video |" in (tmp_path / "out" / "video_decoder_eval.md").read_text()
