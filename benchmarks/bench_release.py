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


def _timed(root: Path, *args: str, dodo: Path) -> float:
    seconds, done = doit(root, *args, dodo=dodo)
    if done.returncode not in (0, 1):
        sys.exit(f"doit failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def interleaved_medians(first: tuple, second: tuple, repeat: int) -> tuple[float, float]:
    """Median wall time of two doit commands, each (root, args, dodo), run alternately so that a
    change in what else the machine is doing weighs on both alike (the ratio is the figure)."""
    a, b = [], []
    for _ in range(repeat):
        a.append(_timed(first[0], *first[1], dodo=first[2]))
        b.append(_timed(second[0], *second[1], dodo=second[2]))
    return statistics.median(a), statistics.median(b)


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
    noop, base = interleaved_medians((root, ("release", manifest), REPO / "dodo.py"), (empty, (), empty / "dodo.py"),
                                     args.repeat)
    print(f"no-op `doit release`: {noop * 1000:.0f} ms; doit on an empty dodo: {base * 1000:.0f} ms; "
          f"ratio {noop / base:.2f}x (medians of {args.repeat}, interleaved)")

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
