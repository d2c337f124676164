"""The report as text: the gate table (terminal and report.md), the one-line misses of a failed
build, and the released variant's model card. Kept apart from the decisions (release/gate.py), as
doit keeps its reporters apart from its tasks: a new view of a report never touches how it is made.

Nothing here knows a stage: what a stage did is said by the stage (its describe hook, through
release.gate.descriptions). A Description with a title gets a model card section of its own; one
titled like a section the card always has (PROVENANCE) adds its `card` lines to that section.
"""

from __future__ import annotations

from release.gate import CHECKS, RELATIVE_CHECKS, baseline, describe_facts, descriptions
from release.report import Check, Report, VariantRow

SPARSE = 0.05  # a share of zero weights worth a note (trained dense weights have next to none)
PROVENANCE = "Provenance"


def _fmt(value: float, unit: str) -> str:
    return f"{value:.3f}" if unit in ("", "MB") else f"{value:.2f}"


# ---------------------------------------------------------------- the gate table

def table(report: Report) -> str:
    """The gate table as fixed-width text (also valid inside a markdown code block), then its notes."""
    return "\n".join(_grid(report) + [""] + _notes(report))


def _grid(report: Report) -> list[str]:
    budget = report.budget
    header = ["variant", "size MB", "latency ms", "measured", "mAP", "mAP@.5", "MMACs"]
    for key, _, direction, label, unit in CHECKS:
        if budget.get(key) is not None:
            header.append(f"{label} {'<=' if direction == 'max' else '>='} {_fmt(budget[key], unit)}")
    against = report.previous["version"] if report.previous else "release"
    for key, figure, _, label, _ in RELATIVE_CHECKS:
        if budget.get(key) is not None:
            allowed = f"drop <= {budget[key]:.3f}" if figure == "map" else f"<= +{budget[key]:.0%}"
            header.append(f"{label.split()[0]} vs {against} ({allowed})")
    header.append("result")
    lines = [header]
    for name, row in report.variants.items():
        lat = row.latency
        cells = [name + (" *" if name == report.selected else ""), f"{row.size_mb:.3f}", f"{row.latency_ms:.2f}",
                 lat.provenance + (" noisy" if lat.noisy else ""), f"{row.map:.3f}", f"{row.map50:.3f}",
                 f"{row.macs / 1e6:.1f}" if row.macs else "-"]
        cells += [_cell(check) for check in row.checks]
        cells.append("pass" if row.passed else "FAIL")
        lines.append(cells)
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    text = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return text


def _cell(check: Check) -> str:
    verdict = "pass" if check.passed else "FAIL"
    if check.margin is None:  # a budget relative to a release there is none of
        return f"{verdict} ({check.note})"
    margin = f"{'+' if check.margin >= 0 else '-'}{_fmt(abs(check.margin), check.unit)}"
    if check.released is not None:  # tonight's figure and the released one
        both = f"{_fmt(check.value, check.unit)} vs {_fmt(check.released, check.unit)}"
        if check.reason:
            return f"{verdict} {both} (release damaged)"
        return f"{verdict} {both} " + ("(not compared)" if check.note and "not compared" in check.note
                                       else f"({margin})")
    if check.reason:  # failed for where it was measured, whatever the margin
        return f"{verdict} {check.provenance} figure"
    return f"{verdict} {margin}"


