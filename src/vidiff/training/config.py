"""Training configuration: a YAML file plus ``key.path=value`` overrides, checked into dataclasses.

Every section is a dataclass, so a typo or a wrong type is reported with its dotted path (and a close match) before any
model is built. Free-form sections (a model's own constructor arguments, a dataset's keyword arguments) stay plain
dicts and are checked by the constructors they are passed to.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from vidiff.data.degrade import DegradeConfig

# What the binding probe can swap or drop (vidiff.training.binding); here so that configs validate without torch.
BINDING_ATTRIBUTES = ("colour", "shape", "motion", "size", "background", "image", "caption", "empty")

__all__ = [
    "CheckpointConfig",
    "ComponentConfig",
    "ConfigError",
    "DataConfig",
    "DistributedConfig",
    "ExportConfig",
    "BindingConfig",
    "LogConfig",
    "LoraTrainConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SampleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
]

TASKS = ("t2i", "t2v", "i2v", "univid", "ref_t2v", "autoencoder", "video_decoder", "latent_flow", "temporal_refiner")
MIXED_PRECISION = ("no", "bf16", "fp16")
LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
RECON_LOSSES = ("l1", "l2", "l1+l2")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the offending key."""


UNIVID_MODES = ("t2v", "i2v", "ti2v")


def _check_task_mix(mix: dict) -> None:
    if not isinstance(mix, dict) or not mix:
        raise ConfigError(f"train.task_mix must map modes ({', '.join(UNIVID_MODES)}) to probabilities, got {mix!r}")
    unknown = sorted(set(mix) - set(UNIVID_MODES))
    if unknown:
        raise ConfigError(f"train.task_mix: unknown modes {unknown}; accepted: {', '.join(UNIVID_MODES)}")
    for k, p in mix.items():
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"train.task_mix.{k} must be a probability in [0, 1], got {p!r}")
    if abs(sum(mix.values()) - 1.0) > 1e-6:
        raise ConfigError(f"train.task_mix probabilities must add up to 1, got {sum(mix.values())}")


def _check_timestep_sampling(spec: dict) -> None:
    kind = spec.get("type", "uniform")
    allowed = {"uniform": {"type"}, "logit_normal": {"type", "mean", "std"}}
    if kind not in allowed:
        raise ConfigError(f"train.timestep_sampling.type must be uniform or logit_normal, got {kind!r}")
    unknown = sorted(set(spec) - allowed[kind])
    if unknown:
        raise ConfigError(f"train.timestep_sampling ({kind}) accepts {', '.join(sorted(allowed[kind]))}; got {unknown}")
    for key in ("mean", "std"):
        value = spec.get(key, 0.0 if key == "mean" else 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"train.timestep_sampling.{key} must be a finite number, got {value!r}")
    if not spec.get("std", 1.0) > 0:
        raise ConfigError(f"train.timestep_sampling.std must be > 0, got {spec['std']!r}")


def _check_lora(c: RunConfig) -> None:
    lora = c.train.lora
    if c.task in ("autoencoder", "video_decoder", "latent_flow"):
        raise ConfigError(f"train.lora adapts a diffusion U-Net; task {c.task} has none")
    if lora.rank < 1:
        raise ConfigError(f"train.lora.rank must be a positive integer, got {lora.rank}")
    if lora.alpha is not None and not lora.alpha > 0:
        raise ConfigError(f"train.lora.alpha must be > 0, got {lora.alpha}")
    if not 0.0 <= lora.dropout < 1.0:
        raise ConfigError(f"train.lora.dropout must be in [0, 1), got {lora.dropout}")
    if not lora.targets or any(not t.strip() for t in lora.targets):
        raise ConfigError("train.lora.targets must list presets (spatial, temporal, cross, attention, all) or globs")
    if c.train.trainable != ["*"] or c.train.frozen:
        raise ConfigError("train.trainable/frozen do not apply with train.lora: only the adapters train")
    if c.distributed.strategy == "fsdp":
        raise ConfigError("train.lora is not supported with distributed.strategy fsdp (use ddp: adapters are small)")


# ---------------------------------------------------------------------------------------------------------- sections


