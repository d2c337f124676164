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
import shlex

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
    ssh_options: list[str] = Field(default_factory=list, description="extra ssh arguments, e.g. ['-i', 'key'] (or "
                                                                     "one string, split like a shell would); "
                                                                     "~/.ssh/config applies anyway")
    allow_local_commands: bool = Field(False, description="let ssh_options run or load code on this build host "
                                                          "(ProxyCommand, LocalCommand, KnownHostsCommand, Match exec, "
                                                          "PKCS11Provider, -F another config file, ...): they are "
                                                          "refused unless this is true, since a manifest is not "
                                                          "expected to run commands on the machine that builds it")
    connect_timeout: float = Field(10, gt=0, description="seconds to connect and log in (ssh runner)")
    timeout: float = Field(600, gt=0, description="seconds the benchmark may run, locally or on the device (where "
                                                  "it is also stopped); connecting and copying have limits of "
                                                  "their own, from connect_timeout and the file's size")
    speed_ratio: float | None = Field(None, gt=0, description="estimate runner: device latency / host latency")

    @field_validator("runner")
    @classmethod
    def _runner(cls, v: str) -> str:
        if v in ("local", "estimate"):
            return v
        match = SSH_URL.fullmatch(v)
        if not match:
            raise ValueError("a runner is local, estimate or ssh://user@host[:port]")
        problem = port_problem(match.group(3))
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("ssh_options", mode="before")
    @classmethod
    def _ssh_options(cls, v):
        if isinstance(v, str):  # one string, as it would be typed after `ssh`
            try:
                v = shlex.split(v)
            except ValueError as exc:
                raise ValueError(f"ssh_options are not valid shell words ({exc})") from None
        if isinstance(v, (list, tuple)) and all(isinstance(a, str) for a in v):
            problem = parse_ssh_options(list(v))[1]
            if problem:
                raise ValueError(problem)
        return v


def port_problem(port: str | None) -> str | None:
    """Why an ssh:// address's port is not one, or None (no port: ssh's default)."""
    if port is not None and not 1 <= int(port) <= 65535:
        return f"port {int(port)} is out of range (an SSH port is 1-65535)"
    return None


# OpenSSH's own getopt string (ssh.c): a letter followed by ':' takes a value, in the same word
# (-p2222, -oKey=value) or in the next one. Reading options the way ssh does is what makes the
# check below sound: `-i -oProxyCommand=x` names an identity file, `-qoProxyCommand=x` is -q -o.
SSH_GETOPT = "1246ab:c:e:fgi:kl:m:no:p:qstvxAB:CD:E:F:GI:J:KL:MNO:P:Q:R:S:TVw:W:XYy"
_WITH_VALUE = {c for i, c in enumerate(SSH_GETOPT) if SSH_GETOPT[i + 1:i + 2] == ":"}
# ssh_config keywords that run a command, or load code, on the machine that runs ssh (lower case).
LOCAL_COMMAND_KEYS = {"proxycommand": "ProxyCommand", "localcommand": "LocalCommand",
                      "permitlocalcommand": "PermitLocalCommand", "knownhostscommand": "KnownHostsCommand",
                      "match": "Match", "include": "Include", "pkcs11provider": "PKCS11Provider",
                      "securitykeyprovider": "SecurityKeyProvider", "proxyusefdpass": "ProxyUseFdpass"}
NO_CONFIG = {"/dev/null", "none"}  # -F /dev/null or -F none: no config file at all, which is safe


def parse_ssh_options(args: list[str]) -> tuple[list[tuple[str, str]], str | None]:
    """ssh_options as ssh's getopt reads them: ([(flag, value)], None) or ([], what is wrong). A -o
    value is a config line, `Key=Value` or `Key Value`."""
    found: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        word = args[i]
        if not word.startswith("-") or word in ("-", "--"):
            return [], (f"ssh_options hold only options (each word starts with '-'), got {word!r}: the address "
                        f"and the command are the runner's")
        j = 1
        while j < len(word):
            flag = word[j]
            if flag in _WITH_VALUE:
                if j + 1 < len(word):
                    value = word[j + 1:]
                elif i + 1 < len(args):
                    i += 1
                    value = args[i]
                else:
                    return [], f"ssh option -{flag} needs a value"
                found.append((flag, value))
                break
            found.append((flag, ""))
            j += 1
        i += 1
    return found, None


def local_command_options(args: list[str]) -> list[str]:
    """The ssh_options that run or load code on this machine (empty if none)."""
    found, _ = parse_ssh_options(list(args))
    named = []
    for flag, value in found:
        if flag == "o":
            key = re.split(r"[\s=]", value.strip(), maxsplit=1)[0].lower()
            if key in LOCAL_COMMAND_KEYS:
                named.append(LOCAL_COMMAND_KEYS[key])
        elif flag == "F" and value not in NO_CONFIG:  # a config file can hold any of them
            named.append("-F")
        elif flag == "I":  # a PKCS#11 library, loaded into ssh
            named.append("-I")
    return named


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
    risky = local_command_options(resolved.ssh_options)
    if risky and not resolved.allow_local_commands:
        return None, (f"target.ssh_options {shlex.join(resolved.ssh_options)!r}: {', '.join(dict.fromkeys(risky))} "
                      f"runs a command (or loads code) on this build host, not on the device. If you mean it, set "
                      f"allow_local_commands: true on the target; for a jump host use -J / ProxyJump, which is "
                      f"allowed.")
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
