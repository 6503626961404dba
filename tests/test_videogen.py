"""VideoGen's reference-guided base stage (design doc A4): the reference reaches the U-Net on frame 0 only (exact zeros
on the others) as the posterior mean of the reference image, in training and at inference; the reference controls the
output; the text-to-image reference model draws it when none is given; the CLI refuses what does not fit."""

from __future__ import annotations

import copy

import pytest
import torch

from vidiff.models.conditions import first_frame_concat


def test_first_frame_concat_puts_the_reference_on_frame_zero_only():
    ref = torch.randn(2, 4, 8, 8)
    out = first_frame_concat(ref, 5)
    assert out.shape == (2, 4, 5, 8, 8) and torch.equal(out[:, :, 0], ref)
    assert not out[:, :, 1:].any()
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        first_frame_concat(torch.randn(2, 4, 3, 8, 8), 3)


def _spy_concat(pipe) -> list[torch.Tensor]:
    """Record the ``concat`` condition of every U-Net call of ``pipe``."""
    seen = []
    real = pipe.unet.forward

    def spy(x, t, *args, **kwargs):
        seen.append(kwargs["concat"].clone())
        return real(x, t, *args, **kwargs)

    pipe.unet.forward = spy
    return seen


def _ref_config(tmp_path, **sections):
    from test_training import TINY_UNET, TINY_VAE, tiny_config

    from vidiff.training.config import config_from_dict

    unet = {**TINY_UNET, "in_channels": 8}
    model = {"unet": {"config": unet}, "vae": {"config": dict(TINY_VAE)},
             "text_encoder": {"config": {"context_length": 16, "width": 32, "layers": 1, "heads": 2,
                                         "layer": "last"}, "trainable": True},
             "reference_model": "shapes_t2i",
             "defaults": {"num_frames": 4, "height": 32, "width": 32, "fps": 8}}
    raw = tiny_config(tmp_path, task="ref_t2v", model=model,
                      train={"max_steps": 2, "ema": False, "cond_dropout": {"text": 0.0, "image": 0.5}},
                      export={"at_end": True}, **sections)
    return raw, config_from_dict(copy.deepcopy(raw))


def test_training_feeds_the_clips_first_frame_latent_on_frame_zero_and_drops_it_to_zeros(tmp_path):
    from test_univid import _batch

    from vidiff.training.losses import sample_generators
    from vidiff.training.tasks import make_task

    _, cfg = _ref_config(tmp_path)
    task = make_task(cfg, torch.device("cpu"))
    seen = {}
    real = task.module.forward

    def spy(x, t, **kwargs):
        seen.update(kwargs, x=x)
        return real(x, t, **kwargs)

    task.module.forward = spy
    gens = sample_generators(0, 0, 0, list(range(8)))
    loss, _ = task.loss(task.module, _batch(8), gens)
    assert torch.isfinite(loss)
    concat = seen["c_concat"]
    assert concat.shape[1] == 4 and not concat[:, :, 1:].any()  # reference on frame 0 only
    kept = concat[:, :, 0].flatten(1).abs().sum(1) > 0
    assert 0 < int(kept.sum()) < 8  # cond_dropout.image 0.5: some rows keep it, some are zeros
    assert "clip_images" not in seen and "clip_tokens" not in seen  # no CLIP path: the latent only