@dataclass
class ComponentConfig:
    """Where a model component comes from: a saved folder (``pretrained``) or constructor arguments (``config``).

    ``class_path`` ("package.module:Class") selects another class with the same constructor/``from_pretrained``
    interface (e.g. a temporal-decoder autoencoder). ``trainable`` applies to the text encoder and the image encoder: a
    trainable encoder is optimised together with the U-Net (a small encoder trained from scratch, as the embedded
    image-to-video default does); a frozen one (a converted OpenCLIP tower) runs outside the trained module.
    """

    pretrained: str | None = None
    config: dict | None = None
    class_path: str | None = None
    trainable: bool = False


@dataclass
class ModelConfig:
    """The model to train. ``init_from`` is a vidiff model folder (``vidiff convert`` output or an exported run) that
    supplies every component not configured here, so a stage can start from the previous stage's export.

    ``conditioning`` is what the U-Net's fps input receives: frames per second (VideoCrafter) or the frame stride
    (DynamiCrafter 256). Image-to-video: ``i2v_flavour`` "dc" (DynamiCrafter: the conditioning frame's latent is also
    concatenated to the noisy latent, so the U-Net takes 2x the latent channels) or "vc" (VideoCrafter1 i2v: image
    tokens only); ``cond_frame`` picks the conditioning frame ("first", or "random" per sample as DynamiCrafter's
    ``rand_cond_frame``). ``autoencoder_input`` (autoencoder task): "frames" encodes frames as images, "video" hands
    whole clips (b, 3, t, H, W) to encode/decode, for autoencoders with temporal layers. ``video_decoder`` (task
    video_decoder): the temporal options of :class:`~vidiff.models.video_decoder.TemporalDecoderAutoencoderKL`
    (``temporal_kernel_size``, ``temporal_attention_head_dim``, ``temporal_length``, ``decode_chunk_frames``) for an
    image autoencoder made temporal. ``reference_model`` (task ref_t2v): the text-to-image model folder (or embedded
    model name) that draws references at inference, recorded in the export's index; ``lowres_factor`` makes it a
    super-resolution stage conditioned on the clip at 1/factor resolution (encoded, upsampled bilinearly in latent
    space, plus ``lowres_noise`` · N(0, 1) noise augmentation), as a cascade stage's condition. ``flow_net`` (task
    latent_flow): options of :class:`~vidiff.models.latent_flow.LatentFlowNet` (``width``).
    """

    init_from: str | None = None
    unet: ComponentConfig = field(default_factory=ComponentConfig)
    vae: ComponentConfig = field(default_factory=ComponentConfig)
    text_encoder: ComponentConfig = field(default_factory=ComponentConfig)
    image_encoder: ComponentConfig = field(default_factory=ComponentConfig)
    image_projector: ComponentConfig = field(default_factory=ComponentConfig)
    tokenizer_context_length: int | None = None
    schedule: dict | None = None
    conditioning: Literal["fps", "frame_stride"] = "fps"
    i2v_flavour: Literal["dc", "vc"] = "dc"
    cond_frame: Literal["first", "random"] = "first"
    autoencoder_input: Literal["frames", "video"] = "frames"
    video_decoder: dict = field(default_factory=dict)
    reference_model: str | None = None
    lowres_factor: int | None = None
    lowres_noise: float = 0.0
    flow_net: dict = field(default_factory=dict)
    defaults: dict = field(default_factory=dict)


@dataclass
class DataConfig:
    """``videos``/``images`` are ``{type: shapes|csv|latent_cache|folder, ...dataset keyword arguments}``.

    ``batch_size`` is per process; the global batch is batch_size × processes × grad_accum_steps.
    """

    videos: dict = field(default_factory=lambda: {"type": "shapes"})
    images: dict | None = None
    batch_size: int = 4
    image_batch_size: int = 8
    image_batches_per_video_batch: float = 0.0
    images_as_static_clips: bool = False
    degrade: DegradeConfig | None = None
    frames_per_clip: int = 2
    num_workers: int = 0
    shuffle: bool = True
    seed: int = 0


