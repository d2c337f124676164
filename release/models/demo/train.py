"""CPU training of the demo detector into a Lightning/NanoDet-style training checkpoint.

The checkpoint deliberately looks like what a real training run leaves behind, because that is the
input the release build must handle: raw weights under `model.*` (with the training-only
`aux_head.*`), an EMA copy under `avg_model.*` (NanoDet's name), AdamW moments, scheduler, callback
and loop state, and hyper-parameters. Every value is a tensor or a plain container/scalar, so it
loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import copy
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from release.atomic import atomic_file
from release.data import load_split
from release.models.demo.detector import Adapter, build
from release.optim import ema_update, param_groups

LIGHTNING_VERSION = "2.4.0"
# Real checkpoints carry the training machine's paths; a fixed one keeps ours byte-identical for a
# seed wherever the file is written, while still giving a build something that must not leak.
TRAINER_DIR = "/workspace/shapes-demo/checkpoints"


def default_config() -> dict:
    """Dataset and training sizes of the bundled demo: about 3.5 minutes of training on 2 CPU cores.

    Measured choices (eval mAP@[.5:.95]): at equal images seen, batch 16 beat batch 32 (0.43 vs
    0.36; more updates matter more than cleaner gradients in so short a run) for ~10% more time;
    lr 1.2e-2 gave 0.638 after 1600 steps and 1.6e-2 gave 0.632, while 3e-2 fell apart (0.31), so
    the default keeps a margin below that edge.
    """
    return {"seed": 0, "image_size": 128, "train_images": 3000, "calibration_images": 64, "eval_images": 300,
            "steps": 1600, "batch_size": 16, "lr": 1.2e-2, "width": 1.0, "num_classes": 3}


def tiny_config() -> dict:
    """Sizes for tests: seconds, not minutes; the numbers it reaches mean nothing."""
    return {"seed": 0, "image_size": 64, "train_images": 48, "calibration_images": 8, "eval_images": 8,
            "steps": 10, "batch_size": 8, "lr": 1.2e-2, "width": 0.5, "num_classes": 3}


def _load(data_dir: Path, adapter: Adapter) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """Every training image preprocessed once into one array; boxes in network-input pixels."""
    split = load_split(Path(data_dir) / "train" / "annotations.json", Path(data_dir) / "train" / "images",
                       split="train")

    def one(record):
        x, meta = adapter.preprocess(split.read_image(record))
        b, lab = split.boxes(record)
        return x, adapter.boxes_to_input(b, meta), lab

    # Threads suffice: PNG decoding and numpy release the GIL. map() keeps the order.
    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        loaded = list(pool.map(one, split.images))
    return np.stack([x for x, _, _ in loaded]), [b for _, b, _ in loaded], [lab for _, _, lab in loaded]


def _augment(x: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random symmetry of the square (flips, transpose): the shapes have no canonical orientation."""
    _, h, w = x.shape
    b = boxes.copy()
    if rng.random() < 0.5:
        x = x[:, :, ::-1]
        b[:, 0] = w - b[:, 0] - b[:, 2]
    if rng.random() < 0.5:
        x = x[:, ::-1, :]
        b[:, 1] = h - b[:, 1] - b[:, 3]
    if h == w and rng.random() < 0.5:
        x = x.transpose(0, 2, 1)
        b = b[:, [1, 0, 3, 2]]
    return x, b


