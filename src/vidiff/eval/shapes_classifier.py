"""A small video classifier for the shapes world (2D appearance + 3D motion convs), the features behind FVD-shapes.

I3D (for FVD) was trained on Kinetics and says little about 64x64 clips of flat shapes; this network is trained on the
shapes world's own labels (colour, shape, motion, size, background, number of objects), so its penultimate features
separate exactly the things a shapes-world model can get wrong. It is tiny (~0.46 M parameters), trains on a CPU in a few
minutes (``scripts/train_shapes_classifier.py``) and ships with vidiff (``vidiff/assets/shapes_classifier``).

Videos are float ``(n, 3, t, h, w)`` in [-1, 1] or uint8 ``(n, t, h, w, 3)``, at the size the network was trained on
(default 16 x 64 x 64).
"""

from __future__ import annotations

import copy
import functools
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from vidiff.data.shapes import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, SIZES
from vidiff.metrics.protocols import as_videos, iter_batches, sha256_file
from vidiff.utils.io import atomic_directory, atomic_save_safetensors, atomic_write_json, atomic_write_text

__all__ = [
    "DEFAULT_HEADS",
    "ShapesClassifier",
    "ShapesClassifierConfig",
    "default_classifier_path",
    "features",
    "load_shapes_classifier",
    "predict",
    "save_shapes_classifier",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
README_NAME = "README.md"
TRAINING_NAME = "training.json"
IN_CHANNELS = 7  # RGB, RGB minus background, foreground strength

# Head name -> class names (order = logit index). "objects" is how many objects the clip shows.
DEFAULT_HEADS: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": SHAPES,
    "motion": MOTIONS,
    "size": SIZES,
    "background": tuple(BACKGROUNDS),
    "objects": ("one", "two"),
}


