"""CSV/folder video-text and image-text datasets, joint batching and the latent cache, on videos made here.

Every test video frame k has a flat red channel of 10 + 6k (gradients in green/blue that move with k), so the frame a
sample decoded can be read back from its mean red value, tolerant of codec error.
"""

from __future__ import annotations

import csv
import logging
import pickle
import shutil
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader

from vidiff.data import csv_datasets
from vidiff.data.csv_datasets import (
    CSVFormatError,
    ImageTextDataset,
    JointImageVideoSampler,
    NoUsableSamplesError,
    VideoTextDataset,
    collate_video_batch,
)
from vidiff.data.latent_cache import LatentCacheDataset, LatentCacheError, build_latent_cache
from vidiff.data.video_reader import VideoDecodeError, cover_size, probe_video, read_frames

H, W = 48, 64


def _codec() -> str:
    try:
        av.codec.Codec("libx264", "w")
        return "libx264"
    except Exception:  # a PyAV build without x264
        return "mpeg4"


def make_video(path: Path, n_frames: int, fps: float, codec: str | None = None, gop: int = 8) -> Path:
    codec = codec or _codec()
    container = av.open(str(path), "w")
    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
    stream.codec_context.gop_size = gop
    if codec == "libx264":
        stream.options = {"crf": "1"}
    else:
        stream.bit_rate = 4_000_000
    yy, xx = np.mgrid[0:H, 0:W]
    for k in range(n_frames):
        rgb = np.empty((H, W, 3), np.uint8)
        rgb[..., 0] = 10 + 6 * k
        rgb[..., 1] = (xx * 4 + k * 8) % 256
        rgb[..., 2] = (yy * 4 + k * 2) % 256
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def frame_ids(video: torch.Tensor) -> list[int]:
    """Frame numbers of a (3, T, H, W) [-1, 1] clip, read from the red channel; asserts codec error is small."""
    red = (video[0].flatten(1).mean(1) + 1) * 127.5
    ids = torch.round((red - 10) / 6)
    assert torch.all((red - (10 + 6 * ids)).abs() < 3), red
    return ids.long().tolist()


def uint8_ids(frames: np.ndarray) -> list[int]:
    red = frames[..., 0].reshape(len(frames), -1).mean(1)
    return np.round((red - 10) / 6).astype(int).tolist()


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("videos")
    out = {
        "v30": make_video(root / "v30.mp4", 40, 30),
        "v24": make_video(root / "v24.mp4", 32, 24),
        "v8": make_video(root / "v8.mp4", 24, 8, codec="mpeg4"),
        "mkv": make_video(root / "v8.mkv", 24, 8, codec="mpeg4"),
        "short": make_video(root / "short.mp4", 8, 24),
        "corrupt": root / "corrupt.mp4",
    }
    out["corrupt"].write_bytes(np.random.default_rng(0).bytes(4096))
    return out


# ------------------------------------------------------------------------------------------------ reader


def test_probe_and_seeking_reads_the_requested_frames(videos):
    assert probe_video(videos["v30"]) == probe_video(videos["v30"])
    info = probe_video(videos["v30"])
    assert (info.num_frames, info.fps, info.height, info.width) == (40, 30.0, H, W)
    assert probe_video(videos["mkv"]).num_frames == 24  # MKV has no frame count in its header: packets counted
    for key, idx in [("v30", [33, 35, 37, 39]), ("v30", [5, 0, 5, 17]), ("v8", [22, 23]), ("mkv", [20, 1])]:
        frames = read_frames(videos[key], idx, size=(24, 32))
        assert frames.shape == (len(idx), 24, 32, 3) and frames.dtype == np.uint8
        assert uint8_ids(frames) == idx
    assert read_frames(videos["v30"], [0], cover=(40, 40)).shape == (1, 40, 53, 3)
    with pytest.raises(VideoDecodeError, match="frame 40 was requested"):
        read_frames(videos["v30"], [38, 40])
    with pytest.raises(VideoDecodeError, match="corrupt"):
        read_frames(videos["corrupt"], [0])


def test_cover_size_allows_the_crop():
    assert cover_size(480, 640, (320, 512)) == (384, 512)  # short-side resize to 320 would be only 427 wide
    assert cover_size(48, 64, (24, 24)) == (24, 32)
    assert cover_size(100, 100, (256, 128)) == (256, 256)


# ------------------------------------------------------------------------------------------------ videos


