"""Latency on the device itself, over SSH.

The system's OpenSSH client does the work, so the user's ~/.ssh/config, agent, keys, jump hosts and
known_hosts apply exactly as they do for `ssh` at the prompt. Every call runs with BatchMode (never
a password prompt), StrictHostKeyChecking (an unknown or changed host key is an error, not a
question), a connect timeout and a timeout of its own.

One measurement is one connection when the device already holds the model and the script: the
benchmark runs with the device's own Python and onnxruntime, and its JSON is read back. Otherwise
that connection lists the device's cache folder instead, what is not there yet is sent — the model
as `<sha256>.onnx` and the script as `bench-<sha256>.py`, each written to a temporary name and
renamed, so an interrupted copy never looks complete and an unchanged model is never sent again —
and a second connection runs the benchmark.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shlex
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from release.errors import ReleaseError

BENCH = Path(__file__).with_name("bench.py")
MISSING = 3  # bench.py's exit status when onnxruntime does not import
ABSENT, NO_DIR = 98, 97  # the first connection's: files to send (it listed the cache), or no cache folder


@dataclass(frozen=True)
class SshRunner:
    """`ssh://user@host[:port]` and how to reach it."""

    user: str | None
    host: str
    port: int | None = None
    python: str = "python3"
    remote_dir: str = ".cache/release-bench"
    options: tuple[str, ...] = ()
    connect_timeout: float = 10.0
    timeout: float = 600.0
    field_name: str = "target.runner"

    @classmethod
    def parse(cls, url: str, **kwargs) -> SshRunner:
        from release.targets import SSH_URL, parse_ssh_options, port_problem

        match = SSH_URL.fullmatch(url)
        if not match:
            raise ReleaseError(f"target.runner: '{url}' is not an SSH address. Write ssh://user@host or "
                               f"ssh://user@host:port (or 'local').")
        user, host, port = match.groups()
        problem = port_problem(port)
        if problem:  # port 0 would be dropped below and ssh would go to port 22 instead
            raise ReleaseError(f"target.runner: '{url}': {problem}.")
        options = tuple(kwargs.pop("options", ()))
        _, problem = parse_ssh_options(list(options))
        if problem:
            raise ReleaseError(f"target.ssh_options: {problem}.")
        return cls(user=user, host=host.strip("[]"), port=int(port) if port else None, options=options, **kwargs)

    @property
    def address(self) -> str:
        port = f":{self.port}" if self.port is not None else ""
        return f"ssh://{self.user + '@' if self.user else ''}{self.host}{port}"

    def _ssh(self, command: str, *, stdin=None, timeout: float, what: str, knob: str = "target.connect_timeout",
             remote: bool = False) -> subprocess.CompletedProcess:
        # Ours come first: for OpenSSH the first value given for an option wins, so ssh_options
        # can add (an identity, a jump host) but never turn off BatchMode or host key checking.
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
               "-o", f"ConnectTimeout={max(1, int(self.connect_timeout))}", "-o", "ServerAliveInterval=5",
               "-o", "ServerAliveCountMax=3"]
        if self.port is not None:
            cmd += ["-p", str(self.port)]
        if self.user:
            cmd += ["-l", self.user]
        cmd += [*self.options, "--", self.host, command]
        try:  # stdin is never the terminal's: a backgrounded build must not stop on a read
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL if stdin is None else stdin, capture_output=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ReleaseError(f"{self.field_name}: {self.address} did not finish {what} within {timeout:g} s. "
                               f"Is the device busy or hung? Raise {knob} if it is only slow.") from None
        except FileNotFoundError:
            raise ReleaseError(f"{self.field_name}: the ssh client is not installed on this machine (needed for "
                               f"{self.address}). Install OpenSSH's client, or use runner: local.") from None
        if done.returncode == 255:  # ssh's own failure, or a remote command killed by a signal
            raise ReleaseError(self._explain(done.stderr.decode(errors="replace"), remote))
        return done

    def _explain(self, stderr: str, remote: bool = False) -> str:
        where = f"{self.field_name}: {self.address}"
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "ssh failed"
        if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
            return (f"{where}: the host key is not known or has changed ({last}). Check the device, then add its "
                    f"key with: ssh-keyscan -p {self.port or 22} {self.host} >> ~/.ssh/known_hosts")
        if "Permission denied" in stderr or "Too many authentication failures" in stderr:
            return (f"{where}: login refused ({last}). The runner uses key-based login only: add your public key "
                    f"to the device's ~/.ssh/authorized_keys, or load the key into ssh-agent / name it in "
                    f"~/.ssh/config (IdentityFile).")
        if any(s in stderr for s in ("Connection refused", "timed out", "No route to host", "Could not resolve",
                                     "Network is unreachable", "Connection closed", "Connection reset")):
            return (f"{where}: cannot reach the device ({last}). Check that it is on, that the host and port "
                    f"are right, and that sshd runs on it.")
        if remote:  # logged in and listed the cache a moment ago: the command itself died
            return (f"{where}: the benchmark ended abnormally on the device (exit 255: a crash, or killed by a "
                    f"signal, e.g. an onnxruntime build this CPU cannot run, or out of memory): {last}")
        return f"{where}: ssh failed ({last})."

    def _dir(self) -> str:
        return self.remote_dir.rstrip("/") or "."

    def send(self, path: Path, name: str) -> None:
        """Copy a file to <remote_dir>/<name> atomically (temporary name, then rename)."""
        d = self._dir()
        # A name of its own per copy: two builds sending to one device never write into one file.
        tmp, final = _quote(f"{d}/.{name}.{secrets.token_hex(4)}.partial"), _quote(f"{d}/{name}")
        timeout = self.connect_timeout + 60 + path.stat().st_size / 250e3  # even 2 Mbit/s gets through
        with path.open("rb") as handle:
            done = self._ssh(f"cat > {tmp} && mv -f {tmp} {final}", stdin=handle, timeout=timeout,
                             what=f"receiving {path.name}")
        if done.returncode != 0:
            raise ReleaseError(f"{self.field_name}: copying {path.name} to {self.address}:{d} failed: "
                               f"{done.stderr.decode(errors='replace').strip()[-500:]}")

    def measure(self, model: Path, *, threads: int, warmup: int, runs: int, provider: str = "CPUExecutionProvider",
                session_options: dict | None = None, max_cv: float = 0.1, rounds: int = 3) -> dict:
        started = time.perf_counter()
        model_name = f"{sha256(model)}.onnx"
        bench_name = f"bench-{sha256(BENCH)[:16]}.py"
        d = self._dir()
        qdir, qbench, qmodel = _quote(d), _quote(f"{d}/{bench_name}"), _quote(f"{d}/{model_name}")
        args = " ".join([_quote(self.python), qbench, qmodel,
                         *(shlex.quote(a) for a in ("--threads", str(threads), "--warmup", str(warmup), "--runs",
                                                    str(runs), "--provider", provider, "--options",
                                                    json.dumps(session_options or {}), "--max-cv", str(max_cv),
                                                    "--rounds", str(rounds)))])
        # The device ends the benchmark itself at target.timeout (coreutils/busybox `timeout`, where
        # there is one), so that a hung run does not go on there after we stop waiting; we wait a
        # little longer, to hear it say so.
        limit = max(1, int(self.timeout))
        run = f"if command -v timeout >/dev/null 2>&1; then exec timeout -k 5 {limit} {args}; else exec {args}; fi"
        # One connection when the device has the model and the script already (a re-measurement);
        # otherwise that connection lists what the cache holds, and what is missing is sent.
        first = (f"if [ -f {qbench} ] && [ -f {qmodel} ]; then {run}; fi; "
                 f"mkdir -p {qdir} || exit {NO_DIR}; ls -1 {qdir}; exit {ABSENT}")
        done = self._ssh(first, timeout=self.timeout + 15, what="the benchmark", knob="target.timeout", remote=True)
        listed = copied = started
        sent = []
        if done.returncode == NO_DIR:
            raise ReleaseError(f"{self.field_name}: {self.address} could not create {self.remote_dir}: "
                               f"{done.stderr.decode(errors='replace').strip()[-500:]}. Set target.remote_dir to "
                               f"a writable folder.")
        if done.returncode == ABSENT:
            present = set(done.stdout.decode(errors="replace").split())
            listed = time.perf_counter()
            for path, name in ((BENCH, bench_name), (model, model_name)):
                if name not in present:
                    self.send(path, name)
                    sent.append(path.name)
            copied = time.perf_counter()
            done = self._ssh(run, timeout=self.timeout + 15, what="the benchmark", knob="target.timeout",
                             remote=True)
        if done.returncode in (124, 137):  # timeout(1): TERM sent, or KILL after the grace period
            raise ReleaseError(f"{self.field_name}: {self.address} did not finish the benchmark within {limit} s "
                               f"(stopped there). Is the device busy or hung? Raise target.timeout if it is "
                               f"only slow.")
        out = done.stdout.decode(errors="replace").strip()
        result = _last_json(out)
        if done.returncode == MISSING and result:
            raise ReleaseError(f"{self.field_name}: {self.address} has no usable onnxruntime for "
                               f"{result.get('python_path')} (Python {result.get('python')}: {result.get('error')}). "
                               f"Install it on the device (pip install onnxruntime numpy), or point target.python "
                               f"at a Python that has it.")
        if done.returncode != 0 or result is None or "error" in result:
            err = (result or {}).get("error") or done.stderr.decode(errors="replace").strip()[-800:] or out[-800:]
            if done.returncode == 127:
                err = f"'{self.python}' was not found on the device ({err}); set target.python"
            raise ReleaseError(f"{self.field_name}: the benchmark failed on {self.address}: {err}")
        finished = time.perf_counter()
        result.update({"runner": self.address, "provenance": "device", "sent": sent,
                       "overhead_s": {"list": round(listed - started, 3), "copy": round(copied - listed, 3),
                                      "run": round(finished - max(copied, started), 3),
                                      "total": round(finished - started, 3)}})
        return result


def _quote(path: str) -> str:
    """Shell-quoted for the device, leaving a leading ~/ to the device's shell (its home)."""
    return "~/" + shlex.quote(path[2:]) if path.startswith("~/") else shlex.quote(path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None

