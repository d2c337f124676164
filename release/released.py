"""The previously published release of a manifest: what the budgets relative to it compare against.

Every release folder artifacts/<name>/release/<version>/ records when it was published (release.lock's
`published_at`, UTC) and its figures (metrics.json, whose hash the lock holds); publish also writes
artifacts/<name>/release/latest.json, the newest release's entry and the one before it, so a CI job
that restores only that file (or only a version's release.lock and metrics.json, without the model)
still has what the gate needs. An entry is the released variant's measured figures, the content
hashes of the eval data they were measured on, and when it was published.

"The previous release" of version V is the one published last before V was (by recorded time, never
by sorting version strings); while V is not published yet, the one published last. A build of V
therefore always compares against the same release, also when it runs again after V is published.
A folder whose metrics.json does not match its lock is still found (by its lock's time) but marked
with the problem, and the gate fails the budgets relative to it rather than compare with edited
figures. A folder without a readable release.lock is not a release (nothing says when it was made).

Standard library only: the gate's uptodate check runs it on every build with relative budgets.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

LATEST = "latest.json"
LATEST_SCHEMA = 1
FIGURES = ("map", "map50", "latency_ms", "latency_p90_ms", "size_mb", "bytes")
EVAL_KEYS = ("annotations_sha256", "images_sha256", "limit")  # what says two eval splits are the same data
RELATIVE_BUDGETS = ("max_map_drop_vs_release", "max_latency_increase_vs_release", "max_size_increase_vs_release")


def relative_budgets(budget: dict) -> bool:
    """Whether a budget compares against the previous release (the gate then looks it up)."""
    return any(budget.get(key) is not None for key in RELATIVE_BUDGETS)


def now() -> str:
    """A publish time as recorded: ISO 8601 UTC with microseconds (sorts as it is written)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _read(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def entry(lock: dict, metrics: dict, published_at: str) -> dict:
    """A release as the gate compares against it (also what latest.json holds)."""
    lat = metrics.get("latency") or {}
    return {"version": lock.get("version"), "published_at": published_at, "variant": lock.get("variant"),
            "model_sha256": lock.get("model_sha256"),
            "figures": {k: metrics.get(k) for k in FIGURES},
            "latency_measured": {k: lat.get(k) for k in ("provenance", "runner", "cpu", "host_cpu", "threads")},
            "eval": {k: ((lock.get("data") or {}).get("eval") or {}).get(k) for k in EVAL_KEYS}}


def from_folder(folder: Path) -> dict | None:
    """The entry of one published version, or None when the folder holds no readable release.lock."""
    from release.fingerprint import file_sha256

    lock = _read(folder / "release.lock")
    if not isinstance(lock, dict) or "version" not in lock:
        return None
    # A release made before publish times were recorded: its lock's modification time.
    published_at = lock.get("published_at") or _mtime(folder / "release.lock")
    metrics = _read(folder / "metrics.json")
    try:
        recorded = (lock.get("files") or {}).get("metrics.json")
        intact = metrics is not None and file_sha256(folder / "metrics.json") == recorded
    except OSError:
        intact = False
    found = entry(lock, metrics if isinstance(metrics, dict) else {}, published_at)
    if not intact:
        found["problem"] = (f"{folder / 'metrics.json'} is missing or does not match the hash in its release.lock "
                            f"(damaged or edited): restore release {lock.get('version')} from a copy")
    return found


def _mtime(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _published(releases: Path) -> dict[str, tuple[str, Path | dict]]:
    """version -> (publish time, its folder or its latest.json entry): every folder's lock (only the
    locks are read here: the figures of the one chosen are read after), then latest.json for
    versions whose folder is not here (a CI job restored only it)."""
    releases = Path(releases)
    found: dict[str, tuple[str, Path | dict]] = {}
    try:
        folders = sorted(p for p in releases.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        folders = []
    for folder in folders:
        lock = _read(folder / "release.lock")
        if isinstance(lock, dict) and isinstance(lock.get("version"), str):
            found[lock["version"]] = (lock.get("published_at") or _mtime(folder / "release.lock"), folder)
    latest = _read(releases / LATEST)
    if isinstance(latest, dict) and latest.get("schema_version") == LATEST_SCHEMA:
        for key in ("latest", "previous"):
            one = latest.get(key)
            if isinstance(one, dict) and all(isinstance(one.get(k), str) for k in ("version", "published_at")):
                found.setdefault(one["version"], (one["published_at"], one))
    return found


def previous(releases: Path, version: str) -> dict | None:
    """The entry of the release version `version` is compared against (see the module docstring), or None."""
    found = _published(releases)
    own = found.pop(version, None)
    candidates = [(at, v, where) for v, (at, where) in found.items() if own is None or at < own[0]]
    if not candidates:
        return None
    _, _, where = max(candidates, key=lambda c: (c[0], c[1]))
    return from_folder(where) if isinstance(where, Path) else where


def gate_is_current(report: str, releases: str, version: str) -> bool:
    """doit uptodate for a gate with relative budgets: its report compared against the release
    that is the previous one now (a restored, replaced or newly published one re-runs the gate)."""
    recorded = _read(Path(report))
    if not isinstance(recorded, dict):
        return False
    return recorded.get("previous") == previous(Path(releases), version)


def write_latest(releases: Path, name: str, latest: dict, before: dict | None) -> bool:
    """Point latest.json at a just published release (with the one it was compared against),
    unless a release published later is already there. True when written."""
    from release.atomic import write_json

    current = _read(Path(releases) / LATEST)
    shown = current.get("latest") if isinstance(current, dict) else None
    if isinstance(shown, dict) and shown.get("version") != latest["version"] and \
            str(shown.get("published_at", "")) > latest["published_at"]:
        return False
    write_json(Path(releases) / LATEST, {"schema_version": LATEST_SCHEMA, "name": name, "latest": latest,
                                         "previous": before})
    return True
