"""Generators: tasks that make a build's inputs (a dataset, a trained checkpoint) before anything
reads them, from a manifest's `generate:` section (name -> generator, in order).

A generator is a function marked with @generator, named by `generate.<name>.run`
('package.module:function'). The build calls it as

    fn(out: Path, **kwargs)            # plus **model.kwargs when it is marked model_kwargs=True

where `out` is a fresh temporary path (an empty folder for writes="folder", an absent file path for
writes="file") that becomes `generate.<name>.out` in one rename when the function returns, with an
ownership mark (release/ownership.py), so a build never replaces what it did not make. It returns a
summary (printed in the build log). The mark declares what joins the generator's fingerprint beside
its name, `run`, kwargs and its own module's source (mirroring a stage's StageSpec):

    code          helper modules whose source decides what it writes
    tools         installed packages (distribution names) whose versions do
    paths         kwargs that are paths, relative to the project root: the build passes them
                  resolved; one inside another generator's `out` needs that generator in `after`
    model_kwargs  it also takes model.kwargs (it trains the manifest's model); they join its
                  fingerprint, and it runs after the model check

A data split or source.checkpoint inside a generator's `out` takes its fingerprint from that
generator, and the tasks that read it wait for the generator's task. The kwargs are validated
against the function's signature when the manifest loads (annotations, with pydantic constraints
through typing.Annotated, and defaults), so a typo is a located manifest error.

This module is light (the planner and manifest loading import it); so must be a generator's module
at import: torch and friends are imported inside the function.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from release.errors import ReleaseError

MARK = "__release_generator__"


@dataclass(frozen=True)
class GeneratorSpec:
    writes: Literal["folder", "file"]
    code: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    model_kwargs: bool = False


def generator(*, writes: Literal["folder", "file"], code: tuple[str, ...] = (), tools: tuple[str, ...] = (),
              paths: tuple[str, ...] = (), model_kwargs: bool = False):
    """Mark a function as a generator (see the module docstring for what each argument means)."""
    if writes not in ("folder", "file"):
        raise ValueError(f"writes={writes!r}: a generator writes a 'folder' or a 'file'")
    spec = GeneratorSpec(writes, tuple(code), tuple(tools), tuple(paths), bool(model_kwargs))

    def mark(fn):
        setattr(fn, MARK, spec)
        return fn

    return mark


def load(run: str, field: str) -> tuple[Callable, GeneratorSpec]:
    """The marked function 'package.module:function' and its spec; a ReleaseError naming `field`
    when it cannot be imported, is not a function taking `out` first, or is not marked."""
    from release.usercode import import_object

    module = run.partition(":")[0]
    try:
        fn = import_object(run, field)
    except ReleaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import; say how
        raise ReleaseError(f"{field}: importing {module} failed: {type(exc).__name__}: {exc}") from None
    spec = getattr(fn, MARK, None)
    if not isinstance(spec, GeneratorSpec):
        raise ReleaseError(f"{field}: {run} is not marked as a generator. A generator is a function decorated "
                           f"with @generator(writes=...) from release.generate, called as fn(out, **kwargs) "
                           f"(docs/extending.md, \"A new generator\").")
    try:
        first = next(iter(inspect.signature(fn).parameters.values()), None)
    except (TypeError, ValueError):
        first = None
    if first is None or first.name != "out" or first.kind not in (first.POSITIONAL_ONLY, first.POSITIONAL_OR_KEYWORD):
        raise ReleaseError(f"{field}: {run} must take the path it writes as its first parameter, named `out`: "
                           f"fn(out, **kwargs).")
    return fn, spec


def kwargs_model(fn: Callable):
    """A pydantic model of the keyword arguments `fn` takes after `out`, from its signature:
    annotations (typing.Annotated constraints included) and defaults; unknown keys are refused
    unless it takes **kwargs."""
    import typing

    from pydantic import ConfigDict, create_model

    params = list(inspect.signature(fn).parameters.values())[1:]
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: take any value
        hints = {}
    fields, extra = {}, "forbid"
    for p in params:
        if p.kind is p.VAR_KEYWORD:
            extra = "allow"
        elif p.kind is not p.VAR_POSITIONAL:
            fields[p.name] = (hints.get(p.name, Any), ... if p.default is p.empty else p.default)
    return create_model(f"{fn.__name__}_kwargs", __config__=ConfigDict(extra=extra, arbitrary_types_allowed=True),
                        **fields)


def owner(path: Path | None, outs: dict[str, Path | None]) -> str | None:
    """The generator whose `out` is `path` or holds it (symlinks followed), or None."""
    if path is None:
        return None
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    for name, out in outs.items():
        if out is not None and resolved.is_relative_to(out.resolve()):
            return name
    return None


def show_progress() -> bool:
    """Whether a generator should draw progress bars: a terminal, or RELEASE_PROGRESS set."""
    return sys.stderr.isatty() or bool(os.environ.get("RELEASE_PROGRESS"))


# ---------------------------------------------------------------- the action

def make(job: dict, log: Callable[[str], None] = print) -> None:
    """Run one generator (the doit action of `generate:<name>`): skip when `out` is already this
    build's for the fingerprint, refuse when it is not the build's, else write it atomically and
    mark it. Every path the manifest reads inside `out` must have been written."""
    from release import ownership
    from release.atomic import atomic_dir, atomic_path

    name, out, fp = job["name"], Path(job["out"]), job["fingerprint"]
    field = f"generate.{name}.out"
    fn, _ = load(job["run"], f"generate.{name}.run")
    kwargs = {**job["kwargs"], **job["model_kwargs"]}
    if job["writes"] == "folder":
        if ownership.owned_folder(out, fp, field):
            log(f"generate.{name}: {out} already made for {fp[:16]}; not made again")
            return
        with atomic_dir(out) as tmp:
            summary = _call(fn, tmp, kwargs, job)
            _expect(tmp, out, job)
            ownership.mark_folder(tmp, fp)
    else:
        if ownership.owned_file(out, fp, field):
            log(f"generate.{name}: {out} already made for {fp[:16]}; not made again")
            return
        ownership.claim_file(out, fp)
        with atomic_path(out) as tmp:
            summary = _call(fn, tmp, kwargs, job)
            if not tmp.is_file():
                raise ReleaseError(f"generate.{name}: {job['run']} returned without writing the file it was given "
                                   f"(writes='file'): it must write `out` itself.")
        ownership.seal_file(out, fp)
    log(f"generate.{name}: {summary}")


def _call(fn: Callable, tmp: Path, kwargs: dict, job: dict) -> Any:
    try:
        return fn(tmp, **kwargs)
    except ReleaseError:
        raise
    except Exception as exc:  # a bug or an unforeseen failure: keep the traceback, add where
        raise RuntimeError(f"generate.{job['name']} ({job['run']}, fingerprint {job['fingerprint'][:16]}) crashed; "
                           f"partial output was discarded") from exc


def _expect(tmp: Path, out: Path, job: dict) -> None:
    """Each path the manifest reads inside a generated folder is there before it is committed."""
    missing = [(field, rel) for field, rel in job["expects"].items() if not (tmp / rel).exists()]
    if missing:
        said = "; ".join(f"{field} ({out / rel})" for field, rel in missing)
        raise ReleaseError(f"generate.{job['name']} ({job['run']}) did not write what the manifest reads from "
                           f"{out}: {said}. Check those paths against what the generator writes.")
