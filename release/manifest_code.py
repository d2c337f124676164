"""The user's code a manifest names (`model.builder`, `model.adapter`), checked when it loads: the
module is there, it imports (an exception inside it is one line with the user's file:line), the
attribute exists (did you mean?), the builder is callable, and the adapter is a class that fits the
`Adapter` protocol (release/adapter.py, as release/usercode.py's load_adapter checks it) with
model.adapter_kwargs. A manifest is loaded only when the plan is made, never on a no-op build; user
code not yet imported is imported in a child process, so that making a plan loads no torch.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from release.errors import ReleaseError

if TYPE_CHECKING:
    from release.manifest import ModelSpec
    from release.manifest_problems import _Problems


def _check_user_code(model: ModelSpec, root: Path, problems: _Problems) -> None:
    """model.builder and model.adapter, each problem located at its field.

    In a light process (no torch loaded, the user's modules not imported yet) the code is checked
    in a child process: it may import torch, and making a plan (which loads the manifest) keeps the
    doit process light; the model check imports it when it runs. A check made once in a process is
    not made again for the same code (the model check loads the manifest again right after the
    plan was made)."""
    present = []
    for field in ("builder", "adapter"):
        spec = getattr(model, field)
        module = spec.partition(":")[0]
        _forget_stale(module, root)
        if _module_missing(spec, root):
            problems.add(("model", field), f"no module '{module}' can be imported here or from the project "
                                           f"folder {root}. Check the spelling ('package.module:name') and "
                                           f"that the package is installed.")
        else:
            present.append(field)
    if not present:
        return
    with _on_path(root):
        key = (model.model_dump_json(), tuple(present), _stamps(model))  # the files found name the code
    if key not in _CHECKED:
        # A process that holds torch already (the model check, a test run) has nothing to keep light.
        light = "torch" not in sys.modules and not all(getattr(model, f).partition(":")[0] in sys.modules
                                                       for f in present)
        _CHECKED[key] = _in_child(model, root, present) if light else _in_process(model, root, present)
    for loc, message in _CHECKED[key]:
        problems.add(tuple(loc), message)


_CHECKED: dict[tuple, list] = {}
_MARK = "RELEASE-USER-CODE-PROBLEMS:"
_CHILD = ("import json, sys\n"
          "payload = json.loads(sys.argv[1])\n"
          "sys.path[:] = payload['path']\n"
          "from release.manifest_code import _child\n"
          "print(_child(payload), flush=True)\n")


def _stamps(model: ModelSpec) -> tuple:
    """Size and mtime of the builder's and adapter's source files: an edit is checked anew."""
    from release.usercode import module_file

    found = []
    for spec in (model.builder, model.adapter):
        path = module_file(spec)
        try:
            st = path.stat() if path is not None else None
        except OSError:
            st = None
        found.append((str(path), st.st_mtime_ns, st.st_size) if st else None)
    return tuple(found)


def _in_child(model: ModelSpec, root: Path, fields: list[str]) -> list:
    """_in_process in a fresh interpreter with this one's sys.path, its answer read back as JSON; a
    child that dies (a crash while importing) is one problem too."""
    import json
    import subprocess

    payload = {"model": model.model_dump(mode="json"), "root": str(root), "fields": fields, "path": sys.path}
    try:
        done = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(payload)], cwd=str(root),
                              capture_output=True, text=True, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [(("model", fields[0]), f"checking {getattr(model, fields[0])} failed: {exc}.")]
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(_MARK):
            return json.loads(line[len(_MARK):])
    said = [line for line in done.stderr.splitlines() if line.strip()]
    last = said[-1].strip() if said else f"exit status {done.returncode}"
    return [(("model", fields[0]), f"importing {getattr(model, fields[0]).partition(':')[0]} to check it "
                                   f"ended the process ({last}). Fix the module so that it imports.")]


def _child(payload: dict) -> str:
    """The child's side of _in_child: one marked line of JSON."""
    import json

    from release.manifest import ModelSpec

    model = ModelSpec.model_validate(payload["model"])
    return _MARK + json.dumps(_in_process(model, Path(payload["root"]), payload["fields"]))


def _in_process(model: ModelSpec, root: Path, fields: list[str]) -> list[tuple[tuple, str]]:
    """Import each field's module here (the project folder first on sys.path), find the attribute,
    and check the builder is callable and the adapter fits the protocol with its kwargs."""
    from release import adapter as protocol
    from release.usercode import import_object, load_adapter

    found = []
    for field in fields:
        spec = getattr(model, field)
        with _on_path(root):
            try:
                obj = import_object(spec, f"model.{field}")
                if field == "adapter":
                    load_adapter(model)
            except ReleaseError as exc:
                found.append(adapter_problem(exc, field))
                continue
        if field == "builder" and not callable(obj):
            found.append((("model", "builder"), f"{spec} is {protocol.kind_of(obj)}, not callable: name the "
                                                f"function (or class) that returns the nn.Module, called as "
                                                f"builder(**model.kwargs)."))
    return found


def adapter_problem(exc: ReleaseError, field: str = "adapter") -> tuple[tuple, str]:
    """(location, message) of a ReleaseError from import_object or load_adapter: at
    model.adapter_kwargs when the kwargs are at fault, else at `field`; the message without the
    field's name, which the location already gives."""
    message = str(exc)
    if field == "adapter" and message.startswith("model.adapter_kwargs"):
        field = "adapter_kwargs"
    for prefix in (f"model.{field}: ", f"model.{field} "):
        message = message.removeprefix(prefix)
    return ("model", field), message


@contextlib.contextmanager
def _on_path(root: Path):
    """The project folder first on sys.path while user code is imported, as `doit` (which runs
    there) and `release check --root` have it; left as it was afterwards."""
    folder = str(Path(root).resolve())
    if folder in sys.path:
        yield
        return
    sys.path.insert(0, folder)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def _forget_stale(module: str, root: Path) -> None:
    """Drop an imported top-level module (and its submodules) that a fresh import would no longer
    find where it came from: a project folder's module cached in this process from another project
    (tests make many), or deleted since. Otherwise a manifest would be checked against stale code."""
    top = module.partition(".")[0]
    cached = sys.modules.get(top)
    origin = getattr(getattr(cached, "__spec__", None), "origin", None)
    if cached is None or origin in (None, "built-in", "frozen"):
        return
    del sys.modules[top]
    try:
        with _on_path(root):
            fresh = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        fresh = None
    finally:
        sys.modules[top] = cached
    if fresh is not None and fresh.origin == origin:
        return
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]


def _module_missing(spec: str, root: Path) -> bool:
    """True when the module of 'package.module:name' can be found neither on sys.path nor in the
    project folder (found, not imported): `doit` runs there with it on sys.path, and so does
    `release check --root`."""
    from importlib.machinery import PathFinder

    name = spec.partition(":")[0]
    try:
        if importlib.util.find_spec(name) is not None:
            return False
    except (ImportError, ValueError):
        pass
    except Exception:  # noqa: BLE001 - a parent package raised as it was imported: the import reports it
        return False
    parts, paths = name.split("."), [str(root)]
    for i, part in enumerate(parts):
        found = PathFinder.find_spec(part, paths)
        if found is None:
            return True
        paths = found.submodule_search_locations
        if paths is None:
            return i != len(parts) - 1
    return False
