"""DDIM/DDPM samplers and guidance: the official first step from stored model outputs, oracle denoisers, RNG contract."""

from __future__ import annotations

import pytest
import torch
from lvdm_fixtures import load_config, load_tensors, params, rel_err

from vidiff.diffusion.guidance import (
    classifier_free_guidance,
    guided_denoiser,
    multi_condition_guidance,
    rescale_guidance,
)
from vidiff.diffusion.sampling import ddim_coefficients, sample_ddim, sample_ddpm
from vidiff.diffusion.schedule import NoiseSchedule, schedule_from_official_params

SAMPLE_KINDS = ("vc_sample", "dc_sample")


def _runs_with_step0_outputs(folder):
    keys = load_tensors(folder / "expected.safetensors", float32=False)
    return [run for run in load_config(folder)["runs"] if f"{run}.step0.model_output0" in keys]


STEP0_PARAMS = [p for kind in SAMPLE_KINDS for p in params(kind, _runs_with_step0_outputs)]


class _Stop(Exception):
    pass


def _guided_from_stored(cfg: dict, exp: dict, run: str) -> torch.Tensor:
    m_c = exp[f"{run}.step0.model_output0"]
    m_u = exp[f"{run}.step0.model_output1"]
    key2 = f"{run}.step0.model_output2"
    if key2 in exp:
        guided = multi_condition_guidance(m_c, exp[key2], m_u, cfg["cfg_scale"], cfg.get("cfg_img"))
    else:
        guided = classifier_free_guidance(m_c, m_u, cfg["cfg_scale"])
    return rescale_guidance(guided, m_c, cfg.get("guidance_rescale") or 0.0)


@pytest.mark.parametrize("folder,run", STEP0_PARAMS)
def test_first_ddim_step_matches_official(folder, run):
    """With the official model outputs of step 0, our update reproduces the official x_prev and pred_x0."""
    cfg = load_config(folder)["runs"][run]
    inp = load_tensors(folder / "inputs.safetensors")
    exp = load_tensors(folder / "expected.safetensors")
    schedule = schedule_from_official_params(cfg["model_params"])
    guided = _guided_from_stored(cfg, exp, run)
    seen = {}

    def denoise(x, t):
        assert torch.equal(x, inp["x_T"])
        seen["t"] = t.tolist()
        return guided

    def callback(i, t, x_prev, pred_x0):
        seen.update(x_prev=x_prev, pred_x0=pred_x0, step=t)
        raise _Stop

    with pytest.raises(_Stop):
        sample_ddim(
            denoise,
            inp["x_T"],
            schedule,
            cfg["ddim_steps"],
            eta=cfg["eta"],
            spacing=cfg.get("timestep_spacing", "uniform"),
            noise_fn=lambda i, shape: inp[f"noise_step{i}"],
            callback=callback,
        )
    assert seen["t"] == [cfg["timesteps_in_order"][0]] * inp["x_T"].shape[0]
    assert seen["step"] == cfg["timesteps_in_order"][0]
    err_x = rel_err(seen["x_prev"], exp[f"{run}.step0.x_prev"])
    err_p = rel_err(seen["pred_x0"], exp[f"{run}.step0.pred_x0"])
    assert err_x <= 1e-5, f"x_prev rel err {err_x:.3g}"
    assert err_p <= 1e-5, f"pred_x0 rel err {err_p:.3g}"


# ---------------------------------------------------------------------------------------------- oracle denoisers

SCHEDULES = {
    "eps": dict(),
    "v": dict(prediction_type="v_prediction"),
    "eps-vc": dict(data_scale="vc", scale_end=0.7),
    "v-zsnr-dc": dict(prediction_type="v_prediction", rescale_zero_terminal_snr=True, data_scale="dc", scale_end=0.7),
}


def _oracle(schedule: NoiseSchedule, x0: torch.Tensor):
    """The exact model output for a data set holding the single point x0 (training parameterisation)."""

    def denoise(x, t):
        s = schedule.scale_arr[t].view(-1, *[1] * (x.ndim - 1)) if schedule.scale_arr is not None else 1.0
        sa = schedule.sqrt_alphas_cumprod[t].view(-1, *[1] * (x.ndim - 1))
        s1m = schedule.sqrt_one_minus_alphas_cumprod[t].view(-1, *[1] * (x.ndim - 1))
        noise = (x - sa * s * x0) / s1m
        return schedule.training_target(x0, noise, t)

    return denoise


