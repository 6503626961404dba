"""What the video pipelines share: model-folder loading, argument checks, text encoding, initial noise, decoding."""

from __future__ import annotations

import math
import numbers
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model_folder import load_component as _load_component
from ..model_folder import read_index
from ..models.autoencoder import decode_video, spatial_factor_of

OUTPUT_TYPES = ("pt", "np", "latent")


@dataclass
class VideoPipelineOutput:
    """``frames``: uint8 (b, t, H, W, 3) for "np"; float (b, 3, t, H, W) in [-1, 1] for "pt"; latents for "latent".

    ``seam_psnr`` (b, seams), for an autoregressively extended video only: PSNR in dB between each clip's regenerated
    first frame and the frame it was conditioned on (the previous clip's last). ``reference`` (b, 3, H, W): the
    reference images of a reference-guided model, when asked for; ``intermediates``: a cascade's latents per stage,
    when asked for.
    """

    frames: torch.Tensor
    latents: torch.Tensor
    seam_psnr: torch.Tensor | None = None
    reference: torch.Tensor | None = None
    intermediates: list[torch.Tensor] | None = None


class PipelineError(ValueError):
    """Bad pipeline arguments or a model folder that cannot be loaded."""


def read_model_index(folder: str | os.PathLike) -> dict:
    """The folder's ``model_index.json`` (:func:`vidiff.model_folder.read_index`), errors as :class:`PipelineError`."""
    return read_index(folder, PipelineError)


def load_component(folder: Path, name: str, torch_dtype: torch.dtype | None, index: dict | None = None
                   ) -> torch.nn.Module:
    """Load ``folder/name`` with the class the folder records for it (:func:`vidiff.model_folder.load_component`)."""
    return _load_component(folder, name, torch_dtype, index, error=PipelineError)


# Autoencoder classes a standalone vae folder may hold (its config.json's _class_name).
_VAE_CLASSES = {"LDMAutoencoderKL": "vidiff.models.autoencoder:LDMAutoencoderKL",
                "AutoencoderKL": "vidiff.models.autoencoder:LDMAutoencoderKL",
                "TemporalDecoderAutoencoderKL": "vidiff.models.video_decoder:TemporalDecoderAutoencoderKL"}


def load_autoencoder(path: Path) -> torch.nn.Module:
    """An autoencoder folder (by its config.json's class) or a model folder's ``vae/``."""
    import importlib
    import json

    if (path / "model_index.json").is_file():  # a model folder: its autoencoder
        return load_component(path, "vae", None)
    try:
        name = json.loads((path / "config.json").read_text()).get("_class_name")
    except (OSError, ValueError) as err:
        raise PipelineError(f"--vae {path}: not an autoencoder folder (no readable config.json: {err})") from None
    if name not in _VAE_CLASSES:
        raise PipelineError(f"--vae {path} holds a {name!r}, not an autoencoder ({', '.join(_VAE_CLASSES)})")
    module, _, cls = _VAE_CLASSES[name].partition(":")
    try:
        return getattr(importlib.import_module(module), cls).from_pretrained(path).eval()
    except (OSError, ValueError, KeyError) as err:
        raise PipelineError(f"cannot load the autoencoder {path}: {err}") from None


def load_vae(folder: Path, index: dict, vae: torch.nn.Module | str | os.PathLike | None) -> torch.nn.Module:
    """The model folder's autoencoder, or ``vae`` instead (a module, an autoencoder folder, or a model folder whose
    autoencoder to take), e.g. a video decoder trained on the same latent space. A replacement must share the folder's
    latent space (channels, spatial factor, scaling factor): one trained for another is refused."""
    if vae is None:
        return load_component(folder, "vae", None, index)
    if not isinstance(vae, torch.nn.Module):
        path = Path(vae)
        if not path.is_dir():
            raise PipelineError(f"autoencoder folder not found: {path}")
        vae = load_autoencoder(path)
    own = load_component(folder, "vae", None, index).config
    from ..models.autoencoder import latent_channels_of

    theirs = vae.config
    mismatch = [what for what, a, b in (
        ("latent channels", latent_channels_of(vae), getattr(own, "embed_dim", None) or own.latent_channels),
        ("spatial factor", spatial_factor_of(vae), 2 ** (len(own.block_out_channels) - 1)),
        ("scaling factor", float(theirs.scaling_factor), float(own.scaling_factor))) if not math.isclose(a, b)]
    if mismatch:
        raise PipelineError(f"the autoencoder does not share this model's latent space ({', '.join(mismatch)} differ):"
                            " it must be trained on the model's own autoencoder (e.g. vidiff train task video_decoder)")
    return vae


