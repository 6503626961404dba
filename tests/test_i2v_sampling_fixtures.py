"""4-step DDIM image-to-video runs against the official DynamiCrafter / VideoCrafter-i2v samplers.

The per-step model call and the guidance (plain CFG, multi-condition CFG, guidance rescale) go through
:func:`vidiff.pipelines.image_to_video.unet_model_fn` / :func:`image_guided_denoiser`, the code the pipeline runs, and
DynamiCrafter's ``c_concat`` through :func:`concat_condition`. Weights are loaded through the public converters.
Every step's x_prev and pred_x0 and the final latent are compared (README tolerance 1e-4 relative), plus the step-0
model outputs, the projector outputs and the decoded video where the fixture stores them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from lvdm_fixtures import (
    build_unet_variant,
    load_config,
    load_tensors,
    params,
    rel_err,
    sample_weights_folder,
)

from vidiff.conversion.common import strip_prefix
from vidiff.conversion.resampler import convert_resampler
from vidiff.conversion.vae import build_vae, convert_vae
from vidiff.diffusion.sampling import sample_ddim
from vidiff.diffusion.schedule import schedule_from_official_params
from vidiff.models.autoencoder import decode_video
from vidiff.models.resampler import Resampler
from vidiff.models.unet3d import UNet3DModel
from vidiff.pipelines.image_to_video import concat_condition, image_guided_denoiser, unet_model_fn

TOL = 1e-4  # README: 4-step sampling runs
TOL_FORWARD = 1e-5  # README: single forward passes
_PROJECTED = re.compile(r"image_proj_model\((\w+)\)")


def _build_unet(sample_cfg: dict, variant: str) -> UNet3DModel:
    return build_unet_variant(sample_weights_folder(sample_cfg, "unet"), variant)


def _build_vae(sample_cfg: dict):
    folder = sample_weights_folder(sample_cfg, "vae")
    sd = strip_prefix(load_tensors(folder / "weights.safetensors"), load_config(folder).get("key_prefix", "first_stage_model."))
    conv = convert_vae(sd)
    vae = build_vae(conv.config)
    vae.load_state_dict(conv.state_dict, strict=True)
    return vae.eval()


def _build_projector(sample_cfg: dict) -> Resampler:
    folder = sample_weights_folder(sample_cfg, "image_proj_model")
    cfg = load_config(folder)
    kw = cfg["kwargs"]  # heads/dim_head and the per-frame query count are not visible in the shapes
    sd = strip_prefix(load_tensors(folder / "weights.safetensors"), cfg.get("key_prefix", "image_proj_model."))
    flavour = "dc" if kw.get("video_length") else "vc"
    conv = convert_resampler(sd, flavour=flavour, heads=kw["heads"], dim_head=kw["dim_head"],
                             num_queries=kw["num_queries"])
    model = Resampler.from_config(conv.config)
    model.load_state_dict(conv.state_dict, strict=True)
    return model.eval()


def _context(spec: str | None, inputs: dict[str, torch.Tensor], projector: Resampler | None) -> torch.Tensor | None:
    """A run's context description, e.g. 'text_cond ++ image_proj_model(clip_tokens_cond)', token-wise concatenated."""
    if not spec:
        return None
    parts = []
    for name in (p.strip() for p in spec.split("++")):
        m = _PROJECTED.fullmatch(name)
        if m:
            assert projector is not None, f"context {spec!r} needs the image projector"
            parts.append(projector(inputs[m.group(1)]))
        else:
            parts.append(inputs[name])
    return torch.cat(parts, dim=1)


def _c_concat(description: str, inputs: dict[str, torch.Tensor], num_frames: int) -> torch.Tensor:
    """The run's c_concat: 'z_image repeated over all frames' or the interpolation layout with z_image_last."""
    last = inputs["z_image_last"] if "z_image_last" in description else None
    return concat_condition(inputs["z_image"], num_frames, last)


def _image_runs(folder: Path) -> list[str]:
    """VideoCrafter runs that condition on an image (their context holds image tokens)."""
    return [r for r, rc in load_config(folder)["runs"].items() if "image" in rc.get("context_cond", "")]


