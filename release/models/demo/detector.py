"""The demo detector: a small CenterNet-style network, its builder, and its Adapter.

The network predicts, at output stride 4, a per-class centre heatmap (sigmoid applied inside, so the
ONNX file emits scores), a box size as log(size / stride), and the sub-cell offset of the centre.
Log sizes keep the size loss scale-free, which is what IoU-based mAP rewards. Only Conv, BN, ReLU,
nearest Upsample, Concat and Sigmoid are used, so the export is plain opset-17 ONNX.

`build(aux_head=True)` adds a training-only deep-supervision head (a stride-8 heatmap from the
neck) under `aux_head.*`; dropping those keys gives exactly the state dict of `build()`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

MEAN, STD = 0.5, 0.25  # on [0, 1] pixels; the shapes images span the whole range
# Stem, /4, /8, /16, /32 stages; /8 and /4 merges; regression-head width (before `width` scaling).
CHANNELS = (16, 24, 48, 96, 128, 64, 32, 16)
HEATMAP_PRIOR_BIAS = -2.19  # sigmoid(-2.19) ~ 0.1: CenterNet's start, so early focal loss is sane


def _ch(n: int, width: float) -> int:
    return max(8, int(round(n * width / 8)) * 8)


def _cbr(cin: int, cout: int, stride: int = 1, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _head(cin: int, mid: int, cout: int, bias: float = 0.0) -> nn.Sequential:
    head = nn.Sequential(nn.Conv2d(cin, mid, 3, 1, 1), nn.ReLU(inplace=True), nn.Conv2d(mid, cout, 1))
    nn.init.constant_(head[-1].bias, bias)
    return head


class CenterNet(nn.Module):
    """Backbone /4 -> /32, a top-down merge back to /4, and three heads at /4.

    Compute is the budget (a 2-core CPU trains it), so channels are thin where the maps are large
    and wide where they are small: the /16 and /32 stages hold most parameters but few FLOPs, and
    give the receptive field the largest shapes need.
    """

    def __init__(self, num_classes: int = 3, width: float = 1.0, aux_head: bool = False):
        super().__init__()
        c2, c4, c8, c16, c32, n8, n4, reg = (_ch(n, width) for n in CHANNELS)
        self.stem = nn.Sequential(_cbr(3, c2, 2), _cbr(c2, c4, 2))
        self.down8 = nn.Sequential(_cbr(c4, c8, 2), _cbr(c8, c8))
        self.down16 = nn.Sequential(_cbr(c8, c16, 2), _cbr(c16, c16), _cbr(c16, c16))
        self.down32 = nn.Sequential(_cbr(c16, c32, 2), _cbr(c32, c32))
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        # Top-down path: 1x1 convs fuse the concatenated maps cheaply; one 3x3 smooths at /8.
        self.merge16 = _cbr(c32 + c16, c16, k=1)
        self.merge8 = nn.Sequential(_cbr(c16 + c8, n8, k=1), _cbr(n8, n8))
        self.merge4 = _cbr(n8 + c4, n4, k=1)
        self.heatmap = _head(n4, n4, num_classes, HEATMAP_PRIOR_BIAS)
        self.size = _head(n4, reg, 2)
        self.offset = _head(n4, reg, 2)
        if aux_head:
            self.aux_head = _head(n8, n4, num_classes, HEATMAP_PRIOR_BIAS)

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f4 = self.stem(x)
        f8 = self.down8(f4)
        f16 = self.down16(f8)
        f32 = self.down32(f16)
        p16 = self.merge16(torch.cat([self.up(f32), f16], 1))
        p8 = self.merge8(torch.cat([self.up(p16), f8], 1))
        p4 = self.merge4(torch.cat([self.up(p8), f4], 1))
        return p4, p8

    def _outputs(self, p4: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return torch.sigmoid(self.heatmap(p4)), self.size(p4), self.offset(p4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._outputs(self._features(x)[0])

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The three outputs plus the stride-8 auxiliary heatmap (needs aux_head=True)."""
        p4, p8 = self._features(x)
        return (*self._outputs(p4), torch.sigmoid(self.aux_head(p8)))


def build(num_classes: int = 3, width: float = 1.0, aux_head: bool = False) -> nn.Module:
    return CenterNet(num_classes, width, aux_head)


# ----------------------------------------------------------------------------------------------
# Targets and losses


