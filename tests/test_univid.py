"""UniVid (arXiv 2603.13739): the risks of the design doc's table B4, each as a test.

λ invariances exact (both streams, every layer sees the call's λ), PSTAttn is cross-frame attention over Γ (key length,
frames outside Γ have no influence, far pixels of Γ do), kernel sizes and reference counts per level, identity at init
from a T2V model, deterministic Γ at evaluation, image (one-frame) batches give the pyramid layers no gradient, the
unified task's per-row modes, and the pipeline's stream rules.
"""

from __future__ import annotations

import copy

import pytest
import torch

from vidiff.models.inflation import inflate_from
from vidiff.models.unet3d import UNet3DModel
from vidiff.models.univid import PSTResBlock, PyramidFrameAttention, TemporalConv1d, reference_frames

T2V = dict(in_channels=4, out_channels=4, model_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1,
           attention_resolutions=(1, 2, 4), num_head_channels=16, context_dim=32, temporal_attention=True,
           addition_attention=True, init_attention_heads=2, use_relative_position=True, temporal_length=8,
           fps_condition=True, default_fps=4, temporal_text_attention=True, temporal_position_embedding=True)
PYRAMID = {"spatial_attention": {"reference_frames": {1: 2, 2: 4, 4: 8}},
           "resblock": {"kernels": {1: 3, 2: 5, 4: 7}}}
UNIVID = dict(T2V, image_cross_attention=True, image_context_dim=24,
              layer_types={"spatial_attention": "pst", "resblock": "pst"}, layer_options=PYRAMID)


def univid_unet(seed: int = 0, randomise: bool = True) -> UNet3DModel:
    """A UniVid U-Net whose zero-initialised parts are random too (so every stream and layer matters)."""
    torch.manual_seed(seed)
    unet = UNet3DModel(**UNIVID).eval()
    if randomise:
        with torch.no_grad():
            for p in unet.parameters():
                if p.abs().sum() == 0:
                    p.normal_(0, 0.05)
    return unet


def inputs(b: int = 2, t: int = 8, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, 4, t, 16, 16, generator=g), torch.randn(b, 10, 32, generator=g),
            torch.randn(b, 17, 24, generator=g))


def test_zero_image_weight_makes_the_output_exactly_independent_of_the_image():
    unet = univid_unet()
    x, text, image = inputs()
    other = torch.randn_like(image)
    with torch.no_grad():
        a = unet(x, 500, text, image_context=image, image_scale=0.0)
        b = unet(x, 500, text, image_context=other, image_scale=0.0)
        c = unet(x, 500, text, image_context=image, image_scale=1.0)
        d = unet(x, 500, text, image_context=other, image_scale=1.0)
    assert torch.equal(a, b)
    assert (c - d).abs().max() > 1e-4  # the stream is live when λ_v > 0


def test_zero_text_weight_makes_the_output_exactly_independent_of_the_text_in_every_layer():
    """λ_t reaches the spatial cross-attention and the temporal text attention (and the first-layer addition
    attention): none of them reads the caption at λ_t = 0."""
    unet = univid_unet()
    x, text, image = inputs()
    other = torch.randn_like(text)
    with torch.no_grad():
        a = unet(x, 500, text, image_context=image, text_scale=0.0)
        b = unet(x, 500, other, image_context=image, text_scale=0.0)
        c = unet(x, 500, other, image_context=image, text_scale=1.0)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4


def test_per_row_stream_weights_equal_separate_calls_and_the_effect_grows_with_lambda():
    unet = univid_unet()
    x, text, image = inputs()
    lam_t, lam_v = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    with torch.no_grad():
        both = unet(x, 500, text, image_context=image, text_scale=lam_t, image_scale=lam_v)
        first = unet(x[:1], 500, text[:1], image_context=image[:1], text_scale=1.0, image_scale=0.0)
        second = unet(x[1:], 500, text[1:], image_context=image[1:], text_scale=0.0, image_scale=1.0)
        base = unet(x, 500, text, image_context=image, image_scale=0.0)
        dist = [(unet(x, 500, text, image_context=image, image_scale=s) - base).norm() for s in (0.25, 0.5, 1.0)]
    torch.testing.assert_close(both, torch.cat([first, second]), atol=1e-5, rtol=1e-5)
    assert dist[0] < dist[1] < dist[2]


