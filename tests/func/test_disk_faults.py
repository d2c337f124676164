"""A full or a read-only disk: one line naming the folder, no traceback, and the next build on a
healthy disk finishes (issue 12, finding 10). A real tmpfs of a few MB holds the project."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import run_doit, tiny_manifest_dict, write_manifest

pytestmark = pytest.mark.slow


@pytest.fixture()
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1200k", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _remount(mount: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(mount)], check=True)


def test_full_then_read_only_disk_each_give_one_line(small_disk, tiny_built):
    project = small_disk / "project"
    project.mkdir()
    write_manifest(project, tiny_manifest_dict())
    # The session's demo data, so that the build reaches training and export before the disk fills.
    shutil.copytree(tiny_built / "artifacts" / "demo" / "data", project / "artifacts" / "demo" / "data")
    done = run_doit(project, "release", "manifest=tiny.yaml")
    text = done.stdout + done.stderr
    assert done.returncode != 0, text
    assert "no space left on device" in text, text
    assert "Traceback" not in text and "INVALID_PROTOBUF" not in text and "DecodeError" not in text, text

    _remount(small_disk, "ro")
    done = run_doit(project, "release", "manifest=tiny.yaml")
    text = done.stdout + done.stderr
    assert done.returncode != 0
    assert "read-only file system" in text, text
    assert "Traceback" not in text, text

    _remount(small_disk, "rw,size=64m")
    done = run_doit(project, "release", "manifest=tiny.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (project / "artifacts/tiny/release/0.0.1/model.onnx").is_file()
