"""Latency of an ONNX model through ONNX Runtime, measured in a fresh process.

The worker runs as `python -m release.measure.latency MODEL --threads N ...` so that the build
process's own imports and thread pools (torch's, a parallel doit worker's) do not distort the
figure. It prints one JSON object; `measure` runs it and returns that object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from release.errors import ReleaseError


def host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(model: Path, threads: int, warmup: int = 10, runs: int = 50, timeout: float = 600) -> dict:
    cmd = [sys.executable, "-m", "release.measure.latency", str(model), "--threads", str(threads),
           "--warmup", str(warmup), "--runs", str(runs)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        raise ReleaseError(f"latency: {model} did not finish {runs} runs within {timeout:.0f} s.") from None
    if done.returncode != 0:
        raise ReleaseError(f"latency: the benchmark process failed on {model}:\n{done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _worker(model: str, threads: int, warmup: int, runs: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    cores = os.cpu_count() or 1
    if threads > cores:
        # More threads than cores: spinning workers steal the cores the others need, and the
        # figure becomes noise (CV 0.5-0.7 measured here). Without spinning it is stable.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    from release.measure import input_dtype

    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    feeds = {inp.name: np.random.default_rng(0).standard_normal(shape).astype(input_dtype(session))}
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    mean = statistics.fmean(times)
    return {
        "p50_ms": statistics.median(times), "p90_ms": statistics.quantiles(times, n=10, method="inclusive")[-1],
        "min_ms": min(times), "max_ms": max(times), "mean_ms": mean,
        "cv": statistics.pstdev(times) / mean if mean else 0.0, "runs": runs, "warmup": warmup,
        "threads": threads, "host_cores": cores, "runner": "local", "provenance": "host",
        "host_cpu": host_cpu(), "onnxruntime": ort.__version__,
        "note": (f"{threads} threads requested on a host with {cores} cores (thread spinning off): the "
                 f"figure is not the target's") if threads > cores else "",
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    print(json.dumps(_worker(args.model, args.threads, args.warmup, args.runs)))


if __name__ == "__main__":
    main()
