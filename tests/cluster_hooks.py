"""Ray worker setup hooks for tests/test_cluster.py (runtime_env worker_process_setup_hook).

They run in every Ray worker process of a test's job, configured through environment variables,
and change nothing outside tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

WRITE_EVENTS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.unlink", "shutil.rmtree",
                "shutil.copyfile", "shutil.move", "os.truncate", "os.link", "os.symlink", "os.chmod"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _under(path, root: str) -> bool:
    try:
        return Path(os.fsdecode(path)).resolve().is_relative_to(root)
    except (TypeError, ValueError, OSError):
        return False


def forbid_writes() -> None:
    """Make MEMLAW_TEST_READONLY unwritable for this process (any write, create, rename or delete under it
    raises PermissionError), as the driver's folder is on a node that shares no filesystem with the workers;
    leave a marker file in MEMLAW_TEST_MARKERS so the test knows the guard ran."""
    root = str(Path(os.environ["MEMLAW_TEST_READONLY"]).resolve())

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (isinstance(flags, int) and flags & WRITE_FLAGS)
            if writes and path is not None and not isinstance(path, int) and _under(path, root):
                raise PermissionError(f"this worker may not write {path}")
        elif event in WRITE_EVENTS and any(_under(a, root) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
            raise PermissionError(f"this worker may not change {args[0]}")

    markers = Path(os.environ["MEMLAW_TEST_MARKERS"])
    (markers / f"guard-{os.getpid()}").write_text("on", encoding="utf-8")
    sys.addaudithook(hook)


def crash_in_cell() -> None:
    """Kill this worker process (os._exit, as an out-of-memory kill or a lost node would) in the middle of
    training a cell (alone or in a pack): MEMLAW_TEST_CRASH is "name:times,name:times", and the cell `name` is killed the first
    `times` times it is trained; each crash leaves a file crash-<name>-<k> in MEMLAW_TEST_MARKERS."""
    import memlaw.train.trainer as trainer

    plan = dict((name, int(times)) for name, times in (item.rsplit(":", 1) for item in os.environ["MEMLAW_TEST_CRASH"].split(",")))
    markers = Path(os.environ["MEMLAW_TEST_MARKERS"])
    original, original_pack = trainer.train_loop, trainer.train_pack

    def crash(folders) -> None:
        for name, times in plan.items():
            crashes = len(list(markers.glob(f"crash-{name}-*")))
            if any(Path(folder).name == name for folder in folders) and crashes < times:
                (markers / f"crash-{name}-{crashes}").write_text(str(os.getpid()), encoding="utf-8")
                os._exit(1)

    def train_loop(session, forward, run, *args, **kwargs):
        crash([run.path])
        return original(session, forward, run, *args, **kwargs)

    def train_pack(cfgs, outs, *args, **kwargs):
        crash(outs)
        return original_pack(cfgs, outs, *args, **kwargs)

    trainer.train_loop, trainer.train_pack = train_loop, train_pack