@dataclass
class OptimConfig:
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    schedule: str = "constant_with_warmup"
    warmup_steps: int = 0


@dataclass
class LoraTrainConfig:
    """``train.lora``: train low-rank adapters (:mod:`vidiff.models.lora`) instead of the U-Net's weights. ``targets``
    are presets (spatial, temporal, cross, attention, all) or globs over U-Net module names; ``alpha`` defaults to the
    rank (scale 1); ``vocabulary`` lists words the LoRA teaches (an extra colour's word is added by itself)."""

    rank: int = 8
    alpha: float | None = None
    targets: list[str] = field(default_factory=lambda: ["spatial"])
    dropout: float = 0.0
    vocabulary: list[str] = field(default_factory=list)


@dataclass
class TrainConfig:
    """The loop. ``trainable``/``frozen`` are parameter selectors (see :mod:`vidiff.training.params`).

    ``stop_at_step`` ends this invocation at that step (checkpointed) as a preemption would; the same command then
    resumes. ``cond_dropout`` gives the probabilities of dropping the text only, the image only, or both, for
    classifier-free guidance (image dropout needs an image-conditioned model).
    """

    max_steps: int = 1000
    stop_at_step: int | None = None
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    trainable: list[str] = field(default_factory=lambda: ["*"])
    frozen: list[str] = field(default_factory=list)
    cond_dropout: dict = field(default_factory=lambda: {"text": 0.1, "image": 0.0, "both": 0.0})
    uncond_text: str = ""
    ema: bool = True
    ema_decay: float = 0.9999
    ema_update_after_step: int = 0
    recon_loss: str = "l1"
    kl_weight: float = 1e-6
    warp_weight: float = 1.0  # task latent_flow: weight of |z_w - z_mid|_1 beside the flow and mask distillation
    threads: int | None = None
    deterministic: bool = False
    # Shapes world only: the loss at latent cells covered by an object is weighted (1 + foreground_weight), then
    # normalised by the mean weight. Objects cover ~7 % of a frame, so without it the background dominates the loss and
    # the colour/shape/motion words earn little gradient (measured in docs/training.md).
    foreground_weight: float = 0.0
    # Keep each clip's autoencoder posterior (mean, std) in memory by dataset index, so later epochs over a finite
    # dataset skip the autoencoder; the posterior is still sampled with the per-sample noise, so results are unchanged.
    cache_latents: bool = False
    # Training timesteps: {type: uniform} (DDPM's), or {type: logit_normal, mean, std} (SD3's): mean > 0 puts more
    # steps at high noise, where a clip's layout and motion are decided and the loss rewards the caption least.
    timestep_sampling: dict = field(default_factory=lambda: {"type": "uniform"})
    # Low-rank adapters only (the base model frozen); the export is OUTPUT_DIR/lora.safetensors (docs/lora.md).
    lora: LoraTrainConfig | None = None
    # task univid: the probability of each mode per batch row, set by the stream weights (λ_t, λ_v): t2v (1, 0),
    # i2v (0, 1), ti2v (1, 1); a cond_dropout.text row is the guidance null (empty text, λ_v = 0) whatever its mode.
    task_mix: dict = field(default_factory=lambda: {"t2v": 0.3, "i2v": 0.3, "ti2v": 0.4})


@dataclass
class LogConfig:
    every: int = 10
    progress: bool = True
    tensorboard: bool = True
    plot_every: int = 50


@dataclass
class BindingConfig:
    """The conditioning probe (:mod:`vidiff.training.binding`): every ``every`` steps (0: off), the loss on a fixed
    held-out batch with the true caption against one attribute word swapped, at fixed timesteps; logged to
    ``binding.csv`` and plotted in ``binding.png`` beside the loss curve."""

    every: int = 250
    num_samples: int = 8
    timesteps: list[int] = field(default_factory=lambda: [300, 600, 900])
    attributes: list[str] = field(
        default_factory=lambda: ["colour", "shape", "motion", "size", "background", "image", "caption", "empty"])
    seed: int = 1234


