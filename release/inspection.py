"""`release inspect CHECKPOINT`: what is in a checkpoint, and what stripping it would save.

Read-only, and as safe as `strip`: pickles are loaded with `weights_only=True` unless trust is given
(`--trusted`, or a manifest whose source says `trusted: true`), so inspecting a file never runs code
from it. The answer to "why is my file 12x the official one" in one screen: the format, the
top-level keys with the bytes they hold, the tensors grouped by prefix with value counts, the
training-only content found, and the size of the file `strip` would write (same dtype rule:
floating-point weights as stored; same safetensors writer).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from release import checkpoint

MB = 1_000_000


def _tensors(obj: Any, prefix: str = "", path: Path | None = None):
    """(dotted path, tensor) for every tensor inside nested dicts/lists/tuples."""
    import torch

    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, torch.nn.Module):  # a pickled model (YOLOv5): its tensors
        yield from _tensors(checkpoint._module_state(path, obj, prefix or "(root)"), prefix, path)
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k), path)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}" if prefix else str(i), path)


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


def written_bytes(state: dict, fmt: str) -> int:
    """The size of the file strip writes for these (already cast) weights: written the same way, to a temp file."""
    import tempfile

    from release.weights import write_weights

    with tempfile.TemporaryDirectory(prefix="release-inspect-") as folder:
        target = Path(folder) / "weights.safetensors"
        write_weights({k: v.contiguous() for k, v in state.items()}, target, source_format=fmt)
        return target.stat().st_size


def inspect(path: Path, fmt: str = "auto", trusted: bool = False, weights: str = "auto",
            drop: list[str] | None = None, dtype: str = "stored") -> dict:
    """Everything `release inspect` prints, as a dict (also its --json output).

    `dtype` is strip's param of that name: the kept weights are cast by strip's rule and written the way
    strip writes them, so `stripped_bytes` is the size of strip's output when the weights fit the model.
    """
    path = Path(path)
    fmt, obj = checkpoint.read(path, fmt, trusted)
    kept, facts = checkpoint.extract(path, fmt, obj, weights)  # a file that does not hold `fmt` fails here
    dropped: list[str] = []
    if drop:
        others = checkpoint.other_copies(path, fmt, obj, facts)
        kept, dropped = checkpoint.drop(kept, drop, path, facts, others)
    size = path.stat().st_size
    top = obj if isinstance(obj, Mapping) else {"(root)": obj}
    keys = []
    for key, value in top.items():
        tensors = list(_tensors(value, str(key), path))
        keys.append({"key": str(key), "type": type(value).__name__, "tensors": len(tensors),
                     "bytes": sum(_nbytes(t) for _, t in tensors)})
    # The weights mapping, grouped by its first two name components (e.g. avg_model.backbone).
    if fmt in ("state_dict", "safetensors"):
        state = obj
    elif fmt == "yolov5":
        state = {k: obj[k] for k in ("model", "ema") if obj.get(k) is not None}
    else:
        state = obj["state_dict"]
    groups: dict[str, dict] = defaultdict(lambda: {"tensors": 0, "parameters": 0, "bytes": 0, "dtypes": set()})
    for name, t in _tensors(state, "", path):
        g = groups[".".join(name.split(".")[:2])]
        g["tensors"] += 1
        g["parameters"] += t.numel()
        g["bytes"] += _nbytes(t)
        g["dtypes"].add(str(t.dtype).replace("torch.", ""))
    written = {k: t.detach().to(checkpoint.written_dtype(t, dtype)) for k, t in kept.items()}
    kept_bytes = sum(_nbytes(t) for t in written.values())
    stripped_bytes = written_bytes(written, fmt)
    beside = set(checkpoint.TRAINING_KEYS) | set(facts.get("training_keys", []))
    training = [k for k in keys if k["key"] in beside and k["key"] != "state_dict"]
    # The copy strip keeps: a key prefix (avg_model.), or for pickled modules the 'ema'/'model' entry.
    own = facts["prefix"].rstrip(".") or ({"ema": "ema", "raw": "model"}[facts["copy"]] if fmt == "yolov5" else "")
    other_copy = [g for g in groups if own and not g.startswith(own)]
    return {
        "path": str(path), "format": fmt, "bytes": size, "keys": keys,
        "groups": {k: {**v, "dtypes": sorted(v["dtypes"])} for k, v in sorted(groups.items())},
        "copy": facts["copy"], "prefix": facts["prefix"],
        "training_keys": [k["key"] for k in training],
        "other_copies": sorted({g.split(".")[0] for g in other_copy}),
        "dropped": dropped, "kept_tensors": len(kept), "kept_parameters": sum(t.numel() for t in kept.values()),
        "kept_bytes": kept_bytes, "kept_dtypes": sorted({str(t.dtype).replace("torch.", "") for t in written.values()}),
        "stripped_bytes": stripped_bytes, "saving_bytes": size - stripped_bytes, "trusted": trusted,
    }


def render(info: dict) -> str:
    lines = [f"{info['path']}: {info['format']} checkpoint, {info['bytes'] / MB:.2f} MB"
             f"{' (loaded as trusted: pickled code may have run)' if info['trusted'] else ''}", "",
             "top-level keys:"]
    width = max((len(k["key"]) for k in info["keys"]), default=0)
    for k in info["keys"]:
        lines.append(f"  {k['key']:<{width}}  {k['bytes'] / MB:8.2f} MB  {k['tensors']:5d} tensors  ({k['type']})")
    if info["groups"]:
        lines += ["", "weights by prefix:"]
        width = max((len(g) for g in info["groups"]), default=0)
        for name, g in info["groups"].items():
            lines.append(f"  {name:<{width}}  {g['parameters']:>11,} values  {g['bytes'] / MB:8.2f} MB  "
                         f"{', '.join(g['dtypes'])}")
    found = []
    if info["training_keys"]:
        found.append(f"training state: {', '.join(info['training_keys'])}")
    if info["other_copies"]:
        found.append(f"other copies of the weights: {', '.join(c + '.*' for c in info['other_copies'])} "
                     f"(strip keeps the {info['copy']} copy{', ' + repr(info['prefix'] + '*') if info['prefix'] else ''})")
    if info["dropped"]:
        found.append(f"{len(info['dropped'])} tensors matched source.drop, e.g. {info['dropped'][0]}")
    lines += ["", "training-only content:"] + [f"  {f}" for f in found or ["none found"]]
    saving = info["saving_bytes"]
    effect = (f"it saves {saving / MB:.2f} MB ({info['bytes'] / max(info['stripped_bytes'], 1):.1f}x smaller)"
              if saving >= 0 else f"the file grows by {-saving / MB:.2f} MB")
    lines += ["", f"strip would keep {info['kept_tensors']} tensors, {info['kept_parameters']:,} values "
                  f"({', '.join(info['kept_dtypes'])}), and write {info['stripped_bytes'] / MB:.2f} MB: {effect}"]
    return "\n".join(lines)
