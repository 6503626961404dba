"""The procedural shapes world: determinism, exact ground truth, captions and the held-out split."""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vidiff.data.shapes import (
    BACKGROUNDS,
    COLOURS,
    HELDOUT_TRIPLES,
    IMAGE_PHRASINGS,
    MOTIONS,
    SHAPES,
    TRAIN_TRIPLES,
    VIDEO_PHRASINGS,
    CaptionAttributes,
    ObjectAttributes,
    ShapesImageDataset,
    ShapesVideoDataset,
    ShapesWorld,
    ShapesWorldConfig,
    caption,
    parse_caption,
    render,
    sample_spec,
    shape_area,
    to_uint8,
    triples_for_split,
    unknown_words,
    vocabulary,
)

WORLD = ShapesWorld()
T, H, W = 16, 64, 64


def _spec(
    colour="red",
    shape="circle",
    motion="left",
    size="medium",
    speed="normal",
    stride=1,
    seed=0,
    world=WORLD,
    second=None,
    background="black",
):
    attrs = CaptionAttributes(ObjectAttributes(colour, shape, motion, size, speed), second, background)
    return world.make_spec(attrs, stride=stride, rng=seed)


def _mask_centroids(masks: torch.Tensor) -> torch.Tensor:
    """Coverage-weighted centroid (x, y) per frame, pixel centres on integers."""
    t, h, w = masks.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    m = masks.double()
    total = m.sum(dim=(1, 2))
    return torch.stack([(m * xs).sum(dim=(1, 2)) / total, (m * ys).sum(dim=(1, 2)) / total], dim=1)


def _pixel_centres(h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return xs, ys


# --------------------------------------------------------------------------------------------------------------------
# determinism and tensor contract


def test_same_seed_and_index_give_identical_tensors_and_different_indices_differ():
    a, b = ShapesVideoDataset(length=50), ShapesVideoDataset(ShapesWorldConfig(seed=0), length=50)
    for i in (0, 7, 49):
        x, y = a[i], b[i]
        assert x["caption"] == y["caption"]
        for key in ("video", "masks", "centroids", "boxes", "flow", "fps", "frame_stride"):
            assert torch.equal(x[key], y[key]), key
    assert not torch.equal(a[3]["video"], a[4]["video"])
    other_seed = ShapesVideoDataset(ShapesWorldConfig(seed=1), length=50)
    assert not torch.equal(a[3]["video"], other_seed[3]["video"])
    spec = WORLD.sample_spec(11)
    assert spec == WORLD.sample_spec(11) == sample_spec(11)
    assert torch.equal(render(spec).video, render(spec).video)
    assert WORLD.sample_spec(np.random.default_rng(5)) == WORLD.sample_spec(np.random.default_rng(5))


def test_video_item_layout_and_batching():
    ds = ShapesVideoDataset(length=8)
    item = ds[0]
    assert item["video"].shape == (3, T, H, W) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    assert item["masks"].shape == (T, H, W) and item["centroids"].shape == (T, 2) and item["boxes"].shape == (T, 4)
    assert item["flow"].shape == (T - 1, 2, H, W)
    assert math.isclose(float(item["fps"]), 16.0 / int(item["frame_stride"]), rel_tol=1e-6)
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch["video"].shape == (4, 3, T, H, W)
    assert batch["fps"].dtype == torch.float32 and batch["frame_stride"].dtype == torch.int64
    assert len(batch["caption"]) == 4 and len(batch["labels"]["colour"]) == 4
    assert batch["second_masks"].shape == (4, T, H, W)
    with pytest.raises(IndexError):
        ds[8]
    assert ds[-1]["caption"] == ds[7]["caption"]


def test_uint8_helpers():
    sample = WORLD.sample(0)
    u = to_uint8(sample.video)
    assert u.dtype == torch.uint8 and u.shape == sample.video.shape
    assert torch.equal(u, ((sample.video + 1) * 127.5).round().to(torch.uint8))
    frames = sample.uint8_frames()
    assert frames.shape == (T, H, W, 3) and frames.dtype == torch.uint8
    with pytest.raises(ValueError):
        to_uint8(u)


# --------------------------------------------------------------------------------------------------------------------
# ground truth


@pytest.mark.parametrize("index", range(12))
def test_object_pixel_colour_matches_caption(index):
    sample = WORLD.sample(index)
    parsed = parse_caption(sample.caption)
    full = sample.masks == 1
    assert full.sum() > 20
    pixels = sample.video.permute(1, 2, 3, 0)[full]  # (N, 3)
    expected = torch.tensor(COLOURS[parsed.primary.colour]) * 2 - 1
    assert torch.allclose(pixels, expected.expand_as(pixels), atol=1e-5)
    palette = torch.tensor(list(COLOURS.values())) * 2 - 1
    nearest = torch.cdist(pixels.mean(0, keepdim=True), palette).argmin().item()
    assert list(COLOURS)[nearest] == parsed.primary.colour
    background = (sample.masks == 0) & ((sample.second.masks == 0) if sample.second else True)
    bg = sample.video.permute(1, 2, 3, 0)[background]
    assert torch.allclose(bg, (torch.tensor(BACKGROUNDS[parsed.background]) * 2 - 1).expand_as(bg), atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("motion", MOTIONS)
def test_centroid_moves_in_captioned_direction_by_expected_amount(shape, motion):
    stride = 2
    spec = _spec(shape=shape, motion=motion, stride=stride, seed=3)
    sample = render(spec)
    assert parse_caption(sample.caption).primary.motion == motion
    measured = _mask_centroids(sample.masks)
    assert torch.allclose(measured.float(), sample.centroids, atol=0.06)  # ground truth centroid = mask centroid
    step = WORLD.speed("normal") * stride
    expected_dir = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1), "still": (0, 0)}[motion]
    displacement = measured[-1] - measured[0]
    expected = torch.tensor(expected_dir, dtype=torch.float64) * step * (T - 1)
    assert torch.allclose(displacement, expected, atol=0.1), (displacement, expected)
    if motion == "still":
        assert torch.equal(sample.video[:, 0], sample.video[:, -1])
    else:
        assert displacement.norm() > 5.0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("motion", ["left", "up", "down", "right"])
