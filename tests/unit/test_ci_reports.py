"""What a build tells CI (docs/ci.md): report.xml (JUnit) from a typed Report, GitHub annotations of
located manifest problems, the step summary, and the classification behind the exit codes."""

from __future__ import annotations

import pickle
import xml.etree.ElementTree as ET

import pytest

from release import ci, doitstate, junit
from release.errors import BUDGETS_MISSED, CRASH, MISTAKE, ManifestError
from tests.unit.test_report import report_of, row


def check_junit_shape(root: ET.Element) -> dict[str, ET.Element]:
    """The shape test reporters read, with every count consistent; the test cases by name."""
    assert root.tag == "testsuites"
    cases, totals = {}, {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for suite in root:
        assert suite.tag == "testsuite" and suite.get("name")
        mine = [c for c in suite if c.tag == "testcase"]
        assert {c.tag for c in suite} <= {"properties", "testcase"}
        counts = {"tests": len(mine), "failures": sum(c.find("failure") is not None for c in mine),
                  "errors": sum(c.find("error") is not None for c in mine),
                  "skipped": sum(c.find("skipped") is not None for c in mine)}
        assert {k: int(suite.get(k)) for k in counts} == counts, suite.get("name")
        for case in mine:
            assert case.get("name") and case.get("classname") and case.get("name") not in cases
            assert len([e for e in case if e.tag in ("failure", "error", "skipped")]) <= 1
            cases[case.get("name")] = case
        for k in totals:
            totals[k] += counts[k]
    assert {k: int(root.get(k)) for k in totals} == totals
    return cases


def test_report_xml_lists_every_variant_and_budget_with_the_figures_of_a_miss(tmp_path):
    budget = {"size_mb": 1.5, "latency_ms": 8.0, "min_map": 0.45}
    report = report_of({"fp32": row(2.0, 9.0, 0.5), "int8": row(0.6, 4.0, 0.48)}, budget)
    path = tmp_path / "report.xml"
    junit.write(report, path)
    root = ET.parse(path).getroot()
    cases = check_junit_shape(root)
    assert sorted(cases) == sorted(f"{v}.{b}" for v in ("fp32", "int8") for b in budget)
    assert (root.get("tests"), root.get("failures"), root.get("errors")) == ("6", "2", "0")
    size = cases["fp32.size_mb"].find("failure")
    assert size.get("message") == "size 2 MB vs max 1.5 MB: missed by 0.5 MB (margin -0.5)"
    assert cases["fp32.latency_ms"].find("failure").get("message").startswith("latency 9 ms vs max 8 ms: missed by 1 ms")
    assert cases["fp32.min_map"].find("failure") is None and cases["int8.size_mb"].find("failure") is None
    assert "headroom 0.9 MB" in cases["int8.size_mb"].find("system-out").text
    suite = root.find("testsuite[@name='det.int8']")
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["release"] == "det" and props["version"] == "1.0.0" and props["selected"] == "true"
    assert props["target"] == "rpi4" and props[junit.KEY_PROPERTY] == "k"
    assert junit.is_gate_report(str(path), "k") and not junit.is_gate_report(str(path), "other")
    assert not junit.is_gate_report(str(tmp_path / "absent.xml"), "k")


def test_a_host_figure_against_a_device_budget_fails_with_its_reason_and_no_budget_is_one_case():
    report = report_of({"fp32": row(1.0, 5.0, provenance="host")}, {"latency_ms": 8.0, "latency_from": "device"})
    message = check_junit_shape(junit.document(report))["fp32.latency_ms"].find("failure").get("message")
    assert message == "latency 5 ms vs max 8 ms: host figure; budget.latency_from: device needs one measured on the target"
    cases = check_junit_shape(junit.document(report_of({"fp32": row(), "int8": row()}, {})))
    assert sorted(cases) == ["fp32.measured", "int8.measured"]


def test_a_build_stopped_before_its_gate_reports_errors_under_the_same_test_names(tmp_path):
    fp32, int8 = "a" * 64, "b" * 64
    job = {"name": "det", "version": "1.0.0", "budget": {"size_mb": 1.0, "min_map": 0.4, "latency_ms": None},
           "variants": {
               "fp32": {"fingerprint": fp32, "records": [f"artifacts/stages/export/{fp32[:16]}/stage.json"]},
               "int8": {"fingerprint": int8, "records": [f"artifacts/stages/export/{fp32[:16]}/stage.json",
                                                         f"artifacts/stages/quantize/{int8[:16]}/stage.json"]}}}
    crash = ("stage:quantize@" + int8[:10], "crash", "Traceback (most recent call last):\n  ...\nRuntimeError: boom")
    mistake = ("check:det", "mistake", "recipes/x.yaml: 1 problem\n  line 3, model: x")
    path = tmp_path / "report.xml"
    path.write_text(junit.text(junit.failed(job, [mistake, crash])))
    root = ET.parse(path).getroot()
    cases = check_junit_shape(root)
    assert sorted(cases) == ["check:det", "fp32.min_map", "fp32.size_mb", "int8.min_map", "int8.size_mb"]
    assert cases["check:det"].find("error").get("message") == "check:det: recipes/x.yaml: 1 problem"
    error = cases["int8.size_mb"].find("error")
    assert error.get("type") == "crash" and error.get("message") == f"{crash[0]}: RuntimeError: boom"
    assert cases["fp32.size_mb"].find("skipped") is not None  # not judged, and not what failed
    assert (root.get("tests"), root.get("errors"), root.get("skipped")) == ("5", "3", "2")
    assert not junit.is_gate_report(str(path), "k")
    export = ("stage:export@" + fp32[:10], "crash", "RuntimeError: x")  # shared by both variants
    both = check_junit_shape(junit.failed(job, [export]))
    assert all(c.find("error") is not None for c in both.values()) and len(both) == 4


def test_located_problems_become_one_annotation_each(tmp_path, monkeypatch):
    from release.manifest_problems import _Problems

    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    problems = _Problems(tmp_path / "recipes" / "x.yaml", {("model", "kwargs"): 7})
    problems.add(("model", "kwargs", "widht"), "takes no argument 'widht'. Did you mean 'width'?")
    problems.add(("budget",), "100%, a: b\nnext")
    with pytest.raises(ManifestError) as caught:
        problems.raise_if_any()
    exc = pickle.loads(pickle.dumps(caught.value))  # a doit -n N worker sends it back
    assert [p.line for p in exc.problems] == [7, None] and str(exc) == str(caught.value)
    assert ci.error_annotations(exc) == [
        "::error file=recipes/x.yaml,line=7,title=model.kwargs.widht::takes no argument 'widht'. Did you mean 'width'?",
        "::error file=recipes/x.yaml,title=budget::100%25, a: b%0Anext",
    ]
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    out = []
    ci.annotate(["::error::x"], stream=type("S", (), {"write": out.append, "flush": lambda self: None})())
    assert out == []


def test_the_step_summary_is_appended_never_truncated(tmp_path, monkeypatch):
    summary = tmp_path / "summary.md"
    summary.write_text("# earlier step\n")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert not ci.append_summary("ignored")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert ci.append_summary("# Build report")
    assert ci.append_summary(ci.failure_summary(3, [("check:det", "mistake", "x.yaml: 1 problem")]))
    text = summary.read_text()
    assert text.startswith("# earlier step\n# Build report\n## release: exit 3 (mistake)")
    assert "**check:det** (mistake)" in text and "x.yaml: 1 problem" in text


def test_failures_are_classified_by_what_failed():
    from doit.exceptions import TaskError, TaskFailed, UnmetDependency

    assert doitstate.classify(doitstate.Mistake("x"))[0] == MISTAKE
    assert doitstate.classify(doitstate.BudgetsMissed("x"))[0] == BUDGETS_MISSED
    assert doitstate.classify(TaskError("PythonAction Error", RuntimeError("boom")))[0] == CRASH
    assert doitstate.classify(TaskFailed("Python Task failed: returned False"))[0] == CRASH
    assert doitstate.classify(UnmetDependency("stage:x")) is None
    # pickled with what they carry (failures come back from doit -n N workers)
    again = pickle.loads(pickle.dumps(doitstate.Mistake("m", [("f", 1, "a.b", "c")])))
    assert isinstance(again, doitstate.Mistake) and again.problems == [("f", 1, "a.b", "c")]


def test_plan_time_mistakes_exit_3_annotated_and_crashes_exit_2_with_the_traceback(tmp_path, monkeypatch, capsys):
    from release import plan, tasks
    from tests.conftest import tiny_manifest_dict, write_manifest

    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    doc = tiny_manifest_dict()
    doc["target"]["threads"] = 0
    write_manifest(tmp_path, doc)
    with pytest.raises(SystemExit) as stopped:
        tasks.plan_for("tiny.yaml", tmp_path, lock=False)
    assert stopped.value.code == MISTAKE
    captured = capsys.readouterr()
    assert "target.threads: got 0" in captured.err and "Traceback" not in captured.err
    assert "::error file=tiny.yaml,line=" in captured.out and ",title=target.threads::got 0" in captured.out

    def broken(*args):  # a bug while planning (fault injected: none is known to reach here)
        raise KeyError("oops")

    monkeypatch.setattr(plan, "recorded", broken)
    write_manifest(tmp_path, tiny_manifest_dict())
    with pytest.raises(SystemExit) as stopped:
        tasks.plan_for("tiny.yaml", tmp_path, lock=False)
    assert stopped.value.code == CRASH
    captured = capsys.readouterr()
    assert "Traceback (most recent call last)" in captured.err and "KeyError: 'oops'" in captured.err
    assert "::error title=release crashed (exit 2)::KeyError: 'oops'" in captured.out
    summary = (tmp_path / "summary.md").read_text()
    assert "## release: exit 3 (mistake)" in summary and "## release: exit 2 (crash)" in summary


def test_the_exit_codes_are_distinct_and_documented_as_defined():
    import re

    from release import errors
    from tests.conftest import REPO

    said = {errors.RELEASED: "published", errors.BUDGETS_MISSED: "budgets missed", errors.CRASH: "crash",
            errors.MISTAKE: "mistake"}
    assert len(said) == 4 and set(ci.EXIT_KINDS) == set(said)
    for page in (REPO / "docs" / "ci.md", REPO / "README.md"):
        rows = {int(code): meaning.lower() for code, meaning in re.findall(r"^\| (\d) \| ([^|]+) \|", page.read_text(), re.M)}
        assert sorted(rows) == sorted(said), page.name
        assert all(said[code] in rows[code] for code in said), (page.name, rows)


def _run_reporter(failures, tmp_path, gate_ran=False):
    """doit's calls on the reporter for a run whose tasks failed as given: the exit code it ends with."""
    import io

    from doit.task import Task

    def task(name, job=None):
        return Task(name, [(lambda job: None, [job or {}])])

    job = {"name": "det", "version": "1", "budget": {"size_mb": 1.0}, "report_xml": str(tmp_path / "report.xml"),
           "variants": {"fp32": {"fingerprint": "a" * 64, "records": []}}}
    gate = task("gate:det", job)
    reporter = doitstate.CommittingReporter(io.StringIO(), {})
    reporter.initialize({"gate:det": gate}, ["release"])
    if gate_ran:
        reporter.skip_uptodate(gate)
    for name, fail in failures:
        reporter.add_failure(task(name), fail)
    try:
        reporter.complete_run()
    except SystemExit as exc:
        return exc.code
    return None


def test_the_most_serious_failure_is_the_exit_code_and_a_consequence_counts_for_none(tmp_path):
    from doit.exceptions import TaskError, UnmetDependency

    crash, mistake = TaskError("PythonAction Error", RuntimeError("boom")), doitstate.Mistake("bad data")
    missed = doitstate.BudgetsMissed("no variant", [("fp32", "size_mb", "fp32: size 2 MB vs max 1 MB")])
    assert _run_reporter([("release", missed)], tmp_path, gate_ran=True) == BUDGETS_MISSED
    assert not (tmp_path / "report.xml").exists()  # the gate judged: its report stands
    assert _run_reporter([("track:det", mistake), ("release", missed)], tmp_path, gate_ran=True) == MISTAKE
    assert _run_reporter([("stage:b@x", mistake), ("stage:a@y", crash)], tmp_path) == CRASH
    assert _run_reporter([("gate:det", UnmetDependency("stage:a@y"))], tmp_path) is None  # doit's own code
    cases = check_junit_shape(ET.parse(tmp_path / "report.xml").getroot())  # from the run before
    assert cases["stage:a@y"].find("error").get("type") == "crash" and cases["fp32.size_mb"].find("skipped") is not None
