"""The release bundle: the selected ONNX file, its metrics, a model card and a lock file.

Written to artifacts/<name>/release/<version>/ by renaming a complete folder into place: a device or
a CI job that reads it never sees a half-written release. A published version is immutable: its
release.lock records the hash of every file in it, a build that would change it is refused, and
one that finds it damaged or missing writes it again only when the content is exactly what was
published (so for an instant during that repair the folder may be absent, never partial). `doit
clean` forgets that a release was published; it never deletes a release.

The lock records when the version was published (`published_at`, UTC; a repair keeps the first
time), the version template it came from and the release it was gated against, when there are;
after each publish, artifacts/<name>/release/latest.json names the newest release and its figures
(release/released.py): what tomorrow's budgets relative to the previous release compare against.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from release import __version__, released
from release.atomic import atomic_dir, write_json, write_text
from release.fingerprint import HashCache, digest, file_sha256, tool_versions
from release.plan import relative

if TYPE_CHECKING:  # pydantic loads in the action: is_current stays light
    from release.manifest import Inputs
    from release.report import Report, VariantRow

LOCK_SCHEMA = 1
MEASURE_TOOLS = ("onnxruntime", "pycocotools")  # what size, latency and mAP are measured with


def data_record(ref, root: Path, hashes: HashCache) -> dict:
    """A split as release.lock records it (its files and their content hashes); the gate compares
    tonight's eval split with a release's in this form (release.gate.released_against)."""
    labelled = ref.annotations is not None
    return {"annotations": relative(ref.annotations, root) if labelled else None,
            "annotations_sha256": hashes.labels(ref.annotations, ref.images, ref.format, ref.names)
            if labelled else None,
            "images": relative(ref.images, root),
            "images_sha256": hashes.split(ref.annotations, ref.images, ref.format, ref.names), "limit": ref.limit}


def _lock(report: Report, job: dict, inputs: Inputs, hashes: HashCache, model: Path, published_at: str,
          checkpoint_sha256: str | None = None) -> dict:
    data = {split: data_record(ref, Path(job["root"]), hashes) for split in ("train", "calibration", "eval")
            if (ref := getattr(inputs.data, split)) is not None}
    source = inputs.source
    row = report.release
    extra = {}  # keys a lock has only when they say something: a plain build's lock is as before
    if report.version_from:
        extra["version_from"] = report.version_from
    if report.previous:
        extra["previous"] = {k: report.previous[k] for k in ("version", "published_at")}
    return {
        "schema_version": LOCK_SCHEMA, "name": report.name, "version": report.version, **extra,
        "published_at": published_at,
        "variant": report.selected, "fingerprint": row.fingerprint,
        "model_sha256": file_sha256(model),
        # The checkpoint the published model's stages were made from, as they recorded it (a stage
        # output reused from the store may come from another night's generated checkpoint); the
        # file's hash now only for a record from before stages recorded it.
        "source": {"checkpoint": source.checkpoint.name,
                   "sha256": checkpoint_sha256 or hashes.file(source.checkpoint),
                   "format": source.format, "trusted": source.trusted, "strict": source.strict,
                   "allow_missing": list(source.allow_missing)},
        "manifest": {"file": inputs.path.name, "sha256": hashes.file(inputs.path)},
        "data": data,
        # The tools of the variant's own stages (as they recorded them), and those the measurements use.
        "tools": {**{k: v for s in row.stages for k, v in s.tools.items()},
                  **tool_versions(MEASURE_TOOLS), "release": __version__},
    }


BUNDLE_FILES = ("model.onnx", "metrics.json", "MODEL_CARD.md")


def _metrics(report: Report, name: str) -> dict:
    """metrics.json: the released variant's figures and checks, as report.json has them."""
    import json

    row = report.variants[name].dump()
    metrics = {"name": report.name, "version": report.version, "variant": name,
               **{k: row[k] for k in ("size_mb", "bytes", "latency_ms", "latency_p90_ms", "map", "map50",
                                      "parameters", "checks", "latency", "macs", "zipped_mb")}}
    return json.loads(json.dumps(metrics, default=str))  # as it reads back from metrics.json