@dataclass(frozen=True)
class ShapesClassifierConfig:
    """Architecture and input size; saved as ``config.json`` next to the weights."""

    num_frames: int = 16
    height: int = 64
    width: int = 64
    appearance_frames: int = 4  # evenly spaced frames seen by the per-frame (2D) appearance stream
    appearance_channels: tuple[int, ...] = (16, 32, 64, 128)
    space_to_depth: int = 2  # the motion stream folds 2x2 pixels into channels first (cheap, keeps sub-pixel detail)
    motion_channels: tuple[int, ...] = (16, 32, 64, 128)
    feature_dim: int = 128
    heads: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_HEADS))

    def __post_init__(self) -> None:
        for name in ("num_frames", "height", "width", "appearance_frames", "space_to_depth", "feature_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("appearance_channels", "motion_channels"):
            value = getattr(self, name)
            if not value or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in value):
                raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {value!r}")
        if self.appearance_frames > self.num_frames:
            raise ValueError(f"appearance_frames ({self.appearance_frames}) exceeds num_frames ({self.num_frames})")
        if self.height % self.space_to_depth or self.width % self.space_to_depth:
            raise ValueError(f"height and width must be multiples of space_to_depth={self.space_to_depth}")
        if not self.heads or any(len(v) < 2 for v in self.heads.values()):
            raise ValueError(f"heads must map names to at least two class names each, got {self.heads!r}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["appearance_channels"] = list(self.appearance_channels)
        d["motion_channels"] = list(self.motion_channels)
        d["heads"] = {k: list(v) for k, v in self.heads.items()}
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ShapesClassifierConfig:
        if not isinstance(data, dict):
            raise ValueError(f"classifier config must be a JSON object, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown shapes-classifier config fields {unknown}; expected a subset of {sorted(known)}")
        data = dict(data)
        for name in ("appearance_channels", "motion_channels"):
            if name in data:
                data[name] = tuple(data[name])
        if "heads" in data:
            data["heads"] = {str(k): tuple(v) for k, v in data["heads"].items()}
        return cls(**data)


class _Block2d(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class _Block3d(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__(
            nn.Conv3d(cin, cout, kernel_size=kernel, stride=stride, padding=tuple(k // 2 for k in kernel), bias=False),
            nn.BatchNorm3d(cout),
            nn.SiLU(),
        )


def _global_pool(h: torch.Tensor) -> torch.Tensor:
    dims = tuple(range(2, h.ndim))
    return torch.cat([h.mean(dim=dims), h.amax(dim=dims)], dim=1)


class ShapesClassifier(nn.Module):
    """Two streams over the clip, its background-subtracted copy and its silhouette:

    * appearance: a 2D CNN on a few evenly spaced frames (shape, colour and size are properties of single frames, and
      a per-frame network learns them several times faster than a 3D one), features averaged over those frames;
    * motion: 2x2 pixels folded into channels, then a Conv3d stack (the first block per frame, the others halving time
      and space).

    Both are globally average- and max-pooled, concatenated and mapped to the features (one hidden layer); each label
    has a linear head on the features.
    """

    def __init__(self, config: ShapesClassifierConfig | None = None) -> None:
        super().__init__()
        self.config = config or ShapesClassifierConfig()
        c = self.config
        channels = (IN_CHANNELS, *c.appearance_channels)
        self.appearance = nn.Sequential(*(_Block2d(a, b) for a, b in zip(channels[:-1], channels[1:])))
        blocks = []
        cin = IN_CHANNELS * c.space_to_depth**2
        for i, cout in enumerate(c.motion_channels):
            first = i == 0
            blocks.append(_Block3d(cin, cout, (1, 3, 3) if first else (3, 3, 3), (1, 2, 2) if first else (2, 2, 2)))
            cin = cout
        self.motion = nn.Sequential(*blocks)
        pooled = 2 * (c.appearance_channels[-1] + c.motion_channels[-1])
        self.embed = nn.Sequential(nn.Linear(pooled, c.feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(c.feature_dim, len(labels)) for name, labels in c.heads.items()})
        idx = torch.linspace(0, c.num_frames - 1, c.appearance_frames).round().long()
        self.register_buffer("appearance_index", idx, persistent=False)
        self.source: str | None = None  # file the weights came from (for metric protocols)
        self.weights_sha256: str | None = None

    def _check(self, x: torch.Tensor) -> None:
        c = self.config
        if tuple(x.shape[2:]) != (c.num_frames, c.height, c.width) or x.shape[1] != 3:
            raise ValueError(
                f"the shapes classifier takes (n, 3, {c.num_frames}, {c.height}, {c.width}) clips (what it was trained "
                f"on); got shape {tuple(x.shape)}"
            )

    def embedding(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(n, feature_dim)`` of float clips ``(n, 3, t, h, w)`` in [-1, 1]."""
        self._check(x)
        # The background is the per-clip median colour of the frame border; subtracting it leaves only the objects.
        border = torch.cat([x[..., 0, :], x[..., -1, :], x[..., 1:-1, 0], x[..., 1:-1, -1]], dim=-1)
        background = border.flatten(2).median(dim=2).values[:, :, None, None, None]
        fg = x - background
        # |x - background| is a colour-blind silhouette, so shapes and sizes need not be learnt once per colour.
        x = torch.cat([x, fg, fg.norm(dim=1, keepdim=True)], dim=1)
        n, c, t, h, w = x.shape
        frames = x[:, :, self.appearance_index].transpose(1, 2).reshape(-1, c, h, w)
        appearance = _global_pool(self.appearance(frames)).reshape(n, len(self.appearance_index), -1).mean(dim=1)
        p = self.config.space_to_depth
        if p > 1:
            x = (
                x.reshape(n, c, t, h // p, p, w // p, p)
                .permute(0, 1, 4, 6, 2, 3, 5)
                .reshape(n, c * p * p, t, h // p, w // p)
            )
        motion = _global_pool(self.motion(x))
        return self.embed(torch.cat([appearance, motion], dim=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per head."""
        z = self.embedding(x)
        return {name: head(z) for name, head in self.heads.items()}

    def _batches(self, videos: Any, batch_size: int) -> Any:
        device = next(self.parameters()).device
        for batch in iter_batches(videos, batch_size, "videos"):
            yield as_videos(batch).to(device)

    @torch.inference_mode()
    def features(self, videos: Any, batch_size: int = 64) -> torch.Tensor:
        """Penultimate features ``(n, d)`` (float64, CPU) of a batch or an iterable of batches of clips."""
        was_training = self.training
        self.eval()
        try:
            out = [self.embedding(x).double().cpu() for x in self._batches(videos, batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out)

    @torch.inference_mode()
    def predict_proba(self, videos: Any, batch_size: int = 64) -> dict[str, torch.Tensor]:
        """Class probabilities per head, ``{head: (n, classes)}``."""
        was_training = self.training
        self.eval()
        try:
            parts: dict[str, list[torch.Tensor]] = {name: [] for name in self.heads}
            for x in self._batches(videos, batch_size):
                for name, logits in self(x).items():
                    parts[name].append(F.softmax(logits.float(), dim=1).cpu())
        finally:
            self.train(was_training)
        return {name: torch.cat(p) for name, p in parts.items()}

    def predict(self, videos: Any, batch_size: int = 64) -> dict[str, list[str]]:
        """Most likely class name per head and clip, ``{head: [label, ...]}``."""
        probs = self.predict_proba(videos, batch_size)
        return {name: [self.config.heads[name][i] for i in p.argmax(dim=1).tolist()] for name, p in probs.items()}


def default_classifier_path() -> Path:
    """Folder of the weights shipped with vidiff."""
    return Path(str(resources.files("vidiff") / "assets" / "shapes_classifier"))


def load_shapes_classifier(
    path: str | os.PathLike | None = None, device: str | torch.device = "cpu"
) -> ShapesClassifier:
    """Load a classifier folder (``config.json`` + ``model.safetensors``); ``None`` loads the packaged one.

    The packaged classifier is read once and the CPU copy is shared (in eval mode): do not train it in place.
    """
    if path is None:
        model = _load_default()
        return model if torch.device(device).type == "cpu" else copy.deepcopy(model).to(device)
    return _load(Path(path)).to(device)


@functools.lru_cache(maxsize=1)
def _load_default() -> ShapesClassifier:
    return _load(default_classifier_path())


def _load(folder: Path) -> ShapesClassifier:
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"no shapes classifier in {folder}: expected {CONFIG_NAME} and {WEIGHTS_NAME}; train one with "
            "`python scripts/train_shapes_classifier.py --out FOLDER`"
        )
    try:
        config = ShapesClassifierConfig.from_dict(json.loads(config_path.read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    model = ShapesClassifier(config)
    state = load_file(str(weights_path))
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{weights_path} does not fit its config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    bad = [k for k in expected if expected[k].shape != state[k].shape]
    if bad:
        raise ValueError(f"{weights_path} does not fit its config: wrong shapes for {bad[:5]}")
    model.load_state_dict(state)
    model.eval()
    model.source = str(weights_path)
    model.weights_sha256 = sha256_file(weights_path)
    return model


def save_shapes_classifier(
    model: ShapesClassifier,
    folder: str | os.PathLike,
    readme: str | None = None,
    training: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` (and ``README.md``, ``training.json``) as one atomic folder swap."""
    if not isinstance(model, ShapesClassifier):
        raise ValueError(f"expected a ShapesClassifier, got {type(model).__name__}")
    folder = Path(folder)
    with atomic_directory(folder, overwrite=overwrite) as tmp:
        atomic_write_json(tmp / CONFIG_NAME, model.config.to_dict())
        state = {k: v.detach().cpu().float() for k, v in model.state_dict().items()}
        atomic_save_safetensors(state, tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        if readme is not None:
            atomic_write_text(tmp / README_NAME, readme)
        if training is not None:
            atomic_write_json(tmp / TRAINING_NAME, training)
    return folder


def features(videos: Any, classifier: ShapesClassifier | None = None, batch_size: int = 64) -> torch.Tensor:
    """Penultimate features ``(n, d)`` with ``classifier`` (default: the packaged one)."""
    return (classifier or load_shapes_classifier()).features(videos, batch_size)


def predict(videos: Any, classifier: ShapesClassifier | None = None, batch_size: int = 64) -> dict[str, list[str]]:
    """Predicted label names per head with ``classifier`` (default: the packaged one)."""
    return (classifier or load_shapes_classifier()).predict(videos, batch_size)
