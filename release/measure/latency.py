"""Latency of an ONNX model on the target profile's runner, with where the figure comes from.

- local: `bench.py` in a fresh process of this Python with the target's thread count (and
  OMP_NUM_THREADS), so that the build process's own imports and thread pools (torch's, a parallel
  doit worker's) do not distort the figure;
- ssh://: the same `bench.py` on the device (release/measure/ssh.py);
- estimate: a local figure times the profile's speed_ratio.

Every result carries `provenance` (host, device or estimate), the CPU it was measured on, the
onnxruntime version there, and notes on anything that makes the figure less than it seems.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from release.errors import ReleaseError
from release.measure import bench
from release.targets import provenance

BENCH = Path(bench.__file__)
MS_FIELDS = ("p50_ms", "p90_ms", "min_ms", "max_ms", "mean_ms")


def host_cpu() -> str:
    return bench.cpu_model()


def local(model: Path, threads: int, *, warmup: int = 10, runs: int = 50, provider: str = "CPUExecutionProvider",
          session_options: dict | None = None, max_cv: float = 0.1, rounds: int = 3, timeout: float = 600) -> dict:
    """bench.py in a fresh process of this Python, pinned to `threads`."""
    cmd = [sys.executable, str(BENCH), str(model), "--threads", str(threads), "--warmup", str(warmup),
           "--runs", str(runs), "--provider", provider, "--options", json.dumps(session_options or {}),
           "--max-cv", str(max_cv), "--rounds", str(rounds)]
    try:  # bench.py sets OMP_NUM_THREADS and numpy's BLAS threads itself, here as on a device
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ReleaseError(f"latency: {model} did not finish {runs} runs within {timeout:.0f} s "
                           f"(target.timeout).") from None
    lines = done.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except ValueError:
        result = None
    if done.returncode != 0 or not isinstance(result, dict) or "error" in result:
        reason = (result or {}).get("error") if isinstance(result, dict) else None
        raise ReleaseError(f"latency: the benchmark process failed on {model}: "
                           f"{reason or done.stderr.strip()[-2000:]}")
    return {**result, "runner": "local"}


def measure(model: Path, device: dict, settings: dict) -> dict:
    """One latency figure of `model` for the resolved target profile `device` (manifest.device) with
    the manifest's measure settings (warmup, runs, max_cv, rounds)."""
    args = {"threads": device["threads"], "warmup": settings["warmup"], "runs": settings["runs"],
            "provider": device["provider"], "session_options": device["session_options"],
            "max_cv": settings["max_cv"], "rounds": settings["rounds"]}
    runner = device["runner"]
    if runner.startswith("ssh://"):
        from release.measure.ssh import SshRunner

        ssh = SshRunner.parse(runner, python=device["python"], remote_dir=device["remote_dir"],
                              options=tuple(device["ssh_options"]), connect_timeout=device["connect_timeout"],
                              timeout=device["timeout"])
        result = ssh.measure(model, **args)
    else:
        result = local(model, timeout=device["timeout"], **args)
    result["provenance"] = provenance(device)
    result["host_cpu"], result["host_cores"] = host_cpu(), os.cpu_count() or 1
    notes = []
    if runner == "estimate":
        ratio = device["speed_ratio"]
        result.update({f"host_{k}": result[k] for k in MS_FIELDS})
        result.update({k: result[k] * ratio for k in MS_FIELDS})
        result["runner"] = "estimate"
        notes.append(f"estimated: this host's figure x {ratio:g} (target.speed_ratio), not a measurement")
    if result["threads"] > result["cores"]:
        notes.append(f"{result['threads']} threads on {result['cores']} cores (thread spinning off): the figure "
                     f"is not the target's")
    if result["provenance"] == "device":
        if device.get("arch") and result.get("arch") and device["arch"] != result["arch"]:
            notes.append(f"the device reports {result['arch']}, the '{device['name']}' profile says {device['arch']}")
        if device.get("cores") and device["cores"] != result.get("cores"):
            notes.append(f"the device has {result.get('cores')} cores, the '{device['name']}' profile says "
                         f"{device['cores']}")
    if result.get("noisy"):
        notes.append(f"noisy: CV {result['cv']:.2f} after {result['rounds']} rounds (measure.max_cv "
                     f"{result['max_cv']:g})")
    result["notes"] = notes
    result["note"] = "; ".join(notes)
    return result
