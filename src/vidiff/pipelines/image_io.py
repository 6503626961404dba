"""Loading conditioning images and the two official resize rules of the image-to-video models.

Everything comes out as float32 ``(b, 3, H, W)`` in [-1, 1], the layout the models take. Files and PIL images stay in
8-bit until they are resized, so that DynamiCrafter's torchvision ``Resize`` + ``CenterCrop`` on a PIL image (which is
Pillow's own bilinear filter) is reproduced exactly.

Conventions for in-memory inputs: numpy arrays follow the image-library convention (``(H, W)`` or ``(H, W, C)``, uint8
0..255 or float 0..1); torch tensors follow the model convention (channels first, ``(C, H, W)`` or ``(b, C, H, W)``,
float in [-1, 1] or uint8 0..255). Transparent images are composited on white (the official scripts drop the alpha
channel, which turns transparent areas into whatever colour they happen to store, usually black); opaque images are
unaffected. JPEG EXIF orientation is applied, as image viewers do.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

from .base import PipelineError

__all__ = [
    "ImageInput",
    "center_crop",
    "load_image",
    "open_image",
    "resize_exact",
    "resize_short_side_center_crop",
    "to_pil",
    "to_rgb",
]

ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor

WHITE = (255, 255, 255)
_RANGE_SLACK = 1e-3  # float inputs may overshoot their range by rounding


def to_rgb(image: Image.Image, background: tuple[int, int, int] = WHITE) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: alpha (RGBA, LA, palette transparency) is composited on ``background``."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        image = _high_depth_to_l(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        base = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(base, rgba).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit greyscale -> 8-bit (Pillow's own convert would clip everything above 255 to white)."""
    arr = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and arr.size and arr.max() > 255):
        arr = arr / 257.0
    elif image.mode == "F" and arr.size and arr.max() <= 1.0:
        arr = arr * 255.0
    return Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")


def open_image(path: str | os.PathLike) -> Image.Image:
    """Read an image file (PNG, JPEG, WebP, GIF/BMP/TIFF, ...; first frame of animations) as 8-bit RGB.

    A missing, unreadable or corrupt file raises :class:`PipelineError` naming the path and the reason.
    """
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"image file not found: {path}")
    if path.is_dir():
        raise PipelineError(f"{path} is a folder, not an image file")
    try:
        with Image.open(path) as handle:
            handle.load()
            frames = getattr(handle, "n_frames", 1)
            if frames > 1:
                warnings.warn(f"{path} is an animation of {frames} frames; only its first frame is used",
                              UserWarning, stacklevel=2)
            image = ImageOps.exif_transpose(handle)
            image = to_rgb(image)
            image.load()
    except UnidentifiedImageError:
        raise PipelineError(
            f"cannot read image {path}: not a recognised image format (expected PNG, JPEG, WebP, ...)"
        ) from None
    except Image.DecompressionBombError as err:
        raise PipelineError(f"cannot read image {path}: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise PipelineError(f"cannot read image {path}: {err} (truncated or corrupt file?)") from None
    if image.width < 1 or image.height < 1:
        raise PipelineError(f"image {path} is empty ({image.width}x{image.height})")
    return image


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(arr), "L")
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        return to_rgb(Image.fromarray(np.ascontiguousarray(arr), "RGB" if arr.shape[2] == 3 else "RGBA"))
    raise PipelineError(f"a numpy image must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got shape {arr.shape}")


def to_pil(source: ImageInput) -> Image.Image | None:
    """The source as an 8-bit RGB PIL image when that is lossless (files, PIL images, uint8 arrays), else None."""
    if isinstance(source, str | os.PathLike):
        return open_image(source)
    if isinstance(source, Image.Image):
        try:
            return to_rgb(ImageOps.exif_transpose(source))
        except (OSError, ValueError) as err:
            raise PipelineError(f"cannot convert the PIL image (mode {source.mode}) to RGB: {err}") from None
    if isinstance(source, np.ndarray) and source.dtype == np.uint8:
        return to_rgb(_array_to_pil(source))
    return None


def _pil_to_tensor(image: Image.Image) -> torch.Tensor:
    arr = np.asarray(image, dtype=np.float32)  # (H, W, 3), 0..255
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0) / 127.5 - 1.0


