"""DDIM and ancestral DDPM samplers, step for step as the official VideoCrafter/DynamiCrafter samplers.

Each sampler is one short function over a ``denoise(x, t) -> model_output`` callable (already guided; see
:mod:`vidiff.diffusion.guidance`), so the model, the conditioning and the guidance stay outside the update rule.
The DDIM coefficients keep the official dtypes (ᾱ and √(1−ᾱ) gathered from the float32 buffers, σ computed in float64,
everything cast to float32 per step), which is what makes the fixtures reproducible to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from vidiff.diffusion.schedule import NoiseSchedule

__all__ = [
    "DDIMCoefficients",
    "Denoiser",
    "ddim_coefficients",
    "ddim_timesteps",
    "sample_ddim",
    "sample_ddpm",
]

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseFn = Callable[[int, tuple[int, ...]], torch.Tensor]
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]

SPACINGS = ("uniform", "uniform_trailing")


def ddim_timesteps(num_steps: int, spacing: str = "uniform", num_train_timesteps: int = 1000) -> np.ndarray:
    """The official DDIM timesteps, ascending (int64).

    ``uniform``: c = T // S, steps 0, c, 2c, … below T, each + 1 (so S=30 gives 31 steps). ``uniform_trailing``:
    round(T − k·T/S) for k = 0..S−1, ascending, each − 1 (always ends at T−1, which zero-terminal-SNR models need).
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer):
        raise ValueError(f"num_steps must be an int, got {num_steps!r}")
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must lie in [1, {num_train_timesteps}], got {num_steps}")
    if spacing == "uniform":
        c = num_train_timesteps // num_steps
        steps = np.arange(0, num_train_timesteps, c, dtype=np.int64) + 1
    elif spacing == "uniform_trailing":
        c = num_train_timesteps / num_steps
        steps = np.flip(np.round(np.arange(num_train_timesteps, 0, -c))).astype(np.int64) - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SPACINGS}")
    # Some step counts make the official rule step outside [0, T-1] (uniform S=3 reaches T, where the official sampler
    # crashes; trailing S=61 reaches -1, which it silently reads as the last step). Refuse those instead.
    if steps.min() < 0 or steps.max() >= num_train_timesteps:
        raise ValueError(
            f"{spacing!r} spacing with {num_steps} steps gives timesteps outside [0, {num_train_timesteps - 1}] "
            f"({steps.min()}..{steps.max()}), as in the official code; choose another step count or spacing"
        )
    return steps


@dataclass(frozen=True)
class DDIMCoefficients:
    """Per-step DDIM arrays in ascending timestep order, in the dtypes the official sampler holds them.

    ``scale``/``scale_prev`` are the data-scale factors s_t and s_prev (None without a data scale). VideoCrafter's
    s_prev prepends scale_arr[0]; DynamiCrafter's duplicates the first DDIM entry.
    """

    timesteps: np.ndarray  # int64
    alphas: np.ndarray  # float32, ᾱ_t
    alphas_prev: np.ndarray  # float64 holding float32 values; ᾱ[0] (not 1) for the lowest step
    sigmas: np.ndarray  # float64
    sqrt_one_minus_alphas: np.ndarray  # float32, computed in float32
    scale: np.ndarray | None  # float32
    scale_prev: np.ndarray | None  # VC: float64 holding float32 values; DC: float32


