"""LoRA: targets, exactness (no LoRA / scale 0 bit for bit, merged = unmerged), several at once, the file format, the
converter from the released VideoCrafter2 layouts, training with ``train.lora``, and the command line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from lvdm_fixtures import load_manifest, manifest_params
from safetensors import safe_open
from safetensors.torch import save_file
from test_training import TINY_UNET, run_config, tiny_config

from vidiff.conversion.lora import convert_lora, official_module_name
from vidiff.models.lora import (
    LoraError,
    LoraFile,
    active_loras,
    adaptable_modules,
    add_lora,
    load_lora,
    lora_file_from_unet,
    lora_parameters,
    merge_lora,
    read_lora,
    resolve_targets,
    save_lora,
    set_lora_scales,
    unload_lora,
)
from vidiff.models.unet3d import UNet3DModel


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The models here are tiny: one thread is as fast, and a second one stalls on a core another process keeps busy
    (126 s for this file with two threads beside a training run, 21 s with one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_unet(seed: int = 0, **overrides) -> UNet3DModel:
    torch.manual_seed(seed)
    return UNet3DModel(**{**TINY_UNET, **overrides}).eval()


def inputs(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 4, 8, 8, generator=g), torch.randn(2, 16, 32, generator=g)


@torch.no_grad()
def run(unet: torch.nn.Module, x: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
    return unet(x, torch.tensor([10, 700]), ctx, fps=8)


def randomise(unet: torch.nn.Module, adapter: str = "default", std: float = 0.2, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lora_parameters(unet, adapter):
            p.copy_(torch.randn(p.shape, generator=g) * std)


def plain_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base weights of a U-Net with adapters, under their original names."""
    return {k.replace(".base_layer", ""): v.clone() for k, v in unet.state_dict().items() if "lora_" not in k}


# ------------------------------------------------------------------------------------------------------ targets


def test_presets_select_layer_kinds_and_globs():
    unet = tiny_unet()
    sets = {p: set(resolve_targets(unet, [p])) for p in ("cross", "spatial", "temporal", "attention", "all")}
    assert sets["cross"] and sets["cross"] < sets["spatial"]
    assert all(".attn2." in n for n in sets["cross"])
    assert not sets["spatial"] & sets["temporal"]
    assert sets["attention"] == sets["spatial"] | sets["temporal"] < sets["all"]
    assert any(n.startswith("init_attn.") for n in sets["temporal"])  # the temporal transformer after conv_in
    assert any("temporal_conv" in n for n in sets["all"])  # Conv3d of the temporal conv blocks
    assert set(resolve_targets(unet, ["*.attn2.to_k"])) == {n for n in sets["attention"] if n.endswith("attn2.to_k")}
    with pytest.raises(LoraError, match="matches no Linear/Conv module"):
        resolve_targets(unet, ["*.nonexistent"])
    with pytest.raises(LoraError, match="empty"):
        resolve_targets(unet, [])


# ------------------------------------------------------------------------------------------------------ exactness


def test_no_lora_and_scale_zero_are_bit_exact_and_merge_equals_unmerged():
    unet = tiny_unet()
    x, ctx = inputs()
    ref = run(unet, x, ctx)
    modules = add_lora(unet, rank=4, alpha=8, targets=["attention"])
    assert len(modules) == len(resolve_targets(tiny_unet(), ["attention"]))
    assert torch.equal(run(unet, x, ctx), ref)  # B = 0 at initialisation: the model is unchanged
    randomise(unet)
    lora_out = run(unet, x, ctx)
    assert (lora_out - ref).abs().max() > 1e-3
    set_lora_scales(unet, {"default": 0.0})
    assert torch.equal(run(unet, x, ctx), ref)
    set_lora_scales(unet, {"default": 0.5})
    half = run(unet, x, ctx)
    assert not torch.equal(half, ref) and not torch.equal(half, lora_out)
    merge_lora(unet)
    assert not list(unet.named_modules())[0][1].__dict__.get("_vidiff_loras")
    assert all(type(m) in (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Conv3d) for m in adaptable_modules(unet).values())
    assert all("lora" not in k and "base_layer" not in k for k in unet.state_dict())
    torch.testing.assert_close(run(unet, x, ctx), half, atol=1e-5, rtol=1e-5)


