"""`release init`: make a folder (a user's own repository) a release project.

It writes three things, relative to `--root` (default: the current folder):

- `dodo.py`, the one line `from release.dodo import *` (the doit entry point ships in the package);
- `recipes/<name>.yaml`, a commented manifest built from the flags (`--checkpoint`, `--builder`,
  `--adapter`, `--input-shape`, `--data`, `--target`, `--budget`), or the demo's (`--template demo`);
- `.gitignore` with `artifacts/` (everything a build writes); an existing .gitignore is kept and
  only gets that line appended when it does not already ignore artifacts/.

It never overwrites: when dodo.py or the manifest exists, it writes nothing at all and says which
file is in the way and what to do. The manifest is validated (release.manifest.load) before
anything is written when the paths it names exist; when the checkpoint or the data are not there
yet, that is a warning, and `release check NAME` validates it later. How `--data` reads a dataset
folder is in release/init_data.py.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

from release.errors import ReleaseError

DODO = "from release.dodo import *\n"
IGNORE = "artifacts/"
TEMPLATES = ("demo",)
SPLIT_NOTES = {"train": "training split (finetune, distill); not read by the variants below",
               "calibration": "images that calibrate static INT8 (labels are not read)",
               "tuning": "labelled split for quantize's max_map_drop search",
               "eval": "every variant's mAP is measured here (COCO mAP@[.5:.95])"}
BUDGET_HINTS = {"size_mb": ("100.0", "max size of the model file, MB = 10^6 bytes"),
                "latency_ms": ("20.0", "max median latency on the target"),
                "min_map": ("0.3", "min mAP@[.5:.95] on data.eval")}


def configure(parser) -> None:
    """The `init` subcommand's arguments (release/cli.py registers it)."""
    parser.add_argument("--root", default=".", help="the project folder to write in (default: here)")
    parser.add_argument("--name", help="release name: recipes/NAME.yaml and artifacts/NAME/")
    parser.add_argument("--template", choices=TEMPLATES, help="demo: the shapes detector demo, builds with no inputs")
    parser.add_argument("--checkpoint", help="the trained checkpoint to release (a path)")
    parser.add_argument("--builder", help="package.module:function returning the nn.Module")
    parser.add_argument("--adapter", help="package.module:Class with pre/post-processing (release/adapter.py)")
    parser.add_argument("--input-shape", help="N,C,H,W of the model input (e.g. 1,3,640,640), or H,W")
    parser.add_argument("--data", action="append", metavar="DATASET|SPLIT=PATH",
                        help="a YOLO data.yaml, a folder with images/ and labels/ (YOLO) or annotations.json "
                             "and images/ (COCO), a folder of split folders, or SPLIT=PATH (repeatable)")
    parser.add_argument("--names", help="class names in label order, comma-separated (YOLO without data.yaml)")
    parser.add_argument("--target", default="host", help="device profile: rpi4, rpi5, jetson-orin-cpu, x86-avx2, "
                                                         "host (default)")
    parser.add_argument("--budget", action="append", default=[], metavar="KEY=VALUE",
                        help="a budget, e.g. size_mb=5, latency_ms=20, min_map=0.3 (repeatable)")


def run(args) -> int:
    root = Path(args.root).resolve()
    if not root.is_dir():
        raise ReleaseError(f"--root {args.root}: no such folder.")
    name, text = _manifest(args, root)
    manifest = root / "recipes" / f"{name}.yaml"
    _refuse_existing(root, [root / "dodo.py", manifest])
    warning = _validate(text, manifest, root)
    _write_new(root / "dodo.py", DODO)
    _write_new(manifest, text)
    ignored = _ignore_artifacts(root / ".gitignore")
    print(f"wrote {_shown(root / 'dodo.py')}: {DODO.strip()}")
    print(f"wrote {_shown(manifest)}: the manifest (`release check {name}` checks it)")
    print(f"{ignored} {_shown(root / '.gitignore')}: {IGNORE}")
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    print(f"next: doit release manifest={name}")
    return 0


# ---------------------------------------------------------------- the manifest