def ddim_coefficients(
    schedule: NoiseSchedule, num_steps: int, eta: float = 1.0, spacing: str = "uniform"
) -> DDIMCoefficients:
    """The official ``make_schedule`` arrays for ``num_steps`` DDIM steps."""
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not np.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    steps = ddim_timesteps(num_steps, spacing, schedule.num_train_timesteps)
    ac = schedule.alphas_cumprod.numpy()  # float32
    alphas = ac[steps]
    alphas_prev = np.asarray([float(ac[0])] + ac[steps[:-1]].tolist(), dtype=np.float64)
    # Official dtypes: ᾱ_t is a float32 tensor and ᾱ_prev a float64 array, so `(1 - ᾱ_prev) / (1 - ᾱ_t)` runs as torch's
    # reflected division, i.e. a float32 reciprocal of (1 - ᾱ_t) times the float64 numerator; the rest is float64.
    recip_one_minus = (np.float32(1.0) / (np.float32(1.0) - alphas)).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = 1.0 - alphas.astype(np.float64) / alphas_prev
        sigmas = eta * np.sqrt(recip_one_minus * (1.0 - alphas_prev) * ratio)
    sqrt_one_minus = np.sqrt(np.float32(1.0) - alphas).astype(np.float32)
    scale = scale_prev = None
    if schedule.scale_arr is not None:
        sa = schedule.scale_arr.numpy()
        scale = sa[steps]
        if schedule.data_scale == "vc":
            scale_prev = np.asarray([float(sa[0])] + sa[steps[:-1]].tolist(), dtype=np.float64)
        else:
            scale_prev = np.concatenate([scale[:1], scale[:-1]])
    return DDIMCoefficients(steps, alphas, alphas_prev, sigmas, sqrt_one_minus, scale, scale_prev)


def draw_noise(
    step_index: int, like: torch.Tensor, generator: torch.Generator | None, noise_fn: NoiseFn | None
) -> torch.Tensor:
    """Standard normal noise shaped like ``like``: ``noise_fn(step_index, shape)`` if given, else from ``generator``."""
    shape = tuple(like.shape)
    if noise_fn is not None:
        noise = noise_fn(step_index, shape)
        if not isinstance(noise, torch.Tensor) or tuple(noise.shape) != shape:
            got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
            raise ValueError(f"noise_fn({step_index}, {shape}) returned {got}, expected a tensor of shape {shape}")
        return noise.to(device=like.device, dtype=like.dtype)
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


def check_inputs(x_T: torch.Tensor, schedule: NoiseSchedule) -> None:
    """Refuse a schedule that is not a NoiseSchedule and an x_T that is not a batched float tensor."""
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point() or x_T.ndim < 2:
        raise ValueError("x_T must be a floating-point tensor with a batch dimension")


def _check_output(out: torch.Tensor, x: torch.Tensor, t: int) -> None:
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"denoise returned {got} at t={t}; expected a tensor shaped like x {tuple(x.shape)}")


def check_skip(skip_steps: int, n: int) -> None:
    if isinstance(skip_steps, bool) or not isinstance(skip_steps, int | np.integer) or not 0 <= skip_steps < n:
        raise ValueError(f"skip_steps must be an int in [0, {n - 1}] for {n} steps, got {skip_steps!r}")


def check_eps_at_zero_snr(schedule: NoiseSchedule, steps: np.ndarray) -> None:
    """Refuse an ε-prediction model at a step with ᾱ = 0, where x0 = (x − ε)/0."""
    if not schedule.is_v_prediction and bool((schedule.alphas_cumprod[torch.as_tensor(steps)] == 0).any()):
        raise ValueError(
            "an epsilon-prediction model cannot be sampled from a step with alphas_cumprod == 0 (zero terminal SNR); "
            "use v_prediction or a spacing that avoids the last step"
        )


def _eps_and_x0(
    schedule: NoiseSchedule, x: torch.Tensor, out: torch.Tensor, step: int, a_t: torch.Tensor, sq1m_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ε, x0) from the model output; v-models use the schedule's float32 √ᾱ/√(1−ᾱ) at t, as the official code does."""
    if schedule.is_v_prediction:
        sa = schedule.sqrt_alphas_cumprod[step].to(device=x.device, dtype=x.dtype)
        s1m = schedule.sqrt_one_minus_alphas_cumprod[step].to(device=x.device, dtype=x.dtype)
        return sa * out + s1m * x, sa * x - s1m * out
    return out, (x - sq1m_t * out) / a_t.sqrt()


