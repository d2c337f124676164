from release import gate


def row(size, latency, mAP):
    return {"size_mb": size, "latency_ms": latency, "map": mAP, "map50": mAP + 0.2}


def report_for(rows, budget, rule="best_map"):
    for r in rows.values():
        r["checks"] = gate.judge(r, budget)
        r["pass"] = all(c["pass"] for c in r["checks"])
    rep = {"name": "x", "budget": budget, "select": rule, "variants": rows}
    rep["selected"] = gate.select(rows, rule)
    return rep


BUDGET = {"size_mb": 1.0, "latency_ms": 10.0, "min_map": 0.5}


def test_margins_and_pass():
    checks = {c["budget"]: c for c in gate.judge(row(1.2, 8.0, 0.55), BUDGET)}
    assert checks["size_mb"]["pass"] is False and abs(checks["size_mb"]["margin"] + 0.2) < 1e-9
    assert checks["latency_ms"]["pass"] is True and abs(checks["latency_ms"]["margin"] - 2.0) < 1e-9
    assert checks["min_map"]["pass"] is True and abs(checks["min_map"]["margin"] - 0.05) < 1e-9


def test_unset_budgets_are_not_checked():
    assert [c["budget"] for c in gate.judge(row(9, 9, 0.1), {"size_mb": 10.0})] == ["size_mb"]


def test_select_rules():
    rows = {"a": row(0.5, 9.0, 0.60), "b": row(0.3, 5.0, 0.55), "c": row(2.0, 1.0, 0.9)}
    assert report_for(dict(rows), BUDGET)["selected"] == "a"
    assert report_for(dict(rows), BUDGET, "smallest")["selected"] == "b"
    assert report_for(dict(rows), BUDGET, "fastest")["selected"] == "b"


def test_table_says_what_was_missed_and_by_how_much():
    rep = report_for({"fp32": row(2.571, 13.8, 0.70), "int8": row(0.7, 5.5, 0.69)}, BUDGET)
    text = gate.table(rep)
    assert "int8 *" in text
    fp32_line = next(line for line in text.splitlines() if line.startswith("fp32"))
    assert "FAIL -1.571" in fp32_line and "FAIL -3.80" in fp32_line and fp32_line.endswith("FAIL")
    assert "fp32: size 2.571 MB vs max 1.000 (by 1.571); latency 13.80 ms vs max 10.00 (by 3.80)" in gate.missed(rep)


def test_nothing_passes():
    rep = report_for({"fp32": row(2.0, 20.0, 0.1)}, BUDGET)
    assert rep["selected"] is None
    assert "nothing released" in gate.table(rep)
