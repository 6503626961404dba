"""The training engine: config, parameter selection, objectives, exact resume (also after kill -9), exports, data.

Runs use a tiny VideoCrafter-layout U-Net on 32x32 shapes-world clips of 4 frames with a random frozen autoencoder, so
every run takes seconds on a CPU. ``tiny_config`` is shared with tests/test_training_multiprocess.py.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from vidiff.training.checkpointing import STATE_FILE, list_checkpoints
from vidiff.training.config import ConfigError, apply_overrides, config_from_dict, load_config
from vidiff.training.losses import dropout_masks, encode_latents, sample_generators
from vidiff.training.params import SelectorError, apply_trainable, select_parameters
from vidiff.training.trainer import train

REPO = Path(__file__).resolve().parents[1]

TINY_UNET = {
    "in_channels": 4, "out_channels": 4, "model_channels": 32, "channel_mult": [1], "num_res_blocks": 1,
    "attention_resolutions": [1], "num_head_channels": 16, "context_dim": 32, "temporal_conv": True,
    "temporal_conv_dropout": 0.1, "fps_condition": True, "init_attention_heads": 2, "temporal_length": 4,
    "default_fps": 8,
}
TINY_VAE = {
    "block_out_channels": [32, 32, 32], "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3, "layers_per_block": 1, "latent_channels": 4, "norm_num_groups": 32,
    "sample_size": 32, "scaling_factor": 1.0,
}
TINY_TEXT = {"context_length": 16, "width": 32, "layers": 1, "heads": 2, "layer": "last"}


def tiny_config(out: Path, **sections) -> dict:
    """A complete, seconds-long T2V run: sections replace/extend the defaults one level deep (e.g. train={...})."""
    cfg = {
        "task": "t2v",
        "output_dir": str(out),
        "seed": 3,
        "model": {
            "unet": {"config": dict(TINY_UNET)},
            "vae": {"config": dict(TINY_VAE)},
            "text_encoder": {"config": dict(TINY_TEXT), "trainable": True},
            "defaults": {"num_frames": 4, "height": 32, "width": 32, "fps": 8},
        },
        "data": {
            "videos": {"type": "shapes", "height": 32, "width": 32, "num_frames": 4, "length": 64, "seed": 5},
            "batch_size": 2,
            "seed": 7,
        },
        "optim": {"lr": 1e-3, "warmup_steps": 1},
        "train": {"max_steps": 4, "ema_decay": 0.9, "threads": 1, "cond_dropout": {"text": 0.3}},
        "log": {"every": 1, "progress": False, "plot_every": 2},
        "sample": {"every": 0, "at_end": False, "steps": 2},
        "checkpoint": {"every": 2, "keep_last": 5},
        "export": {"at_end": False},
    }
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(name), dict):
            cfg[name] = {**cfg[name], **value}
        else:
            cfg[name] = value
    return cfg


def run_config(cfg: dict):
    return train(config_from_dict(copy.deepcopy(cfg)))


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(list_checkpoints(out / "checkpoints")[-1][1] / "model.safetensors"))


def assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------------------------------------- config


def test_config_overrides_types_and_typos(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "run")))
    cfg = load_config(path, ["train.max_steps=7", "optim.lr=3e-4", "sample.prompts=[a, b]", "train.stop_at_step=null"])
    assert cfg.train.max_steps == 7 and cfg.optim.lr == pytest.approx(3e-4) and cfg.sample.prompts == ["a", "b"]
    assert cfg.model.unet.config["model_channels"] == 32
    with pytest.raises(ConfigError, match=r"train\.max_step'.*did you mean 'max_steps'"):
        load_config(path, ["train.max_step=3"])
    with pytest.raises(ConfigError, match=r"train\.max_steps: expected an integer"):
        load_config(path, ["train.max_steps=abc"])
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(path, ["train.max_steps"])
    with pytest.raises(ConfigError, match="cond_dropout probabilities add up"):
        load_config(path, ["task=autoencoder", "train.cond_dropout={text: 0.6, both: 0.6}"])
    with pytest.raises(ConfigError, match="image-conditioned"):
        load_config(path, ["train.cond_dropout={image: 0.1}"])
    with pytest.raises(ConfigError, match="mixed_precision"):
        load_config(path, ["train.mixed_precision=fp8"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c.d=2"]) == {"a": {"b": 1, "c": {"d": 2}}}


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_are_valid(name):
    cfg = load_config(REPO / "configs" / name)
    assert cfg.train.max_steps > 0 and cfg.output_dir


def test_bad_model_config_is_reported_with_its_key(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    cfg["model"]["unet"]["config"]["model_chanels"] = 32
    with pytest.raises(ConfigError, match=r"model\.unet\.config does not fit UNet3DModel.*model_chanels"):
        run_config(cfg)
    cfg = tiny_config(tmp_path / "run2")
    cfg["model"]["text_encoder"]["config"]["width"] = 64
    with pytest.raises(ConfigError, match="context_dim is 32 but the text encoder is 64 wide"):
        run_config(cfg)


# -------------------------------------------------------------------------------------------------- param selection


def _tiny_bundle(image_attention: bool = False):
    from vidiff.models.text_encoder import OpenCLIPTextEncoder
    from vidiff.models.unet3d import UNet3DModel
    from vidiff.training.models import DenoiserBundle

    unet = UNet3DModel(**{**TINY_UNET, "image_cross_attention": image_attention})
    return DenoiserBundle(unet, OpenCLIPTextEncoder(**TINY_TEXT))


def test_parameter_selectors_pick_layer_kinds():
    from vidiff.models.attention import TemporalTransformer
    from vidiff.models.resnet import TemporalConvBlock

    bundle = _tiny_bundle(image_attention=True)
    expected = set()
    for prefix, mod in bundle.named_modules():
        if isinstance(mod, TemporalTransformer | TemporalConvBlock):
            expected |= {f"{prefix}.{n}" for n, _ in mod.named_parameters()}
    assert expected and select_parameters(bundle, ["@temporal"]) == expected
    assert any(n.startswith("unet.init_attn.") for n in expected)
    ip = select_parameters(bundle, ["@image_cross_attention"])
    assert ip and all(".to_k_ip." in n or ".to_v_ip." in n for n in ip)
    everything = {n for n, _ in bundle.named_parameters()}
    assert select_parameters(bundle, ["*"], ["text_encoder.*"]) == {n for n in everything if n.startswith("unet.")}
    summary = apply_trainable(bundle, ["@temporal"])
    assert {n for n, p in bundle.named_parameters() if p.requires_grad} == expected
    assert summary.num_trainable == sum(p.numel() for p in bundle.parameters() if p.requires_grad)
    with pytest.raises(SelectorError, match="matches no parameter"):
        select_parameters(bundle, ["unet.no_such_layer.*"])
    with pytest.raises(SelectorError, match="unknown preset"):
        select_parameters(bundle, ["@temporl"])
    with pytest.raises(SelectorError, match="matches no parameter of this model"):
        select_parameters(_tiny_bundle(image_attention=False), ["@image_cross_attention"])


# ------------------------------------------------------------------------------------------------ objective pieces


def test_condition_dropout_cases_are_disjoint_with_exact_rates():
    u = (torch.arange(10_000) + 0.5) / 10_000
    text, image = dropout_masks(u, {"text": 0.1, "both": 0.05, "image": 0.2})
    assert float((text & ~image).float().mean()) == pytest.approx(0.1)
    assert float((text & image).float().mean()) == pytest.approx(0.05)
    assert float((image & ~text).float().mean()) == pytest.approx(0.2)


def test_sample_generators_depend_only_on_seed_step_micro_position():
    a = [torch.randn(3, generator=g) for g in sample_generators(1, 5, 0, [0, 1, 2])]
    b = [torch.randn(3, generator=g) for g in sample_generators(1, 5, 0, [2])]
    assert torch.equal(a[2], b[0]) and not torch.equal(a[0], a[1])
    c = [torch.randn(3, generator=g) for g in sample_generators(1, 6, 0, [2])]
    assert not torch.equal(a[2], c[0])


def test_encode_latents_matches_encode_video():
    from vidiff.models.autoencoder import LDMAutoencoderKL, encode_video

    torch.manual_seed(0)
    vae = LDMAutoencoderKL(**{**TINY_VAE, "scaling_factor": 0.5}).eval()
    video = torch.rand(2, 3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        mean = encode_video(vae, video, sample=False)
        assert torch.allclose(encode_latents(vae, video, None), mean, atol=1e-6)
        eps = torch.randn_like(mean)
        sampled = encode_latents(vae, video, eps)
        std = vae.encode(video.permute(0, 2, 1, 3, 4).reshape(6, 3, 32, 32)).latent_dist.std
    std = std.reshape(2, 3, 4, 8, 8).permute(0, 2, 1, 3, 4) * 0.5
    assert torch.allclose(sampled, mean + std * eps, atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_diffusion_loss_targets(prediction):
    from vidiff.diffusion.schedule import NoiseSchedule
    from vidiff.training.losses import diffusion_loss, draw_diffusion

    schedule = NoiseSchedule(prediction_type=prediction, data_scale="vc", scale_end=0.7)
    x0 = torch.randn(3, 4, 2, 8, 8)
    draws = draw_diffusion(sample_generators(0, 0, 0, [0, 1, 2]), (4, 2, 8, 8), 1000, False)
    seen = {}

    def oracle(noisy, t, **kw):  # knows x0 and the noise: returns the exact target
        seen["noisy"], seen["kw"] = noisy, kw
        return schedule.training_target(x0, draws.noise, t)

    loss, _ = diffusion_loss(oracle, schedule, x0, draws, fps=torch.tensor([8, 8, 8]))
    assert float(loss) == 0.0 and "fps" in seen["kw"]
    assert torch.allclose(seen["noisy"], schedule.add_noise(x0, draws.noise, draws.timesteps))
    zero_loss, _ = diffusion_loss(lambda n, t, **kw: torch.zeros_like(n), schedule, x0, draws)
    target = schedule.training_target(x0, draws.noise, draws.timesteps)
    assert float(zero_loss) == pytest.approx(float(target.square().mean()), rel=1e-6)


def test_timestep_sampling_uniform_is_unchanged_and_logit_normal_shifts_to_high_noise(tmp_path):
    from vidiff.training.losses import draw_diffusion

    positions = list(range(2000))
    uniform = draw_diffusion(sample_generators(0, 0, 0, positions), (1,), 1000, False, {"type": "uniform"})
    before = draw_diffusion(sample_generators(0, 0, 0, positions), (1,), 1000, False)  # the old call
    assert torch.equal(uniform.timesteps, before.timesteps) and torch.equal(uniform.noise, before.noise)
    high = draw_diffusion(sample_generators(0, 0, 0, positions), (1,), 1000, False,
                          {"type": "logit_normal", "mean": 1.0, "std": 1.0}).timesteps
    assert high.min() >= 0 and high.max() <= 999
    assert 380 < float(uniform.timesteps.float().mean()) < 620 and float(high.float().mean()) > 650
    assert float((high > 600).float().mean()) > 0.6 > float((uniform.timesteps > 600).float().mean())
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp_path / "run")))
    assert load_config(path, ["train.timestep_sampling={type: logit_normal, mean: 0.5}"]).train.timestep_sampling
    for bad, message in (("{type: cosine}", "uniform or logit_normal"), ("{type: uniform, mean: 1}", "accepts type"),
                         ("{type: logit_normal, std: 0}", "std must be > 0"),
                         ("{type: logit_normal, mean: .nan}", "finite number")):
        with pytest.raises(ConfigError, match=message):
            load_config(path, [f"train.timestep_sampling={bad}"])


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    bundle = _tiny_bundle()
    for m in bundle.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    x, t = torch.randn(2, 4, 4, 8, 8), torch.tensor([10, 500])
    tokens = torch.randint(0, 49000, (2, 16))

    def grads():
        bundle.zero_grad()
        bundle(x, t, fps=torch.tensor([8, 4]), tokens=tokens).square().mean().backward()
        return {n: p.grad.clone() for n, p in bundle.named_parameters() if p.grad is not None}

    plain = grads()
    bundle.unet.enable_gradient_checkpointing()
    checkpointed = grads()
    assert plain.keys() == checkpointed.keys()
    for k in plain:
        assert torch.allclose(plain[k], checkpointed[k], atol=1e-6, rtol=1e-5), k


# ------------------------------------------------------------------------------------------------------------ resume


def test_interrupted_and_resumed_run_is_bit_identical(tmp_path):
    """Joint image-video batches, gradient accumulation, trainable text encoder, text dropout and dropout layers (global
    RNG): stopping at step 2 and rerunning the same config ends with exactly the weights of an uninterrupted run."""
    sections = {
        "data": {"images": {"type": "shapes", "height": 32, "width": 32, "length": 32, "seed": 2},
                 "image_batch_size": 3, "image_batches_per_video_batch": 0.5},
        "train": {"grad_accum_steps": 2},
    }
    full = tiny_config(tmp_path / "full", **sections)
    res_full = run_config(full)
    assert res_full.finished and res_full.step == 4

    parts = tiny_config(tmp_path / "parts", **sections)
    first = run_config({**parts, "train": {**parts["train"], "stop_at_step": 2}})
    assert not first.finished and first.step == 2
    assert [s for s, _ in list_checkpoints(tmp_path / "parts" / "checkpoints")] == [2]
    second = run_config(parts)
    assert second.finished and second.step == 4

    assert_same_tensors(final_weights(tmp_path / "full"), final_weights(tmp_path / "parts"))
    ck_full = list_checkpoints(tmp_path / "full" / "checkpoints")[-1][1]
    ck_parts = list_checkpoints(tmp_path / "parts" / "checkpoints")[-1][1]
    load = lambda folder, name: torch.load(folder / name, weights_only=False)  # noqa: E731
    state_a, state_b = load(ck_full, "custom_checkpoint_0.pkl"), load(ck_parts, "custom_checkpoint_0.pkl")
    state_a.pop("train_seconds"), state_b.pop("train_seconds")
    assert state_a == state_b  # step, data position (epoch, batch), samples seen
    ema_a, ema_b = load(ck_full, "custom_checkpoint_2.pkl"), load(ck_parts, "custom_checkpoint_2.pkl")
    assert ema_a["optimization_step"] == ema_b["optimization_step"] == 4
    assert all(torch.equal(x, y) for x, y in zip(ema_a["shadow_params"], ema_b["shadow_params"]))
    opt_a, opt_b = load(ck_full, "optimizer.bin")["state"], load(ck_parts, "optimizer.bin")["state"]
    assert opt_a.keys() == opt_b.keys()
    for key in opt_a:
        for name, value in opt_a[key].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_b[key][name])), (key, name)
    # The logs of the two runs agree row by row (the resumed run does not duplicate or lose steps).
    rows = [list(csv.DictReader(open(p / "log.csv"))) for p in (tmp_path / "full", tmp_path / "parts")]
    assert [r["step"] for r in rows[1]] == ["1", "2", "3", "4"]
    assert [r["loss"] for r in rows[0]] == [r["loss"] for r in rows[1]]
    assert (tmp_path / "parts" / "loss.png").is_file()


def test_kill_9_leaves_a_loadable_checkpoint_and_resumes(tmp_path):
    cfg = tiny_config(tmp_path / "run", train={"max_steps": 6}, checkpoint={"every": 1, "keep_last": 2})
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "vidiff.cli_train", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ckpts = tmp_path / "run" / "checkpoints"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline and len(list_checkpoints(ckpts)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere inside a later step or save
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read().decode()[-2000:]
    found = list_checkpoints(ckpts)
    assert found, "no checkpoint survived"
    visible = [p for p in ckpts.iterdir() if not p.name.startswith(".")]
    assert sorted(visible) == sorted(p for _, p in found), "a partial checkpoint folder is visible"
    for step, folder in found:
        assert json.loads((folder / STATE_FILE).read_text())["step"] == step
        assert load_file(str(folder / "model.safetensors"))
        torch.load(folder / "optimizer.bin", weights_only=False)
    killed_at = found[-1][0]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed from" in done.stdout and f"at step {killed_at}" in done.stdout
    assert list_checkpoints(ckpts)[-1][0] == 6
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]
    # Same final weights as an uninterrupted run of the same config.
    reference = run_config(tiny_config(tmp_path / "ref", train={"max_steps": 6}, checkpoint={"every": 6}))
    assert reference.finished
    assert_same_tensors(final_weights(tmp_path / "run"), final_weights(tmp_path / "ref"))


# ---------------------------------------------------------------------------------------------- stages and exports


def test_temporal_only_stage_leaves_the_rest_untouched_and_exports_a_loadable_model(tmp_path):
    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    base = run_config(tiny_config(tmp_path / "base", train={"max_steps": 1, "ema": False},
                                  export={"at_end": True}))
    assert base.model_dir is not None and (base.model_dir / "model_index.json").is_file()
    stage = tiny_config(tmp_path / "stage", train={"max_steps": 2, "trainable": ["@temporal"], "ema": False},
                        export={"at_end": True}, sample={"at_end": True, "prompts": ["a red circle moving left"],
                                                          "steps": 2, "every": 0})
    stage["model"] = {"init_from": str(base.model_dir), "text_encoder": {"trainable": False}}
    res = run_config(stage)
    before = load_file(str(base.model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(res.model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    from vidiff.models.unet3d import UNet3DModel

    temporal = select_parameters(UNet3DModel(**TINY_UNET), ["@temporal"])
    assert changed and changed <= temporal, changed - temporal
    assert len(changed) > len(temporal) // 2
    assert res.previews and res.previews[-1].suffix == ".png" and res.previews[-1].is_file()
    pipe = TextToVideoPipeline.from_pretrained(res.model_dir)
    out = pipe("a blue square moving up", num_inference_steps=2, seed=0, progress=False)
    assert out.frames.shape == (1, 4, 32, 32, 3) and out.frames.dtype == torch.uint8


def test_bf16_mixed_precision_step(tmp_path):
    res = run_config(tiny_config(tmp_path / "bf16", train={"max_steps": 1, "mixed_precision": "bf16"}))
    assert res.finished and res.final_loss is not None and np.isfinite(res.final_loss)


class TinyDeterministicAE(torch.nn.Module):
    """An autoencoder with plain-tensor encode/decode (no posterior): the autoencoder trainer must take it."""

    def __init__(self, channels: int = 3, latent: int = 2) -> None:
        super().__init__()
        self.enc = torch.nn.Conv2d(channels, latent, 4, stride=2, padding=1)
        self.dec = torch.nn.ConvTranspose2d(latent, channels, 4, stride=2, padding=1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)


class TinyVideoAE(torch.nn.Module):
    """A clip autoencoder with a temporal decoder (Conv3d), as VideoGen's: it takes (b, 3, t, H, W) clips."""

    def __init__(self, latent: int = 4) -> None:
        super().__init__()
        self.enc = torch.nn.Conv3d(3, latent, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1))
        self.dec = torch.nn.Sequential(torch.nn.ConvTranspose3d(latent, 8, (1, 4, 4), stride=(1, 2, 2),
                                                                padding=(0, 1, 1)),
                                       torch.nn.Conv3d(8, 3, 3, padding=1))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        assert x.ndim == 5
        return self.enc(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.dec(z)


def test_autoencoder_training_kl_model_and_generic_module(tmp_path):
    from vidiff.models.autoencoder import LDMAutoencoderKL

    ae = {
        "task": "autoencoder",
        "model": {"vae": {"config": {**TINY_VAE, "block_out_channels": [32, 32]} | {
            "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2}}},
        "data": {"videos": {"type": "shapes", "height": 32, "width": 32, "num_frames": 4, "length": 2, "seed": 5},
                 "batch_size": 2},  # one fixed batch: the loss must fall
        "optim": {"lr": 2e-3},
        "train": {"max_steps": 6, "ema": False, "threads": 1, "recon_loss": "l1+l2"},
        "sample": {"at_end": True, "num_reconstructions": 2},
        "export": {"at_end": True},
    }
    res = run_config(tiny_config(tmp_path / "kl", **ae))
    rows = list(csv.DictReader(open(tmp_path / "kl" / "log.csv")))
    assert {"loss", "kl", "l1", "l2"} <= rows[0].keys()
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    vae = LDMAutoencoderKL.from_pretrained(res.model_dir)
    assert vae.config.scaling_factor != 1.0  # calibrated to 1 / std of the latents
    assert res.previews and res.previews[-1].is_file()

    # a decoder fine-tune keeps the latent space: the encoder and the scaling factor are the pretrained ones
    decoder = copy.deepcopy(ae)
    decoder["model"] = {"vae": {"pretrained": str(res.model_dir), "trainable": True}}
    decoder["data"] = {**ae["data"], "videos": {**ae["data"]["videos"], "seed": 6}}  # other clips, another std
    decoder["train"] = {**ae["train"], "trainable": ["autoencoder.decoder.*", "autoencoder.post_quant_conv.*"]}
    tuned = LDMAutoencoderKL.from_pretrained(run_config(tiny_config(tmp_path / "decoder", **decoder)).model_dir)
    assert tuned.config.scaling_factor == vae.config.scaling_factor
    before, after = vae.state_dict(), tuned.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))

    generic = copy.deepcopy(ae)
    generic["model"] = {"vae": {"class_path": "test_training:TinyDeterministicAE", "config": {"latent": 3}}}
    res = run_config(tiny_config(tmp_path / "generic", **generic))
    rows = list(csv.DictReader(open(tmp_path / "generic" / "log.csv")))
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) and rows[0]["kl"] == ""
    assert (res.model_dir / "model.safetensors").is_file()

    video = copy.deepcopy(ae)
    video["model"] = {"vae": {"class_path": "test_training:TinyVideoAE", "config": {}}, "autoencoder_input": "video"}
    res = run_config(tiny_config(tmp_path / "video", **video))
    losses = [float(r["loss"]) for r in csv.DictReader(open(tmp_path / "video" / "log.csv"))]
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) and res.previews[-1].is_file()