def test_webvid_and_simple_csv(tmp_path, videos):
    page = tmp_path / "videos" / "000001_000050"
    page.mkdir(parents=True)
    shutil.copy(videos["v30"], page / "1066.mp4")
    shutil.copy(videos["v24"], page / "77.mp4")
    webvid = write_csv(
        tmp_path / "webvid.csv",
        ["videoid", "name", "page_dir", "duration"],
        [[1066, "a dog runs", "000001_000050", "PT00H00M01S"], [77, "rain", "000001_000050", ""]],
    )
    ds = VideoTextDataset(webvid, tmp_path / "videos", num_frames=16, resolution=(32, 40), seed=0)
    assert len(ds) == 2
    for i, (caption, fps) in enumerate([("a dog runs", 30.0), ("rain", 24.0)]):
        s = ds[i]
        assert s["video"].shape == (3, 16, 32, 40) and s["video"].dtype == torch.float32
        assert -1.0 <= s["video"].min() and s["video"].max() <= 1.0 and s["video"].std() > 0.1
        assert (s["caption"], s["fps"], s["frame_stride"], s["index"]) == (caption, fps, 1, i)
        ids = frame_ids(s["video"])
        assert ids == list(range(ids[0], ids[0] + 16))
    assert ds[0]["path"] == str(page / "1066.mp4")

    (tmp_path / "sub").mkdir()
    shutil.copy(videos["v8"], tmp_path / "sub" / "clip.mp4")
    simple = write_csv(
        tmp_path / "simple.csv", ["path", "caption"], [["sub/clip.mp4", "relative"], [str(videos["v24"]), "absolute"]]
    )
    ds = VideoTextDataset(simple, num_frames=8, resolution=24)
    assert [ds[0]["path"], ds[1]["path"]] == [str(tmp_path / "sub" / "clip.mp4"), str(videos["v24"])]
    assert ds[0]["video"].shape == (3, 8, 24, 24) and ds[1]["caption"] == "absolute"
    assert ds.skipped == 0


@pytest.mark.parametrize("position,start", [("start", 0), ("center", 9)])
def test_frame_stride_gives_fps_and_right_frames(tmp_path, videos, position, start):
    table = write_csv(tmp_path / "m.csv", ["path", "caption"], [[str(videos["v30"]), "x"]])
    ds = VideoTextDataset(table, num_frames=8, frame_stride=3, resolution=None, clip_position=position)
    s = ds[0]
    assert s["video"].shape == (3, 8, H, W)
    assert (s["fps"], s["frame_stride"]) == (10.0, 3)
    assert frame_ids(s["video"]) == [start + 3 * k for k in range(8)]  # 40 frames, span 22: centre start is 9


def test_random_start_stays_inside_the_video(tmp_path, videos):
    table = write_csv(tmp_path / "m.csv", ["path", "caption"], [[str(videos["v30"]), "x"]])
    ds = VideoTextDataset(table, num_frames=8, frame_stride=3, resolution=(16, 16), seed=1)
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        ids = frame_ids(ds[0]["video"])
        assert np.all(np.diff(ids) == 3) and 0 <= ids[0] and ids[-1] <= 39
        starts.add(ids[0])
    assert len(starts) > 1


def test_target_fps_picks_the_stride(tmp_path, videos):
    table = write_csv(
        tmp_path / "m.csv",
        ["path", "caption"],
        [[str(videos["v24"]), "a"], [str(videos["v30"]), "b"], [str(videos["v8"]), "c"]],
    )
    ds = VideoTextDataset(table, num_frames=4, target_fps=8, resolution=16, seed=0)
    got = [(ds[i]["frame_stride"], ds[i]["fps"]) for i in range(3)]
    assert got == [(3, 8.0), (4, 7.5), (1, 8.0)]
    assert np.all(np.diff(frame_ids(ds[1]["video"])) == 4)


def test_random_stride_range_is_seeded(tmp_path, videos):
    table = write_csv(tmp_path / "m.csv", ["path", "caption"], [[str(videos["v30"]), "x"]] * 4)
    a = VideoTextDataset(table, num_frames=4, frame_stride=(1, 6), resolution=16, seed=7)
    b = VideoTextDataset(table, num_frames=4, frame_stride=(1, 6), resolution=16, seed=7)
    strides = set()
    for epoch in range(5):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(4):
            sa, sb = a[i], b[i]
            assert torch.equal(sa["video"], sb["video"]) and sa["frame_stride"] == sb["frame_stride"]
            assert 1 <= sa["frame_stride"] <= 6 and sa["fps"] == pytest.approx(30.0 / sa["frame_stride"])
            assert np.all(np.diff(frame_ids(sa["video"])) == sa["frame_stride"])
            strides.add(sa["frame_stride"])
    assert len(strides) >= 3


