"""Tracking overhead per build, in seconds, measured in one run: the `track` action on an already
built project, against the embedded SQLite store (cold: a new database; warm: a later build) and
against a real `mlflow server` on loopback, and the cost when that server is away (queue + warn).

    python benchmarks/bench_tracking.py --root .     # a project where `doit release` has run
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def timed_track(job: dict) -> tuple[float, dict]:
    from release import tracking

    start = time.perf_counter()
    result = tracking.track(job, log=lambda message: None)
    return time.perf_counter() - start, result


def fresh_job(project: Path, manifest: str, tag: str, uri: str | None) -> dict:
    """The track task's job for a copy of the project, with its own ledger and queue."""
    import os

    os.chdir(project)
    from release import tasks

    plan = tasks.plan_for(manifest, project)
    job = dict(tasks.track_task(plan)["actions"][0][1][0])
    job["ledger"] = str(project / f"ledger-{tag}.json")
    job["pending"] = str(project / f"pending-{tag}")
    job["uri"] = uri
    return job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO)
    parser.add_argument("--manifest", default="rpi_detector.yaml")
    args = parser.parse_args()
    name = args.manifest.removesuffix(".yaml")
    if not (args.root / "artifacts" / name / "report.json").is_file():
        sys.exit(f"build first: doit release manifest={args.manifest}")

    work = Path(tempfile.mkdtemp(prefix="release-bench-tracking-"))
    project = work / "project"
    shutil.copytree(args.root / "artifacts", project / "artifacts",
                    ignore=shutil.ignore_patterns("mlflow", ".doit.db*"))
    shutil.copytree(args.root / "recipes", project / "recipes")
    rows = []

    job = fresh_job(project, args.manifest, "embedded", None)
    rows.append(("embedded SQLite, new store (schema migrations)", *timed_track(job)))
    report = Path(job["report"])
    data = json.loads(report.read_text())
    data["version"] += "+bench"  # a changed report: the next build logs a parent run, reuses children
    report.write_text(json.dumps(data))
    rows.append(("embedded SQLite, next build (children reused)", *timed_track(job)))

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    away = fresh_job(project, args.manifest, "away", uri)
    rows.append(("server away (queue + one warning)", *timed_track(away)))

    store = work / "server"
    store.mkdir()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1", "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}",
                               "--artifacts-destination", str(store / "artifacts")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        from release.tracking import unreachable

        deadline = time.monotonic() + 90
        while unreachable(uri) and time.monotonic() < deadline:
            time.sleep(0.5)
        rows.append(("mlflow server on loopback (uploads the queued build)", *timed_track(away)))
        data["version"] += "2"
        report.write_text(json.dumps(data))
        rows.append(("mlflow server on loopback, next build", *timed_track(away)))
    finally:
        server.terminate()
        server.wait(timeout=30)

    print(f"{'tracking a build of ' + name:58} {'seconds':>8}  uploaded")
    for label, seconds, result in rows:
        print(f"{label:58} {seconds:8.2f}  {result['uploaded']}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
