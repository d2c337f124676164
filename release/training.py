"""CPU training for the stages that train (finetune, distill): data, schedule, EMA, resume.

Determinism and resumption come from one idea: everything a step uses is a function of (seed, step).
Step s takes the images at positions s*B .. s*B+B-1 of an endless stream of epoch-wise shuffles,
each shuffle seeded by (seed, epoch), and flips them with a generator seeded by (seed, step); the
learning rate is a function of s. So a resumed run needs only the model, EMA and optimizer state
saved at its last checkpoint to continue exactly where the interrupted one was.

Only pydantic is imported at module level: stage modules import TrainParams to validate manifests.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from release.params import StageParams

RESUME_SCHEMA = 1


class TrainParams(StageParams):
    steps: int = Field(300, gt=0, description="optimizer steps")
    lr: float = Field(2e-3, gt=0, lt=1, description="peak learning rate (AdamW)")
    batch_size: int = Field(16, gt=0, le=1024)
    seed: int = Field(0, ge=0, description="seeds the weights' noise, the data order and the flips")
    schedule: Literal["cosine", "linear", "constant"] = Field(
        "cosine", description="learning-rate decay after warm-up, to 1% of lr at the last step")
    warmup_steps: int = Field(20, ge=0, description="linear warm-up from 5% of lr")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW decay of conv/linear weights (not BN, biases)")
    ema: float = Field(0.99, ge=0, lt=1, description="decay of the weights' moving average that is "
                                                      "written out; 0 writes the last step's weights")
    augment: bool = Field(True, description="random horizontal flips")
    checkpoint_every: int = Field(50, gt=0, description="steps between resume checkpoints")

    @model_validator(mode="after")
    def _warmup_fits(self):
        if "warmup_steps" in self.model_fields_set and self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be less than steps ({self.steps})")
        return self

    @property
    def warmup(self) -> int:
        """Warm-up steps used: as set, or the default capped at a fifth of a short run."""
        return self.warmup_steps if "warmup_steps" in self.model_fields_set else min(self.warmup_steps,
                                                                                         self.steps // 5)


@dataclass
class TrainSet:
    """A training split preprocessed once: inputs (N, C, H, W) float32, boxes in input pixels."""

    inputs: Any
    boxes: list
    labels: list

    def __len__(self) -> int:
        return len(self.inputs)


def load_train_set(ref, adapter, labels: bool = True, split_name: str = "train") -> TrainSet:
    """Read and preprocess every image of a split (threads: PNG decoding releases the GIL).

    The whole split is held in memory as float32 (the demo's 3,000 images of 128x128: 590 MB);
    a split too large for that needs a streaming loader, which this does not have yet."""
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    from release.data import open_split

    split = open_split(ref, split=split_name)

    def one(record):
        x, meta = adapter.preprocess(split.read_image(record))
        if not labels:
            return x, np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        b, lab = split.boxes(record)
        return x, adapter.boxes_to_input(b, meta), lab

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        loaded = list(pool.map(one, split.images))
    return TrainSet(np.stack([x for x, _, _ in loaded]).astype(np.float32), [b for _, b, _ in loaded],
                    [lab for _, _, lab in loaded])


def batch_indices(step: int, batch_size: int, n: int, seed: int):
    """Indices of step `step`: positions s*B.. of epoch-wise shuffles seeded by (seed, epoch)."""
    import numpy as np

    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = np.divmod(positions, n)
    perms = {e: np.random.default_rng([seed, int(e)]).permutation(n) for e in np.unique(epochs)}
    return np.array([perms[e][o] for e, o in zip(epochs, offsets)])


def make_batch(data: TrainSet, step: int, p: TrainParams):
    """(inputs (B, C, H, W) float32, targets) of one step; flips are seeded by (seed, step)."""
    import numpy as np

    rng = np.random.default_rng([p.seed, step, 1])
    xs, targets = [], []
    for i in batch_indices(step, p.batch_size, len(data), p.seed):
        x, b = data.inputs[i], np.array(data.boxes[i], np.float32).reshape(-1, 4)
        if p.augment and rng.random() < 0.5:
            x = x[:, :, ::-1]
            b[:, 0] = x.shape[2] - b[:, 0] - b[:, 2]
        xs.append(x)
        targets.append({"boxes": b, "labels": data.labels[i]})
    return np.ascontiguousarray(np.stack(xs)), targets


def lr_at(step: int, p: TrainParams) -> float:
    warmup = p.warmup
    if step < warmup:
        return p.lr * (0.05 + 0.95 * step / warmup)
    if p.schedule == "constant":
        return p.lr
    t = (step - warmup) / max(1, p.steps - 1 - warmup)
    t = min(max(t, 0.0), 1.0)
    floor = 0.01
    if p.schedule == "linear":
        return p.lr * (1 - (1 - floor) * t)
    return p.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def sparsity_masks(model) -> dict:
    """Masks of the conv/linear weights' nonzeros: training with them keeps a magnitude-pruned
    model's zeros at zero, so its sparsity survives fine-tuning."""
    return {name: p.detach() != 0 for name, p in model.named_parameters() if p.ndim > 1 and bool((p == 0).any())}


def _restore(state: dict, key: str, model, ema, optimizer) -> None:
    """Apply a resume checkpoint, or raise ValueError leaving every object untouched."""
    import torch

    if state.get("schema") != RESUME_SCHEMA or state.get("key") != key:
        raise ValueError("it was written for other params or code")
    for name, target, saved in (("model", model, state["model"]), ("ema", ema, state["ema"])):
        if target is None:
            continue
        mine = target.state_dict()
        if set(mine) != set(saved) or any(mine[k].shape != saved[k].shape for k in mine):
            raise ValueError(f"its {name} weights do not fit this network")
    before = copy_state(model), copy_state(ema), optimizer.state_dict()
    try:
        model.load_state_dict(state["model"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
    except (RuntimeError, ValueError, KeyError) as exc:
        model.load_state_dict(before[0])
        if ema is not None:
            ema.load_state_dict(before[1])
        optimizer.load_state_dict(before[2])
        raise ValueError(f"it does not load ({exc})") from None


def copy_state(module) -> dict | None:
    return None if module is None else {k: v.clone() for k, v in module.state_dict().items()}


def fit(model, data: TrainSet, p: TrainParams, loss_fn: Callable, *, resume: Path | None = None,
        key: str = "", keep_zeros: bool = False, label: str = "train", progress: bool = False,
        log: Callable[[str], None] = print) -> tuple[Any, dict]:
    """Train `model` for p.steps; returns (the model to write: EMA or last, facts).

    loss_fn(model, x, targets) -> dict with a 'loss' tensor (and any named parts, logged).
    `resume`: a file where the state is checkpointed every p.checkpoint_every steps and at the end;
    when it holds a checkpoint written with the same params and `key` (the stage's fingerprint),
    training continues from it. An unreadable or foreign checkpoint is ignored, with a message. The
    caller removes the file once the output is safely written.
    `keep_zeros`: keep the exact zeros of conv/linear weights (a magnitude-pruned input) at zero.
    Results are deterministic for a seed on one machine with one thread count.
    """
    import torch

    from release.optim import usable_cpus

    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(usable_cpus())
    key = f"{key}|{p.model_dump_json()}"
    try:
        torch.manual_seed(p.seed)
        model, masks, ema, optimizer = _setup(model, p, keep_zeros)
        start, losses = _resumed(resume, key, model, ema, optimizer, p, label, log)
        parts = _loop(model, ema, optimizer, masks, data, p, loss_fn, start, losses,
                      resume=resume, key=key, label=label, progress=progress)
    finally:
        torch.set_num_threads(previous_threads)
    out = (ema if ema is not None else model).eval()
    return out, _facts(p, data, start, losses, parts, started, len(masks))


def _setup(model, p: TrainParams, keep_zeros: bool):
    """(the model in channels_last training mode, the zero masks to keep, its EMA copy, AdamW)."""
    import copy

    import torch

    from release.optim import param_groups

    # channels_last: oneDNN's convolutions run faster on CPU in NHWC (see docs/benchmarks.md).
    model = model.to(memory_format=torch.channels_last).train()
    masks = sparsity_masks(model) if keep_zeros else {}
    ema = copy.deepcopy(model).eval() if p.ema > 0 else None
    if ema is not None:
        for q in ema.parameters():
            q.requires_grad_(False)
    optimizer = torch.optim.AdamW(param_groups(model, p.weight_decay), lr=p.lr, foreach=True)
    return model, masks, ema, optimizer


def _resumed(resume: Path | None, key: str, model, ema, optimizer, p: TrainParams, label: str, log) -> tuple[int, list]:
    """(the step to start at, the losses so far): from the resume file when it is this run's."""
    import torch

    if resume is None or not resume.is_file():
        return 0, []
    try:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        _restore(state, key, model, ema, optimizer)
        start, losses = int(state["step"]), list(state["losses"])
        log(f"{label}: resuming at step {start} of {p.steps} from {resume}")
        return start, losses
    except Exception as exc:  # noqa: BLE001 - a truncated, foreign or stale file: start over
        log(f"{label}: ignoring the resume checkpoint {resume} ({exc}); starting from step 0")
        return 0, []


def _loop(model, ema, optimizer, masks, data, p: TrainParams, loss_fn, start: int, losses: list, *,
          resume: Path | None, key: str, label: str, progress: bool) -> dict[str, list[float]]:
    """The optimizer steps from `start`; appends to `losses`, returns the named loss parts."""
    import numpy as np
    import torch

    from release.optim import ema_update

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=p.steps, initial=start, desc=label, unit="step", dynamic_ncols=True)
    named = dict(model.named_parameters())
    parts: dict[str, list[float]] = {}
    for step in range(start, p.steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, p)
        x, targets = make_batch(data, step, p)
        x = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
        loss = loss_fn(model, x, targets)
        optimizer.zero_grad(set_to_none=True)
        loss["loss"].backward()
        optimizer.step()
        if masks:
            with torch.no_grad():
                for name, mask in masks.items():
                    named[name].mul_(mask)
        if ema is not None:
            # Warm-up of the decay: the first steps' weights should not linger in the average.
            ema_update(ema, model, min(p.ema, (1 + step) / (10 + step)))
        losses.append(float(loss["loss"].detach()))
        for name, value in loss.items():
            if name != "loss":
                parts.setdefault(name, []).append(float(value.detach()))
        if bar is not None:
            bar.update(1)
            if step % 10 == 0 or step == p.steps - 1:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", lr=f"{lr_at(step, p):.2e}")
        done = step + 1
        if resume is not None and (done % p.checkpoint_every == 0 or done == p.steps):
            _checkpoint(resume, key, done, model, ema, optimizer, losses)
    if bar is not None:
        bar.close()
    return parts


def _checkpoint(resume: Path, key: str, done: int, model, ema, optimizer, losses: list) -> None:
    import torch

    from release.atomic import atomic_file

    resume.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(resume) as handle:
        torch.save({"schema": RESUME_SCHEMA, "key": key, "step": done,
                    "model": model.state_dict(), "ema": ema.state_dict() if ema is not None else {},
                    "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                    "losses": losses}, handle)


def _facts(p: TrainParams, data, start: int, losses: list, parts: dict, started: float, kept_sparse: int) -> dict:
    import numpy as np

    window = max(1, min(20, len(losses) // 4))  # single-batch losses are noisy: means over a window
    curve_at = sorted({int(i) for i in np.linspace(0, len(losses) - 1, num=min(len(losses), 20))})
    return {
        "steps": p.steps, "resumed_from": start, "images": len(data),
        "loss_start": float(np.mean(losses[:window])), "loss_final": float(np.mean(losses[-window:])),
        "loss_curve": [[i, round(float(np.mean(losses[max(0, i - window + 1): i + 1])), 5)] for i in curve_at],
        "loss_parts_final": {k: float(np.mean(v[-window:])) for k, v in parts.items()},
        "seconds_per_step": round((time.perf_counter() - started) / max(1, p.steps - start), 4),
        "kept_sparse": kept_sparse,
    }