@torch.no_grad()
def sample_ddim(
    denoise: Denoiser,
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    num_steps: int,
    *,
    eta: float = 1.0,
    spacing: str = "uniform",
    generator: torch.Generator | None = None,
    noise_fn: NoiseFn | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
    skip_steps: int = 0,
) -> torch.Tensor:
    """DDIM (Song et al. 2021) exactly as the official LVDM samplers, including their data-scale handling.

    A fresh noise tensor is drawn at every step, even at eta 0 (so a seed gives the same stream as the official code);
    ``noise_fn(step_index, shape)`` replaces the draw (step 0 is the highest timestep). ``callback(step_index, t, x_prev,
    pred_x0)`` sees pred_x0 after the scale handling, as the official sampler returns it. ``skip_steps`` starts at step
    ``skip_steps`` of the ``num_steps`` (``x_T`` is then the noisy latent at that step's timestep: SDEdit, inversion).
    """
    check_inputs(x_T, schedule)
    co = ddim_coefficients(schedule, num_steps, eta, spacing)
    check_eps_at_zero_snr(schedule, co.timesteps)
    x = x_T
    b, dev, dt = x.shape[0], x.device, x.dtype

    def scalar(value: float) -> torch.Tensor:
        # The official code builds float32 (b,1,1,1,1) tensors per step; 0-d tensors broadcast identically.
        return torch.tensor(float(value), dtype=dt, device=dev)

    n = len(co.timesteps)
    check_skip(skip_steps, n)
    for i in tqdm(range(skip_steps, n), desc="DDIM", disable=not progress):
        index = n - 1 - i
        step = int(co.timesteps[index])
        t = torch.full((b,), step, dtype=torch.long, device=dev)
        out = denoise(x, t)
        _check_output(out, x, step)
        a_t, a_prev = scalar(co.alphas[index]), scalar(co.alphas_prev[index])
        sigma, sq1m_t = scalar(co.sigmas[index]), scalar(co.sqrt_one_minus_alphas[index])
        e, pred_x0 = _eps_and_x0(schedule, x, out, step, a_t, sq1m_t)
        dir_xt = (1.0 - a_prev - sigma**2).clamp_min(0).sqrt() * e
        noise = sigma * draw_noise(i, x, generator, noise_fn)
        if schedule.data_scale == "vc":
            s_t, s_prev = scalar(co.scale[index]), scalar(co.scale_prev[index])
            pred_x0 = pred_x0 / s_t
            x = a_prev.sqrt() * s_prev * pred_x0 + dir_xt + noise
        else:
            if schedule.data_scale == "dc":
                pred_x0 = pred_x0 * (scalar(co.scale_prev[index]) / scalar(co.scale[index]))
            x = a_prev.sqrt() * pred_x0 + dir_xt + noise
        if callback is not None:
            callback(i, step, x, pred_x0)
    return x


def _ddpm_table(schedule: NoiseSchedule, steps: np.ndarray) -> dict[str, np.ndarray]:
    """Posterior coefficients for an ascending subset of steps, as float32.

    For the full chain these are the schedule's own buffers; for a strided chain the betas are recomputed for the
    subset (β'_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i−1}}, with ᾱ = 1 before the first step) so each jump is a proper posterior.
    """
    n = schedule.num_train_timesteps
    if len(steps) == n and np.array_equal(steps, np.arange(n)):
        return {
            "coef1": schedule.posterior_mean_coef1.numpy(),
            "coef2": schedule.posterior_mean_coef2.numpy(),
            "log_var": schedule.posterior_log_variance_clipped.numpy(),
            "alphas_cumprod": schedule.alphas_cumprod.numpy(),
            "alphas_cumprod_prev": schedule.alphas_cumprod_prev.numpy(),
        }
    ac = schedule.alphas_cumprod_f64[steps]
    ac_prev = np.append(1.0, ac[:-1])
    with np.errstate(divide="ignore", invalid="ignore"):
        alphas = ac / ac_prev
        betas = 1.0 - alphas
        var = betas * (1.0 - ac_prev) / (1.0 - ac)
        table = {
            "coef1": betas * np.sqrt(ac_prev) / (1.0 - ac),
            "coef2": (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac),
            "log_var": np.log(np.maximum(var, 1e-20)),
            "alphas_cumprod": ac,
            "alphas_cumprod_prev": ac_prev,
        }
    return {k: v.astype(np.float32) for k, v in table.items()}


