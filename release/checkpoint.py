"""Reading training checkpoints safely, finding the weights inside, and diagnosing mismatches.

Pickles are loaded with `weights_only=True` unless the manifest says `trusted: true`: a checkpoint
that needs code to unpickle is refused with the reason, never executed. Before any loading, a zip
checkpoint's CRCs are checked (a flipped bit is a damaged file, not silently different weights) and
the globals its pickles name are read opcode by opcode: a file that asks for os.system, eval & co.
is refused even when trusted, since no training run writes one.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from release.errors import CheckpointError, closest
from release.pickle_scan import check_container, first_line

# Prefixes under which Lightning-style checkpoints keep the raw and the EMA copy of the model.
RAW_PREFIXES = ("model.", "module.")
EMA_PREFIXES = ("avg_model.", "ema_model.", "model_ema.", "ema.")
TRAINING_KEYS = ("optimizer_states", "optimizer", "lr_schedulers", "param_schedulers", "callbacks",
                 "loops", "message_hub", "epoch", "global_step", "hyper_parameters", "meta")


def read(path: Path, fmt: str = "auto", trusted: bool = False) -> tuple[str, Any]:
    """(format, loaded object). Never runs pickled code unless trusted, and never code that runs commands."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file. Point source.checkpoint at the file "
                              f"the training run saved (e.g. last.ckpt, best.pt).")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found. Check source.checkpoint in the manifest.")
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the file ({exc.strerror or exc}). Check its permissions.") from None
    if size == 0:
        raise CheckpointError(f"{path}: the file is empty. Re-export or re-download the checkpoint.")
    if fmt == "safetensors" or (fmt == "auto" and path.suffix == ".safetensors"):
        from safetensors.torch import load_file
        try:
            return "safetensors", load_file(str(path))
        except Exception as exc:  # the safetensors reader runs no code from the file; any failure is a bad file
            raise CheckpointError(f"{path}: not a readable safetensors file ({first_line(exc)}). The file may be "
                                  f"truncated or damaged: copy it again, or set source.format.") from None

    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        looks = " It looks like safetensors: set source.format: safetensors." if head[8:9] == b"{" else ""
        raise CheckpointError(f"{path}: not a PyTorch checkpoint (it starts with {head[:8]!r}).{looks} "
                              f"Check source.checkpoint, or set source.format.")
    names = check_container(path, head, trusted)  # damaged zips and code-running payloads: refused first
    obj = _load(path, names, trusted)
    return _detect(path, obj, fmt), obj


def _load(path: Path, names: list[str], trusted: bool) -> Any:
    import pickle
    import warnings

    import torch

    try:
        with warnings.catch_warnings():  # e.g. torch's note on an unusual pickle protocol: the error says it all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not trusted)
    except pickle.UnpicklingError as exc:
        if trusted or "GLOBAL" not in str(exc):
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)}). The file may "
                                  f"be truncated or damaged: copy it again.") from None
        import re

        wanted = sorted(set(re.findall(r"GLOBAL ([\w.]+)", str(exc))))
        needs = (f"It asks for {', '.join(wanted)}" if wanted else first_line(exc)) + \
            (" (a pickled model object, as YOLOv5 / Ultralytics save)" if wanted else "")
        raise CheckpointError(
            f"{path}: this checkpoint needs code to unpickle, and running code from a file can do anything "
            f"on this machine, so it was not loaded. {needs}. If you trust the file's origin and its code is "
            f"importable here, set `source.trusted: true` in the manifest; better, re-save it as a plain "
            f"state_dict or safetensors."
        ) from None
    except ModuleNotFoundError as exc:  # trusted: the pickled class's code is not importable here
        missing = exc.name or ""
        classes = [n for n in names if n == missing or n.startswith(missing + ".")] if missing else []
        cls = classes[0] if classes else ""
        module = cls.rpartition(".")[0] or missing
        hint = (" (a YOLOv5 checkpoint: the yolov5 repository's folder)" if module.split(".")[0] == "models"
                else " (pip install ultralytics)" if module.split(".")[0] == "ultralytics" else "")
        raise CheckpointError(
            f"{path}: the pickled class {cls or 'the file asks for'} cannot be imported here (no module named "
            f"'{missing}'). Install the package that provides {module} or add its folder to PYTHONPATH{hint}, "
            f"then run again; or, where that code is importable, re-save the weights as a plain state_dict.") from None
    except Exception as exc:
        if not trusted:
            raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({first_line(exc)}). The file may "
                                  f"be truncated or damaged: copy it again.") from None
        import re

        gone = re.match(r"Can't get attribute '([\w.]+)' on <module '([\w.]+)'", str(exc))
        if isinstance(exc, AttributeError) and gone:
            raise CheckpointError(
                f"{path}: the module {gone.group(2)} importable here has no {gone.group(1)}, which the file's "
                f"pickled objects need: it is another version of the code that saved the file. Make that "
                f"version importable (PYTHONPATH), or re-save the weights as a plain state_dict with it.") from None
        raise CheckpointError(
            f"{path}: loading the file's pickled objects failed ({type(exc).__name__}: {first_line(exc)}). "
            f"With source.trusted the file's classes are rebuilt from the code importable here: it must be "
            f"the code that saved the file. Else re-save the weights as a plain state_dict.") from None


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
    if isinstance(obj, Mapping) and not obj:
        raise CheckpointError(f"{path}: the checkpoint holds no weights (an empty {type(obj).__name__}). Check "
                              f"source.checkpoint: give the file the training run saved with its model's weights.")
    keys = ", ".join(map(str, list(obj)[:8])) if isinstance(obj, Mapping) else ""
    raise CheckpointError(f"{path}: cannot tell the checkpoint format ({_kind(obj)}{' with keys ' + keys if keys else ''}). "
                          f"Set source.format to one of state_dict, lightning, mmdet, yolov5, safetensors.")


