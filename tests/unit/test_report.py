"""The typed report (release/report.py): report.json round trips with its "pass" keys and the keys
each runner wrote; the gate's decisions on typed rows; a Report built by the gate from real
measurement and stage-record files; stage text through the describe hooks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from release import gate, render
from release.errors import ReleaseError
from release.report import Check, LatencyFigure, PipelineStep, Report, VariantRow

# What release/measure/latency.py writes for the SSH runner (bench.py's JSON, the runner's keys,
# then provenance, host and notes): more keys than the model names, in the order they were measured.
DEVICE_LATENCY = {
    "p50_ms": 4.25, "p90_ms": 4.5, "min_ms": 4.0, "max_ms": 6.0, "mean_ms": 4.3, "cv": 0.04, "runs": 30,
    "warmup": 2, "rounds": 1, "round_cvs": [0.04], "max_cv": 0.1, "noisy": False, "threads": 4,
    "process_threads": 6, "provider": "CPUExecutionProvider", "session_options": {}, "session_seconds": 0.01,
    "onnxruntime": "1.32.0", "cpu": "Cortex-A72", "arch": "aarch64", "cores": 4, "python": "3.11.2",
    "hostname": "pi4", "runner": "ssh://pi@pi4", "provenance": "device", "sent": ["model.onnx"],
    "overhead_s": {"list": 0.1, "copy": 0.2, "run": 1.5, "total": 1.8}, "host_cpu": "AMD EPYC",
    "host_cores": 2, "notes": [], "note": "", "target": "rpi4",
}


def latency(**over) -> dict:
    return {**DEVICE_LATENCY, **over}


def row(size=1.0, ms=5.0, mAP=0.5, provenance="device", stages=(), stage_facts=None, **extra) -> VariantRow:
    return VariantRow(
        fingerprint="a" * 64, artifact="artifacts/stages/export/x/model.onnx",
        stages=[PipelineStep(stage=s, params={}, fingerprint=str(i) * 64) for i, s in enumerate(stages)],
        size_mb=size, bytes=int(size * 1e6), latency_ms=ms, latency_p90_ms=ms * 1.1,
        latency=LatencyFigure.model_validate(latency(p50_ms=ms, p90_ms=ms * 1.1, provenance=provenance)),
        map=mAP, map50=mAP + 0.2, stage_facts=stage_facts or {}, **extra)


def report_of(rows: dict, budget: dict, rule: str = "best_map") -> Report:
    rows = {n: gate.judged(r, budget) for n, r in rows.items()}
    selected = gate.select(rows, rule)
    return Report(key="k", name="det", version="1.0.0", target={"name": "rpi4", "description": ""}, budget=budget,
                  select=rule, variants=rows, selected=selected, passed=selected is not None)


# ---------------------------------------------------------------- report.json

def test_a_report_round_trips_through_report_json_with_pass_keys(tmp_path):
    budget = {"size_mb": 10, "latency_ms": 8.0, "min_map": None, "latency_from": "any"}  # an int stays an int
    report = report_of({"fp32": row(2.0, 9.0), "int8": row(0.6, 4.0, 0.49, zipped_mb=0.5)}, budget)
    path = tmp_path / "report.json"
    report.write(path)
    raw = json.loads(path.read_text())
    int8 = raw["variants"]["int8"]
    assert int8["pass"] is True and "passed" not in int8 and raw["passed"] is True and raw["selected"] == "int8"
    size, lat = int8["checks"]
    assert size["pass"] is True and "passed" not in size and size["limit"] == 10 and isinstance(size["limit"], int)
    assert "provenance" not in size and "reason" not in size  # said only when they say something
    assert lat["provenance"] == "device" and "reason" not in lat
    assert raw["variants"]["fp32"]["checks"][1] == {"budget": "latency_ms", "label": "latency", "unit": "ms",
                                                   "value": 9.0, "limit": 8.0, "direction": "max", "margin": -1.0,
                                                   "pass": False, "provenance": "device"}
    # The runner's own keys (sent, overhead_s) are kept, in the order they were measured.
    assert list(int8["latency"]) == list(DEVICE_LATENCY)
    assert list(int8) == ["fingerprint", "artifact", "stages", "size_mb", "bytes", "latency_ms", "latency_p90_ms",
                          "latency", "map", "map50", "zipped_mb", "parameters", "macs", "sparsity", "source_bytes",
                          "stage_facts", "checks", "pass"]
    back = Report.read(path)
    assert back == report and back.variants["int8"].latency.sent == ["model.onnx"]
    again = tmp_path / "again.json"
    back.write(again)
    assert again.read_bytes() == path.read_bytes()


def test_a_measurement_reads_back_as_it_was_written():
    """Only the keys a runner wrote are written back (a local figure has no `sent`), nulls stay."""
    local = {k: v for k, v in DEVICE_LATENCY.items() if k not in ("sent", "overhead_s")}
    local.update(runner="local", provenance="host", process_threads=None)
    figure = LatencyFigure.model_validate(local)
    assert figure.model_dump() == local and list(figure.model_dump()) == list(local)
    made = LatencyFigure(p50_ms=1.0, p90_ms=2.0, threads=1, runner="local")
    assert made.model_dump() == {"p50_ms": 1.0, "p90_ms": 2.0, "threads": 1, "runner": "local"}
    assert made.provenance == "host" and made.notes == []


def test_a_report_of_another_shape_says_to_build_again(tmp_path):
    report = report_of({"fp32": row()}, {"size_mb": 10.0})
    data = report.dump()
    for broken in ({**data, "schema_version": 2}, {**data, "verdict": "pass"}):
        path = tmp_path / "report.json"
        path.write_text(json.dumps(broken))
        with pytest.raises(ReleaseError, match="not a build report this release reads.*Run the build again"):
            Report.read(path)


def test_fields_by_name_and_by_alias():
    check = Check(budget="size_mb", label="size", unit="MB", value=1.0, limit=2.0, direction="max", margin=1.0,
                  passed=True)
    assert check == Check.model_validate(check.model_dump()) and check.model_dump()["pass"] is True
    with pytest.raises(ValueError):
        Check.model_validate({**check.model_dump(), "limmit": 3})


# ---------------------------------------------------------------- decisions on typed rows

def test_judge_select_and_baseline_on_typed_rows():
    budget = {"size_mb": 1.0, "latency_ms": 10.0, "min_map": 0.5, "latency_from": "device"}
    rows = {"big": row(2.0, 5.0, 0.7), "slow": row(0.5, 12.0, 0.6), "ok": row(0.8, 8.0, 0.55),
            "lean": row(0.3, 6.0, 0.52), "host": row(0.3, 1.0, 0.9, provenance="host")}
    report = report_of(rows, budget)
    verdicts = {n: r.passed for n, r in report.variants.items()}
    assert verdicts == {"big": False, "slow": False, "ok": True, "lean": True, "host": False}
    host = next(c for c in report.variants["host"].checks if c.budget == "latency_ms")
    assert host.margin == 9.0 and not host.passed and host.reason.startswith("host figure")
    assert report.selected == "ok" and report.release is report.variants["ok"]
    assert gate.select(report.variants, "smallest") == "lean" and gate.select(report.variants, "fastest") == "lean"
    assert gate.select({"x": gate.judged(row(9.0), budget)}, "best_map") is None
    # The float baseline: named fp32, else the first variant whose last stage converts weights to ONNX
    # (not one whose last stage rewrites an ONNX file).
    pipelines = {"small": row(stages=["strip", "export", "quantize"]), "float": row(stages=["strip", "export"]),
                 "half": row(stages=["strip", "export", "fp16"])}
    assert gate.baseline(pipelines) == "float"
    assert gate.baseline({**pipelines, "fp32": row(stages=["strip", "export"])}) == "fp32"
    assert gate.baseline({"small": pipelines["small"]}) is None


# ---------------------------------------------------------------- the gate builds the report

def _write(path: Path, data: dict) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return str(path)


def _record(root: Path, stage: str, index: int, facts: dict, params: dict | None = None) -> str:
    return _write(root / "stages" / stage / f"{index}" / "stage.json", {
        "schema_version": 1, "stage": stage, "version": 1, "fingerprint": f"{index}" * 64, "input": "in",
        "params": params or {}, "produces": "onnx", "output_sha256": "0" * 64, "tools": {"torch": "2.13.0"},
        "seconds": 1.0, "facts": facts})


def _gate_job(tmp_path: Path) -> dict:
    m = tmp_path / "measure"
    strip_facts = {"bytes_before": 3_000_000, "parameters": 150_000, "from_builder": ["head.bias"]}
    export_facts = {"parameters": 149_000, "macs": 4_500_000, "sparsity": 0.0}
    fp32 = [_record(tmp_path, "strip", 0, strip_facts, {"dtype": "stored"}),
            _record(tmp_path, "export", 1, export_facts)]
    int8 = fp32 + [_record(tmp_path, "quantize", 2, {"mode": "dynamic", "float_nodes": []}, {"mode": "dynamic"})]
    files = {}
    for name, records, size, ms, mAP in (("fp32", fp32, 0.6, 5.0, 0.5), ("int8", int8, 0.2, 4.0, 0.48)):
        files[name] = {
            "fingerprint": records[-1].split("/")[-2] * 64, "artifact": f"artifacts/stages/{name}/model.onnx",
            "size": _write(m / f"{name}.size.json", {"bytes": int(size * 1e6), "size_mb": size, "zipped_bytes": 1000,
                                                      "zipped_mb": 0.001, "files": ["model.onnx"]}),
            "map": _write(m / f"{name}.map.json", {"map": mAP, "map50": mAP + 0.2, "map75": mAP, "images": 16,
                                                    "detections": 40, "seconds": 1.0}),
            "latency": _write(m / f"{name}.latency.json", latency(p50_ms=ms, p90_ms=ms + 0.5)),
            "records": records}
    d = tmp_path / "artifacts" / "det"
    return {"key": "plan-key", "name": "det", "version": "1.0.0", "budget": {"size_mb": 1.0, "latency_ms": None,
            "min_map": 0.45, "latency_from": "any"}, "select": "smallest", "variants": files,
            "target": {"name": "rpi4", "description": "Raspberry Pi 4"}, "root": str(tmp_path),
            "report": str(d / "report.json"), "report_md": str(d / "report.md"), "report_xml": str(d / "report.xml")}


def test_the_gate_builds_the_report_from_measurement_and_record_files(tmp_path):
    job = _gate_job(tmp_path)
    report = gate.build(job)
    assert (report.key, report.name, report.version, report.select) == ("plan-key", "det", "1.0.0", "smallest")
    assert report.selected == "int8" and report.passed
    assert report.latency_provenance.startswith("latency: measured on the target rpi4 (Raspberry Pi 4) via ssh://")
    int8 = report.variants["int8"]
    assert [s.stage for s in int8.stages] == ["strip", "export", "quantize"]
    assert int8.stages[0].params == {"dtype": "stored"} and int8.stages[0].tools == {"torch": "2.13.0"}
    assert (int8.size_mb, int8.bytes, int8.zipped_mb, int8.latency_ms, int8.latency_p90_ms) == (0.2, 200000, 0.001,
                                                                                                  4.0, 4.5)
    assert (int8.map, int8.map50) == (0.48, pytest.approx(0.68))
    # The last stage that records a fact gives it; the first stage's input is the source's size.
    assert (int8.parameters, int8.macs, int8.sparsity, int8.source_bytes) == (149_000, 4_500_000, 0.0, 3_000_000)
    assert list(int8.stage_facts) == ["0.strip", "1.export", "2.quantize"]
    assert [(c.budget, c.passed) for c in int8.checks] == [("size_mb", True), ("min_map", True)]
    assert int8.latency.overhead_s["total"] == 1.8  # the runner's keys ride along

    from release import actions

    assert actions.gate(job) is None  # the action: build, write report.json, report.md and report.xml
    assert Report.read(Path(job["report"])) == report
    md = Path(job["report_md"]).read_text()
    assert md.startswith("# Build report: det 1.0.0") and "* released: int8 (select: smallest)" in md
    assert actions.report_is_current(job["report"], "plan-key")
    import xml.etree.ElementTree as ET

    from release import junit

    cases = [c.get("name") for c in ET.parse(job["report_xml"]).getroot().iter("testcase")]
    assert sorted(cases) == sorted(f"{v}.{b}" for v in job["variants"] for b in ("size_mb", "min_map"))
    assert junit.is_gate_report(job["report_xml"], "plan-key")


# ---------------------------------------------------------------- stage text through describe hooks

def test_stage_text_comes_from_the_stages_describe_hooks():
    strip = {"from_builder": ["heatmap.2.bias", "heatmap.2.weight"]}
    prune = {"method": "magnitude", "scope": "global", "sparsity": 0.6, "kept": ["head"],
             "layers_sparsity": {f"layer{i}": 0.6 for i in range(32)}}
    sparse = row(0.6, 2.0, 0.5, stages=["strip", "prune", "export"], sparsity=0.6, zipped_mb=0.3,
                 stage_facts={"0.strip": strip, "1.prune": prune, "2.export": {}})
    report = report_of({"sparse": sparse, "fp32": row(0.6, 2.0, 0.5)}, {"size_mb": 10.0})
    text = render.table(report)
    assert "sparse: 2 parameter(s) are not from the checkpoint" in text
    assert "sparse: magnitude pruning (global scope): 60.0% of conv/linear weights zeroed across 32 layer(s)" in text
    # Sparsity is a figure of any row (measured from the weights), so its note is the gate's own.
    assert "sparse: 60% of its conv/linear weights are zero, but a dense ONNX file does not shrink" in text
    assert not [line for line in text.splitlines() if line.startswith("fp32:")]
    lock = {"source": {"checkpoint": "c.ckpt", "sha256": "b" * 64, "format": "lightning", "trusted": False},
            "data": {"eval": {"annotations": "eval.json"}}, "tools": {"onnx": "1.19"}}
    card = render.card(report.model_copy(update={"selected": "sparse"}), lock)
    provenance = card[card.index("## Provenance"):]
    assert provenance.startswith("## Provenance\n- **Not from the checkpoint**: 2 parameter(s) kept the builder's "
                                 "initialisation (`source.strict: false`, `allow_missing`): heatmap.2.bias, "
                                 "heatmap.2.weight.\n- Source checkpoint `c.ckpt`")
    assert "## Pruning\nmagnitude pruning" in card and "| `layer0` | 60.0% |" in card and "| ... 2 more | |" in card
    assert "| zeros among conv/linear weights | 60.0% (zipped 0.300 MB; the dense file" in card
    assert card.count("## Provenance") == 1
