"""Few-step ODE/SDE solvers of the probability-flow equation, each a short function over a given sigma schedule.

Every solver works in the variance-exploding parameterisation of Karras et al. (2022): the state is x̃ = x0 + σ̃·ε and
the model is a denoiser ``model(x̃, sigma) -> x0``. Any Gaussian forward process x_t = α_t·x0 + σ_t·ε maps to it by
x̃ = x_t/α_t, σ̃ = σ_t/α_t, which is what :class:`vidiff.diffusion.samplers.DiscreteTimeDenoiser` does for the LVDM
schedules (ε or v prediction, data scale, zero terminal SNR). ``sigmas`` is descending and ends at 0; the result is the
clean sample. In λ = −log σ̃ (the half log-SNR) the DPM-Solver++ and UniPC updates below are the papers' data-prediction
forms divided by α_t.

* ``euler``: first order (Karras Alg. 2 without churn); with the sigmas of a discrete schedule it is DDIM at η = 0.
* ``euler_a``: ancestral Euler, each step splits σ_next into a deterministic part and fresh noise (η scales the noise).
* ``heun``: second order, two model evaluations per step (Karras Alg. 2).
* ``dpmpp_2m`` / ``dpmpp_3m``: DPM-Solver++ multistep of order 2 / 3 (Lu et al. 2022), one evaluation per step.
* ``dpmpp_2m_sde``: the SDE variant of DPM-Solver++(2M) (η = 1 the full SDE, 0 the ODE).
* ``unipc``: UniPC (Zhao et al. 2023), B(h) = e^h − 1 ("bh2"), predictor of order 2 and the UniC corrector, which
  reuses the next step's model evaluation and so costs nothing.

The multistep solvers lower their order near the end as diffusers' schedulers do (the last step goes to σ = 0 with the
denoised sample; with fewer than 15 steps DPM-Solver++(3M) takes its second-to-last step at order 2), so with the same
timesteps they agree with diffusers step for step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

__all__ = [
    "SOLVERS",
    "karras_sigmas",
    "register_solver",
    "sample_dpmpp_2m",
    "sample_dpmpp_2m_sde",
    "sample_dpmpp_3m",
    "sample_euler",
    "sample_euler_ancestral",
    "sample_heun",
    "sample_unipc",
]

SigmaDenoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
NoiseSource = Callable[[int, torch.Tensor], torch.Tensor]  # (step index, like) -> standard normal noise shaped like
SolverCallback = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]  # (i, sigma, x after step, denoised)

SOLVERS: dict[str, Callable[..., torch.Tensor]] = {}
# σ̃ above which a noise level stands for σ = ∞: zero-terminal-SNR tables reach ≈ 4096 (ᾱ clamped to 2^-24), ordinary
# ones end near 15 (scaled-linear betas) to 160 (linear betas to 0.02)
NEAR_INFINITE_SIGMA = 1000.0
# solvers whose update draws fresh noise (they take ``eta`` and ``noise``)
STOCHASTIC: set[str] = set()


def register_solver(name: str, stochastic: bool = False) -> Callable:
    """Add a solver under ``name``: ``fn(model, x, sigmas, *, callback, progress[, eta, noise])``."""

    def add(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        if name in SOLVERS:
            raise ValueError(f"a solver named {name!r} is already registered")
        SOLVERS[name] = fn
        if stochastic:
            STOCHASTIC.add(name)
        return fn

    return add


def karras_sigmas(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) Eq. 5: σ_i = (σ_max^(1/ρ) + i/(n−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ, descending, float64."""
    if num_steps < 1 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"karras sigmas need num_steps >= 1 and 0 < sigma_min < sigma_max, got {num_steps}, "
                         f"{sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def _check(x: torch.Tensor, sigmas: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError("x must be a floating-point tensor")
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError("sigmas must be a 1-D tensor of at least two values (the last one 0)")
    if float(sigmas[-1]) != 0.0 or bool((sigmas[1:] >= sigmas[:-1]).any()) or float(sigmas[-2]) <= 0:
        raise ValueError(f"sigmas must be strictly descending, positive, and end at 0; got {sigmas.tolist()}")