def _gaussian_targets(boxes: np.ndarray, labels: np.ndarray, num_classes: int, shape: tuple[int, int],
                      stride: float) -> dict[str, np.ndarray]:
    """Heatmap (C, h, w) with an elliptical Gaussian per object, and size/offset targets.

    The Gaussian's sigmas follow the box (TTFNet-style, alpha=0.54), so elongated objects get
    elongated peaks. Size/offset are regressed at every cell where the object's Gaussian is >= 0.3
    (weighted by it), not only at the peak: more positives converge much faster, and the offset
    target is the displacement to the true centre, so decoding from a neighbouring peak still lands
    on the right box.
    """
    h, w = shape
    heat = np.zeros((num_classes, h, w), np.float32)
    size_t = np.zeros((2, h, w), np.float32)
    off_t = np.zeros((2, h, w), np.float32)
    weight = np.zeros((h, w), np.float32)
    # Largest first, so smaller objects win the cells they share with a bigger one.
    for k in np.argsort(-(boxes[:, 2] * boxes[:, 3]), kind="stable"):
        bx, by, bw, bh = boxes[k] / stride
        if bw <= 0 or bh <= 0:
            continue
        cx, cy = bx + bw / 2, by + bh / 2
        ix, iy = min(int(cx), w - 1), min(int(cy), h - 1)
        sx, sy = max(0.54 * bw / 6, 0.4), max(0.54 * bh / 6, 0.4)
        rx, ry = int(3 * sx) + 1, int(3 * sy) + 1
        x0, x1, y0, y1 = max(ix - rx, 0), min(ix + rx + 1, w), max(iy - ry, 0), min(iy + ry + 1, h)
        gx = np.exp(-((np.arange(x0, x1) - ix) ** 2) / (2 * sx * sx))
        gy = np.exp(-((np.arange(y0, y1) - iy) ** 2) / (2 * sy * sy))
        g = (gy[:, None] * gx[None, :]).astype(np.float32)
        region = heat[int(labels[k]), y0:y1, x0:x1]
        np.maximum(region, g, out=region)
        ys, xs = np.nonzero((g >= 0.3) & (g >= weight[y0:y1, x0:x1]))
        weight[y0 + ys, x0 + xs] = g[ys, xs]
        size_t[0, y0 + ys, x0 + xs] = np.log(bw)
        size_t[1, y0 + ys, x0 + xs] = np.log(bh)
        off_t[0, y0 + ys, x0 + xs] = cx - (x0 + xs)
        off_t[1, y0 + ys, x0 + xs] = cy - (y0 + ys)
    return {"heatmap": heat, "size": size_t, "offset": off_t, "weight": weight}


