"""The budget gate: every variant against every budget, and the choice of release.

`build` makes the typed Report (release/report.py) from the measurement files and the stage records
of each variant; `judge`, `select` and `baseline` are the decisions. Turning the report into text
is release/render.py's. A missed budget is a failure (an expected "no"), not an error: the report
says what each variant missed and by how much. Gate decisions read only the measurement files,
never a tracking server.

Budgets relative to the previously published release (budget.*_vs_release) compare each variant
with that release's measured figures (release/released.py finds it; its metrics.json has them):
each check carries both figures, the limit derived from the released one, and the margin. With no
previous release they pass with a note; on other eval data than the release's, mAP is not compared
(passes, noted); an edited release fails them (docs/ci-regression.md).
"""

from __future__ import annotations

from pathlib import Path

from release.released import RELATIVE_BUDGETS, relative_budgets
from release.report import Check, LatencyFigure, PipelineStep, Report, VariantRow
from release.stages.base import Description

CHECKS = (  # budget field, figure in the row, direction, label, unit
    ("size_mb", "size_mb", "max", "size", "MB"),
    ("latency_ms", "latency_ms", "max", "latency", "ms"),
    ("min_map", "map", "min", "mAP", ""),
)
# Budgets relative to the previously published release (release/released.py), after the others.
RELATIVE_CHECKS = (  # budget field, figure in the row, direction, label, unit
    ("max_map_drop_vs_release", "map", "min", "mAP vs release", ""),
    ("max_latency_increase_vs_release", "latency_ms", "max", "latency vs release", "ms"),
    ("max_size_increase_vs_release", "size_mb", "max", "size vs release", "MB"),
)
NO_PREVIOUS = "no previous release"
assert tuple(c[0] for c in RELATIVE_CHECKS) == RELATIVE_BUDGETS


def build(job: dict) -> Report:
    """The report of a build (the gate action's job: variants with their files, budget, target),
    every variant judged and the release chosen."""
    from release.atomic import read_json

    previous = released_against(job) if relative_budgets(job["budget"]) else None
    rows, classes = {}, None
    for name, files in job["variants"].items():
        records = [read_json(Path(r)) for r in files["records"]]
        acc = read_json(Path(files["map"]))
        classes = classes or acc.get("classes")  # data.eval's, the same for every variant
        row = measured_row(files, read_json(Path(files["size"])), acc, read_json(Path(files["latency"])), records)
        rows[name] = judged(row, job["budget"], previous)
    report = Report(key=job["key"], name=job["name"], version=job["version"], target=job["target"],
                    budget=job["budget"], select=job["select"],
                    latency_provenance=latency_provenance(rows, job["target"]), variants=rows, classes=classes,
                    previous=previous["entry"] if previous else None, version_from=job.get("version_from"))
    report.selected = select(rows, report.select)
    report.passed = report.selected is not None
    return report


def measured_row(files: dict, size: dict, acc: dict, lat: dict, records: list[dict]) -> VariantRow:
    """A variant's row, not yet judged: its measurements (size, mAP, latency files) and what its
    stages recorded (stage.json, in pipeline order)."""
    return VariantRow(
        fingerprint=files["fingerprint"], artifact=files["artifact"],
        stages=[PipelineStep(stage=r["stage"], params=r["params"], fingerprint=r["fingerprint"],
                             tools=r.get("tools", {})) for r in records],
        size_mb=size["size_mb"], bytes=size["bytes"], latency_ms=lat["p50_ms"], latency_p90_ms=lat["p90_ms"],
        latency=LatencyFigure.model_validate(lat), map=acc["map"], map50=acc["map50"],
        zipped_mb=size.get("zipped_mb"), parameters=last_fact(records, "parameters"),
        macs=last_fact(records, "macs"), sparsity=last_fact(records, "sparsity"),
        source_bytes=records[0]["facts"].get("bytes_before") if records else None,
        stage_facts={f"{i}.{r['stage']}": r["facts"] for i, r in enumerate(records)},
    )


def last_fact(records: list[dict], key: str):
    """A fact from the last stage that records it (the stage that makes the ONNX file counts the
    MACs of what it exports; a later one that changes them records its own)."""
    return next((r["facts"][key] for r in reversed(records) if key in r.get("facts", {})), None)


def judged(row: VariantRow, budget: dict, previous: dict | None = None) -> VariantRow:
    """The row with its checks and its verdict; `previous` is what released_against found (only
    when the budget has relative budgets)."""
    checks = judge(row, budget) + (judge_vs_release(row, budget, previous) if previous is not None else [])
    return row.model_copy(update={"checks": checks, "passed": all(c.passed for c in checks)})


def judge(row: VariantRow, budget: dict) -> list[Check]:
    """The checks of one variant: value, limit, margin (positive = headroom) and pass."""
    checks = []
    for key, figure, direction, label, unit in CHECKS:
        limit = budget.get(key)
        if limit is None:
            continue
        value = getattr(row, figure)
        margin = (limit - value) if direction == "max" else (value - limit)
        check = Check(budget=key, label=label, unit=unit, value=value, limit=limit, direction=direction,
                      margin=margin, passed=margin >= 0)
        if key == "latency_ms":
            check.provenance = source = row.latency.provenance
            if budget.get("latency_from") == "device" and source != "device":
                check.passed = False
                check.reason = f"{source} figure; budget.latency_from: device needs one measured on the target"
        checks.append(check)
    return checks