def test_flow_matches_centroids_and_warps_frame_t_onto_frame_t_plus_1(shape, motion):
    sample = render(_spec(shape=shape, motion=motion, stride=3, speed="fast", size="large", seed=1))
    steps = sample.centroids[1:] - sample.centroids[:-1]
    for t in range(T - 1):
        on = sample.masks[t] > 0
        assert torch.allclose(sample.flow[t][:, on], steps[t][:, None].expand(2, int(on.sum())), atol=1e-4)
        assert torch.all(sample.flow[t][:, ~on] == 0)
    xs, ys = _pixel_centres(H, W)

    def warp_error(flow_scale: float) -> float:
        errors = []
        for t in range(0, T - 1, 3):
            v = sample.flow[t][:, sample.masks[t] > 0][:, 0] * flow_scale
            # backward sampling: frame_{t+1}(q) ~ frame_t(q - v)
            gx = (xs - v[0]) / (W - 1) * 2 - 1
            gy = (ys - v[1]) / (H - 1) * 2 - 1
            grid = torch.stack([gx, gy], dim=-1)[None]
            warped = F.grid_sample(sample.video[:, t][None], grid, align_corners=True, padding_mode="border")[0]
            on_next = sample.masks[t + 1] > 0.5
            errors.append((warped - sample.video[:, t + 1]).abs()[:, on_next].mean().item())
        return max(errors)

    good, bad = warp_error(1.0), warp_error(0.0)
    assert good < 0.02, good
    assert bad > 5 * good and bad > 0.05


@pytest.mark.parametrize("shape", SHAPES)
def test_masks_boxes_and_areas_are_consistent(shape):
    for seed, size in ((0, "small"), (1, "medium"), (2, "large")):
        spec = _spec(shape=shape, size=size, motion="right", speed="fast", stride=4, seed=seed)
        sample = render(spec)
        xs, ys = _pixel_centres(H, W)
        for t in (0, 7, 15):
            x0, y0, x1, y1 = sample.boxes[t].tolist()
            touched = sample.masks[t] > 0
            assert torch.all((xs[touched] >= x0 - 0.5) & (xs[touched] <= x1 + 0.5))
            assert torch.all((ys[touched] >= y0 - 0.5) & (ys[touched] <= y1 + 0.5))
            # the box is tight: the object reaches within one pixel of each side
            assert xs[touched].min() <= x0 + 1 and xs[touched].max() >= x1 - 1
            assert ys[touched].min() <= y0 + 1 and ys[touched].max() >= y1 - 1
            assert math.isclose(sample.masks[t].sum().item(), shape_area(shape, spec.primary.radius), rel_tol=2e-3)
        if shape == "square":  # pixels wholly inside the box are fully covered
            inner = (xs >= x0 + 0.5) & (xs <= x1 - 0.5) & (ys >= y0 + 0.5) & (ys <= y1 - 0.5)
            assert torch.all(sample.masks[15][inner] == 1)


