"""The user's code named by the manifest's `model` section: the builder, the adapter, sample inputs.

Found by import path ('package.module:name'); the project folder is on sys.path (doit puts it there).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from release import adapter as protocol
from release.errors import ReleaseError, did_you_mean

# 'package.module:name', as a manifest names user code.
IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


def import_object(spec: str, field: str) -> Any:
    """'package.module:attr' -> the object, with an error naming the manifest field: a module that
    is not there, one that fails as it is imported (where, in the user's file, and with what; no
    traceback), an attribute it does not have (did you mean?)."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if not _is_the_module(exc, module_name):
            raise ReleaseError(f"{field}: importing module '{module_name}' failed{where(exc)}: "
                               f"{describe(exc)}. Fix that import (is the package it needs installed?).") from None
        raise ReleaseError(f"{field}: cannot import module '{module_name}' ({exc}). "
                           f"Is the package installed, and is the path spelled 'package.module:name'?") from None
    except Exception as exc:  # noqa: BLE001 - the user's module raised as it was imported; say where
        raise ReleaseError(f"{field}: importing module '{module_name}' failed{where(exc)}: {describe(exc)}. "
                           f"Fix the module so that it imports.") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        raise ReleaseError(f"{field}: module '{module_name}' has no '{attr}'.{did_you_mean(attr, names)}") from None


def _is_the_module(exc: ImportError, module_name: str) -> bool:
    """Whether an ImportError says the named module (or a package on its path) is not there, as
    opposed to an import inside it failing."""
    missing = getattr(exc, "name", None)
    parts = module_name.split(".")
    return isinstance(exc, ModuleNotFoundError) and missing in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def describe(exc: BaseException) -> str:
    """'ValueError: the last line of its message', for a one-line report of a user's exception."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1].strip()}" if lines else type(exc).__name__


def where(exc: BaseException) -> str:
    """' at file:line' of the innermost frame of the user's code an exception passed through (a
    SyntaxError's own place), or '' when none did."""
    if isinstance(exc, SyntaxError) and exc.filename and exc.lineno:
        return f" at {exc.filename}:{exc.lineno}"
    found, tb = None, exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if _users(name):
            found = f"{name}:{tb.tb_lineno}"
        tb = tb.tb_next
    return f" at {found}" if found else ""


def _users(filename: str) -> bool:
    """A source file of the user's, not Python's, an installed package's or this build system's
    own (its bundled demo models count as the user's)."""
    import sysconfig

    if filename.startswith("<"):
        return False  # <frozen importlib._bootstrap>, <string>
    path = Path(filename).resolve()
    own = Path(__file__).resolve().parent
    if path.is_relative_to(own):
        return path.is_relative_to(own / "models")
    paths = sysconfig.get_paths()
    return not any(path.is_relative_to(Path(paths[key]).resolve())
                   for key in ("stdlib", "platstdlib", "purelib", "platlib"))


def module_file(spec: str) -> Path | None:
    """The source file behind 'package.module:attr', found without importing the module itself."""
    try:
        found = importlib.util.find_spec(spec.partition(":")[0])
    except (ImportError, ValueError):
        return None  # reported when the stage imports it, with the manifest field named
    return Path(found.origin) if found and found.origin and found.origin != "built-in" else None


def build_model(model_spec, **overrides):
    """A fresh nn.Module from the manifest's builder and kwargs (eval mode)."""
    builder = import_object(model_spec.builder, "model.builder")
    return builder(**{**model_spec.kwargs, **overrides}).eval()


def load_adapter(model_spec):
    """The manifest's adapter, created and checked against the protocol (release/adapter.py).

    A user's mistake (a missing, misspelled or mis-signed method, a kwarg `__init__` does not take)
    becomes one message naming the manifest field here, where the adapter is named, rather than an
    AttributeError deep inside evaluation or a training step. The class is checked before it is
    created (a wrong signature is reported even when `__init__` would fail or is slow) and the
    instance after (`__init__` may set output_names or the methods themselves).
    """
    path = model_spec.adapter
    cls = import_object(path, "model.adapter")
    if not isinstance(cls, type):
        raise ReleaseError(f"model.adapter {path} is {protocol.kind_of(cls)}, not a class: name the adapter class "
                           f"('package.module:Class'), which the build creates as "
                           f"Class(input_shape=model.input_shape, **model.adapter_kwargs); {protocol.NEEDS}.")
    _raise_problems(path, protocol.problems(cls))
    adapter = _create(cls, model_spec)
    _raise_problems(path, protocol.problems(adapter))
    return adapter


