"""Whole 4-step DDIM runs with CFG through our U-Net and sampler against the official VideoCrafter sampler.

Every step's x_prev and pred_x0 and the final latent are compared (README tolerance 1e-4 relative), plus the VAE decode
of the final latent where the fixture stores one. The U-Net and VAE are loaded through the public conversion path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lvdm_fixtures import build_unet_variant, load_config, load_tensors, params, rel_err, sample_weights_folder

from vidiff.conversion.common import strip_prefix
from vidiff.conversion.vae import build_vae, convert_vae
from vidiff.diffusion.guidance import guided_denoiser
from vidiff.diffusion.sampling import sample_ddim
from vidiff.diffusion.schedule import schedule_from_official_params
from vidiff.models.autoencoder import decode_video
from vidiff.models.unet3d import UNet3DModel

TOL = 1e-4


def _build_unet(sample_cfg: dict, variant: str) -> UNet3DModel:
    return build_unet_variant(sample_weights_folder(sample_cfg, "unet"), variant)


def _build_vae(sample_cfg: dict):
    folder = sample_weights_folder(sample_cfg, "vae")
    vae_cfg = load_config(folder)
    sd = strip_prefix(load_tensors(folder / "weights.safetensors"), vae_cfg.get("key_prefix", "first_stage_model."))
    conv = convert_vae(sd)
    vae = build_vae(conv.config)
    vae.load_state_dict(conv.state_dict, strict=True)
    return vae.eval()


def _context(spec: str, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """A run's context description, e.g. 'text_cond ++ image_tokens_cond', as the token-wise concatenation."""
    return torch.cat([inputs[name.strip()] for name in spec.split("++")], dim=1)


def _run_official_vc(folder: Path, run: str):
    cfg = load_config(folder)
    rc = cfg["runs"][run]
    inputs = load_tensors(folder / "inputs.safetensors")
    unet = _build_unet(cfg, rc["unet_variant"])
    schedule = schedule_from_official_params(rc["model_params"])

    def model(x, t, context, fps):
        return unet(x, t, context=context, fps=fps)

    # official VC: cond and uncond share fps; two separate passes, cond first
    cond = {"context": _context(rc["context_cond"], inputs), "fps": rc.get("fps")}
    uncond = {"context": _context(rc["context_uncond"], inputs), "fps": rc.get("fps")}
    denoise = guided_denoiser(model, cond, uncond, rc["cfg_scale"], batch=False)
    steps: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    with torch.no_grad():
        final = sample_ddim(
            denoise,
            inputs["x_T"],
            schedule,
            rc["ddim_steps"],
            eta=rc["eta"],
            spacing=rc.get("timestep_spacing", "uniform"),
            noise_fn=lambda i, shape: inputs[f"noise_step{i}"],
            callback=lambda i, t, x_prev, pred_x0: steps.append((t, x_prev.clone(), pred_x0.clone())),
        )
    return cfg, rc, steps, final


@pytest.mark.parametrize("folder,run", params("vc_sample", lambda f: list(load_config(f)["runs"])))
def test_vc_sampling_matches_official(folder, run):
    cfg, rc, steps, final = _run_official_vc(folder, run)
    expected = load_tensors(folder / "expected.safetensors")
    assert [t for t, _, _ in steps] == rc["timesteps_in_order"]
    errors = {}
    for i, (_, x_prev, pred_x0) in enumerate(steps):
        errors[f"step{i}.x_prev"] = rel_err(x_prev, expected[f"{run}.step{i}.x_prev"])
        errors[f"step{i}.pred_x0"] = rel_err(pred_x0, expected[f"{run}.step{i}.pred_x0"])
    errors["final"] = rel_err(final, expected[f"{run}.final"])
    bad = {k: f"{v:.3g}" for k, v in errors.items() if not v <= TOL}
    assert not bad, f"{folder.name} {run}: relative errors above {TOL}: {bad}"

    decoded_key = f"{run}.decoded"
    if decoded_key in expected:
        vae = _build_vae(cfg)
        with torch.no_grad():
            frames = decode_video(vae, final)
        err = rel_err(frames, expected[decoded_key])
        assert err <= TOL, f"{folder.name} {run}: decoded relative error {err:.3g}"
