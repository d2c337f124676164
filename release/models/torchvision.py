"""torchvision's one-stage detectors (RetinaNet, FCOS, SSD, SSDlite) as release models.

An optional extra: `pip install -e '.[torchvision]'`, with a torchvision built for the installed torch.
In a manifest:

    model:
      builder: release.models.torchvision:build
      kwargs: {arch: fcos_resnet50_fpn, num_classes: 4}     # 3 dataset classes + background (label 0)
      adapter: release.models.torchvision:Adapter
      input_shape: [1, 3, 320, 320]

`arch` is one of torchvision's constructors (`retinanet_resnet50_fpn`, `retinanet_resnet50_fpn_v2`,
`fcos_resnet50_fpn`, `ssdlite320_mobilenet_v3_large`, `ssd300_vgg16`), or `retinanet` / `fcos` with
any torchvision ResNet as `backbone` (e.g. resnet18). Weights never come from a hub: the builder makes
the architecture, and `source.checkpoint` (a `model.state_dict()` saved by torchvision code) fills it,
so the state-dict keys are torchvision's own (`backbone.body.layer1.0.conv1.weight`, `head.…`).

What ships is the network and the box decoding: the exported graph takes one image in [0, 1] at the
manifest's input size, normalises it with the model's own mean and std, and returns
`boxes` (1, A, 4; x0, y0, x1, y1 in input pixels, clipped to the image) and `scores` (1, A, K; the
probability of every model class per anchor, computed the way the torchvision model computes it).
Thresholding, per-class NMS and top-k run in the adapter, in numpy, the same way torchvision's
`postprocess_detections` does, so no torchvision operator is needed on the device. Training uses the
torchvision model's own `compute_loss` (anchor matching included), so `finetune` works unchanged.

Labels follow torchvision's convention: model label 0 is background, dataset class i is model label
i + `label_offset` (adapter kwarg, default 1), and `num_classes` counts the background.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from release.errors import ReleaseError

CONSTRUCTORS = ("retinanet_resnet50_fpn", "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn",
                "ssdlite320_mobilenet_v3_large", "ssd300_vgg16")
COMPACT = ("retinanet", "fcos")


def _torchvision():
    try:
        import importlib

        torchvision = importlib.import_module("torchvision")  # fails when its compiled ops do not load
        importlib.import_module("torchvision.models.detection")
    except Exception as exc:  # ImportError, or RuntimeError from a torchvision built for another torch
        raise ReleaseError(
            f"model.builder release.models.torchvision:build needs torchvision, which does not import here "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). Install the extra with "
            f"pip install -e '.[torchvision]' and a torchvision release built for the installed torch "
            f"{torch.__version__}.") from None
    return torchvision


def _frozen_bn(module: nn.Module) -> nn.Module:
    """Replace BatchNorm2d layers by torchvision's FrozenBatchNorm2d: statistics and affine terms stay
    fixed in training, as torchvision's constructors do when they fine-tune a pretrained ResNet."""
    from torchvision.ops import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, FrozenBatchNorm2d(child.num_features, eps=child.eps))
        else:
            _frozen_bn(child)
    return module


