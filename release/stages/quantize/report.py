"""The quantize stage's account of its facts (its `describe` hook): one line for the gate table and
the model card, and the card's section with the float nodes and the sensitivity search's curve.

It reads facts only, so it does not decide what the stage writes (it stays out of SPEC.code).
"""

from __future__ import annotations

CURVE_CELLS = (("fallback_groups", ""), ("float_nodes", ""), ("map", ".4f"), ("bytes", ""), ("latency_ms", ".2f"))


def summary(q: dict) -> str:
    if q["mode"] == "dynamic":
        head = "INT8 dynamic (weights only, activations at run time)"
    else:
        cal = q.get("calibration", {})
        head = (f"INT8 static {q['format']}, {cal.get('method')} calibration on {cal.get('samples')} images"
                f"{' (ranges from the cache)' if cal.get('cached') else ''}, {q['activation_type']} activations")
    why: dict[str, list[str]] = {}
    for k in q.get("float_nodes", []):
        why.setdefault(k["why"].split(" (")[0].split(" rank")[0], []).append(k["node"])
    parts = [f"{len(nodes)} {reason}" + (f" ({', '.join(nodes[:3])}{' ...' if len(nodes) > 3 else ''})")
             for reason, nodes in why.items()]
    line = f"{head}; in float: {'; '.join(parts) if parts else 'nothing'}"
    tuned = q.get("sensitivity")
    if tuned:
        line += (f"; tuned on data.{tuned['split']}: mAP {tuned['chosen']['map']:.3f} vs float {tuned['fp32_map']:.3f} "
                 f"(max drop {tuned['max_map_drop']:g}, {'met' if tuned['met'] else 'NOT met'} after "
                 f"{len(tuned['curve']) - 1} trials)")
    return line


def card(q: dict) -> str:
    lines = []
    if q.get("float_nodes"):
        lines += ["| node kept in float | op | why |", "|---|---|---|"]
        lines += [f"| `{k['node']}` | {k['op']} | {k['why']} |" for k in q["float_nodes"][:30]]
        if len(q["float_nodes"]) > 30:
            lines.append(f"| ... {len(q['float_nodes']) - 30} more | | |")
        lines.append("")
    tuned = q.get("sensitivity")
    if tuned:
        lines += [f"Sensitivity search on data.{tuned['split']} (float mAP {tuned['fp32_map']:.4f}):", "",
                  "| layer groups in float by sensitivity | nodes in float | mAP | bytes | latency ms (in-stage, 1 thread) |",
                  "|---|---|---|---|---|"]
        lines += ["| " + " | ".join(_cell(c.get(k), f) for k, f in CURVE_CELLS) + " |" for c in tuned["curve"]]
        lines.append("")
    return "\n".join(lines) + "\n" if lines else ""


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)