def _raise_problems(path: str, found: list[str]) -> None:
    """All of an adapter's problems in one message, so one edit fixes them all."""
    if found:
        raise ReleaseError(f"model.adapter {path} {'; '.join(found)}; {protocol.NEEDS}.")


def _create(cls: type, model_spec) -> Any:
    """cls(input_shape=..., **adapter_kwargs), its arguments checked against the signature first,
    and a failing `__init__` reported with its exception and no traceback."""
    path, kwargs, shape = model_spec.adapter, dict(model_spec.adapter_kwargs), tuple(model_spec.input_shape)
    found = init_problems(cls, path, kwargs)
    if found:
        raise ReleaseError(" ".join(found))
    try:
        return cls(input_shape=shape, **kwargs)
    except ReleaseError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's __init__ failed; say with what
        given = "".join(f", {k}={v!r}" for k, v in kwargs.items())
        raise ReleaseError(f"model.adapter_kwargs: {path}(input_shape={shape}{given}) failed: "
                           f"{type(exc).__name__}: {exc}. Check model.adapter_kwargs against what its "
                           f"__init__ accepts.") from exc


def init_problems(cls: type, path: str, kwargs: dict) -> list[str]:
    """model.adapter_kwargs (and the input_shape the build always passes) against the class's
    signature: each argument it does not take (did you mean?), each it needs that is not given.
    Nothing when the signature cannot be read (the call itself then reports)."""
    if "input_shape" in kwargs:
        return ["model.adapter_kwargs: input_shape is passed from model.input_shape; remove it from "
                "model.adapter_kwargs."]
    keywords = _keywords(cls)
    if keywords is None:
        return []
    named, takes_any, _ = keywords
    if "input_shape" not in named and not takes_any:
        return [f"model.adapter {path}: __init__ takes no input_shape, which the build always passes "
                "(model.input_shape, N, C, H, W): add an input_shape parameter."]
    return [f"model.adapter_kwargs: {message}"
            for _, message in keyword_problems(cls, path, kwargs, "model.adapter_kwargs", given=("input_shape",))]


def _keywords(fn) -> tuple[list[str], bool, list[str]] | None:
    """(the keyword arguments fn takes, whether it takes **kwargs, those without a default), or
    None when its signature cannot be read."""
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return None
    kinds = inspect.Parameter
    named = [n for n, p in params.items() if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)]
    required = [n for n in named if params[n].default is params[n].empty]
    return named, any(p.kind == kinds.VAR_KEYWORD for p in params.values()), required


def keyword_problems(fn, name: str, kwargs: dict, field: str, given: tuple[str, ...] = ()) -> list[tuple[str | None, str]]:
    """A manifest's kwargs for user code (a builder, an adapter) against its signature: (the
    argument at fault or None, message) for each argument it does not take (did you mean?) and
    each it needs that is not given (`given`: passed by the build itself). Nothing when the
    signature cannot be read (the call itself then reports)."""
    keywords = _keywords(fn)
    if keywords is None:
        return []
    named, takes_any, required = keywords
    takes = f" It takes: {', '.join(named)}." if named else " It takes no keyword arguments."
    found: list[tuple[str | None, str]] = [
        (key, f"{name} takes no argument '{key}'.{did_you_mean(key, named)}{takes}")
        for key in kwargs if key not in named and not takes_any]
    found += [(None, f"{name} needs '{n}' (it has no default): add it to {field}.")
              for n in required if n not in given and n not in kwargs]
    return found


def sample_inputs(manifest, split: str, limit: int | None = None):
    """Network-ready inputs (1, C, H, W) float32 from a data split, through the adapter."""
    import itertools

    import numpy as np

    from release.data import open_split

    data = open_split(getattr(manifest.data, split), split=split)
    adapter = load_adapter(manifest.model)
    for record in itertools.islice(data.images, limit):
        x, _ = adapter.preprocess(data.read_image(record))
        yield x[None].astype(np.float32)
