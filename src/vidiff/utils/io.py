"""Atomic file and directory writes.

A crash, a full disk or an exception in the middle of a write must never leave a half-written file or folder where a
finished one is expected (a truncated checkpoint looks valid until it is loaded). Everything here writes to a hidden
temporary sibling in the same folder (so the final rename stays on one file system) and only then renames it into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "atomic_directory",
    "atomic_save_safetensors",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "atomic_write_with",
    "temp_sibling_path",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: on POSIX the directory entry itself must be flushed (best effort, no-op elsewhere)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temp_sibling_path(path: str | os.PathLike, suffix: str | None = None) -> Path:
    """A fresh hidden path next to ``path``, ending in ``suffix`` (default: ``path``'s own extension).

    Writers that choose a format from the file name (PyAV, Pillow) need the real extension on the temporary name, so it is
    kept at the end: ``out/video.mp4`` → ``out/.video.mp4.<random>.tmp.mp4``.
    """
    path = Path(path)
    suffix = path.suffix if suffix is None else suffix
    return path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{suffix}"


def atomic_write_with(path: str | os.PathLike, writer: Callable[[Path], None], suffix: str | None = None) -> Path:
    """Call ``writer(temp_path)`` and move the result to ``path``; the temp file is removed if the writer fails.

    For libraries that only write to a file name (safetensors, PyAV, Pillow). The parent folder must exist.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is an existing directory")
    tmp = temp_sibling_path(path, suffix)
    try:
        writer(tmp)
        if not tmp.is_file():
            raise RuntimeError(f"writer for {path} did not create its output file {tmp}")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(err, OSError) and err.filename is None:  # PyAV / Pillow errors often do not name the file
            raise OSError(err.errno, err.strerror or str(err), str(path)) from err
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"atomic_write_bytes needs bytes, got {type(data).__name__}")

    def write(tmp: Path) -> None:
        with open(tmp, "xb") as f:
            f.write(data)

    return atomic_write_with(path, write)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Text version of :func:`atomic_write_bytes` (UTF-8 by default, newlines written as given)."""
    if not isinstance(text, str):
        raise TypeError(f"atomic_write_text needs str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    """Serialise ``obj`` first (so an unserialisable object fails before anything is touched), then write it atomically."""
    try:
        text = json.dumps(obj, indent=indent, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"cannot write {path} as JSON: {err}") from err
    return atomic_write_text(path, text + "\n")


def atomic_save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """``safetensors.torch.save_file`` through a temporary sibling, so an interrupted save leaves no truncated file."""
    import torch
    from safetensors.torch import save_file

    bad = [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f"cannot save {path}: entries must be str → torch.Tensor; offending keys: {bad[:5]}")
    if metadata is not None:
        bad_meta = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad_meta:
            raise TypeError(f"cannot save {path}: safetensors metadata must be str → str; offending keys: {bad_meta[:5]}")
        metadata = dict(metadata)
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    return atomic_write_with(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


@contextlib.contextmanager
def atomic_directory(final_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden temporary sibling folder to fill; it becomes ``final_dir`` only if the block finishes.

    * ``final_dir`` exists and ``overwrite`` is False: :class:`FileExistsError` before the block runs (no wasted work).
    * ``overwrite`` True: the old folder is renamed aside, the new one renamed in, then the old one deleted; if the
      swap fails the old folder is put back.
    * The block raises: the temporary folder is deleted and any existing ``final_dir`` is left untouched.

    Missing parent folders are created.
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and not final_dir.is_dir():
        raise FileExistsError(f"{final_dir} exists and is not a directory; remove it or choose another output folder")
    if final_dir.exists() and not overwrite:
        raise FileExistsError(f"output folder {final_dir} already exists; pass overwrite=True (--overwrite) to replace it")
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.", suffix=".tmp", dir=final_dir.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        _swap_in(tmp, final_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, final_dir: Path, overwrite: bool) -> None:
    # Re-check: on POSIX, rename() silently replaces an *empty* directory that appeared while the block ran.
    if not final_dir.exists():
        os.rename(tmp, final_dir)
        _fsync_dir(final_dir.parent)
        return
    if not overwrite:
        raise FileExistsError(f"output folder {final_dir} appeared while it was being written; nothing was replaced")
    if not final_dir.is_dir():
        raise FileExistsError(f"{final_dir} exists and is not a directory; nothing was replaced")
    old = final_dir.parent / f".{final_dir.name}.{uuid.uuid4().hex[:12]}.old"
    os.rename(final_dir, old)
    try:
        os.rename(tmp, final_dir)
    except BaseException:
        os.rename(old, final_dir)
        raise
    _fsync_dir(final_dir.parent)
    shutil.rmtree(old, ignore_errors=True)


class UnsafeCheckpointError(ValueError):
    """A pickle that holds more than tensors and plain containers: loading it could run arbitrary code."""


def safe_torch_load(path: str | os.PathLike, **kwargs: Any) -> Any:
    """``torch.load(path, weights_only=True)``; a file that safe loading refuses raises :class:`UnsafeCheckpointError`
    saying so (torch's own message advises turning safe loading off, which would run the file's code)."""
    import pickle
    import re

    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" not in text:
            raise
        found = re.search(r"GLOBAL (\S+)", text)
        what = f" (it asks for {found.group(1)})" if found else ""
        raise UnsafeCheckpointError(
            f"{os.fspath(path)} is refused as unsafe: it is a pickle that builds objects other than tensors{what}, "
            "which could run code; vidiff loads only tensors. Re-save the weights as .safetensors, or as a plain "
            "state dict, from a trusted copy"
        ) from None