def test_every_cross_attention_receives_the_call_stream_weights():
    unet = univid_unet()
    seen = []
    layers = [m for n, m in unet.named_modules() if n.endswith("attn2") and getattr(m, "image_attention", False)]
    from vidiff.models.univid import PyramidSpatialTransformer

    assert len(layers) == sum(isinstance(m, PyramidSpatialTransformer) for m in unet.modules()) == 10
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append((args[3], args[4]))) for m in layers]
    x, text, image = inputs()
    with torch.no_grad():
        unet(x, 500, text, image_context=image, text_scale=torch.tensor([0.3, 0.7]), image_scale=0.6)
    for h in hooks:
        h.remove()
    assert len(seen) == len(layers)
    expected_t = torch.tensor([0.3, 0.7]).repeat_interleave(8)
    assert all(torch.equal(t, expected_t) and s == 0.6 for t, s in seen)


def test_reference_frames_one_per_segment_random_in_training_centre_in_eval():
    assert reference_frames(16, 4, False).tolist() == [1, 5, 9, 13]
    assert reference_frames(16, 16, False).tolist() == list(range(16))
    assert reference_frames(3, 8, False).tolist() == [0, 1, 2]  # fewer frames than segments: every frame
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([reference_frames(16, 4, True, g) for _ in range(200)])
    for i in range(4):
        assert draws[:, i].min() >= 4 * i and draws[:, i].max() <= 4 * i + 3
        assert len(set(draws[:, i].tolist())) == 4  # every offset is drawn


def test_pyramid_layers_per_level_match_the_config_and_grow_toward_the_middle():
    unet = univid_unet(randomise=False)
    key_lengths, kernels = {}, {}

    def record(name):
        def hook(mod, args):
            key_lengths[name] = (mod.num_reference_frames, args[0].shape[1])
        return hook

    hooks = []
    for name, m in unet.named_modules():
        if isinstance(m, PyramidFrameAttention):
            hooks.append(m.register_forward_pre_hook(record(name)))
        if isinstance(m, PSTResBlock):
            kernels[name] = m.pst_conv_in.kernel_size
    x, text, image = inputs()
    with torch.no_grad():
        unet(x, 500, text, image_context=image)
    for h in hooks:
        h.remove()
    # tokens per frame: 16x16 at factor 1, 8x8 at 2, 4x4 at 4, where Γ has n_f = 2, 4, 8 frames
    tokens = {2: 256, 4: 64, 8: 16}
    assert len(key_lengths) == 10 and all(tokens[n_ref] == n for n_ref, n in key_lengths.values())
    by_n = {}
    for name, (n_ref, _) in key_lengths.items():
        by_n.setdefault(n_ref, []).append(name)
    assert set(by_n) == {2, 4, 8}
    assert sorted(set(kernels.values())) == [3, 5, 7]
    assert kernels["input_blocks.1.0"] == 3 and kernels["middle_block.0"] == 7
    assert any(k.startswith("input_blocks.1") for k in by_n[2]) and any(k.startswith("middle_block") for k in by_n[8])


def test_pstattn_key_length_and_frames_outside_gamma_have_no_influence():
    torch.manual_seed(0)
    layer = PyramidFrameAttention(32, 2, 16, num_reference_frames=4).eval()
    t, n = 16, 9
    gamma = reference_frames(t, 4, False).tolist()
    keys = []
    hook = layer.attention.to_k.register_forward_hook(lambda m, a, out: keys.append(a[0].shape[1]))
    x = torch.randn(t, n, 32)  # one video, 16 frames of 9 tokens, folded
    with torch.no_grad():
        base = layer(x, t)
        outside = next(j for j in range(t) if j not in gamma and j != 0)
        y = x.clone()
        y[outside] += 5.0
        moved_outside = layer(y, t)
        z = x.clone()
        z[gamma[2], n - 1] += 5.0  # a far token of a reference frame
        moved_inside = layer(z, t)
    hook.remove()
    assert keys == [4 * n] * 3  # n_f · (tokens per frame) keys, at every call
    rows = [i for i in range(t) if i != outside]
    torch.testing.assert_close(moved_outside[rows], base[rows], atol=0, rtol=0)
    assert (moved_inside[0, 0] - base[0, 0]).abs().max() > 1e-4  # frame 0's first token sees a far pixel of Γ
    with torch.no_grad():  # evaluation is deterministic
        assert torch.equal(layer(x, t), base)