def torchvision_model(arch: str, num_classes: int, backbone: str = "resnet50", frozen_bn: bool = False,
                      **kwargs) -> nn.Module:
    """The torchvision detection model itself, randomly initialised (nothing is downloaded)."""
    if arch not in CONSTRUCTORS + COMPACT:
        from release.errors import did_you_mean

        raise ReleaseError(f"model.kwargs.arch: '{arch}' is not a supported torchvision detector."
                           f"{did_you_mean(arch, [*CONSTRUCTORS, *COMPACT])} Choose one of "
                           f"{', '.join((*CONSTRUCTORS, *COMPACT))}.")
    for key in ("weights", "weights_backbone"):
        if kwargs.pop(key, None) is not None:
            raise ReleaseError(f"model.kwargs.{key}: weights are not downloaded at build time. Save the "
                               f"pretrained model's state_dict and name it in source.checkpoint instead.")
    det = _torchvision().models.detection
    if arch in CONSTRUCTORS:
        model = getattr(det, arch)(weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    else:
        model = _compact(det, arch, num_classes, backbone, **kwargs)
    return _frozen_bn(model) if frozen_bn else model


def _compact(det, arch: str, num_classes: int, backbone: str, fpn_channels: int = 256, head_convs: int = 4,
             **kwargs) -> nn.Module:
    """RetinaNet or FCOS on any torchvision ResNet, with the FPN width and (FCOS) head depth chosen:
    torchvision's classes wired the way its resnet50 constructors wire them (FPN on layers 2-4, P6
    and P7 from P5), so the state-dict keys are those of a model built by torchvision code."""
    from torchvision.models import resnet
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    if not hasattr(resnet, backbone) or not backbone.startswith(("resnet", "resnext", "wide_resnet")):
        raise ReleaseError(f"model.kwargs.backbone: '{backbone}' is not a torchvision ResNet (e.g. resnet18, "
                           f"resnet50, resnext50_32x4d).")
    body = getattr(resnet, backbone)(weights=None, norm_layer=nn.BatchNorm2d)
    stage2 = body.inplanes // 8
    fpn = det.backbone_utils.BackboneWithFPN(
        body, {"layer2": "0", "layer3": "1", "layer4": "2"}, [stage2 * 2, stage2 * 4, stage2 * 8], fpn_channels,
        extra_blocks=LastLevelP6P7(fpn_channels, fpn_channels))
    if arch == "fcos":
        head = det.fcos.FCOSHead(fpn_channels, 1, num_classes, num_convs=head_convs)
        return det.FCOS(fpn, num_classes=num_classes, head=head, **kwargs)
    return det.RetinaNet(fpn, num_classes=num_classes, **kwargs)


class TrainOutputs(dict):
    """Head outputs in training mode, with the anchors and the detector that computes their loss."""

    detector: Detector
    anchors: list
    level_sizes: list


class Detector(nn.Module):
    """A torchvision one-stage detector cut at its decoded boxes and scores (see the module doc).

    Holds the torchvision model's `backbone` and `head` under their own names, so that its state dict
    is the torchvision model's."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.kind = type(model).__name__  # RetinaNet, FCOS or SSD
        self.backbone, self.head = model.backbone, model.head
        self.__dict__["tv"] = model  # anchor generator, box coder, matcher, compute_loss; not a submodule
        self.register_buffer("mean", torch.tensor(model.transform.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(model.transform.image_std).view(1, 3, 1, 1), persistent=False)
        self._anchors: dict = {}

    def _anchors_for(self, x: torch.Tensor, features: list) -> tuple[torch.Tensor, list[int], torch.Tensor]:
        """Anchors of one image at this input size, their count per level and the image's (w, h, w, h),
        computed once per size with tracing off (they depend on shapes only), so that an exported
        graph holds them as constants rather than as shape arithmetic."""
        from torchvision.models.detection.image_list import ImageList

        state = torch._C._get_tracing_state()
        torch._C._set_tracing_state(None)
        try:
            (h, w), shapes = tuple(x.shape[-2:]), tuple(tuple(f.shape[-2:]) for f in features)
            if (h, w, shapes) not in self._anchors:
                with torch.no_grad():
                    maps = [torch.zeros(1, 1, fh, fw) for fh, fw in shapes]
                    anchors = self.tv.anchor_generator(ImageList(torch.zeros(1, 3, h, w), [(h, w)]), maps)[0]
                per_cell = anchors.shape[0] // sum(fh * fw for fh, fw in shapes)
                self._anchors[h, w, shapes] = (anchors, [fh * fw * per_cell for fh, fw in shapes],
                                               torch.tensor([w, h, w, h], dtype=torch.float32))
            return self._anchors[h, w, shapes]
        finally:
            torch._C._set_tracing_state(state)

    def forward(self, x: torch.Tensor):
        features = self.backbone((x - self.mean) / self.std)
        features = list(features.values()) if isinstance(features, dict) else [features]
        out = self.head(features)
        anchors, level_sizes, limit = self._anchors_for(x, features)
        if self.training:
            result = TrainOutputs(out)
            result.detector, result.anchors, result.level_sizes = self, [anchors] * x.shape[0], level_sizes
            return result
        if self.kind == "FCOS":
            boxes = self.tv.box_coder.decode(out["bbox_regression"], anchors)
            scores = torch.sqrt(torch.sigmoid(out["cls_logits"]) * torch.sigmoid(out["bbox_ctrness"]))
        else:
            boxes = _decode(out["bbox_regression"], anchors, self.tv.box_coder)
            scores = (torch.softmax(out["cls_logits"], dim=-1) if self.kind == "SSD"
                      else torch.sigmoid(out["cls_logits"]))
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        return boxes, scores

    def compute_loss(self, outputs: TrainOutputs, targets: list[dict]) -> dict:
        """torchvision's own loss for these head outputs; targets are torchvision's (xyxy, labels)."""
        tv, head_outputs = self.tv, dict(outputs)
        if self.kind == "FCOS":
            return tv.compute_loss(targets, head_outputs, outputs.anchors, outputs.level_sizes)
        if self.kind == "RetinaNet":
            return tv.compute_loss(targets, head_outputs, outputs.anchors)
        from torchvision.ops import boxes as box_ops

        matched = [tv.proposal_matcher(box_ops.box_iou(t["boxes"], a)) if t["boxes"].numel()
                   else torch.full((a.shape[0],), -1, dtype=torch.int64) for t, a in zip(targets, outputs.anchors)]
        return tv.compute_loss(targets, head_outputs, outputs.anchors, matched)


def _decode(codes: torch.Tensor, anchors: torch.Tensor, coder) -> torch.Tensor:
    """torchvision's BoxCoder.decode_single, batched: (N, A, 4) deltas on (A, 4) anchors -> xyxy."""
    wx, wy, ww, wh = coder.weights
    widths, heights = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    cx, cy = anchors[:, 0] + 0.5 * widths, anchors[:, 1] + 0.5 * heights
    dx, dy = codes[..., 0] / wx, codes[..., 1] / wy
    dw = torch.clamp(codes[..., 2] / ww, max=coder.bbox_xform_clip)
    dh = torch.clamp(codes[..., 3] / wh, max=coder.bbox_xform_clip)
    pcx, pcy = dx * widths + cx, dy * heights + cy
    pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack([pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph], dim=-1)


def build(arch: str, num_classes: int, backbone: str = "resnet50", frozen_bn: bool = False, **kwargs) -> Detector:
    """The manifest's builder: a torchvision detector cut at decoded boxes and scores."""
    return Detector(torchvision_model(arch, num_classes, backbone=backbone, frozen_bn=frozen_bn, **kwargs))


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression (xyxy boxes); indices kept, best first."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        x0 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y0 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x1 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y1 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
        union = areas[i] + areas[rest] - inter
        order = rest[inter <= iou * np.maximum(union, 1e-12)]
    return np.asarray(keep, np.int64)


class Adapter:
    """Pre/post-processing and loss for `build`; see release/adapter.py for the protocol."""

    output_names = ["boxes", "scores"]

    def __init__(self, input_shape=(1, 3, 320, 320), score_threshold: float = 0.05, nms_iou: float = 0.5,
                 max_detections: int = 100, candidates: int = 1000, label_offset: int = 1):
        self.input_shape = tuple(int(v) for v in input_shape)
        self.height, self.width = self.input_shape[2], self.input_shape[3]
        self.score_threshold, self.nms_iou = float(score_threshold), float(nms_iou)
        self.max_detections, self.candidates = int(max_detections), int(candidates)
        self.label_offset = int(label_offset)

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, dict]:
        """Plain resize to the input size; values in [0, 1] (the graph normalises)."""
        h, w = image.shape[:2]
        if (h, w) != (self.height, self.width):
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((self.width, self.height), Image.Resampling.BILINEAR))
        x = image.astype(np.float32).transpose(2, 0, 1) / 255.0
        return np.ascontiguousarray(x), {"scale_x": self.width / w, "scale_y": self.height / h}

    def boxes_to_input(self, boxes: np.ndarray, meta: dict) -> np.ndarray:
        scale = np.array([meta["scale_x"], meta["scale_y"]] * 2, np.float32)
        return np.asarray(boxes, np.float32).reshape(-1, 4) * scale

    def postprocess(self, outputs: list[np.ndarray], meta: dict) -> np.ndarray:
        """Scores above the threshold, the best `candidates`, per-class NMS, the best `max_detections`."""
        boxes, scores = (np.asarray(o, np.float32)[0] for o in outputs[:2])
        scores = scores[:, self.label_offset:]
        anchor, cls = np.nonzero(scores > self.score_threshold)
        if anchor.size == 0:
            return np.zeros((0, 6), np.float32)
        score = scores[anchor, cls]
        best = np.argsort(-score, kind="stable")[: self.candidates]
        anchor, cls, score = anchor[best], cls[best], score[best]
        box = boxes[anchor]
        # Per-class NMS in one pass: boxes of different classes are moved apart so they never overlap.
        shifted = box + (cls.astype(np.float32) * (max(self.width, self.height) + 1))[:, None]
        keep = nms(shifted, score, self.nms_iou)[: self.max_detections]
        box, score, cls = box[keep], score[keep], cls[keep]
        sx, sy = meta["scale_x"], meta["scale_y"]
        return np.stack([box[:, 0] / sx, box[:, 1] / sy, (box[:, 2] - box[:, 0]) / sx, (box[:, 3] - box[:, 1]) / sy,
                         score, cls], axis=1).astype(np.float32)

    def loss(self, outputs, targets: list[dict]) -> dict:
        """torchvision's loss (the detector's compute_loss) for our targets (xywh, class indices)."""
        if not isinstance(outputs, TrainOutputs):
            raise ReleaseError("model.adapter release.models.torchvision:Adapter computes its loss from the "
                               "training-mode outputs of release.models.torchvision:build; the model.builder "
                               "is another one.")
        converted = []
        for t in targets:
            xywh = torch.as_tensor(np.asarray(t["boxes"], np.float32).reshape(-1, 4))
            converted.append({"boxes": torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], dim=1),
                              "labels": torch.as_tensor(np.asarray(t["labels"]), dtype=torch.int64).reshape(-1)
                              + self.label_offset})
        losses = outputs.detector.compute_loss(outputs, converted)
        return {**losses, "loss": sum(losses.values())}
