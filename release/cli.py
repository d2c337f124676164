"""`release` command line: checks that need no build (check a manifest against its model, show its plan),
and `release init`, which makes a folder a release project."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from release.errors import ReleaseError


def _project_on_path(root: Path) -> None:
    """Import user code (a builder, an adapter) from the project folder first, as `doit release`
    does: doit puts the dodo.py folder and the folder it runs in on sys.path."""
    folder = str(root.resolve())
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)


def _check(args) -> int:
    from release import check, manifest, planner

    root = Path(args.root)
    _project_on_path(root)
    loaded = manifest.load(manifest.resolve(args.manifest, root), root)
    plan = planner.build(loaded, root)
    # Builds the model whenever a stage uses it (model.kwargs against the builder), then prune
    # patterns, a student's outputs, an adapter's loss.
    check.run(loaded)
    print(f"{loaded.path}: valid (schema {loaded.schema_version}); {len(loaded.pipelines)} variants, "
          f"{len(plan.nodes)} stage tasks after sharing equal prefixes")
    for variant, chain in plan.chains.items():
        steps = " -> ".join(plan.nodes[fp].task_name for fp in chain)
        print(f"  {variant}: {steps}")
    return 0


def _inspect(args) -> int:
    import json

    from release import inspection

    fmt, trusted, weights, drop = args.format, args.trusted, "auto", []
    if args.manifest:
        from release import manifest

        root = Path(args.root)
        _project_on_path(root)  # a trusted pickle may name classes of the project's own modules
        source = manifest.load(manifest.resolve(args.manifest, root), root).source
        fmt, trusted, weights, drop = source.format, source.trusted or args.trusted, source.weights, source.drop
    info = inspection.inspect(Path(args.checkpoint), fmt=fmt, trusted=trusted, weights=weights, drop=drop)
    print(json.dumps(info, indent=2) if args.json else inspection.render(info))
    return 0


def _schema(args) -> int:
    from release import schema

    return schema.main(["--write"] if args.write else [])


def _add_init(sub) -> None:
    from release import init

    made = sub.add_parser("init", help="make this folder a release project: dodo.py, recipes/NAME.yaml, .gitignore",
                          description="Writes dodo.py (one line), a commented manifest recipes/NAME.yaml from the "
                                      "flags (or --template demo) and a .gitignore for artifacts/; never overwrites.")
    init.configure(made)
    made.set_defaults(func=init.run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="release", description="model-release build system")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="check a manifest without building anything")
    check.add_argument("manifest", help="a path, or a name under recipes/")
    check.add_argument("--root", default=".", help="project root that manifest paths are relative to")
    check.set_defaults(func=_check)
    look = sub.add_parser("inspect", help="what a checkpoint holds and what stripping it would save (read-only)")
    look.add_argument("checkpoint")
    look.add_argument("--manifest", help="take format, weights copy, drop patterns and trust from this manifest")
    look.add_argument("--root", default=".", help="project root for --manifest")
    look.add_argument("--format", default="auto", choices=["auto", "state_dict", "lightning", "mmdet", "yolov5", "safetensors"])
    look.add_argument("--trusted", action="store_true",
                      help="allow full pickle loading (runs code from the file; only for files you trust)")
    look.add_argument("--json", action="store_true", help="print the findings as JSON")
    look.set_defaults(func=_inspect)
    schema = sub.add_parser("schema", help="print the manifest's JSON Schema (for editor completion and checking)",
                            description="Print the manifest's JSON Schema: `release schema > manifest.schema.json`, "
                                        "then start a manifest with `# yaml-language-server: "
                                        "$schema=manifest.schema.json` (path relative to the manifest).")
    schema.add_argument("--write", action="store_true",
                        help="regenerate this source checkout's copies (docs/ and the package's) instead")
    schema.set_defaults(func=_schema)
    _add_init(sub)
    args = parser.parse_args(argv)
    return _run(args)


def _run(args) -> int:
    """A subcommand, with the exit codes of docs/ci.md: 3 for a mistake (one message, and GitHub
    annotations in Actions), 2 for a crash (with its traceback)."""
    from release import ci
    from release.errors import CRASH, MISTAKE

    try:
        return args.func(args)
    except ReleaseError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        ci.annotate(ci.error_annotations(exc))
        return MISTAKE
    except Exception:  # noqa: BLE001 - a bug: its traceback, and the code that says so
        import traceback

        traceback.print_exc()
        return CRASH


if __name__ == "__main__":
    sys.exit(main())