@pytest.mark.parametrize(
    "name,spacing",
    [(n, sp) for n in SCHEDULES for sp in ("uniform", "uniform_trailing") if not (sp == "uniform" and "zsnr" in n)],
)
def test_ddim_eta0_with_oracle_recovers_x0(name, spacing):
    schedule = NoiseSchedule(**SCHEDULES[name])
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(2, 4, 3, 4, 4, generator=g)
    x_T = torch.randn(x0.shape, generator=g)
    preds = []
    out = sample_ddim(
        _oracle(schedule, x0),
        x_T,
        schedule,
        10,
        eta=0.0,
        spacing=spacing,
        generator=g,
        callback=lambda i, t, x, p: preds.append(p),
    )
    co = ddim_coefficients(schedule, 10, 0.0, spacing)
    assert len(preds) == len(co.timesteps)
    # pred_x0 as the official samplers return it: unscaled (VC), at s_prev (DC), plain otherwise
    if schedule.data_scale == "dc":
        final_scale = float(co.scale_prev[0])
        assert final_scale == pytest.approx(float(co.scale[0]))  # DC duplicates the first entry
    else:
        final_scale = 1.0
    for p in preds:
        assert p.shape == x0.shape
    assert torch.allclose(preds[-1], final_scale * x0, atol=1e-4, rtol=1e-4)
    # x_prev at the lowest step goes to ᾱ[0] (not 1): out = √ᾱ0·s·x0 + √(1−ᾱ0)·ε, ε fixed by x_T for DDIM eta 0
    t_top = int(co.timesteps[-1])
    s_top = schedule.scale_arr[t_top].item() if schedule.scale_arr is not None else 1.0
    eps = (x_T - schedule.sqrt_alphas_cumprod[t_top] * s_top * x0) / schedule.sqrt_one_minus_alphas_cumprod[t_top]
    a0 = schedule.alphas_cumprod[0]
    expected = a0.sqrt() * final_scale * x0 + (1 - a0).sqrt() * eps
    assert torch.allclose(out, expected, atol=1e-4, rtol=1e-4)
    assert (out - final_scale * x0).abs().max() < 0.2  # √(1−ᾱ0) ≈ 0.03


def test_noise_fn_called_once_per_step_even_at_eta0():
    schedule = NoiseSchedule()
    x_T = torch.randn(1, 4, 2, 3, 3)
    calls = []

    def noise_fn(i, shape):
        calls.append((i, shape))
        return torch.full(shape, 1000.0)  # would be visible if it were used at eta 0

    out_a = sample_ddim(lambda x, t: 0.1 * x, x_T, schedule, 30, eta=0.0, noise_fn=noise_fn)
    assert [c[0] for c in calls] == list(range(31))  # 1000 // 30 = 33 → 31 steps, as official
    assert all(c[1] == tuple(x_T.shape) for c in calls)
    out_b = sample_ddim(lambda x, t: 0.1 * x, x_T, schedule, 30, eta=0.0, noise_fn=lambda i, s: torch.zeros(s))
    assert torch.equal(out_a, out_b)