@pytest.mark.parametrize("shape", SHAPES)
def test_edges_are_anti_aliased(shape):
    sample = render(_spec(shape=shape, size="large", seed=4))
    m = sample.masks
    fractional = (m > 0.05) & (m < 0.95)
    assert fractional.sum() > 10 * T
    assert len(torch.unique(m)) > 20
    # the video carries those intermediate colours too
    red = (sample.video[0] + 1) / 2
    assert ((red > 0.05) & (red < 0.85)).sum() > 10 * T


def test_second_object_truth_and_occlusion_order():
    cfg = ShapesWorldConfig(second_object_prob=1.0)
    world = ShapesWorld(cfg)
    seen = 0
    for i in range(6):
        s = world.sample(i)
        assert s.second is not None and s.labels["has_second"]
        assert s.labels["second_colour"] != s.labels["colour"]
        v2 = torch.tensor(s.spec.second.velocity, dtype=torch.float32)
        only2 = (s.second.masks[:-1] > 0) & (s.masks[:-1] == 0)
        assert torch.allclose(s.flow.permute(0, 2, 3, 1)[only2], v2.expand(int(only2.sum()), 2))
        full2 = s.second.masks == 1
        pix = s.video.permute(1, 2, 3, 0)[full2]
        assert torch.allclose(pix, (torch.tensor(COLOURS[s.labels["second_colour"]]) * 2 - 1).expand_as(pix), atol=1e-5)
        assert torch.all(s.second.masks <= 1 - s.masks + 1e-6)  # visible coverage never exceeds what the top leaves
        seen += int(full2.sum() > 0)
    assert seen == 6


def test_objects_stay_in_frame():
    for config in (ShapesWorldConfig(second_object_prob=0.5), ShapesWorldConfig(height=32, width=48, num_frames=24)):
        world = ShapesWorld(config)
        for i in range(60):
            spec = world.sample_spec(i)
            assert spec.fits()
            sample = render(spec)
            b = sample.boxes
            assert b[:, 0].min() >= 0.5 - 1e-4 and b[:, 1].min() >= 0.5 - 1e-4
            assert b[:, 2].max() <= config.width - 1.5 + 1e-4 and b[:, 3].max() <= config.height - 1.5 + 1e-4
            m = sample.masks
            assert m[:, 0].max() == m[:, -1].max() == m[:, :, 0].max() == m[:, :, -1].max() == 0
            area = shape_area(spec.primary.shape, spec.primary.radius)
            assert torch.allclose(sample.masks.sum(dim=(1, 2)), torch.full((config.num_frames,), area), rtol=5e-3)


def test_stride_scales_per_frame_displacement_and_sets_fps():
    steps = {}
    for stride in (1, 2, 3, 4):
        sample = render(_spec(motion="down", stride=stride, seed=2))
        assert sample.stride == stride and sample.labels["stride"] == stride
        assert math.isclose(sample.fps, 16.0 / stride) and math.isclose(sample.labels["fps"], 16.0 / stride)
        steps[stride] = float((sample.centroids[1:, 1] - sample.centroids[:-1, 1]).mean())
        assert torch.allclose(sample.flow[:, 1][sample.masks[:-1] > 0], torch.tensor(steps[stride]), atol=1e-4)
    for stride in (2, 3, 4):
        assert math.isclose(steps[stride], stride * steps[1], rel_tol=1e-5)
    with pytest.raises(ValueError, match="stride"):
        _spec(stride=5)
    strides = Counter(WORLD.sample_spec(i).stride for i in range(200))
    assert set(strides) == {1, 2, 3, 4}


