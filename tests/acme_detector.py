"""A third party's detector, as a user's own repository would hold it: tests/func/test_installed.py
copies this file into an empty folder as `acme/detector.py` and releases it with the installed tool.

It knows nothing of the release package (only torch, numpy and Pillow), and it is not the demo's
architecture: SiLU convolutions, CSP blocks (half the channels through bottlenecks, concatenated
with the other half), two feature levels (strides 4 and 8) decoded in the graph and concatenated
into one (1, A, 4 + classes) output: corner boxes in input pixels, then class scores.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

STRIDES = (4, 8)


class ConvBnSiLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int = 1, stride: int = 1):
        super().__init__(nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.SiLU())


class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(ConvBnSiLU(c, c, 1), ConvBnSiLU(c, c, 3))

    def forward(self, x):
        return x + self.body(x)


class CSPBlock(nn.Module):
    def __init__(self, c: int, depth: int = 1):
        super().__init__()
        half = c // 2
        self.main, self.side = ConvBnSiLU(c, half), ConvBnSiLU(c, half)
        self.blocks = nn.Sequential(*(Bottleneck(half) for _ in range(depth)))
        self.fuse = ConvBnSiLU(2 * half, c)

    def forward(self, x):
        return self.fuse(torch.cat([self.blocks(self.main(x)), self.side(x)], dim=1))


class AcmeDet(nn.Module):
    """Training mode returns the raw per-level maps (for the loss); eval mode the decoded boxes."""

    def __init__(self, num_classes: int = 2, width: int = 16):
        super().__init__()
        w, self.num_classes = width, num_classes
        self.stem = ConvBnSiLU(3, w, 3, 2)
        self.level1 = nn.Sequential(ConvBnSiLU(w, 2 * w, 3, 2), CSPBlock(2 * w))
        self.level2 = nn.Sequential(ConvBnSiLU(2 * w, 4 * w, 3, 2), CSPBlock(4 * w))
        self.heads = nn.ModuleList([nn.Conv2d(2 * w, 5 + num_classes, 1), nn.Conv2d(4 * w, 5 + num_classes, 1)])

    def forward(self, x):
        f1 = self.level1(self.stem(x))
        f2 = self.level2(f1)
        raw = [head(f) for head, f in zip(self.heads, (f1, f2))]
        return raw if self.training else torch.cat([_decode(r, s) for r, s in zip(raw, STRIDES)], dim=1)


def _decode(raw: torch.Tensor, stride: int) -> torch.Tensor:
    n, c, h, w = raw.shape
    r = raw.permute(0, 2, 3, 1).reshape(n, h * w, c)
    gy, gx = torch.meshgrid(torch.arange(h, dtype=raw.dtype), torch.arange(w, dtype=raw.dtype), indexing="ij")
    cx = (gx.reshape(1, -1) + torch.sigmoid(r[..., 0])) * stride
    cy = (gy.reshape(1, -1) + torch.sigmoid(r[..., 1])) * stride
    bw = torch.exp(r[..., 2].clamp(-6, 6)) * stride
    bh = torch.exp(r[..., 3].clamp(-6, 6)) * stride
    scores = torch.sigmoid(r[..., 4:5]) * torch.sigmoid(r[..., 5:])
    boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1)
    return torch.cat([boxes, scores], dim=-1)


def build(num_classes: int = 2, width: int = 16) -> AcmeDet:
    torch.manual_seed(0)
    return AcmeDet(num_classes, width)


class Adapter:
    """Resize and scale to [0, 1]; best class per box above a threshold, class-aware NMS."""

    output_names = ["detections"]

    def __init__(self, input_shape=(1, 3, 64, 64), score_threshold: float = 0.05, iou: float = 0.5,
                 max_detections: int = 50):
        self.height, self.width = int(input_shape[2]), int(input_shape[3])
        self.score_threshold, self.iou, self.max_detections = score_threshold, iou, max_detections

    def preprocess(self, image: np.ndarray):
        h, w = image.shape[:2]
        if (h, w) != (self.height, self.width):
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((self.width, self.height)))
        x = np.ascontiguousarray(image.astype(np.float32).transpose(2, 0, 1) / 255.0)
        return x, {"scale_x": self.width / w, "scale_y": self.height / h}

    def boxes_to_input(self, boxes: np.ndarray, meta: dict) -> np.ndarray:
        return np.asarray(boxes, np.float32).reshape(-1, 4) * np.array([meta["scale_x"], meta["scale_y"]] * 2,
                                                                        np.float32)

    def postprocess(self, outputs, meta: dict) -> np.ndarray:
        out = np.asarray(outputs[0], np.float32)[0]
        boxes, scores = out[:, :4], out[:, 4:]
        cls, score = scores.argmax(axis=1), scores.max(axis=1)
        keep = np.nonzero(score > self.score_threshold)[0]
        keep = keep[np.argsort(-score[keep], kind="stable")]
        kept = _nms(boxes[keep] + (cls[keep] * 10_000.0)[:, None], self.iou)[: self.max_detections]
        b, s, c = boxes[keep][kept], score[keep][kept], cls[keep][kept]
        b = b / np.array([meta["scale_x"], meta["scale_y"]] * 2, np.float32)
        return np.column_stack([b[:, :2], b[:, 2:] - b[:, :2], s, c]).astype(np.float32).reshape(-1, 6)

    def loss(self, outputs, targets: list[dict]) -> dict:
        """YOLO-style: each box is learnt at the cell of its centre on the level that fits its size."""
        bce = nn.functional.binary_cross_entropy_with_logits
        total_obj, total_box, total_cls = 0.0, 0.0, 0.0
        for raw, stride in zip(outputs, STRIDES):
            obj_target = torch.zeros_like(raw[:, 4])
            for i, t in enumerate(targets):
                for (x, y, w, h), label in zip(np.asarray(t["boxes"], np.float32).reshape(-1, 4),
                                               np.asarray(t["labels"]).reshape(-1)):
                    if (max(w, h) < 16) != (stride == STRIDES[0]):
                        continue
                    gx, gy = (x + w / 2) / stride, (y + h / 2) / stride
                    col, row = min(int(gx), raw.shape[3] - 1), min(int(gy), raw.shape[2] - 1)
                    cell = raw[i, :, row, col]
                    obj_target[i, row, col] = 1.0
                    offsets = torch.tensor([gx - col, gy - row])
                    sizes = torch.log(torch.tensor([max(w, 1.0) / stride, max(h, 1.0) / stride]))
                    total_box = total_box + bce(cell[:2], offsets) + (cell[2:4] - sizes).abs().sum()
                    onehot = torch.zeros(raw.shape[1] - 5)
                    onehot[int(label)] = 1.0
                    total_cls = total_cls + bce(cell[5:], onehot)
            total_obj = total_obj + bce(raw[:, 4], obj_target, reduction="sum") / max(1.0, len(targets))
        count = max(1, sum(len(np.asarray(t["labels"]).reshape(-1)) for t in targets))
        loss = total_obj + (total_box + total_cls) / count
        return {"loss": loss}


def _nms(boxes: np.ndarray, iou: float) -> list[int]:
    """Indices kept by greedy NMS of corner boxes sorted by score."""
    keep, order = [], list(range(len(boxes)))
    area = (boxes[:, 2] - boxes[:, 0]).clip(0) * (boxes[:, 3] - boxes[:, 1]).clip(0)
    while order:
        i, order = order[0], order[1:]
        keep.append(i)
        if not order:
            break
        rest = np.array(order)
        x0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = (x1 - x0).clip(0) * (y1 - y0).clip(0)
        overlap = inter / (area[i] + area[rest] - inter + 1e-9)
        order = [j for j, o in zip(order, overlap) if o <= iou]
    return keep