def as_prompt_list(prompt: str | list[str], what: str) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise PipelineError(f"{what} list is empty")
    if not all(isinstance(p, str) for p in prompts):
        raise PipelineError(f"{what} must be a string or a list of strings")
    return prompts


def _positive_int(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PipelineError(f"{what} must be a positive integer, got {value!r}")


# Ranges of the sampling scalars: guidance below 0 inverts the prompt, eta above 1 makes DDIM's noise exceed the
# posterior's (square root of a negative number), rescale is a blend factor.
SAMPLING_RANGES = {
    "guidance_scale": (0.0, math.inf),
    "image_guidance_scale": (0.0, math.inf),
    "guidance_rescale": (0.0, 1.0),
    "eta": (0.0, 1.0),
}


def check_sampling_values(**values: float | None) -> None:
    """Raise :class:`PipelineError` for a non-finite or out-of-range sampling scalar (None: not used)."""
    for name, value in values.items():
        if value is None:
            continue
        low, high = SAMPLING_RANGES[name]
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
                or not low <= value <= high:
            bounds = f"finite and >= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
            raise PipelineError(f"{name} must be {bounds}, got {value!r}")


class VideoDiffusionPipeline:
    """Base of the latent video pipelines; subclasses hold the modules named in ``modules``."""

    modules: tuple[str, ...] = ("unet", "vae", "text_encoder")
    base_defaults = {
        "num_frames": 16,
        "height": 320,
        "width": 512,
        "num_inference_steps": 50,
        "guidance_scale": 12.0,
        "guidance_rescale": 0.0,
        "eta": 1.0,
        "fps": 16,
        "timestep_spacing": "uniform",
    }

    def __init__(self, defaults: dict | None = None, vocabulary: list[str] | None = None):
        self.defaults = {**self.base_defaults, **(defaults or {})}
        # Models trained on a closed vocabulary (the shapes-world defaults) list it in model_index.json.
        self.vocabulary = frozenset(vocabulary) if vocabulary else None

    @classmethod
    def folder_defaults(cls, index: dict) -> dict:
        """The sampling defaults of a pipeline built from a folder with this model_index.json, without its weights."""
        return {**cls.base_defaults, **(index.get("defaults") or {})}

    def unknown_words(self, prompts: list[str]) -> list[str]:
        """Words of the prompts that a closed-vocabulary model never saw (empty for open-vocabulary models)."""
        if self.vocabulary is None:
            return []
        words = [w for p in prompts for w in re.findall(r"[a-z]+", p.lower())]
        return list(dict.fromkeys(w for w in words if w not in self.vocabulary))

    def warn_unknown_words(self, prompts: list[str]) -> None:
        unknown = self.unknown_words(prompts)
        if unknown:
            warnings.warn(
                f"the model never saw these words, they will have little or no effect: {', '.join(unknown)}",
                UserWarning,
                stacklevel=3,
            )

    # -- LoRA (vidiff.models.lora; docs/lora.md) --
    def load_lora(self, path: str | os.PathLike, scale: float = 1.0, adapter_name: str | None = None) -> str:
        """Load a LoRA file onto the U-Net beside any already loaded (each keeps its own scale); returns its adapter
        name. The words it teaches join a closed vocabulary, so they are not warned about."""
        from ..models.lora import LoraError, load_lora, read_lora

        try:
            lora = read_lora(path)
            name = load_lora(self.unet, lora, scale, adapter_name)
        except LoraError as err:
            raise PipelineError(str(err)) from None
        if self.vocabulary is not None and lora.vocabulary:
            self.vocabulary = self.vocabulary | frozenset(lora.vocabulary)
        return name

    def load_loras(self, loras) -> list[str]:
        """``loras``: a path, a (path, scale) pair, or a list of either (None: nothing)."""
        if loras is None:
            return []
        single_pair = isinstance(loras, tuple) and len(loras) == 2 and isinstance(loras[1], numbers.Real)
        if isinstance(loras, str | os.PathLike) or single_pair:
            loras = [loras]
        names = []
        for item in loras:
            path, scale = (item, 1.0) if isinstance(item, str | os.PathLike) else item
            names.append(self.load_lora(path, scale))
        return names

    @property
    def loras(self) -> dict[str, float]:
        """The loaded LoRA adapters and their scales."""
        from ..models.lora import active_loras

        return active_loras(self.unet)

    def set_lora_scales(self, scales: dict[str, float]) -> None:
        """Change the scale of loaded adapters (0 switches one off exactly)."""
        from ..models.lora import LoraError, set_lora_scales

        try:
            set_lora_scales(self.unet, scales)
        except LoraError as err:
            raise PipelineError(str(err)) from None

    def unload_lora(self) -> None:
        """Remove every adapter (the U-Net's own weights were never changed)."""
        from ..models.lora import unload_lora

        unload_lora(self.unet)

    def merge_lora(self) -> None:
        """Fold the loaded adapters, at their scales, into the U-Net's weights (then save it as a full model)."""
        from ..models.lora import merge_lora

        merge_lora(self.unet)

    def to(self, device: str | torch.device):
        for name in self.modules:
            getattr(self, name).to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def resolve(self, name: str, value):
        """``value``, or the model's default for ``name`` when it is None."""
        return self.defaults[name] if value is None else value

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> torch.Tensor:
        self.warn_long_prompts(prompts)
        return self.text_encoder(self.tokenizer(prompts).to(self.device))

    def warn_long_prompts(self, prompts: list[str]) -> None:
        """The text encoder reads a fixed number of tokens; say so when a prompt is cut rather than drop words silently."""
        limit = self.tokenizer.context_length
        for prompt in dict.fromkeys(prompts):
            n = len(self.tokenizer.encode(prompt)) + 2  # with the start and end tokens
            if n > limit:
                shown = prompt if len(prompt) <= 40 else prompt[:37] + "..."
                warnings.warn(f"the prompt {shown!r} is {n} tokens long; the text encoder keeps the first {limit} "
                              f"(start and end tokens included) and ignores the other {n - limit}",
                              UserWarning, stacklevel=4)

    def check_args(
        self, height: int, width: int, num_frames: int, steps: int, output_type: str, *,
        guidance_scale: float = 1.0, guidance_rescale: float = 0.0, eta: float = 0.0,
        image_guidance_scale: float | None = None,
    ) -> None:
        """Refuse values that would sample garbage (NaN guidance, negative eta, ...) before any work is done, and warn
        about frame counts beyond what the model was trained on."""
        vae_factor = spatial_factor_of(self.vae)
        unet_factor = 2 ** (len(self.unet.config.channel_mult) - 1)  # its skip connections need every level whole
        factor = vae_factor * unet_factor
        for what, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0 or v % factor:
                raise PipelineError(f"{what} must be a positive multiple of {factor} (the autoencoder's factor "
                                    f"{vae_factor} times the U-Net's {unet_factor}), got {v!r}")
        _positive_int(num_frames, "num_frames")
        _positive_int(steps, "num_inference_steps")
        if output_type not in OUTPUT_TYPES:
            raise PipelineError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        check_sampling_values(guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, eta=eta,
                              image_guidance_scale=image_guidance_scale)
        trained = self.defaults.get("num_frames")
        if isinstance(trained, int) and trained > 1 and num_frames > trained:
            warnings.warn(f"{num_frames} frames requested from a model trained on {trained}: frames past the trained "
                          "length are likely to lose their motion and content", UserWarning, stacklevel=3)

    def check_sampler(self, sampler: str, spacing: str) -> None:
        """Refuse an unknown sampler, or a spacing the sampler cannot use, with the names that would work."""
        from ..diffusion.samplers import SOLVER_SPACINGS, sampler_names
        from ..diffusion.sampling import SPACINGS

        names = sampler_names()
        if sampler not in names:
            raise PipelineError(f"sampler must be one of {', '.join(names)}; got {sampler!r}")
        allowed = SPACINGS if sampler in ("ddim", "ddpm") else SOLVER_SPACINGS
        if spacing not in allowed:
            raise PipelineError(f"timestep spacing {spacing!r} does not work with the {sampler} sampler; "
                                f"use one of {', '.join(allowed)}")

    def check_window(self, num_frames: int, window: int | None, stride: int | None, deep_cache=None,
                     attention_broadcast=False) -> int | None:
        """Validate the long-video window options; the window when ``num_frames`` needs windows, else None.

        A U-Net with absolute frame positions cannot see more frames than it has positions for: a longer request
        without ``window`` is generated in windows of that length (with a warning), not refused."""
        length = self.unet.config.get("temporal_length") if self.unet.config.get("temporal_position_embedding") else None
        if window is None:
            if stride is not None:
                raise PipelineError("window_stride needs window (the frames per co-denoised window)")
            if not (length and isinstance(num_frames, int) and num_frames > length):
                return None
            warnings.warn(f"{num_frames} frames requested from a model with frame positions for {length}: generating "
                          f"them in overlapping windows of {length} (window= / --window to choose)", UserWarning,
                          stacklevel=3)
            window = length
        _positive_int(window, "window")
        if stride is not None:
            _positive_int(stride, "window_stride")
            if stride > window:
                raise PipelineError(f"window_stride ({stride}) must not exceed window ({window}), or frames are skipped")
        if length and window > length:
            raise PipelineError(f"window ({window}) exceeds the {length} frame positions this U-Net has")
        windowed = isinstance(num_frames, int) and num_frames > window
        if windowed and (deep_cache is not None or attention_broadcast not in (None, False)):
            raise PipelineError("deep_cache and attention_broadcast reuse one window's features for the next; they "
                                "cannot be combined with window yet")
        return window if windowed else None

    def make_deep_cache(self, deep_cache: int | tuple[int, int] | None):
        """A fresh :class:`~vidiff.models.feature_cache.DeepCache` for one run: ``interval`` or ``(interval, depth)``."""
        from ..models.feature_cache import DeepCache

        if deep_cache is None:
            return None
        interval, depth = (deep_cache, 1) if not isinstance(deep_cache, tuple | list) else tuple(deep_cache)
        n_in = len(getattr(self.unet, "input_blocks", ()))
        try:
            cache = DeepCache(interval, depth)
        except ValueError as e:
            raise PipelineError(str(e)) from None
        if n_in and depth >= n_in:
            raise PipelineError(f"deep cache depth must be below the U-Net's {n_in} input blocks, got {depth}")
        return cache

    def make_attention_broadcast(self, attention_broadcast):
        """A fresh :class:`~vidiff.models.feature_cache.AttentionBroadcast` for one run (True: the PAB defaults)."""
        from ..models.feature_cache import AttentionBroadcast

        if attention_broadcast is None or attention_broadcast is False:
            return None
        if attention_broadcast is True:
            return AttentionBroadcast()
        if isinstance(attention_broadcast, AttentionBroadcast):
            attention_broadcast.reset()
            return attention_broadcast
        raise PipelineError(f"attention_broadcast must be a bool or an AttentionBroadcast, got {attention_broadcast!r}")

    def feature_reuse_kwargs(self, deep_cache, attention_broadcast) -> dict:
        """The U-Net keyword arguments of the requested feature reuse (empty when off, so the call is unchanged)."""
        extra = {}
        cache = self.make_deep_cache(deep_cache)
        if cache is not None:
            extra["deep_cache"] = cache
        broadcast = self.make_attention_broadcast(attention_broadcast)
        if broadcast is not None:
            extra["attention_broadcast"] = broadcast
        return extra

    def initial_latents(
        self, batch: int, num_frames: int, height: int, width: int,
        latents: torch.Tensor | None, generator: torch.Generator | None,
    ) -> torch.Tensor:
        factor = spatial_factor_of(self.vae)
        shape = (batch, self.unet.config.out_channels, num_frames, height // factor, width // factor)
        if latents is None:
            # Drawn on the CPU in float32 so a seed gives the same video on every device and dtype.
            latents = torch.randn(shape, generator=generator, dtype=torch.float32)
        elif tuple(latents.shape) != shape:
            raise PipelineError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(self.device, torch.float32)

    def finish(self, z: torch.Tensor, output_type: str, decode_chunk_size: int) -> VideoPipelineOutput:
        if output_type == "latent":
            return VideoPipelineOutput(frames=z, latents=z)
        video = decode_video(self.vae, z.float(), chunk_size=decode_chunk_size)
        if output_type == "pt":
            return VideoPipelineOutput(frames=video, latents=z)
        from ..utils.video import batch_to_uint8_frames

        return VideoPipelineOutput(frames=batch_to_uint8_frames(video), latents=z)


SEED_RANGE = 2**64  # torch.Generator.manual_seed takes 64-bit seeds


def seeded_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < SEED_RANGE):
        raise PipelineError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if generator is None and seed is not None:
        return torch.Generator("cpu").manual_seed(int(seed))
    return generator
