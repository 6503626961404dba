"""Whole-checkpoint conversion: full-size manifests, family detection, container formats and error handling."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from lvdm_fixtures import load_manifest, manifest_params
from safetensors.torch import save_file
from tiny_checkpoint import TEXT_HEADS, UNET_HEAD_CHANNELS, has_fixtures, tiny_state_dict

from vidiff.cli import main as cli_main
from vidiff.conversion.common import ConversionError, load_official_state_dict
from vidiff.conversion.lvdm import HeadCounts, _build, convert_checkpoint, convert_state_dict, detect_family

TINY_HEADS = HeadCounts(unet_head_channels=UNET_HEAD_CHANNELS, text_heads=TEXT_HEADS)


def _meta_state_dict(path):
    return {k: torch.empty(shape, device="meta") for k, shape in load_manifest(path).items()}


@pytest.mark.parametrize("manifest", manifest_params())
def test_full_size_manifest_converts_exactly(manifest):
    family = manifest.name.removeprefix("manifest_").removesuffix(".json.gz")
    sd = _meta_state_dict(manifest)
    detected = detect_family(sd)
    # dc_512 / dc_1024 / dc_512_interp have identical layouts: only buffer values (absent here) tell them apart.
    assert detected == family or (detected == "dc_512" and family in ("dc_1024", "dc_512_interp"))
    converted = convert_state_dict(sd, family)
    accounted = set(converted.ignored)
    prefixes = {"unet": "model.diffusion_model.", "vae": "first_stage_model.", "text_encoder": "cond_stage_model.",
                "image_encoder": "embedder.", "image_projector": "image_proj_model."}
    for name, comp in converted.components.items():
        model = _build(name, comp.config)  # the full-size model, on the meta device
        model.load_state_dict(comp.state_dict, strict=True, assign=True)
        accounted |= {prefixes[name] + k for k in comp.consumed}
    buffers = {k for k in sd if "." not in k}
    assert accounted | buffers == set(sd)
    assert not (set(converted.ignored) & {prefixes["unet"] + k for k in converted.components["unet"].consumed})
    if family.startswith("vc") and "t2v" in family:
        n_params = sum(v.numel() for v in converted.components["unet"].state_dict.values())
        assert n_params == {"vc1_t2v_512": 1_144_485_956, "vc1_t2v_1024": 1_146_536_516,
                            "vc2_t2v_512": 1_413_284_420}[family]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    if not has_fixtures():
        pytest.skip("the tiny checkpoint is assembled from the vc_unet / vae fixtures, which were not found")
    path = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    sd = tiny_state_dict()
    torch.save({"state_dict": sd, "global_step": 0}, path)
    return path, sd


def _convert_args(ckpt, out):
    return ["convert", str(ckpt), str(out), "--num-head-channels", str(UNET_HEAD_CHANNELS), "--text-heads", str(TEXT_HEADS)]


def test_containers_give_identical_models(tiny_ckpt, tmp_path):
    """Lightning, plain, DeepSpeed and safetensors containers convert to the same weights."""
    path, sd = tiny_ckpt
    plain, deepspeed, st = tmp_path / "plain.pt", tmp_path / "ds.pt", tmp_path / "w.safetensors"
    torch.save(sd, plain)
    torch.save({"module": {"_forward_module." + k: v for k, v in sd.items()}}, deepspeed)
    save_file({k: v.contiguous() for k, v in sd.items()}, st)
    results = []
    for src in (path, plain, deepspeed, st):
        conv = convert_state_dict(load_official_state_dict(src), heads=TINY_HEADS)
        results.append(conv)
    ref = results[0].components["unet"].state_dict
    for conv in results[1:]:
        assert conv.family.name == "vc2_t2v_512"
        for k, v in ref.items():
            assert torch.equal(conv.components["unet"].state_dict[k], v)


def test_convert_writes_loadable_folder(tiny_ckpt, tmp_path):
    path, _ = tiny_ckpt
    out = tmp_path / "model"
    assert cli_main(_convert_args(path, out)) == 0
    index = json.loads((out / "model_index.json").read_text())
    assert index["family"] == "vc2_t2v_512"
    assert set(index["ignored_keys"]) == {"cond_stage_model.model.text_projection", "cond_stage_model.model.logit_scale"}
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (out / sub).is_dir()
    assert index["component_classes"] == {  # each component's class, recorded for loading
        "text_encoder": "vidiff.models.text_encoder:OpenCLIPTextEncoder",
        "unet": "vidiff.models.unet3d:UNet3DModel",
        "vae": "vidiff.models.autoencoder:LDMAutoencoderKL",
    }
    # existing folder without --overwrite: clear error, folder untouched
    before = sorted(p.name for p in out.iterdir())
    assert cli_main(_convert_args(path, out)) == 2
    assert sorted(p.name for p in out.iterdir()) == before


def _expect_error(tmp_path, sd_or_bytes, match, capsys):
    src = tmp_path / "bad.ckpt"
    if isinstance(sd_or_bytes, bytes):
        src.write_bytes(sd_or_bytes)
    else:
        torch.save({"state_dict": sd_or_bytes}, src)
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match=match):
        convert_checkpoint(src, out, heads=TINY_HEADS)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bad.ckpt"], "conversion left files behind"
    assert cli_main(_convert_args(src, out)) == 2
    assert "error" in capsys.readouterr().err
    assert not out.exists()


def test_truncated_checkpoint(tiny_ckpt, tmp_path, capsys):
    data = tiny_ckpt[0].read_bytes()
    _expect_error(tmp_path, data[: len(data) // 2], "truncated|corrupt", capsys)


def test_missing_component_keys(tiny_ckpt, tmp_path, capsys):
    sd = {k: v for k, v in tiny_ckpt[1].items() if "output_blocks.3." not in k}
    _expect_error(tmp_path, sd, "missing keys", capsys)


def test_unknown_keys(tiny_ckpt, tmp_path, capsys):
    _expect_error(tmp_path, {**tiny_ckpt[1], "model_ema.decay": torch.tensor(0.9)}, "model_ema.decay", capsys)


def test_shape_mismatch(tiny_ckpt, tmp_path, capsys):
    sd = dict(tiny_ckpt[1])
    key = "model.diffusion_model.input_blocks.1.1.proj_out.weight"
    sd[key] = torch.zeros(sd[key].shape[0], sd[key].shape[1] + 1)
    _expect_error(tmp_path, sd, "proj_out", capsys)


def test_not_a_video_checkpoint(tmp_path, capsys):
    _expect_error(tmp_path, {"encoder.weight": torch.zeros(3)}, "not a VideoCrafter", capsys)


def test_schedule_buffer_mismatch(tiny_ckpt, tmp_path, capsys):
    sd = dict(tiny_ckpt[1])
    sd["alphas_cumprod"] = sd["alphas_cumprod"] * 0.9
    _expect_error(tmp_path, sd, "alphas_cumprod", capsys)


def test_convert_and_generate_end_to_end(tiny_ckpt, tmp_path):
    """`vidiff convert` then `vidiff generate` in a fresh process write a playable mp4, a GIF and a contact sheet."""
    from vidiff.utils.video import read_video

    path, _ = tiny_ckpt
    model = tmp_path / "model"
    assert cli_main(_convert_args(path, model)) == 0
    video = tmp_path / "out" / "clip.mp4"
    cmd = [sys.executable, "-m", "vidiff.cli", "generate", "a red circle moving left", "--model", str(model),
           "--steps", "4", "--frames", "4", "--height", "32", "--width", "48", "--fps", "8", "--seed", "7",
           "-o", str(video), "--gif", "--sheet"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    for p in (video, video.with_suffix(".gif"), video.with_name("clip_sheet.png")):
        assert p.is_file() and str(p) in res.stdout
    frames, fps = read_video(video)
    assert frames.shape == (4, 32, 48, 3) and fps == pytest.approx(8)
    assert frames.std() > 1.0  # a real decoded image, not a constant frame


@pytest.mark.parametrize(
    "extra,match",
    [(["--steps", "0"], "--steps"), (["--height", "33"], "height"), (["-o", "x.avi"], ".mp4")],
)
def test_generate_bad_arguments(tiny_ckpt, tmp_path, capsys, extra, match):
    model = tmp_path / "model"
    assert cli_main(_convert_args(tiny_ckpt[0], model)) == 0
    capsys.readouterr()
    args = ["generate", "a cat", "--model", str(model), "--frames", "2", "--steps", "1", "-o", str(tmp_path / "o.mp4")]
    assert cli_main(args + extra) == 2
    assert match in capsys.readouterr().err


def test_generate_missing_model(tmp_path, capsys):
    assert cli_main(["generate", "a cat", "--model", str(tmp_path / "nope"), "-o", str(tmp_path / "o.mp4")]) == 2
    assert "not found" in capsys.readouterr().err

