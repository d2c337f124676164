"""Latency runners for real: the local runner against in-process ONNX Runtime, and the SSH runner
against a real OpenSSH server (Debian's openssh-server) on a free loopback port, with a throwaway
host key and user key, running the real benchmark script with the "device's" own Python."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from release.errors import ReleaseError
from release.measure import latency
from release.measure.ssh import SshRunner, sha256
from release.targets import resolve
from tests.sshd import free_port, ssh_options


def export_net(path: Path) -> Path:
    """A small conv net that takes a millisecond or more: long enough to time, quick to export."""
    torch.manual_seed(0)
    layers, c = [], 3
    for width in (16, 32, 32, 64):
        layers += [torch.nn.Conv2d(c, width, 3, padding=1), torch.nn.ReLU()]
        c = width
    model = torch.nn.Sequential(*layers).eval()
    torch.onnx.export(model, (torch.zeros(1, 3, 64, 64),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["out"])
    return path


@pytest.fixture(scope="module")
def net(tmp_path_factory) -> Path:
    return export_net(tmp_path_factory.mktemp("net") / "net.onnx")


def device(name="bench-box", **overrides) -> dict:
    found, problem = resolve(name, {"threads": 1, **overrides} if name == "bench-box" else overrides, {})
    assert problem is None, problem
    return found


SETTINGS = {"warmup": 5, "runs": 40, "max_cv": 10.0, "rounds": 1}


# ---------------------------------------------------------------- local runner

def test_local_runner_agrees_with_in_process_onnxruntime(net):
    figure = latency.measure(net, device(), SETTINGS)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(net), options, providers=["CPUExecutionProvider"])
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    for _ in range(5):
        session.run(None, feeds)
    times = []
    for _ in range(40):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    here = statistics.median(times)
    # The same model, threads and feeds: the fresh process should time it like this process does;
    # a shared 2-core host moves single figures by tens of percent, not by 2x.
    assert 0.5 < figure["p50_ms"] / here < 2.0, (figure["p50_ms"], here)
    assert figure["provenance"] == "host" and figure["runner"] == "local" and figure["cpu"] == figure["host_cpu"]
    assert 0 < figure["min_ms"] <= figure["p50_ms"] <= figure["p90_ms"] <= figure["max_ms"] and figure["runs"] == 40
    many = latency.measure(net, device(threads=64), SETTINGS)
    assert "not the target's" in many["note"]  # more threads than this host has cores


def test_local_runner_honours_the_thread_count(net):
    one = latency.measure(net, device(threads=1), SETTINGS)
    two = latency.measure(net, device(threads=2), SETTINGS)
    assert (one["threads"], two["threads"]) == (1, 2)
    # ONNX Runtime's intra-op pool has threads - 1 workers: the benchmark process has one more thread.
    assert two["process_threads"] == one["process_threads"] + 1


def test_a_noisy_figure_is_measured_again_and_marked(net):
    strict = latency.measure(net, device(), {**SETTINGS, "max_cv": 1e-9, "rounds": 3})
    assert strict["rounds"] == 3 and len(strict["round_cvs"]) == 3 and strict["noisy"] is True
    assert strict["cv"] == min(strict["round_cvs"])  # the steadiest round is the figure
    assert "noisy: CV" in strict["note"]
    calm = latency.measure(net, device(), {**SETTINGS, "max_cv": 100.0, "rounds": 3})
    assert calm["rounds"] == 1 and calm["noisy"] is False and "noisy" not in calm["note"]


def test_estimate_scales_a_host_figure_and_says_so(net):
    guess = latency.measure(net, device("rpi4", runner="estimate", speed_ratio=4.0, threads=1), SETTINGS)
    assert guess["provenance"] == "estimate" and guess["runner"] == "estimate"
    assert guess["p50_ms"] == pytest.approx(4.0 * guess["host_p50_ms"])
    assert "not a measurement" in guess["note"]


def test_the_host_profile_is_measured_on_its_own_device(net):
    assert latency.measure(net, device("host", threads=1), SETTINGS)["provenance"] == "device"


# ---------------------------------------------------------------- SSH runner against a real sshd

def _runner(sshd, tmp_path, port=None, **kwargs) -> SshRunner:
    defaults = {"python": sys.executable, "remote_dir": str(tmp_path / "device-cache"), "options": ssh_options(sshd),
                "connect_timeout": 5, "timeout": 120}
    return SshRunner.parse(f"ssh://{sshd.user}@127.0.0.1:{port or sshd.port}", **{**defaults, **kwargs})


def test_ssh_runner_measures_on_the_device_and_sends_an_unchanged_model_once(sshd, net, tmp_path):
    runner = _runner(sshd, tmp_path)
    first = runner.measure(net, threads=1, warmup=2, runs=30)
    assert first["provenance"] == "device" and first["runner"] == f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    assert first["sent"] == ["bench.py", "net.onnx"]
    assert first["onnxruntime"] == ort.__version__ and first["cpu"] and first["cores"] == os.cpu_count()
    assert 0 < first["min_ms"] <= first["p50_ms"] <= first["p90_ms"] <= first["max_ms"]
    cached = tmp_path / "device-cache" / f"{sha256(net)}.onnx"
    assert cached.read_bytes() == net.read_bytes()  # content-addressed, complete
    assert not list(cached.parent.glob(".*.partial"))
    again = runner.measure(net, threads=1, warmup=2, runs=30)
    assert again["sent"] == []  # nothing is sent twice
    assert again["overhead_s"]["list"] == 0 and again["overhead_s"]["copy"] == 0  # one connection
    assert first["overhead_s"]["list"] > 0 and first["overhead_s"]["copy"] > 0


def test_an_unwritable_cache_folder_says_so(sshd, net, tmp_path):
    with pytest.raises(ReleaseError, match=r"could not create /proc/release-bench.*target.remote_dir"):
        _runner(sshd, tmp_path, remote_dir="/proc/release-bench").measure(net, threads=1, warmup=1, runs=30)


def test_ssh_runner_through_the_target_profile(sshd, net, tmp_path):
    dev = device("rpi4", runner=f"ssh://{sshd.user}@127.0.0.1:{sshd.port}", python=sys.executable, threads=1,
                 remote_dir=str(tmp_path / "cache"), ssh_options=list(ssh_options(sshd)), connect_timeout=5)
    figure = latency.measure(net, dev, SETTINGS)
    assert figure["provenance"] == "device" and figure["cpu"] == latency.host_cpu()
    # The profile says aarch64 and 4 cores; this "device" is the build host, and the figure says so.
    if figure["arch"] != "aarch64":
        assert f"the device reports {figure['arch']}, the 'rpi4' profile says aarch64" in figure["note"]
    if figure["cores"] != 4:
        assert f"the device has {figure['cores']} cores, the 'rpi4' profile says 4" in figure["note"]
    # The thread count reaches the device's ONNX Runtime: one more pool thread per thread asked.
    two = latency.measure(net, {**dev, "threads": 2}, SETTINGS)
    assert two["process_threads"] == figure["process_threads"] + 1


def test_wrong_port_is_an_unreachable_device(sshd, net, tmp_path):
    with pytest.raises(ReleaseError, match=r"target.runner: ssh://.*:\d+: cannot reach the device .*Connection refused"):
        _runner(sshd, tmp_path, port=free_port()).measure(net, threads=1, warmup=1, runs=30)


def test_a_refused_key_is_a_failed_login(sshd, net, tmp_path):
    runner = _runner(sshd, tmp_path, options=ssh_options(sshd, key=sshd.stranger))
    with pytest.raises(ReleaseError, match=r"login refused \(.*Permission denied.*authorized_keys"):
        runner.measure(net, threads=1, warmup=1, runs=30)


def test_an_unknown_host_key_is_refused(sshd, net, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    runner = _runner(sshd, tmp_path, options=ssh_options(sshd, known=empty))
    with pytest.raises(ReleaseError, match=r"host key is not known or has changed.*ssh-keyscan -p \d+ 127.0.0.1"):
        runner.measure(net, threads=1, warmup=1, runs=30)


def test_a_device_without_onnxruntime_says_which_python(sshd, net, tmp_path):
    runner = _runner(sshd, tmp_path, python=str(sshd.bare))
    with pytest.raises(ReleaseError, match=rf"has no usable onnxruntime for {sshd.bare} .*No module named 'onnxruntime'.*pip install onnxruntime"):
        runner.measure(net, threads=1, warmup=1, runs=30)


def test_a_device_that_hangs_times_out_and_is_stopped_there(sshd, net, tmp_path):
    runner = _runner(sshd, tmp_path, python=str(sshd.hang), timeout=3)
    started = time.monotonic()
    with pytest.raises(ReleaseError, match=r"did not finish the benchmark within 3 s \(stopped there\)"):
        runner.measure(net, threads=1, warmup=1, runs=30)
    assert time.monotonic() - started < 15
    time.sleep(1)
    left = subprocess.run(["pgrep", "-f", str(sshd.hang)], capture_output=True, text=True).stdout.split()
    assert not left, "the hung benchmark is still running on the device"


def test_ssh_options_cannot_turn_host_key_checking_off(sshd, net, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    options = (*ssh_options(sshd, known=empty), "-o", "StrictHostKeyChecking=no", "-o", "BatchMode=no")
    with pytest.raises(ReleaseError, match="host key is not known or has changed"):
        _runner(sshd, tmp_path, options=options).measure(net, threads=1, warmup=1, runs=30)


def test_ssh_addresses_are_parsed_or_refused():
    r = SshRunner.parse("ssh://pi@raspberrypi.local:2222")
    assert (r.user, r.host, r.port) == ("pi", "raspberrypi.local", 2222)
    assert SshRunner.parse("ssh://jetson").user is None
    with pytest.raises(ReleaseError, match="not an SSH address"):
        SshRunner.parse("ssh://pi@host:port")
    with pytest.raises(ReleaseError, match="not an SSH address"):  # would read as an ssh option
        SshRunner.parse("ssh://-oProxyCommand=touch${IFS}pwned")
    assert shutil.which("ssh")  # the runner uses the system's OpenSSH client


def test_the_profile_s_session_options_and_provider_reach_the_session(net, tmp_path):
    # enable_profiling makes ONNX Runtime write a trace under profile_file_prefix: visible proof
    # that the options were set on the benchmark's session, in its own process.
    prefix = tmp_path / "ort-profile"
    latency.measure(net, device(session_options={"enable_profiling": True, "profile_file_prefix": str(prefix)}),
                    SETTINGS)
    assert list(tmp_path.glob("ort-profile*.json"))
    with pytest.raises(ReleaseError, match="execution provider NoSuchExecutionProvider is not available"):
        latency.measure(net, device(provider="NoSuchExecutionProvider"), SETTINGS)


def test_port_zero_is_refused_not_dropped():
    # ssh://host:0 used to lose its port (0 is falsy) and go to port 22 instead.
    for port in (0, 70000):
        with pytest.raises(ReleaseError, match=rf"port {port} is out of range \(an SSH port is 1-65535\)"):
            SshRunner.parse(f"ssh://pi@pi4:{port}")
    with pytest.raises(ReleaseError, match="ssh_options hold only options"):
        SshRunner.parse("ssh://pi@pi4", options=("evil.example",))


def test_a_proxycommand_in_the_manifest_never_runs_and_an_opted_in_localcommand_does(sshd, net, tmp_path):
    """With the real OpenSSH client against the real sshd: the manifest that would run a local
    command is refused at load, before any ssh starts; the one that opts in gets its command run."""
    from release.errors import ManifestError
    from release.manifest import load
    from tests.conftest import tiny_manifest_dict, write_manifest

    marker = tmp_path / "ran-on-the-build-host"
    # The real client runs this on the build host before it connects (checked by hand: the marker
    # appears even though the "proxy" then fails).
    proxy = f"sh -c 'touch {marker}'"
    target = {"name": "rpi4", "runner": f"ssh://{sshd.user}@127.0.0.1:{sshd.port}", "python": sys.executable,
              "threads": 1, "remote_dir": str(tmp_path / "cache"), "connect_timeout": 5,
              "ssh_options": [*ssh_options(sshd), "-oProxyCommand=" + proxy]}
    with pytest.raises(ManifestError, match="ProxyCommand runs a command"):
        load(write_manifest(tmp_path, tiny_manifest_dict(target=target)), tmp_path)
    assert not marker.exists()

    target["ssh_options"] = [*ssh_options(sshd), "-o", "PermitLocalCommand=yes", "-o", f"LocalCommand=touch {marker}"]
    target["allow_local_commands"] = True
    dev = load(write_manifest(tmp_path, tiny_manifest_dict(target=target)), tmp_path).device
    figure = latency.measure(net, dev, SETTINGS)
    assert figure["provenance"] == "device" and marker.exists()  # opted in: the harmless command ran