def released_against(job: dict) -> dict:
    """{"entry": the previous release (release.released.previous) or None, "eval": None or why its
    mAP was measured on other data than tonight's}. Tonight's eval data hashes are those a release
    lock records (release.publish.data_record), read through the build's hash cache."""
    from release import released
    from release.fingerprint import HashCache
    from release.manifest import Inputs
    from release.publish import data_record

    found = released.previous(Path(job["releases"]), job["version"])
    if found is None:
        return {"entry": None, "eval": None}
    hashes = HashCache(Path(job["hash_cache"]))
    tonight = data_record(Inputs.from_job(job).data.eval, Path(job["root"]), hashes)
    hashes.save()
    differs = [k for k in released.EVAL_KEYS if found["eval"].get(k) != tonight.get(k)]
    why = None
    if differs:
        why = (f"data.eval differs from the data release {found['version']} was measured on "
               f"({', '.join(differs)}): mAP not compared")
    return {"entry": found, "eval": why}


def judge_vs_release(row: VariantRow, budget: dict, previous: dict) -> list[Check]:
    """The checks against the previous release: tonight's figure, the released one, the limit the
    budget derives from it and the margin (positive = headroom)."""
    entry, checks = previous["entry"], []
    for key, figure, direction, label, unit in RELATIVE_CHECKS:
        allowed = budget.get(key)
        if allowed is None:
            continue
        value = getattr(row, figure)
        was = (entry or {}).get("figures", {}).get(figure)
        if entry is None or was is None:
            checks.append(Check(budget=key, label=label, unit=unit, value=value, limit=None, direction=direction,
                                margin=None, passed=True, note=NO_PREVIOUS if entry is None else
                                f"release {entry['version']} records no {figure}: not compared"))
            continue
        limit = was - allowed if direction == "min" else was * (1 + allowed)
        margin = round(value - limit if direction == "min" else limit - value, 12)
        check = Check(budget=key, label=label, unit=unit, value=value, limit=limit, direction=direction,
                      margin=margin, passed=margin >= 0, released=was, against=entry["version"])
        if entry.get("problem"):
            check.passed, check.reason = False, entry["problem"]
        elif figure == "map" and previous["eval"]:
            check.passed, check.note = True, previous["eval"]
        elif figure == "latency_ms":
            check.note = _latency_elsewhere(row, entry)
        checks.append(check)
    return checks


def _latency_elsewhere(row: VariantRow, entry: dict) -> str | None:
    """A note when the released latency was measured otherwise than tonight's (compared all the same)."""
    lat, then = row.latency, entry.get("latency_measured") or {}
    now = {"provenance": lat.provenance, "runner": lat.runner, "cpu": lat.cpu, "host_cpu": lat.host_cpu,
           "threads": lat.threads}
    differs = [k for k in now if then.get(k) is not None and then.get(k) != now[k]]
    if not differs:
        return None
    return "measured otherwise than the release's figure (" + ", ".join(
        f"{k}: {then[k]} then, {now[k]} now" for k in differs) + ")"


def latency_provenance(rows: dict[str, VariantRow], target: dict) -> str:
    """One sentence: where the latency figures of this build come from."""
    if not rows:
        return ""
    lat = next(iter(rows.values())).latency
    what = f"{target['name']}" + (f" ({target['description']})" if target.get("description") else "")
    threads = f"{lat.threads} thread{'s' * (lat.threads != 1)}"
    if lat.provenance == "device":
        return (f"latency: measured on the target {what} via {lat.runner}: {lat.cpu}, "
                f"{lat.cores} cores, onnxruntime {lat.onnxruntime}, {threads}")
    here = f"this host ({lat.host_cpu}, {lat.host_cores} cores, onnxruntime {lat.onnxruntime})"
    if lat.provenance == "estimate":
        return (f"latency: ESTIMATED for the target {what}: {here} with {threads}, times target.speed_ratio "
                f"{target.get('speed_ratio')}; not measured on the device")
    return (f"latency: measured on {here} with {threads}, local runner; NOT on the target {what}: the latency "
            f"budget is checked against a host figure")


SELECT_RULES = {
    "best_map": lambda r: (-r.map, r.latency_ms, r.size_mb),
    "smallest": lambda r: (r.size_mb, -r.map),
    "fastest": lambda r: (r.latency_ms, -r.map),
}


def select(rows: dict[str, VariantRow], rule: str) -> str | None:
    """The passing variant the rule prefers (ties: the first name in sorted order), or None."""
    passing = {name: row for name, row in rows.items() if row.passed}
    if not passing:
        return None
    key = SELECT_RULES[rule]
    return min(sorted(passing), key=lambda name: key(passing[name]))


def baseline(rows: dict[str, VariantRow]) -> str | None:
    """The float baseline's name: the variant named fp32, else the first whose ONNX file is as
    converted from weights (its last stage does not take an ONNX file, as a stage that changes an
    ONNX file's number format does)."""
    if "fp32" in rows:
        return "fp32"
    from release import stages

    def converted(row: VariantRow) -> bool:
        last = row.stages[-1].stage if row.stages else None
        if last not in stages.REGISTRY:
            return False
        spec = stages.load(last).SPEC
        return spec.produces == "onnx" and spec.consumes != "onnx"

    return next((name for name, row in rows.items() if converted(row)), None)


def descriptions(row: VariantRow) -> list[Description]:
    """What each stage of the variant says of its own facts (its describe hook), in pipeline order."""
    return describe_facts(row.stage_facts)


def describe_facts(stage_facts: dict[str, dict]) -> list[Description]:
    """The describe hooks' Descriptions of stage facts keyed "<index>.<stage>" (as in a row)."""
    from release import stages

    out = []
    for key, facts in stage_facts.items():
        name = key.partition(".")[2]
        if name in stages.REGISTRY:
            found = stages.load(name).describe(facts)
            if found is not None:
                out.append(found)
    return out