def test_random_crop_is_deterministic_with_a_seed(tmp_path, videos):
    table = write_csv(tmp_path / "m.csv", ["path", "caption"], [[str(videos["v30"]), "x"]])
    kwargs = dict(num_frames=2, resolution=(24, 24), crop="random", clip_position="start")
    first = VideoTextDataset(table, seed=3, **kwargs)[0]["video"]
    assert torch.equal(first, VideoTextDataset(table, seed=3, **kwargs)[0]["video"])
    crops = {VideoTextDataset(table, seed=s, **kwargs)[0]["video"][1:].sum().item() for s in range(8)}
    assert len(crops) > 1  # the 24x32 resized frame leaves 8 columns of freedom
    unseeded = VideoTextDataset(table, **kwargs)  # no seed: reproducible under torch.manual_seed
    torch.manual_seed(11)
    a = [unseeded[0]["video"] for _ in range(4)]
    torch.manual_seed(11)
    assert all(torch.equal(x, unseeded[0]["video"]) for x in a)


def test_csv_fps_and_frames_columns_avoid_probing(tmp_path, videos, monkeypatch):
    def no_probe(path):
        raise AssertionError("probe_video must not run when the CSV gives fps and frames")

    monkeypatch.setattr(csv_datasets, "probe_video", no_probe)
    table = write_csv(tmp_path / "m.csv", ["path", "caption", "fps", "num_frames"], [[str(videos["v30"]), "x", 30, 40]])
    s = VideoTextDataset(table, num_frames=8, frame_stride=5, resolution=(20, 20), seed=0)[0]
    assert (s["fps"], s["frame_stride"], s["video"].shape) == (6.0, 5, (3, 8, 20, 20))
    assert np.all(np.diff(frame_ids(s["video"])) == 5)


def test_stride_is_reduced_for_a_short_video(tmp_path, videos):
    table = write_csv(tmp_path / "m.csv", ["path", "caption"], [[str(videos["v8"]), "x"]])
    s = VideoTextDataset(table, num_frames=16, frame_stride=4, resolution=16)[0]
    assert (s["frame_stride"], s["fps"]) == (1, 8.0)  # 24 frames hold 16 at stride 1 only
    strict = VideoTextDataset(table, num_frames=16, frame_stride=4, resolution=16, allow_stride_reduction=False)
    with pytest.raises(NoUsableSamplesError, match="too_short"):
        strict[0]


def test_bad_videos_are_skipped_counted_and_logged(tmp_path, videos, caplog):
    rows = [
        [str(videos["v30"]), "good"],
        [str(tmp_path / "gone.mp4"), "missing"],
        [str(videos["corrupt"]), "corrupt"],
        [str(videos["short"]), "short"],
        [str(videos["v24"]), "good too"],
    ]
    table = write_csv(tmp_path / "m.csv", ["path", "caption"], rows)
    ds = VideoTextDataset(table, num_frames=16, resolution=16, seed=0)
    with caplog.at_level(logging.WARNING, logger="vidiff.data.csv_datasets"):
        samples = [ds[i] for i in range(len(ds))]
    assert [s["index"] for s in samples] == [0, 4, 4, 4, 4]  # each bad row is replaced by the next usable one
    assert ds.skipped == 3
    assert dict(ds.skip_stats) == {"missing": 1, "decode_error": 1, "too_short": 1}
    assert sum("skipping sample" in r.getMessage() for r in caplog.records) == 3
    assert any("gone.mp4" in r.getMessage() for r in caplog.records)

    fresh = VideoTextDataset(table, num_frames=16, resolution=16, seed=0)
    loader = DataLoader(fresh, batch_size=1, num_workers=2, collate_fn=collate_video_batch)
    batches = list(loader)
    assert [b["caption"][0] for b in batches] == ["good", "good too", "good too", "good too", "good too"]
    assert torch.equal(batches[0]["video"][0], samples[0]["video"])  # workers give the seeded sample
    assert fresh.skipped >= 3  # counted in the workers, visible here


def test_all_bad_videos_raise_a_clear_error(tmp_path, videos):
    table = write_csv(tmp_path / "m.csv", ["path", "caption"], [["nope.mp4", "a"], [str(videos["corrupt"]), "b"]])
    ds = VideoTextDataset(table, num_frames=4, resolution=16)
    with pytest.raises(NoUsableSamplesError, match=r"none of the 2 samples.*decode_error.*missing"):
        ds[0]
    assert ds.skipped == 2


