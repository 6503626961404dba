"""Validation of the analytic shapes-world probes: ~100 % on ground truth, failing on corrupted clips.

A probe that cannot fail is a defect, so every probe is shown both passing on rendered ground truth (all colours,
shapes, motions, sizes, speeds, strides, backgrounds, phrasings, with and without a second object) and failing on clips
corrupted in exactly the way it is meant to catch. Confusion matrices are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
from scipy import ndimage

from vidiff.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    MOTIONS,
    SHAPES,
    SIZES,
    SPEEDS,
    VIDEO_PHRASINGS,
    CaptionAttributes,
    ObjectAttributes,
    SampleSpec,
    ShapesWorld,
    ShapesWorldConfig,
    render,
    shape_area,
)
from vidiff.eval.probes import (
    PROBE_NAMES,
    BatchProbeResult,
    analyse_video,
    classify_shape,
    confusion_matrix,
    format_confusion,
    nearest_colour,
    parse_prompt,
    probe_batch,
    probe_video,
)

CONFIG = ShapesWorldConfig(split="all")
WORLD = ShapesWorld(CONFIG)
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}


def _uint8(video) -> np.ndarray:
    # Exactly vidiff.utils.video.video_to_uint8_frames (clamp, (x + 1) / 2 * 255, truncate), in numpy: per-clip torch
    # calls are needlessly slow on a busy machine.
    v = np.clip(video.numpy(), -1.0, 1.0)
    return ((v + 1.0) / 2.0 * 255).astype(np.uint8).transpose(1, 2, 3, 0).copy()


def _frames(spec: SampleSpec) -> np.ndarray:
    return _uint8(render(spec).video)


def _random_object(rng: np.random.Generator, colour: str, shape: str, motion: str) -> ObjectAttributes:
    size = SIZES[rng.integers(3)]
    speed = "normal" if motion == "still" else SPEEDS[rng.integers(3)]
    return ObjectAttributes(colour, shape, motion, size, speed)


def _design() -> list[SampleSpec]:
    """Every colour x shape x motion triple once (one object), plus 60 two-object clips; the rest drawn at random."""
    rng = np.random.default_rng(2024)
    specs = []
    triples = list(itertools.product(COLOURS, SHAPES, MOTIONS))
    for i, (colour, shape, motion) in enumerate(triples):
        second = None
        if i >= 60 and i % 2 == 0:  # 30 of them get a second object as well
            other = [c for c in COLOURS if c != colour][rng.integers(7)]
            second = _random_object(rng, other, SHAPES[rng.integers(3)], MOTIONS[rng.integers(5)])
        attrs = CaptionAttributes(_random_object(rng, colour, shape, motion), second, tuple(BACKGROUNDS)[i % 4])
        stride = int(rng.integers(1, 5))
        phrasing = VIDEO_PHRASINGS[i % len(VIDEO_PHRASINGS)]
        specs.append(WORLD.make_spec(attrs, stride=stride, phrasing=phrasing, rng=rng))
    two = ShapesWorld(dataclasses.replace(CONFIG, second_object_prob=1.0, seed=7))
    specs += [two.sample_spec(i) for i in range(30)]
    return specs


@pytest.fixture(scope="module")
def truth() -> dict:
    specs = _design()
    samples = [render(s) for s in specs]
    return {
        "specs": specs,
        "samples": samples,
        "videos": [_uint8(s.video) for s in samples],
        "captions": [s.caption for s in samples],
        "strides": [s.stride for s in samples],
    }


@pytest.fixture(scope="module")
def truth_result(truth) -> BatchProbeResult:
    return probe_batch(truth["videos"], truth["captions"], CONFIG, strides=truth["strides"])


def _subset(truth: dict, n: int, moving: bool = False, seed: int = 0) -> list[int]:
    idx = [i for i, s in enumerate(truth["specs"]) if not moving or s.primary.motion != "still"]
    return sorted(np.random.default_rng(seed).choice(idx, size=min(n, len(idx)), replace=False).tolist())


def _print_confusions(title: str, result: BatchProbeResult, probes: tuple[str, ...]) -> None:
    print(
        f"\n== {title}: pass rate {result.pass_rate:.3f}; accuracy "
        + str({k: round(v, 3) for k, v in result.accuracy.items()})
    )
    for probe in probes:
        if probe in result.accuracy:
            print(f"-- {probe} (rows: prompt, columns: detected)\n" + format_confusion(*result.confusion(probe)))


# --------------------------------------------------------------------------------------------------------------------
# ground truth: every probe ~100 %


def test_ground_truth_passes_every_probe(truth, truth_result):
    _print_confusions("ground truth", truth_result, ("colour", "shape", "motion", "size", "speed", "background"))
    n = len(truth["videos"])
    assert truth_result.counts["colour"] == n
    assert truth_result.counts["second_colour"] == sum(s.second is not None for s in truth["specs"]) >= 60
    assert truth_result.counts["speed"] == sum(s.primary.motion != "still" for s in truth["specs"])
    for probe in PROBE_NAMES:
        if probe in ("first_frame", "identity"):
            continue
        assert truth_result.accuracy[probe] >= 0.98, (probe, truth_result.accuracy[probe])
    assert truth_result.pass_rate >= 0.98
    # Every label of every categorical probe was exercised, and the confusion matrices are (nearly) diagonal.
    for probe in ("colour", "shape", "motion", "background"):
        rows, cols, m = confusion_matrix(truth_result.results, probe)
        assert (m.sum(axis=1) > 0).all(), probe
        assert np.trace(m[:, : len(rows)]) >= 0.98 * m.sum(), probe


def test_segmentation_recovers_exact_geometry(truth):
    # Soft coverage makes centroids and areas sub-pixel exact on anti-aliased frames (one-object clips).
    errors, area_errors = [], []
    for spec, sample, video in zip(truth["specs"][:60], truth["samples"][:60], truth["videos"][:60]):
        analysis = analyse_video(video, CONFIG, spec.stride)
        track = analysis.tracks[0]
        assert track.colour == spec.primary.colour and track.presence == 1.0
        found = np.array([o.centroid for o in track.objects])
        errors.append(np.abs(found - sample.centroids.numpy()).max())
        exact = shape_area(spec.primary.shape, spec.primary.radius)
        area_errors.append(max(abs(o.area - exact) / exact for o in track.objects))
    print(f"\nmax centroid error {max(errors):.3f} px, max relative area error {max(area_errors):.4f}")
    assert max(errors) < 0.15
    assert max(area_errors) < 0.03


def test_ground_truth_image_to_video_probes(truth):
    idx = _subset(truth, 40, seed=1)
    videos = [truth["videos"][i] for i in idx]
    result = probe_batch(
        videos,
        [truth["captions"][i] for i in idx],
        CONFIG,
        condition_images=[v[0] for v in videos],
        strides=[truth["strides"][i] for i in idx],
    )
    assert result.accuracy["first_frame"] == 1.0
    assert result.accuracy["identity"] == 1.0
    detected = result.results[0].scores["first_frame"].detected
    assert math.isinf(detected["psnr"]) and detected["ssim"] == pytest.approx(1.0)
    as_json = json.dumps(result.to_dict(), allow_nan=False)  # identical images: PSNR inf is stored as "inf"
    assert json.loads(as_json)["results"][0]["scores"]["first_frame"]["detected"]["psnr"] == "inf"


def test_other_world_sizes_and_lengths():
    config = ShapesWorldConfig(height=48, width=40, num_frames=8, strides=(1, 2), split="all", second_object_prob=0.3)
    world = ShapesWorld(config)
    samples = [world.sample(i) for i in range(40)]
    result = probe_batch(
        [_uint8(s.video) for s in samples],
        [s.caption for s in samples],
        config,
        strides=[s.stride for s in samples],
    )
    for probe, acc in result.accuracy.items():
        assert acc >= 0.97, (probe, acc)


def test_robust_to_mild_noise_blur_and_bad_frames(truth):
    rng = np.random.default_rng(3)
    idx = _subset(truth, 40, seed=2)
    caps, strides = [truth["captions"][i] for i in idx], [truth["strides"][i] for i in idx]
    clean = [truth["videos"][i].astype(np.float64) for i in idx]
    noisy = [np.clip(v + rng.normal(0, 4, v.shape), 0, 255).round().astype(np.uint8) for v in clean]
    blurred = [np.clip(ndimage.gaussian_filter(v, (0, 0.8, 0.8, 0)), 0, 255).round().astype(np.uint8) for v in clean]
    broken = []
    for v in clean:
        v = v.astype(np.uint8)
        bad = rng.choice(len(v), size=2, replace=False)
        v[bad] = v[bad, :1, :1]  # two frames of plain background: the object vanishes twice
        broken.append(v)
    for name, videos in (("noise", noisy), ("blur", blurred), ("2 blank frames", broken)):
        result = probe_batch(videos, caps, CONFIG, strides=strides)
        for probe in ("colour", "shape", "motion", "second_colour", "second_shape", "second_motion"):
            assert result.accuracy.get(probe, 1.0) >= 0.95, (name, probe, result.accuracy)
        if name != "2 blank frames":
            assert result.pass_rate >= 0.95, (name, result.accuracy)
        else:  # the object vanishing is exactly what the consistency probe is for
            assert result.accuracy["consistency"] <= 0.05


# --------------------------------------------------------------------------------------------------------------------
# corrupted clips: the probe that should catch the corruption fails


def _other(rng: np.random.Generator, options, exclude) -> str:
    choices = [o for o in options if o not in exclude]
    return choices[rng.integers(len(choices))]


def _recoloured(spec: SampleSpec, rng: np.random.Generator) -> SampleSpec:
    taken = {spec.primary.colour, spec.second.colour if spec.second else None}
    return dataclasses.replace(spec, primary=dataclasses.replace(spec.primary, colour=_other(rng, COLOURS, taken)))


def test_wrong_colour_fails_colour_probe(truth):
    rng = np.random.default_rng(4)
    idx = _subset(truth, 48, seed=3)
    specs = [_recoloured(truth["specs"][i], rng) for i in idx]
    result = probe_batch([_frames(s) for s in specs], [truth["captions"][i] for i in idx], CONFIG)
    _print_confusions("recoloured object", result, ("colour",))
    assert result.accuracy["colour"] <= 0.05
    detected = [r.scores["colour"].detected for r in result.results]
    assert np.mean([d == s.primary.colour for d, s in zip(detected, specs)]) >= 0.98  # it reads the new colour
    assert result.accuracy["shape"] >= 0.98  # and nothing else is disturbed


def test_swapped_shape_fails_shape_probe(truth):
    rng = np.random.default_rng(5)
    idx = _subset(truth, 48, seed=4)
    specs = []
    for i in idx:
        spec = truth["specs"][i]
        shape = _other(rng, SHAPES, {spec.primary.shape})
        specs.append(dataclasses.replace(spec, primary=dataclasses.replace(spec.primary, shape=shape)))
    result = probe_batch([_frames(s) for s in specs], [truth["captions"][i] for i in idx], CONFIG)
    _print_confusions("swapped shape", result, ("shape",))
    assert result.accuracy["shape"] <= 0.05
    detected = [r.scores["shape"].detected for r in result.results]
    assert np.mean([d == s.primary.shape for d, s in zip(detected, specs)]) >= 0.95
    assert result.accuracy["colour"] >= 0.98


def test_reversed_frames_fail_motion_probe(truth):
    idx = _subset(truth, 48, moving=True, seed=5)
    result = probe_batch(
        [truth["videos"][i][::-1] for i in idx],
        [truth["captions"][i] for i in idx],
        CONFIG,
        strides=[truth["strides"][i] for i in idx],
    )
    _print_confusions("reversed frames", result, ("motion",))
    assert result.accuracy["motion"] <= 0.05
    detected = [r.scores["motion"].detected for r in result.results]
    expected = [OPPOSITE[truth["specs"][i].primary.motion] for i in idx]
    assert np.mean([d == e for d, e in zip(detected, expected)]) >= 0.95
    assert result.accuracy["consistency"] >= 0.98  # a reversed clip is still one coherent object


def test_shuffled_frames_degrade_motion_and_consistency(truth):
    rng = np.random.default_rng(6)
    idx = _subset(truth, 48, moving=True, seed=6)
    videos = []
    for i in idx:
        order = rng.permutation(len(truth["videos"][i]))
        videos.append(truth["videos"][i][order])
    for strides in ([truth["strides"][i] for i in idx], None):
        result = probe_batch(videos, [truth["captions"][i] for i in idx], CONFIG, strides=strides)
        _print_confusions(f"shuffled frames (stride {'known' if strides else 'unknown'})", result, ("motion",))
        assert result.accuracy["motion"] <= 0.15
        assert result.accuracy["consistency"] <= 0.15
        assert result.pass_rate <= 0.05


@pytest.mark.parametrize("kind", ["noise", "blank", "background only"])
def test_noise_and_blank_videos_fail(truth, kind):
    rng = np.random.default_rng(7)
    idx = _subset(truth, 30, seed=7)
    videos = []
    for i in idx:
        shape = truth["videos"][i].shape
        if kind == "noise":
            videos.append(rng.integers(0, 256, shape, dtype=np.uint8))
        elif kind == "blank":
            videos.append(np.full(shape, rng.integers(0, 256, 3), dtype=np.uint8))
        else:
            videos.append(np.broadcast_to(truth["videos"][i][:, :1, :1], shape).copy())
    result = probe_batch(
        videos, [truth["captions"][i] for i in idx], CONFIG, strides=[truth["strides"][i] for i in idx]
    )
    assert result.pass_rate == 0.0
    for probe in ("colour", "shape", "motion", "size", "consistency", "flicker", "second_colour", "second_shape"):
        assert result.accuracy.get(probe, 0.0) == 0.0, (kind, probe)
    assert all("no object" in r.scores["colour"].reason for r in result.results)


def test_flicker_fails_flicker_probe(truth):
    idx = _subset(truth, 30, seed=8)
    videos = []
    for i in idx:
        v = truth["videos"][i].astype(np.int16)
        offset = np.where(np.arange(len(v)) % 2 == 0, 15, -15)[:, None, None, None]  # brightness pumping
        videos.append(np.clip(v + offset, 0, 255).astype(np.uint8))
    result = probe_batch(
        videos, [truth["captions"][i] for i in idx], CONFIG, strides=[truth["strides"][i] for i in idx]
    )
    assert result.accuracy["flicker"] <= 0.05
    assert result.accuracy["colour"] >= 0.95 and result.accuracy["motion"] >= 0.95


def test_missing_second_object_fails_second_probes(truth):
    idx = [i for i, s in enumerate(truth["specs"]) if s.second is not None][:30]
    videos = [_frames(dataclasses.replace(truth["specs"][i], second=None)) for i in idx]
    result = probe_batch(
        videos, [truth["captions"][i] for i in idx], CONFIG, strides=[truth["strides"][i] for i in idx]
    )
    for probe in ("second_colour", "second_shape", "second_motion"):
        assert result.accuracy[probe] == 0.0
    assert result.accuracy["colour"] >= 0.98 and result.accuracy["motion"] >= 0.98


def test_image_to_video_probes_fail_on_wrong_conditioning_and_identity_change(truth):
    rng = np.random.default_rng(9)
    idx = _subset(truth, 36, seed=9)
    caps, strides = [truth["captions"][i] for i in idx], [truth["strides"][i] for i in idx]
    videos = [truth["videos"][i] for i in idx]
    # Conditioning image of another clip: frame 0 does not reproduce it.
    others = [truth["videos"][(i + 17) % len(truth["videos"])][0] for i in idx]
    result = probe_batch(videos, caps, CONFIG, condition_images=others, strides=strides)
    assert result.accuracy["first_frame"] == 0.0
    same = [
        truth["specs"][(i + 17) % len(truth["specs"])].primary.colour == truth["specs"][i].primary.colour
        and truth["specs"][(i + 17) % len(truth["specs"])].primary.shape == truth["specs"][i].primary.shape
        for i in idx
    ]
    assert result.accuracy["identity"] <= np.mean(same) + 0.1  # only clips that happen to share colour and shape
    # The object turns into another colour half-way: identity and consistency fail, frame 0 is still faithful.
    morphed = []
    for i, v in zip(idx, videos):
        changed = _frames(_recoloured(truth["specs"][i], rng))
        morphed.append(np.concatenate([v[: len(v) // 2], changed[len(v) // 2 :]]))
    result = probe_batch(morphed, caps, CONFIG, condition_images=[v[0] for v in videos], strides=strides)
    assert result.accuracy["first_frame"] == 1.0
    assert result.accuracy["identity"] == 0.0
    assert result.accuracy["consistency"] == 0.0


# --------------------------------------------------------------------------------------------------------------------
# units and errors


def test_shape_and_colour_rules():
    assert classify_shape(0.5, -0.57) == "triangle"
    assert classify_shape(math.pi / 4, 0.0) == "circle"
    assert classify_shape(1.0, 0.0) == "square"
    assert classify_shape(0.78, -0.45) == "triangle"  # a blurred triangle keeps its skew
    for name, rgb in COLOURS.items():
        assert nearest_colour(rgb) == name
        assert nearest_colour(np.asarray(rgb) * 0.9 + 0.05) == name


def test_probe_result_reports_reasons_and_serialises(truth):
    spec = truth["specs"][0]
    video = truth["videos"][0]
    ok = probe_video(video, truth["captions"][0], CONFIG, stride=spec.stride)
    assert ok.passed and not ok.failures
    wrong = "a green triangle moving up" if spec.primary.colour != "green" else "a red triangle moving up"
    bad = probe_video(video, wrong, CONFIG, stride=spec.stride)
    assert not bad.passed
    assert any(f.startswith("colour:") for f in bad.failures)
    d = bad.to_dict()
    assert d["passed"] is False and d["scores"]["colour"]["expected"] == parse_prompt(wrong).primary.colour


def test_bad_input_gives_clear_errors(truth):
    video = truth["videos"][0]
    with pytest.raises(ValueError, match="not an unambiguous shapes-world caption"):
        probe_video(video, "a dog playing in the snow", CONFIG)
    with pytest.raises(ValueError, match="words outside the world's vocabulary: dog"):
        probe_video(video, "a red dog", CONFIG)
    with pytest.raises(ValueError, match="uint8"):
        probe_video(video.astype(np.float32), "a red circle moving left", CONFIG)
    with pytest.raises(ValueError, match=r"\(T, H, W, 3\)"):
        probe_video(video[0], "a red circle moving left", CONFIG)
    with pytest.raises(ValueError, match="world config is 64x64"):
        probe_video(video[:, :32, :32], "a red circle moving left", CONFIG)
    with pytest.raises(ValueError, match="stride"):
        probe_video(video, "a red circle moving left", CONFIG, stride=0)
    with pytest.raises(ValueError, match="condition_image"):
        probe_video(video, "a red circle moving left", CONFIG, condition_image=video[0, :10])
    with pytest.raises(ValueError, match="2 videos but 1 prompts"):
        probe_batch([video, video], ["a red circle moving left"], CONFIG)
    with pytest.raises(ValueError, match="no confusion matrix"):
        confusion_matrix([], "flicker")
