"""The shipped shapes-world classifier and FVD-shapes: accuracy on fresh clips, zero self-distance, floor vs corrupted."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vidiff.data.shapes import ShapesWorld, ShapesWorldConfig, render
from vidiff.eval.fvd_shapes import (
    fvd_shapes,
    fvd_shapes_features,
    fvd_shapes_floor,
    fvd_shapes_from_features,
    reference_videos,
)
from vidiff.eval.shapes_classifier import (
    ShapesClassifier,
    ShapesClassifierConfig,
    default_classifier_path,
    features,
    load_shapes_classifier,
    predict,
    save_shapes_classifier,
)

REPO = Path(__file__).resolve().parents[1]
# Seeds never used by the training script (training seed 0, validation seed 1).
FRESH_SEED = 4242
N_SET = 128  # clips per set for the floor comparison (the floor shrinks with n: ~77 at 128, ~16 at 512)


@pytest.fixture(scope="module")
def classifier() -> ShapesClassifier:
    return load_shapes_classifier()


@pytest.fixture(scope="module")
def fresh() -> tuple[torch.Tensor, list[dict]]:
    world = ShapesWorld(ShapesWorldConfig(split="all", seed=FRESH_SEED, second_object_prob=0.25))
    samples = [world.sample(i) for i in range(192)]
    return torch.stack([s.video for s in samples]), [s.labels for s in samples]


def test_packaged_weights_are_small_and_documented():
    folder = default_classifier_path()
    weights = folder / "model.safetensors"
    assert weights.stat().st_size < 5 * 2**20
    n_params = sum(v.numel() for v in load_file(str(weights)).values())
    assert n_params <= 1_000_000
    card = (folder / "README.md").read_text()
    training = json.loads((folder / "training.json").read_text())
    for key in ("steps", "wall_time_s", "validation_accuracy", "seed", "batch_size"):
        assert key in training
    assert f"{training['steps']} steps" in card and "accuracy" in card
    assert min(training["validation_accuracy"].values()) >= 0.95


def test_classifier_accuracy_on_fresh_clips(classifier, fresh):
    videos, labels = fresh
    pred = classifier.predict(videos)
    single = [i for i, lab in enumerate(labels) if not lab["has_second"]]
    accuracy = {}
    for head in ("colour", "shape", "motion", "size"):
        accuracy[head] = np.mean([pred[head][i] == labels[i][head] for i in single])
    accuracy["background"] = np.mean([p == lab["background"] for p, lab in zip(pred["background"], labels)])
    objects = ["two" if lab["has_second"] else "one" for lab in labels]
    accuracy["objects"] = np.mean([p == o for p, o in zip(pred["objects"], objects)])
    print("\nclassifier accuracy on fresh clips:", {k: round(float(v), 4) for k, v in accuracy.items()})
    for head, acc in accuracy.items():
        assert acc >= 0.95, (head, acc)


def test_uint8_and_float_inputs_agree(classifier, fresh):
    # One-object clips: with two objects the colour head has no defined answer and may pick either.
    videos = fresh[0][[i for i, lab in enumerate(fresh[1]) if not lab["has_second"]][:8]]
    as_uint8 = ((videos + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1)
    f_float = classifier.features(videos)
    f_uint8 = features(as_uint8, classifier)
    assert f_float.shape == (8, classifier.config.feature_dim) and f_float.dtype == torch.float64
    assert torch.allclose(f_float, f_uint8, atol=0.05 * float(f_float.abs().max()))
    assert predict(as_uint8, classifier)["colour"] == classifier.predict(videos)["colour"]
    # An iterable of batches gives the same features as one batch.
    assert torch.allclose(classifier.features([videos[:3], videos[3:]], batch_size=2), f_float, atol=1e-5)


@pytest.fixture(scope="module")
def feature_sets(classifier) -> dict[str, torch.Tensor]:
    """Features of the two real sets behind ``fvd_shapes_floor(N_SET, FRESH_SEED)`` and of corrupted copies of one."""
    first = torch.cat(list(reference_videos(N_SET, FRESH_SEED)))
    second = torch.cat(list(reference_videos(N_SET, FRESH_SEED, start=N_SET)))
    g = torch.Generator().manual_seed(0)
    noisy = (second + 0.2 * torch.randn(second.shape, generator=g)).clamp(-1, 1)
    grey = second.mean(dim=1, keepdim=True).expand_as(second)  # colours gone, shapes and motion intact
    sets = {"first": first, "second": second, "noise 0.2": noisy, "greyscale": grey}
    out = {name: fvd_shapes_features(v, classifier) for name, v in sets.items()}
    out["videos"] = first
    return out


def test_fvd_shapes_self_distance_is_zero(classifier, feature_sets):
    f = feature_sets["first"]
    result = fvd_shapes_from_features(f, f, classifier)
    assert result["metric"] == "fvd_shapes" and abs(result["value"]) < 1e-6
    videos = feature_sets["videos"][:12]
    result = fvd_shapes(videos, videos, classifier, sqrtm_method="eigh")
    assert abs(result["value"]) < 1e-6
    protocol = result["protocol"]
    assert protocol["num_real"] == protocol["num_fake"] == 12 and protocol["sqrtm_method"] == "eigh"
    assert protocol["weights_sha256"] == classifier.weights_sha256 and len(protocol["weights_sha256"]) == 64


def test_floor_is_small_next_to_corrupted_sets(classifier, feature_sets):
    f = feature_sets
    floor = fvd_shapes_from_features(f["first"], f["second"], classifier)["value"]
    scores = {
        name: fvd_shapes_from_features(f["first"], f[name], classifier)["value"] for name in ("noise 0.2", "greyscale")
    }
    print(
        f"\nFVD-shapes (n={N_SET}): floor {floor:.1f}; "
        + ", ".join(f"{k} {v:.1f} (x{v / floor:.1f})" for k, v in scores.items())
    )
    assert floor > 0
    for name, value in scores.items():
        assert value >= 5 * floor, (name, value, floor)
    # The floor function is exactly this real-vs-real comparison (checked on a small n to keep the test fast).
    small = fvd_shapes_floor(12, seed=FRESH_SEED, classifier=classifier, sqrtm_method="eigh")
    direct = fvd_shapes(
        f["videos"][:12], torch.cat(list(reference_videos(12, FRESH_SEED, start=12))), classifier, sqrtm_method="eigh"
    )
    assert small["metric"] == "fvd_shapes_floor" and small["value"] == pytest.approx(direct["value"], rel=1e-9)


def test_fvd_shapes_reports_floor_when_asked(classifier, feature_sets):
    videos = feature_sets["videos"][:16]
    frozen = videos[:, :, :1].expand_as(videos)  # every clip stands still on its first frame
    result = fvd_shapes(videos, frozen, classifier, floor_seed=FRESH_SEED + 5, sqrtm_method="eigh")
    assert result["floor"] > 0
    assert result["ratio_to_floor"] == pytest.approx(result["value"] / result["floor"])
    with pytest.raises(ValueError, match="must be \\(n, 128\\)"):
        fvd_shapes_from_features(torch.zeros(4, 7), torch.zeros(4, 128), classifier)


def test_save_load_round_trip_and_errors(tmp_path, fresh):
    torch.manual_seed(0)
    small = ShapesClassifier(
        ShapesClassifierConfig(appearance_channels=(8, 8), motion_channels=(8, 8), feature_dim=16)
    ).eval()
    folder = save_shapes_classifier(small, tmp_path / "clf", readme="# tiny\n", training={"steps": 0})
    loaded = load_shapes_classifier(folder)
    videos = fresh[0][:4]
    assert torch.equal(loaded.features(videos), small.features(videos))
    assert (folder / "README.md").read_text() == "# tiny\n"
    with pytest.raises(FileExistsError):
        save_shapes_classifier(small, folder)
    save_shapes_classifier(small, folder, overwrite=True)
    with pytest.raises(FileNotFoundError, match="no shapes classifier"):
        load_shapes_classifier(tmp_path / "missing")
    config = json.loads((folder / "config.json").read_text())
    config["feature_dim"] = 32
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not fit its config"):
        load_shapes_classifier(folder)
    with pytest.raises(ValueError, match="takes \\(n, 3, 16, 64, 64\\)"):
        small.features(torch.zeros(2, 3, 8, 64, 64))
    with pytest.raises(ValueError, match="\\[-1, 1\\]"):
        small.features(torch.full((2, 3, 16, 64, 64), 3.0))
    with pytest.raises(ValueError, match="unknown shapes-classifier config fields"):
        ShapesClassifierConfig.from_dict({"channel": [8]})
    with pytest.raises(ValueError, match="world clips are"):
        fvd_shapes_floor(4, classifier=small, world_config=ShapesWorldConfig(num_frames=8))
    with pytest.raises(ValueError, match="at least 2 clips"):
        fvd_shapes(videos[:1], videos, small)


def _train_script():
    spec = importlib.util.spec_from_file_location(
        "train_shapes_classifier", REPO / "scripts" / "train_shapes_classifier.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_training_script_is_deterministic_and_writes_a_loadable_folder(tmp_path):
    script = _train_script()
    args = ["--steps", "2", "--batch-size", "4", "--val-size", "8", "--seed", "3", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        assert script.main([*args, "--out", str(tmp_path / "a")]) == 0
        assert script.main([*args, "--out", str(tmp_path / "b")]) == 0
    finally:
        torch.set_num_threads(threads)
    a, b = load_file(str(tmp_path / "a" / "model.safetensors")), load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    training = json.loads((tmp_path / "a" / "training.json").read_text())
    assert training["steps"] == 2 and set(training["validation_accuracy"]) == set(ShapesClassifierConfig().heads)
    model = load_shapes_classifier(tmp_path / "a")
    assert fvd_shapes_features(torch.zeros(2, 3, 16, 64, 64), model).shape == (2, 128)
    with pytest.raises(SystemExit):  # refuses to overwrite without --overwrite
        script.main([*args, "--out", str(tmp_path / "a")])


def test_reference_videos_are_the_world_samples():
    config = ShapesWorldConfig(seed=5)
    batches = list(reference_videos(5, seed=9, world_config=config, start=2, batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1]
    world = ShapesWorld(dataclasses.replace(config, seed=9))
    assert torch.equal(batches[1][0], render(world.sample_spec(4)).video)