def _plain(obj):
    """A copy with every tensor detached and in the standard (contiguous) layout.

    Training runs channels_last; a checkpoint should not hand that stride order to whoever reads it
    (safetensors, for one, refuses non-contiguous tensors).
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone(memory_format=torch.contiguous_format)
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _checkpoint(model, ema, optimizer, scheduler, *, step: int, epoch: int, hparams: dict, ema_decay: float) -> dict:
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    state.update({f"avg_model.{k}": v for k, v in ema.state_dict().items()})
    progress = {"ready": epoch + 1, "started": epoch + 1, "processed": epoch + 1, "completed": epoch + 1}
    batches = {"ready": step, "started": step, "processed": step, "completed": step}
    return {
        "epoch": epoch,
        "global_step": step,
        "pytorch-lightning_version": LIGHTNING_VERSION,
        "state_dict": _plain(state),
        "optimizer_states": [_plain(optimizer.state_dict())],
        "lr_schedulers": [scheduler.state_dict()],
        "callbacks": {
            "ModelCheckpoint{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1, "
            "'train_time_interval': None}": {
                "monitor": None, "best_model_score": None, "best_model_path": "", "current_score": None,
                "dirpath": TRAINER_DIR, "best_k_models": {}, "kth_best_model_path": "",
                "kth_value": torch.tensor(float("inf")), "last_model_path": f"{TRAINER_DIR}/last.ckpt",
            },
            "EMACallback": {"decay": ema_decay, "updates": step},
        },
        "hyper_parameters": hparams,
        "loops": {
            "fit_loop": {
                "state_dict": {},
                "epoch_progress": {"total": dict(progress), "current": dict(progress)},
                "epoch_loop.state_dict": {"_batches_that_stepped": step},
                "epoch_loop.batch_progress": {"total": dict(batches), "current": dict(batches),
                                              "is_last_batch": True},
                "epoch_loop.automatic_optimization.optim_progress": {
                    "optimizer": {"step": {"total": {"ready": step, "completed": step},
                                           "current": {"ready": step, "completed": step}}}},
            },
            "validate_loop": {"state_dict": {}},
            "test_loop": {"state_dict": {}},
            "predict_loop": {"state_dict": {}},
        },
    }


def _optimizer(model, lr: float, steps: int):
    """AdamW with a one-cycle schedule (warm-up over the first 15% of the steps)."""
    optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=lr, foreach=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.15,
                                                    div_factor=20.0, final_div_factor=50.0)
    return optimizer, scheduler


def _batches(inputs, boxes, labels, batch_size: int, steps: int, rng):
    """`steps` augmented batches (x as channels_last, targets) from epoch-wise shuffles: every image
    is seen once before any is seen twice."""
    order = np.zeros(0, dtype=np.int64)
    for _ in range(steps):
        if len(order) < batch_size:
            order = np.concatenate([order, rng.permutation(len(inputs))])
        idx, order = order[:batch_size], order[batch_size:]
        batch, targets = [], []
        for i in idx:
            x, b = _augment(inputs[i], boxes[i], rng)
            batch.append(x)
            targets.append({"boxes": b, "labels": labels[i]})
        yield torch.from_numpy(np.stack(batch)).contiguous(memory_format=torch.channels_last), targets


def train(data_dir: Path, out_ckpt: Path, *, num_classes: int = 3, width: float = 1.0, image_size: int = 128,
          steps: int = 1600, batch_size: int = 16, lr: float = 1.2e-2, seed: int = 0, progress: bool = True) -> dict:
    """Train on `data_dir/train` and write a Lightning-style checkpoint atomically to `out_ckpt`."""
    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        adapter = Adapter(input_shape=(1, 3, image_size, image_size))
        inputs, boxes, labels = _load(data_dir, adapter)
        # channels_last: oneDNN's convolutions run faster on CPU in NHWC (docs/benchmarks.md).
        model = build(num_classes, width, aux_head=True).to(memory_format=torch.channels_last)
        ema = copy.deepcopy(model).eval()
        for p in ema.parameters():
            p.requires_grad_(False)
        optimizer, scheduler = _optimizer(model, lr, steps)
        ema_decay = 0.99
        losses: list[float] = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=steps, desc="train", unit="step", dynamic_ncols=True)
        model.train()
        for step, (x, targets) in enumerate(_batches(inputs, boxes, labels, batch_size, steps, rng)):
            outputs = model.forward_train(x)
            loss = adapter.loss(outputs, targets)
            optimizer.zero_grad(set_to_none=True)
            loss["loss"].backward()
            optimizer.step()
            scheduler.step()
            # Warm-up of the EMA decay: the early, random weights should not linger in the average.
            ema_update(ema, model, min(ema_decay, (1 + step) / (10 + step)))
            losses.append(float(loss["loss"].detach()))
            if bar is not None:
                bar.update(1)
                if step % 10 == 0 or step == steps - 1:
                    bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if bar is not None:
            bar.close()
        epoch = max(steps * batch_size // len(inputs) - 1, 0)
        hparams = {"num_classes": num_classes, "width": width, "image_size": image_size, "lr": lr, "steps": steps,
                   "batch_size": batch_size, "seed": seed}
        ckpt = _checkpoint(model, ema, optimizer, scheduler, step=steps, epoch=epoch, hparams=hparams,
                           ema_decay=ema_decay)
        with atomic_file(Path(out_ckpt)) as handle:
            torch.save(ckpt, handle)
    finally:
        torch.set_num_threads(previous_threads)
    window = max(1, min(10, len(losses) // 2))  # means over a few steps: single-batch losses are noisy
    return {
        "steps": steps,
        "images": len(inputs),
        "seconds": round(time.perf_counter() - started, 2),
        "loss_start": float(np.mean(losses[:window])),
        "loss_final": float(np.mean(losses[-window:])),
        "parameters": {"train": sum(p.numel() for p in model.parameters()),
                       "deploy": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux_head."))},
    }