def _notes(report: Report) -> list[str]:
    notes = ["margins: + is headroom, - is how far a budget was missed"]
    if report.latency_provenance:
        notes.append(report.latency_provenance)
    seen = set()
    for name, row in report.variants.items():
        for note in row.latency.notes:
            if note.startswith("noisy"):
                notes.append(f"{name}: latency {note}")
            elif note not in seen:
                seen.add(note)
                notes.append(f"latency: {note}")
    base = report.variants.get(baseline(report.variants))
    for name, row in report.variants.items():
        for found in descriptions(row):
            notes.append(f"{name}: {found.summary}")
            if found.faster_as and base is not None and row.latency_ms >= base.latency_ms:
                notes.append(f"{name}: {found.faster_as} is not faster than fp32 here ({row.latency_ms:.2f} vs "
                             f"{base.latency_ms:.2f} ms): latency, not the format, decides")
    notes += _release_notes(report)
    if report.budget.get("latency_from") == "device":
        notes.append("budget.latency_from: device — a latency figure not measured on the target fails the gate")
    for name, row in report.variants.items():
        if (row.sparsity or 0) >= SPARSE:
            zipped = f"; zipped it is {row.zipped_mb:.3f} MB" if row.zipped_mb is not None else ""
            notes.append(f"{name}: {row.sparsity:.0%} of its conv/linear weights are zero, but a dense ONNX "
                         f"file does not shrink from sparsity alone ({row.size_mb:.3f} MB){zipped}")
    if report.selected:
        notes.append(f"* released: {report.selected} (select: {report.select})")
    else:
        notes.append("no variant meets every budget: nothing released")
    return notes


def _release_notes(report: Report) -> list[str]:
    """What the budgets relative to the previous release compared against, and what they could not."""
    if not any(report.budget.get(key) is not None for key, *_ in RELATIVE_CHECKS):
        return []
    prev = report.previous
    if prev is None:
        return [f"vs release: no previous release of {report.name} is published: the budgets relative to it pass"]
    fig = prev["figures"]
    lines = [f"vs release: {report.name} {prev['version']} (variant {prev['variant']}, "
             f"published {prev['published_at']}): "
             f"mAP {_num(fig.get('map'), '')}, latency {_num(fig.get('latency_ms'), 'ms')} ms, "
             f"size {_num(fig.get('size_mb'), 'MB')} MB"]
    seen = set()
    for row in report.variants.values():
        for c in row.checks:
            for text in (c.reason, c.note):
                if c.budget.endswith("_vs_release") and text and text not in seen:
                    seen.add(text)
                    lines.append(f"vs release: {text}")
    return lines


def _num(value, unit: str) -> str:
    return "?" if value is None else _fmt(value, unit)


def markdown(report: Report) -> str:
    """The build report as markdown (report.md, and the parent run's artifact)."""
    return f"# Build report: {report.name} {report.version}\n\n```\n{table(report)}\n```\n{_classes(report)}"


def _classes(report: Report) -> str:
    """The class names in the model's output order (index: name), as data.eval defines them."""
    if not report.classes:
        return ""
    listed = ", ".join(f"{i} `{name}`" for i, name in enumerate(report.classes))
    return f"\nClasses, in the model's output order (class index: name): {listed}.\n"


def missed(report: Report) -> str:
    """One line per failing variant: what it missed and by how much."""
    out = []
    for name, row in report.variants.items():
        misses = [f"{c.label} {_fmt(c.value, c.unit)}{c.unit and ' ' + c.unit} vs "
                  f"{'max' if c.direction == 'max' else 'min'} {_fmt(c.limit, c.unit)} "
                  + (f"({c.reason})" if c.reason else f"(by {_fmt(abs(c.margin), c.unit)})")
                  + (f" [release {c.against}: {_fmt(c.released, c.unit)}]" if c.released is not None else "")
                  for c in row.checks if not c.passed]
        if misses:
            out.append(f"  {name}: " + "; ".join(misses))
    return "\n".join(out)


# ---------------------------------------------------------------- the model card

def card(report: Report, lock: dict) -> str:
    """MODEL_CARD.md of the released variant; `lock` is its release.lock (source, data, tools)."""
    name = report.selected
    row = report.variants[name]
    pipeline = " -> ".join(
        s.stage + (f"({', '.join(f'{k}={v}' for k, v in s.params.items())})" if s.params else "") for s in row.stages)
    return f"""# {report.name} {report.version} — model card
{_version_line(report)}
Variant **{name}**, selected by `{report.select}` among {len(report.variants)} variants.
Pipeline: `{pipeline}`. Fingerprint `{row.fingerprint[:16]}`.

{_figures(report, row)}{_classes(report)}
{stage_sections(row)}{_budgets(report, row)}
{_provenance(row, lock)}"""


