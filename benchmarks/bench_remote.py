"""The cost of measuring on a device over SSH against measuring locally, per variant, for the demo
detector: wall seconds of one latency measurement each way, in one run.

    python benchmarks/bench_remote.py [--runs 50] [--warmup 10] [--threads 2] [--repeat 3]

Exports the recipe's demo detector (width 1.0, 128x128; random weights: latency does not depend on
them) and starts a real sshd on a loopback port (tests/sshd.py: Debian's openssh-server), so the
"device" is this machine and the difference is the runner's own overhead: ssh connections, the
content-addressed copy, a second Python starting. Prints the seconds of a local measurement, of a
cold SSH measurement (model and benchmark script sent) and of warm ones (nothing sent), each as a
ratio to local, the SSH overhead per step, and both p50 figures (which should agree).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="warm SSH and local measurements to take the median of")
    args = parser.parse_args()

    import torch

    from release.models.demo.detector import build
    from release.measure import latency
    from release.measure.ssh import SshRunner
    from release.targets import resolve
    from tests.sshd import SSHD, running_sshd, ssh_options

    if not Path(SSHD).exists():
        print("needs Debian's openssh-server (apt-get install openssh-server)", file=sys.stderr)
        return 2
    settings = {"warmup": args.warmup, "runs": args.runs, "max_cv": 10.0, "rounds": 1}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = tmp / "demo.onnx"
        torch.onnx.export(build(num_classes=3, width=1.0).eval(), (torch.zeros(1, 3, 128, 128),), str(model),
                          dynamo=False, opset_version=17, input_names=["input"])
        (tmp / "sshd").mkdir()
        with running_sshd(tmp / "sshd") as server:
            local_device, _ = resolve("bench", {"threads": args.threads}, {})
            ssh = SshRunner.parse(f"ssh://{server.user}@127.0.0.1:{server.port}", python=sys.executable,
                                  remote_dir=str(tmp / "device"), options=ssh_options(server))

            def timed(fn):
                started = time.perf_counter()
                result = fn()
                return time.perf_counter() - started, result

            kw = {"threads": args.threads, "warmup": args.warmup, "runs": args.runs, "max_cv": 10.0, "rounds": 1}
            cold_s, cold = timed(lambda: ssh.measure(model, **kw))
            warm = [timed(lambda: ssh.measure(model, **kw)) for _ in range(args.repeat)]
            local = [timed(lambda: latency.measure(model, local_device, settings)) for _ in range(args.repeat)]
        megabytes = model.stat().st_size / 1e6
    local_s = statistics.median(s for s, _ in local)
    warm_s = statistics.median(s for s, _ in warm)
    print(f"demo detector {megabytes:.2f} MB, {args.runs} runs + {args.warmup} warm-up, "
          f"{args.threads} threads; medians of {args.repeat}")
    print(f"  local runner          {local_s:6.2f} s per variant   1.00x   p50 {statistics.median(r['p50_ms'] for _, r in local):.2f} ms")
    print(f"  ssh, cold (sends)     {cold_s:6.2f} s per variant   {cold_s / local_s:.2f}x   sent {cold['sent']}")
    print(f"  ssh, warm (cached)    {warm_s:6.2f} s per variant   {warm_s / local_s:.2f}x   "
          f"p50 {statistics.median(r['p50_ms'] for _, r in warm):.2f} ms")
    print(f"  ssh overhead per variant, warm: {warm_s - local_s:+.2f} s; steps of the cold one: {cold['overhead_s']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
