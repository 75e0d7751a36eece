"""Atomic writes: complete files or none, with ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from memlaw.io import UMASK, atomic_write_text, write_json


def test_atomic_write_gives_ordinary_permissions(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"a": 1})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~UMASK
    assert os.stat(path).st_mode & stat.S_IRGRP or UMASK & 0o040  # group-readable unless the umask says no


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "out.txt"
    atomic_write_text(path, "old")

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)  # the new content is fully written, the rename fails
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
