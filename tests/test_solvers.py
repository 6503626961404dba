"""Few-step solvers and the sampler registry: convergence order on a Gaussian (where the answer is known in closed
form), step for step against diffusers' schedulers, against 250-step DDIM on the tiny official-fixture U-Net, and the
pipelines and CLI verbs that take ``--sampler``."""

from __future__ import annotations

import math

import diffusers
import numpy as np
import pytest
import torch
from test_samplers import SCHEDULES, _oracle

from vidiff.cli import main as cli_main
from vidiff.cli_common import SAMPLER_CHOICES, SPACING_CHOICES
from vidiff.diffusion.samplers import SOLVER_SPACINGS, DiscreteTimeDenoiser, sample, sampler_names, solver_timesteps
from vidiff.diffusion.schedule import NoiseSchedule
from vidiff.diffusion.solvers import SOLVERS, STOCHASTIC, karras_sigmas

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers + numpy 2

SOLVER_NAMES = sorted(SOLVERS)
REQUIRED = ("ddim", "ddpm", "dpmpp_2m", "dpmpp_3m", "unipc", "euler", "euler_a", "heun")

# ---------------------------------------------------------------------------------------------- Gaussian toy problem
# x0 ~ N(μ, s²) per dimension: the exact denoiser is D(x, σ) = μ + s²/(s² + σ²)·(x − μ), and on the probability-flow
# ODE (x − μ)/√(s² + σ²) is constant, so every trajectory is known in closed form.
MU, S, SIGMA_MIN, SIGMA_MAX = 0.5, 0.8, 0.02, 20.0


def _gaussian_denoiser(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return MU + S**2 / (S**2 + float(sigma) ** 2) * (x - MU)


def _gaussian_error(name: str, n: int, **kw) -> float:
    x_T = torch.tensor([3.0, -2.0, 1.0], dtype=torch.float64) * SIGMA_MAX
    sigmas = torch.cat([karras_sigmas(n, SIGMA_MIN, SIGMA_MAX), torch.zeros(1, dtype=torch.float64)])
    out = SOLVERS[name](_gaussian_denoiser, x_T, sigmas, **kw)
    # an exact solver reaches x(σ_min) and then, at the last step into σ = 0, returns D there
    at_min = MU + (x_T - MU) * math.sqrt(S**2 + SIGMA_MIN**2) / math.sqrt(S**2 + SIGMA_MAX**2)
    return (out - _gaussian_denoiser(at_min, torch.tensor(SIGMA_MIN))).abs().max().item()


@pytest.mark.parametrize("name,order", [("euler", 1), ("heun", 2), ("dpmpp_2m", 2), ("dpmpp_3m", 2), ("unipc", 3),
                                        ("euler_a", 1), ("dpmpp_2m_sde", 2)])
def test_convergence_order_on_a_gaussian(name, order):
    """Halving the step size divides the error by 2^order (UniPC-2 with its corrector is third order; DPM-Solver++(3M)
    is held to second order globally by its lower-order warm-up steps, as in diffusers)."""
    kw = {"eta": 0.0} if name in STOCHASTIC else {}
    errors = [_gaussian_error(name, n, **kw) for n in (40, 80, 160)]
    rates = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert min(rates) > order - 0.25, (errors, rates)
    assert errors[-1] < 0.06 / order**2


def test_higher_order_solvers_beat_euler_at_equal_model_evaluations():
    euler = _gaussian_error("euler", 20)
    for name in ("dpmpp_2m", "dpmpp_3m", "unipc"):
        assert _gaussian_error(name, 20) < euler / 5
    assert _gaussian_error("heun", 10) < euler  # two evaluations per step


@pytest.mark.parametrize("name", sorted(STOCHASTIC))
def test_stochastic_solvers_sample_the_data_distribution(name):
    """With η = 1 the SDE samplers draw x0 ~ N(μ, s²) from pure noise; with η = 0 they are their ODE solvers."""
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(20000, dtype=torch.float64, generator=g) * math.sqrt(SIGMA_MAX**2 + S**2) + MU
    sigmas = torch.cat([karras_sigmas(200, SIGMA_MIN, SIGMA_MAX), torch.zeros(1, dtype=torch.float64)])
    noise = lambda i, like: torch.randn(like.shape, dtype=like.dtype, generator=g)  # noqa: E731
    out = SOLVERS[name](_gaussian_denoiser, x_T.clone(), sigmas, eta=1.0, noise=noise)
    assert abs(out.mean().item() - MU) < 0.03 and abs(out.std().item() - S) < 0.03
    ode = {"euler_a": "euler", "dpmpp_2m_sde": "dpmpp_2m"}[name]
    assert torch.allclose(SOLVERS[name](_gaussian_denoiser, x_T[:5], sigmas, eta=0.0),
                          SOLVERS[ode](_gaussian_denoiser, x_T[:5], sigmas), rtol=1e-12, atol=1e-12)


def test_solver_input_errors():
    x = torch.zeros(3)
    for bad in (torch.tensor([1.0, 0.5]), torch.tensor([1.0, 2.0, 0.0]), torch.tensor([0.0])):
        with pytest.raises(ValueError, match="sigmas"):
            SOLVERS["euler"](_gaussian_denoiser, x, bad)
    with pytest.raises(ValueError, match="order"):
        SOLVERS["unipc"](_gaussian_denoiser, x, torch.tensor([1.0, 0.0]), order=4)


# ---------------------------------------------------------------------------------------------- against diffusers
def _toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    tt = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1))) / 1000
    return 0.7 * torch.tanh(x) * (1 - 0.5 * tt) + 0.2 * tt * torch.sin(3 * x)


