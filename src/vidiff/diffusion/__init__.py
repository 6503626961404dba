"""Noise schedules, samplers and guidance of the LVDM family (VideoCrafter, DynamiCrafter)."""

from vidiff.diffusion.guidance import (
    classifier_free_guidance,
    guided_denoiser,
    multi_condition_guidance,
    rescale_guidance,
)
from vidiff.diffusion.sampling import (
    DDIMCoefficients,
    ddim_coefficients,
    ddim_timesteps,
    sample_ddim,
    sample_ddpm,
)
from vidiff.diffusion.schedule import NoiseSchedule, schedule_from_official_params

__all__ = [
    "DDIMCoefficients",
    "NoiseSchedule",
    "classifier_free_guidance",
    "ddim_coefficients",
    "ddim_timesteps",
    "guided_denoiser",
    "multi_condition_guidance",
    "rescale_guidance",
    "sample_ddim",
    "sample_ddpm",
    "schedule_from_official_params",
]
