"""The release bundle: the selected ONNX file, its metrics, a model card and a lock file.

Written to artifacts/<name>/release/<version>/ by renaming a complete folder into place: a device or
a CI job that reads it never sees a half-written release (replacing an earlier bundle of the same
version takes two renames, so for an instant the folder may be absent, never partial).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from release import __version__
from release.atomic import atomic_dir, write_json, write_text
from release.fingerprint import HashCache, file_sha256, tool_versions
from release.graph import relative

LOCK_SCHEMA = 1


def _lock(report: dict, job: dict, manifest, hashes: HashCache, model: Path) -> dict:
    data = {}
    for split in ("train", "calibration", "eval"):
        ref = getattr(manifest.data, split)
        if ref is not None:
            labelled = ref.annotations is not None
            data[split] = {"annotations": relative(ref.annotations, Path(job["root"])) if labelled else None,
                           "annotations_sha256": hashes.file(ref.annotations) if labelled else None,
                           "images": relative(ref.images, Path(job["root"])),
                           "images_sha256": hashes.folder(ref.images), "limit": ref.limit}
    source = manifest.source
    return {
        "schema_version": LOCK_SCHEMA, "name": report["name"], "version": report["version"],
        "variant": report["selected"], "fingerprint": report["variants"][report["selected"]]["fingerprint"],
        "model_sha256": file_sha256(model),
        "source": {"checkpoint": source.checkpoint.name, "sha256": hashes.file(source.checkpoint),
                   "format": source.format, "trusted": source.trusted, "strict": source.strict,
                   "allow_missing": list(source.allow_missing)},
        "manifest": {"file": manifest.path.name, "sha256": hashes.file(manifest.path)},
        "data": data,
        "tools": {**tool_versions(("torch", "onnx", "onnxruntime", "pycocotools")), "release": __version__},
    }


def _sparsity_row(row: dict) -> str:
    from release.gate import SPARSE

    if (row.get("sparsity") or 0) < SPARSE:
        return ""
    zipped = f"zipped {row['zipped_mb']:.3f} MB; " if row.get("zipped_mb") is not None else ""
    return (f"| zeros among conv/linear weights | {row['sparsity']:.1%} ({zipped}the dense file does not "
            f"shrink from sparsity alone) |\n")


def _strip_notes(stage_facts: dict) -> str:
    """Model-card lines for weights that did not come from the checkpoint (strict: false)."""
    lines = []
    for facts in stage_facts.values():
        filled = facts.get("from_builder") or []
        if filled:
            lines.append(f"- **Not from the checkpoint**: {len(filled)} parameter(s) kept the builder's "
                         f"initialisation (`source.strict: false`, `allow_missing`): {', '.join(filled)}.")
    return "\n".join(lines)


def _quantization_section(row: dict) -> str:
    """How the released model was quantized, what stayed in float and why (empty if not INT8)."""
    from release.gate import quantization, quantize_facts

    q = quantize_facts(row)
    if q is None:
        return ""
    lines = ["## Quantization", quantization(row), ""]
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
        lines += [f"| {c['fallback_groups']} | {c['float_nodes']} | {c['map']:.4f} | {c['bytes']} | {c['latency_ms']:.2f} |"
                  for c in tuned["curve"]]
        lines.append("")
    return "\n".join(lines) + "\n"


def _card(report: dict, lock: dict) -> str:
    name = report["selected"]
    row = report["variants"][name]
    lat = row["latency"]
    pipeline = " -> ".join(
        s["stage"] + (f"({', '.join(f'{k}={v}' for k, v in s['params'].items())})" if s["params"] else "")
        for s in row["stages"])
    checks = "\n".join(f"| {c['label']} | {c['value']:.4g} {c['unit']} | {'<=' if c['direction'] == 'max' else '>='} "
                       f"{c['limit']:.4g} | {c['margin']:+.4g} | {'pass' if c['pass'] else 'FAIL'}"
                       f"{' (' + c['reason'] + ')' if c.get('reason') else ''} |"
                       for c in row["checks"]) or "| (no budgets) | | | | |"
    return f"""# {report['name']} {report['version']} — model card

Variant **{name}**, selected by `{report['select']}` among {len(report['variants'])} variants.
Pipeline: `{pipeline}`. Fingerprint `{row['fingerprint'][:16]}`.

## Figures (measured on `model.onnx` in this folder)
| figure | value |
|---|---|
| size | {row['size_mb']:.3f} MB ({row['bytes']} bytes) |
| latency p50 / p90 | {lat['p50_ms']:.2f} / {lat['p90_ms']:.2f} ms ({lat['runs']} runs, CV {lat['cv']:.2f}) |
| COCO mAP@[.5:.95] / mAP@.5 | {row['map']:.4f} / {row['map50']:.4f} |
| parameters | {row['parameters']} |
| multiply-accumulates per image | {f"{row['macs'] / 1e6:.1f} M" if row.get('macs') else 'not counted'} |
{_sparsity_row(row)}
Latency provenance: **{lat['provenance']}** — {report['latency_provenance']}.
{('Note: ' + lat['note']) if lat.get('note') else ''}

{_quantization_section(row)}## Budgets ({report['target']['name']})
| budget | figure | limit | margin | result |
|---|---|---|---|---|
{checks}

## Provenance
{_strip_notes(row.get('stage_facts', {})) + chr(10) if _strip_notes(row.get('stage_facts', {})) else ''}- Source checkpoint `{lock['source']['checkpoint']}` (sha256 `{lock['source']['sha256'][:16]}…`), format
  `{lock['source']['format']}`, trusted pickle loading: **{lock['source']['trusted']}**.
- Evaluated on `{lock['data'].get('eval', {}).get('annotations', '?')}`.
- Tools: {', '.join(f'{k} {v}' for k, v in lock['tools'].items())}.
- Full hashes in `release.lock`.
"""


def publish(report: dict, job: dict) -> dict:
    from release import manifest as manifests

    manifest = manifests.load(Path(job["manifest"]), Path(job["root"]))
    name = report["selected"]
    row = report["variants"][name]
    source = Path(job["root"]) / row["artifact"]  # report paths are relative to the project root
    hashes = HashCache(Path(job["hash_cache"]))
    dest = Path(job["release_dir"])
    with atomic_dir(dest) as tmp:
        shutil.copyfile(source, tmp / "model.onnx")
        lock = _lock(report, job, manifest, hashes, tmp / "model.onnx")
        write_json(tmp / "metrics.json", {"name": report["name"], "version": report["version"], "variant": name,
                                          **{k: row[k] for k in ("size_mb", "bytes", "latency_ms", "latency_p90_ms",
                                                                 "map", "map50", "parameters", "checks", "latency")},
                                          "macs": row.get("macs"), "zipped_mb": row.get("zipped_mb")})
        write_json(tmp / "release.lock", lock)
        write_text(tmp / "MODEL_CARD.md", _card(report, lock))
    hashes.save()
    return {"published": relative(dest, Path(job["root"])), "variant": name, "model_sha256": lock["model_sha256"]}