def _composite_float(x: torch.Tensor) -> torch.Tensor:
    """(b, C, H, W) float in [0, 1] with C in 1/2/3/4 -> (b, 3, H, W), alpha composited on white."""
    c = x.shape[1]
    if c in (2, 4):
        alpha = x[:, -1:]
        x = x[:, :-1] * alpha + (1.0 - alpha)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _check_range(x: torch.Tensor, low: float, high: float, what: str, hint: str) -> None:
    if not torch.isfinite(x).all():
        raise PipelineError(f"{what} holds NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < low - _RANGE_SLACK or hi > high + _RANGE_SLACK:
        raise PipelineError(f"{what} values must lie in [{low:g}, {high:g}], got [{lo:.4g}, {hi:.4g}]; {hint}")


def _array_to_tensor(arr: np.ndarray) -> torch.Tensor:
    if not np.issubdtype(arr.dtype, np.floating):
        raise PipelineError(f"numpy images must be uint8 (0..255) or float (0..1), got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise PipelineError(f"a numpy image must be (H, W) or (H, W, C) with C in 1..4, got shape {arr.shape}")
    x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).unsqueeze(0)
    _check_range(x, 0.0, 1.0, "float numpy image", "numpy images use the image-library range 0..1 (uint8: 0..255)")
    return _composite_float(x) * 2.0 - 1.0


def _tensor_to_tensor(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] not in (1, 2, 3, 4):
        hint = " (channels last? tensors are channels first)" if x.ndim in (3, 4) and x.shape[-1] in (1, 3, 4) else ""
        raise PipelineError(f"an image tensor must be (C, H, W) or (b, C, H, W) with C in 1..4, got {tuple(x.shape)}{hint}")
    if x.shape[0] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
        raise PipelineError(f"image tensor is empty: {tuple(x.shape)}")
    x = x.detach().to("cpu")
    if x.dtype == torch.uint8:
        return _composite_float(x.float() / 255.0) * 2.0 - 1.0
    if not x.is_floating_point():
        raise PipelineError(f"image tensors must be float in [-1, 1] or uint8, got dtype {x.dtype}")
    x = x.float()
    _check_range(x, -1.0, 1.0, "image tensor", "tensors use the model range [-1, 1] (map [0, 1] with x * 2 - 1)")
    return _composite_float((x + 1.0) / 2.0) * 2.0 - 1.0


def load_image(source: ImageInput) -> torch.Tensor:
    """Any supported image source -> float32 ``(b, 3, H, W)`` in [-1, 1] (b = 1 except for batched tensors)."""
    pil = to_pil(source)
    if pil is not None:
        return _pil_to_tensor(pil)
    if isinstance(source, np.ndarray):
        return _array_to_tensor(source)
    if isinstance(source, torch.Tensor):
        return _tensor_to_tensor(source)
    raise PipelineError(
        f"unsupported image type {type(source).__name__}: pass a file path, a PIL image, a numpy array or a tensor"
    )


def _check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PipelineError(f"{name} must be a positive int, got {value!r}")


def resize_exact(source: ImageInput, height: int, width: int) -> torch.Tensor:
    """VideoCrafter i2v: stretch to exactly ``height`` × ``width`` with bilinear interpolation, no crop.

    The official script runs ``cv2.resize(INTER_LINEAR)`` on the float RGB image. torch's bilinear with
    ``align_corners=False`` and no antialiasing uses the same half-pixel source grid, edge clamping and 2-tap weights,
    so the two agree to float rounding (there is no low-pass filter when shrinking, as in OpenCV).
    """
    _check_size(height, width)
    x = load_image(source)
    if tuple(x.shape[-2:]) == (height, width):
        return x
    return F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False, antialias=False)


def _short_side_size(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(int)``: the short side becomes ``size``, the long side int(size · long / short)."""
    if w <= h:
        return int(size * h / w), size
    return size, int(size * w / h)


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """torchvision ``CenterCrop`` on (b, C, H, W) in [-1, 1]: zero-pads (black, -1) when too small, rounds like it."""
    h, w = x.shape[-2:]
    if height > h or width > w:
        left = (width - w) // 2 if width > w else 0
        top = (height - h) // 2 if height > h else 0
        right = (width - w + 1) // 2 if width > w else 0
        bottom = (height - h + 1) // 2 if height > h else 0
        x = F.pad(x, (left, right, top, bottom), value=-1.0)
        h, w = x.shape[-2:]
    top = int(round((h - height) / 2.0))
    left = int(round((w - width) / 2.0))
    return x[..., top : top + height, left : left + width]


def resize_short_side_center_crop(source: ImageInput, height: int, width: int) -> torch.Tensor:
    """DynamiCrafter: torchvision ``Resize(min(H, W))`` then ``CenterCrop((H, W))``.

    Files, PIL images and uint8 arrays take torchvision's PIL path, i.e. Pillow's bilinear filter on 8-bit data (exact);
    float arrays and tensors take its tensor path, torch's antialiased bilinear.
    """
    _check_size(height, width)
    size = min(height, width)
    pil = to_pil(source)
    if pil is not None:
        new_h, new_w = _short_side_size(pil.height, pil.width, size)
        if (new_h, new_w) != (pil.height, pil.width):
            pil = pil.resize((new_w, new_h), Image.Resampling.BILINEAR)
        x = _pil_to_tensor(pil)
    else:
        x = load_image(source)
        new_h, new_w = _short_side_size(x.shape[-2], x.shape[-1], size)
        if (new_h, new_w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    return center_crop(x, height, width)
