"""Facts about a built model: parameters and MACs, sparsity, output shapes and head layers."""

from __future__ import annotations


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