def test_csv_errors_are_clear(tmp_path):
    wrong = write_csv(tmp_path / "wrong.csv", ["file", "text"], [["a.mp4", "x"]])
    with pytest.raises(CSVFormatError) as err:
        VideoTextDataset(wrong)
    assert "file, text" in str(err.value) and "videoid, name, page_dir" in str(err.value)
    assert "path, caption" in str(err.value)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(CSVFormatError, match="is empty"):
        VideoTextDataset(tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("path,caption\n")
    with pytest.raises(CSVFormatError, match="no rows"):
        VideoTextDataset(tmp_path / "header.csv")
    bad_fps = write_csv(tmp_path / "fps.csv", ["path", "caption", "fps"], [["a.mp4", "x", "fast"]])
    with pytest.raises(CSVFormatError, match="line 2: column 'fps'"):
        VideoTextDataset(bad_fps)
    with pytest.raises(FileNotFoundError, match="metadata CSV not found"):
        VideoTextDataset(tmp_path / "absent.csv")
    ok = write_csv(tmp_path / "ok.csv", ["path", "caption"], [["a.mp4", "x"]])
    with pytest.raises(ValueError, match="not both"):
        VideoTextDataset(ok, frame_stride=(1, 3), target_fps=8)
    with pytest.raises(ValueError, match="frame_stride"):
        VideoTextDataset(ok, frame_stride=(4, 2))


# ------------------------------------------------------------------------------------------------ images


def _write_images(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        p = folder / f"img{k}.png"
        Image.fromarray(np.full((40, 60, 3), 40 * k + 20, np.uint8)).save(p)
        paths.append(p)
    return paths


def test_image_dataset_folder_csv_and_repeat(tmp_path):
    paths = _write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "img0.txt").write_text("first image\n")
    (tmp_path / "imgs" / "img1.txt").write_text("second")
    ds = ImageTextDataset(tmp_path / "imgs", resolution=(32, 32))
    assert len(ds) == 3 and [ds[i]["caption"] for i in range(3)] == ["first image", "second", ""]
    s = ds[2]
    assert s["video"].shape == (3, 1, 32, 32) and (s["fps"], s["frame_stride"]) == (0.0, 0)
    assert torch.allclose(s["video"], torch.full_like(s["video"], 100 / 127.5 - 1), atol=1e-6)

    (tmp_path / "broken.png").write_bytes(b"not a png")
    table = write_csv(
        tmp_path / "images.csv",
        ["path", "caption"],
        [["imgs/img1.png", "one"], ["broken.png", "broken"], [str(paths[0]), "zero"]],
    )
    ds = ImageTextDataset(table, resolution=(16, 24), repeat_to_frames=4, crop="random", seed=0)
    s = ds[1]
    assert s["video"].shape == (3, 4, 16, 24) and s["caption"] == "zero" and ds.skipped == 1
    assert all(torch.equal(s["video"][:, t], s["video"][:, 0]) for t in range(4))


# ------------------------------------------------------------------------------------------------ batching


def test_collate_mixing_images_and_videos(tmp_path, videos):
    table = write_csv(tmp_path / "m.csv", ["path", "caption"], [[str(videos["v24"]), "vid"]])
    video = VideoTextDataset(table, num_frames=4, resolution=16)[0]
    _write_images(tmp_path / "imgs", 1)
    image = ImageTextDataset(tmp_path / "imgs", resolution=16)[0]
    with pytest.raises(ValueError, match="JointImageVideoSampler"):
        collate_video_batch([video, image])
    batch = collate_video_batch([video, image], mix="repeat")
    assert batch["video"].shape == (2, 3, 4, 16, 16)
    assert torch.equal(batch["video"][1, :, 3], image["video"][:, 0])
    assert batch["caption"] == ["vid", ""] and batch["fps"].dtype == torch.float32
    assert batch["frame_stride"].tolist() == [1, 0] and batch["index"].dtype == torch.long


def test_joint_sampler_pattern_coverage_and_ranks():
    sampler = JointImageVideoSampler(
        10, 7, video_batch_size=2, image_batch_size=3, image_batches_per_video_batch=0.5, seed=1
    )
    batches = list(sampler)
    kinds = ["I" if b[0] >= 10 else "V" for b in batches]
    assert kinds == ["V", "V", "I", "V", "V", "I", "V"] and len(sampler) == len(batches)
    assert all(
        all(i >= 10 for i in b) == (k == "I") and all(i < 10 for i in b) == (k == "V") for b, k in zip(batches, kinds)
    )
    assert sorted(i for b in batches if b[0] < 10 for i in b) == list(range(10))
    assert list(sampler) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches

    ranks = [list(JointImageVideoSampler(8, 5, 2, 2, 1.0, num_replicas=2, rank=r)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == 4
    for b0, b1 in zip(*ranks):
        assert (b0[0] >= 8) == (b1[0] >= 8) and not set(b0) & set(b1)
    with pytest.raises(ValueError, match="empty"):
        JointImageVideoSampler(4, 0, 2, 2, 1.0)


def test_joint_loader_yields_video_and_image_batches(tmp_path, videos):
    table = write_csv(tmp_path / "m.csv", ["path", "caption"], [[str(videos["v24"]), "v"], [str(videos["v30"]), "w"]])
    vids = VideoTextDataset(table, num_frames=4, resolution=16, seed=0)
    _write_images(tmp_path / "imgs", 3)
    imgs = ImageTextDataset(tmp_path / "imgs", resolution=16)
    sampler = JointImageVideoSampler(len(vids), len(imgs), 1, 3, image_batches_per_video_batch=1.0)
    loader = DataLoader(ConcatDataset([vids, imgs]), batch_sampler=sampler, collate_fn=collate_video_batch)
    shapes = [tuple(b["video"].shape) for b in loader]
    assert shapes == [(1, 3, 4, 16, 16), (3, 3, 1, 16, 16)] * 2


# ------------------------------------------------------------------------------------------------ latent cache


def _encode_video(video: torch.Tensor) -> torch.Tensor:
    return F.avg_pool3d(video, (1, 4, 4))


def _encode_text(captions: list[str]) -> torch.Tensor:
    return torch.stack([torch.tensor([float(ord(c)) for c in (cap + "    ")[:4]]).repeat(3, 1) for cap in captions])


def test_latent_cache_round_trip_and_resume(tmp_path, videos):
    rows = [[str(videos[k]), f"caption {k}"] for k in ("v30", "v24", "v8", "v30", "v24")]
    table = write_csv(tmp_path / "m.csv", ["path", "caption"], rows)
    ds = VideoTextDataset(table, num_frames=4, frame_stride=(1, 3), resolution=(16, 16), crop="random", seed=5)
    out = tmp_path / "cache"
    manifest = build_latent_cache(
        ds, _encode_video, _encode_text, out, batch_size=2, samples_per_shard=2, progress=False
    )
    assert manifest == out / "manifest.json"
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json",
        "shard-00000.safetensors",
        "shard-00001.safetensors",
        "shard-00002.safetensors",
    ]
    cache = LatentCacheDataset(out)
    assert len(cache) == 5
    for i in range(5):
        ref, got = ds[i], cache[i]
        assert torch.equal(got["latents"], _encode_video(ref["video"][None])[0])
        assert got["latents"].shape == (3, 4, 4, 4)
        assert torch.equal(got["text_embeddings"], _encode_text([ref["caption"]])[0])
        for key in ("caption", "fps", "frame_stride", "path", "index"):
            assert got[key] == ref[key], key
    batch = collate_video_batch([cache[0], cache[4]])
    assert batch["latents"].shape == (2, 3, 4, 4, 4) and batch["text_embeddings"].shape == (2, 3, 4)
    assert len(pickle.loads(pickle.dumps(cache))) == 5  # picklable for DataLoader workers after use

    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_latent_cache(ds, _encode_video, _encode_text, out, progress=False)
    (out / "manifest.json").unlink()
    with pytest.raises(LatentCacheError, match="did not finish"):
        LatentCacheDataset(out)
    (out / "shard-00001.safetensors").unlink()
    encoded = []

    def counting(video: torch.Tensor) -> torch.Tensor:
        encoded.append(video.shape[0])
        return _encode_video(video)

    build_latent_cache(ds, counting, _encode_text, out, batch_size=2, samples_per_shard=2, progress=False)
    assert sum(encoded) == 2  # only the missing shard was re-encoded
    assert torch.equal(LatentCacheDataset(out)[3]["latents"], cache[3]["latents"])

    half = build_latent_cache(
        ds, _encode_video, None, tmp_path / "half", samples_per_shard=4, dtype=torch.float16, progress=False
    )
    only = LatentCacheDataset(half.parent)
    assert "text_embeddings" not in only[4] and only[4]["latents"].dtype == torch.float16
    with pytest.raises(ValueError, match="first dimension must be the batch"):
        build_latent_cache(ds, lambda v: v.mean(), None, tmp_path / "bad", progress=False)
