"""The previously published release (release/released.py) and the gate's budgets relative to it:
real bundles published by release.publish, looked up by their recorded publish time, from the
folders or from latest.json alone, and judged against tonight's rows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from release import gate, released, render
from release import publish as pub
from tests.unit.test_gate import row
from tests.unit.test_publish import commit_stage_output, project, report_for  # noqa: F401 - project is a fixture


def _publish(root: Path, job: dict, version: str, mAP: float, scale: float) -> dict:
    """Publish `version` as the build does: the gate's report names the release it compared against."""
    fingerprint = f"{int(scale * 10):x}" * 64
    report = report_for(root, commit_stage_output(root, fingerprint[:64], scale), mAP, fingerprint[:64])
    releases = Path(job["release_dir"]).parent
    report = report.model_copy(update={"version": version, "previous": released.previous(releases, version)})
    pub.publish(report, {**job, "release_dir": str(releases / version)}, log=lambda _: None)
    return released.from_folder(releases / version)


def test_the_previous_release_is_the_last_published_not_the_highest_version(project):
    root, job = project
    releases = Path(job["release_dir"]).parent
    assert released.previous(releases, "0.0.9") is None
    nine = _publish(root, job, "0.0.9", 0.40, 2.0)
    ten = _publish(root, job, "0.0.10", 0.50, 3.0)  # "0.0.9" sorts after "0.0.10" as a string
    assert nine["published_at"] < ten["published_at"]
    assert released.previous(releases, "0.1.0") == ten
    assert ten["figures"]["map"] == 0.50 and ten["variant"] == "fp32" and ten["eval"]["images_sha256"]
    # A version already published is compared against the one published before it, as when it was built.
    assert released.previous(releases, "0.0.10") == nine and released.previous(releases, "0.0.9") is None
    lock = json.loads((releases / "0.0.10" / "release.lock").read_text())
    assert lock["previous"] == {"version": "0.0.9", "published_at": nine["published_at"]}
    latest = json.loads((releases / "latest.json").read_text())
    assert latest["latest"] == ten and latest["previous"] == nine and latest["name"] == "tiny"


def test_ci_restores_only_latest_json_or_only_the_metadata(project, tmp_path):
    root, job = project
    releases = Path(job["release_dir"]).parent
    nine = _publish(root, job, "0.0.9", 0.40, 2.0)
    ten = _publish(root, job, "0.0.10", 0.50, 3.0)
    only_latest = tmp_path / "restored-latest"
    only_latest.mkdir()
    shutil.copy(releases / "latest.json", only_latest)
    assert released.previous(only_latest, "0.1.0") == ten
    assert released.previous(only_latest, "0.0.10") == nine  # a re-run of the newest still finds its own
    metadata = tmp_path / "restored-metadata" / "0.0.10"
    metadata.mkdir(parents=True)
    for name in ("release.lock", "metrics.json"):  # no model.onnx, no card
        shutil.copy(releases / "0.0.10" / name, metadata)
    assert released.previous(metadata.parent, "0.1.0") == ten


def test_an_edited_release_is_not_compared_against(project):
    root, job = project
    releases = Path(job["release_dir"]).parent
    _publish(root, job, "0.0.9", 0.40, 2.0)
    metrics = releases / "0.0.9" / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"map": 0.4', '"map": 0.1'))
    found = released.previous(releases, "0.1.0")
    assert "does not match the hash in its release.lock" in found["problem"]
    checks = gate.judge_vs_release(row(1.0, 5.0, 0.6), {"max_map_drop_vs_release": 0.5},
                                   {"entry": found, "eval": None})
    assert checks[0].passed is False and checks[0].reason == found["problem"]


def _entry(mAP=0.50, latency=5.0, size=1.0, version="1.0.20261201"):
    return {"version": version, "published_at": "2026-12-01T02:00:00.000000Z", "variant": "int8",
            "figures": {"map": mAP, "map50": mAP + 0.2, "latency_ms": latency, "latency_p90_ms": latency,
                        "size_mb": size, "bytes": int(size * 1e6)},
            "latency_measured": {"provenance": "host", "runner": "ssh://pi@pi4", "cpu": "Cortex-A72",
                                 "host_cpu": "AMD EPYC", "threads": 4}, "eval": {}}


RELATIVE = {"max_map_drop_vs_release": 0.005, "max_latency_increase_vs_release": 0.10,
            "max_size_increase_vs_release": 0.05}


