"""A real OpenSSH server (Debian's openssh-server) on a free loopback port, for the SSH latency
runner's tests and benchmark: a throwaway host key, an authorized user key, a stranger's key, a
known_hosts file, a "device" Python without onnxruntime and a "device" that hangs."""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

SSHD = "/usr/sbin/sshd"  # sshd re-executes itself and needs its absolute path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "release-test", "-f", str(path)], check=True)
    return path


@contextlib.contextmanager
def running_sshd(d: Path):
    host_key, user_key, stranger = _keygen(d / "host_key"), _keygen(d / "user_key"), _keygen(d / "stranger_key")
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nAuthorizedKeysFile {d / 'authorized_keys'}\n"
        f"PidFile {d / 'sshd.pid'}\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
        f"PubkeyAuthentication yes\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n"
        f"LogLevel ERROR\n")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation folder
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    server.kill()
                    raise RuntimeError(f"sshd did not start: {server.stderr.read().decode()[-800:]}") from None
                time.sleep(0.1)
        known = d / "known_hosts"
        known.write_text(f"[127.0.0.1]:{port} {(d / 'host_key.pub').read_text()}")
        # A "device" Python with numpy (the real one, linked in) but no onnxruntime.
        bare = d / "bare-python"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
        import numpy

        only = d / "numpy-only"
        only.mkdir()
        for sibling in Path(numpy.__file__).parent.parent.glob("numpy*"):
            (only / sibling.name).symlink_to(sibling)
        site = next((bare / "lib").glob("python3*/site-packages"))
        (site / "numpy_only.pth").write_text(f"{only}\n")
        hang = d / "hang.sh"  # a "device" that never answers
        hang.write_text("#!/bin/sh\nsleep 30\n")
        hang.chmod(0o755)
        yield SimpleNamespace(port=port, user=getpass.getuser(), dir=d, key=user_key, stranger=stranger,
                              known=known, bare=bare / "bin" / "python", hang=hang)
    finally:
        server.terminate()
        server.wait(timeout=10)


def ssh_options(server, key=None, known=None) -> tuple[str, ...]:
    """ssh arguments for this server only: -F /dev/null (not the machine's ~/.ssh/config), no agent."""
    return ("-F", "/dev/null", "-i", str(key or server.key), "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", f"UserKnownHostsFile={known or server.known}")