@dataclass
class SampleConfig:
    """Previews under ``samples/``: videos of ``prompts`` from the EMA weights (T2V), animations of the first frames
    of ``num_reconstructions`` training clips with their captions (I2V), or reconstructions (autoencoder)."""

    every: int = 0
    at_end: bool = True
    prompts: list[str] = field(default_factory=lambda: ["a red circle moving left"])
    num_frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: int | None = None
    steps: int = 25
    guidance_scale: float = 5.0
    eta: float = 0.0
    seed: int = 123
    num_reconstructions: int = 4


@dataclass
class CheckpointConfig:
    """``resume``: "auto" (latest checkpoint in output_dir, else fresh), "never", or a checkpoint folder."""

    every: int = 500
    keep_last: int = 3
    resume: str = "auto"


@dataclass
class ExportConfig:
    """At the end, write ``output_dir/model``: a model folder ``vidiff generate`` loads (EMA weights if any)."""

    at_end: bool = True
    use_ema: bool = True


@dataclass
class DistributedConfig:
    """``strategy``: "ddp" (also used for one process) or "fsdp" (sharded; ``fsdp`` holds plugin arguments)."""

    strategy: Literal["ddp", "fsdp"] = "ddp"
    find_unused_parameters: bool = False
    fsdp: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    task: Literal["t2i", "t2v", "i2v", "univid", "ref_t2v", "autoencoder", "video_decoder", "latent_flow",
                  "temporal_refiner"] = "t2v"
    output_dir: str = "outputs/run"
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    binding: BindingConfig = field(default_factory=BindingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def validate(self) -> RunConfig:
        """Cross-field checks (types were checked while building); returns self."""
        _validate(self)
        return self

    def fingerprint(self) -> str:
        """Short hash of the settings that define the optimisation (not logging or stop points)."""
        d = config_to_dict(self)
        for volatile in ("log", "sample", "binding", "export", "output_dir"):
            d.pop(volatile)
        d["train"].pop("stop_at_step")
        d["checkpoint"].pop("resume")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- dict <-> dataclass


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(item)}"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        if dataclasses.is_dataclass(value_type := next(iter(set(args) - {type(None)}))) and len(args) == 2:
            return _coerce(value, value_type, path)  # an optional section: report its own error (typos, types)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as err:
                errors.append(err)
        raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{path}: must be one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        (item,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of {tp.__name__} settings, got {value!r}")
        return _build(tp, value, path)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            if isinstance(value, str):  # YAML reads "1e-4" as a string (no dot before the exponent)
                try:
                    return float(value)
                except ValueError:
                    pass
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{path}: must be finite, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    if tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return copy.deepcopy(value)
    raise ConfigError(f"{path}: unsupported setting type {tp!r}")


def _build(cls: type, data: dict, path: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        elsewhere = [f"{section}.{key}" for section, sub in _SECTIONS.items() if key in sub]
        if not close and elsewhere:
            hint = f" (did you mean '{elsewhere[0]}'?)"
        where = f"{path}.{key}" if path else str(key)
        raise ConfigError(f"unknown setting '{where}'{hint}; {path or 'the top level'} accepts: {', '.join(names)}")
    kwargs = {}
    for name in names:
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], f"{path}.{name}" if path else name)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as err:  # a section's own checks (__post_init__)
        raise ConfigError(f"{path}: {err}" if path and not str(err).startswith(path) else str(err)) from None


_SECTIONS = {
    f.name: {g.name for g in dataclasses.fields(f.default_factory())}
    for f in dataclasses.fields(RunConfig)
    if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory())
}


def config_from_dict(data: dict) -> RunConfig:
    """Build and validate a :class:`RunConfig` from a plain dict (as read from YAML)."""
    if not isinstance(data, dict):
        raise ConfigError(f"a training config must be a mapping at the top level, got {type(data).__name__}")
    return _build(RunConfig, data, "").validate()


