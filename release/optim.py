"""Optimizer helpers shared by the demo trainer and the training stages (kept apart from
release/training.py so that editing the stages' training loop does not retrain the demo)."""

from __future__ import annotations


def param_groups(model, weight_decay: float) -> list[dict]:
    """No decay on BN and biases: shrinking them towards zero only fights the normalisation."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in trainable if p.ndim > 1], "weight_decay": weight_decay},
            {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0}]


def ema_update(ema, model, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, for every floating-point tensor; others are copied."""
    import torch

    with torch.no_grad():
        for e, m in zip(ema.state_dict().values(), model.state_dict().values(), strict=True):
            if e.dtype.is_floating_point:
                e.mul_(decay).add_(m.detach(), alpha=1 - decay)
            else:
                e.copy_(m)


def usable_cpus() -> int:
    """CPUs this process may run on (affinity and cgroup-pinned sets), not the machine's count."""
    import os

    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1
