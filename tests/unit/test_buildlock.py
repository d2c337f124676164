"""The build lock: which doit invocations take it, who holds it, and that death releases it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from release import buildlock


@pytest.mark.parametrize("argv, locks", [
    (["doit"], True),
    (["doit", "release", "manifest=x.yaml"], True),
    (["doit", "-f", "dodo.py", "-d", "dir", "release", "manifest=x"], True),
    (["doit", "-n", "2", "release"], True),
    (["doit", "clean", "manifest=x"], True),
    (["doit", "forget"], True),
    (["doit", "list", "--all", "manifest=x"], False),
    (["doit", "-f", "dodo.py", "-d", "dir", "list", "manifest=x"], False),
    (["doit", "--file=dodo.py", "info", "release"], False),
    (["doit", "ui", "manifest=x"], False),
    (["doit", "run", "ui"], False),
    (["doit", "ui", "release"], True),
])
def test_which_commands_take_the_lock(argv, locks):
    assert buildlock.needs_lock(argv) is locks


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from release import buildlock\n"
        f"buildlock.acquire({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(buildlock.BuildLocked, match=f"pid {holder.pid} on "):
            buildlock.acquire(tmp_path)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        started = time.monotonic()
        buildlock.acquire(tmp_path, wait=5)  # the kernel dropped the dead holder's lock
        assert time.monotonic() - started < 2
    finally:
        holder.kill()
        holder.wait()
        buildlock.release(tmp_path)
