"""Image-to-video: image loading, the official resize rules, the pipeline's conditioning and `vidiff animate` end to end.

The model is the tiny DynamiCrafter-512-layout checkpoint of ``tiny_i2v_checkpoint.py`` converted with the public
converter; a VideoCrafter-i2v pipeline is assembled in memory from the fixture U-Net. Frames 16×24 pixels (8×12
latents), 4 frames, 2 DDIM steps.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lvdm_fixtures import fixture_folders, load_config, load_tensors
from PIL import Image
from tiny_i2v_checkpoint import FAMILY, TEXT_HEADS, UNET_HEAD_CHANNELS, VIDEO_LENGTH, save_tiny_i2v_checkpoint

from vidiff.cli import main as cli_main
from vidiff.pipelines.base import PipelineError
from vidiff.pipelines.image_io import (
    center_crop,
    load_image,
    open_image,
    resize_exact,
    resize_short_side_center_crop,
)
from vidiff.pipelines.image_to_video import ImageToVideoPipeline

H, W, T, STEPS = 16, 24, VIDEO_LENGTH, 2
REPO = Path(__file__).resolve().parents[1]


def _has_fixtures() -> bool:
    return bool(fixture_folders("dc_unet")) and bool(fixture_folders("vae"))


needs_fixtures = pytest.mark.skipif(not _has_fixtures(), reason="dc_unet / vae fixtures not found")


def _pattern(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth colour pattern plus noise, uint8 (h, w, 3)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.RandomState(seed)
    img = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), (xx + yy) % 7 * 36], axis=-1)
    return np.clip(img + rng.randint(-20, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    if not _has_fixtures():
        pytest.skip("dc_unet / vae fixtures not found")
    from vidiff.conversion.lvdm import HeadCounts, convert_checkpoint

    root = tmp_path_factory.mktemp("i2v")
    ckpt = save_tiny_i2v_checkpoint(root / "tiny_dc512.ckpt")
    out = root / "model"
    convert_checkpoint(
        ckpt, out, family=FAMILY, heads=HeadCounts(unet_head_channels=UNET_HEAD_CHANNELS, text_heads=TEXT_HEADS)
    )
    return out


@pytest.fixture(scope="module")
def pipe(model_dir) -> ImageToVideoPipeline:
    return ImageToVideoPipeline.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("images")
    first, last = root / "first.png", root / "last.jpg"
    Image.fromarray(_pattern(30, 40, 0)).save(first)
    Image.fromarray(_pattern(36, 36, 1)[:, ::-1].copy()).save(last, quality=95)
    return first, last


def _run(pipe: ImageToVideoPipeline, image, **kw):
    args = dict(num_frames=T, height=H, width=W, num_inference_steps=STEPS, seed=7, progress=False,
                output_type="latent")
    args.update(kw)
    return pipe(image, "a red ball", **args)


# ---------------------------------------------------------------------------------------------------------------- image_io


def test_load_image_modes_and_alpha(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., 0] = 200  # red everywhere, transparent on the left half
    rgba[:, 3:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    x = load_image(tmp_path / "a.png")
    assert x.shape == (1, 3, 4, 6) and x.dtype == torch.float32
    assert torch.allclose(x[0, :, :, :3], torch.ones(3, 4, 3))  # composited on white
    assert torch.allclose(x[0, :, :, 3:], torch.tensor([200 / 127.5 - 1, -1, -1]).view(3, 1, 1).expand(3, 4, 3))

    grey = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    Image.fromarray(grey, "L").save(tmp_path / "g.png")
    Image.fromarray(grey, "L").convert("P").save(tmp_path / "p.gif")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # 16-bit greyscale
    want = torch.from_numpy(grey).float().div(127.5).sub(1).expand(3, 4, 6)
    for name in ("g.png", "p.gif", "g16.png"):
        got = load_image(tmp_path / name)[0]
        assert torch.allclose(got, want, atol=1e-6), name
    Image.fromarray(_pattern(4, 6)).save(tmp_path / "c.webp", lossless=True)
    assert torch.equal(load_image(tmp_path / "c.webp"), load_image(_pattern(4, 6)))


def test_load_image_in_memory_sources_agree():
    arr = _pattern(5, 7)
    ref = load_image(Image.fromarray(arr))
    assert torch.equal(load_image(arr), ref)
    assert torch.allclose(load_image(arr.astype(np.float32) / 255), ref, atol=1e-6)
    assert torch.allclose(load_image(torch.from_numpy(arr).permute(2, 0, 1)), ref, atol=1e-6)
    assert torch.equal(load_image(ref[0]), ref)
    with pytest.raises(PipelineError, match=r"\[-1, 1\]"):
        load_image(ref * 3)
    with pytest.raises(PipelineError, match="channels last"):
        load_image(torch.from_numpy(arr).float() / 255)
    with pytest.raises(PipelineError, match="unsupported image type"):
        load_image(3.0)


def test_open_image_errors(tmp_path):
    with pytest.raises(PipelineError, match="not found.*nope.png"):
        open_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"definitely not a PNG")
    with pytest.raises(PipelineError, match="cannot read image .*bad.png"):
        open_image(tmp_path / "bad.png")
    Image.fromarray(_pattern(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(PipelineError, match="cut.png"):
        open_image(tmp_path / "cut.png")
    with pytest.raises(PipelineError, match="folder"):
        open_image(tmp_path)


def test_resize_exact_is_opencv_bilinear():
    # OpenCV INTER_LINEAR: half-pixel centres, edge clamp; 2 → 4 samples give [0, .25, .75, 1] of the range
    img = np.array([[[0, 0, 0], [255, 255, 255]]], np.uint8)
    out = resize_exact(img, 1, 4)[0, 0, 0]
    assert torch.allclose((out + 1) / 2, torch.tensor([0.0, 0.25, 0.75, 1.0]), atol=1e-6)
    assert resize_exact(_pattern(30, 40), 16, 24).shape == (1, 3, 16, 24)


def test_resize_short_side_center_crop_matches_torchvision_rules():
    arr = _pattern(30, 60)  # short side 30 -> 16, long side int(16 * 60 / 30) = 32, then crop columns 8..24
    got = resize_short_side_center_crop(arr, 16, 16)
    resized = np.asarray(Image.fromarray(arr).resize((32, 16), Image.Resampling.BILINEAR), np.float32)
    want = torch.from_numpy(resized[:, 8:24].copy()).permute(2, 0, 1)[None] / 127.5 - 1
    assert torch.equal(got, want)
    # too small along one side: torchvision's CenterCrop pads with black, split (left, right) = (4, 4)
    sq = resize_short_side_center_crop(_pattern(16, 16), 16, 24)
    assert sq.shape == (1, 3, 16, 24)
    assert torch.all(sq[..., :4] == -1) and torch.all(sq[..., -4:] == -1)
    assert torch.equal(sq[..., 4:20], load_image(_pattern(16, 16)))
    odd = center_crop(torch.zeros(1, 3, 5, 5), 5, 8)  # pads (1, 2): torchvision puts the extra column on the right
    assert odd[..., 0].eq(-1).all() and odd[..., 1].eq(0).all() and odd[..., -2:].eq(-1).all()
    # tensors go through torch's antialiased bilinear (torchvision's tensor path): close to the PIL result
    t = resize_short_side_center_crop(load_image(arr), 16, 16)
    assert (t - got).abs().max() < 0.1


# ---------------------------------------------------------------------------------------------------------------- pipeline


@needs_fixtures
def test_model_folder(model_dir):
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "ImageToVideoPipeline" and index["flavour"] == "dc" and index["family"] == FAMILY
    assert {"image_encoder", "image_projector"} <= set(index["components"])


@needs_fixtures
def test_image_guidance_none_is_plain_cfg(pipe, images):
    plain = _run(pipe, images[0]).latents
    again = _run(pipe, images[0]).latents
    assert torch.equal(plain, again)  # seeded
    three_pass = _run(pipe, images[0], image_guidance_scale=pipe.defaults["guidance_scale"]).latents
    scale = plain.abs().max()
    assert (three_pass - plain).abs().max() / scale < 1e-5
    other = _run(pipe, images[0], image_guidance_scale=1.0).latents
    assert (other - plain).abs().max() / scale > 1e-3
    # A folder's default image guidance applies when the call gives none, and an explicit value still wins.
    pipe.defaults["image_guidance_scale"] = 1.0
    try:
        assert torch.equal(_run(pipe, images[0]).latents, other)
        assert torch.equal(_run(pipe, images[0], image_guidance_scale=pipe.defaults["guidance_scale"]).latents,
                           three_pass)
    finally:
        del pipe.defaults["image_guidance_scale"]


@needs_fixtures
def test_conditioning_layout(pipe, images):
    """concat (c_concat) per mode and the uncond branch, seen at the U-Net input through a forward pre-hook."""
    seen: list[dict] = []

    def hook(module, args, kwargs):
        seen.append({"x": args[0].detach().clone(), "concat": kwargs["concat"].detach().clone(),
                     "image": kwargs["image_context"].detach().clone(), "text": kwargs["text_context"].clone(),
                     "fps": kwargs["fps"].clone()})

    handle = pipe.unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        results = {}
        for mode, kw in (("plain", {}), ("interp", {"last_image": images[1]}), ("loop", {"loop": True})):
            seen.clear()
            results[mode] = (_run(pipe, images[0], fps=9, **kw), seen[0])
    finally:
        handle.remove()
    for mode, (out, call) in results.items():
        assert call["x"].shape == (2, 4, T, H // 2, W // 2), mode  # cond and uncond as one batch
        c_concat = call["concat"]
        assert c_concat.shape == (2, 4, T, H // 2, W // 2), mode  # the image latent, concatenated by the U-Net
        assert torch.equal(c_concat[0], c_concat[1]), f"{mode}: the uncond branch must keep the same c_concat"
        assert call["fps"].tolist() == [9, 9]
        assert call["text"].shape == (2, 77, 16)
        ctx = call["image"]
        assert ctx.shape == (2, T, 16, 16)  # 16 image tokens per frame, an explicit layout
        assert not torch.allclose(ctx[0], ctx[1]), "uncond image tokens come from a zero image"
        assert out.latents.shape[2] == (T - 1 if mode == "loop" else T)
        frames = c_concat[0]
        assert frames[:, 0].abs().amax() > 0 and frames[:, -1].abs().amax() > 0
        if mode == "plain":
            assert all(torch.equal(frames[:, i], frames[:, 0]) for i in range(T))
        else:
            assert frames[:, 1:-1].eq(0).all(), f"{mode}: middle frames of c_concat must be zeros"
            assert not torch.equal(frames[:, 0], frames[:, -1])  # other image / other posterior sample
    plain_ctx, interp_ctx = results["plain"][1]["image"], results["interp"][1]["image"]
    assert torch.equal(plain_ctx, interp_ctx), "image tokens come from the first image only"


@needs_fixtures
def test_pipeline_rejects_bad_inputs(pipe, images, tmp_path):
    with pytest.raises(PipelineError, match="mutually exclusive"):
        _run(pipe, images[0], loop=True, last_image=images[1])
    with pytest.raises(PipelineError, match="not found.*missing.png"):
        _run(pipe, tmp_path / "missing.png")
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(PipelineError, match="junk.jpg"):
        _run(pipe, images[0], last_image=tmp_path / "junk.jpg")
    with pytest.raises(PipelineError, match="height must be a positive multiple of 4 .the autoencoder.s factor 2 times the U-Net.s 2."):
        _run(pipe, images[0], height=15)
    with pytest.raises(PipelineError, match="at least 2 frames"):
        _run(pipe, images[0], loop=True, num_frames=1)
    with pytest.raises(PipelineError, match="2 prompts for a batch of 3|3 images"):
        pipe([images[0]] * 3, ["a", "b"], num_frames=T, height=H, width=W, num_inference_steps=1, progress=False)


def _vc_pipeline() -> ImageToVideoPipeline:
    """VideoCrafter-i2v flavour from the fixture U-Net (variant vc1_i2v_512) and small seeded encoders."""
    from vidiff.conversion.common import strip_prefix
    from vidiff.conversion.unet import (
        convert_unet,
        expected_unet_shapes,
        rename_official_key,
        unet_config_from_official,
    )
    from vidiff.conversion.vae import build_vae, convert_vae
    from vidiff.diffusion.schedule import schedule_from_official_params
    from vidiff.model_folder import FAMILIES
    from vidiff.models.image_encoder import OpenCLIPImageEncoder
    from vidiff.models.resampler import Resampler
    from vidiff.models.text_encoder import OpenCLIPTextEncoder
    from vidiff.models.tokenizer import OpenCLIPTokenizer
    from vidiff.models.unet3d import UNet3DModel

    folder = next(f for f in fixture_folders("vc_unet") if "vc1_i2v_512" in load_config(f)["variants"])
    cfg = load_config(folder)
    kwargs = cfg["variants"]["vc1_i2v_512"]["kwargs"]
    weights = strip_prefix(load_tensors(folder / cfg["weights_file"]), cfg["key_prefix"])
    expected = expected_unet_shapes(unet_config_from_official(kwargs, "vc"))
    conv = convert_unet({k: v for k, v in weights.items() if rename_official_key(k) in expected}, kwargs, "vc")
    unet = UNet3DModel.from_config(conv.config)
    unet.load_state_dict(conv.state_dict)
    vae_sd = strip_prefix(load_tensors(fixture_folders("vae")[0] / "weights.safetensors"), "first_stage_model.")
    vae_conv = convert_vae(vae_sd)
    vae = build_vae(vae_conv.config)
    vae.load_state_dict(vae_conv.state_dict)
    torch.manual_seed(0)
    ctx = kwargs["context_dim"]
    return ImageToVideoPipeline(
        unet.eval(), vae.eval(), OpenCLIPTextEncoder(width=ctx, layers=2, heads=2).eval(), OpenCLIPTokenizer(),
        OpenCLIPImageEncoder(width=64, layers=1, heads=1).eval(),
        Resampler(dim=32, depth=1, dim_head=16, heads=2, num_queries=16, embedding_dim=64, output_dim=ctx).eval(),
        schedule_from_official_params(FAMILIES["vc1_i2v_512"].model_params), flavour="vc", family="vc1_i2v_512",
    )


@pytest.mark.skipif(not fixture_folders("vc_unet"), reason="vc_unet fixtures not found")
def test_videocrafter_i2v_flavour(images):
    pipe = _vc_pipeline()
    assert pipe.defaults["fps"] == 8 and pipe.defaults["guidance_scale"] == 12.0
    seen: list[torch.Tensor] = []
    enc = pipe.image_encoder.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))
    calls: list[dict] = []
    unet = pipe.unet.register_forward_pre_hook(
        lambda m, a, kw: calls.append({"x": a[0], "image": kw["image_context"], "concat": kw.get("concat")}),
        with_kwargs=True,
    )
    try:
        out = _run(pipe, images[0], output_type="np")
    finally:
        enc.remove()
        unet.remove()
    assert out.frames.shape == (1, T, H, W, 3) and out.frames.dtype == torch.uint8
    assert torch.equal(seen[0], resize_exact(images[0], H, W))  # stretched, not cropped
    size = pipe.image_encoder.config["image_size"]
    assert torch.equal(seen[1], torch.zeros(1, 3, size, size))  # official uncond: zeros 224 × 224
    assert calls[0]["x"].shape[1] == 4 and calls[0]["concat"] is None  # no c_concat
    assert calls[0]["image"].shape[1:] == (16, 16)  # 16 image tokens shared by the frames
    with pytest.raises(PipelineError, match="DynamiCrafter"):
        _run(pipe, images[0], loop=True)


# ---------------------------------------------------------------------------------------------------------------- CLI


def _animate_command() -> list[str]:
    return [sys.executable, "-m", "vidiff.cli", "animate"]


@needs_fixtures
@pytest.mark.parametrize("mode", ["plain", "loop", "last-image"])
def test_cli_animate_end_to_end(model_dir, images, tmp_path, mode):
    out = tmp_path / f"{mode}.mp4"
    cmd = [*_animate_command(), str(images[0]), "a red ball", "--model", str(model_dir), "-o", str(out),
           "--frames", str(T), "--height", str(H), "--width", str(W), "--steps", str(STEPS), "--seed", "5"]
    if mode == "plain":
        cmd += ["--gif", "--sheet"]
    elif mode == "loop":
        cmd += ["--loop"]
    else:
        cmd += ["--last-image", str(images[1]), "--image-guidance", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from vidiff.utils.video import read_video

    frames, rate = read_video(out)
    assert frames.shape == (T - 1 if mode == "loop" else T, H, W, 3)
    assert rate == pytest.approx(24)  # dc_512's fps conditioning doubles as the playback rate
    assert f"wrote {out}" in proc.stdout
    if mode == "plain":
        assert (tmp_path / "plain.gif").is_file() and (tmp_path / "plain_sheet.png").is_file()


@needs_fixtures
def test_cli_errors(model_dir, images, tmp_path, capsys, monkeypatch):
    assert cli_main(["animate", str(images[0]), "--loop", "--last-image", str(images[1]), "--model", str(model_dir)]) == 2
    assert "not allowed with argument" in capsys.readouterr().err

    import vidiff.cli_common as cli_common

    monkeypatch.setattr(cli_common, "EMBEDDED_MODELS", tmp_path / "no_models")  # a package without the default
    assert cli_main(["animate", str(images[0])]) == 2
    assert "no --model given and no embedded default i2v model" in capsys.readouterr().err

    missing = tmp_path / "missing.png"
    assert cli_main(["animate", str(missing), "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "image file not found" in err and str(missing) in err

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    assert cli_main(["animate", str(corrupt), "--model", str(model_dir), "-o", str(tmp_path / "x.mp4")]) == 2
    err = capsys.readouterr().err
    assert "cannot read image" in err and str(corrupt) in err
    assert not (tmp_path / "x.mp4").exists()
