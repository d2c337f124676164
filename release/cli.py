"""`release` command line: checks that need no build (validate a manifest against its model, show its plan)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from release.errors import ReleaseError


def _validate(args) -> int:
    from release import graph, manifest, preflight

    root = Path(args.root)
    loaded = manifest.load(manifest.resolve(args.manifest, root), root)
    plan = graph.build(loaded, root)
    if plan.preflight:
        preflight.check(loaded)  # prune patterns, a student's outputs, an adapter's loss: needs the model
    print(f"{loaded.path}: valid (schema {loaded.schema_version}); {len(loaded.pipelines)} variants, "
          f"{len(plan.nodes)} stage tasks after sharing equal prefixes")
    for variant, chain in plan.chains.items():
        steps = " -> ".join(plan.nodes[fp].task_name for fp in chain)
        print(f"  {variant}: {steps}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="release", description="model-release build system")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("validate", help="check a manifest without building anything")
    check.add_argument("manifest", help="a path, or a name under recipes/")
    check.add_argument("--root", default=".", help="project root that manifest paths are relative to")
    check.set_defaults(func=_validate)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ReleaseError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
