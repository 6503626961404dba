"""Evaluation metrics: closed forms, independent re-computations and protocol records.

Networks (I3D, Inception, CLIP) run with seeded random weights: what is checked is the architecture's key names and
shapes, the input protocol, determinism, the metric arithmetic around the features, and weight-file round trips.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vidiff.metrics import frechet as frechet_module
from vidiff.metrics.clip_score import clip_frame_consistency, clipsim, load_clip
from vidiff.metrics.feature_networks import evaluating
from vidiff.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from vidiff.metrics.i3d import (
    I3D_MIN_SIZE,
    InceptionI3D,
    VideoFeatures,
    extract_i3d_features,
    fvd,
    kvd,
    load_i3d,
    select_clip,
)
from vidiff.metrics.image_quality import pixel_frame_consistency, psnr, ssim, video_psnr, video_ssim
from vidiff.metrics.inception import (
    FIDInceptionV3,
    ImageFeatures,
    extract_inception_features,
    fid,
    inception_score,
    inception_score_from_logits,
    load_inception,
)
from vidiff.metrics.kernel import kernel_distance
from vidiff.metrics.protocols import (
    CLIPSIMProtocol,
    FrameConsistencyProtocol,
    FVDProtocol,
    VideoFeatureProtocol,
    as_images,
    as_videos,
    iter_batches,
    save_result,
    video_frames_as_images,
)

# --------------------------------------------------------------------------------------------------------------------
# Fréchet distance


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.standard_normal((d, 2 * d))
    return a @ a.T / (2 * d) + 0.1 * np.eye(d)


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_diagonal_closed_form(method):
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
    v1, v2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2), method=method)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("method", ["sqrtm", "eigh"])
def test_frechet_commuting_covariances_closed_form(method):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    d1, d2 = rng.uniform(0.2, 4.0, 8), rng.uniform(0.2, 4.0, 8)
    s1, s2 = q @ np.diag(d1) @ q.T, q @ np.diag(d2) @ q.T
    mu1, mu2 = rng.standard_normal(8), rng.standard_normal(8)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-9)


def test_frechet_one_dimensional_known_value():
    # N(1, 2^2) vs N(4, 3^2): (1 - 4)^2 + (2 - 3)^2 = 10
    assert frechet_distance(1.0, 4.0, 4.0, 9.0) == pytest.approx(10.0, rel=1e-12)
    assert frechet_distance([1.0], [[4.0]], [4.0], [[9.0]], method="eigh") == pytest.approx(10.0, rel=1e-12)


def test_frechet_identical_is_zero_and_symmetric():
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 12), _random_spd(rng, 12)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-10 * np.trace(s1)
    d12, d21 = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
    assert d12 > 0
    assert d12 == pytest.approx(d21, rel=1e-10)
    # the two routes to tr((S1 S2)^1/2) agree on non-commuting covariances
    assert frechet_distance(mu1, s1, mu2, s2, method="eigh") == pytest.approx(d12, rel=1e-10)


def test_frechet_rank_deficient_covariances():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 20)), rng.standard_normal((6, 20)) + 0.5
    (mx, sx), (my, sy) = feature_statistics(x), feature_statistics(y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        by_sqrtm = frechet_distance(mx, sx, my, sy)
        same = frechet_distance(mx, sx, mx, sx)
    assert by_sqrtm == pytest.approx(frechet_distance(mx, sx, my, sy, method="eigh"), rel=1e-5)
    assert abs(same) < 1e-4 * np.trace(sx)


@pytest.mark.parametrize("n", [5, 40])
def test_frechet_from_features_matches_covariance_route(n):
    rng = np.random.default_rng(n)
    x, y = rng.standard_normal((n, 16)), rng.standard_normal((n + 3, 16)) * 0.7 + 0.2
    (mx, sx), (my, sy) = feature_statistics(x), feature_statistics(y)
    reference = frechet_distance(mx, sx, my, sy, method="eigh")
    assert frechet_distance_from_features(x, y, method="eigh") == pytest.approx(reference, rel=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert frechet_distance_from_features(x, y) == pytest.approx(reference, rel=1e-5)
    assert abs(frechet_distance_from_features(x, x, method="eigh")) < 1e-12 * np.trace(sx)


def test_frechet_non_finite_sqrtm_warns_and_retries_with_offset(monkeypatch):
    real_sqrtm = frechet_module._sqrtm
    calls = []

    def flaky(m):
        calls.append(m)
        return np.full_like(m, np.inf) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(frechet_module, "_sqrtm", flaky)
    v1, v2 = np.array([1.0, 4.0]), np.array([9.0, 1.0])
    with pytest.warns(RuntimeWarning, match="eps"):
        got = frechet_distance(np.zeros(2), np.diag(v1), np.zeros(2), np.diag(v2), eps=1e-6)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], np.diag((v1 + 1e-6) * (v2 + 1e-6)))
    assert got == pytest.approx(np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2), rel=1e-5)

    monkeypatch.setattr(frechet_module, "_sqrtm", lambda m: np.full_like(m, np.nan))
    with pytest.warns(RuntimeWarning), pytest.raises(ValueError, match="method='eigh'"):
        frechet_distance(np.zeros(2), np.diag(v1), np.zeros(2), np.diag(v2))


def test_feature_statistics_and_input_errors():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((30, 4)).astype(np.float32)
    mu, sigma = feature_statistics(torch.from_numpy(x))
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(x[:1])
    with pytest.raises(ValueError, match="2-D"):
        feature_statistics(x[0])
    with pytest.raises(ValueError, match="equal length"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")


# --------------------------------------------------------------------------------------------------------------------
# kernel distance


def _mmd2_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    m, d = x.shape

    def k(a, b):
        return (sum(a[i] * b[i] for i in range(d)) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kernel_distance_matches_direct_computation():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((12, 5)), rng.standard_normal((12, 5)) * 1.3 + 0.4
    result = kernel_distance(x, y, num_subsets=1, subset_size=12, seed=0)
    assert result.subset_size == 12 and result.std == 0.0
    assert result.value == pytest.approx(_mmd2_by_loops(x, y), rel=1e-10)


def test_kernel_distance_subsets_are_seeded_and_averaged():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((20, 3)), rng.standard_normal((15, 3)) + 1.0
    result = kernel_distance(x, y, num_subsets=4, subset_size=6, seed=123)
    # the documented sampling: np.random.default_rng(seed), real then fake indices, without replacement
    sampler = np.random.default_rng(123)
    values = []
    for _ in range(4):
        a, b = x[sampler.choice(20, 6, replace=False)], y[sampler.choice(15, 6, replace=False)]
        values.append(_mmd2_by_loops(a, b))
    assert result.value == pytest.approx(np.mean(values), rel=1e-10)
    assert result.std == pytest.approx(np.std(values), rel=1e-8)
    assert kernel_distance(x, y, num_subsets=4, subset_size=6, seed=123) == result
    assert kernel_distance(x, y, num_subsets=4, subset_size=6, seed=124).value != result.value
    # subset size is capped by the smaller set and reported
    assert kernel_distance(x, y, num_subsets=2, subset_size=1000).subset_size == 15


def test_kernel_distance_separates_distributions():
    rng = np.random.default_rng(7)
    x, x2 = rng.standard_normal((200, 8)), rng.standard_normal((200, 8))
    same = kernel_distance(x, x2, num_subsets=10, subset_size=100).value
    shifted = kernel_distance(x, x2 + 1.0, num_subsets=10, subset_size=100).value
    assert abs(same) < 0.05 * shifted
    with pytest.raises(ValueError, match="same width"):
        kernel_distance(x, x[:, :3])


# --------------------------------------------------------------------------------------------------------------------
# I3D / FVD / KVD


def _randomise_norm_stats(model: torch.nn.Module, seed: int) -> None:
    """Give BatchNorm layers and biases non-trivial values so state-dict round trips are meaningful."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)):
                n = module.num_features
                module.weight.copy_(torch.empty(n).uniform_(0.8, 1.2, generator=g))
                module.bias.copy_(torch.randn(n, generator=g) * 0.1)
                module.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                module.running_var.copy_(torch.empty(n).uniform_(0.5, 1.5, generator=g))
            elif isinstance(module, torch.nn.Linear | torch.nn.Conv3d) and module.bias is not None:
                module.bias.copy_(torch.randn(module.bias.shape, generator=g) * 0.1)


