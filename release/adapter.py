"""The contract between the build system and a model family.

The build system knows nothing about detector heads. An adapter (named in the manifest as
`model.adapter: package.module:Class`) owns what is specific to one family: how an image becomes the
network input, how raw outputs become boxes, and the training loss. The same pre- and
post-processing run in PyTorch and on ONNX Runtime outputs, so the model that ships is the model
that is scored.

    adapter = Adapter(input_shape=(1, 3, H, W), **model.adapter_kwargs)
    x, meta = adapter.preprocess(image_rgb_uint8)        # (3, H, W) float32, dict
    dets = adapter.postprocess([out0, out1, ...], meta)  # outputs for ONE image (batch dim 1)
    # dets: (N, 6) float array: x, y, w, h (original image pixels), score, class index
    losses = adapter.loss(outputs, targets)              # torch; dict with a 'loss' entry
    # targets: list (one per image) of dicts {"boxes": (N,4) xywh in network-input pixels,
    #                                          "labels": (N,) class indices}
    boxes = adapter.boxes_to_input(boxes_xywh, meta)     # original pixels -> network-input pixels

`output_names` (a list of str) names the ONNX outputs.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Adapter(Protocol):
    output_names: list[str]

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, dict]: ...

    def postprocess(self, outputs: list[np.ndarray], meta: dict) -> np.ndarray: ...

    def boxes_to_input(self, boxes: np.ndarray, meta: dict) -> np.ndarray: ...

    def loss(self, outputs: Any, targets: list[dict]) -> dict: ...
