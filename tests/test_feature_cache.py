"""DeepCache: cached U-Net calls skip the deep blocks, reuse the stored feature exactly, and the pipelines/CLI take it."""

from __future__ import annotations

import pytest
import torch
from test_inflation import VIDEO_UNET, _randomised

from vidiff.cli import main as cli_main
from vidiff.cli_common import EMBEDDED_MODELS
from vidiff.models.feature_cache import DeepCache
from vidiff.models.unet3d import UNet3DModel


@pytest.fixture(scope="module")
def unet():
    return _randomised(UNet3DModel(**VIDEO_UNET))


def _inputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 16, 16, generator=g), torch.tensor([10, 700]), torch.randn(2, 7, 32, generator=g)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_cached_calls_skip_the_deep_blocks_and_reuse_the_stored_feature(unet, depth):
    x, t, ctx = _inputs(0)
    x2, _, _ = _inputs(1)
    ran = []
    hook = unet.middle_block.register_forward_hook(lambda *a: ran.append(1))
    try:
        with torch.no_grad():
            full = unet(x, t, ctx, fps=8)
            cache = DeepCache(interval=2, depth=depth)
            assert torch.equal(unet(x, t, ctx, fps=8, deep_cache=cache), full)  # a full call stores, changes nothing
            assert len(ran) == 2
            # same input: the stored deep feature is exactly what a full forward would compute
            assert torch.equal(unet(x, t, ctx, fps=8, deep_cache=cache), full)
            assert len(ran) == 2 and (cache.full_calls, cache.cached_calls) == (1, 1)
            # another input: only the outer blocks see it
            unet(x, t, ctx, fps=8, deep_cache=cache)  # full (interval 2)
            cached = unet(x2, t, ctx, fps=8, deep_cache=cache)
            fresh = unet(x2, t, ctx, fps=8)
    finally:
        hook.remove()
    assert (cached - fresh).abs().max().item() > 1e-4 and (cached - full).abs().max().item() > 1e-4


def test_schedule_of_full_calls_and_shape_changes(unet):
    x, t, ctx = _inputs(0)
    cache = DeepCache(interval=3)
    with torch.no_grad():
        for _ in range(7):
            unet(x, t, ctx, fps=8, deep_cache=cache)
        assert (cache.full_calls, cache.cached_calls) == (3, 4)  # calls 0, 3, 6 are full
        unet(x[:1], t[:1], ctx[:1], fps=8, deep_cache=cache)  # another batch size cannot reuse the stored feature
        assert cache.full_calls == 4
        one = DeepCache(interval=1)
        for _ in range(3):
            assert torch.equal(unet(x, t, ctx, fps=8, deep_cache=one), unet(x, t, ctx, fps=8))
        assert one.cached_calls == 0
    with pytest.raises(ValueError, match="below the U-Net's 4 input blocks"):
        unet(x, t, ctx, fps=8, deep_cache=DeepCache(2, depth=4))
    with pytest.raises(ValueError, match="interval"):
        DeepCache(interval=0)


def test_pipeline_deep_cache_stays_near_the_uncached_video():
    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(EMBEDDED_MODELS / "shapes_t2v")
    kw = dict(num_frames=8, num_inference_steps=12, seed=0, output_type="latent", progress=False)
    ref = pipe("a red circle moving left", **kw).frames
    cached = pipe("a red circle moving left", deep_cache=(2, 1), **kw).frames
    rel = ((cached - ref).norm() / ref.norm()).item()
    assert 1e-4 < rel < 0.3
    assert torch.equal(pipe("a red circle moving left", deep_cache=1, **kw).frames, ref)  # every call full: exact


def test_cli_deep_cache_flags(tmp_path, capsys):
    out = tmp_path / "v.mp4"
    assert cli_main(["generate", "a red circle moving left", "--steps", "4", "--frames", "4", "--deep-cache", "2",
                     "--threads", "1", "-o", str(out)]) == 0
    assert out.is_file()
    assert cli_main(["generate", "a red circle", "--deep-cache-depth", "2", "-o", str(tmp_path / "x.mp4")]) != 0
    assert cli_main(["generate", "a red circle", "--deep-cache", "2", "--deep-cache-depth", "9", "--steps", "2",
                     "-o", str(tmp_path / "y.mp4")]) != 0
    err = capsys.readouterr().err
    assert "--deep-cache-depth needs --deep-cache" in err and "below the U-Net's 6 input blocks" in err
    assert "Traceback" not in err and not (tmp_path / "x.mp4").exists()


def test_attention_broadcast_reuses_attention_only_inside_its_window(unet):
    from vidiff.models.feature_cache import AttentionBroadcast

    x, _, ctx = _inputs(0)
    pab = AttentionBroadcast(spatial=2, temporal=4, cross=6, timestep_range=(100, 800))
    with torch.no_grad():
        diffs = []
        for step in (900, 700, 650, 600, 550, 500, 50):
            t = torch.tensor([step, step])
            xs = x + 0.01 * step / 1000  # a new input every step, as in sampling
            diffs.append((unet(xs, t, ctx, fps=8, attention_broadcast=pab) - unet(xs, t, ctx, fps=8)).abs().max().item())
    # outside the window (900, 50) and at window step 0 (700) every attention computes: exact
    assert diffs[0] == 0.0 and diffs[1] == 0.0 and diffs[-1] == 0.0
    assert all(d > 1e-5 for d in diffs[2:-1])
    # per call: 7 spatial self-, 7 cross-, 16 temporal attentions (8 temporal transformers x 2)
    assert pab.reused == {"spatial": 7 * 2, "temporal": 16 * 3, "cross": 7 * 4}
    assert pab.computed["temporal"] == 16 * 4  # 900, 700, 500 (window step 4), 50
    # the modules are left as they were
    assert all("forward" not in vars(m) for m in unet.modules())
    with pytest.raises(ValueError, match="interval"):
        AttentionBroadcast(spatial=0)


def test_pipeline_attention_broadcast_is_exact_off_and_close_on():
    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    pipe = TextToVideoPipeline.from_pretrained(EMBEDDED_MODELS / "shapes_t2v")
    kw = dict(num_frames=8, num_inference_steps=12, seed=0, output_type="latent", progress=False)
    ref = pipe("a red circle moving left", **kw).frames
    assert torch.equal(pipe("a red circle moving left", attention_broadcast=False, **kw).frames, ref)
    on = pipe("a red circle moving left", attention_broadcast=True, **kw).frames
    assert 1e-4 < ((on - ref).norm() / ref.norm()).item() < 0.3