def _kind(obj: Any) -> str:
    if obj is None:
        return "None"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)}"
    name = type(obj).__name__
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def _check_weights(path: Path, fmt: str, state: Mapping, where: str) -> None:
    """Weights are a non-empty mapping of str names to tensors; else one line saying what is there."""
    import torch

    if not state:
        raise CheckpointError(f"{path}: the checkpoint holds no weights ({where} is empty). Check "
                              f"source.checkpoint: give the file the training run saved with its model's weights.")
    bad = [(k, v) for k, v in state.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if bad:
        key, value = bad[0]
        raise CheckpointError(f"{path}: source.format is '{fmt}' but {len(bad)} of the {len(state)} entries of "
                              f"{where} are not parameter names with tensors, e.g. {key!r}: {_kind(value)}. "
                              f"Use format: auto, or the format the file really has.")


def extract(path: Path, fmt: str, obj: Any, weights: str = "auto") -> tuple[dict, dict]:
    """(state dict without wrapper prefixes, facts: which copy, prefix, what was dropped)."""
    facts: dict[str, Any] = {"format": fmt}
    if fmt == "yolov5":
        return _extract_modules(path, obj, weights, facts)
    if fmt in ("state_dict", "safetensors"):
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"{path}: source.format is '{fmt}' but the file holds {_kind(obj)}, not a "
                                  f"mapping of parameter names to tensors. Use format: auto, or the format the "
                                  f"file really has.")
        state = dict(obj)
        _check_weights(path, fmt, state, "the file")
    elif isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        state = dict(obj["state_dict"])
        _check_weights(path, fmt, state, "its 'state_dict'")
        facts["training_keys"] = sorted(str(k) for k in obj if k != "state_dict")
    else:
        keys = f" with keys {', '.join(map(str, list(obj)[:8]))}" if isinstance(obj, Mapping) and obj else ""
        raise CheckpointError(f"{path}: source.format is '{fmt}' but the file holds no 'state_dict' mapping "
                              f"({_kind(obj)}{keys}). Use format: auto, or the format the file really has.")
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


def _module_state(path: Path, module: Any, which: str) -> dict:
    try:
        return module.state_dict()
    except Exception as exc:  # trusted: a pickled model whose class is another version of its code
        raise CheckpointError(f"{path}: the pickled model in '{which}' ({type(module).__name__}) cannot give its "
                              f"weights ({type(exc).__name__}: {first_line(exc)}): the code importable here for "
                              f"it is another version than the one that saved it.") from None