def test_unload_gives_the_original_model_back():
    unet = tiny_unet()
    x, ctx = inputs()
    ref = run(unet, x, ctx)
    keys = list(unet.state_dict())
    add_lora(unet, rank=2, targets=["all"])
    randomise(unet)
    unload_lora(unet)
    assert list(unet.state_dict()) == keys and active_loras(unet) == {}
    assert torch.equal(run(unet, x, ctx), ref)


def test_several_loras_add_with_their_own_scales(tmp_path):
    source = tiny_unet()
    add_lora(source, rank=2, targets=["cross"], adapter_name="a")
    add_lora(source, rank=3, alpha=6, targets=["spatial"], adapter_name="b")
    randomise(source, "a", seed=1)
    randomise(source, "b", seed=2)
    save_lora(lora_file_from_unet(source, "a"), tmp_path / "a.safetensors")
    save_lora(lora_file_from_unet(source, "b"), tmp_path / "b.safetensors")
    base = plain_state(source)
    x, ctx = inputs()

    unet = tiny_unet()
    unet.load_state_dict(base)
    a = load_lora(unet, tmp_path / "a.safetensors", scale=0.7)
    b = load_lora(unet, tmp_path / "b.safetensors", scale=-0.4)
    assert active_loras(unet) == {a: 0.7, b: -0.4}
    both = run(unet, x, ctx)
    set_lora_scales(unet, {b: 0.0})
    only_a = run(unet, x, ctx)
    single = tiny_unet()
    single.load_state_dict(base)
    load_lora(single, tmp_path / "a.safetensors", scale=0.7)
    assert torch.equal(only_a, run(single, x, ctx))  # an adapter at scale 0 takes no part at all
    set_lora_scales(unet, {b: -0.4})
    merge_lora(unet)
    torch.testing.assert_close(run(unet, x, ctx), both, atol=1e-5, rtol=1e-5)
    # the merged weight is the sum of both low-rank updates, each at scale * alpha / r
    name = next(n for n in resolve_targets(unet, ["cross"]))
    la, lb = read_lora(tmp_path / "a.safetensors"), read_lora(tmp_path / "b.safetensors")
    delta = 0.7 * 1.0 * la.weights[name][1] @ la.weights[name][0] - 0.4 * 2.0 * lb.weights[name][1] @ lb.weights[name][0]
    torch.testing.assert_close(unet.get_submodule(name).weight - base[name + ".weight"], delta, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------------------------ file format


def test_file_round_trip_key_format_and_metadata(tmp_path):
    source = tiny_unet()
    modules = add_lora(source, rank=4, alpha=2, targets=["spatial", "*.temporal_conv.conv1.2"])
    randomise(source)
    path = save_lora(lora_file_from_unet(source, vocabulary=["pink"]), tmp_path / "x.safetensors")
    assert path.stat().st_size < 200_000
    with safe_open(str(path), framework="pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert keys == {f"unet.{m}.lora_{ab}.weight" for m in modules for ab in "AB"}
    config = json.loads(meta["lora_adapter_metadata"])
    assert (config["r"], config["lora_alpha"], config["target_modules"]) == (4, 2.0, modules)
    assert json.loads(meta["targets"]) == ["spatial", "*.temporal_conv.conv1.2"]
    assert json.loads(meta["base_model"])["model_channels"] == TINY_UNET["model_channels"]
    assert json.loads(meta["vocabulary"]) == ["pink"] and meta["vidiff_lora_version"] == "1"
    assert not list(tmp_path.glob(".*"))  # atomic write: no temporary left

    x, ctx = inputs()
    unet = tiny_unet()
    unet.load_state_dict(plain_state(source))
    load_lora(unet, path)
    assert torch.equal(run(unet, x, ctx), run(source, x, ctx))


def test_lora_errors_name_the_problem(tmp_path):
    source = tiny_unet()
    add_lora(source, rank=4, targets=["cross"])
    lora = lora_file_from_unet(source)
    good = save_lora(lora, tmp_path / "good.safetensors")

    with pytest.raises(LoraError, match="LoRA file not found"):
        read_lora(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LoraError, match="not a readable safetensors"):
        read_lora(tmp_path / "junk.safetensors")
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(tmp_path / "kohya.safetensors"))
    with pytest.raises(LoraError, match="vidiff lora convert"):
        read_lora(tmp_path / "kohya.safetensors")
    other = tiny_unet(channel_mult=[1, 1], num_res_blocks=2)
    with pytest.raises(LoraError, match=r"of \d+ modules match, the first missing one is"):
        load_lora(other, good)
    assert active_loras(other) == {} and not any("lora" in k for k in other.state_dict())  # untouched
    with pytest.raises(LoraError, match="does not fit this U-Net at"):
        load_lora(tiny_unet(model_channels=64, num_head_channels=32), good)
    name = next(iter(lora.weights))
    a, b = lora.weights[name]
    bad = LoraFile({**lora.weights, name: (a, b[:, :2].contiguous())}, lora.alpha)
    tensors = {f"unet.{n}.lora_{k}.weight": t for n, (ta, tb) in bad.weights.items() for k, t in (("A", ta), ("B", tb))}
    save_file(tensors, str(tmp_path / "rank.safetensors"))
    with pytest.raises(LoraError, match="rank mismatch"):
        read_lora(tmp_path / "rank.safetensors")
    with safe_open(str(good), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta["lora_adapter_metadata"] = json.dumps({**json.loads(meta["lora_adapter_metadata"]), "r": 8})
    save_file(tensors, str(tmp_path / "meta.safetensors"), metadata=meta)
    with pytest.raises(LoraError, match="rank mismatch at .*metadata says rank 8"):
        read_lora(tmp_path / "meta.safetensors")
    unet = tiny_unet()
    load_lora(unet, good, adapter_name="one")
    with pytest.raises(LoraError, match="already loaded"):
        load_lora(unet, good, adapter_name="one")
    with pytest.raises(LoraError, match="finite"):
        set_lora_scales(unet, {"one": float("nan")})
    with pytest.raises(LoraError, match="no LoRA named"):
        set_lora_scales(unet, {"two": 1.0})


# ------------------------------------------------------------------------------------------------------ converter


@pytest.mark.parametrize("manifest", manifest_params())
def test_module_order_and_names_are_the_official_ones(manifest):
    """The cloneofsimo list layout relies on the official module order: vidiff's U-Net lists its Linear/Conv2d/Conv3d
    modules in the order of the official state dict, and their official names are the official keys."""
    from vidiff.conversion.unet import convert_unet

    prefix = "model.diffusion_model."
    sd = {k[len(prefix):]: torch.empty(v, device="meta") for k, v in load_manifest(manifest).items()
          if k.startswith(prefix)}
    with torch.device("meta"):
        unet = UNet3DModel.from_config(convert_unet(sd, flavour="dc" if "dc_" in manifest.name else "vc").config)
    ours = [official_module_name(n) for n in adaptable_modules(unet)]
    official = [k.removesuffix(".weight") for k, v in sd.items() if k.endswith(".weight") and v.ndim in (2, 4, 5)]
    assert ours == official


@pytest.fixture(scope="module")
def fixture_unet():
    """The vc2_t2v_512 variant of the official tiny U-Net fixture: its official state dict and the converted model."""
    from tiny_checkpoint import has_fixtures, tiny_state_dict

    if not has_fixtures():
        pytest.skip("needs the vc_unet_tiny fixture")
    prefix = "model.diffusion_model."
    official = {k[len(prefix):]: v for k, v in tiny_state_dict().items() if k.startswith(prefix)}
    return official, official_unet(official)


def official_unet(official: dict[str, torch.Tensor]) -> UNet3DModel:
    from vidiff.conversion.unet import convert_unet

    comp = convert_unet(official, flavour="vc", num_head_channels=8)
    unet = UNet3DModel.from_config(comp.config)
    unet.load_state_dict(comp.state_dict)
    return unet.eval()


def _synthetic_lora(official: dict[str, torch.Tensor], rank: int = 3, seed: int = 0):
    """Random (down, up, alpha) per official Linear/Conv module, in official order."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, w in official.items():
        if key.endswith(".weight") and w.ndim in (2, 4, 5):
            down = torch.randn(rank, *w.shape[1:], generator=g) * 0.3
            up = torch.randn(w.shape[0], rank, *([1] * (w.ndim - 2)), generator=g) * 0.3
            out[key.removesuffix(".weight")] = (down, up, float(rank) if w.ndim == 5 else 1.5)
    return out


def _expected_merged(official, lora, names=None) -> dict[str, torch.Tensor]:
    merged = dict(official)
    for name, (down, up, alpha) in lora.items():
        if names is None or name in names:
            w = official[name + ".weight"]
            delta = (up.flatten(1) @ down.flatten(1)).reshape(w.shape) * (alpha / down.shape[0])
            merged[name + ".weight"] = w + delta
    return merged


def _check_converted(tmp_path, official, base_unet, source: Path, expected: dict, layout: str) -> dict:
    lora = convert_lora(source, base_unet)
    note = json.loads(lora.extra["converted_from"])
    assert note["layout"] == layout
    path = save_lora(lora, tmp_path / f"{layout}.safetensors")
    unet = official_unet(official)
    load_lora(unet, path)
    reference = official_unet(expected)
    x = torch.randn(1, 4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    ctx = torch.randn(1, 77, base_unet.config.context_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, ref = unet(x, torch.tensor([500]), ctx, fps=8), reference(x, torch.tensor([500]), ctx, fps=8)
    torch.testing.assert_close(ours, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-5)
    merge_lora(unet)
    for key, value in expected.items():  # the merged weights are the official weights plus each update
        torch.testing.assert_close(unet.state_dict()[_vidiff_key(key)], value, atol=1e-5, rtol=1e-5)
    return note


def _vidiff_key(official_key: str) -> str:
    from vidiff.conversion.unet import rename_official_key

    return rename_official_key(official_key)


def test_converter_kohya_layout(tmp_path, fixture_unet):
    official, base = fixture_unet
    lora = _synthetic_lora(official)
    tensors = {}
    for name, (down, up, alpha) in lora.items():
        stem = "lora_unet_" + name.replace(".", "_")
        tensors.update({f"{stem}.lora_down.weight": down, f"{stem}.lora_up.weight": up,
                        f"{stem}.alpha": torch.tensor(alpha)})
    tensors["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = torch.zeros(3, 4)  # dropped, reported
    save_file(tensors, str(tmp_path / "kohya_src.safetensors"))
    note = _check_converted(tmp_path, official, base, tmp_path / "kohya_src.safetensors",
                            _expected_merged(official, lora), "kohya")
    assert note["dropped"] == ["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"]
    assert any("temopral_conv" in n for n in lora) and any(n.startswith("init_attn.0.") for n in lora)


def test_converter_peft_layout(tmp_path, fixture_unet):
    official, base = fixture_unet
    lora = {n: v for n, v in _synthetic_lora(official, rank=2).items() if ".attn" in n}
    tensors = {}
    for name, (down, up, _) in lora.items():
        tensors[f"base_model.model.model.diffusion_model.{name}.lora_A.weight"] = down
        tensors[f"base_model.model.model.diffusion_model.{name}.lora_B.weight"] = up
    meta = {"lora_adapter_metadata": json.dumps({"r": 2, "lora_alpha": 4})}
    save_file(tensors, str(tmp_path / "peft_src.safetensors"), metadata=meta)
    lora = {n: (d, u, 4.0) for n, (d, u, _) in lora.items()}
    _check_converted(tmp_path, official, base, tmp_path / "peft_src.safetensors", _expected_merged(official, lora),
                     "peft")


def test_converter_t2v_turbo_list_layout(tmp_path, fixture_unet):
    """T2V-Turbo (VC2)'s unet_lora.pt: [up, down] per Linear/Conv2d/Conv3d in official order, scale 1, with one pair
    for its guidance embedding time_cond_proj (right after the fps embedding), which vidiff drops and reports."""
    official, base = fixture_unet
    lora = {n: (d, u, float(d.shape[0])) for n, (d, u, _) in _synthetic_lora(official, rank=2).items()}
    order = [official_module_name(n) for n in adaptable_modules(base)]
    assert sorted(order) == sorted(lora)
    flat = []
    for name in order:
        down, up, _ = lora[name]
        flat += [up, down]
        if name == "fps_embedding.2":
            flat += [torch.randn(official["time_embed.0.weight"].shape[1], 2), torch.randn(2, 256)]  # time_cond_proj
    torch.save(flat, tmp_path / "unet_lora.pt")
    note = _check_converted(tmp_path, official, base, tmp_path / "unet_lora.pt", _expected_merged(official, lora),
                            "list")
    assert len(note["dropped"]) == 1 and note["dropped"][0].startswith("time_cond_proj")
    torch.save(flat[:-2], tmp_path / "short.pt")
    with pytest.raises(LoraError, match="does not fit this U-Net"):
        convert_lora(tmp_path / "short.pt", base)


# ------------------------------------------------------------------------------------------------------ training


def test_lora_training_updates_only_adapters_resumes_and_exports_a_loadable_file(tmp_path):
    from vidiff.pipelines.text_to_video import TextToVideoPipeline
    from vidiff.training.checkpointing import list_checkpoints
    from vidiff.training.config import ConfigError, config_from_dict

    base = run_config(tiny_config(tmp_path / "base", train={"max_steps": 1, "ema": False}, export={"at_end": True},
                                  binding={"every": 0}))
    lora = {"rank": 2, "targets": ["spatial", "temporal"], "vocabulary": ["pink"]}

    def cfg(out: str, **train):
        c = tiny_config(tmp_path / out, train={"max_steps": 2, "lora": lora, "ema_decay": 0.5, **train},
                        export={"at_end": True}, checkpoint={"every": 1, "keep_last": 5}, binding={"every": 0})
        c["model"] = {"init_from": str(base.model_dir)}
        return c

    res = run_config(cfg("lora"))
    assert res.model_dir is None and res.lora_path == tmp_path / "lora" / "lora.safetensors"
    assert "rank 2" in (tmp_path / "lora" / "lora.md").read_text()
    states = [_load(p / "model.safetensors") for _, p in list_checkpoints(tmp_path / "lora" / "checkpoints")]
    first, last = states[0], states[-1]
    changed = {k for k in first if not torch.equal(first[k], last[k])}
    assert changed and all(".lora_" in k for k in changed)
    assert any(".lora_B." in k for k in changed)
    base_unet = _load(base.model_dir / "unet" / "diffusion_pytorch_model.safetensors")
    for k, v in last.items():  # the base weights are those of the model it started from
        if k.startswith("unet.") and ".lora_" not in k:
            assert torch.equal(v, base_unet[k[len("unet."):].replace(".base_layer", "")]), k

    # resumed after a stop: the same adapter file, bit for bit
    run_config(cfg("parts", stop_at_step=1))
    resumed = run_config(cfg("parts"))
    assert _load(resumed.lora_path).keys() == _load(res.lora_path).keys()
    assert all(torch.equal(a, b) for a, b in zip(_load(resumed.lora_path).values(), _load(res.lora_path).values()))

    plain = TextToVideoPipeline.from_pretrained(base.model_dir)
    pipe = TextToVideoPipeline.from_pretrained(base.model_dir, lora=[(res.lora_path, 1.0)])
    assert "pink" in pipe.vocabulary and "pink" not in plain.vocabulary
    kw = dict(num_inference_steps=2, seed=0, progress=False, output_type="latent")
    assert not torch.equal(pipe("a red circle moving left", **kw).frames, plain("a red circle moving left", **kw).frames)
    pipe.set_lora_scales({next(iter(pipe.loras)): 0.0})
    assert torch.equal(pipe("a red circle moving left", **kw).frames, plain("a red circle moving left", **kw).frames)

    for bad, message in (({"rank": 0}, "train.lora.rank"), ({"rnk": 2}, "did you mean 'rank'"),
                         ({"dropout": 1.0}, "train.lora.dropout"), ({"targets": []}, "train.lora.targets")):
        with pytest.raises(ConfigError, match=message):
            config_from_dict(tiny_config(tmp_path / "x", train={"lora": bad}))
    with pytest.raises(ConfigError, match="trainable/frozen do not apply"):
        config_from_dict(tiny_config(tmp_path / "x", train={"lora": {}, "trainable": ["@temporal"]}))
    with pytest.raises(ConfigError, match="matches no Linear/Conv"):
        run_config(tiny_config(tmp_path / "y", train={"lora": {"targets": ["*.nothing"]}}, binding={"every": 0}))


def _load(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ------------------------------------------------------------------------------------------------------ extra colour


def test_extra_colour_repaints_exactly_and_is_opt_in():
    from vidiff.data.shapes import ShapesImageDataset, ShapesWorldConfig
    from vidiff.data.shapes_palette import RecolouredShapes, check_extra_colours, nearest_colour_name, object_colour
    from vidiff.data.shapes_vocab import COLOURS

    world = ShapesWorldConfig(height=32, width=32, second_object_prob=0.0)
    plain = ShapesImageDataset(world, length=32, ground_truth=True)
    data = RecolouredShapes(plain, {"pink": [1.0, 0.5, 0.75]}, probability=0.5, seed=3)
    picked = [i for i in range(32) if data.choice(i)]
    assert 6 < len(picked) < 26 and data.choice(picked[0]) == "pink"
    for i in range(8):
        item, ref = data[i], plain[i]
        if i not in picked:
            assert torch.equal(item["image"], ref["image"]) and item["caption"] == ref["caption"]
            continue
        assert "pink" in item["caption"] and ref["labels"]["colour"] not in item["caption"].split()
        full = ref["mask"] == 1
        pink = torch.tensor([1.0, 0.5, 0.75]) * 2 - 1
        torch.testing.assert_close(item["image"][:, full], pink[:, None].expand(-1, int(full.sum())))
        assert torch.equal(item["image"][:, ref["mask"] == 0], ref["image"][:, ref["mask"] == 0])
        frame = ((item["image"].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        assert nearest_colour_name(object_colour(frame.numpy()), {"pink": (1.0, 0.5, 0.75)}) == "pink"
        assert "mask" not in item
    assert len(COLOURS) == 8 and "pink" not in COLOURS  # the world's palette is untouched
    with pytest.raises(ValueError, match="already a colour"):
        check_extra_colours({"red": [1, 0, 0]})
    with pytest.raises(ValueError, match="at least"):
        check_extra_colours({"scarlet": [0.9, 0.12, 0.1]})


# ------------------------------------------------------------------------------------------------------ command line


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    from vidiff.cli import main

    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_lora_argument_errors_are_one_line(tmp_path, capsys):
    good = tmp_path / "x.safetensors"
    source = tiny_unet()
    add_lora(source, rank=2, targets=["cross"])
    save_lora(lora_file_from_unet(source), good)
    for argv, message in (
        (["generate", "a red circle", "--lora", str(tmp_path / "none.safetensors")], "LoRA file not found"),
        (["generate", "a red circle", "--lora", f"{good}:abc"], "bad LoRA scale 'abc'"),
        (["generate", "a red circle", "--lora", f"{good}:nan"], "finite number"),
        (["animate", "x.png", "--lora", f"{good}:"], "bad LoRA scale ''"),
        (["eval", "--videos", str(tmp_path), "--prompts", str(good), "--lora", str(good), "-o", str(tmp_path / "e")],
         "only apply to --model"),
        (["lora", "merge", str(tmp_path), f"{good}:2x", "-o", str(tmp_path / "m")], "bad LoRA scale"),
    ):
        code, _, err = _cli(capsys, *argv)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (argv, err)
    code, _, err = _cli(capsys, "generate", "a red circle", "--lora", str(good), "-o", str(tmp_path / "o.mp4"),
                        "--steps", "1", "--frames", "2", "--threads", "1")
    assert code == 2 and "does not fit this U-Net" in err and len(err.strip().splitlines()) == 1


def test_cli_lora_merge_convert_and_info(tmp_path, capsys):
    from vidiff.pipelines.text_to_video import TextToVideoPipeline

    base = run_config(tiny_config(tmp_path / "base", train={"max_steps": 1, "ema": False}, export={"at_end": True},
                                  binding={"every": 0}))
    unet = TextToVideoPipeline.from_pretrained(base.model_dir).unet
    add_lora(unet, rank=2, targets=["spatial"])
    randomise(unet, std=0.3)
    lora_path = save_lora(lora_file_from_unet(unet, vocabulary=["pink"]), tmp_path / "l.safetensors")
    code, out, _ = _cli(capsys, "lora", "merge", str(base.model_dir), f"{lora_path}:0.5", "-o", str(tmp_path / "m"))
    assert code == 0 and "wrote" in out
    merged = TextToVideoPipeline.from_pretrained(tmp_path / "m")
    loaded = TextToVideoPipeline.from_pretrained(base.model_dir, lora=(lora_path, 0.5))
    assert "pink" in merged.vocabulary
    kw = dict(num_inference_steps=2, seed=0, progress=False, output_type="latent")
    torch.testing.assert_close(merged("a red circle", **kw).frames, loaded("a red circle", **kw).frames,
                               atol=1e-4, rtol=1e-4)
    index = json.loads((tmp_path / "m" / "model_index.json").read_text())
    assert index["lora_merged"] == [{"file": "l.safetensors", "scale": 0.5}]
    code, _, err = _cli(capsys, "lora", "merge", str(base.model_dir), str(lora_path), "-o", str(tmp_path / "m"))
    assert code == 2 and "already exists" in err

    # convert: a kohya file named with the official LVDM names of this U-Net
    lora = read_lora(lora_path)
    tensors = {}
    for name, (a, b) in lora.weights.items():
        stem = "lora_unet_" + official_module_name(name).replace(".", "_")
        tensors.update({f"{stem}.lora_down.weight": a, f"{stem}.lora_up.weight": b})
    save_file(tensors, str(tmp_path / "kohya.safetensors"))
    code, out, _ = _cli(capsys, "lora", "convert", str(tmp_path / "kohya.safetensors"), str(tmp_path / "c.safetensors"),
                        "--model", str(base.model_dir))
    assert code == 0 and "kohya layout" in out
    converted = read_lora(tmp_path / "c.safetensors")
    assert all(torch.equal(converted.weights[n][1], b) for n, (_, b) in lora.weights.items())
    code, out, _ = _cli(capsys, "lora", "info", str(tmp_path / "c.safetensors"))
    assert code == 0 and "rank 2" in out and "converted_from" in out


def test_lora_module_does_not_import_at_cli_parse_time():
    """--lora is checked before torch loads (the CLI's rule): the parser and the argument type are torch-free."""
    import subprocess

    code = ("import sys; from vidiff.cli import build_parser; "
            "build_parser().parse_args(['lora', 'info', sys.argv[1]]); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, __file__], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
