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
        from release.demo.detector import Adapter

        self._inner = Adapter(input_shape)
        self.preprocess, self.postprocess = self._inner.preprocess, self._inner.postprocess
        self.boxes_to_input = self._inner.boxes_to_input
