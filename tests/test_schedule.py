"""NoiseSchedule and the DDIM coefficient table against the official sampler's arrays (sampling fixtures)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lvdm_fixtures import load_config, load_manifest, load_tensors, manifests, params

from vidiff.diffusion.sampling import ddim_coefficients, ddim_timesteps
from vidiff.diffusion.schedule import (
    SCHEDULER_CONFIG_NAME,
    NoiseSchedule,
    rescale_betas_zero_terminal_snr,
    schedule_from_official_params,
)

SAMPLE_KINDS = ("vc_sample", "dc_sample")


def _runs(folder):
    return list(load_config(folder)["runs"])


RUN_PARAMS = [p for kind in SAMPLE_KINDS for p in params(kind, _runs)]


def _ac_keys(folder):
    return [k for k in load_tensors(folder / "expected.safetensors", float32=False) if k.endswith("alphas_cumprod")]


AC_PARAMS = [p for kind in SAMPLE_KINDS for p in params(kind, _ac_keys)]


def _rel(ours, ref) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} != {ref.shape}"
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.mark.parametrize("folder,run", RUN_PARAMS)
def test_ddim_arrays_match_official(folder, run):
    cfg = load_config(folder)["runs"][run]
    schedule = schedule_from_official_params(cfg["model_params"])
    co = ddim_coefficients(schedule, cfg["ddim_steps"], cfg["eta"], cfg.get("timestep_spacing", "uniform"))
    assert co.timesteps.tolist() == cfg["ddim_timesteps"]
    if "timesteps_in_order" in cfg:
        assert co.timesteps[::-1].tolist() == cfg["timesteps_in_order"]
    ours = {
        "ddim_alphas": co.alphas,
        "ddim_alphas_prev": co.alphas_prev,
        "ddim_sigmas": co.sigmas,
        "ddim_sqrt_one_minus_alphas": co.sqrt_one_minus_alphas,
        "ddim_scale_arr": co.scale,
        "ddim_scale_arr_prev": co.scale_prev,
    }
    for name, value in ours.items():
        if name not in cfg:
            assert value is None, f"{name}: the official run has no data scale but ours does"
            continue
        assert value is not None, f"{name}: the official run has a data scale but ours does not"
        assert _rel(value, cfg[name]) <= 1e-6, f"{name}: {value} vs {cfg[name]}"
    if cfg.get("scale_arr_len") is not None:
        assert schedule.scale_arr.shape == (cfg["scale_arr_len"],)
    else:
        assert schedule.scale_arr is None
    assert schedule.prediction_type == (
        "v_prediction" if cfg["model_params"].get("parameterization") == "v" else "epsilon"
    )


@pytest.mark.parametrize("folder,key", AC_PARAMS)
def test_alphas_cumprod_match_official(folder, key):
    ref = load_tensors(folder / "expected.safetensors", float32=False)[key]
    runs = load_config(folder)["runs"]
    prefix = key[: -len(".alphas_cumprod")]
    if prefix in runs:
        candidates = [runs[prefix]]
    else:  # a key shared by the folder's runs: compare with every run whose zero-SNR flag fits the reference
        zero_snr = bool(ref[-1] == 0)
        candidates = [r for r in runs.values() if bool(r["model_params"].get("rescale_betas_zero_snr")) == zero_snr]
    assert candidates, f"no run in {folder.name} matches {key}"
    for cfg in candidates:
        ours = schedule_from_official_params(cfg["model_params"]).alphas_cumprod
        assert ours.dtype == ref.dtype == torch.float32
        assert _rel(ours, ref) <= 1e-6


@pytest.mark.parametrize(
    "path",
    [pytest.param(p, id=p.name) for p in manifests()]
    or [pytest.param(None, marks=pytest.mark.skip(reason="no manifests"))],
)
def test_official_buffer_names_and_shapes_match_manifest(path):
    manifest = load_manifest(path)
    buffers = {k: v for k, v in manifest.items() if "." not in k}
    scale_len = buffers.get("scale_arr", [None])[0]
    schedule = NoiseSchedule(data_scale="none" if scale_len is None else "dc", scale_end=0.7, scale_arr_len=scale_len)
    ours = schedule.official_buffers()
    assert list(ours) == list(buffers)
    assert {k: list(v.shape) for k, v in ours.items()} == buffers
    assert all(v.dtype == torch.float32 for v in ours.values())


# ---------------------------------------------------------------------------------------------- invariants


def test_default_schedule_values():
    s = NoiseSchedule()
    assert s.betas.dtype == torch.float32 and s.betas.shape == (1000,)
    assert s.alphas_cumprod[0].item() == pytest.approx(1 - 0.00085, abs=1e-7)
    assert s.betas[-1].item() == pytest.approx(0.012, rel=1e-6)
    assert torch.all(s.alphas_cumprod[1:] < s.alphas_cumprod[:-1])
    assert s.alphas_cumprod_prev[0].item() == 1.0
    assert torch.equal(s.alphas_cumprod_prev[1:], s.alphas_cumprod[:-1])
    assert torch.allclose(s.sqrt_alphas_cumprod**2, s.alphas_cumprod, rtol=1e-6)
    assert torch.allclose(s.sqrt_alphas_cumprod**2 + s.sqrt_one_minus_alphas_cumprod**2, torch.ones(1000), atol=1e-6)
    assert s.posterior_variance[0].item() == 0.0
    assert s.posterior_log_variance_clipped[0].item() == pytest.approx(np.log(1e-20), rel=1e-6)
    assert s.posterior_mean_coef1[0].item() == pytest.approx(1.0, abs=1e-6)
    assert s.posterior_mean_coef2[0].item() == 0.0
    assert torch.all(s.posterior_variance[1:] > 0) and torch.all(s.posterior_variance <= s.betas)
    assert s.scale_arr is None and "scale_arr" not in s.official_buffers()


def test_linear_vs_scaled_linear():
    plain = NoiseSchedule(beta_schedule="linear", beta_start=1e-4, beta_end=2e-2)
    assert torch.allclose(plain.betas, torch.linspace(1e-4, 2e-2, 1000), rtol=1e-5)
    scaled = NoiseSchedule()
    k = np.arange(1000)
    expected = (0.00085**0.5 + k / 999 * (0.012**0.5 - 0.00085**0.5)) ** 2
    assert np.allclose(scaled.betas.numpy(), expected, rtol=1e-6, atol=0)


def test_zero_terminal_snr():
    base = NoiseSchedule(prediction_type="v_prediction")
    zsnr = NoiseSchedule(prediction_type="v_prediction", rescale_zero_terminal_snr=True)
    assert zsnr.alphas_cumprod[-1].item() == 0.0
    assert zsnr.betas[-1].item() == 1.0
    assert zsnr.alphas_cumprod[0].item() == base.alphas_cumprod[0].item()
    assert torch.all(zsnr.alphas_cumprod[1:] < zsnr.alphas_cumprod[:-1])
    assert torch.all(zsnr.alphas_cumprod <= base.alphas_cumprod)
    # v-models store zeros here, as the official checkpoints do
    assert not zsnr.sqrt_recip_alphas_cumprod.any() and not zsnr.sqrt_recipm1_alphas_cumprod.any()
    assert torch.isfinite(torch.stack(list(zsnr.official_buffers().values()))).all()
    # sqrt(ᾱ) after rescaling is an affine map of the old one (Alg. 1)
    old = np.sqrt(base.alphas_cumprod_f64)
    new = np.sqrt(zsnr.alphas_cumprod_f64)
    expected = (old - old[-1]) * old[0] / (old[0] - old[-1])
    assert np.allclose(new, expected, rtol=0, atol=1e-12)


def test_rescale_betas_zero_terminal_snr_direct():
    betas = np.linspace(1e-4, 2e-2, 50)
    out = rescale_betas_zero_terminal_snr(betas)
    ac = np.cumprod(1 - out)
    assert ac[-1] == 0.0 and ac[0] == pytest.approx(1 - 1e-4, rel=1e-12)


@pytest.mark.parametrize("flavour,fix,length", [("vc", False, 1400), ("vc", True, 1000), ("dc", False, 1400)])
def test_scale_arr(flavour, fix, length):
    if flavour == "vc":
        s = schedule_from_official_params({"use_scale": True, "scale_b": 0.7, "fix_scale_bug": fix})
    else:
        s = schedule_from_official_params({"use_dynamic_rescale": True, "base_scale": 0.7})
    assert s.data_scale == flavour
    assert s.scale_arr.shape == (length,) and s.scale_arr.dtype == torch.float32
    assert s.scale_arr[0].item() == 1.0
    assert torch.allclose(s.scale_arr[:400], torch.linspace(1.0, 0.7, 400))
    assert torch.all(s.scale_arr[399:] == torch.tensor(0.7, dtype=torch.float32))
    assert s.official_buffers()["scale_arr"].shape == (length,)


def test_official_defaults_vc_scale_b():
    s = schedule_from_official_params({"use_scale": True})
    assert s.scale_end == 0.3 and s.scale_arr_len == 1400


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"prediction_type": "v_prediction"},
        {"data_scale": "vc", "scale_end": 0.7},
        {"prediction_type": "v_prediction", "data_scale": "dc", "scale_end": 0.3},
        {"prediction_type": "v_prediction", "rescale_zero_terminal_snr": True, "data_scale": "dc", "scale_end": 0.7},
    ],
    ids=["eps", "v", "eps-vc", "v-dc", "v-zsnr-dc"],
)
def test_training_round_trip(kwargs):
    s = NoiseSchedule(**kwargs)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 4, 3, 5, 5, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 1, 250, 401, 750, 999])
    if not s.is_v_prediction and s.rescale_zero_terminal_snr:
        t = t.clamp(max=998)
    x_t = s.add_noise(x0, noise, t)
    target = s.training_target(x0, noise, t)
    if s.is_v_prediction:
        assert not torch.equal(target, noise)
    else:
        assert torch.equal(target, noise)
    assert torch.allclose(s.predict_x0(x_t, target, t), x0, atol=2e-4, rtol=1e-4)
    assert torch.allclose(s.predict_eps(x_t, target, t), noise, atol=2e-4, rtol=1e-4)
    if s.scale_arr is not None:
        scale = s.scale_arr[t].view(-1, 1, 1, 1, 1)
        assert torch.allclose(s.predict_x0(x_t, target, t, unscale=False), x0 * scale, atol=2e-4, rtol=1e-4)
    # the data scale multiplies x0 before the noise is added, as the official training does
    manual = (
        s.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1, 1)
        * (x0 * (s.scale_arr[t].view(-1, 1, 1, 1, 1) if s.scale_arr is not None else 1.0))
        + s.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1, 1) * noise
    )
    assert torch.allclose(x_t, manual, atol=1e-6)


def test_int_timestep_broadcasts():
    s = NoiseSchedule()
    x0, noise = torch.randn(3, 4), torch.randn(3, 4)
    assert torch.equal(s.add_noise(x0, noise, 10), s.add_noise(x0, noise, torch.full((3,), 10)))


# ---------------------------------------------------------------------------------------------- serialisation


def test_to_from_dict_round_trip():
    s = NoiseSchedule(prediction_type="v_prediction", rescale_zero_terminal_snr=True, data_scale="dc", scale_end=0.3)
    d = s.to_dict()
    json.dumps(d)
    s2 = NoiseSchedule.from_dict(d)
    assert s2 == s
    for k, v in s.official_buffers().items():
        assert torch.equal(v, s2.official_buffers()[k])


def test_save_and_load(tmp_path):
    s = schedule_from_official_params({"use_scale": True, "scale_b": 0.7, "fix_scale_bug": True})
    path = s.save_pretrained(tmp_path / "sched")
    assert path == tmp_path / "sched" / SCHEDULER_CONFIG_NAME
    assert sorted(p.name for p in (tmp_path / "sched").iterdir()) == [SCHEDULER_CONFIG_NAME]  # no temp files left
    loaded = NoiseSchedule.from_pretrained(tmp_path / "sched")
    assert loaded == s and torch.equal(loaded.scale_arr, s.scale_arr)
    assert json.loads(path.read_text())["_class_name"] == "NoiseSchedule"


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        NoiseSchedule.from_pretrained(tmp_path)
    (tmp_path / SCHEDULER_CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        NoiseSchedule.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown NoiseSchedule config keys"):
        NoiseSchedule.from_dict({"beta_start": 0.001, "sigma_max": 80})


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"beta_schedule": "cosine"}, "beta_schedule"),
        ({"prediction_type": "sample"}, "prediction_type"),
        ({"data_scale": "xx"}, "data_scale"),
        ({"beta_end": 0.0005}, "beta_end"),
        ({"beta_start": 0.0}, r"\(0, 1\)"),
        ({"num_train_timesteps": 1}, "num_train_timesteps"),
        ({"data_scale": "vc"}, "scale_end"),
        ({"data_scale": "dc", "scale_end": -1.0}, "scale_end"),
        ({"data_scale": "dc", "scale_end": 0.7, "scale_arr_len": 500}, "scale_arr_len"),
        ({"data_scale": "dc", "scale_end": 0.7, "scale_ramp_steps": 0}, "scale_ramp_steps"),
        ({"rescale_zero_terminal_snr": "yes"}, "rescale_zero_terminal_snr"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseSchedule(**kwargs)


@pytest.mark.parametrize(
    "p,match",
    [
        ({"parameterization": "x0"}, "parameterization"),
        ({"beta_schedule": "cosine"}, "beta_schedule"),
        ({"use_scale": True, "use_dynamic_rescale": True}, "both"),
    ],
)
def test_bad_official_params(p, match):
    with pytest.raises(ValueError, match=match):
        schedule_from_official_params(p)


# ---------------------------------------------------------------------------------------------- DDIM timesteps


def test_ddim_timesteps_rules():
    u50 = ddim_timesteps(50)
    assert u50.tolist() == list(range(1, 1000, 20)) and u50.dtype == np.int64
    assert len(ddim_timesteps(30)) == 31  # 1000 // 30 = 33 → more steps than asked, as official
    assert ddim_timesteps(50, "uniform_trailing").tolist() == list(range(19, 1000, 20))
    assert ddim_timesteps(4, "uniform_trailing").tolist() == [249, 499, 749, 999]
    assert ddim_timesteps(1000, "uniform_trailing").tolist() == list(range(1000))
    assert ddim_timesteps(1).tolist() == [1]


@pytest.mark.parametrize(
    "args,match",
    [
        ((0,), "num_steps"),
        ((1001,), "num_steps"),
        ((10, "karras"), "spacing"),
        ((3,), "outside"),
        ((61, "uniform_trailing"), "outside"),
    ],
)
def test_ddim_timesteps_errors(args, match):
    with pytest.raises(ValueError, match=match):
        ddim_timesteps(*args)


def test_ddim_coefficients_sigma_and_eta():
    s = NoiseSchedule()
    co1 = ddim_coefficients(s, 10, eta=1.0)
    co0 = ddim_coefficients(s, 10, eta=0.0)
    assert not co0.sigmas.any()
    a, ap = co1.alphas.astype(np.float64), co1.alphas_prev
    assert np.allclose(co1.sigmas, np.sqrt((1 - ap) / (1 - a) * (1 - a / ap)), rtol=1e-6)
    assert co1.alphas_prev[0] == s.alphas_cumprod[0].item()  # ᾱ[0], not 1
    assert co1.alphas.dtype == np.float32 and co1.sigmas.dtype == np.float64 and co1.alphas_prev.dtype == np.float64
    with pytest.raises(ValueError, match="eta"):
        ddim_coefficients(s, 10, eta=-0.5)
