"""One writer per folder: `memlaw sweep --out DIR` and `memlaw train --out DIR` hold DIR/.memlaw.lock.

Why: two processes writing one run folder (the same command started twice, or a sweep and a
`memlaw train` on one of its cells) would delete and rewrite each other's files and leave a
corrupted cell. The second one refuses with one line that names the holder.

The lock is an OS file lock (`filelock`, flock(2) on Unix), so the kernel releases it when its
process dies however it dies: a lock left behind by a crash, kill -9 or a power cut is never
"held". The lock file also says who holds it (pid, host, command, since), for the refusal's
message; it is emptied on a clean release, so a non-empty lock file that nobody holds is the
trace of a holder that died, which the next holder reports and takes over. flock needs a
filesystem that supports it (local disks, NFSv4, Lustre with flock); on others the lock
cannot be taken and the command stops with that error.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .errors import MemlawError

LOCK_FILE = ".memlaw.lock"


def holder_text(info: dict[str, Any]) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} since {since} ({info.get('command', '?')})"


class FolderLock:
    """Exclusive use of `folder` (created if missing) for the duration of a `with` block.

    Raises MemlawError at once if another process holds it; re-entrant in one process (a sweep
    that trains its cells in its own folder is one writer)."""

    def __init__(self, folder: str | os.PathLike, command: str | None = None):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.command = command or " ".join(["memlaw", *sys.argv[1:]])
        self._lock = FileLock(self.path, timeout=0, is_singleton=True, fallback_to_soft=False)
        self.previous: dict[str, Any] | None = None  # the dead holder whose trace was found, if any
        self.created = False  # whether entering made the folder

    def read_holder(self) -> dict[str, Any] | None:
        try:
            text = self.path.read_text(encoding="utf-8").strip()
            return json.loads(text) if text else None
        except (OSError, ValueError):
            return None

    def __enter__(self) -> FolderLock:
        if self.folder.exists() and not self.folder.is_dir():
            raise MemlawError(f"--out {self.folder} exists and is not a directory")
        self.created = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MemlawError(f"cannot create --out {self.folder}: {e.strerror or e}") from None
        nested = self._lock.is_locked
        try:
            self._lock.acquire()
        except Timeout:
            holder = self.read_holder()
            who = holder_text(holder) if holder else "another process"
            raise MemlawError(f"{self.folder} is in use by {who}; wait for it to end or use another --out") from None
        except OSError as e:
            raise MemlawError(f"cannot lock {self.path}: {e.strerror or e}") from None
        if not nested:
            self.previous = self.read_holder()
            if self.previous:
                print(f"note: {self.folder} was left locked by {holder_text(self.previous)}, which is no longer "
                      "running; taking over", file=sys.stderr)
            info = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command, "since": time.time()}
            self._write(json.dumps(info) + "\n")
        return self

    def __exit__(self, *exc: Any) -> None:
        outermost = self._lock.lock_counter == 1
        if outermost:
            self._write("")  # a clean release leaves no holder behind
        self._lock.release()
        if outermost and self.created and [p.name for p in self.folder.iterdir()] == [LOCK_FILE]:
            # A folder this lock made, in which the command wrote nothing (it stopped on an error): leave no trace.
            self.path.unlink(missing_ok=True)
            try:
                self.folder.rmdir()
            except OSError:
                pass

    def _write(self, text: str) -> None:
        # In place, not by rename: the lock lives on this file's inode.
        with open(self.path, "r+", encoding="utf-8") as f:
            f.truncate(0)
            f.write(text)
