from release import gate, render
from release.report import LatencyFigure, Report, VariantRow


def row(size, latency, mAP, provenance="host", notes=(), stage_facts=None):
    lat = LatencyFigure(p50_ms=latency, p90_ms=latency * 1.1, threads=4, runner="ssh://pi@pi4", provenance=provenance,
                        notes=list(notes), noisy=any(n.startswith("noisy") for n in notes), cores=4, cpu="Cortex-A72",
                        host_cpu="AMD EPYC", host_cores=2, onnxruntime="1.32.0", runs=30, cv=0.01)
    return VariantRow(fingerprint="f" * 64, artifact="artifacts/stages/x/model.onnx", stages=[], size_mb=size,
                      bytes=int(size * 1e6), latency_ms=latency, latency_p90_ms=latency * 1.1, latency=lat, map=mAP,
                      map50=mAP + 0.2, stage_facts=stage_facts or {})


def report_for(rows, budget, rule="best_map"):
    rows = {name: gate.judged(r, budget) for name, r in rows.items()}
    rep = Report(key="k", name="x", version="0.0.1", target={"name": "rpi4"}, budget=budget, select=rule,
                 variants=rows)
    rep.selected = gate.select(rows, rule)
    rep.passed = rep.selected is not None
    return rep


BUDGET = {"size_mb": 1.0, "latency_ms": 10.0, "min_map": 0.5}


def test_margins_and_pass():
    checks = {c.budget: c for c in gate.judge(row(1.2, 8.0, 0.55), BUDGET)}
    assert checks["size_mb"].passed is False and abs(checks["size_mb"].margin + 0.2) < 1e-9
    assert checks["latency_ms"].passed is True and abs(checks["latency_ms"].margin - 2.0) < 1e-9
    assert checks["min_map"].passed is True and abs(checks["min_map"].margin - 0.05) < 1e-9


def test_unset_budgets_are_not_checked():
    assert [c.budget for c in gate.judge(row(9, 9, 0.1), {"size_mb": 10.0})] == ["size_mb"]


def test_select_rules():
    rows = {"a": row(0.5, 9.0, 0.60), "b": row(0.3, 5.0, 0.55), "c": row(2.0, 1.0, 0.9)}
    assert report_for(dict(rows), BUDGET).selected == "a"
    assert report_for(dict(rows), BUDGET, "smallest").selected == "b"
    assert report_for(dict(rows), BUDGET, "fastest").selected == "b"


def test_table_says_what_was_missed_and_by_how_much():
    rep = report_for({"fp32": row(2.571, 13.8, 0.70), "int8": row(0.7, 5.5, 0.69)}, BUDGET)
    text = render.table(rep)
    assert "int8 *" in text
    fp32_line = next(line for line in text.splitlines() if line.startswith("fp32"))
    assert "FAIL -1.571" in fp32_line and "FAIL -3.80" in fp32_line and fp32_line.endswith("FAIL")
    assert "fp32: size 2.571 MB vs max 1.000 (by 1.571); latency 13.80 ms vs max 10.00 (by 3.80)" in render.missed(rep)


def test_nothing_passes():
    rep = report_for({"fp32": row(2.0, 20.0, 0.1)}, BUDGET)
    assert rep.selected is None
    assert "nothing released" in render.table(rep)


def test_latency_from_device_fails_a_host_figure_whatever_its_margin():
    budget = {**BUDGET, "latency_from": "device"}
    rep = report_for({"here": row(0.5, 2.0, 0.6), "there": row(0.5, 2.0, 0.6, "device"),
                      "guess": row(0.5, 2.0, 0.6, "estimate")}, budget)
    assert [rep.variants[n].passed for n in ("here", "there", "guess")] == [False, True, False]
    assert rep.selected == "there"
    text = render.table(rep)
    here = next(line for line in text.splitlines() if line.startswith("here"))
    assert "FAIL host figure" in here and " host " in here
    assert "a latency figure not measured on the target fails the gate" in text
    assert "here: latency 2.00 ms vs max 10.00 (host figure; budget.latency_from: device" in render.missed(rep)
    # Without latency_from, a host figure passes on its margin, and the table says where it was taken.
    assert report_for({"here": row(0.5, 2.0, 0.6)}, BUDGET).selected == "here"