def _standard_noise(noise: NoiseSource | None, i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.randn_like(x) if noise is None else noise(i, x)


def _lam(sigma: torch.Tensor) -> float:
    """λ = −log σ̃ (+∞ at σ̃ = 0), in float64."""
    s = float(sigma)
    return math.inf if s == 0.0 else -math.log(s)


@register_solver("euler")
@torch.no_grad()
def sample_euler(model: SigmaDenoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                 callback: SolverCallback | None = None, progress: bool = False) -> torch.Tensor:
    """Euler steps of dx̃/dσ̃ = (x̃ − D)/σ̃."""
    _check(x, sigmas)
    for i in tqdm(range(len(sigmas) - 1), desc="euler", disable=not progress):
        denoised = model(x, sigmas[i])
        d = (x - denoised) / float(sigmas[i])
        x = x + d * float(sigmas[i + 1] - sigmas[i])
        if callback is not None:
            callback(i, sigmas[i + 1], x, denoised)
    return x


def _ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(σ_down, σ_up): σ_up² + σ_down² = σ_next², σ_up = η·√(σ_next²(σ² − σ_next²)/σ²) at most σ_next."""
    if sigma_next == 0.0 or eta == 0.0:
        return sigma_next, 0.0
    up = min(sigma_next, eta * math.sqrt(sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2))
    return math.sqrt(sigma_next**2 - up**2), up


@register_solver("euler_a", stochastic=True)
@torch.no_grad()
def sample_euler_ancestral(model: SigmaDenoiser, x: torch.Tensor, sigmas: torch.Tensor, *, eta: float = 1.0,
                           noise: NoiseSource | None = None, callback: SolverCallback | None = None,
                           progress: bool = False) -> torch.Tensor:
    """Euler to σ_down, then fresh noise of σ_up (η = 0 is plain Euler)."""
    _check(x, sigmas)
    for i in tqdm(range(len(sigmas) - 1), desc="euler_a", disable=not progress):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigmas[i])
        down, up = _ancestral_step(sigma, sigma_next, eta)
        x = x + (x - denoised) / sigma * (down - sigma)
        if up > 0:
            x = x + _standard_noise(noise, i, x) * up
        if callback is not None:
            callback(i, sigmas[i + 1], x, denoised)
    return x


@register_solver("heun")
@torch.no_grad()
def sample_heun(model: SigmaDenoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                callback: SolverCallback | None = None, progress: bool = False) -> torch.Tensor:
    """Heun's method: an Euler step, then the average of the slopes at both ends.

    Steps into σ = 0, and steps from above ``NEAR_INFINITE_SIGMA`` (the zero-terminal-SNR level of a table, σ̃ ≈ 4096),
    are Euler steps: from there the trapezoid over σ is ill-conditioned, while the Euler step is exact in the limit
    σ → ∞ (D is constant along the path).
    """
    _check(x, sigmas)
    for i in tqdm(range(len(sigmas) - 1), desc="heun", disable=not progress):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigmas[i])
        d = (x - denoised) / sigma
        x_euler = x + d * (sigma_next - sigma)
        if sigma_next == 0.0 or sigma > NEAR_INFINITE_SIGMA:
            x = x_euler
        else:
            d_next = (x_euler - model(x_euler, sigmas[i + 1])) / sigma_next
            x = x + (d + d_next) / 2 * (sigma_next - sigma)
        if callback is not None:
            callback(i, sigmas[i + 1], x, denoised)
    return x


def _multistep_order(i: int, n: int, order: int, history: int) -> int:
    """diffusers' rule: warm up from order 1, the last step first order, the one before at most 2 below 15 steps."""
    this = min(order, history + 1)
    if i == n - 1:
        return 1
    if i == n - 2 and n < 15:
        return min(this, 2)
    return this


def _dpmpp_update(x: torch.Tensor, sigma: float, sigma_next: float, lam_hist: list[float],
                  den_hist: list[torch.Tensor], order: int) -> torch.Tensor:
    """One DPM-Solver++ multistep update of the given order from the newest ``order`` denoised samples."""
    if sigma_next == 0.0:
        return den_hist[-1]
    lam_next = -math.log(sigma_next)
    h = lam_next - lam_hist[-1]
    ratio, phi = sigma_next / sigma, -math.expm1(-h)  # σ_next/σ and 1 − e^(−h)
    d0 = den_hist[-1]
    if order == 1:
        return ratio * x + phi * d0
    h0 = lam_hist[-1] - lam_hist[-2]
    d1_0 = (d0 - den_hist[-2]) / (h0 / h)
    if order == 2:
        return ratio * x + phi * d0 + 0.5 * phi * d1_0
    h1 = lam_hist[-2] - lam_hist[-3]
    r0, r1 = h0 / h, h1 / h
    d1_1 = (den_hist[-2] - den_hist[-3]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi2 = phi / h - 1.0  # (1 − e^(−h))/h − 1
    phi3 = phi2 / h + 0.5
    return ratio * x + phi * d0 - phi2 * d1 + phi3 * d2


def _dpmpp_multistep(model: SigmaDenoiser, x: torch.Tensor, sigmas: torch.Tensor, order: int, name: str,
                     callback: SolverCallback | None, progress: bool) -> torch.Tensor:
    _check(x, sigmas)
    n = len(sigmas) - 1
    lam_hist: list[float] = []
    den_hist: list[torch.Tensor] = []
    for i in tqdm(range(n), desc=name, disable=not progress):
        denoised = model(x, sigmas[i])
        lam_hist, den_hist = (lam_hist + [_lam(sigmas[i])])[-order:], (den_hist + [denoised])[-order:]
        this = _multistep_order(i, n, order, len(den_hist) - 1)
        x = _dpmpp_update(x, float(sigmas[i]), float(sigmas[i + 1]), lam_hist, den_hist, this)
        if callback is not None:
            callback(i, sigmas[i + 1], x, denoised)
    return x


@register_solver("dpmpp_2m")
@torch.no_grad()
def sample_dpmpp_2m(model: SigmaDenoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                    callback: SolverCallback | None = None, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(2M): x̃ ← (σ̃'/σ̃)·x̃ + (1 − e^(−h))·(D₀ + (D₀ − D₋₁)/(2r)), r = h₋₁/h."""
    return _dpmpp_multistep(model, x, sigmas, 2, "dpmpp_2m", callback, progress)


@register_solver("dpmpp_3m")
@torch.no_grad()
def sample_dpmpp_3m(model: SigmaDenoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
                    callback: SolverCallback | None = None, progress: bool = False) -> torch.Tensor:
    """DPM-Solver++(3M): third-order multistep data prediction (Lu et al. 2022, Alg. 2 extended to order 3)."""
    return _dpmpp_multistep(model, x, sigmas, 3, "dpmpp_3m", callback, progress)


@register_solver("dpmpp_2m_sde", stochastic=True)
@torch.no_grad()
def sample_dpmpp_2m_sde(model: SigmaDenoiser, x: torch.Tensor, sigmas: torch.Tensor, *, eta: float = 1.0,
                        noise: NoiseSource | None = None, callback: SolverCallback | None = None,
                        progress: bool = False) -> torch.Tensor:
    """SDE-DPM-Solver++(2M), midpoint form: x̃ ← (σ̃'/σ̃)e^(−ηh)x̃ + (1 − e^(−(1+η)h))(D₀ + D₁/2) + σ̃'√(1 − e^(−2ηh))·z."""
    _check(x, sigmas)
    n = len(sigmas) - 1
    prev_denoised, prev_lam = None, None
    for i in tqdm(range(n), desc="dpmpp_2m_sde", disable=not progress):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigmas[i])
        lam = _lam(sigmas[i])
        if sigma_next == 0.0:
            x = denoised
        else:
            h = -math.log(sigma_next) - lam
            eta_h = eta * h
            x_new = (sigma_next / sigma) * math.exp(-eta_h) * x + (-math.expm1(-h - eta_h)) * denoised
            if prev_denoised is not None:
                r = (lam - prev_lam) / h
                x_new = x_new + 0.5 * (-math.expm1(-h - eta_h)) * (denoised - prev_denoised) / r
            if eta > 0:
                x_new = x_new + _standard_noise(noise, i, x) * (sigma_next * math.sqrt(-math.expm1(-2 * eta_h)))
            x = x_new
        prev_denoised, prev_lam = denoised, lam
        if callback is not None:
            callback(i, sigmas[i + 1], x, denoised)
    return x


def _unipc_coefficients(rks: list[float], h: float, order: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """UniPC's linear system R·ρ = b for B(h) = e^h − 1 (Zhao et al. 2023, Alg. 1 with "bh2"); returns (R, b, B(h))."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = h_phi_1
    h_phi_k = h_phi_1 / hh - 1.0
    factorial = 1
    rows, b = [], []
    r = torch.tensor(rks, dtype=torch.float64)
    for k in range(1, order + 1):
        rows.append(r ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return torch.stack(rows), torch.tensor(b, dtype=torch.float64), b_h


def _unipc_step(x: torch.Tensor, sigma: float, sigma_next: float, lam_hist: list[float],
                den_hist: list[torch.Tensor], order: int, denoised_next: torch.Tensor | None = None) -> torch.Tensor:
    """UniP (``denoised_next`` None) or UniC (given the model's x0 at the predicted point) from x̃ at σ to σ_next."""
    lam_next = -math.log(sigma_next)
    h = lam_next - lam_hist[-1]
    d0 = den_hist[-1]
    rks, d1s = [], []
    for k in range(1, order):
        rk = (lam_hist[-1 - k] - lam_hist[-1]) / h
        rks.append(rk)
        d1s.append((den_hist[-1 - k] - d0) / rk)
    rks.append(1.0)
    R, b, b_h = _unipc_coefficients(rks, h, order)
    x_base = (sigma_next / sigma) * x - math.expm1(-h) * d0
    if denoised_next is None:  # predictor
        if not d1s:
            return x_base
        rhos = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        return x_base - b_h * sum(rho * d for rho, d in zip(rhos, d1s))
    rhos = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
    correction = sum((rho * d for rho, d in zip(rhos[:-1], d1s)), torch.zeros_like(x))
    return x_base - b_h * (correction + rhos[-1] * (denoised_next - d0))


@register_solver("unipc")
@torch.no_grad()
def sample_unipc(model: SigmaDenoiser, x: torch.Tensor, sigmas: torch.Tensor, *, order: int = 2,
                 corrector: bool = True, callback: SolverCallback | None = None,
                 progress: bool = False) -> torch.Tensor:
    """UniPC: the UniP predictor of ``order`` and, at each new point, the UniC corrector with the model output there."""
    _check(x, sigmas)
    if order not in (1, 2, 3):
        raise ValueError(f"UniPC order must be 1, 2 or 3, got {order!r}")
    n = len(sigmas) - 1
    lam_hist: list[float] = []
    den_hist: list[torch.Tensor] = []
    last_x, last_order = None, 0
    for i in tqdm(range(n), desc="unipc", disable=not progress):
        sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, sigmas[i])
        if corrector and last_x is not None:
            x = _unipc_step(last_x, float(sigmas[i - 1]), sigma, lam_hist, den_hist, last_order, denoised)
        lam_hist, den_hist = (lam_hist + [_lam(sigmas[i])])[-order:], (den_hist + [denoised])[-order:]
        this = min(order, n - i, len(den_hist))
        last_x, last_order = x, this
        x = denoised if sigma_next == 0.0 else _unipc_step(x, sigma, sigma_next, lam_hist, den_hist, this)
        if callback is not None:
            callback(i, sigmas[i + 1], x, denoised)
    return x
