"""The torchvision extra: a torchvision detector's own state_dict goes through strip, a strict load,
finetune (torchvision's loss), export and ONNX Runtime, and scores the mAP that torchvision's own
eval-mode inference scores on the same images. Runs when torchvision imports; skipped otherwise."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _torchvision_or_reason():
    try:
        import importlib

        importlib.import_module("torchvision.models.detection")
    except Exception as exc:  # a torchvision built for another torch fails with RuntimeError, not ImportError
        return f"torchvision does not import here ({type(exc).__name__}: {str(exc).splitlines()[0]})"
    return None


REASON = _torchvision_or_reason()
needs_torchvision = pytest.mark.skipif(REASON is not None,
                                       reason=f"{REASON}; install the extra: pip install -e '.[torchvision]'")

# Small enough to export and run in seconds on 64-pixel shapes; the layouts are torchvision's own.
ARCHS = {
    "fcos": {"arch": "fcos", "backbone": "resnet18", "fpn_channels": 64, "head_convs": 2},
    "retinanet": {"arch": "retinanet", "backbone": "resnet18", "fpn_channels": 64},
    "ssdlite": {"arch": "ssdlite320_mobilenet_v3_large"},
}
NUM_CLASSES = 4  # three shapes + background (model label 0)
# A low threshold and no candidate cap, so that both sides keep many boxes and any difference in
# decoding, scoring, clipping or NMS shows.
POST = {"score_threshold": 0.005, "nms_iou": 0.5, "max_detections": 100000, "candidates": 100000}


def _native(kind: str):
    """The detector built by torchvision code alone, as a user's training script would build it."""
    from torchvision.models import detection as det
    from torchvision.models import resnet18
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    torch.manual_seed(0)
    if kind == "ssdlite":
        return det.ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    body = det.backbone_utils.BackboneWithFPN(resnet18(), {"layer2": "0", "layer3": "1", "layer4": "2"},
                                              [128, 256, 512], 64, extra_blocks=LastLevelP6P7(64, 64))
    if kind == "fcos":
        model = det.FCOS(body, NUM_CLASSES, head=det.fcos.FCOSHead(64, 1, NUM_CLASSES, num_convs=2))
    else:
        model = det.RetinaNet(body, NUM_CLASSES)
    # Spread the class scores: at torchvision's init (a 0.01 prior) nearly every anchor has the same
    # score, and which of two tied boxes NMS keeps is arbitrary, here and in torchvision alike.
    logits = model.head.classification_head.cls_logits
    torch.nn.init.normal_(logits.weight, std=0.1)
    torch.nn.init.constant_(logits.bias, -2.0)
    return model


def _native_detections(model, split, size: int) -> dict:
    """torchvision's own inference (its transform, decoding, batched_nms) per eval image, as
    (N, 6) arrays of x, y, w, h, score, class index like the adapter's."""
    model.eval()
    model.transform.min_size, model.transform.max_size = (size,), size  # the images are at input size
    if getattr(model.transform, "fixed_size", None):
        model.transform.fixed_size = (size, size)
    model.score_thresh, model.nms_thresh = POST["score_threshold"], POST["nms_iou"]
    model.detections_per_img, model.topk_candidates = POST["max_detections"], POST["candidates"]
    found = {}
    for record in split.images:
        image = torch.from_numpy(split.read_image(record).astype(np.float32).transpose(2, 0, 1) / 255.0)
        with torch.no_grad():
            out = model([image])[0]
        boxes = out["boxes"].numpy()
        keep = out["labels"].numpy() >= 1  # background detections: torchvision's sigmoid heads make them too
        found[record.id] = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2], out["scores"].numpy(),
                                            out["labels"].numpy() - 1])[keep]
    return found


def _onnx_detections(onnx_path, manifest, split) -> dict:
    import onnxruntime as ort

    from release.usercode import load_adapter

    adapter = load_adapter(manifest.model)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    found = {}
    for record in split.images:
        x, meta = adapter.preprocess(split.read_image(record))
        found[record.id] = adapter.postprocess(session.run(None, {"input": x[None]}), meta)
    return found


def _assert_same_detections(got: np.ndarray, expected: np.ndarray, image_id) -> None:
    """The same boxes, scores and classes, in any order (near-equal scores may swap places)."""
    assert len(got) == len(expected), f"image {image_id}: {len(got)} detections, torchvision {len(expected)}"
    left = list(range(len(expected)))
    for row in got:
        match = [i for i in left if expected[i, 5] == row[5] and abs(expected[i, 4] - row[4]) < 1e-4
                 and np.abs(expected[i, :4] - row[:4]).max() < 1e-2]
        assert match, f"image {image_id}: {row} is not among torchvision's detections"
        left.remove(match[0])