@pytest.fixture(scope="module")
def i3d_model():
    torch.manual_seed(0)
    model = InceptionI3D().eval()
    _randomise_norm_stats(model, 1)
    return model


@pytest.fixture(scope="module")
def i3d_videos():
    g = torch.Generator().manual_seed(2)
    real = torch.rand(2, 3, 16, 64, 64, generator=g) * 2 - 1
    fake = (real + 0.5 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    return real, fake


@pytest.fixture(scope="module")
def i3d_features(i3d_model, i3d_videos):
    real, fake = i3d_videos
    both = extract_i3d_features(torch.cat([real, fake]), i3d_model, batch_size=4)
    return (VideoFeatures(both.features[:2], both.protocol), VideoFeatures(both.features[2:], both.protocol))


def test_i3d_standard_key_names_and_shapes(i3d_model):
    state = i3d_model.state_dict()
    expected = {
        "Conv3d_1a_7x7.conv3d.weight": (64, 3, 7, 7, 7),
        "Conv3d_1a_7x7.bn.running_var": (64,),
        "Conv3d_2c_3x3.conv3d.weight": (192, 64, 3, 3, 3),
        "Mixed_3b.b0.conv3d.weight": (64, 192, 1, 1, 1),
        "Mixed_3b.b1b.conv3d.weight": (128, 96, 3, 3, 3),
        "Mixed_4b.b2b.bn.weight": (48,),
        "Mixed_4f.b3b.conv3d.weight": (128, 528, 1, 1, 1),
        "Mixed_5c.b1b.conv3d.weight": (384, 192, 3, 3, 3),
        "logits.conv3d.weight": (400, 1024, 1, 1, 1),
        "logits.conv3d.bias": (400,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any("b3a" in k or "MaxPool" in k for k in state)  # pools carry no parameters
    assert "logits.bn.weight" not in state and "Conv3d_1a_7x7.conv3d.bias" not in state
    assert sum(p.numel() for p in i3d_model.parameters()) == 12_697_264


def test_i3d_rejects_inputs_below_its_minimum(i3d_model):
    with pytest.raises(ValueError, match="at least 9 frames"):
        i3d_model(torch.zeros(1, 3, 8, 224, 224))
    with pytest.raises(ValueError, match="193x193"):
        i3d_model(torch.zeros(1, 3, 16, I3D_MIN_SIZE - 1, 224))
    with pytest.raises(ValueError, match="frames_per_clip"):
        extract_i3d_features(torch.zeros(1, 3, 16, 8, 8), i3d_model, frames_per_clip=8)


def test_i3d_features_shape_and_protocol(i3d_features):
    real, fake = i3d_features
    assert real.features.shape == (2, 400) and real.features.dtype == np.float64
    assert np.isfinite(real.features).all() and real.features.std() > 1e-3
    p = real.protocol
    assert (p.frames_per_clip, p.frame_stride, p.start_frame, p.resolution) == (16, 1, 0, (224, 224))
    assert p.feature_dim == 400 and p.feature_layer.startswith("logits") and p.value_range == "[-1, 1]"


def test_fvd_zero_for_identical_sets_and_grows_with_perturbation(i3d_features):
    real, fake = i3d_features
    same = fvd(real, real, sqrtm_method="eigh")
    diff = fvd(real, fake, sqrtm_method="eigh")
    scale = np.trace(np.cov(real.features, rowvar=False))
    assert abs(same["value"]) < 1e-9 * scale
    assert diff["value"] > 1e-3 * scale
    protocol = diff["protocol"]
    assert diff["metric"] == "fvd"
    assert (protocol["num_real"], protocol["num_fake"], protocol["sqrtm_method"]) == (2, 2, "eigh")
    assert protocol["features"]["frames_per_clip"] == 16 and protocol["features"]["frame_stride"] == 1
    assert protocol["features"]["resolution"] == [224, 224] and protocol["features"]["feature_dim"] == 400
    assert FVDProtocol.from_dict(protocol) == FVDProtocol(2, 2, real.protocol, sqrtm_method="eigh")
    k = kvd(real, fake, num_subsets=3, seed=1)
    assert k["metric"] == "kvd" and k["protocol"]["subset_size"] == 2 and math.isfinite(k["value"])


def test_fvd_refuses_mixed_protocols_and_pixels_without_model():
    rng = np.random.default_rng(14)
    real = VideoFeatures(rng.standard_normal((3, 400)), VideoFeatureProtocol())
    other = VideoFeatures(rng.standard_normal((3, 400)), VideoFeatureProtocol(frame_stride=2))
    with pytest.raises(ValueError, match="different protocols"):
        fvd(real, other)
    with pytest.raises(ValueError, match="I3D model is needed"):
        fvd(real, torch.zeros(2, 3, 16, 8, 8))


def test_evaluating_restores_train_mode_even_when_extraction_fails():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).to(torch.float64).train()
    with pytest.raises(ValueError, match="boom"), evaluating(model) as (device, dtype):
        assert not model.training and not model[1].training
        assert (device, dtype) == (torch.device("cpu"), torch.float64)
        raise ValueError("boom")
    assert model.training and model[1].training
    model.eval()
    with evaluating(model):
        pass
    assert not model.training


def test_select_clip_frame_stride_and_start():
    video = torch.arange(40.0).view(1, 1, 40, 1, 1).expand(1, 3, 40, 2, 2)
    clip = select_clip(video, frames_per_clip=16, frame_stride=2, start_frame=3)
    assert clip[0, 0, :, 0, 0].tolist() == [3.0 + 2 * i for i in range(16)]
    with pytest.raises(ValueError, match="needs 35 frames"):
        select_clip(video[:, :, :34], frames_per_clip=16, frame_stride=2, start_frame=4)


def test_load_i3d_round_trip_determinism_and_errors(tmp_path, i3d_model, i3d_videos, i3d_features):
    state = {k: v for k, v in i3d_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    st_path, pt_path = tmp_path / "i3d.safetensors", tmp_path / "i3d.pt"
    save_file(state, str(st_path))
    torch.save(state, pt_path)
    loaded = load_i3d(st_path)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert loaded.weights_sha256 == hashlib.sha256(st_path.read_bytes()).hexdigest()
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    # a fresh model from the file, one video alone: same features as the original model's batch of four
    feats = extract_i3d_features(i3d_videos[0][:1], loaded, batch_size=1)
    scale = np.abs(i3d_features[0].features).max()
    np.testing.assert_allclose(feats.features[0], i3d_features[0].features[0], atol=1e-4 * scale)
    assert feats.protocol.weights_sha256 == loaded.weights_sha256 and feats.protocol.weights_file == "i3d.safetensors"
    assert load_i3d(pt_path).weights_sha256 == hashlib.sha256(pt_path.read_bytes()).hexdigest()

    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_i3d(tmp_path / "missing.pt")
    renamed = dict(state)
    renamed["Mixed_3b.branch0.weight"] = renamed.pop("Mixed_3b.b0.conv3d.weight")
    torch.save(renamed, tmp_path / "renamed.pt")
    with pytest.raises(ValueError, match=r"missing keys 1: \[Mixed_3b\.b0\.conv3d\.weight\].*Mixed_3b\.branch0"):
        load_i3d(tmp_path / "renamed.pt")
    reshaped = dict(state)
    reshaped["Conv3d_2b_1x1.bn.weight"] = torch.ones(3)
    torch.save(reshaped, tmp_path / "reshaped.pt")
    with pytest.raises(ValueError, match="shape mismatches"):
        load_i3d(tmp_path / "reshaped.pt")


# --------------------------------------------------------------------------------------------------------------------
# Inception / FID / IS


@pytest.fixture(scope="module")
def inception_model():
    torch.manual_seed(3)
    model = FIDInceptionV3().eval()
    _randomise_norm_stats(model, 4)
    return model


@pytest.fixture(scope="module")
def inception_images():
    g = torch.Generator().manual_seed(5)
    real = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    fake = (real + 0.5 * torch.randn(real.shape, generator=g)).clamp(-1, 1)
    return real, fake


@pytest.fixture(scope="module")
def inception_features(inception_model, inception_images):
    both = extract_inception_features(torch.cat(inception_images), inception_model, batch_size=6)
    real = ImageFeatures(both.pool[:3], both.logits[:3], both.protocol)
    fake = ImageFeatures(both.pool[3:], both.logits[3:], both.protocol)
    return real, fake


def test_inception_standard_key_names_and_shapes(inception_model):
    state = inception_model.state_dict()
    expected = {
        "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
        "Conv2d_4a_3x3.bn.running_mean": (192,),
        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
        "fc.weight": (1008, 2048),
        "fc.bias": (1008,),
    }
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key
    assert not any(k.startswith("AuxLogits") for k in state)
    assert sum(p.numel() for p in inception_model.parameters()) == 23_850_960


def test_inception_features_and_fid(inception_features):
    real, fake = inception_features
    assert real.pool.shape == (3, 2048) and real.logits.shape == (3, 1008)
    assert real.protocol.resolution == (299, 299) and real.protocol.feature_dim == 2048
    scale = np.trace(np.cov(real.pool, rowvar=False))
    same, diff = fid(real, real, sqrtm_method="eigh"), fid(real, fake, sqrtm_method="eigh")
    assert abs(same["value"]) < 1e-9 * scale
    assert diff["value"] > 1e-3 * scale
    assert diff["protocol"]["num_real"] == 3 and diff["protocol"]["features"]["feature_layer"] == "pool3"
    score = inception_score(real, splits=1)
    assert score["value"] >= 1.0 and score["protocol"]["splits"] == 1 and score["protocol"]["num_images"] == 3


def test_inception_logits_without_bias_and_uniform_prediction(inception_model, inception_features):
    pool = torch.from_numpy(inception_features[0].pool).float()
    expected = pool.double() @ inception_model.fc.weight.detach().double().T
    np.testing.assert_allclose(inception_features[0].logits, expected.numpy(), rtol=1e-4, atol=1e-5)
    zero_fc = FIDInceptionV3()
    with torch.no_grad():
        zero_fc.fc.weight.zero_()
    assert inception_score_from_logits(zero_fc.class_logits(pool), splits=1) == (1.0, 0.0)


def test_load_inception_round_trip(tmp_path, inception_model, inception_images, inception_features):
    state = {k: v for k, v in inception_model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "pt_inception-2015-12-05.pth"
    torch.save(state, path)
    loaded = load_inception(path)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key
    feats = extract_inception_features(inception_images[0][:1], loaded)
    np.testing.assert_allclose(feats.pool[0], inception_features[0].pool[0], rtol=1e-4, atol=1e-5)
    assert feats.protocol.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    state["fc.weight"] = state["fc.weight"][:, :100]
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="fc.weight"):
        load_inception(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError):
        load_inception(tmp_path / "nothing.pth")


def test_inception_score_closed_forms():
    # identical predictions: KL to the marginal is 0
    assert inception_score_from_logits(np.zeros((8, 1008)), splits=2) == (1.0, 0.0)
    assert inception_score_from_logits(np.tile([3.0, -1.0, 0.5], (6, 1)), splits=3)[0] == pytest.approx(1.0)
    # K equally used, fully confident classes: IS = K
    peaked = 60.0 * np.eye(5)[np.arange(10) % 5]
    assert inception_score_from_logits(peaked, splits=1)[0] == pytest.approx(5.0, rel=1e-12)
    # two classes, predictions (a, 1 - a) and (1 - a, a): IS = 2 a^a (1 - a)^(1 - a)
    a = 0.8
    logits = np.log([[a, 1 - a], [1 - a, a]] * 3)
    assert inception_score_from_logits(logits, splits=1)[0] == pytest.approx(2 * a**a * (1 - a) ** (1 - a), rel=1e-12)
    # contiguous splits: first half uses 2 classes, second half 4 -> scores 2 and 4
    halves = 60.0 * np.concatenate([np.eye(4)[[0, 1, 0, 1]], np.eye(4)[[0, 1, 2, 3]]])
    mean, std = inception_score_from_logits(halves, splits=2)
    assert (mean, std) == (pytest.approx(3.0), pytest.approx(1.0))
    with pytest.raises(ValueError, match="splits"):
        inception_score_from_logits(np.zeros((3, 10)), splits=4)


# --------------------------------------------------------------------------------------------------------------------
# CLIP


@pytest.fixture(scope="module")
def tiny_clip_folder(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=16,
    )
    torch.manual_seed(6)
    folder = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_clip(tiny_clip_folder):
    from transformers import CLIPModel

    reference = CLIPModel.from_pretrained(str(tiny_clip_folder), local_files_only=True).eval()
    return load_clip(tiny_clip_folder), reference


def _pooled(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_clip_embeddings_match_manual_computation(tiny_clip_folder, tiny_clip):
    from vidiff.models.tokenizer import OpenCLIPTokenizer

    clip, reference = tiny_clip
    prompts = ["a red ball bouncing", "a cat"]
    with torch.no_grad():
        manual = _pooled(reference.get_text_features(input_ids=OpenCLIPTokenizer()(prompts)))
    np.testing.assert_allclose(clip.encode_text(prompts), torch.nn.functional.normalize(manual, dim=-1), atol=1e-5)
    files = dict(clip.protocol.weights_sha256)
    assert files["model.safetensors"] == hashlib.sha256((tiny_clip_folder / "model.safetensors").read_bytes()).hexdigest()
    assert clip.protocol.tokenizer.startswith("vidiff OpenCLIP BPE")


def test_clip_preprocess_resizes_shortest_side_and_center_crops(tiny_clip):
    clip = tiny_clip[0]
    g = torch.Generator().manual_seed(7)
    wide = torch.rand(1, 3, 32, 48, generator=g) * 2 - 1  # shortest side already 32: crop only
    mean = torch.tensor(clip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.image_std).view(1, 3, 1, 1)
    expected = ((wide[..., 8:40] + 1) / 2 - mean) / std
    torch.testing.assert_close(clip.preprocess(wide), expected)
    assert clip.preprocess(torch.zeros(2, 3, 64, 80)).shape == (2, 3, 32, 32)


def test_clipsim_and_frame_consistency_match_manual_computation(tiny_clip_folder, tiny_clip):
    from vidiff.models.tokenizer import OpenCLIPTokenizer

    clip, reference = tiny_clip
    g = torch.Generator().manual_seed(8)
    videos = torch.rand(2, 3, 4, 32, 32, generator=g) * 2 - 1
    prompts = ["a dog running on grass", "fireworks at night"]
    mean = torch.tensor(clip.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(clip.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        text = torch.nn.functional.normalize(
            _pooled(reference.get_text_features(input_ids=OpenCLIPTokenizer()(prompts))), dim=-1)
        frames = [((videos[i].transpose(0, 1) + 1) / 2 - mean) / std for i in range(2)]
        images = [torch.nn.functional.normalize(_pooled(reference.get_image_features(pixel_values=f)), dim=-1)
                  for f in frames]
    cos = [images[i] @ text[i] for i in range(2)]
    expected = np.mean([float((100 * c).clamp(min=0).mean()) for c in cos])
    result = clipsim(videos, prompts, clip, batch_size=3)
    assert result["value"] == pytest.approx(expected, rel=1e-5, abs=1e-4)
    raw = clipsim(videos, prompts, clip, scale=1.0, clip_at_zero=False)
    assert raw["value"] == pytest.approx(np.mean([float(c.mean()) for c in cos]), abs=1e-6)
    assert result["protocol"]["scale"] == 100.0 and result["protocol"]["num_frames"] == 4
    assert result["protocol"]["clip"]["image_size"] == 32
    assert CLIPSIMProtocol.from_dict(result["protocol"]).clip == clip.protocol

    consistency = clip_frame_consistency(videos, clip)
    manual = np.mean([float((e[:-1] * e[1:]).sum(-1).mean()) for e in images])
    assert consistency["value"] == pytest.approx(manual, abs=1e-6)
    static = videos[:, :, :1].expand(-1, -1, 4, -1, -1)
    assert clip_frame_consistency(static, clip)["value"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="one prompt per video"):
        clipsim(videos, prompts[:1], clip)
    with pytest.raises(FileNotFoundError):
        load_clip(tiny_clip_folder / "absent")


def test_clip_folder_tokenizer_is_used_and_matches_bundled_one(tmp_path, tiny_clip_folder, tiny_clip):
    """A folder shipping a Hugging Face tokenizer uses it; with the CLIP vocabulary it embeds text like vidiff's BPE."""
    import shutil

    from transformers import CLIPTokenizer

    from vidiff.models.tokenizer import EOT_TEXT, SOT_TEXT, OpenCLIPTokenizer

    bundled = OpenCLIPTokenizer()
    renamed = {SOT_TEXT: "<|startoftext|>", EOT_TEXT: "<|endoftext|>"}
    (tmp_path / "vocab.json").write_text(json.dumps({renamed.get(k, k): v for k, v in bundled._ids.items()}))
    merges = sorted(bundled._merge_rank, key=bundled._merge_rank.get)
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    folder = tmp_path / "clip_with_tokenizer"
    shutil.copytree(tiny_clip_folder, folder)
    CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")).save_pretrained(str(folder))
    clip = load_clip(folder)
    assert clip.protocol.tokenizer.startswith("Hugging Face tokenizer")
    prompts = ["A red ball, bouncing!", "naïve café at 3 o'clock"]
    ids = clip.tokenizer(prompts)
    assert ids.shape == (2, 77) and ids[0, 0] == 49406
    np.testing.assert_allclose(clip.encode_text(prompts), tiny_clip[0].encode_text(prompts), atol=1e-6)


# --------------------------------------------------------------------------------------------------------------------
# PSNR, SSIM, pixel frame consistency


def _ssim_numpy(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
    """Independent SSIM (Wang et al. 2004) for (C, H, W) arrays with scipy's Gaussian filter, valid region only."""
    from scipy.ndimage import gaussian_filter

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for x, y in zip(a.astype(np.float64), b.astype(np.float64)):
        def blur(z):
            return gaussian_filter(z, sigma=1.5, truncate=3.5)
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
        values.append(s[5:-5, 5:-5].mean())
    return float(np.mean(values))


def _test_images(seed: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:40, 0:37] / 10.0
    base = np.stack([np.sin(xx + c) * np.cos(yy * (c + 1)) for c in range(3)]) * 0.4 + 0.5
    noisy = np.clip(base + rng.normal(0, 0.08, base.shape), 0, 1)
    return base * scale, noisy * scale


@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_ssim_matches_independent_implementations(data_range):
    a, b = _test_images(9, data_range)
    got = float(ssim(torch.from_numpy(b), torch.from_numpy(a), data_range))
    assert got == pytest.approx(_ssim_numpy(b, a, data_range), abs=1e-9)
    assert 0.2 < got < 0.99
    skimage_metrics = pytest.importorskip("skimage.metrics")
    reference = skimage_metrics.structural_similarity(b, a, data_range=data_range, channel_axis=0,
                                                      gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert got == pytest.approx(reference, abs=1e-9)
    assert float(ssim(torch.from_numpy(a), torch.from_numpy(a), data_range)) == pytest.approx(1.0, abs=1e-12)


def test_psnr_matches_direct_computation():
    a, b = _test_images(10, 255.0)
    expected = 10 * np.log10(255.0**2 / np.mean((a - b) ** 2))
    assert float(psnr(torch.from_numpy(b), torch.from_numpy(a), 255.0)) == pytest.approx(expected, rel=1e-12)
    batch = torch.from_numpy(np.stack([a, b]))
    per_image = psnr(batch, torch.from_numpy(np.stack([b, b])), 255.0)
    assert per_image.shape == (2,) and per_image[0] == pytest.approx(expected) and math.isinf(per_image[1])
    with pytest.raises(ValueError, match="data_range"):
        psnr(batch, batch, 0)
    with pytest.raises(ValueError, match="same shape"):
        ssim(batch, batch[:1, :2], 1.0)


def test_video_psnr_ssim_per_frame_protocol():
    g = torch.Generator().manual_seed(11)
    real = torch.randint(0, 256, (2, 3, 16, 16, 3), dtype=torch.uint8, generator=g)
    noise = torch.randint(-20, 21, real.shape, generator=g)
    fake = (real.int() + noise).clamp(0, 255).to(torch.uint8)
    result = video_psnr(real, fake, batch_size=1)
    r, f = real.double() / 255, fake.double() / 255
    frame_psnr = 10 * torch.log10(1.0 / ((r - f) ** 2).mean(dim=(2, 3, 4)))
    np.testing.assert_allclose(result["per_video"], frame_psnr.mean(1).numpy(), rtol=1e-6)
    assert result["protocol"]["num_frames"] == 3 and result["protocol"]["data_range"] == 1.0
    # the float [-1, 1] layout of the same frames gives the same numbers
    as_float = real.permute(0, 4, 1, 2, 3).double() / 127.5 - 1
    fake_float = fake.permute(0, 4, 1, 2, 3).double() / 127.5 - 1
    assert video_psnr(as_float, fake_float)["value"] == pytest.approx(result["value"], rel=1e-5)
    s = video_ssim(real, fake)
    manual = np.mean([_ssim_numpy(f[i, t].permute(2, 0, 1).numpy(), r[i, t].permute(2, 0, 1).numpy(), 1.0)
                      for i in range(2) for t in range(3)])
    assert s["value"] == pytest.approx(manual, abs=1e-6)
    assert s["protocol"]["window"] == "Gaussian 11x11, sigma 1.5" and s["protocol"]["k2"] == 0.03
    assert video_ssim(real, real)["value"] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="same shape"):
        video_psnr(real, fake[:1])
    with pytest.raises(ValueError, match="different numbers"):
        video_psnr([real[:1], real[1:]], [fake[:1]])


def test_pixel_frame_consistency():
    g = torch.Generator().manual_seed(12)
    frame = torch.rand(1, 3, 1, 8, 8, generator=g) * 2 - 1
    static = frame.expand(-1, -1, 5, -1, -1)
    assert pixel_frame_consistency(static)["value"] == pytest.approx(1.0, abs=1e-12)
    flicker = torch.cat([frame, -frame, frame], dim=2)
    assert pixel_frame_consistency(flicker)["value"] == pytest.approx(-1.0, abs=1e-12)
    videos = torch.rand(2, 3, 4, 8, 8, generator=g) * 2 - 1
    flat = videos.transpose(1, 2).flatten(2).double()
    manual = [np.mean([float(flat[i, t] @ flat[i, t + 1] / (flat[i, t].norm() * flat[i, t + 1].norm()))
                       for t in range(3)]) for i in range(2)]
    result = pixel_frame_consistency(videos)
    np.testing.assert_allclose(result["per_video"], manual, rtol=1e-6)
    assert result["protocol"]["space"] == "pixel" and result["protocol"]["clip"] is None
    assert FrameConsistencyProtocol.from_dict(result["protocol"]).to_dict() == result["protocol"]


# --------------------------------------------------------------------------------------------------------------------
# input conventions and result files


def test_input_layouts_and_errors():
    g = torch.Generator().manual_seed(13)
    frames = torch.randint(0, 256, (2, 4, 5, 6, 3), dtype=torch.uint8, generator=g)
    videos = as_videos(frames)
    assert videos.shape == (2, 3, 4, 5, 6)
    assert videos[1, 2, 3, 4, 5] == pytest.approx(frames[1, 3, 4, 5, 2].item() / 127.5 - 1)
    assert torch.equal(as_videos(videos), videos)
    images = video_frames_as_images(videos)
    assert images.shape == (8, 3, 5, 6) and torch.equal(images[5], videos[1, :, 1])
    assert torch.equal(as_images(video_frames_as_images(frames)), images)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        as_videos(videos * 255)
    with pytest.raises(ValueError, match=r"\(n, 3, t, h, w\)"):
        as_videos(videos[0])
    with pytest.raises(ValueError, match="uint8"):
        as_images(frames)
    batches = list(iter_batches([videos, videos[:1]], 2))
    assert [b.shape[0] for b in batches] == [2, 1]
    assert [b.shape[0] for b in iter_batches(np.zeros((5, 3, 2, 2)), 2)] == [2, 2, 1]
    with pytest.raises(ValueError, match="no items"):
        list(iter_batches([], 2))


def test_protocol_json_round_trip(tmp_path):
    protocol = FVDProtocol(num_real=2048, num_fake=2048, features=VideoFeatureProtocol(frame_stride=4,
                           weights_sha256="ab" * 32))
    data = json.loads(protocol.to_json())
    assert data["features"]["frame_stride"] == 4 and data["features"]["resolution"] == [224, 224]
    assert FVDProtocol.from_dict(data) == protocol
    result = {"metric": "fvd", "value": 123.4, "protocol": data}
    path = save_result(result, tmp_path / "fvd.json")
    assert json.loads(path.read_text()) == result
    with pytest.raises(ValueError, match="unknown"):
        FVDProtocol.from_dict({**data, "resize": "nearest"})