def test_speed_words_change_speed():
    moved = {}
    for speed in ("slow", "normal", "fast"):
        sample = render(_spec(motion="right", speed=speed, stride=2, seed=6))
        moved[speed] = float(sample.centroids[-1, 0] - sample.centroids[0, 0])
        assert (speed == "normal") != any(w in sample.caption for w in ("slowly", "quickly"))
    assert 0 < moved["slow"] < moved["normal"] < moved["fast"]
    assert math.isclose(moved["fast"], WORLD.top_speed * 2 * (T - 1), rel_tol=1e-5)
    with pytest.raises(ValueError, match="speed"):
        ObjectAttributes("red", "circle", "still", speed="fast")


# --------------------------------------------------------------------------------------------------------------------
# held-out split


def test_heldout_triples_are_ten_percent_balanced_and_excluded_from_train():
    n_all = len(COLOURS) * len(SHAPES) * len(MOTIONS)
    assert len(set(HELDOUT_TRIPLES)) == len(HELDOUT_TRIPLES) == round(0.1 * n_all)
    assert not set(HELDOUT_TRIPLES) & set(TRAIN_TRIPLES)
    assert len(TRAIN_TRIPLES) + len(HELDOUT_TRIPLES) == n_all
    assert {t[0] for t in TRAIN_TRIPLES} == set(COLOURS)
    assert {t[1] for t in TRAIN_TRIPLES} == set(SHAPES)
    assert {t[2] for t in TRAIN_TRIPLES} == set(MOTIONS)
    assert max(Counter(t[0] for t in HELDOUT_TRIPLES).values()) <= 2
    assert set(Counter(t[1] for t in HELDOUT_TRIPLES).values()) == {4}
    assert max(Counter(t[2] for t in HELDOUT_TRIPLES).values()) <= 3
    assert ("red", "circle", "left") not in HELDOUT_TRIPLES
    assert triples_for_split("heldout") == HELDOUT_TRIPLES
    with pytest.raises(ValueError, match="split"):
        triples_for_split("test")

    def triples(split: str, n: int) -> list[tuple[str, str, str]]:
        world = ShapesWorld(ShapesWorldConfig(split=split, second_object_prob=0.5))
        out = []
        for i in range(n):
            spec = world.sample_spec(i)
            out += [(o.colour, o.shape, o.motion) for o in (spec.primary, spec.second) if o is not None]
        return out

    train = triples("train", 400)
    assert not set(train) & set(HELDOUT_TRIPLES)
    assert len(set(train)) > 90
    held = ShapesWorld(ShapesWorldConfig(split="heldout"))
    assert {(s.primary.colour, s.primary.shape, s.primary.motion) for s in map(held.sample_spec, range(200))} == set(
        HELDOUT_TRIPLES
    )
    assert set(triples("all", 300)) & set(HELDOUT_TRIPLES)


# --------------------------------------------------------------------------------------------------------------------
# captions


def test_parse_caption_round_trips_every_phrasing():
    world = ShapesWorld(ShapesWorldConfig(second_object_prob=0.5))
    rng = np.random.default_rng(0)
    captions = set()
    for i in range(150):
        spec = world.sample_spec(i)
        for phrasing in VIDEO_PHRASINGS:
            text = caption(spec, phrasing)
            captions.add(text)
            assert parse_caption(text) == spec.attributes(), text
            assert unknown_words(text) == [], text
        assert parse_caption(caption(spec, rng=rng)) == spec.attributes()
        image = world.sample_image_spec(i)
        for phrasing in IMAGE_PHRASINGS:
            text = caption(image, phrasing)
            assert parse_caption(text) == image.attributes(), text
            assert unknown_words(text) == [], text
    assert len(captions) > 600
    with pytest.raises(ValueError, match="phrasing"):
        caption(world.sample_spec(0), "image_plain")
    assert caption(world.sample_spec(0)) == render(world.sample_spec(0)).caption


def test_example_phrasings_from_the_issue():
    spec = _spec(colour="red", shape="circle", motion="left")
    assert caption(spec, "canonical") == "a red circle moving left"
    assert caption(spec, "moves_to") == "red circle moves to the left on a black background"
    assert parse_caption("red circle moves to the left on a black background") == spec.attributes()


