"""The budget gate: one table of every variant against every budget, and the choice of release.

A missed budget is a failure (an expected "no"), not an error: the table says what each variant
missed and by how much. Gate decisions read only the measurement files, never a tracking server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the stage layer (pydantic) stays off the no-op path
    from release.stages.base import Description

CHECKS = (  # budget field, figure in the row, direction, label, unit
    ("size_mb", "size_mb", "max", "size", "MB"),
    ("latency_ms", "latency_ms", "max", "latency", "ms"),
    ("min_map", "map", "min", "mAP", ""),
)


SPARSE = 0.05  # a share of zero weights worth a note (trained dense weights have next to none)


def judge(row: dict, budget: dict) -> list[dict]:
    """The checks of one variant: value, limit, margin (positive = headroom) and pass."""
    checks = []
    for key, figure, direction, label, unit in CHECKS:
        limit = budget.get(key)
        if limit is None:
            continue
        value = row[figure]
        margin = (limit - value) if direction == "max" else (value - limit)
        check = {"budget": key, "label": label, "unit": unit, "value": value, "limit": limit,
                 "direction": direction, "margin": margin, "pass": margin >= 0}
        if key == "latency_ms":
            check["provenance"] = source = row["latency"].get("provenance", "host")
            if budget.get("latency_from") == "device" and source != "device":
                check.update({"pass": False, "reason": f"{source} figure; budget.latency_from: device "
                                                        f"needs one measured on the target"})
        checks.append(check)
    return checks


def latency_provenance(rows: dict[str, dict], target: dict) -> str:
    """One sentence: where the latency figures of this build come from."""
    if not rows:
        return ""
    lat = next(iter(rows.values()))["latency"]
    what = f"{target['name']}" + (f" ({target['description']})" if target.get("description") else "")
    threads = f"{lat['threads']} thread{'s' * (lat['threads'] != 1)}"
    source = lat.get("provenance", "host")
    if source == "device":
        return (f"latency: measured on the target {what} via {lat['runner']}: {lat.get('cpu')}, "
                f"{lat.get('cores')} cores, onnxruntime {lat.get('onnxruntime')}, {threads}")
    here = f"this host ({lat.get('host_cpu')}, {lat.get('host_cores')} cores, onnxruntime {lat.get('onnxruntime')})"
    if source == "estimate":
        return (f"latency: ESTIMATED for the target {what}: {here} with {threads}, times target.speed_ratio "
                f"{target.get('speed_ratio')}; not measured on the device")
    return (f"latency: measured on {here} with {threads}, local runner; NOT on the target {what}: the latency "
            f"budget is checked against a host figure")


def select(rows: dict[str, dict], rule: str) -> str | None:
    passing = {name: row for name, row in rows.items() if row["pass"]}
    if not passing:
        return None
    key = {"best_map": lambda r: (-r["map"], r["latency_ms"], r["size_mb"]),
           "smallest": lambda r: (r["size_mb"], -r["map"]),
           "fastest": lambda r: (r["latency_ms"], -r["map"])}[rule]
    return min(sorted(passing), key=lambda name: key(passing[name]))


def _fmt(value: float, unit: str) -> str:
    return f"{value:.3f}" if unit in ("", "MB") else f"{value:.2f}"


def descriptions(row: dict) -> list[Description]:
    """What each stage of the variant says of its own facts (its describe hook), in pipeline order."""
    from release import stages

    out = []
    for key, facts in row.get("stage_facts", {}).items():
        name = key.partition(".")[2]
        if name in stages.REGISTRY:
            found = stages.load(name).describe(facts)
            if found is not None:
                out.append(found)
    return out


def baseline(rows: dict) -> str | None:
    """The fp32 variant's name: the one named fp32, else the first whose pipeline ends at export."""
    if "fp32" in rows:
        return "fp32"
    return next((n for n, r in rows.items() if r.get("stages") and r["stages"][-1]["stage"] == "export"), None)