def _manifest(args, root: Path) -> tuple[str, str]:
    """(name, YAML text) from the flags or the template."""
    if args.template:
        given = [flag for flag in ("checkpoint", "builder", "adapter", "input_shape", "data", "names")
                 if getattr(args, flag)]
        if given:
            raise ReleaseError(f"--template {args.template} takes only --name (and --root); drop "
                               f"{', '.join('--' + g.replace('_', '-') for g in given)}, or drop --template.")
        from release.models.demo.recipe import MANIFEST

        name = _name(args.name or "rpi_detector")
        return name, re.sub(r"^name: .*$", f"name: {name}", MANIFEST, count=1, flags=re.M)
    missing = [flag for flag in ("name", "checkpoint", "builder", "adapter", "input_shape", "data")
               if not getattr(args, flag)]
    if missing:
        raise ReleaseError(f"release init needs {', '.join('--' + m.replace('_', '-') for m in missing)} "
                           f"(or --template demo for the demo): see `release init --help`.")
    from release import init_data

    name, shape, budgets = _name(args.name), _shape(args.input_shape), _budgets(args.budget)
    names = [n.strip() for n in args.names.split(",") if n.strip()] if args.names else None
    return name, _text(args, shape, init_data.from_args(args.data, root, names), budgets)


def _text(args, shape: list[int], data, budgets: dict) -> str:
    flow = _flow  # YAML flow style: {a: 1}, [1, 2], a plain or quoted scalar
    lines = [
        f"# The release of {args.name}, written by `release init`. `release check {args.name}` validates it",
        "# without building; `doit release manifest=" + args.name + "` builds it. Paths are relative to the",
        "# project folder (where dodo.py is). Every field: `python -m release.docgen` (docs/manifest.md).",
        "schema_version: 1",
        f"name: {args.name}",
        "version: 0.1.0             # the folder artifacts/<name>/release/<version>/; a published version",
        "                           # never changes: bump it for the next release",
        "",
        "source:",
        _noted(f"  checkpoint: {flow(args.checkpoint)}", "the trained checkpoint to release"),
        "  format: auto             # auto | state_dict | lightning | mmdet | yolov5 | safetensors",
        "  weights: auto            # auto: the EMA copy when the checkpoint holds one (ema | raw)",
        "  drop: []                 # glob patterns of training-only parameters, e.g. [\"aux_head.*\"]",
        "  trusted: false           # true allows full pickle loading: it runs code from the file",
        "",
        "model:",
        _noted(f"  builder: {args.builder}", "returns the nn.Module"),
        "  kwargs: {}               # passed to the builder",
        _noted(f"  adapter: {args.adapter}", "pre/post-processing (and the loss, for finetune and distill)"),
        "  adapter_kwargs: {}       # passed to the adapter after input_shape",
        _noted(f"  input_shape: {flow(shape)}", "N, C, H, W of the exported model's input"),
        "",
        f"data:                      # from {data.described}",
    ]
    for split, entry in data.splits.items():
        lines += [f"  # {SPLIT_NOTES[split]}", f"  {split}: {flow(entry)}"]
    lines += ["", "target:", _noted(f"  name: {args.target}", "device profile: rpi4, rpi5, jetson-orin-cpu, "
                                                          "x86-avx2, host, or your own under targets:"),
              _noted("  runner: local", "measured on this build host (the figures say so); ssh://user@device "
                                        "measures on the device"), ""]
    lines += _budget_lines(budgets)
    lines += [
        "",
        "variants:                  # each a pipeline of stages; equal prefixes are built once",
        "  fp32: [strip, export]",
        "  int8: [strip, export, {quantize: {mode: static, format: qdq}}]",
        "  # fp16: [strip, export, fp16]",
        "  # int8_dynamic: [strip, export, {quantize: {mode: dynamic}}]",
        "  # pruned: [strip, {prune: {method: channel, amount: 0.3}}, {finetune: {steps: 500}}, export]",
        "  #   (finetune needs data.train and the adapter's loss)",
        "",
        "select: best_map           # of the variants within budget: best_map | smallest | fastest",
    ]
    return "\n".join(lines) + "\n"


def _budget_lines(budgets: dict) -> list[str]:
    """The budget section: the given budgets, the others as comments (a loose size budget when none
    is given, so the gate has something to check)."""
    lines = ["budget:                    # a variant ships only within every budget: measure once, then tighten"]
    for key, value in budgets.items():
        note = BUDGET_HINTS.get(key, (None, ""))[1]
        lines.append(_noted(f"  {key}: {_flow(value)}", note))
    for key, (example, note) in BUDGET_HINTS.items():
        if key in budgets:
            continue
        if not budgets and key == "size_mb":
            lines.append(_noted(f"  {key}: {example}", f"{note} (a loose start)"))
        else:
            lines.append(_noted(f"  # {key}: {example}", note))
    return lines