def _focal(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha=2, beta=4), normalised by the object count."""
    pred = pred.clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1).float()
    pos_loss = torch.log(pred) * (1 - pred) ** 2 * pos
    neg_loss = torch.log(1 - pred) * pred**2 * (1 - target) ** 4 * (1 - pos)
    return -(pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1)


# ----------------------------------------------------------------------------------------------
# Adapter


class Adapter:
    """Pre/post-processing and loss for `build`; see release/adapter.py for the protocol."""

    output_names = ["heatmap", "size", "offset"]

    def __init__(self, input_shape=(1, 3, 128, 128), score_threshold: float = 0.05, max_detections: int = 100,
                 size_weight: float = 1.0, offset_weight: float = 1.0, aux_weight: float = 0.5):
        self.input_shape = tuple(int(v) for v in input_shape)
        self.height, self.width = self.input_shape[2], self.input_shape[3]
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)
        self.size_weight, self.offset_weight, self.aux_weight = size_weight, offset_weight, aux_weight

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """Plain resize to the input size (the demo images already match), then normalise."""
        h, w = image.shape[:2]
        if (h, w) != (self.height, self.width):
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((self.width, self.height), Image.Resampling.BILINEAR))
        x = (image.astype(np.float32).transpose(2, 0, 1) / 255.0 - MEAN) / STD
        return np.ascontiguousarray(x, dtype=np.float32), {"scale_x": self.width / w, "scale_y": self.height / h,
                                                             "orig_width": w, "orig_height": h}

    def boxes_to_input(self, boxes: np.ndarray, meta: dict) -> np.ndarray:
        scale = np.array([meta["scale_x"], meta["scale_y"]] * 2, np.float32)
        return np.asarray(boxes, np.float32).reshape(-1, 4) * scale

    def postprocess(self, outputs: list[np.ndarray], meta: dict) -> np.ndarray:
        """Peaks of the heatmap (3x3 max-pool NMS), top-k, decoded to original-pixel boxes."""
        heat, size, offset = (np.asarray(o, np.float32)[0] for o in outputs[:3])
        c, h, w = heat.shape
        stride_x, stride_y = self.width / w, self.height / h
        padded = np.pad(heat, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
        pooled = np.max([padded[:, dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)], axis=0)
        scores = np.where((heat == pooled) & (heat >= self.score_threshold), heat, 0).ravel()
        k = min(self.max_detections, int(np.count_nonzero(scores)))
        if k == 0:
            return np.zeros((0, 6), np.float32)
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top], kind="stable")]
        cls, rest = np.divmod(top, h * w)
        ys, xs = np.divmod(rest, w)
        cx = (xs + offset[0, ys, xs]) * stride_x
        cy = (ys + offset[1, ys, xs]) * stride_y
        bw = np.exp(np.clip(size[0, ys, xs], -10, 10)) * stride_x
        bh = np.exp(np.clip(size[1, ys, xs], -10, 10)) * stride_y
        x0 = np.clip((cx - bw / 2) / meta["scale_x"], 0, meta["orig_width"])
        y0 = np.clip((cy - bh / 2) / meta["scale_y"], 0, meta["orig_height"])
        x1 = np.clip((cx + bw / 2) / meta["scale_x"], 0, meta["orig_width"])
        y1 = np.clip((cy + bh / 2) / meta["scale_y"], 0, meta["orig_height"])
        return np.stack([x0, y0, x1 - x0, y1 - y0, scores[top], cls], axis=1).astype(np.float32)

    def encode_targets(self, targets: list[dict], num_classes: int, shape: tuple[int, int]) -> dict:
        """Batched training targets at an output resolution, as torch tensors."""
        stride = self.height / shape[0]
        per_image = [_gaussian_targets(np.asarray(t["boxes"], np.float32).reshape(-1, 4),
                                       np.asarray(t["labels"]).reshape(-1), num_classes, shape, stride)
                     for t in targets]
        return {key: torch.from_numpy(np.stack([p[key] for p in per_image])) for key in per_image[0]}

    def loss(self, outputs, targets: list[dict]) -> dict:
        """outputs: (heatmap, size, offset) or those plus the auxiliary heatmap (forward_train)."""
        heat, size, offset = outputs[:3]
        num_classes, shape = heat.shape[1], tuple(heat.shape[2:])
        t = self.encode_targets(targets, num_classes, shape)
        weight = t["weight"].unsqueeze(1)
        norm = t["weight"].sum().clamp(min=1e-4)
        losses = {
            "heatmap": _focal(heat, t["heatmap"]),
            "size": self.size_weight * ((size - t["size"]).abs() * weight).sum() / norm,
            "offset": self.offset_weight * ((offset - t["offset"]).abs() * weight).sum() / norm,
        }
        if len(outputs) > 3:
            aux = outputs[3]
            # Max-pooling the /4 target keeps every peak at exactly 1 and costs nothing to build.
            aux_target = torch.nn.functional.adaptive_max_pool2d(t["heatmap"], tuple(aux.shape[2:]))
            losses["aux"] = self.aux_weight * _focal(aux, aux_target)
        losses["loss"] = sum(losses.values())
        return losses

    def distill_loss(self, student, teacher) -> dict:
        """Match the teacher's heads: its heatmap as soft targets, its boxes where it sees objects.

        The heatmap term is a binary cross-entropy against the teacher's scores, modulated like a
        focal loss by the squared disagreement (the near-zero background would otherwise dominate)
        and normalised by the number of cells the teacher scores >= 0.3, as the focal loss is by the
        object count.
        Size and offset are matched with L1, weighted by the teacher's peak class score per cell.
        """
        s_heat, s_size, s_off = student[:3]
        t_heat, t_size, t_off = (t.detach() for t in teacher[:3])
        p = s_heat.clamp(1e-4, 1 - 1e-4)
        bce = -(t_heat * torch.log(p) + (1 - t_heat) * torch.log(1 - p))
        peaks = (t_heat >= 0.3).sum().clamp(min=1)  # ~ the objects the teacher sees, as the focal loss counts
        heat = (bce * (t_heat - p).detach().abs() ** 2).sum() / peaks
        weight = t_heat.max(1, keepdim=True).values
        norm = weight.sum().clamp(min=1e-4)
        losses = {
            "heatmap": heat,
            "size": self.size_weight * ((s_size - t_size).abs() * weight).sum() / norm,
            "offset": self.offset_weight * ((s_off - t_off).abs() * weight).sum() / norm,
        }
        losses["loss"] = sum(losses.values())
        return losses