DIFFUSERS = {
    "dpmpp_2m": (diffusers.DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=2)),
    "dpmpp_3m": (diffusers.DPMSolverMultistepScheduler, dict(algorithm_type="dpmsolver++", solver_order=3)),
    "dpmpp_2m_sde": (diffusers.DPMSolverMultistepScheduler, dict(algorithm_type="sde-dpmsolver++", solver_order=2)),
    "unipc": (diffusers.UniPCMultistepScheduler, dict(solver_order=2)),
    "euler": (diffusers.EulerDiscreteScheduler, {}),
    "euler_a": (diffusers.EulerAncestralDiscreteScheduler, {}),
    "heun": (diffusers.HeunDiscreteScheduler, {}),
}
CASES = [(name, pred, n) for name in DIFFUSERS for pred in ("epsilon", "v_prediction") for n in (8, 20)
         if not (name == "heun" and pred == "v_prediction")]  # diffusers' Heun has no zero-terminal-SNR option


@pytest.mark.parametrize("name,pred,n", CASES)
def test_each_step_matches_diffusers(name, pred, n):
    """Same betas, trailing timesteps, same noise stream: our model-space state after every step equals diffusers'
    (ε on scaled-linear betas; v on betas rescaled to zero terminal SNR, where both clamp ᾱ_T to 2^-24)."""
    zero = pred == "v_prediction"
    schedule = NoiseSchedule(prediction_type=pred, rescale_zero_terminal_snr=zero)
    x_T = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    ours = []
    final = sample(name, _toy_model, x_T, schedule, n, spacing="uniform_trailing", eta=1.0,
                   generator=torch.Generator().manual_seed(1), callback=lambda i, t, x, x0: ours.append(x.clone()))
    cls, kw = DIFFUSERS[name]
    if cls is diffusers.DPMSolverMultistepScheduler or cls is diffusers.UniPCMultistepScheduler:
        kw = {**kw, "final_sigmas_type": "zero"}
    if zero:
        kw = {**kw, "rescale_betas_zero_snr": True}
    ref = cls(trained_betas=schedule.betas.double().numpy(), prediction_type=pred, timestep_spacing="trailing", **kw)
    ref.set_timesteps(n)
    sigma_space = ref.init_noise_sigma != 1.0  # Euler/Heun hold x/α; they start at σ_max·x_T, we at the model's x_T
    x = x_T * float(ref.sigmas[0] ** 2 + 1) ** 0.5 if sigma_space else x_T.clone()
    g = torch.Generator().manual_seed(1)
    theirs = []
    for t in ref.timesteps:
        model_in = ref.scale_model_input(x, t)
        out = _toy_model(model_in, torch.full((x.shape[0],), int(t)))
        x = ref.step(out, t, x, generator=g).prev_sample if "generator" in ref.step.__code__.co_varnames else \
            ref.step(out, t, x).prev_sample
        theirs.append(x.clone())
    tol = 1e-4 if zero else 2e-6  # with zero SNR diffusers also converts the first output with the clamped ᾱ
    scale = final.abs().max().item()
    assert (final - theirs[-1]).abs().max().item() < tol * scale
    if name == "heun":
        return  # diffusers' Heun interleaves its two evaluations as separate steps
    assert len(ours) == len(theirs) == n
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if sigma_space and i + 1 < n:
            b = b / float(ref.sigmas[i + 1] ** 2 + 1) ** 0.5
        assert (a - b).abs().max().item() < tol * max(scale, a.abs().max().item()), f"step {i}"


def test_official_uniform_spacing_matches_diffusers_given_the_timesteps():
    schedule = NoiseSchedule()
    x_T = torch.randn(1, 4, 6, generator=torch.Generator().manual_seed(3))
    steps = solver_timesteps(schedule, 10, "uniform")
    assert steps.tolist() == list(range(901, 0, -100))
    final = sample("dpmpp_2m", _toy_model, x_T, schedule, 10, spacing="uniform")
    ref = diffusers.DPMSolverMultistepScheduler(trained_betas=schedule.betas.double().numpy(), final_sigmas_type="zero")
    ref.set_timesteps(timesteps=steps.tolist())
    x = x_T.clone()
    for t in ref.timesteps:
        x = ref.step(_toy_model(x, torch.full((1,), int(t))), t, x).prev_sample
    assert (final - x).abs().max().item() < 2e-6 * final.abs().max().item()