# -------------------------------------------------------------------------------------------------- csv + folders


def _write_clip(path: Path, n_frames: int, fps: int, colour: tuple[int, int, int]) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(fps))
        stream.width, stream.height, stream.pix_fmt = 48, 40, "yuv420p"
        for k in range(n_frames):
            rgb = np.zeros((40, 48, 3), np.uint8)
            rgb[:] = colour
            rgb[10:20, 4 + 3 * k : 14 + 3 * k] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def test_csv_videos_and_image_folder_train(tmp_path):
    from PIL import Image

    data = tmp_path / "data"
    (data / "clips").mkdir(parents=True)
    rows = []
    for i, colour in enumerate([(200, 0, 0), (0, 200, 0), (0, 0, 200), (90, 90, 0)]):
        _write_clip(data / "clips" / f"{i}.mp4", 10, 12, colour)
        rows.append({"path": f"clips/{i}.mp4", "caption": f"a white box moving right on colour {i}"})
    with open(data / "videos.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    (data / "images").mkdir()
    for i in range(3):
        Image.new("RGB", (40, 36), (30 * i, 100, 50)).save(data / "images" / f"{i}.png")
        (data / "images" / f"{i}.txt").write_text(f"a flat picture {i}")
    cfg = tiny_config(
        tmp_path / "run",
        data={
            "videos": {"type": "csv", "csv_path": str(data / "videos.csv"), "num_frames": 4, "frame_stride": [1, 2],
                       "resolution": 32},
            "images": {"type": "folder", "source": str(data / "images"), "resolution": 32},
            "image_batch_size": 2, "image_batches_per_video_batch": 1.0, "batch_size": 2,
        },
        train={"max_steps": 3},
    )
    res = run_config(cfg)
    assert res.finished and np.isfinite(res.final_loss)
    state = json.loads((list_checkpoints(tmp_path / "run" / "checkpoints")[-1][1] / STATE_FILE).read_text())
    # 2 video batches per epoch (4 clips / 2) and one image batch after each: epoch 0 has 4 batches.
    assert (state["epoch"], state["batch_in_epoch"]) == (0, 3)


def test_latent_cache_with_text_embeddings_trains(tmp_path):
    from vidiff.data.latent_cache import build_latent_cache
    from vidiff.data.shapes import ShapesVideoDataset, ShapesWorldConfig
    from vidiff.models.autoencoder import LDMAutoencoderKL, encode_video
    from vidiff.models.text_encoder import OpenCLIPTextEncoder
    from vidiff.models.tokenizer import OpenCLIPTokenizer
    from vidiff.training.data import TrainingSample

    torch.manual_seed(0)
    vae, text = LDMAutoencoderKL(**TINY_VAE).eval(), OpenCLIPTextEncoder(**TINY_TEXT).eval()
    tokenizer = OpenCLIPTokenizer(context_length=16)
    vae.save_pretrained(tmp_path / "vae")
    text.save_pretrained(tmp_path / "text")
    world = ShapesWorldConfig(height=32, width=32, num_frames=4, seed=5)
    build_latent_cache(
        TrainingSample(ShapesVideoDataset(world, length=6, ground_truth=False)),
        lambda v: encode_video(vae, v, sample=False), lambda caps: text(tokenizer(caps)), tmp_path / "cache",
        batch_size=3, samples_per_shard=4, progress=False,
    )
    cfg = tiny_config(tmp_path / "run", data={"videos": {"type": "latent_cache", "path": str(tmp_path / "cache")},
                                              "batch_size": 2},
                      train={"max_steps": 4, "cond_dropout": {"text": 0.5}})
    cfg["model"]["vae"] = {"pretrained": str(tmp_path / "vae")}
    cfg["model"]["text_encoder"] = {"pretrained": str(tmp_path / "text"), "trainable": False}
    res = run_config(cfg)
    assert res.finished and np.isfinite(res.final_loss)
    state = json.loads((list_checkpoints(tmp_path / "run" / "checkpoints")[-1][1] / STATE_FILE).read_text())
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 1)  # 3 batches per epoch
    weights = final_weights(tmp_path / "run")
    assert not any(k.startswith("text_encoder.") for k in weights)  # a frozen encoder stays out of checkpoints