def test_temporal_convolution_reach_is_half_its_kernel():
    torch.manual_seed(0)
    conv = TemporalConv1d(4, 5)
    with torch.no_grad():
        conv.conv.weight.normal_()
        conv.conv.bias.zero_()
    x = torch.zeros(1 * 12, 4, 3, 3)
    x[6] = 1.0  # an impulse at frame 6
    with torch.no_grad():
        delta = (conv(x, 12) - x).abs().flatten(1).amax(1)
    assert delta[4:9].min() > 0 and delta[:4].max() == 0 and delta[9:].max() == 0
    with pytest.raises(ValueError, match="odd"):
        TemporalConv1d(4, 4)


def test_univid_from_a_t2v_model_equals_it_at_step_zero():
    torch.manual_seed(3)
    t2v = UNet3DModel(**T2V).eval()
    with torch.no_grad():
        for p in t2v.parameters():
            if p.abs().sum() == 0:
                p.normal_(0, 0.05)
    univid = UNet3DModel(**UNIVID).eval()
    report = inflate_from(univid, t2v)
    assert not report.dropped and not report.reshaped
    x, text, image = inputs()
    with torch.no_grad():
        torch.testing.assert_close(univid(x, 300, text, image_context=image), t2v(x, 300, text), atol=0, rtol=0)


def test_one_frame_batches_give_the_pyramid_layers_no_gradient():
    unet = univid_unet().train()
    x, text, image = inputs(t=1)
    unet(x, 500, text, image_context=image).square().mean().backward()
    for name, p in unet.named_parameters():
        if ".attn_pst." in name or ".pst_conv_" in name:
            assert p.grad is None or not p.grad.any(), name
    assert any(p.grad is not None and p.grad.any() for n, p in unet.named_parameters() if ".attn1." in n)


def test_image_frames_spatial_only_gives_every_temporal_layer_zero_gradient_on_one_frame_batches():
    """UniVid §IV-A: image batches update spatial layers only. With the flag, the temporal transformers, the addition
    attention and the pyramid layers get no gradient from a one-frame batch; without it the temporal transformers do;
    videos are computed exactly as without the flag."""
    def grads(flag: bool, t: int) -> dict[str, torch.Tensor | None]:
        unet = univid_unet()
        unet.register_to_config(image_frames_spatial_only=flag)
        unet.train()
        x, text, image = inputs(t=t)
        unet(x, 500, text, image_context=image).square().mean().backward()
        return {n: p.grad for n, p in unet.named_parameters()}

    temporal = [n for n, _ in univid_unet().named_modules()
                if type(_).__name__ in ("TemporalTransformer", "PyramidFrameAttention", "TemporalConv1d")]
    assert any(n.startswith("init_attn") for n in temporal) and len(temporal) > 10

    def is_temporal(name: str) -> bool:
        return any(name.startswith(m + ".") for m in temporal)

    spatial_only = grads(True, 1)
    assert all(g is None or not g.any() for n, g in spatial_only.items() if is_temporal(n))
    assert any(g is not None and g.any() for n, g in spatial_only.items() if ".attn1." in n and not is_temporal(n))
    plain = grads(False, 1)
    assert any(g is not None and g.any() for n, g in plain.items() if is_temporal(n) and "proj_out" in n)

    x, text, image = inputs(t=4)
    a, b = univid_unet(), univid_unet()
    b.register_to_config(image_frames_spatial_only=True)
    with torch.no_grad():
        assert torch.equal(a(x, 500, text, image_context=image), b(x, 500, text, image_context=image))


def test_stage_presets_select_the_image_stream_and_the_pyramid():
    from vidiff.training.params import select_parameters

    unet = univid_unet(randomise=False)
    cross = select_parameters(unet, ["@image_cross"])
    assert cross and all(".attn2." in n for n in cross)
    assert any("to_k_ip" in n for n in cross) and any("to_v_ip" in n for n in cross)
    assert any(n.endswith("attn2.to_q.weight") for n in cross)
    pyramid = select_parameters(unet, ["@pyramid"])
    assert any(".attn_pst." in n for n in pyramid) and any(".pst_conv_in." in n for n in pyramid)
    assert all(".attn_pst." in n or ".pst_conv_" in n for n in pyramid)
    expected = {f"{prefix}.{name}" for prefix, m in unet.named_modules()
                if isinstance(m, (PyramidFrameAttention, TemporalConv1d)) for name, _ in m.named_parameters()}
    assert pyramid == expected


