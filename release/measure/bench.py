"""The latency benchmark that runs where the model will run: on this host (the local runner) or on
the device (the SSH runner copies this file there). It needs only the Python standard library,
numpy and onnxruntime, never the release package, so a device needs nothing of ours installed.

    python bench.py MODEL --threads N [--warmup W] [--runs R] [--provider P] [--options JSON]
                          [--max-cv 0.1] [--rounds 3]
    python bench.py --probe

It prints one JSON object on stdout. Exit status 3 means onnxruntime (or numpy) does not import here;
the JSON then says so, with this Python's version and path, so the caller can name the fix.

When the coefficient of variation of a round is above --max-cv, the round is run again, up to
--rounds rounds in all; the steadiest round is reported, and `noisy` is true if even that one is
above the threshold.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

MISSING = 3  # exit status: onnxruntime or numpy missing on this machine

# numpy only makes the input here; its BLAS thread pool would compete with ONNX Runtime's threads.
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")


def cpu_model() -> str:
    """The CPU's name as the OS reports it (x86 'model name'; Arm boards 'Model' or 'Hardware')."""
    try:
        with open("/proc/cpuinfo") as handle:
            fields = dict(line.split(":", 1) for line in handle if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        for key in ("model name", "Model", "Hardware", "cpu model"):
            if fields.get(key):
                return fields[key]
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return {"cpu": cpu_model(), "arch": platform.machine(), "cores": os.cpu_count() or 1,
            "python": platform.python_version(), "python_path": sys.executable, "hostname": platform.node()}


def probe() -> dict:
    info = machine()
    try:
        import numpy  # noqa: F401  (bench needs it to make the input)
        import onnxruntime
    except Exception as exc:  # ImportError, or OSError/RuntimeError from a build this machine cannot load
        info["error"] = f"{exc}"
        return info
    info["onnxruntime"] = onnxruntime.__version__
    info["providers"] = onnxruntime.get_available_providers()
    return info


DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
          "tensor(uint8)": "uint8", "tensor(int8)": "int8", "tensor(int32)": "int32", "tensor(int64)": "int64"}


def _session(model: str, threads: int, provider: str, options: dict):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads > (os.cpu_count() or 1):
        # More threads than cores: spinning workers steal the cores the others need, and the figure
        # becomes noise (CV 0.5-0.7 measured on a 2-core host). Without spinning it is stable.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for key, value in options.items():
        if key == "graph_optimization_level":
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, str(value))
        elif key == "execution_mode":
            so.execution_mode = getattr(ort.ExecutionMode, str(value))
        elif hasattr(so, key) and not key.startswith("_"):
            setattr(so, key, value)
        else:  # a session config entry, e.g. session.intra_op.allow_spinning
            so.add_session_config_entry(key, str(value))
    available = ort.get_available_providers()
    if provider not in available:
        print(json.dumps({"error": f"execution provider {provider} is not available in this onnxruntime "
                                   f"{ort.__version__} (it has {', '.join(available)}): set target.provider",
                          **machine()}))
        sys.exit(1)
    return ort.InferenceSession(model, so, providers=[provider])


def _round(session, feeds: dict, runs: int) -> list:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _stats(times: list) -> dict:
    mean = statistics.fmean(times)
    return {"p50_ms": statistics.median(times), "p90_ms": statistics.quantiles(times, n=10, method="inclusive")[-1],
            "min_ms": min(times), "max_ms": max(times), "mean_ms": mean,
            "cv": statistics.pstdev(times) / mean if mean else 0.0}


def bench(model: str, threads: int, warmup: int, runs: int, provider: str, options: dict, max_cv: float,
          rounds: int) -> dict:
    import numpy as np
    import onnxruntime as ort

    created = time.perf_counter()
    session = _session(model, threads, provider, options)
    created = time.perf_counter() - created
    inp = session.get_inputs()[0]
    shape = [d if isinstance(d, int) else 1 for d in inp.shape]
    feeds = {inp.name: np.random.default_rng(0).standard_normal(shape).astype(DTYPES.get(inp.type, "float32"))}
    for _ in range(warmup):
        session.run(None, feeds)
    measured = []
    for _ in range(max(1, rounds)):
        measured.append(_stats(_round(session, feeds, runs)))
        if measured[-1]["cv"] <= max_cv:
            break
    best = min(measured, key=lambda s: s["cv"])
    try:
        process_threads = len(os.listdir("/proc/self/task"))
    except OSError:
        process_threads = None
    info = machine()
    return {**best, "runs": runs, "warmup": warmup, "rounds": len(measured), "round_cvs": [s["cv"] for s in measured],
            "max_cv": max_cv, "noisy": best["cv"] > max_cv, "threads": threads, "process_threads": process_threads,
            "provider": provider, "session_options": options, "session_seconds": created,
            "onnxruntime": ort.__version__, "cpu": info["cpu"], "arch": info["arch"], "cores": info["cores"],
            "python": info["python"], "hostname": info["hostname"]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="ONNX Runtime latency of one model, as JSON")
    parser.add_argument("model", nargs="?")
    parser.add_argument("--probe", action="store_true", help="report this machine and its onnxruntime, then exit")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--provider", default="CPUExecutionProvider")
    parser.add_argument("--options", default="{}", help="session options as JSON")
    parser.add_argument("--max-cv", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    # ONNX Runtime's own pool is sized by intra_op_num_threads; OpenMP-built kernels read this.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    found = probe()
    if "error" in found:
        print(json.dumps(found))
        sys.exit(MISSING)
    if args.probe or not args.model:
        print(json.dumps(found))
        return
    print(json.dumps(bench(args.model, args.threads, args.warmup, args.runs, args.provider,
                           json.loads(args.options), args.max_cv, args.rounds)))


if __name__ == "__main__":
    main()
