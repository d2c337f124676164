"""What a build report becomes in MLflow: a variant run's params, metrics and tags, the key that
says whether a variant's run can be reused, and the Pareto plot of the parent run.

Pure functions of the typed Report (no mlflow import): release/tracking.py does the logging.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from release.gate import baseline
from release.report import Report, VariantRow

KEY_FIGURES = ("fingerprint", "size_mb", "latency_ms", "latency_p90_ms", "map", "map50")


def flat_params(row: VariantRow, target: dict) -> dict[str, str]:
    """Stage params in pipeline order, e.g. '2.<stage>.mode', and the target."""
    params = {f"target.{k}": str(v) for k, v in target.items()}
    for i, stage in enumerate(row.stages):
        params[f"{i}.{stage.stage}"] = stage.fingerprint[:16]
        for key, value in stage.params.items():
            params[f"{i}.{stage.stage}.{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
    return params


def variant_metrics(report: Report, name: str) -> dict[str, float]:
    """The variant's figures as MLflow metrics, with its mAP against the float baseline."""
    row = report.variants[name]
    metrics = {"size_mb": row.size_mb, "latency_p50_ms": row.latency_ms, "latency_p90_ms": row.latency_p90_ms,
               "map": row.map, "map50": row.map50}
    if row.latency.cv is not None:
        metrics["latency_cv"] = float(row.latency.cv)
    base = baseline(report.variants)
    if base is not None:
        metrics["map_delta_vs_fp32"] = row.map - report.variants[base].map
    if row.source_bytes:
        metrics["compression_ratio"] = row.source_bytes / row.bytes
    for key in ("parameters", "macs", "sparsity", "zipped_mb"):
        if getattr(row, key) is not None:
            metrics[key] = float(getattr(row, key))
    return metrics


def variant_tags(report: Report, name: str) -> dict[str, str]:
    """Where and how the variant was measured, and its verdicts (per budget and overall)."""
    row = report.variants[name]
    lat = row.latency
    tags = {"fingerprint": row.fingerprint, "variant": name, "target": report.target["name"],
            "runner": lat.runner, "latency_provenance": lat.provenance,
            "latency_cpu": str(lat.cpu or lat.host_cpu), "latency_onnxruntime": str(lat.onnxruntime),
            "latency_noisy": str(bool(lat.noisy)).lower(),
            "release.pass": "pass" if row.passed else "fail"}
    for check in row.checks:
        tags[f"budget.{check.budget}"] = "pass" if check.passed else "fail"
    return tags


def variant_key(name: str, row: VariantRow) -> str:
    """What makes a variant's run: its fingerprint and its measured figures."""
    figures = {k: getattr(row, k) for k in KEY_FIGURES}
    return hashlib.sha256(json.dumps([name, figures], sort_keys=True).encode()).hexdigest()


def variant_record(name: str, row: VariantRow) -> str:
    """The variant run's metrics.json artifact: the row as report.json has it."""
    return json.dumps({"variant": name, **row.dump()}, indent=2, default=str)


def write_pareto(report: Report, path: Path) -> None:
    """Size and latency against mAP, budgets drawn, the released variant marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budget = report.budget
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, (figure, label, limit) in zip(axes, (("size_mb", "size (MB)", budget.get("size_mb")),
                                                 ("latency_ms", "latency p50 (ms)", budget.get("latency_ms")))):
        for name, row in report.variants.items():
            chosen = name == report.selected
            x = getattr(row, figure)
            ax.scatter(x, row.map, s=90 if chosen else 40, marker="*" if chosen else "o",
                       color="tab:green" if row.passed else "tab:red", zorder=3)
            ax.annotate(name + (" (released)" if chosen else ""), (x, row.map),
                        textcoords="offset points", xytext=(5, 5), fontsize=8)
        if limit is not None:
            ax.axvline(limit, color="grey", linestyle="--", label=f"budget {limit:g}")
        if budget.get("min_map") is not None:
            ax.axhline(budget["min_map"], color="grey", linestyle=":", label=f"min mAP {budget['min_map']:g}")
        ax.set_xlabel(label)
        ax.set_ylabel("mAP@[.5:.95]")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{report.name} {report.version}: variants against budgets")
    fig.savefig(path, dpi=100)
    plt.close(fig)