def table(report: dict) -> str:
    """The gate table as fixed-width text (also valid inside a markdown code block)."""
    budget = report["budget"]
    header = ["variant", "size MB", "latency ms", "measured", "mAP", "mAP@.5", "MMACs"]
    for key, _, direction, label, unit in CHECKS:
        if budget.get(key) is not None:
            header.append(f"{label} {'<=' if direction == 'max' else '>='} {_fmt(budget[key], unit)}")
    header.append("result")
    lines = [header]
    for name, row in report["variants"].items():
        lat = row["latency"]
        cells = [name + (" *" if name == report.get("selected") else ""), f"{row['size_mb']:.3f}",
                 f"{row['latency_ms']:.2f}", lat.get("provenance", "host") + (" noisy" if lat.get("noisy") else ""),
                 f"{row['map']:.3f}", f"{row['map50']:.3f}", f"{row['macs'] / 1e6:.1f}" if row.get("macs") else "-"]
        for check in row["checks"]:
            sign = "+" if check["margin"] >= 0 else "-"
            verdict = "pass" if check["pass"] else "FAIL"
            if check.get("reason"):  # failed for where it was measured, whatever the margin
                cells.append(f"{verdict} {check['provenance']} figure")
                continue
            cells.append(f"{verdict} {sign}{_fmt(abs(check['margin']), check['unit'])}")
        cells.append("pass" if row["pass"] else "FAIL")
        lines.append(cells)
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    latency = report.get("latency_provenance", "")
    notes = ["margins: + is headroom, - is how far a budget was missed"]
    if latency:
        notes.append(latency)
    seen = set()
    for name, row in report["variants"].items():
        for note in row["latency"].get("notes", []):
            if note.startswith("noisy"):
                notes.append(f"{name}: latency {note}")
            elif note not in seen:
                seen.add(note)
                notes.append(f"latency: {note}")
    base = report["variants"].get(baseline(report["variants"]))
    for name, row in report["variants"].items():
        for found in descriptions(row):
            notes.append(f"{name}: {found.summary}")
            if found.faster_as and base is not None and row["latency_ms"] >= base["latency_ms"]:
                notes.append(f"{name}: {found.faster_as} is not faster than fp32 here ({row['latency_ms']:.2f} vs "
                             f"{base['latency_ms']:.2f} ms): latency, not the format, decides")
    if budget.get("latency_from") == "device":
        notes.append("budget.latency_from: device — a latency figure not measured on the target fails the gate")
    for name, row in report["variants"].items():
        if (row.get("sparsity") or 0) >= SPARSE:
            zipped = f"; zipped it is {row['zipped_mb']:.3f} MB" if row.get("zipped_mb") is not None else ""
            notes.append(f"{name}: {row['sparsity']:.0%} of its conv/linear weights are zero, but a dense ONNX "
                         f"file does not shrink from sparsity alone ({row['size_mb']:.3f} MB){zipped}")
    if report.get("selected"):
        notes.append(f"* released: {report['selected']} (select: {report['select']})")
    else:
        notes.append("no variant meets every budget: nothing released")
    return "\n".join(text + [""] + notes)


def markdown(report: dict) -> str:
    """The build report as markdown (report.md, and the parent run's artifact)."""
    return f"# Build report: {report['name']} {report['version']}\n\n```\n{table(report)}\n```\n"


def missed(report: dict) -> str:
    """One line per failing variant: what it missed and by how much."""
    out = []
    for name, row in report["variants"].items():
        misses = [f"{c['label']} {_fmt(c['value'], c['unit'])}{c['unit'] and ' ' + c['unit']} vs "
                  f"{'max' if c['direction'] == 'max' else 'min'} {_fmt(c['limit'], c['unit'])} "
                  + (f"({c['reason']})" if c.get("reason") else f"(by {_fmt(abs(c['margin']), c['unit'])})")
                  for c in row["checks"] if not c["pass"]]
        if misses:
            out.append(f"  {name}: " + "; ".join(misses))
    return "\n".join(out)