def _version_line(report: Report) -> str:
    """The card's line on a version made from a template (empty for a plain version)."""
    made = report.version_from
    if not made:
        return ""
    values = ", ".join(f"{{{k}}} = {v}" for k, v in made["values"].items())
    return f"\nVersion `{report.version}` from the template `{made['template']}` ({values}).\n"


def _figures(report: Report, row: VariantRow) -> str:
    lat = row.latency
    macs = f"{row.macs / 1e6:.1f} M" if row.macs else "not counted"
    return f"""## Figures (measured on `model.onnx` in this folder)
| figure | value |
|---|---|
| size | {row.size_mb:.3f} MB ({row.bytes} bytes) |
| latency p50 / p90 | {lat.p50_ms:.2f} / {lat.p90_ms:.2f} ms ({lat.runs} runs, CV {lat.cv:.2f}) |
| COCO mAP@[.5:.95] / mAP@.5 | {row.map:.4f} / {row.map50:.4f} |
| parameters | {row.parameters} |
| multiply-accumulates per image | {macs} |
{sparsity_row(row)}
Latency provenance: **{lat.provenance}** — {report.latency_provenance}.
{('Note: ' + lat.note) if lat.note else ''}
"""


def sparsity_row(row: VariantRow) -> str:
    """The figures table's line on zero weights, when there are enough to mention."""
    if (row.sparsity or 0) < SPARSE:
        return ""
    zipped = f"zipped {row.zipped_mb:.3f} MB; " if row.zipped_mb is not None else ""
    return (f"| zeros among conv/linear weights | {row.sparsity:.1%} ({zipped}the dense file does not "
            f"shrink from sparsity alone) |\n")


def stage_sections(row: VariantRow) -> str:
    """The model card's sections written by the variant's stages (their describe hooks)."""
    return "".join(f"## {d.title}\n{d.summary}\n\n{d.card}" for d in descriptions(row)
                   if d.title and d.title != PROVENANCE)


def provenance_notes(stage_facts: dict[str, dict]) -> str:
    """The lines the stages add to the card's provenance list (e.g. weights not from the checkpoint)."""
    return "".join(d.card for d in describe_facts(stage_facts) if d.title == PROVENANCE)


def _budgets(report: Report, row: VariantRow) -> str:
    def limit(c: Check) -> str:
        if c.limit is None:
            return c.note or ""
        vs = f" (release {c.against}: {c.released:.4g})" if c.released is not None else ""
        return f"{'<=' if c.direction == 'max' else '>='} {c.limit:.4g}{vs}"

    checks = "\n".join(f"| {c.label} | {c.value:.4g} {c.unit} | {limit(c)} | "
                       f"{'' if c.margin is None else format(c.margin, '+.4g')} | {'pass' if c.passed else 'FAIL'}"
                       f"{' (' + c.reason + ')' if c.reason else ''} |"
                       for c in row.checks) or "| (no budgets) | | | | |"
    return f"""## Budgets ({report.target['name']})
| budget | figure | limit | margin | result |
|---|---|---|---|---|
{checks}
"""


def _provenance(row: VariantRow, lock: dict) -> str:
    source, notes = lock["source"], provenance_notes(row.stage_facts)
    return f"""## Provenance
{notes}- Source checkpoint `{source['checkpoint']}` (sha256 `{source['sha256'][:16]}…`), format
  `{source['format']}`, trusted pickle loading: **{source['trusted']}**.
- Evaluated on `{lock['data'].get('eval', {}).get('annotations', '?')}`.
- Tools: {', '.join(f'{k} {v}' for k, v in lock['tools'].items())}.
- Full hashes in `release.lock`.
"""
