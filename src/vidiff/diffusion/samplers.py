"""The sampler registry: one ``sample(name, ...)`` for DDIM, DDPM and every solver of :mod:`vidiff.diffusion.solvers`.

Pipelines and the CLI list :data:`SAMPLER_NAMES` and call :func:`sample`; a new solver registered with
:func:`vidiff.diffusion.solvers.register_solver` appears everywhere. The solvers see the model through
:class:`DiscreteTimeDenoiser`, the model-output adapter: it turns ``denoise(x_t, t) -> model output`` of a discrete-time
LVDM model (ε or v prediction, with or without a data scale, zero terminal SNR or not) into the denoiser
``D(x̃, σ̃) -> x0`` of the variance-exploding form the solvers are written in.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from vidiff.diffusion.sampling import (
    SPACINGS,
    Denoiser,
    NoiseFn,
    StepCallback,
    check_eps_at_zero_snr,
    check_inputs,
    check_skip,
    ddim_timesteps,
    draw_noise,
    sample_ddim,
    sample_ddpm,
)
from vidiff.diffusion.schedule import NoiseSchedule
from vidiff.diffusion.solvers import SOLVERS, STOCHASTIC, karras_sigmas

__all__ = [
    "SAMPLER_NAMES",
    "invert",
    "timesteps_of",
    "SOLVER_SPACINGS",
    "DiscreteTimeDenoiser",
    "sample",
    "sampler_names",
    "solver_timesteps",
]

SOLVER_SPACINGS = (*SPACINGS, "karras")
# ᾱ at a zero-terminal-SNR step, for the σ̃ = σ/α table only (as diffusers' schedulers do): σ̃ stays finite (4096) and
# the model still sees the x_T it was given; its output is converted to x0 with the exact schedule.
ZERO_SNR_ALPHA_CUMPROD = 2.0**-24


def sampler_names() -> tuple[str, ...]:
    """DDIM and DDPM (the official samplers), then the registered solvers."""
    return ("ddim", "ddpm", *SOLVERS)


SAMPLER_NAMES = sampler_names()


class DiscreteTimeDenoiser:
    """D(x̃, σ̃) → x0 for a model trained on x_t = √ᾱ_t·s_t·x0 + √(1−ᾱ_t)·ε at integer t.

    With α_t = √ᾱ_t·s_t (s_t the data scale, 1 without one) and σ_t = √(1−ᾱ_t), the state x̃ = x_t/α_t has noise
    level σ̃_t = σ_t/α_t. The solvers only ask for σ̃ of the table, so each call maps σ̃ back to its exact timestep,
    runs the model on x_t = α_t·x̃ and returns the schedule's x0 in data units.
    """

    def __init__(self, denoise: Denoiser, schedule: NoiseSchedule):
        self.denoise, self.schedule = denoise, schedule
        ac = schedule.alphas_cumprod.numpy().astype(np.float64)
        ac = np.where(ac == 0.0, ZERO_SNR_ALPHA_CUMPROD, ac)
        scale = np.ones_like(ac) if schedule.scale_arr is None else schedule.scale_arr.numpy()[: len(ac)].astype(np.float64)
        self.alphas = np.sqrt(ac) * scale
        self.sigmas = np.sqrt(1.0 - ac) / self.alphas  # ascending in t
        self._log_sigmas = np.log(self.sigmas)

    def timestep(self, sigma: torch.Tensor | float) -> int:
        """The table step whose σ̃ is ``sigma`` (nearest in log σ̃; solvers only pass table values)."""
        return int(np.abs(self._log_sigmas - np.log(float(sigma))).argmin())

    def to_model(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x * float(self.alphas[t])

    def from_model(self, x_t: torch.Tensor, t: int) -> torch.Tensor:
        return x_t / float(self.alphas[t])

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
        step = self.timestep(sigma)
        x_t = self.to_model(x, step)
        t = torch.full((x.shape[0],), step, dtype=torch.long, device=x.device)
        out = self.denoise(x_t, t)
        if not isinstance(out, torch.Tensor) or out.shape != x_t.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"denoise returned {got} at t={step}; expected a tensor shaped like x {tuple(x.shape)}")
        return self.schedule.predict_x0(x_t, out.to(x_t.dtype), t)


def solver_timesteps(schedule: NoiseSchedule, num_steps: int, spacing: str = "uniform_trailing",
                     rho: float = 7.0) -> np.ndarray:
    """Descending integer timesteps a solver visits (then σ = 0).

    ``uniform`` / ``uniform_trailing`` are the official DDIM spacings; ``karras`` places σ̃ by Karras et al.'s ρ = 7
    rule between the table's ends and snaps each to the nearest table step (distinct steps, so the model is always
    evaluated at a noise level it was trained on).
    """
    if spacing not in SOLVER_SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; expected one of {SOLVER_SPACINGS}")
    if spacing != "karras":
        return ddim_timesteps(num_steps, spacing, schedule.num_train_timesteps)[::-1].copy()
    n_train = schedule.num_train_timesteps
    if isinstance(num_steps, bool) or not isinstance(num_steps, int | np.integer) or not 1 <= num_steps <= n_train:
        raise ValueError(f"num_steps must be an int in [1, {n_train}], got {num_steps!r}")
    table = DiscreteTimeDenoiser(lambda x, t: x, schedule).sigmas
    if num_steps == 1:
        return np.array([n_train - 1], dtype=np.int64)
    wanted = np.log(karras_sigmas(num_steps, float(table[0]), float(table[-1]), rho).numpy())
    steps = np.abs(np.log(table)[None, :] - wanted[:, None]).argmin(axis=1)
    # the low-noise end maps several sigmas to one step: move each below its predecessor, leaving room for the rest
    for i in range(1, len(steps)):
        steps[i] = max(min(steps[i], steps[i - 1] - 1), num_steps - 1 - i)
    return steps.astype(np.int64)


@torch.no_grad()
def sample(
    name: str,
    denoise: Denoiser,
    x_T: torch.Tensor,
    schedule: NoiseSchedule,
    num_steps: int,
    *,
    eta: float = 0.0,
    spacing: str = "uniform_trailing",
    generator: torch.Generator | None = None,
    noise_fn: NoiseFn | None = None,
    callback: StepCallback | None = None,
    progress: bool = False,
    skip_steps: int = 0,
) -> torch.Tensor:
    """Sample with the sampler ``name`` from ``x_T`` (unit noise in the model's input space); returns the clean latent.

    ``skip_steps`` > 0 starts at that step of the ``num_steps`` schedule, with ``x_T`` the noisy latent at its
    timestep (``timesteps_of(...)[skip_steps]``): partial denoising for SDEdit and inversion-based editing.

    ``eta`` is the noise of the stochastic samplers (DDIM, euler_a, dpmpp_2m_sde) and is ignored by the deterministic
    ones. ``noise_fn(step_index, shape)`` replaces their noise draws. ``callback(step_index, t, x, pred_x0)`` sees the
    state in model space after each step (the clean latent after the last) and the x0 prediction of that step.
    """
    if name not in SAMPLER_NAMES and name not in SOLVERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sampler_names()}")
    if name == "ddim":
        return sample_ddim(denoise, x_T, schedule, num_steps, eta=eta, spacing=spacing, generator=generator,
                           noise_fn=noise_fn, callback=callback, progress=progress, skip_steps=skip_steps)
    if name == "ddpm":
        return sample_ddpm(denoise, x_T, schedule, num_steps=num_steps, spacing=spacing, generator=generator,
                           noise_fn=noise_fn, callback=callback, progress=progress, skip_steps=skip_steps)
    check_inputs(x_T, schedule)
    if isinstance(eta, bool) or not isinstance(eta, int | float) or not np.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    steps = solver_timesteps(schedule, num_steps, spacing)
    check_skip(skip_steps, len(steps))
    steps = steps[skip_steps:]
    check_eps_at_zero_snr(schedule, steps)
    model = DiscreteTimeDenoiser(denoise, schedule)
    sigmas = torch.tensor(np.append(model.sigmas[steps], 0.0), dtype=torch.float64)
    kwargs: dict = {"progress": progress}
    if name in STOCHASTIC:
        kwargs["eta"] = float(eta)
        kwargs["noise"] = lambda i, like: draw_noise(i, like, generator, noise_fn)
    if callback is not None:
        def on_step(i: int, sigma_next: torch.Tensor, x: torch.Tensor, denoised: torch.Tensor) -> None:
            x_model = x if i + 1 == len(steps) else model.to_model(x, int(steps[i + 1]))
            callback(i, int(steps[i]), x_model, denoised)

        kwargs["callback"] = on_step
    x = model.from_model(x_T, int(steps[0]))
    return SOLVERS[name](model, x, sigmas, **kwargs)



def timesteps_of(name: str, schedule: NoiseSchedule, num_steps: int, spacing: str) -> np.ndarray:
    """The descending timesteps sampler ``name`` visits for ``num_steps`` steps of ``spacing``."""
    if name in ("ddim", "ddpm"):
        return ddim_timesteps(num_steps, spacing, schedule.num_train_timesteps)[::-1].copy()
    return solver_timesteps(schedule, num_steps, spacing)


@torch.no_grad()
def invert(denoise: Denoiser, x0: torch.Tensor, schedule: NoiseSchedule, timesteps: np.ndarray,
           iterations: int = 0, progress: bool = False) -> torch.Tensor:
    """DDIM inversion (η = 0): from the clean latent ``x0`` up the given *ascending* timesteps; returns the model-space
    noisy latent at the last one, ready for ``sample("euler" or "ddim", ..., skip_steps=k)``.

    ``iterations=0`` is the usual DDIM inversion: x0 stands for the state at the first timestep and each Euler step of
    the probability-flow ODE (increasing σ̃) takes the model's noise direction at the *current* level, so sampling back
    reconstructs x0 only approximately (4.5 % relative on the shapes T2V default at 25 steps). ``iterations=N``
    solves each step backwards by N fixed-point iterations, so that an ``euler`` step from the result lands on the
    previous state, including the sampler's last step (σ_min → 0 returns D(x̃, σ_min), which a learned model does not
    keep equal to x0: that step converges slowest): 2.8 % after 2, 1.6 % after 4, at N more model calls per step.
    """
    timesteps = np.asarray(timesteps, dtype=np.int64)
    if timesteps.ndim != 1 or len(timesteps) < 1 or (np.diff(timesteps) <= 0).any():
        raise ValueError(f"inversion timesteps must be strictly ascending, got {timesteps.tolist()}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"inversion iterations must be an int >= 0, got {iterations!r}")
    check_eps_at_zero_snr(schedule, timesteps)
    model = DiscreteTimeDenoiser(denoise, schedule)
    sig = [float(model.sigmas[t]) for t in timesteps]
    x = x0.clone()
    if iterations:
        # the sampler's last step returns D(x̃, σ_min): find x̃ with D(x̃, σ_min) = x0
        y = x0.clone()
        for _ in range(iterations):
            y = y + (x0 - model(y, sig[0]))
        x = y
    for i in tqdm(range(len(timesteps) - 1), desc="invert", disable=not progress):
        sigma, sigma_next = sig[i], sig[i + 1]
        y = x + (x - model(x, sigma)) / sigma * (sigma_next - sigma)
        for _ in range(iterations):  # an Euler step from y back to σ must land on x
            y = x + (y - model(y, sigma_next)) / sigma_next * (sigma_next - sigma)
        x = y
    return model.to_model(x, int(timesteps[-1]))
