"""Tiny detector-like nets exported to ONNX for stage and measurement tests (seconds, not minutes)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn


def _conv_bn_relu(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class TinyDetector(nn.Module):
    """Conv-BN-ReLU x3 with a Sigmoid score head and a regression head."""

    def __init__(self, channels: tuple[int, int, int] = (32, 64, 64)) -> None:
        super().__init__()
        a, b, c = channels
        self.body = nn.Sequential(_conv_bn_relu(3, a, 2), _conv_bn_relu(a, b, 2), _conv_bn_relu(b, c, 1))
        self.cls = nn.Conv2d(c, 4, 1)
        self.reg = nn.Conv2d(c, 4, 1)

    def forward(self, x: torch.Tensor):
        features = self.body(x)
        return torch.sigmoid(self.cls(features)), self.reg(features)


def export_tiny_detector(path: Path, channels: tuple[int, int, int] = (32, 64, 64), trained_bn: bool = False) -> Path:
    """A seeded TinyDetector as single-file ONNX (input 'input' 1x3x32x32, outputs 'scores', 'boxes').

    trained_bn gives BatchNorm non-trivial statistics, as in a trained net, so folding them matters.
    """
    torch.manual_seed(0)
    model = TinyDetector(channels).eval()
    if trained_bn:
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and chosen on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, torch.randn(1, 3, 32, 32), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["scores", "boxes"])
    return path


class NoLossAdapter:
    """An adapter that can pre- and post-process but cannot train (no loss)."""

    output_names = ["heatmap", "size", "offset"]

    def __init__(self, input_shape=(1, 3, 64, 64)):
        from release.models.demo.detector import Adapter

        self._inner = Adapter(input_shape)
        self.preprocess, self.postprocess = self._inner.preprocess, self._inner.postprocess
        self.boxes_to_input = self._inner.boxes_to_input


# ---------------------------------------------------------------- a YOLO-style single-output detector

def build_yolo_style(num_classes: int = 3, width: float = 0.5, canvas: int = 640, input_size: int = 64,
                     nested: bool = False):
    """The demo CenterNet (same weights, same keys) with a YOLO-style single output of shape
    (1, H*W, 4 + classes): per cell, box corners in pixels of a `canvas`-sized image (up to ~640,
    as a YOLOv5 at 640 px emits them) beside the class scores in [0, 1]. nested: that tensor is
    concatenated once more with a coordinate column, so two Concats each hold coordinates beside
    scores and keeping either alone in float does not save the scores."""
    from release.models.demo.detector import CenterNet

    class YoloStyle(CenterNet):
        def forward(self, x):
            heat, size, offset = super().forward(x)
            n, c, h, w = heat.shape
            stride, scale = input_size / w, canvas / input_size
            ys = torch.arange(h, dtype=x.dtype).view(1, h, 1).expand(1, h, w)
            xs = torch.arange(w, dtype=x.dtype).view(1, 1, w).expand(1, h, w)
            cx, cy = (xs + offset[:, 0]) * stride, (ys + offset[:, 1]) * stride
            bw = torch.exp(size[:, 0].clamp(-10, 10)) * stride
            bh = torch.exp(size[:, 1].clamp(-10, 10)) * stride
            boxes = torch.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], dim=-1) * scale
            out = torch.cat([boxes, heat.permute(0, 2, 3, 1)], dim=-1).reshape(n, h * w, 4 + c)
            return torch.cat([out, out[..., :1]], dim=-1) if nested else out

    return YoloStyle(num_classes, width, False)


class YoloStyleAdapter:
    """Pre/post-processing for build_yolo_style: the demo's preprocessing; best class per cell above
    a threshold, class-aware NMS, boxes scaled back from the canvas."""

    output_names = ["detections"]

    def __init__(self, input_shape=(1, 3, 64, 64), canvas: int = 640, score_threshold: float = 0.05,
                 nms_iou: float = 0.5, max_detections: int = 100, classes: int = 3):
        from release.models.demo.detector import Adapter

        self._inner = Adapter(input_shape)
        self.preprocess, self.boxes_to_input = self._inner.preprocess, self._inner.boxes_to_input
        self.scale = canvas / input_shape[3]
        self.score_threshold, self.nms_iou, self.max_detections = score_threshold, nms_iou, max_detections
        self.classes = classes

    def postprocess(self, outputs, meta):
        import numpy as np

        from release.models.torchvision import nms

        out = np.asarray(outputs[0], np.float32)[0]
        boxes, scores = out[:, :4] / self.scale, out[:, 4:4 + self.classes]
        cls, score = scores.argmax(axis=1), scores.max(axis=1)
        keep = np.nonzero(score > self.score_threshold)[0]
        if keep.size == 0:
            return np.zeros((0, 6), np.float32)
        boxes, cls, score = boxes[keep], cls[keep], score[keep]
        kept = nms(boxes + (cls * 10_000.0)[:, None], score, self.nms_iou)[: self.max_detections]
        b = boxes[kept] / np.array([meta["scale_x"], meta["scale_y"]] * 2, np.float32)
        return np.column_stack([b[:, :2], b[:, 2:] - b[:, :2], score[kept], cls[kept]]).astype(np.float32)


class MultiLevel(nn.Module):
    """An FCOS-style head on three feature levels: per level a class and a box convolution, each
    output flattened and concatenated across levels; boxes decoded with exp() times the stride."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU())
        self.levels = nn.ModuleList(nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU()) for _ in range(3))
        self.cls = nn.ModuleList(nn.Conv2d(8, classes, 3, 1, 1) for _ in range(3))
        self.reg = nn.ModuleList(nn.Conv2d(8, 4, 3, 1, 1) for _ in range(3))

    def forward(self, x):
        f, scores, boxes = self.stem(x), [], []
        for i, (level, cls, reg) in enumerate(zip(self.levels, self.cls, self.reg)):
            f = level(f)
            n = f.shape[0]
            scores.append(cls(f).flatten(2).transpose(1, 2))
            boxes.append(torch.exp(reg(f)).flatten(2).transpose(1, 2) * float(4 * 2 ** i))
        return torch.sigmoid(torch.cat(scores, 1)), torch.cat(boxes, 1).reshape(n, -1, 4)