def test_generator_consumption_matches_official_stream():
    """One torch.randn(shape) per step from the generator, so a seed reproduces the official noise stream."""
    schedule = NoiseSchedule()
    x_T = torch.randn(1, 4, 2, 3, 3)
    g = torch.Generator().manual_seed(7)
    sample_ddim(lambda x, t: 0.1 * x, x_T, schedule, 5, eta=0.0, generator=g)
    ref = torch.Generator().manual_seed(7)
    for _ in range(5):
        torch.randn(x_T.shape, generator=ref)
    assert torch.equal(g.get_state(), ref.get_state())
    # with eta > 0 the drawn noise matters, and the same seed gives the same sample
    a = sample_ddim(lambda x, t: 0.1 * x, x_T, schedule, 5, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = sample_ddim(lambda x, t: 0.1 * x, x_T, schedule, 5, eta=1.0, generator=torch.Generator().manual_seed(3))
    c = sample_ddim(lambda x, t: 0.1 * x, x_T, schedule, 5, eta=1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("name", list(SCHEDULES))
@pytest.mark.parametrize("num_steps", [None, 25])
def test_ddpm_with_oracle_ends_at_x0(name, num_steps):
    schedule = NoiseSchedule(**SCHEDULES[name])
    if num_steps is None and schedule.rescale_zero_terminal_snr and not schedule.is_v_prediction:
        pytest.skip("eps + zero-SNR cannot start at t=999")
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(2, 4, 2, 3, 3, generator=g)
    x_T = torch.randn(x0.shape, generator=g)
    calls = []
    out = sample_ddpm(
        _oracle(schedule, x0),
        x_T,
        schedule,
        num_steps=num_steps,
        generator=g,
        callback=lambda i, t, x, p: calls.append(t),
    )
    assert len(calls) == (num_steps or 1000)
    assert calls[0] > calls[-1]
    assert torch.allclose(out, x0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_ddpm_and_ddim_keep_training_marginals(name):
    """With an oracle for a point mass x0, every intermediate x_t must follow N(√ᾱ_t·s_t·x0, 1−ᾱ_t) as in training."""
    schedule = NoiseSchedule(**SCHEDULES[name])
    n = 20000
    x0 = torch.full((n, 1), 0.8)
    g = torch.Generator().manual_seed(5)
    x_T = torch.randn(n, 1, generator=g)
    if schedule.alphas_cumprod[-1] > 0:  # start exactly from the forward marginal at the top step
        x_T = schedule.add_noise(x0, x_T, 999)
    for sampler in ("ddpm", "ddim"):
        seen = {}

        def cb(i, t, x, p, seen=seen):
            seen[i] = x.clone()

        if sampler == "ddpm":
            sample_ddpm(_oracle(schedule, x0), x_T, schedule, num_steps=10, generator=g, callback=cb)
        else:
            sample_ddim(
                _oracle(schedule, x0), x_T, schedule, 10, eta=1.0, spacing="uniform_trailing", generator=g, callback=cb
            )
        # after step i (from the top) x sits at timestep steps[-(i+2)]
        steps = [99, 199, 299, 399, 499, 599, 699, 799, 899, 999]
        for i in (2, 5, 7):
            t_prev = steps[-(i + 2)]
            s = schedule.scale_arr[t_prev].item() if schedule.scale_arr is not None else 1.0
            mean = schedule.sqrt_alphas_cumprod[t_prev].item() * s * 0.8
            std = schedule.sqrt_one_minus_alphas_cumprod[t_prev].item()
            x = seen[i]
            assert x.mean().item() == pytest.approx(mean, abs=0.03), (sampler, i)
            assert x.std().item() == pytest.approx(std, rel=0.03), (sampler, i)


def test_sampler_input_errors():
    s = NoiseSchedule()
    x = torch.randn(1, 4, 2, 2)
    with pytest.raises(ValueError, match="denoise returned"):
        sample_ddim(lambda x, t: x[:, :1], x, s, 4)
    with pytest.raises(ValueError, match="noise_fn"):
        sample_ddim(lambda x, t: x, x, s, 4, noise_fn=lambda i, shape: torch.zeros(2))
    with pytest.raises(ValueError, match="x_T"):
        sample_ddim(lambda x, t: x, torch.zeros(4, dtype=torch.long), s, 4)
    zsnr_eps = NoiseSchedule(rescale_zero_terminal_snr=True)
    with pytest.raises(ValueError, match="zero terminal SNR"):
        sample_ddim(lambda x, t: x, x, zsnr_eps, 4, spacing="uniform_trailing")
    with pytest.raises(ValueError, match="clip_x0"):
        sample_ddpm(lambda x, t: x, x, s, num_steps=4, clip_x0=-1.0)


def test_ddpm_clip_x0():
    s = NoiseSchedule()
    x0 = torch.full((1, 2), 3.0)
    out = sample_ddpm(_oracle(s, x0), torch.randn(1, 2), s, num_steps=5, clip_x0=1.0)
    assert torch.allclose(out, torch.ones(1, 2), atol=1e-5)


def test_progress_bar_runs(capsys):
    s = NoiseSchedule()
    sample_ddim(lambda x, t: 0 * x, torch.randn(1, 2), s, 4, progress=True)
    assert "DDIM" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- guidance


def test_cfg_and_multi_condition():
    g = torch.Generator().manual_seed(0)
    c, ui, u = (torch.randn(2, 3, 4, generator=g) for _ in range(3))
    assert torch.allclose(classifier_free_guidance(c, u, 1.0), c, atol=1e-6)
    assert torch.equal(classifier_free_guidance(c, u, 0.0), u)
    assert torch.allclose(classifier_free_guidance(c, u, 7.5), u + 7.5 * (c - u))
    assert torch.allclose(multi_condition_guidance(c, ui, u, 7.5), classifier_free_guidance(c, u, 7.5), atol=1e-5)
    assert torch.allclose(multi_condition_guidance(c, ui, u, 7.5, 5.0), u + 5.0 * (ui - u) + 7.5 * (c - ui))
    with pytest.raises(ValueError):
        classifier_free_guidance(c, u[:1], 2.0)


def test_rescale_guidance_properties():
    g = torch.Generator().manual_seed(0)
    cond = torch.randn(3, 4, 2, 5, 5, generator=g)
    guided = 4.0 * torch.randn(3, 4, 2, 5, 5, generator=g) + 1.0
    assert torch.equal(rescale_guidance(guided, cond, 0.0), guided)
    full = rescale_guidance(guided, cond, 1.0)
    assert torch.allclose(full.flatten(1).std(dim=1), cond.flatten(1).std(dim=1), rtol=1e-5)
    # unbiased std per sample, computed independently
    ref = guided.double().flatten(1)
    std_m = ((ref - ref.mean(1, keepdim=True)) ** 2).sum(1) / (ref.shape[1] - 1)
    cnd = cond.double().flatten(1)
    std_c = ((cnd - cnd.mean(1, keepdim=True)) ** 2).sum(1) / (cnd.shape[1] - 1)
    factor = (std_c.sqrt() / std_m.sqrt()).view(-1, 1, 1, 1, 1)
    expected = 0.7 * guided.double() * factor + 0.3 * guided.double()
    assert torch.allclose(rescale_guidance(guided, cond, 0.7).double(), expected, rtol=1e-5)
    with pytest.raises(ValueError, match="phi"):
        rescale_guidance(guided, cond, 1.5)


def _toy_model(calls):
    def model(x, t, context=None, fps=None, tag=None):
        calls.append((x.shape[0], tag))
        return x * context.mean(dim=(1, 2)).view(-1, 1, 1) + t.view(-1, 1, 1).float() / 1000 + (fps or 0)

    return model


def test_guided_denoiser_batched_equals_two_passes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 4, generator=g)
    t = torch.tensor([10, 500])
    cond = {"context": torch.randn(2, 5, 6, generator=g), "fps": 8, "tag": None}
    uncond = {"context": torch.randn(2, 5, 6, generator=g), "fps": 8, "tag": None}
    calls_b, calls_s = [], []
    out_b = guided_denoiser(_toy_model(calls_b), cond, uncond, 7.5, rescale=0.7, batch=True)(x, t)
    out_s = guided_denoiser(_toy_model(calls_s), cond, uncond, 7.5, rescale=0.7, batch=False)(x, t)
    assert calls_b == [(4, None)] and calls_s == [(2, None), (2, None)]
    assert torch.allclose(out_b, out_s, atol=1e-6)
    m_c = x * cond["context"].mean(dim=(1, 2)).view(-1, 1, 1) + t.view(-1, 1, 1) / 1000 + 8
    m_u = x * uncond["context"].mean(dim=(1, 2)).view(-1, 1, 1) + t.view(-1, 1, 1) / 1000 + 8
    assert torch.allclose(out_s, rescale_guidance(m_u + 7.5 * (m_c - m_u), m_c, 0.7), atol=1e-6)


def test_guided_denoiser_cond_first_and_single_pass():
    order = []

    def model(x, t, tag):
        order.append(tag)
        return x + (1.0 if tag == "c" else 0.0)

    x, t = torch.zeros(1, 2), torch.tensor([3])
    out = guided_denoiser(model, {"tag": "c"}, {"tag": "u"}, 3.0, batch=False)(x, t)
    assert order == ["c", "u"] and torch.allclose(out, torch.full((1, 2), 3.0))
    order.clear()
    assert torch.equal(guided_denoiser(model, {"tag": "c"}, {"tag": "u"}, 1.0)(x, t), torch.ones(1, 2))
    assert torch.equal(guided_denoiser(model, {"tag": "c"}, None, 7.0)(x, t), torch.ones(1, 2))
    assert order == ["c", "c"]


def test_guided_denoiser_errors():
    model = _toy_model([])
    x, t = torch.zeros(2, 1, 1), torch.tensor([1, 2])
    ctx = torch.zeros(2, 1, 1)
    with pytest.raises(ValueError, match="same keyword arguments"):
        guided_denoiser(model, {"context": ctx}, {"context": ctx, "fps": 3}, 2.0)(x, t)
    with pytest.raises(ValueError, match="differs"):
        guided_denoiser(model, {"context": ctx, "fps": 3}, {"context": ctx, "fps": 4}, 2.0)(x, t)
    with pytest.raises(ValueError, match="some guidance branches only"):
        guided_denoiser(model, {"context": ctx, "fps": 3}, {"context": ctx, "fps": torch.tensor([3, 3])}, 2.0)(x, t)
    with pytest.raises(ValueError, match="rescale"):
        guided_denoiser(model, {}, {}, 2.0, rescale=2.0)
