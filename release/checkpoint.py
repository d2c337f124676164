"""Reading training checkpoints safely, finding the weights inside, and diagnosing mismatches.

Pickles are loaded with `weights_only=True` unless the manifest says `trusted: true`: a checkpoint
that needs code to unpickle is refused with the reason, never executed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from release.errors import CheckpointError, closest

# Prefixes under which Lightning-style checkpoints keep the raw and the EMA copy of the model.
RAW_PREFIXES = ("model.", "module.")
EMA_PREFIXES = ("avg_model.", "ema_model.", "model_ema.", "ema.")
TRAINING_KEYS = ("optimizer_states", "optimizer", "lr_schedulers", "param_schedulers", "callbacks",
                 "loops", "message_hub", "epoch", "global_step", "hyper_parameters", "meta")


def read(path: Path, fmt: str = "auto", trusted: bool = False) -> tuple[str, Any]:
    """(format, loaded object). Never runs pickled code unless trusted."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found. Check source.checkpoint in the manifest.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty. Re-export or re-download the checkpoint.")
    with open(path, "rb") as handle:
        head = handle.read(16)
    if fmt == "safetensors" or (fmt == "auto" and path.suffix == ".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return "safetensors", load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: not a readable safetensors file ({exc}).") from None

    import pickle
    import zipfile

    import torch

    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (it starts with {head[:8]!r}). "
                              f"Check source.checkpoint, or set source.format.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        if trusted:
            raise CheckpointError(f"{path}: unpickling failed ({exc}).") from None
        import re

        wanted = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(exc))))
        needs = (f"It asks for {', '.join(wanted)}" if wanted else str(exc).split("\n")[0][:300]) + \
            (" (a pickled model object, as YOLOv5 / Ultralytics save)" if wanted else "")
        raise CheckpointError(
            f"{path}: this checkpoint needs code to unpickle, and running code from a file can do anything "
            f"on this machine, so it was not loaded. {needs}. If you trust the file's origin and its code is "
            f"importable here, set `source.trusted: true` in the manifest; better, re-save it as a plain "
            f"state_dict or safetensors."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({str(exc).splitlines()[0]}). "
                              f"The file may be truncated: copy it again.") from None
    return _detect(path, obj, fmt), obj


def _is_state_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _is_module(value: Any) -> bool:
    import torch

    return isinstance(value, torch.nn.Module)


def _detect(path: Path, obj: Any, fmt: str) -> str:
    if fmt != "auto":
        return fmt
    if _is_state_dict(obj):
        return "state_dict"
    if isinstance(obj, Mapping) and any(_is_module(obj.get(k)) for k in ("model", "ema")):
        return "yolov5"  # YOLOv5 / Ultralytics: pickled nn.Module objects (only loads when trusted)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        if "meta" in obj or "message_hub" in obj:
            return "mmdet"
        return "lightning"
    kind = type(obj).__name__
    keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else ""
    raise CheckpointError(f"{path}: cannot tell the checkpoint format (a {kind}{' with keys ' + keys if keys else ''}). "
                          f"Set source.format to one of state_dict, lightning, mmdet, yolov5, safetensors.")


def extract(path: Path, fmt: str, obj: Any, weights: str = "auto") -> tuple[dict, dict]:
    """(state dict without wrapper prefixes, facts: which copy, prefix, what was dropped)."""
    facts: dict[str, Any] = {"format": fmt}
    if fmt == "yolov5":
        return _extract_modules(path, obj, weights, facts)
    if fmt in ("state_dict", "safetensors"):
        state = dict(obj)
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = dict(obj["state_dict"])
        facts["training_keys"] = sorted(k for k in obj if k != "state_dict")
    else:
        raise CheckpointError(f"{path}: source.format is '{fmt}' but the file holds no 'state_dict' mapping. "
                              f"Use format: auto, or the format the file really has.")
    prefixes = {"ema": EMA_PREFIXES, "raw": RAW_PREFIXES}
    found = {which: next((p for p in ps if any(k.startswith(p) for k in state)), None) for which, ps in prefixes.items()}
    choice = weights if weights != "auto" else ("ema" if found["ema"] else "raw")
    prefix = found[choice]
    if weights == "ema" and prefix is None:
        raise CheckpointError(f"{path}: source.weights is 'ema' but the checkpoint holds no EMA copy "
                              f"(no key starts with {', '.join(EMA_PREFIXES)}). Use 'raw' or 'auto'.")
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    facts.update(copy=choice if prefix else "raw", prefix=prefix or "")
    return state, facts