def test_canonical_phrasing_is_always_understood():
    for colour, shape, motion in itertools.product(COLOURS, SHAPES, MOTIONS):
        text = f"a {colour} {shape} standing still" if motion == "still" else f"a {colour} {shape} moving {motion}"
        parsed = parse_caption(text)
        assert parsed == CaptionAttributes(ObjectAttributes(colour, shape, motion)), text
        assert parse_caption(text.upper() + ".") == parsed
    parsed = parse_caption("A small orange triangle moving up quickly on a grey background")
    assert parsed == CaptionAttributes(ObjectAttributes("orange", "triangle", "up", "small", "fast"), None, "gray")
    assert parse_caption("a red circle") == CaptionAttributes(ObjectAttributes("red", "circle", None))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world",
        "a red blue circle moving left",
        "a red circle square moving left",
        "a red circle moving left and right",
        "a red circle moving left standing still",
        "a red circle moving left and a blue square",
        "a red circle standing still slowly",
        "a red circle moving left on a blue background",
        "a red circle and a blue square and a green triangle",
        "a large small red circle moving left",
    ],
)
def test_parse_caption_rejects_ambiguous_text(text):
    assert parse_caption(text) is None


def test_vocabulary_and_unknown_words():
    vocab = vocabulary()
    assert set(COLOURS) | set(SHAPES) | set(BACKGROUNDS) | {"left", "right", "up", "down", "still"} <= vocab
    assert {"small", "large", "slowly", "quickly", "moving", "background"} <= vocab
    assert unknown_words("a red circle moving left in the sky") == ["sky"]
    assert unknown_words("A Crimson hexagon, crimson!") == ["crimson", "hexagon"]
    assert unknown_words("a red circle moving left") == []
    with pytest.raises(ValueError):
        unknown_words(None)


def test_spec_from_caption():
    spec = WORLD.spec_from_caption("a blue triangle moving up quickly", stride=2, seed=1)
    assert spec.primary.velocity == (0.0, -WORLD.top_speed * 2)
    assert spec.fits() and spec.stride == 2
    with pytest.raises(ValueError, match="unknown words: sky"):
        WORLD.spec_from_caption("a blue sky")
    with pytest.raises(ValueError, match="different colours"):
        WORLD.spec_from_caption("a red circle moving left and a red square moving up")


# --------------------------------------------------------------------------------------------------------------------
# images, config, throughput


def test_image_dataset():
    ds = ShapesImageDataset(length=20)
    for i in range(20):
        item = ds[i]
        assert item["image"].shape == (3, H, W) and item["mask"].shape == (H, W)
        parsed = parse_caption(item["caption"])
        assert parsed is not None and parsed.primary.motion is None
        assert item["labels"]["motion"] == "none" and item["labels"]["colour"] == parsed.primary.colour
        full = item["mask"] == 1
        pix = item["image"].permute(1, 2, 0)[full]
        assert torch.allclose(pix, (torch.tensor(COLOURS[parsed.primary.colour]) * 2 - 1).expand_as(pix), atol=1e-5)
    assert "moving" not in " ".join(ds[i]["caption"] for i in range(20))
    assert torch.equal(ds[3]["image"], ShapesImageDataset(length=20)[3]["image"])
    batch = next(iter(DataLoader(ds, batch_size=5)))
    assert batch["image"].shape == (5, 3, H, W) and batch["second_mask"].shape == (5, H, W)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"height": 16},
        {"num_frames": 1},
        {"strides": (0, 1)},
        {"strides": []},
        {"base_fps": 0},
        {"second_object_prob": 1.5},
        {"sizes": ("huge",)},
        {"speeds": ()},
        {"backgrounds": ("red",)},
        {"phrasings": ("image_plain",)},
        {"split": "test"},
        {"seed": -1},
    ],
)
def test_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        ShapesWorldConfig(**kwargs)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="colour"):
        ObjectAttributes("magenta", "circle", "left")
    with pytest.raises(ValueError, match="index"):
        WORLD.sample_spec(-1)
    with pytest.raises(ValueError, match="SampleSpec"):
        render("a red circle")
    with pytest.raises(ValueError, match="different colours"):
        _spec(second=ObjectAttributes("red", "square", "up"))
    with pytest.raises(ValueError, match="length"):
        ShapesVideoDataset(length=0)


def test_throughput_is_reported_and_batch_renders_are_well_formed():
    world = ShapesWorld()
    specs = [world.sample_spec(i) for i in range(100)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        samples = [render(spec) for spec in specs]
        rate = len(specs) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    print(f"\nshapes world: {rate:.0f} samples/s for {T}x{H}x{W} on one core (target >= 200)")
    assert all(s.video.shape == (3, T, H, W) and s.flow.shape == (T - 1, 2, H, W) for s in samples)
