"""The user's code named by the manifest's `model` section: the builder, the adapter, sample inputs.

Found by import path ('package.module:name'); the project folder is on sys.path (doit puts it there).
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from release.errors import ReleaseError

# 'package.module:name', as a manifest names user code.
IMPORT_PATH = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


def import_object(spec: str, field: str) -> Any:
    """'package.module:attr' -> the object, with an error naming the manifest field."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ReleaseError(f"{field}: cannot import module '{module_name}' ({exc}). "
                           f"Is the package installed, and is the path spelled 'package.module:name'?") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        names = [n for n in dir(module) if not n.startswith("_")]
        from release.errors import did_you_mean
        raise ReleaseError(f"{field}: module '{module_name}' has no '{attr}'.{did_you_mean(attr, names)}") from None


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
    cls = import_object(model_spec.adapter, "model.adapter")
    return cls(input_shape=tuple(model_spec.input_shape), **model_spec.adapter_kwargs)


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
