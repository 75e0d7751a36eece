"""Files: atomic writes (every result file, and a replaced folder, is written beside its place, then renamed) and
the readers of text and JSON objects that name a missing or damaged file in one MemlawError."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from .errors import MemlawError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: os.umask can only be read by setting it


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes files owner-only; results are ordinary files
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def replace_folder(new: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Put the finished folder `new` in place of `dest` (same filesystem): a reader sees the old folder or
    the new one. The old one is renamed aside first and removed after; if the second rename fails it
    is put back, so `dest` is never lost."""
    import shutil
    import uuid

    new, dest = Path(new), Path(dest)
    old = None
    if dest.exists():
        old = dest.parent / f".{dest.name}.replaced-{uuid.uuid4().hex[:8]}"
        os.replace(dest, old)
    try:
        os.replace(new, dest)
    except BaseException:
        if old is not None:
            os.replace(old, dest)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_yaml(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False, allow_unicode=True))


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def write_csv(path: str | os.PathLike, rows: list[Mapping[str, Any]], fieldnames: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Save tensors with safetensors, atomically."""
    from safetensors.torch import save

    blob = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, blob)


def read_text(path: Path) -> str:
    """A text file's contents; a missing or unreadable file is one MemlawError naming it."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MemlawError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MemlawError(f"{path}: damaged: cannot read it ({e})") from None


def read_json_object(path: Path) -> dict:
    """A JSON file holding one object; a missing, unreadable or damaged file is one MemlawError naming it."""
    text = read_text(path)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise MemlawError(f"{path}: damaged: not JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(value, dict):
        raise MemlawError(f"{path}: damaged: expected a JSON object, got {type(value).__name__}")
    return value