def _noted(line: str, note: str) -> str:
    """A line with its comment in the manifest's comment column."""
    return f"{line.ljust(26)} # {note}" if note else line


def _flow(value) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, sort_keys=False).strip()
    return text[:-4].rstrip() if text.endswith("\n...") else text


def _name(value: str) -> str:
    from release.manifest import FOLDER_NAME, FOLDER_NAME_RULE

    if not re.match(FOLDER_NAME, value) or ".." in value or len(value) > 128:
        raise ReleaseError(f"--name {value!r}: it names recipes/NAME.yaml and artifacts/NAME/, so it must be "
                           f"{FOLDER_NAME_RULE}.")
    return value


def _shape(value: str) -> list[int]:
    parts = [p for p in re.split(r"[,x\s]+", value.strip()) if p]
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 2:
        dims = [1, 3, *dims]
    if len(dims) != 4 or any(d <= 0 for d in dims):
        raise ReleaseError(f"--input-shape {value!r}: give N,C,H,W (e.g. 1,3,640,640) or H,W, positive integers.")
    return dims


def _budgets(values: list[str]) -> dict:
    import yaml

    budgets = {}
    for value in values:
        key, sep, number = value.partition("=")
        if not sep or not re.match(r"^[a-z_]+$", key.strip()):
            raise ReleaseError(f"--budget {value!r}: give KEY=VALUE, e.g. --budget size_mb=5 --budget min_map=0.3.")
        budgets[key.strip()] = yaml.safe_load(number)
    return budgets


# ---------------------------------------------------------------- writing

def _refuse_existing(root: Path, paths: list[Path]) -> None:
    taken = [p for p in paths if p.exists() or p.is_symlink()]
    if not taken:
        return
    fixes = []
    for path in taken:
        if path.name == "dodo.py":
            fixes.append(f"{path} exists: add the line `{DODO.strip()}` to it yourself, or move it away")
        else:
            fixes.append(f"{path} exists: choose another --name, or move the file away")
    raise ReleaseError(f"release init writes no file that exists, so it wrote nothing: {'; '.join(fixes)}.")


def _write_new(path: Path, text: str) -> None:
    """Write a file that must not exist: written beside it, then linked into place (never replacing
    one that appeared meanwhile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.link(tmp, path)
    except FileExistsError:
        raise ReleaseError(f"{path} appeared while release init ran; it was left as it is.") from None
    finally:
        os.unlink(tmp)


def _ignore_artifacts(path: Path) -> str:
    """'wrote', 'appended to' or 'kept' (when it already ignores artifacts/)."""
    if not path.exists():
        _write_new(path, f"{IGNORE}\n")
        return "wrote"
    text = path.read_text(encoding="utf-8")
    if any(line.strip() in ("artifacts", "artifacts/", "/artifacts", "/artifacts/") for line in text.splitlines()):
        return "kept"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(("" if not text or text.endswith("\n") else "\n") + f"{IGNORE}\n")
    return "appended to"


def _shown(path: Path) -> str:
    """A path as the user typed it: relative to the current folder when inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- validation

def _validate(text: str, final: Path, root: Path) -> str | None:
    """Load the manifest as it will be written (a ManifestError stops init before it writes); a
    warning instead when a path it names does not exist yet."""
    import yaml

    doc = yaml.safe_load(text)
    named = [doc["source"]["checkpoint"]] + [v for split in doc["data"].values() for k, v in split.items()
                                             if k in ("annotations", "images") or (k == "names" and isinstance(v, str))]
    missing = [str(p) for p in named if not (root / p).exists()]
    if missing and not doc.get("generate"):
        return (f"{_shown(final)} is not checked yet: {', '.join(missing)} "
                f"{'does' if len(missing) == 1 else 'do'} not exist. Once there, `release check {doc['name']}` "
                f"checks it.")
    from release import manifest

    folder = str(root)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # the builder and adapter may be the project's own modules, as under doit
    with tempfile.TemporaryDirectory() as tmp:
        draft = Path(tmp) / final.name
        draft.write_text(text, encoding="utf-8")
        try:
            manifest.load(draft, root)
        except ReleaseError as exc:
            raise ReleaseError(f"{str(exc).replace(str(draft), str(final))}\nNothing was written: fix the flags "
                               f"and run release init again.") from None
    return None