def test_reference_model_trains_exports_and_generates_from_a_given_or_drawn_reference(tmp_path, capsys):
    from PIL import Image
    from test_training import run_config

    from vidiff.cli import main
    from vidiff.pipelines.base import PipelineError
    from vidiff.pipelines.image_io import resize_short_side_center_crop
    from vidiff.pipelines.reference import ReferenceVideoPipeline

    raw, _ = _ref_config(tmp_path / "run")
    result = run_config(raw)
    pipe = ReferenceVideoPipeline.from_pretrained(result.model_dir)
    assert pipe.reference_pipeline is not None  # the embedded shapes_t2i, from the index's reference_model

    with torch.no_grad():  # make the reference channels matter (a 2-step model barely uses them)
        conv = pipe.unet.input_blocks[0][0]
        conv.weight[:, 4:].normal_(0, 0.5, generator=torch.Generator().manual_seed(0))
    seen = _spy_concat(pipe)
    red = Image.new("RGB", (32, 32), (220, 30, 30))
    blue = Image.new("RGB", (32, 32), (30, 30, 220))
    kw = dict(num_inference_steps=2, seed=0, progress=False, output_type="pt")
    a = pipe("a red circle moving left", red, **kw).frames
    expected = pipe.reference_latents(resize_short_side_center_crop(red, 32, 32))
    assert all(not c[:, :, 1:].any() for c in seen) and len(seen) >= 2
    for branch in seen[0].split(1):  # the guided and the unguided branch both keep the reference
        torch.testing.assert_close(branch[:, :, 0], expected, atol=1e-5, rtol=0)  # E(ref), posterior mean
    b = pipe("a red circle moving left", blue, **kw).frames
    assert (a - b).abs().max() > 1e-3  # the reference controls the output
    drawn = pipe("a red circle moving left", return_reference=True, **kw)
    assert drawn.reference.shape == (1, 3, 32, 32) and drawn.frames.shape == (1, 3, 4, 32, 32)

    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    with pytest.raises(PipelineError, match="takes 8 input channels: give a 4-channel concat"):
        TextToVideoPipeline.__call__(pipe, "a red circle", **kw)
    pipe.reference_pipeline = None
    with pytest.raises(PipelineError, match="no reference image given"):
        pipe("a red circle", **kw)
    with pytest.raises(PipelineError, match="2 reference images for 1 prompts"):
        pipe("a red circle", [red, blue], **kw)

    img = tmp_path / "ref.png"
    red.save(img)
    out = tmp_path / "v.mp4"
    assert main(["generate", "a red circle moving left", "--model", str(result.model_dir), "--reference", str(img),
                 "--steps", "2", "-o", str(out)]) == 0 and out.is_file()
    drawn_out = tmp_path / "drawn.mp4"
    assert main(["generate", "a red circle moving left", "--model", str(result.model_dir), "--steps", "2",
                 "-o", str(drawn_out)]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "drawn_reference.png").is_file() and "reference drawn by the reference model" in printed
    assert main(["generate", "a red circle", "--reference", str(img), "-o", str(out)]) == 2
    assert "--reference only works with a VideoGen reference-guided model" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--model", str(result.model_dir), "--image", str(img),
                 "-o", str(out)]) == 2
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------ the cascade


def _stage(tmp_path, size: int, lowres: int | None):
    from test_training import run_config

    raw, _ = _ref_config(tmp_path)
    if lowres is not None:
        raw["model"]["unet"]["config"]["in_channels"] = 12
        raw["model"]["lowres_factor"] = lowres
    raw["model"]["defaults"] = {**raw["model"]["defaults"], "height": size, "width": size}
    raw["data"]["videos"] = {**raw["data"]["videos"], "height": size, "width": size}
    raw["model"].pop("reference_model")
    raw["binding"] = {"every": 0}
    return run_config(raw).model_dir