# ---------------------------------------------------------------------------------------------- the adapter
@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
@pytest.mark.parametrize("name", SOLVER_NAMES)
def test_every_solver_returns_x0_under_an_oracle(name, schedule_name):
    """A model that knows x0 (for ε or v prediction, with VC's or DC's data scale) gives back x0 in data units."""
    schedule = NoiseSchedule(**SCHEDULES[schedule_name])
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 4, 3, 4, 4, generator=g)
    x_T = torch.randn(x0.shape, generator=g)
    spacing = "uniform_trailing" if schedule.is_v_prediction else "karras"
    if schedule.rescale_zero_terminal_snr and not schedule.is_v_prediction:
        pytest.skip("ε models cannot be sampled at zero terminal SNR")
    seen = []
    out = sample(name, _oracle(schedule, x0), x_T, schedule, 6, spacing=spacing, eta=1.0, generator=g,
                 callback=lambda i, t, x, p: seen.append((t, p)))
    assert torch.allclose(out, x0, atol=2e-4, rtol=1e-4)
    assert all(torch.allclose(p, x0, atol=2e-3, rtol=1e-3) for _, p in seen)
    assert [t for t, _ in seen] == solver_timesteps(schedule, 6, spacing).tolist()


def test_adapter_maps_sigmas_to_their_timesteps_and_keeps_x_T():
    schedule = NoiseSchedule(prediction_type="v_prediction", rescale_zero_terminal_snr=True, data_scale="dc",
                             scale_end=0.7)
    seen = {}

    def denoise(x, t):
        seen.setdefault("first", (x.clone(), t.clone()))
        return torch.zeros_like(x)

    model = DiscreteTimeDenoiser(denoise, schedule)
    assert all(model.timestep(model.sigmas[t]) == t for t in (0, 1, 500, 998, 999))
    assert np.all(np.diff(model.sigmas) > 0) and 4000 < model.sigmas[-1] < 7000  # ᾱ_T clamped to 2^-24, s_T = 0.7
    x_T = torch.randn(1, 4, 2, 4, 4)
    sample("dpmpp_2m", denoise, x_T, schedule, 5)
    x_first, t_first = seen["first"]
    assert t_first.tolist() == [999] and torch.allclose(x_first, x_T, rtol=1e-6, atol=1e-6)


def test_karras_spacing_places_distinct_table_steps():
    schedule = NoiseSchedule()
    steps = solver_timesteps(schedule, 25, "karras")
    assert steps[0] == 999 and steps[-1] == 0 and np.all(np.diff(steps) < 0) and len(steps) == 25
    # denser at low noise than the uniform spacing
    assert (steps < 200).sum() > (solver_timesteps(schedule, 25, "uniform_trailing") < 200).sum()
    assert solver_timesteps(schedule, 1000, "karras").tolist() == list(range(999, -1, -1))
    many = solver_timesteps(schedule, 990, "karras")  # more sigmas than low-noise steps: still distinct
    assert len(set(many.tolist())) == 990 and many[0] == 999 and many[-1] == 0
    with pytest.raises(ValueError, match="spacing"):
        solver_timesteps(schedule, 10, "cosine")


def test_registry_names_and_errors():
    names = sampler_names()
    assert set(REQUIRED) <= set(names)
    assert tuple(SAMPLER_CHOICES) == names and tuple(SPACING_CHOICES) == SOLVER_SPACINGS  # the CLI lists the registry
    schedule = NoiseSchedule()
    x_T = torch.randn(1, 4, 2, 4, 4)
    with pytest.raises(ValueError, match="unknown sampler 'plms'"):
        sample("plms", _toy_model, x_T, schedule, 5)
    with pytest.raises(ValueError, match="spacing"):
        sample("ddim", _toy_model, x_T, schedule, 5, spacing="karras")
    with pytest.raises(ValueError, match="zero terminal SNR"):
        sample("euler", _toy_model, x_T, NoiseSchedule(rescale_zero_terminal_snr=True), 5)
    with pytest.raises(ValueError, match="expected a tensor shaped like x"):
        sample("unipc", lambda x, t: x[:, :2], x_T, schedule, 5)