@torch.no_grad()
def sample_ddpm(
    denoise: Denoiser,
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    *,
    num_steps: int | None = None,
    spacing: str = "uniform_trailing",
    clip_x0: float | None = None,
    generator: torch.Generator | None = None,
    noise_fn: NoiseFn | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
    skip_steps: int = 0,
) -> torch.Tensor:
    """Ancestral DDPM sampling with the posterior q(x_{t−1} | x_t, x0) (Ho et al. 2020).

    ``num_steps=None`` runs all training steps with the official posterior buffers; otherwise ``num_steps`` steps of
    ``spacing`` with betas recomputed for the subset. ``clip_x0`` clamps the predicted x0 to ±clip_x0 (the official
    ``clip_denoised`` uses 1.0 in pixel space). With a data scale the posterior is taken at the previous step's scale:
    x0 is re-scaled to s_prev and x_t is corrected by √ᾱ_t·(s_prev − s_t)·x0, which keeps the marginals of training.
    No noise is added at the last step.
    """
    check_inputs(x_T, schedule)
    if clip_x0 is not None and (isinstance(clip_x0, bool) or not isinstance(clip_x0, int | float) or clip_x0 <= 0):
        raise ValueError(f"clip_x0 must be None or a positive number, got {clip_x0!r}")
    if num_steps is None:
        steps = np.arange(schedule.num_train_timesteps, dtype=np.int64)
    else:
        steps = ddim_timesteps(num_steps, spacing, schedule.num_train_timesteps)
    check_eps_at_zero_snr(schedule, steps)
    table = _ddpm_table(schedule, steps)
    scale = schedule.scale_arr.numpy() if schedule.scale_arr is not None else None
    x = x_T
    b, dev, dt = x.shape[0], x.device, x.dtype

    def scalar(value: float) -> torch.Tensor:
        return torch.tensor(float(value), dtype=dt, device=dev)

    n = len(steps)
    check_skip(skip_steps, n)
    for i in tqdm(range(skip_steps, n), desc="DDPM", disable=not progress):
        index = n - 1 - i
        step = int(steps[index])
        t = torch.full((b,), step, dtype=torch.long, device=dev)
        out = denoise(x, t)
        _check_output(out, x, step)
        a_t = scalar(table["alphas_cumprod"][index])
        e, x0 = _eps_and_x0(schedule, x, out, step, a_t, (1.0 - a_t).sqrt())
        x_t = x
        if scale is not None:
            s_t = scalar(scale[step])
            s_prev = scalar(scale[int(steps[index - 1])] if index > 0 else scale[0])
            x0 = x0 / s_t  # data units
            x_t = x + a_t.sqrt() * (s_prev - s_t) * x0
        if clip_x0 is not None:
            x0 = x0.clamp(-clip_x0, clip_x0)
        pred_x0 = x0
        if scale is not None:
            x0 = x0 * s_prev
        mean = scalar(table["coef1"][index]) * x0 + scalar(table["coef2"][index]) * x_t
        noise = draw_noise(i, x, generator, noise_fn)
        if index > 0:
            x = mean + (0.5 * scalar(table["log_var"][index])).exp() * noise
        else:
            x = mean
        if callback is not None:
            callback(i, step, x, pred_x0)
    return x
