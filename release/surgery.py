"""Model surgery shared by stages: which layers can be narrowed, and narrowing one network to the
widths of another (structured pruning by torch-pruning's dependency graph)."""

from __future__ import annotations


def prunable(model) -> dict:
    """The layers whose output channels can be pruned: every convolution and linear layer."""
    import torch

    return {name: m for name, m in model.named_modules()
            if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear))}


def narrow_like(model, target, input_shape) -> None:
    """Prune `model` in place, layer by layer, to the output widths of `target`'s layers of the same
    names (e.g. the same detector built at half width), dropping the channels with the lowest L2
    norm of their dependency group. Raises ReleaseError when the result does not fit `target`.

    This is how a student can start from its teacher's weights instead of from noise.
    """
    import torch
    import torch_pruning as tp

    from release.errors import ReleaseError

    for q in model.parameters():  # the dependency graph is traced through autograd
        q.requires_grad_(True)
    with torch.enable_grad():
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(tuple(input_shape)),
                                                      verbose=False)
    want = {n: m.weight.shape[0] for n, m in prunable(target).items()}
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    for name, module in prunable(model).items():
        have = module.weight.shape[0]
        if want.get(name, have) >= have:
            continue
        fn = tp.prune_linear_out_channels if isinstance(module, torch.nn.Linear) else tp.prune_conv_out_channels
        scores = importance(graph.get_pruning_group(module, fn, idxs=list(range(have))))
        drop = torch.argsort(scores)[: have - want[name]].tolist()
        group = graph.get_pruning_group(module, fn, idxs=drop)
        if not graph.check_pruning_group(group):
            raise ReleaseError(f"cannot narrow layer '{name}' from {have} to {want[name]} channels "
                               f"without emptying a layer it is coupled to")
        group.prune()
    mine, theirs = model.state_dict(), target.state_dict()
    wrong = [k for k in theirs if k not in mine or mine[k].shape != theirs[k].shape]
    if wrong or set(mine) != set(theirs):
        k = wrong[0] if wrong else sorted(set(mine) ^ set(theirs))[0]
        raise ReleaseError(f"the student is not a narrower copy of the teacher: after narrowing, '{k}' is "
                           f"{tuple(mine[k].shape) if k in mine else 'missing'} in the teacher and "
                           f"{tuple(theirs[k].shape) if k in theirs else 'missing'} in the student")