def test_unknown_schedule_factor_is_a_clear_error():
    cfg = copy.deepcopy(UNIVID)
    cfg["layer_options"] = {"spatial_attention": {"reference_frames": {1: 2, 2: 4}}}
    with pytest.raises(ValueError, match="no entry for downsampling factor 4"):
        UNet3DModel(**cfg)


# ------------------------------------------------------------------------------------------ unified training task


def _univid_config(tmp_path, **train):
    from test_training import TINY_TEXT, TINY_UNET, TINY_VAE, tiny_config

    from vidiff.training.config import config_from_dict

    unet = {**TINY_UNET, "image_cross_attention": True, "temporal_conv": False,
            "layer_types": {"spatial_attention": "pst", "resblock": "pst"},
            "layer_options": {"spatial_attention": {"reference_frames": {1: 2}}, "resblock": {"kernels": {1: 3}}}}
    model = {"unet": {"config": unet}, "vae": {"config": dict(TINY_VAE)},
             "text_encoder": {"config": dict(TINY_TEXT), "trainable": True},
             "image_encoder": {"config": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2},
                               "trainable": True},
             "defaults": {"num_frames": 4, "height": 32, "width": 32, "fps": 8}}
    raw = tiny_config(tmp_path, task="univid", model=model,
                      train={"max_steps": 2, "ema": False, "cond_dropout": {"text": 0.0}, **train},
                      export={"at_end": True})
    return raw, config_from_dict(copy.deepcopy(raw))


def _batch(n: int = 4):
    from vidiff.data.csv_datasets import collate_video_batch
    from vidiff.data.shapes import ShapesVideoDataset, ShapesWorldConfig
    from vidiff.training.data import TrainingSample

    ds = TrainingSample(ShapesVideoDataset(ShapesWorldConfig(height=32, width=32, num_frames=4), length=n,
                                           ground_truth=False))
    return collate_video_batch([ds[i] for i in range(n)])


def test_unified_task_sets_each_rows_stream_weights_from_its_mode(tmp_path):
    from vidiff.training.losses import sample_generators
    from vidiff.training.tasks import make_task

    _, cfg = _univid_config(tmp_path, task_mix={"t2v": 0.3, "i2v": 0.3, "ti2v": 0.4})
    task = make_task(cfg, torch.device("cpu"))
    gens = sample_generators(0, 0, 0, list(range(400)))
    modes = task.draw_modes(gens)
    share = {m: modes.count(m) / len(modes) for m in ("t2v", "i2v", "ti2v")}
    assert abs(share["t2v"] - 0.3) < 0.08 and abs(share["i2v"] - 0.3) < 0.08 and abs(share["ti2v"] - 0.4) < 0.08

    seen = {}
    real = task.module.forward

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    task.module.forward = spy
    task.mode_counts = dict.fromkeys(task.mode_counts, 0)
    loss, _ = task.loss(task.module, _batch(8), sample_generators(0, 0, 0, list(range(8))))
    assert torch.isfinite(loss)
    lam = {"t2v": (1.0, 0.0), "i2v": (0.0, 1.0), "ti2v": (1.0, 1.0)}
    rows = list(zip(seen["text_scale"].tolist(), seen["image_scale"].tolist()))
    assert sum(task.mode_counts.values()) == 8 and task.mode_counts["null"] == 0
    for mode, weights in lam.items():  # each row's (λ_t, λ_v) is its mode's, and the counters agree
        assert rows.count(weights) == task.mode_counts[mode]
    assert "clip_images" in seen and "c_concat" not in seen  # the image enters through the stream only