def _sample(folder: Path, run: str):
    cfg = load_config(folder)
    rc = cfg["runs"][run]
    inputs = load_tensors(folder / "inputs.safetensors")
    unet = _build_unet(cfg, rc["unet_variant"])
    projector = _build_projector(cfg) if "image_proj_model" in cfg.get("weights", {}) else None
    schedule = schedule_from_official_params(rc["model_params"])
    x_T = inputs["x_T"]
    b, t = x_T.shape[0], x_T.shape[2]

    fps_value = rc.get("fs", rc.get("fps"))
    fps = torch.full((b,), int(fps_value), dtype=torch.long) if fps_value is not None else None
    extra = {"concat": _c_concat(rc["c_concat"], inputs, t)} if rc.get("c_concat") else {}
    with torch.no_grad():
        cond = {"context": _context(rc["context_cond"], inputs, projector), "fps": fps, **extra}
        uncond = {"context": _context(rc["context_uncond"], inputs, projector), "fps": fps, **extra}
        no_text_ctx = _context(rc.get("context_uncond_img_nonetext"), inputs, projector)
    no_text = {"context": no_text_ctx, "fps": fps, **extra} if no_text_ctx is not None else None

    base = unet_model_fn(unet)
    model_outputs: list[torch.Tensor] = []

    def model(x, t_, **kw):
        out = base(x, t_, **kw)
        model_outputs.append(out.clone())
        return out

    # official samplers: separate passes in the order cond, uncond, uncond-image-no-text
    denoise = image_guided_denoiser(
        model, cond, uncond, rc["cfg_scale"], image_guidance_scale=rc.get("cfg_img"), no_text=no_text,
        guidance_rescale=rc.get("guidance_rescale", 0.0), batch=False,
    )
    steps: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        final = sample_ddim(
            denoise, x_T, schedule, rc["ddim_steps"], eta=rc["eta"], spacing=rc.get("timestep_spacing", "uniform"),
            noise_fn=lambda i, shape: inputs[f"noise_step{i}"],
            callback=lambda i, t_, x_prev, pred_x0: steps.append((t_, x_prev.clone(), pred_x0.clone())),
        )
    branches = len(model_outputs) // len(steps)
    return dict(cfg=cfg, rc=rc, inputs=inputs, projector=projector, schedule=schedule, steps=steps, final=final,
                step0_outputs=model_outputs[:branches])


def _check_run(folder: Path, run: str) -> dict[str, float]:
    res = _sample(folder, run)
    rc = res["rc"]
    want = 1 if rc["cfg_scale"] == 1 else 3 if rc.get("cfg_img") is not None else 2
    assert len(res["step0_outputs"]) == want, f"{run}: {len(res['step0_outputs'])} model passes per step, want {want}"
    expected = load_tensors(folder / "expected.safetensors")
    assert [t for t, _, _ in res["steps"]] == rc["timesteps_in_order"]
    errors: dict[str, float] = {}
    for i, (_, x_prev, pred_x0) in enumerate(res["steps"]):
        errors[f"step{i}.x_prev"] = rel_err(x_prev, expected[f"{run}.step{i}.x_prev"])
        errors[f"step{i}.pred_x0"] = rel_err(pred_x0, expected[f"{run}.step{i}.pred_x0"])
    errors["final"] = rel_err(res["final"], expected[f"{run}.final"])
    for j, out in enumerate(res["step0_outputs"]):
        key = f"{run}.step0.model_output{j}"
        if key in expected:
            errors[f"step0.model_output{j}"] = rel_err(out, expected[key])
    for which in ("cond", "uncond"):
        key = f"{run}.image_tokens_{which}"
        if key in expected:
            with torch.no_grad():
                errors[f"image_tokens_{which}"] = rel_err(res["projector"](res["inputs"][f"clip_tokens_{which}"]),
                                                          expected[key])
    if f"{run}.alphas_cumprod" in expected:
        errors["alphas_cumprod"] = rel_err(res["schedule"].alphas_cumprod, expected[f"{run}.alphas_cumprod"])
    if f"{run}.decoded" in expected:
        with torch.no_grad():
            errors["decoded"] = rel_err(decode_video(_build_vae(res["cfg"]), res["final"]), expected[f"{run}.decoded"])
    return errors


def _assert_within(folder: Path, run: str, errors: dict[str, float]) -> None:
    limits = {k: TOL_FORWARD if k.startswith(("image_tokens", "alphas_cumprod")) else TOL for k in errors}
    bad = {k: f"{v:.3g}" for k, v in errors.items() if not v <= limits[k]}
    assert not bad, f"{folder.name} {run}: relative errors above tolerance: {bad}"


@pytest.mark.parametrize("folder,run", params("dc_sample", lambda f: list(load_config(f)["runs"])))
def test_dc_sampling_matches_official(folder, run):
    _assert_within(folder, run, _check_run(folder, run))


@pytest.mark.parametrize("folder,run", params("vc_sample", _image_runs))
def test_vc_i2v_sampling_matches_official(folder, run):
    _assert_within(folder, run, _check_run(folder, run))