def test_super_resolution_stage_follows_its_low_resolution_input_and_the_cascade_chains(tmp_path, capsys):
    from PIL import Image

    from vidiff.cli import main
    from vidiff.models.conditions import upsample_latents
    from vidiff.pipelines.base import PipelineError
    from vidiff.pipelines.cascade import CascadedVideoPipeline, write_cascade_folder
    from vidiff.pipelines.reference import ReferenceVideoPipeline

    base, sr = _stage(tmp_path / "base", 32, None), _stage(tmp_path / "sr", 64, 2)
    stage = ReferenceVideoPipeline.from_pretrained(sr)
    assert stage.lowres_factor == 2
    with torch.no_grad():  # a 2-step model barely reads its condition: make the low-resolution channels matter
        stage.unet.input_blocks[0][0].weight[:, 8:].normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    seen = _spy_concat(stage)
    red = Image.new("RGB", (64, 64), (220, 30, 30))
    kw = dict(num_inference_steps=2, seed=0, progress=False, output_type="latent")
    low_a = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    low_b = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    a = stage("a red circle", red, lowres_latents=low_a, **kw).latents
    torch.testing.assert_close(seen[0][:1, 4:], upsample_latents(low_a, 2), atol=0, rtol=0)  # channels 4..7
    assert not seen[0][:, :4, 1:].any()  # the reference channels stay zero after frame 0
    b = stage("a red circle", red, lowres_latents=low_b, **kw).latents
    assert (a - b).abs().max() > 1e-3  # the stage follows its condition
    with pytest.raises(PipelineError, match="needs lowres_latents"):
        stage("a red circle", red, **kw)
    with pytest.raises(PipelineError, match="lowres_latents must have shape"):
        stage("a red circle", red, lowres_latents=torch.randn(1, 4, 4, 4, 4), **kw)

    folder = write_cascade_folder(tmp_path / "cascade", [base, sr], reference_model="shapes_t2i")
    cascade = CascadedVideoPipeline.from_pretrained(folder)
    out = cascade("a red circle moving left", num_inference_steps=2, seed=0, progress=False, output_type="pt",
                  return_intermediates=True)
    assert [tuple(z.shape) for z in out.intermediates] == [(1, 4, 4, 8, 8), (1, 4, 4, 16, 16)]
    assert out.frames.shape == (1, 3, 4, 64, 64) and out.reference.shape == (1, 3, 64, 64)
    only_base = cascade("a red circle", red, stages=1, num_inference_steps=2, seed=0, progress=False,
                        output_type="pt")
    assert only_base.frames.shape == (1, 3, 4, 32, 32)
    with pytest.raises(PipelineError, match="stage 1 is not a super-resolution stage"):
        write_cascade_folder(tmp_path / "bad", [base, base])
    assert not (tmp_path / "bad").exists()  # nothing half-written
    wide = ReferenceVideoPipeline.from_pretrained(sr)
    wide.defaults["height"] = 96
    with pytest.raises(PipelineError, match="sizes do not chain"):
        CascadedVideoPipeline([ReferenceVideoPipeline.from_pretrained(base), wide])

    from test_latent_flow import _flow_run
    from test_training import run_config

    tsr = run_config(_flow_run(tmp_path / "flow")).model_dir
    with_tsr = write_cascade_folder(tmp_path / "cascade_tsr", [base, sr], reference_model="shapes_t2i",
                                    temporal_sr=tsr)
    fast = CascadedVideoPipeline.from_pretrained(with_tsr)("a red circle", red, num_inference_steps=2, seed=0,
                                                           progress=False, output_type="latent", temporal_factor=2)
    assert fast.latents.shape == (1, 4, 7, 16, 16)  # 4 frames -> 7
    with pytest.raises(PipelineError, match="needs a cascade with a temporal super-resolution model"):
        cascade("a red circle", red, temporal_factor=2)

    from vidiff.models.video_decoder import TemporalDecoderAutoencoderKL

    TemporalDecoderAutoencoderKL.from_image_autoencoder(ReferenceVideoPipeline.from_pretrained(sr).vae) \
        .save_pretrained(tmp_path / "video_vae")
    decoded = write_cascade_folder(tmp_path / "cascade_vd", [base, sr], "shapes_t2i", video_decoder=tmp_path / "video_vae")
    with_decoder = CascadedVideoPipeline.from_pretrained(decoded)
    assert type(with_decoder.video_decoder).__name__ == "TemporalDecoderAutoencoderKL"
    kw2 = dict(num_inference_steps=2, seed=0, progress=False, output_type="pt")
    by_video = with_decoder("a red circle", red, **kw2).frames
    by_image = with_decoder("a red circle", red, decoder="image", **kw2).frames
    torch.testing.assert_close(by_video, by_image, atol=5e-4, rtol=0)  # identity at init: the same video
    assert type(with_decoder.stages[-1].vae).__name__ == "LDMAutoencoderKL"  # the stage keeps its own autoencoder
    with pytest.raises(PipelineError, match="needs a cascade with a video decoder"):
        cascade("a red circle", red, decoder="video", **kw2)

    video = tmp_path / "cascade.mp4"
    assert main(["generate", "a red circle moving left", "--model", str(with_tsr), "--steps", "2",
                 "--temporal-factor", "2", "-o", str(tmp_path / "fast.mp4")]) == 0
    assert main(["generate", "a red circle moving left", "--model", str(decoded), "--steps", "2", "--decoder",
                 "image", "-o", str(tmp_path / "image_decoded.mp4")]) == 0
    assert main(["generate", "a red circle moving left", "--model", str(folder), "--steps", "2", "-o",
                 str(video)]) == 0
    assert video.is_file() and (tmp_path / "cascade_reference.png").is_file()
    capsys.readouterr()
    assert main(["generate", "a red circle", "--model", str(folder), "--stages", "3", "-o", str(video)]) == 2
    assert "--stages must be in [1, 2]" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--model", str(base), "--stages", "1", "-o", str(video)]) == 2
    assert "--stages only works with a VideoGen cascade" in capsys.readouterr().err
