"""INT8 for a detector, three ways side by side on the demo, in one run: naive static INT8
(keep_float: none), keep_float: auto (decode tail in float), and sensitivity-tuned INT8
(auto + max_map_drop), with the fp32 model they came from: size, latency and mAP on data.eval.

    python benchmarks/bench_int8.py [--root .] [--manifest rpi_detector.yaml] [--format qdq] [--drop 0.01]
                                    [--threads N] [--repeat 3]

Needs a built demo (`doit release manifest=rpi_detector.yaml` in --root): reads the ONNX of the
recipe's fp32 variant. Quantizes it with the quantize stage (calibration split, MinMax),
measures latency with the local runner at the target's thread count (a fresh process per model,
medians of --repeat measurements) and mAP through ONNX Runtime with the adapter.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", type=Path)
    parser.add_argument("--manifest", default="rpi_detector.yaml")
    parser.add_argument("--format", default="qdq", choices=["qdq", "qoperator"])
    parser.add_argument("--drop", default=0.01, type=float)
    parser.add_argument("--repeat", default=3, type=int)
    parser.add_argument("--threads", default=None, type=int, help="latency threads (default: the target's)")
    args = parser.parse_args()
    root = args.root.resolve()

    from release import manifest, planner
    from release.measure import accuracy, latency, size
    from release.stages import quantize
    from release.stages.base import StageContext

    loaded = manifest.load(manifest.resolve(args.manifest, root), root)
    plan = planner.build(loaded, root)
    node = plan.final_node("fp32") if "fp32" in plan.final else None
    exported = node.output if node is not None and node.stage == "export" and node.output.is_file() else None
    if exported is None:
        print(f"no fp32 export in {root}: run `doit release manifest={args.manifest}` there first", file=sys.stderr)
        return 2
    ways = {"naive INT8 (keep_float: none)": {"keep_float": "none"},
            "keep_float: auto": {},
            f"auto + max_map_drop {args.drop:g}": {"max_map_drop": args.drop}}
    settings = {"warmup": 10, "runs": 50, "max_cv": 10.0, "rounds": 1}
    device = {**loaded.device, "threads": args.threads or loaded.device["threads"]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {"fp32 (export)": (exported, None)}
        for label, extra in ways.items():
            out = Path(tmp) / str(len(models))
            out.mkdir()
            ctx = StageContext(input=exported, out_dir=out, params=quantize.Params(format=args.format, **extra),
                               manifest=loaded, log=lambda m: None, spec_produces="onnx")
            models[label] = (ctx.output, quantize.run(ctx))
        for label, (path, facts) in models.items():
            p50 = statistics.median(latency.measure(path, device, settings)["p50_ms"]
                                    for _ in range(args.repeat))
            mean_ap = accuracy.evaluate(path, loaded.model, loaded.data.eval)["map"]
            kept = "" if facts is None else str(facts["nodes_kept_float"])
            rows.append((label, size.measure(path)["size_mb"], p50, mean_ap, kept))
    base = rows[0]
    print(f"{loaded.name}: {args.format}, MinMax calibration, latency {device['threads']} threads "
          f"(local runner, median of {args.repeat}), mAP on data.eval")
    print(f"{'model':34} {'MB':>6} {'p50 ms':>7} {'vs fp32':>7} {'mAP':>6} {'drop':>7} {'float nodes':>11}")
    for label, mb, p50, mean_ap, kept in rows:
        print(f"{label:34} {mb:6.3f} {p50:7.2f} {p50 / base[2]:6.2f}x {mean_ap:6.3f} {base[3] - mean_ap:+7.3f} {kept:>11}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