def _extract_modules(path: Path, obj: Any, weights: str, facts: dict) -> tuple[dict, dict]:
    """YOLOv5's strip_optimizer, as a state dict: the EMA module when there is one, else the model."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: source.format is 'yolov5' but the file holds {_kind(obj)}, not "
                              f"a mapping with 'model' / 'ema' modules. Use format: auto.")
    modules = {"ema": obj.get("ema"), "raw": obj.get("model")}
    choice = weights if weights != "auto" else ("ema" if _is_module(modules["ema"]) else "raw")
    module = modules[choice]
    which = "ema" if choice == "ema" else "model"
    if not _is_module(module):
        raise CheckpointError(f"{path}: source.weights is '{choice}' but the checkpoint's '{which}' entry is "
                              f"{_kind(module)}, not a model. Use weights: auto, or format: auto.")
    state = {k: v.detach().clone() for k, v in _module_state(path, module, which).items()}
    _check_weights(path, "yolov5", state, f"the '{which}' model's state_dict")
    facts.update(copy=choice, prefix="", training_keys=sorted(str(k) for k in obj if k not in ("model", "ema")),
                 stored_dtypes=sorted({str(v.dtype).replace("torch.", "") for v in state.values()}))
    return state, facts


def other_copies(path: Path, fmt: str, obj: Any, facts: dict) -> dict[str, tuple[str, list[str]]]:
    """The copies of the weights that `extract` did not keep: {copy: (where, names without its prefix)}."""
    if fmt == "yolov5":
        which = "model" if facts["copy"] == "ema" else "ema"
        module = obj.get(which) if isinstance(obj, Mapping) else None
        if not _is_module(module):
            return {}
        names = list(_module_state(path, module, which))
        return {"raw" if which == "model" else "ema": (f"the '{which}' entry", names)}
    state = obj if fmt in ("state_dict", "safetensors") else obj.get("state_dict", {})
    out: dict[str, tuple[str, list[str]]] = {}
    for copy, prefixes in (("ema", EMA_PREFIXES), ("raw", RAW_PREFIXES)):
        for prefix in prefixes:
            if prefix != facts["prefix"] and copy not in out:
                keys = [k[len(prefix):] for k in state if isinstance(k, str) and k.startswith(prefix)]
                if keys:
                    out[copy] = (f"{prefix}*", keys)
    return out


def drop(state: dict, patterns: list[str], path: Path, facts: dict | None = None,
         others: dict[str, tuple[str, list[str]]] | None = None) -> tuple[dict, list[str]]:
    """Remove training-only parameters by glob pattern; a pattern that matches nothing is an error that
    says whether it matches another copy of the weights (`others`, from other_copies) instead."""
    dropped: list[str] = []
    copy, prefix = (facts or {}).get("copy", "raw"), (facts or {}).get("prefix", "")
    kept = f"the {copy} copy that strip keeps{f' ({prefix}*)' if prefix else ''}"
    for pattern in patterns:
        hits = [k for k in state if fnmatch.fnmatchcase(k, pattern)]
        if not hits:
            raise CheckpointError(_no_match(path, pattern, state, kept, copy, prefix, others or {}))
        dropped += hits
        state = {k: v for k, v in state.items() if k not in hits}
    return state, sorted(dropped)


def _no_match(path: Path, pattern: str, state: dict, kept: str, copy: str, prefix: str,
              others: dict[str, tuple[str, list[str]]]) -> str:
    head = f"{path}: source.drop pattern '{pattern}' matches no parameter of {kept}"
    if prefix and pattern.startswith(prefix) and any(fnmatch.fnmatchcase(k, pattern[len(prefix):]) for k in state):
        return (f"{head}: patterns name parameters without the '{prefix}' prefix that strip removes. "
                f"Write '{pattern[len(prefix):]}'.")
    for other, (where, keys) in others.items():
        bare = pattern
        for p in (*EMA_PREFIXES, *RAW_PREFIXES):  # a pattern written with the other copy's prefix
            if where.startswith(p) and pattern.startswith(p):
                bare = pattern[len(p):]
        hits = [k for k in keys if fnmatch.fnmatchcase(k, bare)]
        if hits:
            name = where[:-1] + hits[0] if where.endswith("*") else f"{hits[0]} in {where}"
            return (f"{head}; it matches only {len(hits)} tensor{'s' * (len(hits) != 1)} of the {other} copy "
                    f"({where}, e.g. {name}), which strip does not keep. The {copy} copy has nothing to drop "
                    f"there: remove the pattern, or set source.weights: {other} to release the {other} copy.")
    prefixes = sorted({k.split(".")[0] for k in state})
    return f"{head}. Top-level names: {', '.join(prefixes[:12])}."


def written_dtype(tensor, dtype: str = "stored"):
    """The dtype strip writes a tensor in: floating-point weights as stored (or `dtype`), others as they are."""
    import torch

    if dtype == "stored" or not tensor.is_floating_point():
        return tensor.dtype
    return getattr(torch, dtype)


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