# ---------------------------------------------------------------------------------------------- tiny official U-Net
def _tiny_fixture_denoiser():
    from lvdm_fixtures import FIXTURES_ROOT, load_config, load_tensors

    folder = FIXTURES_ROOT / "vc_sample_tiny"
    if not (folder / "config.json").is_file():
        pytest.skip("vc_sample_tiny fixture not found")
    from test_sampling_fixtures import _build_unet, _context

    cfg = load_config(folder)
    run = cfg["runs"]["vc2_t2v_512"]
    inputs = load_tensors(folder / "inputs.safetensors")
    unet = _build_unet(cfg, run["unet_variant"])
    context = _context(run["context_cond"], inputs)

    def denoise(x, t):
        return unet(x, t, context=context, fps=run["fps"])

    return denoise, inputs["x_T"], run["model_params"]


@pytest.mark.parametrize("kind", ["vc_eps_scaled", "dc_v_zero_snr_scaled"])
def test_solvers_at_25_steps_agree_with_250_step_ddim_on_the_tiny_fixture(kind):
    """The official VideoCrafter2 fixture U-Net under its own schedule (ε, VC data scale) and under DynamiCrafter's
    (v, zero terminal SNR, DC data scale): 25 solver steps land near the 250-step DDIM answer, the second- and
    third-order ones nearer than Euler (which is DDIM at η = 0 on the same timesteps)."""
    from vidiff.diffusion.schedule import schedule_from_official_params

    denoise, x_T, params = _tiny_fixture_denoiser()
    if kind == "vc_eps_scaled":
        schedule, spacing = schedule_from_official_params(params), "uniform"
    else:
        schedule = NoiseSchedule(prediction_type="v_prediction", rescale_zero_terminal_snr=True, data_scale="dc",
                                 scale_end=0.7)
        spacing = "uniform_trailing"
    errors = {}
    for name in SOLVER_NAMES:
        with torch.no_grad():
            out = sample(name, denoise, x_T, schedule, 25, eta=0.0, spacing="uniform_trailing")
        errors[name] = out
    ref = _ddim_reference(denoise, x_T, schedule, spacing)
    errors = {k: ((v - ref).norm() / ref.norm()).item() for k, v in errors.items()}
    for name, err in errors.items():
        assert err < (0.06 if name in ("euler", "euler_a") else 0.03), errors
    for name in ("heun", "dpmpp_2m", "dpmpp_3m", "unipc"):
        assert errors[name] < 0.7 * errors["euler"], errors


def _ddim_reference(denoise, x_T, schedule, spacing) -> torch.Tensor:
    """x0 in data units from 250 DDIM steps at η = 0 (its last x0 prediction; DC's is at the lowest step's scale)."""
    preds = []
    with torch.no_grad():
        sample("ddim", denoise, x_T, schedule, 250, eta=0.0, spacing=spacing,
               callback=lambda i, t, x, p: preds.append((t, p)))
    t, p = preds[-1]
    return p / schedule.scale_arr[t] if schedule.data_scale == "dc" else p


# ---------------------------------------------------------------------------------------------- pipelines and CLI
def test_generate_with_each_fast_solver_and_the_cli_errors(tmp_path, capsys):
    from vidiff.utils.video import read_video

    for name in ("dpmpp_2m", "unipc"):
        out = tmp_path / f"{name}.mp4"
        assert cli_main(["generate", "a red circle moving left", "--sampler", name, "--steps", "3", "--threads", "1",
                         "--frames", "4", "-o", str(out)]) == 0
        assert read_video(str(out))[0].shape[0] == 4
    assert cli_main(["generate", "a red circle", "--sampler", "ddim", "--timestep-spacing", "karras", "--steps", "3",
                     "--threads", "1", "-o", str(tmp_path / "x.mp4")]) != 0
    err = capsys.readouterr().err
    assert "karras" in err and "does not work with the ddim sampler" in err and "Traceback" not in err
    assert cli_main(["generate", "a red circle", "--sampler", "plms"]) != 0
    err = capsys.readouterr().err
    assert "invalid choice: 'plms'" in err and "Traceback" not in err


def test_animate_pipeline_takes_a_solver():
    from vidiff.cli_common import EMBEDDED_MODELS
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    pipe = ImageToVideoPipeline.from_pretrained(EMBEDDED_MODELS / "shapes_i2v")
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    image[20:30, 20:30] = (255, 0, 0)
    fast = pipe(image, "a red square moving right", num_frames=4, num_inference_steps=3, sampler="euler", seed=0,
                progress=False).frames
    ddim = pipe(image, "a red square moving right", num_frames=4, num_inference_steps=3, sampler="ddim", eta=0.0,
                timestep_spacing="uniform_trailing", seed=0, progress=False).frames
    assert tuple(fast.shape) == tuple(ddim.shape) == (1, 4, 64, 64, 3)
    # Euler on the trailing timesteps is DDIM at η = 0, except that its last step goes all the way to σ = 0
    assert (fast.float() - ddim.float()).abs().mean().item() < 4.0
