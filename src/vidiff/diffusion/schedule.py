"""The discrete noise schedule of the LVDM family (VideoCrafter 1/2, DynamiCrafter), bit-compatible with the official code.

Every derived array is computed in float64 and stored as float32, exactly as the official ``register_schedule`` does, so
the buffers match a released checkpoint's and the samplers see the same coefficients the official samplers see.

Two extensions of plain DDPM live here because they change what the model was trained on:

* zero-terminal-SNR rescaling of the betas (Lin et al. 2023, Alg. 1; DynamiCrafter 512/1024);
* a *data scale* ``scale_arr[t]`` that multiplies the clean latent before noise is added during training (VideoCrafter's
  ``use_scale`` and DynamiCrafter's ``use_dynamic_rescale``). The two code bases build the same array but undo it
  differently at sampling time, which is why the flavour ("vc" or "dc") is part of the config.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vidiff.utils.io import atomic_write_json

__all__ = [
    "SCHEDULER_CONFIG_NAME",
    "NoiseSchedule",
    "rescale_betas_zero_terminal_snr",
    "schedule_from_official_params",
]

SCHEDULER_CONFIG_NAME = "scheduler_config.json"

BETA_SCHEDULES = ("scaled_linear", "linear")
PREDICTION_TYPES = ("epsilon", "v_prediction")
DATA_SCALES = ("none", "vc", "dc")

# Buffer names in the order the official DDPM.register_schedule registers them.
OFFICIAL_BUFFER_NAMES = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


@dataclass
class NoiseSchedule:
    """Config plus the derived float32 arrays (torch tensors on the CPU) of one discrete diffusion schedule.

    ``beta_schedule="scaled_linear"`` is what the official code calls ``linear`` (betas = linspace(√start, √end)²);
    ``"linear"`` is a plain linspace (the official ``sqrt_linear``). ``data_scale`` selects the training-time latent scale:
    ``scale_arr`` = linspace(scale_start, scale_end, scale_ramp_steps) followed by scale_end up to ``scale_arr_len``
    entries (default num_train_timesteps + scale_ramp_steps = 1400; VideoCrafter's ``fix_scale_bug`` gives 1000).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    rescale_zero_terminal_snr: bool = False
    prediction_type: str = "epsilon"
    data_scale: str = "none"
    scale_start: float = 1.0
    scale_end: float | None = None
    scale_ramp_steps: int = 400
    scale_arr_len: int | None = None

    # Derived arrays (float32 CPU tensors), filled in __post_init__.
    betas: torch.Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)
    alphas_cumprod_prev: torch.Tensor = field(init=False, repr=False, compare=False)
    sqrt_alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)
    sqrt_one_minus_alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)
    log_one_minus_alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)
    sqrt_recip_alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)
    sqrt_recipm1_alphas_cumprod: torch.Tensor = field(init=False, repr=False, compare=False)
    posterior_variance: torch.Tensor = field(init=False, repr=False, compare=False)
    posterior_log_variance_clipped: torch.Tensor = field(init=False, repr=False, compare=False)
    posterior_mean_coef1: torch.Tensor = field(init=False, repr=False, compare=False)
    posterior_mean_coef2: torch.Tensor = field(init=False, repr=False, compare=False)
    scale_arr: torch.Tensor | None = field(init=False, repr=False, compare=False)
    # float64 ᾱ before the float32 cast, for samplers that recompute coefficients on a subset of steps.
    alphas_cumprod_f64: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._validate()
        self._build()

    # ------------------------------------------------------------------ construction
    def _validate(self) -> None:
        if isinstance(self.num_train_timesteps, bool) or not isinstance(self.num_train_timesteps, int | np.integer):
            raise ValueError(f"num_train_timesteps must be an int, got {self.num_train_timesteps!r}")
        if self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be at least 2, got {self.num_train_timesteps}")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta_schedule {self.beta_schedule!r}; expected one of {BETA_SCHEDULES}")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {self.prediction_type!r}; expected one of {PREDICTION_TYPES}")
        if self.data_scale not in DATA_SCALES:
            raise ValueError(f"unknown data_scale {self.data_scale!r}; expected one of {DATA_SCALES}")
        for name in ("beta_start", "beta_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
        if not 0.0 < self.beta_start < 1.0 or not 0.0 < self.beta_end < 1.0:
            raise ValueError(f"beta_start and beta_end must lie in (0, 1), got {self.beta_start} and {self.beta_end}")
        if self.beta_end <= self.beta_start:
            raise ValueError(f"beta_end ({self.beta_end}) must be larger than beta_start ({self.beta_start})")
        if not isinstance(self.rescale_zero_terminal_snr, bool):
            raise ValueError(f"rescale_zero_terminal_snr must be a bool, got {self.rescale_zero_terminal_snr!r}")
        if self.data_scale == "none":
            return
        if self.scale_end is None:
            raise ValueError(
                f"data_scale={self.data_scale!r} needs scale_end (VideoCrafter scale_b / DynamiCrafter base_scale)"
            )
        for name in ("scale_start", "scale_end"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        ramp = self.scale_ramp_steps
        if (
            isinstance(ramp, bool)
            or not isinstance(ramp, int | np.integer)
            or not 1 <= ramp <= self.num_train_timesteps
        ):
            raise ValueError(f"scale_ramp_steps must be an int in [1, {self.num_train_timesteps}], got {ramp!r}")
        length = self.scale_arr_len
        if length is not None and (
            isinstance(length, bool) or not isinstance(length, int | np.integer) or length < self.num_train_timesteps
        ):
            raise ValueError(
                f"scale_arr_len must be an int >= num_train_timesteps ({self.num_train_timesteps}), got {length!r}"
            )

    def _build(self) -> None:
        n = int(self.num_train_timesteps)
        if self.beta_schedule == "scaled_linear":
            betas_t = torch.linspace(self.beta_start**0.5, self.beta_end**0.5, n, dtype=torch.float64) ** 2
        else:
            betas_t = torch.linspace(self.beta_start, self.beta_end, n, dtype=torch.float64)
        betas = betas_t.numpy()
        if self.rescale_zero_terminal_snr:
            betas = rescale_betas_zero_terminal_snr(betas)

        alphas = 1.0 - betas
        ac = np.cumprod(alphas, axis=0)
        ac_prev = np.append(1.0, ac[:-1])
        self.alphas_cumprod_f64 = ac

        def f32(a: np.ndarray) -> torch.Tensor:
            return torch.tensor(a, dtype=torch.float32)

        with np.errstate(divide="ignore", invalid="ignore"):
            self.betas = f32(betas)
            self.alphas_cumprod = f32(ac)
            self.alphas_cumprod_prev = f32(ac_prev)
            self.sqrt_alphas_cumprod = f32(np.sqrt(ac))
            self.sqrt_one_minus_alphas_cumprod = f32(np.sqrt(1.0 - ac))
            self.log_one_minus_alphas_cumprod = f32(np.log(1.0 - ac))
            if self.prediction_type == "v_prediction":
                # The official code registers these as zeros for v-models (they are inf at a zero-SNR step).
                self.sqrt_recip_alphas_cumprod = torch.zeros(n, dtype=torch.float32)
                self.sqrt_recipm1_alphas_cumprod = torch.zeros(n, dtype=torch.float32)
            else:
                self.sqrt_recip_alphas_cumprod = f32(np.sqrt(1.0 / ac))
                self.sqrt_recipm1_alphas_cumprod = f32(np.sqrt(1.0 / ac - 1))
            posterior_variance = betas * (1.0 - ac_prev) / (1.0 - ac)
            self.posterior_variance = f32(posterior_variance)
            self.posterior_log_variance_clipped = f32(np.log(np.maximum(posterior_variance, 1e-20)))
            self.posterior_mean_coef1 = f32(betas * np.sqrt(ac_prev) / (1.0 - ac))
            self.posterior_mean_coef2 = f32((1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac))

        if self.data_scale == "none":
            self.scale_arr = None
        else:
            length = self.resolved_scale_arr_len
            ramp = np.linspace(self.scale_start, self.scale_end, self.scale_ramp_steps)
            tail = np.full(length - self.scale_ramp_steps, self.scale_end)
            self.scale_arr = f32(np.concatenate((ramp, tail)))

    @property
    def resolved_scale_arr_len(self) -> int:
        """Length of ``scale_arr`` (only the first num_train_timesteps entries are ever indexed)."""
        if self.scale_arr_len is not None:
            return int(self.scale_arr_len)
        return int(self.num_train_timesteps) + int(self.scale_ramp_steps)

    @property
    def is_v_prediction(self) -> bool:
        return self.prediction_type == "v_prediction"

    # ------------------------------------------------------------------ serialisation
    def official_buffers(self) -> dict[str, torch.Tensor]:
        """The schedule buffers an official LatentDiffusion checkpoint stores, under the official names.

        Conversion compares these with a checkpoint's own buffers to confirm that the detected schedule is the one the
        checkpoint was trained with.
        """
        out = {name: getattr(self, name).clone() for name in OFFICIAL_BUFFER_NAMES}
        if self.scale_arr is not None:
            out["scale_arr"] = self.scale_arr.clone()
        return out

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> NoiseSchedule:
        """Build from a config dict; keys starting with ``_`` (metadata) are ignored, unknown keys are an error."""
        if not isinstance(config, dict):
            raise ValueError(f"a NoiseSchedule config must be a dict, got {type(config).__name__}")
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(k for k in config if k not in known and not str(k).startswith("_"))
        if unknown:
            raise ValueError(f"unknown NoiseSchedule config keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**{k: v for k, v in config.items() if k in known})

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write ``folder/scheduler_config.json`` atomically (the folder is created if needed)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"_class_name": type(self).__name__, **self.to_dict()}
        return atomic_write_json(folder / SCHEDULER_CONFIG_NAME, payload)

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> NoiseSchedule:
        path = Path(folder) / SCHEDULER_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"no {SCHEDULER_CONFIG_NAME} in {folder}")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from err
        return cls.from_dict(config)

    # ------------------------------------------------------------------ training / prediction helpers
    def _gather(self, array: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """array[t] shaped (b, 1, ..., 1) to broadcast against ``like`` (official ``extract_into_tensor``)."""
        t = self._as_timesteps(t, like)
        out = array.to(like.device)[t].to(like.dtype)
        return out.reshape(t.shape[0], *((1,) * (like.ndim - 1)))

    def _as_timesteps(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        if isinstance(t, int | np.integer):
            t = torch.full((like.shape[0],), int(t), dtype=torch.long)
        if not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex():
            raise ValueError(f"timesteps must be an int or an integer tensor, got {t!r}")
        t = t.reshape(-1).to(device=like.device, dtype=torch.long)
        if t.numel() == 1 and like.shape[0] != 1:
            t = t.expand(like.shape[0])
        if t.shape[0] != like.shape[0]:
            raise ValueError(f"got {t.shape[0]} timesteps for a batch of {like.shape[0]}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= self.num_train_timesteps):
            raise ValueError(f"timesteps must lie in [0, {self.num_train_timesteps - 1}], got {t.tolist()}")
        return t

    def _data_scale(self, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor | None:
        if self.scale_arr is None:
            return None
        return self._gather(self.scale_arr, t, like)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """x_t = √ᾱ_t·(s_t·x0) + √(1−ᾱ_t)·noise, the official training forward process (s_t = 1 without data scale)."""
        _check_same_shape(x0, noise, "x0", "noise")
        s = self._data_scale(t, x0)
        if s is not None:
            x0 = x0 * s
        return (
            self._gather(self.sqrt_alphas_cumprod, t, x0) * x0
            + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def training_target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """The regression target: the noise for ε-models, v = √ᾱ·noise − √(1−ᾱ)·(s_t·x0) for v-models."""
        _check_same_shape(x0, noise, "x0", "noise")
        if not self.is_v_prediction:
            self._as_timesteps(t, x0)
            return noise
        s = self._data_scale(t, x0)
        if s is not None:
            x0 = x0 * s
        return (
            self._gather(self.sqrt_alphas_cumprod, t, x0) * noise
            - self._gather(self.sqrt_one_minus_alphas_cumprod, t, x0) * x0
        )

    def predict_x0(
        self, x_t: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor | int, unscale: bool = True
    ) -> torch.Tensor:
        """Clean latent implied by a model output.

        With a data scale the model's x0 lives at scale s_t; ``unscale=True`` divides it out so the result is in the
        units of the data that went into :meth:`add_noise`.
        """
        _check_same_shape(x_t, model_output, "x_t", "model_output")
        if self.is_v_prediction:
            x0 = (
                self._gather(self.sqrt_alphas_cumprod, t, x_t) * x_t
                - self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * model_output
            )
        else:
            x0 = (
                self._gather(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self._gather(self.sqrt_recipm1_alphas_cumprod, t, x_t) * model_output
            )
        s = self._data_scale(t, x_t) if unscale else None
        return x0 / s if s is not None else x0

    def predict_eps(self, x_t: torch.Tensor, model_output: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """Noise implied by a model output (identity for ε-models, √ᾱ·v + √(1−ᾱ)·x_t for v-models)."""
        _check_same_shape(x_t, model_output, "x_t", "model_output")
        if not self.is_v_prediction:
            self._as_timesteps(t, x_t)
            return model_output
        return (
            self._gather(self.sqrt_alphas_cumprod, t, x_t) * model_output
            + self._gather(self.sqrt_one_minus_alphas_cumprod, t, x_t) * x_t
        )


def rescale_betas_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Lin et al. 2023, Alg. 1, in float64 numpy as the official code runs it (so the float32 buffers match bit for bit).

    √ᾱ is shifted so that its last value is 0 and scaled so that its first value is unchanged; the betas are then read
    back from the new ᾱ. The last beta becomes exactly 1, so ᾱ[T−1] is exactly 0.
    """
    betas = np.asarray(betas, dtype=np.float64)
    sqrt_ac = np.sqrt(np.cumprod(1.0 - betas, axis=0))
    first, last = sqrt_ac[0].copy(), sqrt_ac[-1].copy()
    sqrt_ac = (sqrt_ac - last) * (first / (first - last))
    ac = sqrt_ac**2
    alphas = np.concatenate([ac[0:1], ac[1:] / ac[:-1]])
    return 1.0 - alphas


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    if not isinstance(a, torch.Tensor) or not isinstance(b, torch.Tensor):
        raise ValueError(f"{name_a} and {name_b} must be tensors")
    if a.shape != b.shape:
        raise ValueError(f"{name_a} {tuple(a.shape)} and {name_b} {tuple(b.shape)} must have the same shape")
    if a.ndim < 1:
        raise ValueError(f"{name_a} must have a batch dimension")


_OFFICIAL_BETA_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear"}
_OFFICIAL_PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction"}


def schedule_from_official_params(model_params: dict[str, Any]) -> NoiseSchedule:
    """The schedule an official ``LatentDiffusion``/``LatentVisualDiffusion`` builds from its ``model.params``.

    Reads ``timesteps``, ``beta_schedule``, ``linear_start``, ``linear_end``, ``parameterization``,
    ``rescale_betas_zero_snr``, VideoCrafter's ``use_scale``/``scale_a``/``scale_b``/``mid_step``/``fix_scale_bug`` and
    DynamiCrafter's ``use_dynamic_rescale``/``base_scale``/``turning_step``, with the official defaults for absent keys.
    """
    if not isinstance(model_params, dict):
        raise ValueError(f"model_params must be a dict, got {type(model_params).__name__}")
    p = model_params
    official_schedule = p.get("beta_schedule", "linear")
    if official_schedule not in _OFFICIAL_BETA_SCHEDULES:
        raise ValueError(
            f"official beta_schedule {official_schedule!r} is not supported; expected one of {sorted(_OFFICIAL_BETA_SCHEDULES)}"
        )
    param = p.get("parameterization", "eps")
    if param not in _OFFICIAL_PARAMETERIZATIONS:
        raise ValueError(f"official parameterization {param!r} is not supported; expected 'eps' or 'v'")
    if p.get("given_betas") is not None:
        raise ValueError("official configs with given_betas are not supported")
    use_scale = bool(p.get("use_scale", False))
    use_dynamic = bool(p.get("use_dynamic_rescale", False))
    if use_scale and use_dynamic:
        raise ValueError("use_scale (VideoCrafter) and use_dynamic_rescale (DynamiCrafter) cannot both be set")
    timesteps = int(p.get("timesteps", 1000))
    kwargs: dict[str, Any] = {
        "num_train_timesteps": timesteps,
        "beta_start": float(p.get("linear_start", 1e-4)),
        "beta_end": float(p.get("linear_end", 2e-2)),
        "beta_schedule": _OFFICIAL_BETA_SCHEDULES[official_schedule],
        "rescale_zero_terminal_snr": bool(p.get("rescale_betas_zero_snr", False)),
        "prediction_type": _OFFICIAL_PARAMETERIZATIONS[param],
    }
    if use_scale:
        ramp = int(p.get("mid_step", 400))
        kwargs.update(
            data_scale="vc",
            scale_start=float(p.get("scale_a", 1.0)),
            scale_end=float(p.get("scale_b", 0.3)),
            scale_ramp_steps=ramp,
            scale_arr_len=timesteps if p.get("fix_scale_bug", False) else timesteps + ramp,
        )
    elif use_dynamic:
        ramp = int(p.get("turning_step", 400))
        kwargs.update(
            data_scale="dc",
            scale_start=1.0,
            scale_end=float(p.get("base_scale", 0.7)),
            scale_ramp_steps=ramp,
            scale_arr_len=timesteps + ramp,
        )
    return NoiseSchedule(**kwargs)
