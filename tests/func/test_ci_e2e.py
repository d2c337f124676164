"""What nightly CI reads from a real `doit release` (docs/ci.md): report.xml, the step summary,
GitHub annotations, and the exit code of each outcome: 0 released, 1 budgets missed, 2 crash,
3 a mistake found in an action (the manifest's own are exit 3 at load: test_release_e2e)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.conftest import copy_project, executed, run_doit, tiny_manifest_dict, write_manifest
from tests.unit.test_ci_reports import check_junit_shape

pytestmark = pytest.mark.slow


def github(tmp: Path, root: Path) -> dict:
    return {"GITHUB_ACTIONS": "true", "GITHUB_WORKSPACE": str(root), "GITHUB_STEP_SUMMARY": str(tmp / "summary.md")}


def test_a_release_writes_report_xml_and_a_noop_build_appends_the_table(tiny_built, tmp_path):
    root = copy_project(tiny_built, tmp_path / "project")
    xml = root / "artifacts/tiny/report.xml"
    cases = check_junit_shape(ET.parse(xml).getroot())
    assert sorted(cases) == ["fp32.size_mb", "int8.size_mb"]  # every variant x budget of the tiny manifest
    assert not any(c.find("failure") is not None for c in cases.values())
    summary = tmp_path / "summary.md"
    summary.write_text("# an earlier step\n")
    done = run_doit(root, "release", "manifest=tiny.yaml", env=github(tmp_path, root))
    assert done.returncode == 0, done.stdout + done.stderr
    assert executed(done.stdout) == ["release"]  # a no-op build ...
    text = summary.read_text()  # ... still puts the gate table in the job's summary, after what was there
    assert text.startswith("# an earlier step\n# Build report: tiny 0.0.1\n") and "* released:" in text
    assert "::error" not in done.stdout


def test_missed_budgets_exit_1_with_failures_in_report_xml_and_annotations(tiny_built, tmp_path):
    root = copy_project(tiny_built, tmp_path / "project")
    write_manifest(root, tiny_manifest_dict(name="strict", budget={"size_mb": 100.0, "min_map": 0.99}), "strict.yaml")
    done = run_doit(root, "release", "manifest=strict.yaml", env=github(tmp_path, root))
    text = done.stdout + done.stderr
    assert done.returncode == 1, text
    assert not any(t.startswith(("stage:", "measure:")) for t in executed(done.stdout))  # only the gate judged
    root_el = ET.parse(root / "artifacts/strict/report.xml").getroot()
    cases = check_junit_shape(root_el)
    assert sorted(cases) == ["fp32.min_map", "fp32.size_mb", "int8.min_map", "int8.size_mb"]
    assert (root_el.get("tests"), root_el.get("failures")) == ("4", "2")
    message = cases["fp32.min_map"].find("failure").get("message")
    assert message.startswith("mAP ") and " vs min 0.99: missed by " in message and "(margin -" in message
    assert "::error title=budget missed (fp32 min_map)::fp32: mAP " in done.stdout
    assert " vs min 0.99: missed by " in done.stdout
    assert "::error title=budget missed (int8 min_map)::" in done.stdout
    assert "# Build report: strict 0.0.1" in (tmp_path / "summary.md").read_text()
    assert "Traceback" not in text


def test_a_mistake_found_in_an_action_exits_3_located_and_replaces_report_xml_until_fixed(tiny_built, tmp_path):
    root = copy_project(tiny_built, tmp_path / "project")
    doc = tiny_manifest_dict()
    doc["variants"]["pruned"] = ["strip", {"prune": {"method": "channel", "layers": {"donw32.*": 0.5}}}, "export"]
    path = write_manifest(root, doc)
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "donw32" in t)
    done = run_doit(root, "-n", "2", "release", "manifest=tiny.yaml", env=github(tmp_path, root))  # from a worker
    text = done.stdout + done.stderr
    assert done.returncode == 3, text
    assert "check:tiny" in executed(done.stdout) and "Traceback" not in text
    assert f"::error file=tiny.yaml,line={line},title=variants.pruned[1].prune.layers.donw32.*::" in done.stdout
    cases = check_junit_shape(ET.parse(root / "artifacts/tiny/report.xml").getroot())
    assert cases["check:tiny"].find("error").get("type") == "mistake"
    assert {n for n, c in cases.items() if c.find("skipped") is not None} == {
        f"{v}.size_mb" for v in ("fp32", "int8", "pruned")}  # the same test names, not judged tonight
    assert "## release: exit 3 (mistake)" in (tmp_path / "summary.md").read_text()
    write_manifest(root, tiny_manifest_dict())  # fixed: the gate writes its own report again
    again = run_doit(root, "release", "manifest=tiny.yaml")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "gate:tiny" in executed(again.stdout)
    assert sorted(check_junit_shape(ET.parse(root / "artifacts/tiny/report.xml").getroot())) == [
        "fp32.size_mb", "int8.size_mb"]


CRASHING_ADAPTER = '''
from release.models.demo.detector import Adapter as Demo

CALLS = [0]


class Adapter(Demo):
    def postprocess(self, outputs, meta):
        CALLS[0] += 1
        if CALLS[0] > 4:  # past any one-image check of the adapter: a bug met while measuring mAP
            raise ZeroDivisionError("adapter bug in postprocess")
        return super().postprocess(outputs, meta)
'''


def test_an_exception_in_user_code_is_a_crash_exit_2_with_its_traceback(tiny_built, tmp_path):
    root = copy_project(tiny_built, tmp_path / "project")
    (root / "crashing_adapter.py").write_text(CRASHING_ADAPTER)
    doc = tiny_manifest_dict(version="0.0.2")
    doc["model"]["adapter"] = "crashing_adapter:Adapter"
    write_manifest(root, doc)
    done = run_doit(root, "release", "manifest=tiny.yaml", env=github(tmp_path, root))
    text = done.stdout + done.stderr
    assert done.returncode == 2, text
    assert "Traceback" in text and "ZeroDivisionError: adapter bug in postprocess" in text
    assert "crashing_adapter.py" in text  # the traceback reaches the user's line
    assert "::error title=release crashed (exit 2)::measure:map@" in done.stdout
    cases = check_junit_shape(ET.parse(root / "artifacts/tiny/report.xml").getroot())
    assert sorted(cases) == ["fp32.size_mb", "int8.size_mb"]  # the names of a good night
    crashed = [c.find("error") for c in cases.values() if c.find("error") is not None]
    assert crashed and all(e.get("type") == "crash" for e in crashed)  # the variant(s) measure:map measured
    assert crashed[0].get("message").endswith("ZeroDivisionError: adapter bug in postprocess")
    assert "crashing_adapter.py" in crashed[0].text
    assert "## release: exit 2 (crash)" in (tmp_path / "summary.md").read_text()


def test_a_manifest_mistake_at_load_exits_3_and_report_xml_says_so_not_last_nights_verdict(tiny_built, tmp_path):
    root = copy_project(tiny_built, tmp_path / "project")
    doc = tiny_manifest_dict()
    doc["budget"]["size_mb"] = "1 MB"
    path = write_manifest(root, doc)
    before = (root / "artifacts/tiny/report.xml").read_text()
    listing = run_doit(root, "list", "manifest=tiny.yaml")  # takes no build lock: replaces no report
    assert listing.returncode == 3 and (root / "artifacts/tiny/report.xml").read_text() == before
    done = run_doit(root, "release", "manifest=tiny.yaml", env=github(tmp_path, root))
    assert done.returncode == 3, done.stdout + done.stderr
    assert executed(done.stdout) == [] and "Traceback" not in done.stderr
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "1 MB" in t)
    assert f"::error file=tiny.yaml,line={line},title=budget.size_mb::got '1 MB'" in done.stdout
    cases = check_junit_shape(ET.parse(root / "artifacts/tiny/report.xml").getroot())
    assert cases["plan"].find("error").get("type") == "mistake"
    assert "budget.size_mb" in cases["plan"].find("error").text
    assert {n for n, c in cases.items() if c.find("skipped") is not None} == {"fp32.size_mb", "int8.size_mb"}
    write_manifest(root, tiny_manifest_dict())
    again = run_doit(root, "release", "manifest=tiny.yaml")
    assert again.returncode == 0, again.stdout + again.stderr
    assert executed(again.stdout) == ["gate:tiny", "release"]  # only the report is written again
    assert not any(c.find("skipped") is not None
                   for c in check_junit_shape(ET.parse(root / "artifacts/tiny/report.xml").getroot()).values())
