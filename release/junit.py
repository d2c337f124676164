"""The build report as JUnit XML (artifacts/<name>/report.xml), for the test reporters of CI systems.

One <testsuite> per variant, named `<release>.<variant>`, with one <testcase> per budget, named
`<variant>.<budget>`: a budget the variant meets passes; one it misses is a <failure> whose message
gives the figure, the limit and the margin (or why a figure does not count, e.g. a host latency
where the budget wants one measured on the target). A variant without budgets has one passing case
`<variant>.measured`, so every variant is listed. Each suite's <properties> carry the release name,
its version, the target, the variant's fingerprint, whether it was selected, and the report's key.

A build that stops before the gate (a crash, a mistake found in an action) gets a report of its
own from `failed`: one <error> per task that failed, so a CI job that publishes report.xml never
shows last night's verdict for tonight's build. `is_gate_report` tells the gate's own file apart
(the gate's up-to-date check), reading the file as text: no XML parser on a no-op build.

The shape is the common one GitLab, Jenkins and GitHub test reporters read: <testsuites> with
tests/failures/errors totals, <testsuite> with its own counts, <testcase name classname>. Written
with the standard library's ElementTree (imported when a report is written): the format needs
nothing it lacks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the gate's up-to-date check imports this module: no pydantic, no XML parser then
    from xml.etree.ElementTree import Element

    from release.report import Check, Report

KEY_PROPERTY = "release.key"


def _num(value: float) -> str:
    return f"{value:.4g}"


def _with_unit(value: float, unit: str) -> str:
    return f"{_num(value)} {unit}".rstrip()


def describe(check: Check) -> str:
    """One line: the figure against its limit, and the margin (or why the figure does not count)."""
    relation = "max" if check.direction == "max" else "min"
    if check.limit is None:  # a budget relative to the last release, when there is none to compare with
        text = f"{check.label} {_with_unit(check.value, check.unit)}"
        return f"{text}: {check.note or check.reason or 'not compared'}"
    text = f"{check.label} {_with_unit(check.value, check.unit)} vs {relation} {_with_unit(check.limit, check.unit)}"
    if check.reason:
        return f"{text}: {check.reason}"
    if check.passed:
        return f"{text}: met, headroom {_with_unit(check.margin, check.unit)}"
    return f"{text}: missed by {_with_unit(-check.margin, check.unit)} (margin {_num(check.margin)})"


def _counted(element: Element, tests: int, failures: int, errors: int, skipped: int = 0) -> None:
    element.set("tests", str(tests))
    element.set("failures", str(failures))
    element.set("errors", str(errors))
    element.set("skipped", str(skipped))


def _properties(suite: Element, values: dict) -> None:
    import xml.etree.ElementTree as ET

    props = ET.SubElement(suite, "properties")
    for name, value in values.items():
        if value is not None:
            ET.SubElement(props, "property", name=name, value=str(value))


def document(report: Report) -> Element:
    """The <testsuites> element of a report: every variant x budget."""
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuites", name=f"release {report.name} {report.version}")
    totals = [0, 0]
    for variant, row in report.variants.items():
        suite = ET.SubElement(root, "testsuite", name=f"{report.name}.{variant}")
        _properties(suite, {"release": report.name, "version": report.version, "variant": variant,
                            "target": report.target.get("name"), "fingerprint": row.fingerprint,
                            "selected": str(variant == report.selected).lower(), KEY_PROPERTY: report.key})
        classname = f"{report.name}.{variant}"
        failures = 0
        for check in row.checks:
            case = ET.SubElement(suite, "testcase", name=f"{variant}.{check.budget}", classname=classname)
            line = describe(check)
            if check.passed:
                ET.SubElement(case, "system-out").text = line
            else:
                failures += 1
                failure = ET.SubElement(case, "failure", message=line, type="budget missed")
                failure.text = f"{line}\nvariant {variant} of {report.name} {report.version} ({row.artifact})"
        if not row.checks:
            case = ET.SubElement(suite, "testcase", name=f"{variant}.measured", classname=classname)
            ET.SubElement(case, "system-out").text = (f"size {_num(row.size_mb)} MB, latency "
                                                      f"{_num(row.latency_ms)} ms, mAP {_num(row.map)}; no budgets")
        tests = max(len(row.checks), 1)
        _counted(suite, tests, failures, 0)
        totals[0] += tests
        totals[1] += failures
    _counted(root, totals[0], totals[1], 0)
    return root


def failed(job: dict, failures: list[tuple[str, str, str]]) -> Element:
    """The report of a build that stopped before its gate (`job` is the gate's: name, version,
    budget, variants), from its failed tasks as (task name, kind, message), kind "mistake" or
    "crash". The test cases keep their names: each budget of a variant that a failed task builds
    or measures is an <error> with that task's message; the other variants' are <skipped> (not
    judged); a failed task of no variant (the model check, a generator, publish) is an <error> of
    its own in the suite `<release>.build`."""
    import xml.etree.ElementTree as ET

    from release.gate import CHECKS

    name, version = job["name"], job["version"]
    budgets = [key for key, *_ in CHECKS if job["budget"].get(key) is not None] or ["measured"]
    root = ET.Element("testsuites", name=f"release {name} {version}")
    unplaced = [f for f in failures if not _variants_of(f[0], job)]
    suites = [(variant, [f for f in failures if variant in _variants_of(f[0], job)]) for variant in job["variants"]]
    if unplaced:
        suites.insert(0, ("build", unplaced))
    totals = [0, 0, 0]
    for variant, mine in suites:
        suite = ET.SubElement(root, "testsuite", name=f"{name}.{variant}")
        _properties(suite, {"release": name, "version": version, "variant": variant if variant != "build" else None})
        if variant == "build":
            cases = [(failure[0], failure) for failure in mine]
        else:
            cases = [(f"{variant}.{budget}", mine[0] if mine else None) for budget in budgets]
        for case_name, failure in cases:
            case = ET.SubElement(suite, "testcase", name=case_name, classname=f"{name}.{variant}")
            if failure is None:
                ET.SubElement(case, "skipped", message="not judged: the build stopped before the gate")
                continue
            task, kind, message = failure
            error = ET.SubElement(case, "error", message=f"{task}: {_headline(kind, message)}", type=kind)
            error.text = message
        errors = sum(f is not None for _, f in cases)
        _counted(suite, len(cases), 0, errors, len(cases) - errors)
        totals = [totals[0] + len(cases), totals[1] + errors, totals[2] + len(cases) - errors]
    _counted(root, totals[0], 0, totals[1], totals[2])
    return root


def _headline(kind: str, message: str) -> str:
    """A crash's last traceback line (the exception), a mistake's first line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()] or [kind]
    return lines[-1] if kind == "crash" else lines[0]


def _variants_of(task: str, job: dict) -> list[str]:
    """The variants a task builds or measures: stage:<stage>@<fp10> is in a variant's chain (its
    record sits in stages/<stage>/<fp16>/), measure:<what>@<fp10> measures its final ONNX file."""
    group, _, rest = task.partition(":")
    stage, _, tag = rest.partition("@")
    if not tag:
        return []
    if group == "measure":
        return [v for v, files in job["variants"].items() if files["fingerprint"].startswith(tag)]
    if group == "stage":
        return [v for v, files in job["variants"].items()
                if any(Path(r).parent.name.startswith(tag) and Path(r).parent.parent.name == stage
                       for r in files["records"])]
    return []


def text(root: Element) -> str:
    import xml.etree.ElementTree as ET

    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def write(report: Report, path: Path) -> None:
    """report.xml, atomically."""
    from release.atomic import write_text

    write_text(Path(path), text(document(report)))


def is_gate_report(path: str, key: str) -> bool:
    """doit uptodate for the gate: report.xml is the gate's report of exactly this plan (not the
    report of a build that failed before its gate, nor of another plan)."""
    try:
        return f'name="{KEY_PROPERTY}" value="{key}"' in Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