def config_to_dict(config: Any) -> dict:
    """Plain, YAML/JSON-ready dict of a config (dataclasses expanded)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


# ----------------------------------------------------------------------------------------------------- overrides


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML: numbers, booleans, lists, null) to a copy of ``data``."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value (e.g. train.max_steps=200)")
        key, _, text = item.partition("=")
        key = key.strip()
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r} has an empty key")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: cannot parse the value: {err}") from None
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: '{'.'.join(parts[: i + 1])}' is {child!r}, not a section")
            node = child
        node[parts[-1]] = value
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML training config, apply overrides, check everything; errors are :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of settings at the top level")
    return config_from_dict(apply_overrides(data, list(overrides or [])))


# ---------------------------------------------------------------------------------------------------- validation


def _positive(value: Any, path: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{path} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def _validate(c: RunConfig) -> None:
    t, d, o = c.train, c.data, c.optim
    if not c.output_dir:
        raise ConfigError("output_dir must not be empty")
    if c.task != "video_decoder":
        given = [n for n, v in (("data.degrade", d.degrade), ("model.video_decoder", c.model.video_decoder)) if v]
        if given:
            raise ConfigError(f"{', '.join(given)} configure task video_decoder, not {c.task}")
    if c.task != "ref_t2v" and (c.model.reference_model is not None or c.model.lowres_factor is not None):
        raise ConfigError(f"model.reference_model / lowres_factor configure task ref_t2v, not {c.task}")
    if c.model.lowres_factor is not None and (c.model.lowres_factor < 2 or c.model.lowres_factor & (c.model.lowres_factor - 1)):
        raise ConfigError(f"model.lowres_factor must be a power of two >= 2, got {c.model.lowres_factor}")
    if not c.model.lowres_noise >= 0:
        raise ConfigError(f"model.lowres_noise must be >= 0, got {c.model.lowres_noise}")
    for path, value, zero_ok in (
        ("train.max_steps", t.max_steps, False),
        ("train.grad_accum_steps", t.grad_accum_steps, False),
        ("train.stop_at_step", t.stop_at_step, True),
        ("train.max_grad_norm", t.max_grad_norm, True),
        ("train.kl_weight", t.kl_weight, True),
        ("train.threads", t.threads, False),
        ("data.batch_size", d.batch_size, False),
        ("data.image_batch_size", d.image_batch_size, False),
        ("data.image_batches_per_video_batch", d.image_batches_per_video_batch, True),
        ("data.frames_per_clip", d.frames_per_clip, False),
        ("data.num_workers", d.num_workers, True),
        ("optim.lr", o.lr, False),
        ("optim.weight_decay", o.weight_decay, True),
        ("optim.eps", o.eps, False),
        ("optim.warmup_steps", o.warmup_steps, True),
        ("log.every", c.log.every, False),
        ("log.plot_every", c.log.plot_every, False),
        ("sample.every", c.sample.every, True),
        ("binding.every", c.binding.every, True),
        ("binding.num_samples", c.binding.num_samples, False),
        ("train.foreground_weight", t.foreground_weight, True),
        ("sample.steps", c.sample.steps, False),
        ("sample.num_reconstructions", c.sample.num_reconstructions, False),
        ("checkpoint.every", c.checkpoint.every, False),
        ("checkpoint.keep_last", c.checkpoint.keep_last, False),
        ("seed", c.seed, True),
        ("data.seed", d.seed, True),
    ):
        _positive(value, path, zero_ok)
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {o.betas}")
    if o.schedule not in LR_SCHEDULES:
        raise ConfigError(f"optim.schedule must be one of {', '.join(LR_SCHEDULES)}, got {o.schedule!r}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if t.recon_loss not in RECON_LOSSES:
        raise ConfigError(f"train.recon_loss must be one of {', '.join(RECON_LOSSES)}, got {t.recon_loss!r}")
    unknown = set(t.cond_dropout) - {"text", "image", "both"}
    if unknown:
        raise ConfigError(f"train.cond_dropout accepts text, image and both; got unknown keys {sorted(unknown)}")
    probs = {k: t.cond_dropout.get(k, 0.0) for k in ("text", "image", "both")}
    for k, p in probs.items():
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ConfigError(f"train.cond_dropout.{k} must be a probability in [0, 1], got {p!r}")
    if sum(probs.values()) > 1.0 + 1e-9:
        raise ConfigError(f"train.cond_dropout probabilities add up to {sum(probs.values())} > 1")
    if c.task not in ("i2v", "ref_t2v") and (probs["image"] or probs["both"]):
        raise ConfigError("train.cond_dropout.image/both need an image-conditioned model (task: i2v, or ref_t2v "
                          "for the reference)")
    _check_timestep_sampling(t.timestep_sampling)
    _check_task_mix(t.task_mix)
    if t.lora is not None:
        _check_lora(c)
    if not t.trainable:
        raise ConfigError("train.trainable is empty: nothing would be trained")
    bad = sorted(set(c.binding.attributes) - set(BINDING_ATTRIBUTES))
    if bad:
        raise ConfigError(f"binding.attributes: unknown {bad}; accepted: {', '.join(BINDING_ATTRIBUTES)}")
    if any(not 0 <= ts < 100_000 for ts in c.binding.timesteps) or not c.binding.timesteps:
        raise ConfigError(f"binding.timesteps must be a non-empty list of training timesteps, got {c.binding.timesteps}")
    if c.task == "t2i":
        if d.images is None or "type" not in d.images:
            raise ConfigError("task t2i trains on data.images (a mapping with a 'type': shapes, csv or folder)")
        if d.image_batches_per_video_batch:
            raise ConfigError("task t2i trains on images only: data.image_batches_per_video_batch must be 0")
    elif not isinstance(d.videos, dict) or "type" not in d.videos:
        raise ConfigError("data.videos must be a mapping with a 'type' (shapes, csv or latent_cache)")
    if d.images is not None and "type" not in d.images:
        raise ConfigError("data.images must be a mapping with a 'type' (shapes, csv or folder)")
    if c.task != "t2i" and d.images is not None and d.image_batches_per_video_batch == 0:
        raise ConfigError("data.images is set but data.image_batches_per_video_batch is 0: set the ratio (e.g. 0.5)")
    if d.images is None and d.image_batches_per_video_batch > 0:
        raise ConfigError("data.image_batches_per_video_batch > 0 needs data.images")
    if c.checkpoint.resume not in ("auto", "never") and not c.checkpoint.resume:
        raise ConfigError("checkpoint.resume must be 'auto', 'never' or a checkpoint folder")
    m = c.model
    for name in ("unet", "vae", "text_encoder", "image_encoder", "image_projector"):
        comp: ComponentConfig = getattr(m, name)
        if comp.pretrained is not None and comp.config is not None:
            raise ConfigError(f"model.{name}: give either 'pretrained' or 'config', not both")
        if comp.class_path is not None and ":" not in comp.class_path:
            raise ConfigError(f"model.{name}.class_path must look like 'package.module:ClassName', got {comp.class_path!r}")
    needed = {
        "autoencoder": ("vae",),
        "video_decoder": ("vae",),
        "latent_flow": ("vae",),
        "temporal_refiner": ("unet", "vae", "text_encoder"),
        "t2i": ("unet", "vae", "text_encoder"),
        "t2v": ("unet", "vae", "text_encoder"),
        "i2v": ("unet", "vae", "text_encoder", "image_encoder", "image_projector"),
        "univid": ("unet", "vae", "text_encoder", "image_encoder"),
        "ref_t2v": ("unet", "vae", "text_encoder"),
    }[c.task]
    if m.init_from is None:
        for name in needed:
            comp = getattr(m, name)
            if comp.pretrained is None and comp.config is None:
                raise ConfigError(
                    f"model.{name} needs 'pretrained' (a saved folder) or 'config' (constructor arguments), "
                    "or set model.init_from to a model folder"
                )
    if m.tokenizer_context_length is not None and m.tokenizer_context_length < 2:
        raise ConfigError(f"model.tokenizer_context_length must be >= 2, got {m.tokenizer_context_length}")
    if t.stop_at_step is not None and t.stop_at_step > t.max_steps:
        raise ConfigError(f"train.stop_at_step ({t.stop_at_step}) is beyond train.max_steps ({t.max_steps})")
    if c.sample.every and c.task == "t2v" and not c.sample.prompts:
        raise ConfigError("sample.every > 0 needs at least one prompt in sample.prompts")