def test_unified_training_exports_a_folder_the_pipeline_and_cli_run(tmp_path, capsys):
    from test_training import run_config

    from vidiff.cli import main
    from vidiff.pipelines.base import PipelineError
    from vidiff.pipelines.unified import UnifiedVideoPipeline

    raw, _ = _univid_config(tmp_path / "run")
    result = run_config(raw)
    pipe = UnifiedVideoPipeline.from_pretrained(result.model_dir)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    other = torch.rand(1, 3, 32, 32) * 2 - 1
    common = dict(num_inference_steps=2, seed=0, progress=False)
    a = pipe("a red circle moving left", image, image_scale=0.0, **common).frames
    b = pipe("a red circle moving left", other, image_scale=0.0, **common).frames
    c = pipe("a red circle moving left", **common).frames
    assert a.shape == (1, 4, 32, 32, 3) and (a == b).all() and (a == c).all()  # λ_v = 0 is text-to-video
    d = pipe("a blue square moving up", image, text_scale=0.0, **common).frames
    e = pipe("a red circle moving left", image, text_scale=0.0, **common).frames
    f = pipe(None, image, **common).frames
    assert (d == e).all() and (d == f).all()  # λ_t = 0 is image-to-video
    with pytest.raises(PipelineError, match="both streams are off"):
        pipe("a red circle", image, text_scale=0.0, image_scale=0.0, **common)
    with pytest.raises(PipelineError, match="finite number"):
        pipe("a red circle", image, text_scale=float("nan"), **common)
    with pytest.raises(PipelineError, match="give a prompt, an image"):
        pipe(None, None, **common)

    from PIL import Image

    img = tmp_path / "in.png"
    Image.fromarray((torch.rand(32, 32, 3) * 255).byte().numpy()).save(img)
    out = tmp_path / "ti2v.mp4"
    assert main(["generate", "a red circle moving left", "--model", str(result.model_dir), "--image", str(img),
                 "--steps", "2", "-o", str(out)]) == 0
    assert out.is_file() and "text+image-to-video" in capsys.readouterr().out
    out2 = tmp_path / "i2v.mp4"
    assert main(["animate", str(img), "--model", str(result.model_dir), "--steps", "2", "-o", str(out2)]) == 0
    assert out2.is_file() and "mode: image-to-video" in capsys.readouterr().out
    assert main(["generate", "a red circle", "--model", str(result.model_dir), "--text-scale", "0",
                 "-o", str(tmp_path / "x.mp4")]) == 2
    assert "both streams are off" in capsys.readouterr().err

    # a LoRA on the UniVid U-Net: PSTAttn counts as temporal (cross-frame) attention; generate --lora applies it
    from vidiff.models.lora import add_lora, lora_file_from_unet, resolve_targets, save_lora

    unet = copy.deepcopy(pipe.unet)
    spatial = resolve_targets(unet, ["spatial"])
    temporal = add_lora(unet, rank=2, targets=["temporal"])
    assert any(".attn_pst." in n for n in temporal) and not any(".attn_pst." in n for n in spatial)
    assert not set(spatial) & set(temporal) and any(".attn2." in n for n in spatial)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.5)
    save_lora(lora_file_from_unet(unet), tmp_path / "t.safetensors")
    plain, adapted = tmp_path / "plain.mp4", tmp_path / "adapted.mp4"
    for path, extra in ((plain, []), (adapted, ["--lora", str(tmp_path / "t.safetensors")])):
        assert main(["generate", "a red circle moving left", "--model", str(result.model_dir), "--image", str(img),
                     "--steps", "2", "-o", str(path), *extra]) == 0
    capsys.readouterr()
    assert plain.read_bytes() != adapted.read_bytes()

    # vidiff eval: the modes (U1) and a stream-weight sweep on conflicting pairs (U2), written with their plot
    import json

    report_dir = tmp_path / "eval"
    args = ["eval", "--model", str(result.model_dir), "--mode", "t2v,ti2v", "--lambda-sweep", "0,1", "--samples", "3",
            "--suite", "seen,heldout", "--steps", "2", "-o", str(report_dir)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "heldout text-to-video: colour" in printed and "lambda_sweep_image.png" in printed
    report = json.loads((report_dir / "lambda_sweep.json").read_text())
    assert set(report["modes"]) == {"seen", "heldout"} and set(report["modes"]["seen"]) == {"t2v", "ti2v"}
    assert "identity" in report["modes"]["heldout"]["ti2v"]
    rows = report["sweeps"][0]["rows"]
    assert [r["weight"] for r in rows] == [0.0, 1.0] and report["sweeps"][0]["stream"] == "image"
    assert all(0 <= r[k] <= 100 for r in rows for k in ("colour_is_text", "colour_is_image", "shape_is_text"))
    assert (report_dir / "lambda_sweep_image.png").stat().st_size > 1000
    assert "colour = image %" in (report_dir / "lambda_sweep.md").read_text()
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err  # nothing already written is replaced
    for bad, message in ((["--lambda-sweep", "0,x"], "comma-separated numbers"),
                         (["--lambda-sweep", "0,-1"], "finite numbers >= 0"),
                         (["--mode", "t2i"], "unknown mode 't2i'"),
                         (["--sweep-stream", "text"], "give --lambda-sweep too"),
                         (["--suite", "train"], "--suite: choose from seen, heldout"),
                         (["--height", "16"], "--height not supported")):
        assert main(["eval", "--model", str(result.model_dir), *bad, "-o", str(tmp_path / "bad")]) == 2
        assert message in capsys.readouterr().err, bad
    assert not (tmp_path / "bad").exists()


def test_unified_training_with_joint_image_batches_leaves_the_temporal_layers_to_the_videos(tmp_path):
    """Joint image batches in a UniVid run: the one-frame steps change spatial weights only, and a U-Net without
    image_frames_spatial_only is refused before training, in one line."""
    from safetensors.torch import load_file
    from test_training import run_config

    from vidiff.training.config import ConfigError
    from vidiff.training.tasks import make_task

    images = {"images": {"type": "shapes", "height": 32, "width": 32, "length": 16, "seed": 2},
              "image_batch_size": 2, "image_batches_per_video_batch": 1.0}
    raw, cfg = _univid_config(tmp_path / "refused")
    raw["data"] = {**raw["data"], **images}
    from vidiff.training.config import config_from_dict

    with pytest.raises(ConfigError, match="image_frames_spatial_only"):
        make_task(config_from_dict(copy.deepcopy(raw)), torch.device("cpu"))

    raw, _ = _univid_config(tmp_path / "run", max_steps=4)
    raw["data"] = {**raw["data"], **images}
    raw["model"]["unet"]["config"]["image_frames_spatial_only"] = True
    raw["checkpoint"] = {"every": 1, "keep_last": 10}
    raw["optim"] = {**raw["optim"], "warmup_steps": 0}
    result = run_config(raw)
    assert result.finished
    task = make_task(config_from_dict(copy.deepcopy(raw)), torch.device("cpu"))
    temporal = tuple(f"unet.{n}." for n, m in task.unet.named_modules()
                     if type(m).__name__ in ("TemporalTransformer", "PyramidFrameAttention", "TemporalConv1d"))
    from vidiff.training.checkpointing import list_checkpoints

    steps = [load_file(str(folder / "model.safetensors")) for _, folder in list_checkpoints(tmp_path / "run" / "checkpoints")]
    moved_temporal = [any(not torch.equal(a[k], b[k]) for k in a if k.startswith(temporal))
                      for a, b in zip(steps, steps[1:])]
    assert False in moved_temporal and True in moved_temporal  # image steps leave them, video steps move them


def test_stream_weights_on_a_model_without_an_image_stream_are_refused(capsys):
    from vidiff.cli import main

    assert main(["generate", "a red circle", "--image-scale", "0.5", "-o", "/tmp/never.mp4"]) == 2
    assert "only work with a UniVid model folder" in capsys.readouterr().err
    assert main(["eval", "--model", "src/vidiff/assets/models/shapes_t2v", "--lambda-sweep", "0,1",
                 "-o", "/tmp/never_eval"]) == 2
    assert "evaluate UniVid model folders" in capsys.readouterr().err


def test_sweep_summary_finds_the_crossover_and_the_rank_correlation():
    from vidiff.eval.lambda_sweep import SweepResult, _crossover, _spearman

    assert _crossover([0, 0.5, 1], [100, 50, 0], [0, 50, 100]) == 0.5
    assert abs(_crossover([0, 1, 2], [100, 60, 0], [0, 20, 100]) - (1 + 40 / 140)) < 1e-12
    assert _crossover([0, 1], [0, 0], [0, 0]) is None and _crossover([0, 1], [0, 33], [0, 0]) is None
    assert _spearman([0, 1, 2], [0, 10, 20]) == 1.0 and _spearman([0, 1, 2], [30, 10, 10]) < -0.8
    rows = [{"weight": w, "colour_is_text": t, "colour_is_image": v} for w, t, v in ((0, 90, 0), (1, 40, 50), (2, 0, 80))]
    summary = SweepResult("image", [0, 1, 2], rows).summary
    assert summary["spearman_colour_follows_swept_stream"] == 1.0 and 0 < summary["crossover_colour"] < 1


def test_mode_counts_survive_a_resume(tmp_path):
    import json

    from test_training import run_config

    raw, _ = _univid_config(tmp_path / "run", max_steps=3)
    first = run_config({**raw, "train": {**raw["train"], "stop_at_step": 1}})
    assert not first.finished
    done = run_config(raw)
    counts = json.loads((done.model_dir / "model_index.json").read_text())["mode_counts"]
    rows = raw["data"]["batch_size"] * 3
    assert sum(counts.values()) == rows, counts  # the rows before the stop are counted too
