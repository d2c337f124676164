"""Benchmark the release build, all figures measured in one run:

- the full demo build (`doit release manifest=rpi_detector.yaml` from nothing),
- the wall time of a no-op `doit release` against doit's own no-op on an empty dodo (a ratio),
- each variant's size, latency and mAP, from the build's report.

    python benchmarks/bench_release.py                 # fresh temporary project: full build first
    python benchmarks/bench_release.py --root .        # reuse this project's artifacts (no full build)
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def doit(root: Path, *args: str, dodo: Path = REPO / "dodo.py") -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "doit", "-f", str(dodo), "-d", str(root), *args],
                          capture_output=True, text=True, check=False)
    return time.perf_counter() - start, done


def median_time(root: Path, *args: str, repeat: int, dodo: Path = REPO / "dodo.py") -> float:
    times = []
    for _ in range(repeat):
        seconds, done = doit(root, *args, dodo=dodo)
        if done.returncode not in (0, 1):
            sys.exit(f"doit failed:\n{done.stdout}\n{done.stderr}")
        times.append(seconds)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, help="project root to reuse (default: a fresh temporary one)")
    parser.add_argument("--manifest", default="rpi_detector.yaml")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    root = args.root.resolve() if args.root else Path(tempfile.mkdtemp(prefix="release-bench-"))
    if not (root / "recipes").exists():
        shutil.copytree(REPO / "recipes", root / "recipes")
    manifest = f"manifest={args.manifest}"
    if args.root is None:
        seconds, done = doit(root, "release", manifest)
        print(f"full build from nothing: {seconds:.1f} s (exit {done.returncode})")
        if done.returncode not in (0, 1):
            sys.exit(done.stdout + done.stderr)
    else:
        doit(root, "release", manifest)  # make sure it is built

    empty = Path(tempfile.mkdtemp(prefix="release-bench-empty-"))
    (empty / "dodo.py").write_text("def task_nothing():\n    return {'actions': [], 'uptodate': [True]}\n")
    noop = median_time(root, "release", manifest, repeat=args.repeat)
    base = median_time(empty, repeat=args.repeat, dodo=empty / "dodo.py")
    print(f"no-op `doit release`: {noop * 1000:.0f} ms; doit on an empty dodo: {base * 1000:.0f} ms; "
          f"ratio {noop / base:.2f}x (median of {args.repeat})")

    report = json.loads((root / "artifacts" / args.manifest.removesuffix(".yaml") / "report.json").read_text())
    print(f"\n{'variant':14} {'size MB':>8} {'p50 ms':>8} {'p90 ms':>8} {'mAP':>7} {'mAP@.5':>7}  pass")
    for name, row in report["variants"].items():
        print(f"{name:14} {row['size_mb']:8.3f} {row['latency_ms']:8.2f} {row['latency_p90_ms']:8.2f} "
              f"{row['map']:7.4f} {row['map50']:7.4f}  {row['pass']}")
    print(f"\nselected: {report['selected']}; {report['latency_provenance']}")
    if args.root is None:
        print(f"(project left in {root})")


if __name__ == "__main__":
    main()