def test_provenance_sentence_names_where_the_figure_was_measured():
    target = {"name": "rpi4", "description": "Raspberry Pi 4 Model B, 4x Cortex-A72", "speed_ratio": 5.0}
    host = gate.latency_provenance({"a": row(1, 1, 1)}, target)
    assert host.startswith("latency: measured on this host (AMD EPYC, 2 cores, onnxruntime 1.32.0)")
    assert "NOT on the target rpi4 (Raspberry Pi 4 Model B" in host
    device = gate.latency_provenance({"a": row(1, 1, 1, "device")}, target)
    assert "measured on the target rpi4" in device and "via ssh://pi@pi4: Cortex-A72, 4 cores" in device
    assert "ESTIMATED" in gate.latency_provenance({"a": row(1, 1, 1, "estimate")}, target)


def test_noisy_figures_and_runner_notes_reach_the_table():
    rep = report_for({"a": row(0.5, 2.0, 0.6, notes=["noisy: CV 0.31 after 3 rounds (measure.max_cv 0.1)",
                                                     "4 threads on 2 cores (thread spinning off)"]),
                      "b": row(0.5, 2.0, 0.6, notes=["4 threads on 2 cores (thread spinning off)"])}, BUDGET)
    text = render.table(rep)
    assert "host noisy" in next(line for line in text.splitlines() if line.startswith("a"))
    assert "a: latency noisy: CV 0.31 after 3 rounds" in text
    assert text.count("4 threads on 2 cores") == 1


def test_int8_variants_say_how_they_were_quantized_and_what_stayed_float():
    quant = {"mode": "static", "format": "qdq", "activation_type": "uint8",
             "calibration": {"method": "entropy", "samples": 64, "cached": True},
             "float_nodes": [{"node": "/Sigmoid", "op": "Sigmoid", "why": "decode tail of heatmap"},
                             {"node": "/head/Conv", "op": "Conv", "why": "sensitivity rank 1 (adds error 0.3)"}],
             "sensitivity": {"split": "calibration", "fp32_map": 0.64, "max_map_drop": 0.01, "met": True,
                             "chosen": {"map": 0.635}, "curve": [{}, {}]}}
    fp32 = row(2.0, 2.0, 0.64)
    int8 = row(0.6, 2.5, 0.635, stage_facts={"0.strip": {}, "1.export": {}, "2.quantize": quant})
    text = render.table(report_for({"fp32": fp32, "int8": int8}, {"size_mb": 10.0}))
    line = next(n for n in text.splitlines() if n.startswith("int8: INT8"))
    assert "INT8 static qdq, entropy calibration on 64 images (ranges from the cache)" in line
    assert "1 decode tail of heatmap (/Sigmoid)" in line and "1 sensitivity (/head/Conv)" in line
    assert "tuned on data.calibration: mAP 0.635 vs float 0.640 (max drop 0.01, met after 1 trials)" in line
    assert "int8: INT8 is not faster than fp32 here (2.50 vs 2.00 ms)" in text
    assert "fp32: INT8" not in text  # a float variant has no quantization line


def test_the_model_card_lists_float_nodes_and_the_tuning_curve():
    from release.render import stage_sections as _quantization_section

    quant = {"mode": "static", "format": "qoperator", "activation_type": "uint8",
             "calibration": {"method": "minmax", "samples": 8, "cached": False},
             "float_nodes": [{"node": "/Sigmoid", "op": "Sigmoid", "why": "decode tail of heatmap"}],
             "sensitivity": {"split": "tuning", "fp32_map": 0.64, "max_map_drop": 0.01, "met": False,
                             "chosen": {"map": 0.6},
                             "curve": [{"fallback_groups": 0, "float_nodes": 1, "map": 0.5, "bytes": 600, "latency_ms": 1.0},
                                       {"fallback_groups": 1, "float_nodes": 3, "map": 0.6, "bytes": 610, "latency_ms": 1.1}]}}
    card = _quantization_section(row(1, 1, 1, stage_facts={"2.quantize": quant}))
    assert card.startswith("## Quantization\nINT8 static qoperator, minmax calibration on 8 images")
    assert "| `/Sigmoid` | Sigmoid | decode tail of heatmap |" in card
    assert "NOT met after 1 trials" in card and "| 1 | 3 | 0.6000 | 610 | 1.10 |" in card
    assert _quantization_section(row(1, 1, 1, stage_facts={"1.export": {}})) == ""