def _extract_modules(path: Path, obj: Any, weights: str, facts: dict) -> tuple[dict, dict]:
    """YOLOv5's strip_optimizer, as a state dict: the EMA module when there is one, else the model."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: source.format is 'yolov5' but the file holds a {type(obj).__name__}, not "
                              f"a mapping with 'model' / 'ema' modules. Use format: auto.")
    modules = {"ema": obj.get("ema"), "raw": obj.get("model")}
    choice = weights if weights != "auto" else ("ema" if _is_module(modules["ema"]) else "raw")
    module = modules[choice]
    if not _is_module(module):
        which = "ema" if choice == "ema" else "model"
        raise CheckpointError(f"{path}: source.weights is '{choice}' but the checkpoint's '{which}' entry is "
                              f"{type(module).__name__}, not a model. Use weights: auto.")
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    facts.update(copy=choice, prefix="", training_keys=sorted(str(k) for k in obj if k not in ("model", "ema")),
                 stored_dtypes=sorted({str(v.dtype).replace("torch.", "") for v in state.values()}))
    return state, facts


def drop(state: dict, patterns: list[str], path: Path) -> tuple[dict, list[str]]:
    """Remove training-only parameters by glob pattern; a pattern that matches nothing is an error."""
    dropped: list[str] = []
    for pattern in patterns:
        hits = [k for k in state if fnmatch.fnmatchcase(k, pattern)]
        if not hits:
            prefixes = sorted({k.split(".")[0] for k in state})
            raise CheckpointError(f"{path}: source.drop pattern '{pattern}' matches no parameter. "
                                  f"Top-level names: {', '.join(prefixes[:12])}.")
        dropped += hits
        state = {k: v for k, v in state.items() if k not in hits}
    return state, sorted(dropped)


def mismatch_report(state: Mapping, expected: Mapping, path: Path) -> str | None:
    """None when `state` fits `expected` exactly; else a report of missing, unexpected and mis-shaped keys."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in expected
              if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    matched = len(expected) - len(missing) - len(shapes)
    lines = [f"{path}: the weights do not fit model.builder ({matched} of {len(expected)} parameters match)."]

    def near(key: str, pool: list[str]) -> str:
        match = closest(key, pool, cutoff=0.5)
        return f"  (closest: {match[0]})" if match else ""

    # Grouped by module (a key minus its last name): one line per module, not a wall of keys.
    for title, keys, pool in (("missing from the checkpoint", missing, unexpected),
                              ("unexpected in the checkpoint", unexpected, missing)):
        if keys:
            groups = _by_module(keys)
            lines.append(f"  {len(keys)} {title}, in {len(groups)} module{'s' * (len(groups) != 1)}:")
            for module, leaves in list(groups.items())[:20]:
                first = f"{module}.{leaves[0]}" if module else leaves[0]
                lines.append(f"    {module or '(top level)'}: {', '.join(leaves)}{near(first, pool)}")
            if len(groups) > 20:
                lines.append(f"    ... and {len(groups) - 20} more modules")
    if shapes:
        lines.append(f"  {len(shapes)} with a different shape:")
        lines += [f"    {k}: checkpoint {a}, model {b}" for k, a, b in shapes[:20]]
    hint = _prefix_hint(missing, unexpected) or _rename_hint(state, expected, missing, unexpected)
    lines.append(hint or "  Fix model.kwargs to match the trained architecture, or list training-only "
                         "parameters in source.drop.")
    return "\n".join(lines)


def _by_module(keys: list[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key in keys:
        module, _, leaf = key.rpartition(".")
        groups.setdefault(module, []).append(leaf)
    return groups


def _rename_hint(state: Mapping, expected: Mapping, missing: list[str], unexpected: list[str]) -> str:
    """Modules of the checkpoint whose parameters (names and shapes) are exactly a missing module's."""
    def signature(source: Mapping, module: str, leaves: list[str]) -> tuple:
        return tuple(sorted((leaf, tuple(source[f"{module}.{leaf}" if module else leaf].shape)) for leaf in leaves))

    gone = {signature(expected, m, leaves): m for m, leaves in _by_module(missing).items()}
    pairs = [(m, gone[sig]) for m, leaves in _by_module(unexpected).items()
             if (sig := signature(state, m, leaves)) in gone]
    if not pairs:
        return ""
    shown = ", ".join(f"'{old}' -> '{new}'" for old, new in pairs[:5])
    return (f"  Renamed modules? The checkpoint's {shown} hold exactly the parameters the model misses: "
            f"rename those keys (or the modules in the model code).")


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """When every unexpected key is a missing key with one extra leading name, say so."""
    if not missing or len(missing) != len(unexpected):
        return ""
    heads = {u.split(".", 1)[0] + "." for u in unexpected if "." in u}
    if len(heads) == 1:
        head = heads.pop()
        if sorted(u[len(head):] for u in unexpected) == sorted(missing):
            return f"  Every key carries an extra '{head}' prefix: the checkpoint wraps the model in '{head[:-1]}'."
    return ""
