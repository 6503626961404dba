"""Atomic writes: the target is either the old content or the complete new one, and no temp files are left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from vidiff.utils.io import (
    atomic_directory,
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    atomic_write_with,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_write_bytes_text_json(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01abc")
    atomic_write_text(tmp_path / "b.txt", "héllo\n")
    atomic_write_json(tmp_path / "c.json", {"x": [1, 2.5, "é"]})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01abc"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8")) == {"x": [1, 2.5, "é"]}
    assert _names(tmp_path) == ["a.bin", "b.txt", "c.json"]


def test_write_replaces_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert _names(tmp_path) == ["f.txt"]


def test_failing_writer_leaves_no_partial_file(tmp_path: Path) -> None:
    def half_then_crash(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(tmp_path / "new.bin", half_then_crash)
    assert _names(tmp_path) == []

    existing = tmp_path / "old.bin"
    existing.write_bytes(b"complete old content")
    with pytest.raises(OSError, match="disk full"):
        atomic_write_with(existing, half_then_crash)
    assert existing.read_bytes() == b"complete old content"
    assert _names(tmp_path) == ["old.bin"]


def test_unserialisable_json_fails_before_touching_file(tmp_path: Path) -> None:
    target = tmp_path / "c.json"
    target.write_text("{}")
    with pytest.raises(ValueError, match="JSON"):
        atomic_write_json(target, {"bad": object()})
    with pytest.raises(ValueError, match="JSON"):
        atomic_write_json(target, {"nan": float("nan")})
    assert target.read_text() == "{}"
    assert _names(tmp_path) == ["c.json"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        atomic_write_bytes(tmp_path / "missing" / "a.bin", b"x")
    with pytest.raises(TypeError, match="bytes"):
        atomic_write_bytes(tmp_path / "a.bin", "text")  # type: ignore[arg-type]
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        atomic_write_text(tmp_path / "d", "x")


def test_safetensors_round_trip(tmp_path: Path) -> None:
    tensors = {"w": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(), "b": torch.tensor([1, 2], dtype=torch.int64)}
    path = atomic_save_safetensors(tensors, tmp_path / "m.safetensors", metadata={"format": "pt", "model": "x"})
    loaded = load_file(str(path))
    assert torch.equal(loaded["w"], tensors["w"]) and torch.equal(loaded["b"], tensors["b"])
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "model": "x"}
    assert _names(tmp_path) == ["m.safetensors"]
    with pytest.raises(TypeError, match="metadata"):
        atomic_save_safetensors(tensors, tmp_path / "n.safetensors", metadata={"n": 1})  # type: ignore[dict-item]
    assert _names(tmp_path) == ["m.safetensors"]


def test_directory_success(tmp_path: Path) -> None:
    final = tmp_path / "sub" / "out"
    with atomic_directory(final) as tmp:
        assert tmp.parent == final.parent and tmp.name.startswith(".") and tmp.is_dir()
        assert not final.exists()
        (tmp / "model.json").write_text("{}")
    assert final.is_dir() and (final / "model.json").read_text() == "{}"
    assert _names(final.parent) == ["out"]


def test_directory_exception_cleans_up(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_directory(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert _names(tmp_path) == []


def test_directory_exists_without_overwrite_fails_before_work(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "keep.txt").write_text("keep")
    ran = False
    with pytest.raises(FileExistsError, match="already exists"):
        with atomic_directory(final):
            ran = True
    assert not ran
    assert _names(tmp_path) == ["out"] and (final / "keep.txt").read_text() == "keep"

    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        with atomic_directory(tmp_path / "file", overwrite=True):
            pass


def test_directory_overwrite_swaps(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_directory(final, overwrite=True) as tmp:
        assert (final / "old.txt").exists()  # old content stays readable until the swap
        (tmp / "new.txt").write_text("new")
    assert _names(final) == ["new.txt"]
    assert _names(tmp_path) == ["out"]


def test_directory_overwrite_failure_keeps_old(tmp_path: Path) -> None:
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(ValueError):
        with atomic_directory(final, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise ValueError("conversion failed")
    assert _names(final) == ["old.txt"] and (final / "old.txt").read_text() == "old"
    assert _names(tmp_path) == ["out"]


def test_directory_appearing_meanwhile_is_not_replaced(tmp_path: Path) -> None:
    final = tmp_path / "out"
    with pytest.raises(FileExistsError, match="appeared"):
        with atomic_directory(final) as tmp:
            (tmp / "new.txt").write_text("new")
            final.mkdir()  # another process created it (empty: a plain rename would silently replace it)
    assert final.is_dir() and _names(final) == []
    assert _names(tmp_path) == ["out"]