TINY_I2V = {
    "unet": {"config": {**TINY_UNET, "in_channels": 8, "image_cross_attention": True, "image_tokens_per_frame": 4,
                        "per_frame_image_tokens": True, "text_context_len": 16}},
    "image_encoder": {"config": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "heads": 2}},
    "image_projector": {"config": {"dim": 32, "depth": 1, "dim_head": 16, "heads": 2, "num_queries": 4,
                                   "embedding_dim": 32, "output_dim": 32, "video_length": 4}},
    "text_encoder": {"config": dict(TINY_TEXT), "trainable": False},
    "i2v_flavour": "dc",
    "cond_frame": "random",
}


def test_dynamicrafter_two_stage_image_to_video_training(tmp_path):
    """Stage 1 trains only the projector and the image key/value projections; stage 2 starts from its export and
    trains everything; the export animates an image through ImageToVideoPipeline."""
    from vidiff.pipelines.image_to_video import ImageToVideoPipeline

    stage1 = tiny_config(tmp_path / "stage1", task="i2v", model={**tiny_config(tmp_path)["model"], **TINY_I2V},
                         train={"max_steps": 2, "trainable": ["@image_cross_attention"], "ema": False,
                                "cond_dropout": {"text": 0.25, "both": 0.25, "image": 0.25}},
                         export={"at_end": True})
    first = run_config(stage1)
    index = json.loads((first.model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "ImageToVideoPipeline" and index["flavour"] == "dc"
    assert (first.model_dir / "image_projector").is_dir() and (first.model_dir / "image_encoder").is_dir()
    assert index["component_classes"]["image_projector"] == "vidiff.models.resampler:Resampler"
    assert index["component_classes"]["unet"] == "vidiff.models.unet3d:UNet3DModel"
    stage2 = tiny_config(tmp_path / "stage2", task="i2v", train={"max_steps": 1, "trainable": ["*"], "ema": False},
                         optim={"lr": 1e-3, "warmup_steps": 0},
                         export={"at_end": True}, sample={"at_end": True, "steps": 2, "num_reconstructions": 1})
    stage2["model"] = {"init_from": str(first.model_dir), "i2v_flavour": "dc", "cond_frame": "first",
                       "text_encoder": {"trainable": False}}
    second = run_config(stage2)
    before = load_file(str(first.model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    after = load_file(str(second.model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".to_k_ip." not in k and ".to_v_ip." not in k for k in changed)  # stage 2 trains the whole U-Net
    assert second.previews and second.previews[-1].is_file()
    pipe = ImageToVideoPipeline.from_pretrained(second.model_dir)
    image = torch.rand(1, 3, 32, 32) * 2 - 1
    out = pipe(image, "a red circle moving left", num_inference_steps=2, seed=0, progress=False)
    assert out.frames.shape == (1, 4, 32, 32, 3)


def test_image_cross_attention_stage_updates_only_its_parameters(tmp_path):
    from vidiff.training.config import config_from_dict
    from vidiff.training.params import apply_trainable
    from vidiff.training.tasks import make_task

    cfg = config_from_dict(tiny_config(tmp_path / "x", task="i2v", model={**tiny_config(tmp_path)["model"], **TINY_I2V},
                                       train={"cond_dropout": {"text": 0.3, "image": 0.3}}))
    torch.manual_seed(0)
    task = make_task(cfg, torch.device("cpu"))
    summary = apply_trainable(task.module, ["@image_cross_attention"])
    assert summary.trainable and all(n.startswith("image_projector.") or "_ip." in n for n in summary.trainable)
    before = {n: p.detach().clone() for n, p in task.module.named_parameters()}
    from vidiff.data.csv_datasets import collate_video_batch
    from vidiff.data.shapes import ShapesVideoDataset, ShapesWorldConfig
    from vidiff.training.data import TrainingSample

    ds = TrainingSample(ShapesVideoDataset(ShapesWorldConfig(height=32, width=32, num_frames=4), length=2,
                                           ground_truth=False))
    batch = collate_video_batch([ds[0], ds[1]])
    opt = torch.optim.SGD([p for p in task.module.parameters() if p.requires_grad], lr=0.1)
    loss, _ = task.loss(task.module, batch, sample_generators(0, 0, 0, [0, 1]))
    loss.backward()
    opt.step()
    moved = {n for n, p in task.module.named_parameters() if not torch.equal(p, before[n])}
    assert moved and moved <= set(summary.trainable)
    assert any(n.startswith("image_projector.") for n in moved) and any("to_k_ip" in n for n in moved)


def test_trainable_image_encoder_learns_with_the_unet(tmp_path):
    """model.image_encoder.trainable (the embedded I2V default): the image encoder sits in the optimised bundle, gets
    gradients through projector and image cross-attention, and its trained weights are what the export holds."""
    from vidiff.data.csv_datasets import collate_video_batch
    from vidiff.data.shapes import ShapesVideoDataset, ShapesWorldConfig
    from vidiff.training.data import TrainingSample
    from vidiff.training.tasks import make_task

    model = {**tiny_config(tmp_path)["model"], **TINY_I2V}
    model["image_encoder"] = {**TINY_I2V["image_encoder"], "trainable": True}
    raw = tiny_config(tmp_path / "run", task="i2v", model=model,
                      train={"max_steps": 2, "ema": False, "cond_dropout": {"text": 0.0}}, export={"at_end": True})
    cfg = config_from_dict(raw)
    torch.manual_seed(0)
    task = make_task(cfg, torch.device("cpu"))
    names = [n for n, p in task.module.named_parameters() if p.requires_grad]
    assert any(n.startswith("image_encoder.") for n in names)
    ds = TrainingSample(ShapesVideoDataset(ShapesWorldConfig(height=32, width=32, num_frames=4), length=2,
                                           ground_truth=False))
    batch = collate_video_batch([ds[0], ds[1]])
    loss, _ = task.loss(task.module, batch, sample_generators(0, 0, 0, [0, 1]))
    loss.backward()
    grads = {n: p.grad for n, p in task.module.named_parameters() if n.startswith("image_encoder.")}
    assert all(g is not None for g in grads.values()) and any(g.abs().sum() > 0 for g in grads.values())

    # Same seed, same construction order: the frozen run exports the initial encoder, the trainable one a trained one.
    frozen_raw = tiny_config(tmp_path / "frozen", task="i2v", model={**tiny_config(tmp_path)["model"], **TINY_I2V},
                             train=raw["train"], export={"at_end": True})
    frozen_task = make_task(config_from_dict(frozen_raw), torch.device("cpu"))
    assert not any(n.startswith("image_encoder.") for n, _ in frozen_task.module.named_parameters())
    trained = load_file(str(run_config(raw).model_dir / "image_encoder" / "model.safetensors"))
    initial = load_file(str(run_config(frozen_raw).model_dir / "image_encoder" / "model.safetensors"))
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in trained)
