"""The released VideoCrafter/DynamiCrafter configurations, as plain data.

Kept free of torch so that the command line can list them (``vidiff convert --family``) without the heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Family:
    """One released configuration: how to build it and how the official scripts sample it."""

    name: str
    flavour: str  # "vc" (VideoCrafter code) or "dc" (DynamiCrafter code)
    task: str  # "t2v" or "i2v"
    model_params: dict  # official LatentDiffusion params that define the noise schedule
    unet: dict = field(default_factory=dict)  # vidiff U-Net config values the weights cannot tell
    defaults: dict = field(default_factory=dict)  # sampling defaults of the official scripts


_BASE = {"linear_start": 0.00085, "linear_end": 0.012, "timesteps": 1000}
_VC_T2V = {"num_frames": 16, "num_inference_steps": 50, "guidance_scale": 12.0, "eta": 1.0,
           "timestep_spacing": "uniform", "guidance_rescale": 0.0, "height": 320, "width": 512, "fps": 28}
_DC = {"num_frames": 16, "num_inference_steps": 50, "guidance_scale": 7.5, "eta": 1.0,
       "timestep_spacing": "uniform_trailing", "guidance_rescale": 0.7}
_DC_V = {**_BASE, "parameterization": "v", "rescale_betas_zero_snr": True, "use_dynamic_rescale": True}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("vc1_t2v_512", "vc", "t2v", dict(_BASE), {"dropout": 0.0}, dict(_VC_T2V)),
        Family("vc1_t2v_1024", "vc", "t2v", {**_BASE, "use_scale": True, "fix_scale_bug": True},
               {"dropout": 0.0}, {**_VC_T2V, "height": 576, "width": 1024}),
        Family("vc2_t2v_512", "vc", "t2v", {**_BASE, "use_scale": True, "scale_b": 0.7}, {"dropout": 0.0}, dict(_VC_T2V)),
        Family("vc1_i2v_512", "vc", "i2v", {**_BASE, "use_scale": True, "scale_b": 0.7}, {"dropout": 0.0},
               {**_VC_T2V, "fps": 8}),
        Family("dc_256", "dc", "i2v", dict(_BASE), {"dropout": 0.1, "default_fps": 3},
               {**_DC, "timestep_spacing": "uniform", "guidance_rescale": 0.0, "height": 256, "width": 256, "fps": 3}),
        Family("dc_512", "dc", "i2v", {**_DC_V, "base_scale": 0.7}, {"dropout": 0.1, "default_fps": 24},
               {**_DC, "height": 320, "width": 512, "fps": 24}),
        Family("dc_1024", "dc", "i2v", {**_DC_V, "base_scale": 0.3}, {"dropout": 0.1, "default_fps": 10},
               {**_DC, "height": 576, "width": 1024, "fps": 10}),
        Family("dc_512_interp", "dc", "i2v", {**_DC_V, "base_scale": 0.7}, {"dropout": 0.1, "default_fps": 24},
               {**_DC, "height": 320, "width": 512, "fps": 5}),
    )
}