def verify(dest: Path) -> tuple[dict | None, str | None]:
    """(lock, problem) of a published bundle: problem is None when every file matches the hash its
    release.lock records; lock is None when the folder or its lock is missing or unreadable."""
    from release.atomic import read_json

    dest = Path(dest)
    if not dest.is_dir():
        return None, f"{dest} is missing"
    try:
        lock = read_json(dest / "release.lock")
        files = lock["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, f"{dest / 'release.lock'} is missing or unreadable"
    for name in BUNDLE_FILES:
        path = dest / name
        if not path.is_file():
            return lock, f"{path} is missing"
        if file_sha256(path) != files.get(name):
            return lock, f"{path} does not match the hash in release.lock (damaged or edited)"
    return lock, None


def is_current(job: dict) -> bool:
    """doit uptodate for publish: the record names this report, and the bundle verifies."""
    from release.atomic import read_json

    try:
        record = read_json(Path(job["out"]))
        report_sha = file_sha256(Path(job["report"]))
    except (OSError, ValueError):
        return False
    if record.get("report_sha256") != report_sha:
        return False
    if record.get("published") is None:
        return True
    return verify(Path(job["release_dir"]))[1] is None


def _verified_artifact(row: VariantRow, root: Path) -> tuple[Path, dict]:
    """The selected variant's ONNX file, checked against the hash its stage recorded, and that record."""
    from release.errors import ReleaseError
    from release.actions import committed_record

    artifact = root / row.artifact  # report paths are relative to the project root
    record = committed_record(artifact.parent, row.fingerprint)
    if record is None:
        raise ReleaseError(f"{artifact}: does not match the hash its stage recorded in "
                           f"{artifact.parent / 'stage.json'} (damaged or edited after it was built); "
                           f"it was not published. Delete {artifact.parent} and run the build again.")
    return artifact, record


def publish(report: Report, job: dict, log=print) -> dict:
    """Write the bundle of the selected variant, or confirm the one already there.

    A published version never changes: an intact bundle with other content is refused (bump
    `version`); a damaged or missing one is written again from verified artifacts, when what this
    build would write is exactly what was published before."""
    from release.atomic import read_json
    from release.manifest import Inputs
    from release.errors import ReleaseError

    root = Path(job["root"])
    name = report.selected
    source, record = _verified_artifact(report.release, root)
    model_sha, metrics = file_sha256(source), _metrics(report, name)
    dest = Path(job["release_dir"])
    result = {"published": relative(dest, root), "variant": name, "model_sha256": model_sha,
              "metrics_sha256": digest(metrics)}
    lock, problem = verify(dest)
    if dest.exists() and problem is None:
        if lock.get("model_sha256") == model_sha and digest(_read_or_none(dest / "metrics.json")) == digest(metrics):
            log(f"publish: {relative(dest, root)} already holds exactly this release; left as it is")
            return {**result, "published_at": lock.get("published_at")}
        raise ReleaseError(_immutable(dest, report, lock, model_sha, metrics))
    if dest.exists():
        try:
            before = read_json(Path(job["out"]))
        except (OSError, ValueError):
            before = {}
        same = before.get("published") is not None and before.get("model_sha256") == model_sha and \
            before.get("metrics_sha256") == result["metrics_sha256"]
        if not same:
            raise ReleaseError(f"{dest}: the published release is damaged ({problem}), and this build would "
                               f"not write the same content, so it is not replaced. Restore it from a copy, or "
                               f"move it away and bump `version` in {Path(job['manifest']).name}.")
        log(f"publish: {problem}; re-published {version_name(report)} from verified artifacts (same content)")
    inputs = Inputs.from_job(job)  # the plan's slice: model, data, source, manifest path
    hashes = HashCache(Path(job["hash_cache"]))
    result["published_at"] = _first_published(lock, job, result)
    with atomic_dir(dest) as tmp:
        shutil.copyfile(source, tmp / "model.onnx")
        lock = _lock(report, job, inputs, hashes, tmp / "model.onnx", result["published_at"],
                     record.get("checkpoint_sha256"))
        write_json(tmp / "metrics.json", metrics)
        from release import render

        write_text(tmp / "MODEL_CARD.md", render.card(report, lock))
        lock["files"] = {f: file_sha256(tmp / f) for f in BUNDLE_FILES}
        write_json(tmp / "release.lock", lock)
    hashes.save()
    # The small file a CI job restores to gate tomorrow's build against this one (release/released.py).
    released.write_latest(dest.parent, report.name, released.entry(lock, metrics, result["published_at"]),
                          report.previous)
    return result


def _first_published(lock: dict | None, job: dict, result: dict) -> str:
    """When this version was first published: a repair keeps that time (from the damaged lock, or
    the build's record of publishing this very content), so the release stays where it was in line."""
    if lock and lock.get("published_at"):
        return lock["published_at"]
    before = _read_or_none(Path(job["out"])) or {}
    if all(before.get(k) == result[k] for k in ("published", "model_sha256", "metrics_sha256")) and \
            before.get("published_at"):
        return before["published_at"]
    return released.now()


def version_name(report: Report) -> str:
    return f"{report.name} {report.version}"


def _read_or_none(path: Path):
    from release.atomic import read_json

    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def _immutable(dest: Path, report: Report, lock: dict, model_sha: str, metrics: dict) -> str:
    published = _read_or_none(dest / "metrics.json") or {}
    if lock.get("model_sha256") != model_sha:
        what = (f"it holds variant {lock.get('variant')!r} (model sha256 {str(lock.get('model_sha256'))[:12]}…); "
                f"this build selected {metrics['variant']!r} (sha256 {model_sha[:12]}…)")
    else:
        changed = sorted(k for k in set(published) | set(metrics) if published.get(k) != metrics.get(k))
        what = f"same model, but its figures differ ({', '.join(changed)})"
    return (f"{dest}: {version_name(report)} is already published and a published version never changes: "
            f"{what}. Bump `version` in the manifest to release this build (the published one stays as it is).")
