"""Target devices: what latency is measured with, and where.

A manifest names a profile (`target: {name: rpi4}`), built in below or defined under `targets:` in
the manifest, and may override any of its fields (`target: {name: rpi4, runner: ssh://pi@pi4}`).
A target that names no known profile is a profile of its own when it gives `threads`.

The runner decides where the figure comes from, and every figure says so (its provenance):
- `local`: ONNX Runtime in a fresh process on this build host: provenance `host` (or `device` for
  the `host` profile, whose device is this machine);
- `ssh://user@host[:port]`: on the device, with its own Python and onnxruntime: `device`;
- `estimate`: a host figure times the profile's `speed_ratio` (device latency / host latency, which
  you measured once): `estimate`.
"""

from __future__ import annotations

import os
import platform
import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

# ssh://[user@]host[:port]: a host never starts with '-' (it would read as an ssh option).
SSH_URL = re.compile(r"ssh://(?:([^@/:\s-][^@/:\s]*)@)?([^@/:\s\[\]-][^@/:\s\[\]]*|\[[0-9a-fA-F:]+\])(?::(\d+))?/?")


class Profile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field("", description="what the device is")
    arch: str | None = Field(None, description="CPU architecture as `uname -m` prints it (aarch64, x86_64); "
                                               "a device that reports another is noted in the report")
    cores: int | None = Field(None, gt=0, description="CPU cores of the device")
    threads: int | None = Field(None, gt=0, description="ONNX Runtime intra-op threads to measure with "
                                                        "(default: cores)")
    provider: str = Field("CPUExecutionProvider", description="ONNX Runtime execution provider")
    session_options: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="ONNX Runtime SessionOptions attributes (e.g. graph_optimization_level: "
                                          "ORT_ENABLE_ALL) or session config entries "
                                          "(e.g. session.intra_op.allow_spinning: '0')")
    runner: str = Field("local", description="local | ssh://user@host[:port] | estimate")
    python: str = Field("python3", description="the device's Python (ssh runner); it must have onnxruntime")
    remote_dir: str = Field(".cache/release-bench", description="folder on the device (relative to the login's "
                                                                "home) where models are cached by content")
    ssh_options: list[str] = Field(default_factory=list, description="extra ssh arguments, e.g. ['-i', 'key']; "
                                                                     "~/.ssh/config applies anyway")
    connect_timeout: float = Field(10, gt=0, description="seconds to connect and log in (ssh runner)")
    timeout: float = Field(600, gt=0, description="seconds the benchmark may run, locally or on the device (where "
                                                  "it is also stopped); connecting and copying have limits of "
                                                  "their own, from connect_timeout and the file's size")
    speed_ratio: float | None = Field(None, gt=0, description="estimate runner: device latency / host latency")

    @field_validator("runner")
    @classmethod
    def _runner(cls, v: str) -> str:
        if v not in ("local", "estimate") and not SSH_URL.fullmatch(v):
            raise ValueError("a runner is local, estimate or ssh://user@host[:port]")
        return v


BUILTIN: dict[str, Profile] = {
    "rpi4": Profile(description="Raspberry Pi 4 Model B, 4x Cortex-A72", arch="aarch64", cores=4),
    "rpi5": Profile(description="Raspberry Pi 5, 4x Cortex-A76", arch="aarch64", cores=4),
    "jetson-orin-cpu": Profile(description="Jetson Orin Nano, CPU only: 6x Cortex-A78AE", arch="aarch64", cores=6),
    "x86-avx2": Profile(description="an x86-64 box with AVX2, 4 threads", arch="x86_64", cores=4),
    "host": Profile(description="this build machine (the device is the build host)", arch=platform.machine(),
                    cores=os.cpu_count() or 1),
}


def resolve(name: str, overrides: dict, defined: dict[str, Profile]) -> tuple[dict | None, str | None]:
    """(the resolved profile as a dict with its name, None) or (None, what is wrong)."""
    base = defined.get(name) or BUILTIN.get(name)
    if base is None and "threads" not in overrides:
        from release.errors import did_you_mean

        known = sorted({*BUILTIN, *defined})
        return None, (f"no target profile '{name}'.{did_you_mean(name, known)} Profiles: {', '.join(known)}; "
                      f"define one under `targets:`, or give target.threads to describe this one inline.")
    resolved = (base or Profile()).model_copy(update=overrides)
    threads = resolved.threads or resolved.cores
    if threads is None:
        return None, f"target '{name}' has neither threads nor cores: give target.threads."
    if resolved.runner == "estimate" and resolved.speed_ratio is None:
        return None, ("runner: estimate needs target.speed_ratio (the device's latency divided by this host's, "
                      "measured once on one model).")
    return {"name": name, **resolved.model_dump(mode="json"), "threads": threads}, None


def provenance(device: dict) -> str:
    """Where this target's figures come from: host, device or estimate."""
    runner = device["runner"]
    if runner.startswith("ssh://"):
        return "device"
    if runner == "estimate":
        return "estimate"
    return "device" if device["name"] == "host" else "host"
