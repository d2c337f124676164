"""Fine-tuning and distillation cost: seconds per training step, and the build time of the pruned
and distilled variants of the demo.

    python benchmarks/bench_compress.py [--root .] [--steps 20]

Needs a built demo (`doit release manifest=rpi_detector.yaml` in --root). Times, in this one run,
`--steps` optimizer steps of: fine-tuning the stripped source model, fine-tuning the channel-pruned
model of the recipe, and distilling the recipe's student against the source; prints seconds per
step and each as a ratio to the first. Then reads the build's stage records for the time each
pruned/distilled variant took to build (its own stages, not the shared strip) and measure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def _time_steps(model, data, params, loss_fn, steps: int) -> float:
    from release.training import fit

    params = params.model_copy(update={"steps": steps + 2, "warmup_steps": 0, "checkpoint_every": 10_000})
    started = time.perf_counter()
    fit(model, data, params, loss_fn)
    return (time.perf_counter() - started) / (steps + 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=".", type=Path)
    parser.add_argument("--manifest", default="rpi_detector.yaml")
    parser.add_argument("--steps", default=20, type=int)
    args = parser.parse_args()
    root = args.root.resolve()

    from release import manifest, planner
    from release.usercode import load_adapter
    from release.weights import load_weights
    from release.training import load_train_set

    loaded = manifest.load(manifest.resolve(args.manifest, root), root)
    plan = planner.build(loaded, root)
    report_path = plan.release_dir / "report.json"
    if not report_path.is_file():
        print(f"no build in {root}: run `doit release manifest={args.manifest}` there first", file=sys.stderr)
        return 2
    report = json.loads(report_path.read_text())
    nodes = {n.stage: n for n in plan.nodes.values()}
    missing = [s for s in ("strip", "prune", "finetune", "distill") if s not in nodes or not nodes[s].output.is_file()]
    if missing:
        print(f"the build has no {', '.join(missing)} output: add pruned/distilled variants and build", file=sys.stderr)
        return 2

    adapter = load_adapter(loaded.model)
    data = load_train_set(loaded.data.train, adapter)
    source, pruned = nodes["strip"].output, nodes["prune"].output
    ft = nodes["finetune"]
    from release.stages import distill, finetune

    ft_params = finetune.Params.model_validate(ft.params_set)
    d_params = distill.Params.model_validate(nodes["distill"].params_set)

    def gt(net, x, targets):
        return adapter.loss(net(x), targets)

    rows = [("fine-tune, source model", _time_steps(load_weights(loaded.model, source), data, ft_params, gt, args.steps)),
            ("fine-tune, channel-pruned", _time_steps(load_weights(loaded.model, pruned), data, ft_params, gt, args.steps))]
    import torch

    teacher = load_weights(loaded.model, source).eval()
    for q in teacher.parameters():
        q.requires_grad_(False)
    student = distill.build_student(d_params, loaded)

    def kd(net, x, targets):
        out = net(x)
        with torch.no_grad():
            ref = teacher(x)
        return {"loss": adapter.distill_loss(out, ref)["loss"] + adapter.loss(out, targets)["loss"]}

    rows.append(("distill, student + teacher", _time_steps(student, data, d_params, kd, args.steps)))
    base = rows[0][1]
    print(f"seconds per training step (batch {ft_params.batch_size}, {args.steps} steps each, one run):")
    for name, sec in rows:
        print(f"  {name:<30} {sec:.3f} s/step   {sec / base:.2f}x")

    print("\nbuild time of the variants (their own stages; strip is shared):")
    records = {}
    for node in plan.nodes.values():
        if node.record.is_file():
            records[node.fingerprint] = json.loads(node.record.read_text())
    for variant, chain in plan.chains.items():
        stages = [plan.nodes[fp].stage for fp in chain]
        if not {"prune", "finetune", "distill"} & set(stages):
            continue
        own = [(records[fp]["stage"], records[fp]["seconds"]) for fp in chain[1:] if fp in records]
        node = plan.final_node(variant)
        map_file = plan.map_file(node)
        measured = json.loads(map_file.read_text()).get("seconds", 0.0) if map_file.is_file() else 0.0
        total = sum(s for _, s in own)
        detail = ", ".join(f"{s} {sec:.1f} s" for s, sec in own)
        print(f"  {variant:<16} {total:6.1f} s  ({detail}; mAP measurement {measured:.1f} s)")
    row = report["variants"]
    print("\nfigures from the build's report:")
    for variant in plan.chains:
        r = row.get(variant)
        if r:
            print(f"  {variant:<16} mAP {r['map']:.3f}  MACs {r['macs'] / 1e6:6.1f} M  size {r['size_mb']:.3f} MB  "
                  f"latency {r['latency_ms']:.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
