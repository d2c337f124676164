"""The weights format between stages: a safetensors state dict whose metadata names the builder and
any layer shapes a stage changed (pruning, distillation), so the exact network can be rebuilt."""

from __future__ import annotations

from pathlib import Path

from release.errors import ReleaseError
from release.usercode import build_model, import_object

# Shape-bearing attributes of torch's layers: what structured pruning changes besides the tensors.
SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "in_features", "out_features",
               "num_channels", "normalized_shape")
WEIGHTS_FORMAT = "release-weights"


def architecture(model) -> dict:
    """{module name: {attr: value}} for every shape-bearing attribute of the model's layers."""
    out = {}
    for name, module in model.named_modules():
        attrs = {a: getattr(module, a) for a in SHAPE_ATTRS if isinstance(getattr(module, a, None), (int, tuple))}
        if attrs:
            out[name] = {a: list(v) if isinstance(v, tuple) else v for a, v in attrs.items()}
    return out


def save_weights(model, path: Path, *, builder: str | None = None, kwargs: dict | None = None,
                 **meta) -> None:
    """The model's state dict as safetensors, carrying what it takes to rebuild the architecture.

    Structured pruning shrinks layers and distillation trains a different network, so the weights
    alone no longer fit `model.builder(**model.kwargs)`. The metadata records the builder and kwargs
    (when given), every layer shape that differs from a fresh build, and any `meta` facts (e.g.
    sparse=True), so `load_weights` rebuilds exactly this network (the same idea as
    torch-pruning's state_dict, kept in the safetensors header instead of a pickle).
    """
    metadata: dict = dict(meta)
    if builder is not None:
        metadata["builder"], metadata["kwargs"] = builder, kwargs or {}
        fresh = architecture(import_object(builder, "builder")(**(kwargs or {})))
        changed = {n: a for n, a in architecture(model).items() if fresh.get(n) != a}
        if changed:
            metadata["shapes"] = changed
    write_weights({k: v.detach().contiguous() for k, v in model.state_dict().items()}, path, **metadata)


def write_weights(state: dict, path: Path, **meta) -> None:
    """safetensors with our metadata as ONE sorted JSON entry: safetensors keeps its metadata in a
    hash map, so several entries come out in a different order in every process, and equal weights
    would not give equal bytes."""
    import json

    from safetensors.torch import save_file

    save_file(state, str(path), metadata={
        WEIGHTS_FORMAT: json.dumps({"format": WEIGHTS_FORMAT, **meta}, sort_keys=True, separators=(",", ":"))})


def weights_metadata(weights: Path) -> dict:
    """What save_weights recorded: builder, kwargs, shapes (parsed), and any facts a stage added."""
    import json

    from safetensors import safe_open

    with safe_open(str(weights), "pt") as handle:
        raw = handle.metadata() or {}
    return json.loads(raw[WEIGHTS_FORMAT]) if WEIGHTS_FORMAT in raw else dict(raw)


def _fit_shapes(model, shapes: dict, state: dict) -> None:
    """Shrink a freshly built model's layers to the recorded shapes before loading (pruned weights)."""
    import torch

    modules = dict(model.named_modules())
    for name, attrs in shapes.items():
        module = modules.get(name)
        if module is None:
            raise ReleaseError(f"weights record a layer '{name}' that the builder's model does not have; "
                               f"the weights were made for other model code.")
        for attr, value in attrs.items():
            setattr(module, attr, tuple(value) if isinstance(value, list) else value)
        for key, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            full = f"{name}.{key}" if name else key
            if tensor is not None and full in state and state[full].shape != tensor.shape:
                fresh = torch.empty(state[full].shape, dtype=tensor.dtype)
                if isinstance(tensor, torch.nn.Parameter):
                    setattr(module, key, torch.nn.Parameter(fresh, requires_grad=tensor.requires_grad))
                else:
                    module.register_buffer(key, fresh)


def load_weights(model_spec, weights: Path):
    """Build the model the weights were made for and load them strictly.

    The builder and kwargs come from the weights' metadata when a stage changed them (a distilled
    student), else from the manifest; recorded layer shapes (a pruned network) are applied first.
    """
    from safetensors.torch import load_file

    meta = weights_metadata(weights)
    state = load_file(str(weights))
    if "builder" in meta:
        model = import_object(meta["builder"], "builder")(**meta["kwargs"]).eval()
    else:
        model = build_model(model_spec)
    if "shapes" in meta:
        _fit_shapes(model, meta["shapes"], state)
    model.load_state_dict(state, strict=True)
    return model


def builder_of(model_spec, weights: Path) -> tuple[str, dict]:
    """(builder, kwargs) the weights were made for: their metadata's, else the manifest's."""
    meta = weights_metadata(weights)
    if "builder" in meta:
        return meta["builder"], dict(meta["kwargs"])
    return model_spec.builder, dict(model_spec.kwargs)
