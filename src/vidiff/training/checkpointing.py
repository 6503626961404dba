"""Crash-safe training checkpoints: everything needed to continue a run exactly where it stopped.

A checkpoint is a folder ``checkpoints/checkpoint-<step>`` holding what ``accelerate`` saves (model weights as
safetensors, optimizer, per-process RNG states of python/numpy/torch, and the registered custom objects: the
:class:`TrainState` with the data position, the LR scheduler and the EMA), plus ``trainer_state.json``.

Atomicity: every process writes into a hidden ``.tmp-checkpoint-<step>`` folder; when all are done the main process
writes ``trainer_state.json`` last, flushes the files to disk and renames the folder into place. A run killed at any
moment therefore leaves either a complete checkpoint or a hidden temporary folder, which the next start deletes. Old
checkpoints are renamed aside before being deleted, for the same reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vidiff.utils.io import atomic_write_json

__all__ = [
    "CHECKPOINT_PREFIX",
    "STATE_FILE",
    "CheckpointError",
    "TrainState",
    "find_resume_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "read_trainer_state",
    "remove_stale_temporaries",
    "save_checkpoint",
]

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
_NAME = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (missing, incomplete or from a different run)."""


@dataclass
class TrainState:
    """Loop position, saved with every checkpoint (registered with accelerate as a custom object).

    ``epoch`` and ``batch_in_epoch`` are the data position: the number of micro-batches already consumed from the
    epoch's deterministic batch order, so a resumed run continues with the very next batch. ``task_counters`` are a
    task's running counts (UniVid's rows per mode), carried across a resume.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0
    fingerprint: str = ""
    task_counters: dict = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            if hasattr(self, key):
                setattr(self, key, value)


def checkpoint_path(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"{CHECKPOINT_PREFIX}{step:07d}"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` (those with a ``trainer_state.json``), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        m = _NAME.match(entry.name)
        if m and entry.is_dir() and (entry / STATE_FILE).is_file():
            found.append((int(m.group(1)), entry))
    return sorted(found)


def remove_stale_temporaries(root: str | os.PathLike) -> list[Path]:
    """Delete hidden leftovers of interrupted saves or deletions (call on the main process before training)."""
    root = Path(root)
    removed = []
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith((".tmp-", ".deleting-")):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry)
    return removed


def read_trainer_state(path: str | os.PathLike) -> dict[str, Any]:
    file = Path(path) / STATE_FILE
    if not file.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{file} is not valid JSON: {err}") from err


def find_resume_checkpoint(root: str | os.PathLike, resume: str) -> Path | None:
    """The checkpoint to resume from: ``auto`` → the latest in ``root`` (None if none), ``never`` → None, else a path."""
    if resume == "never":
        return None
    if resume == "auto":
        found = list_checkpoints(root)
        return found[-1][1] if found else None
    path = Path(resume)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint.resume={resume!r}: no such checkpoint folder")
    read_trainer_state(path)
    return path


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(
    accelerator: Any,
    root: str | os.PathLike,
    state: TrainState,
    summary: dict[str, Any] | None = None,
    keep_last: int | None = None,
    per_process_files: dict[str, Any] | None = None,
) -> Path:
    """Save the accelerator state (all processes call this) atomically as ``root/checkpoint-<step>``.

    ``per_process_files`` maps a file name to an object ``torch.save``d by *every* process under
    ``<name>.rank<i>`` (for state that is sharded per process, e.g. an EMA under FSDP). Returns the final folder.
    """
    import torch

    root = Path(root)
    final = checkpoint_path(root, state.step)
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    for name, obj in (per_process_files or {}).items():
        torch.save(obj, tmp / f"{name}.rank{accelerator.process_index}")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        info = {
            "step": state.step,
            "epoch": state.epoch,
            "batch_in_epoch": state.batch_in_epoch,
            "samples_seen": state.samples_seen,
            "fingerprint": state.fingerprint,
            "num_processes": accelerator.num_processes,
            "saved_at": time.strftime("%Y-%m-%d %H:%M:%S"),
            **(summary or {}),
        }
        atomic_write_json(tmp / STATE_FILE, info)
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (a resumed run that stops where it started): replace it
            aside = root / f".deleting-{final.name}-{os.getpid()}"
            os.rename(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.rename(tmp, final)
        fd = os.open(root, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        if keep_last:
            for _, old in list_checkpoints(root)[:-keep_last]:
                aside = root / f".deleting-{old.name}"
                os.rename(old, aside)
                shutil.rmtree(aside, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, path: str | os.PathLike) -> dict[str, Any]:
    """Restore everything ``save_checkpoint`` saved into the prepared objects; returns ``trainer_state.json``."""
    path = Path(path)
    info = read_trainer_state(path)
    try:
        accelerator.load_state(str(path))
    except (FileNotFoundError, KeyError, RuntimeError, ValueError) as err:
        raise CheckpointError(
            f"cannot restore {path}: {err} (was it written by a run with a different model or settings?)"
        ) from err
    return info