@needs_torchvision
@pytest.mark.slow
@pytest.mark.parametrize("kind", list(ARCHS))
def test_a_torchvision_detector_strips_trains_exports_and_detects_like_torchvision(tiny_project, tmp_path, kind):
    from release import manifest as manifests
    from release.data import open_split
    from release.measure import accuracy
    from release.weights import load_weights
    from release.stages import export, finetune, strip
    from release.stages.base import StageContext
    from release.models.torchvision import Detector
    from tests.conftest import tiny_manifest_dict, write_manifest

    native = _native(kind)
    ckpt = tmp_path / "model_final.pth"
    torch.save(native.state_dict(), ckpt)
    doc = tiny_manifest_dict()
    doc.pop("generate")
    doc["source"] = {"checkpoint": str(ckpt)}
    doc["model"] = {"builder": "release.models.torchvision:build", "kwargs": {**ARCHS[kind], "num_classes": NUM_CLASSES},
                    "adapter": "release.models.torchvision:Adapter", "adapter_kwargs": POST,
                    "input_shape": [1, 3, 64, 64]}
    manifest = manifests.load(write_manifest(tiny_project.root, doc, f"tv-{kind}.yaml"), tiny_project.root)

    def stage(module, source, name, **params):
        out = tmp_path / name
        out.mkdir()
        ctx = StageContext(input=source, out_dir=out, params=module.Params(**params), manifest=manifest,
                           log=lambda m: None, spec_produces=module.SPEC.produces)
        return ctx, module.run(ctx)

    stripped, facts = stage(strip, ckpt, "strip")
    assert facts["format"] == "state_dict"
    model = load_weights(manifest.model, stripped.output)  # strict: torchvision's keys, one for one
    assert isinstance(model, Detector)
    assert set(model.state_dict()) == set(native.state_dict())

    tuned, facts = stage(finetune, stripped.output, "finetune", steps=30, lr=0.003, batch_size=8)
    assert facts["loss_final"] < facts["loss_start"]  # torchvision's own loss, through the adapter

    exported, _ = stage(export, tuned.output, "export")  # includes the ONNX-vs-PyTorch parity check
    native.load_state_dict(load_weights(manifest.model, tuned.output).state_dict())
    split = open_split(manifest.data.eval)
    theirs, ours = _native_detections(native, split, 64), _onnx_detections(exported.output, manifest, split)
    assert sum(len(d) for d in theirs.values()) > 100, "too few boxes for the comparison to say anything"
    for image_id, expected in theirs.items():
        _assert_same_detections(ours[image_id], expected, image_id)
    mean_ap = accuracy.evaluate(exported.output, manifest.model, manifest.data.eval)["map"]
    print(f"torchvision {kind}: {sum(map(len, ours.values()))} detections equal to torchvision's; mAP {mean_ap:.4f}")


@needs_torchvision
def test_frozen_bn_keeps_pretrained_statistics_when_fine_tuning():
    from torchvision.models import detection as det
    from torchvision.models import resnet18
    from torchvision.ops import FrozenBatchNorm2d
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    from release.models.torchvision import build

    # torchvision's constructors put FrozenBatchNorm2d (no num_batches_tracked) in a pretrained ResNet.
    body = det.backbone_utils.BackboneWithFPN(resnet18(norm_layer=FrozenBatchNorm2d),
                                              {"layer2": "0", "layer3": "1", "layer4": "2"},
                                              [128, 256, 512], 64, extra_blocks=LastLevelP6P7(64, 64))
    state = det.FCOS(body, NUM_CLASSES, head=det.fcos.FCOSHead(64, 1, NUM_CLASSES, num_convs=2)).state_dict()
    kwargs = {**ARCHS["fcos"], "num_classes": NUM_CLASSES}
    x = torch.rand(2, 3, 64, 64)
    for frozen in (True, False):  # both load it (BatchNorm2d fills a missing num_batches_tracked) ...
        model = build(**kwargs, frozen_bn=frozen)
        model.load_state_dict(state, strict=True)
        before = model.backbone.body.bn1.state_dict()["running_mean"].clone()
        model.train()(x)
        moved = not torch.equal(before, model.backbone.body.bn1.state_dict()["running_mean"])
        assert moved is not frozen  # ... but only frozen_bn keeps the pretrained statistics when fine-tuning


@pytest.mark.skipif(REASON is None, reason="torchvision imports here")
def test_without_torchvision_the_builder_says_how_to_install_it():
    from release.errors import ReleaseError
    from release.models.torchvision import build

    with pytest.raises(ReleaseError, match=r"needs torchvision, which does not import here .*'\.\[torchvision\]'"):
        build("fcos_resnet50_fpn", 4)


def test_no_downloads_and_unknown_architectures_are_manifest_errors():
    from release.errors import ReleaseError
    from release.models.torchvision import build

    with pytest.raises(ReleaseError, match="model.kwargs.weights: weights are not downloaded"):
        build("fcos_resnet50_fpn", 4, weights="DEFAULT")
    with pytest.raises(ReleaseError, match="model.kwargs.arch: 'fcos_resnet50' .*fcos_resnet50_fpn"):
        build("fcos_resnet50", 4)


def test_postprocess_applies_threshold_label_offset_and_per_class_nms():
    from release.models.torchvision import Adapter

    adapter = Adapter(input_shape=(1, 3, 64, 64), score_threshold=0.3, nms_iou=0.5, label_offset=1)
    boxes = np.array([[[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [40, 40, 60, 60]]], np.float32)
    # columns: background, class 0, class 1
    scores = np.array([[[0.9, 0.8, 0.1], [0.0, 0.7, 0.0], [0.0, 0.0, 0.6], [0.0, 0.2, 0.1]]], np.float32)
    dets = adapter.postprocess([boxes, scores], {"scale_x": 2.0, "scale_y": 2.0})
    # Anchor 1 overlaps anchor 0 of the same class and goes; anchor 2 is another class and stays;
    # anchor 3 is under the threshold; the background column never becomes a detection.
    assert dets[:, 4].tolist() == pytest.approx([0.8, 0.6])
    assert dets[:, 5].tolist() == [0, 1]
    assert dets[0, :4].tolist() == pytest.approx([0, 0, 5, 5])