def _report(rows: dict, previous: dict):
    from release.report import Report

    judged = {name: gate.judged(r, RELATIVE, previous) for name, r in rows.items()}
    rep = Report(key="k", name="x", version="1.0.20261202", target={"name": "rpi4"}, budget=RELATIVE,
                 select="best_map", variants=judged, previous=previous["entry"])
    rep.selected = gate.select(judged, "best_map")
    return rep


def test_relative_budgets_show_both_figures_and_the_margin():
    previous = {"entry": _entry(), "eval": None}
    rep = _report({"worse": row(1.0, 5.0, 0.490), "within": row(1.04, 5.4, 0.497)}, previous)
    worse = {c.budget: c for c in rep.variants["worse"].checks}
    drop = worse["max_map_drop_vs_release"]
    assert (drop.value, drop.released, drop.against, drop.passed) == (0.490, 0.50, "1.0.20261201", False)
    assert abs(drop.limit - 0.495) < 1e-12 and abs(drop.margin + 0.005) < 1e-12
    within = {c.budget: c for c in rep.variants["within"].checks}
    assert all(c.passed for c in within.values()) and abs(within["max_latency_increase_vs_release"].limit - 5.5) < 1e-9
    assert rep.selected == "within"
    text = render.table(rep)
    header = text.splitlines()[0]
    assert "mAP vs 1.0.20261201 (drop <= 0.005)" in header and "latency vs 1.0.20261201 (<= +10%)" in header
    worse_line = next(line for line in text.splitlines() if line.startswith("worse"))
    assert "FAIL 0.490 vs 0.500 (-0.005)" in worse_line and worse_line.endswith("FAIL")
    assert "vs release: x 1.0.20261201 (variant int8, published 2026-12-01T02:00:00.000000Z): mAP 0.500" in text
    assert "[release 1.0.20261201: 0.500]" in render.missed(rep)
    dumped = rep.dump()["variants"]["worse"]["checks"][0]
    assert dumped["released"] == 0.50 and dumped["against"] == "1.0.20261201" and dumped["pass"] is False


def test_no_previous_release_passes_with_a_note():
    rep = _report({"fp32": row(1.0, 5.0, 0.1)}, {"entry": None, "eval": None})
    checks = rep.variants["fp32"].checks
    assert [c.note for c in checks] == ["no previous release"] * 3 and all(c.passed for c in checks)
    assert checks[0].limit is None and checks[0].margin is None and rep.selected == "fp32"
    text = render.table(rep)
    assert "pass (no previous release)" in text and "no previous release of x is published" in text


def test_other_eval_data_is_said_not_compared():
    why = "data.eval differs from the data release 1.0.20261201 was measured on (images_sha256): mAP not compared"
    rep = _report({"fp32": row(1.0, 5.0, 0.1)}, {"entry": _entry(), "eval": why})
    drop = rep.variants["fp32"].checks[0]
    assert drop.passed is True and drop.note == why and drop.released == 0.50
    assert "pass 0.100 vs 0.500 (not compared)" in render.table(rep) and f"vs release: {why}" in render.table(rep)


def test_plain_reports_keep_their_keys():
    """A build without relative budgets writes the report (and its checks) as before."""
    rep = _report({"fp32": row(1.0, 5.0, 0.1)}, {"entry": None, "eval": None})
    plain = rep.model_copy(update={"previous": None, "budget": {"size_mb": 2.0},
                                   "variants": {"fp32": gate.judged(row(1.0, 5.0, 0.1), {"size_mb": 2.0})}})
    dumped = plain.dump()
    assert "previous" not in dumped and "version_from" not in dumped
    assert set(dumped["variants"]["fp32"]["checks"][0]) == {"budget", "label", "unit", "value", "limit", "direction",
                                                             "margin", "pass"}


def test_the_gate_runs_again_when_the_previous_release_is_another(project, tmp_path):
    root, job = project
    releases = Path(job["release_dir"]).parent
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"key": "k"}))  # gated when nothing was published
    assert released.gate_is_current(str(report), str(releases), "0.1.0")
    nine = _publish(root, job, "0.0.9", 0.40, 2.0)
    assert not released.gate_is_current(str(report), str(releases), "0.1.0")  # now there is one
    report.write_text(json.dumps({"key": "k", "previous": nine}))
    assert released.gate_is_current(str(report), str(releases), "0.1.0")
    _publish(root, job, "0.0.10", 0.50, 3.0)
    assert not released.gate_is_current(str(report), str(releases), "0.1.0")
    assert released.gate_is_current(str(report), str(releases), "0.0.10")  # 0.0.10 itself compares with 0.0.9
