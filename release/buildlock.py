"""One build at a time per project folder.

A build holds an exclusive `flock` on `artifacts/.build.lock` from the moment its plan is made until
its process ends. The kernel drops the lock when the process dies, even by SIGKILL, so a killed build
never leaves a stale lock behind. The file names the holder (pid, host, command, start time), so the
second build says who it waits for. `doit list`, `doit info` and the UI read only and take no lock.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from release.errors import ReleaseError

LOCK_NAME = ".build.lock"
# doit commands (the first word after `doit`) that change nothing a build writes.
READ_ONLY_COMMANDS = {"list", "info", "help", "dumpdb", "strace", "tabcompletion"}
READ_ONLY_TASKS = {"ui"}
DOIT_COMMANDS = READ_ONLY_COMMANDS | {"run", "clean", "forget", "ignore", "reset-dep", "auto"}

_held: dict[str, int] = {}


class BuildLocked(ReleaseError):
    """Another build of this project folder is running."""


def needs_lock(argv: list[str]) -> bool:
    """Whether this doit invocation writes the build (run, clean, forget, ...), from its arguments."""
    args = list(argv[1:])
    while args:  # doit's loader options may stand before the command: -f FILE, -d DIR, -k
        if args[0] in ("-f", "--file", "-d", "--dir"):
            args = args[2:]
        elif args[0].startswith(("--file=", "--dir=")) or args[0] in ("-k", "--seek-file"):
            args = args[1:]
        else:
            break
    command = args[0] if args and args[0] in DOIT_COMMANDS else "run"
    if command in READ_ONLY_COMMANDS:
        return False
    if command == "run":
        words = [a for a in (args[1:] if args and args[0] == "run" else args)
                 if not a.startswith("-") and "=" not in a]
        if words and set(words) <= READ_ONLY_TASKS:
            return False
    return True


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text())
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info["started"]))
        return f"pid {info['pid']} on {info['host']}, started {started}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its details are not readable yet)"


def acquire(artifacts: Path, wait: float = 0.0) -> Path:
    """Take the project's build lock, waiting up to `wait` seconds; raise BuildLocked naming the holder."""
    import fcntl

    artifacts = Path(artifacts)
    path = artifacts / LOCK_NAME
    key = str(path.resolve())
    if key in _held:
        return path
    artifacts.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    deadline = time.monotonic() + max(0.0, wait)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                holder = _holder(path)
                os.close(fd)
                waited = f" (waited {wait:g} s)" if wait > 0 else ""
                raise BuildLocked(
                    f"{artifacts.parent}: another build of this project is running{waited}: {holder}. "
                    f"Wait for it to finish, or run `doit ... wait=SECONDS` (or set RELEASE_LOCK_WAIT) to "
                    f"queue behind it.") from None
            time.sleep(0.2)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
              "command": " ".join(["doit", *sys.argv[1:]])[:300]}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    _held[key] = fd  # kept open for the life of the process: closing it would release the lock
    return path


def release(artifacts: Path) -> None:
    """Drop a lock this process holds (tests, and callers that build several projects in one process)."""
    key = str((Path(artifacts) / LOCK_NAME).resolve())
    fd = _held.pop(key, None)
    if fd is not None:
        os.close(fd)
