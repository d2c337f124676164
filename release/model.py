"""Turning the manifest's `model` section into objects: the builder, the adapter, loaded weights."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from release.errors import ReleaseError


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


def complexity(model, input_shape) -> dict:
    """Parameter count and multiply-accumulates of one forward pass at the manifest's input shape.

    Counted by torch-pruning's op counter (forward hooks on each layer), the same library that does
    the structured pruning, so before/after figures are counted one way.
    """
    import torch
    import torch_pruning as tp

    with torch.no_grad():
        macs, params = tp.utils.count_ops_and_params(model.eval(), torch.zeros(tuple(input_shape)))
    return {"parameters": int(params), "macs": int(macs)}


def sparsity(model) -> dict:
    """Zeros among conv/linear weights (what magnitude pruning sets)."""
    total = zeros = 0
    for p in model.parameters():
        if p.ndim > 1:
            total += p.numel()
            zeros += int((p == 0).sum())
    return {"weights": total, "zeros": zeros, "sparsity": round(zeros / total, 6) if total else 0.0}


def output_shapes(model, input_shape) -> list[list[int]]:
    """Shapes of every tensor the model outputs (tuples, dicts, nested) for a zero input."""
    import torch
    from torch.utils._pytree import tree_leaves

    with torch.no_grad():
        outputs = model.eval()(torch.zeros(tuple(input_shape)))
    return [list(t.shape) for t in tree_leaves(outputs) if isinstance(t, torch.Tensor)]


def output_layers(model, input_shape) -> list[str]:
    """Names of the last Conv/Linear layers before each model output (a detector's head outputs).

    Found by walking the autograd graph back from every output until a convolution or matrix
    product, so it follows whatever the forward does (sigmoids, reshapes, concatenations) without
    tracing the Python code.
    """
    import torch
    from torch.utils._pytree import tree_leaves

    by_param = {id(p): name.rsplit(".", 1)[0] for name, p in model.named_parameters() if name.endswith("weight")}
    was_training = model.training
    frozen = [p for p in model.parameters() if not p.requires_grad]
    for p in frozen:  # a frozen head is still a head: the walk needs every weight in the graph
        p.requires_grad_(True)
    model.eval()
    try:
        with torch.enable_grad():
            outputs = tree_leaves(model(torch.zeros(tuple(input_shape))))  # tuples, dicts, nested
    finally:
        model.train(was_training)
        for p in frozen:
            p.requires_grad_(False)
    found: list[str] = []
    seen: set = set()
    stack = [o.grad_fn for o in outputs if isinstance(o, torch.Tensor) and o.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        kind = type(fn).__name__
        if kind.startswith(("Convolution", "Addmm", "Mm", "Linear")):
            # The weight is an input of the op, or one step further back (Linear's transposed t()).
            near = [child for child, _ in fn.next_functions]
            near += [g for child in near for g, _ in getattr(child, "next_functions", ())]
            for node in near:
                layer = by_param.get(id(getattr(node, "variable", None)))
                if layer is not None and layer not in found:
                    found.append(layer)
            continue
        stack.extend(child for child, _ in fn.next_functions)
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
