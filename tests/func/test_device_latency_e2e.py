"""Latency provenance through real doit builds: a manifest that requires device-measured latency
fails on a host figure, then passes once its target's runner is a real sshd on loopback."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import copy_project, executed, run_doit, tiny_manifest_dict, write_manifest
from tests.sshd import ssh_options

pytestmark = pytest.mark.slow


def test_latency_from_device_fails_on_a_host_figure_and_passes_over_ssh(tiny_built, sshd, tmp_path):
    root = copy_project(tiny_built, tmp_path / "project")
    budget = {"size_mb": 100.0, "latency_ms": 1000.0, "latency_from": "device"}
    write_manifest(root, tiny_manifest_dict(budget=budget))
    done = run_doit(root, "release", "manifest=tiny.yaml")
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert not any(t.startswith(("stage:", "measure:")) for t in executed(done.stdout))  # only the gate re-judged
    assert "FAIL host figure" in text and "NOT on the target tiny-host" in text
    assert "host figure; budget.latency_from: device needs one measured on the target" in text
    assert "Traceback" not in text

    runner = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    target = {"name": "rpi4", "runner": runner, "threads": 1, "python": sys.executable,
              "remote_dir": str(tmp_path / "device"), "ssh_options": list(ssh_options(sshd))}
    # Measured again, on the device: new figures, so a new version (a published one never changes).
    write_manifest(root, tiny_manifest_dict(version="0.0.2", budget=budget, target=target))
    done = run_doit(root, "release", "manifest=tiny.yaml")
    text = done.stdout + done.stderr
    assert done.returncode == 0, text
    ran = executed(done.stdout)
    assert sorted(t.split("@")[0] for t in ran if "@" in t) == ["measure:latency", "measure:latency"]
    report = json.loads((root / "artifacts/tiny/report.json").read_text())
    for row in report["variants"].values():
        assert row["latency"]["provenance"] == "device" and row["latency"]["runner"] == runner
        assert next(c for c in row["checks"] if c["budget"] == "latency_ms")["pass"]
    assert report["latency_provenance"].startswith("latency: measured on the target rpi4 (Raspberry Pi 4")
    card = (root / "artifacts/tiny/release/0.0.2/MODEL_CARD.md").read_text()
    assert "Latency provenance: **device**" in card
    # Both variants' models went to the device once each, by content; a rebuild is a no-op.
    assert len(list((tmp_path / "device").glob("*.onnx"))) == 2
    again = run_doit(root, "release", "manifest=tiny.yaml")
    assert again.returncode == 0 and not [t for t in executed(again.stdout) if "@" in t]
