"""The demo detector and its Adapter: shapes, aux-head stripping, decode, loss and ONNX parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from release.models.demo.detector import Adapter, _gaussian_targets, build


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("width", [1.0, 0.5])
def test_output_shapes(width):
    model = build(num_classes=3, width=width).eval()
    with torch.no_grad():
        heat, size, offset = model(torch.randn(2, 3, 128, 96))
    assert heat.shape == (2, 3, 32, 24) and size.shape == offset.shape == (2, 2, 32, 24)
    assert float(heat.min()) >= 0 and float(heat.max()) <= 1  # sigmoid is inside the model


def test_parameter_budget():
    full, half = _n_params(build()), _n_params(build(width=0.5))
    assert 300_000 <= full <= 700_000
    assert half < full / 2.5


def test_aux_head_strips_to_deploy_model():
    torch.manual_seed(0)
    trained = build(aux_head=True).eval()
    state = trained.state_dict()
    aux = [k for k in state if k.startswith("aux_head.")]
    assert aux and all(not k.startswith("aux_head.") for k in build().state_dict())
    deploy = build(aux_head=False).eval()
    deploy.load_state_dict({k: v for k, v in state.items() if not k.startswith("aux_head.")}, strict=True)
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        out_train, out_deploy, with_aux = trained(x), deploy(x), trained.forward_train(x)
    assert len(out_train) == 3 and len(with_aux) == 4
    assert with_aux[3].shape == (1, 3, 16, 16)
    for a, b, c in zip(out_train, out_deploy, with_aux):
        assert torch.equal(a, b) and torch.equal(a, c)
    with pytest.raises(RuntimeError):  # the aux keys really are extra for the deploy model
        build().load_state_dict(state, strict=True)


def test_preprocess_resizes_and_normalises():
    adapter = Adapter(input_shape=(1, 3, 128, 128))
    image = np.full((96, 256, 3), 255, dtype=np.uint8)
    x, meta = adapter.preprocess(image)
    assert x.shape == (3, 128, 128) and x.dtype == np.float32 and x.flags.c_contiguous
    assert np.allclose(x, 2.0)  # (1 - 0.5) / 0.25
    boxes = adapter.boxes_to_input(np.array([[128, 48, 64, 24]]), meta)
    assert np.allclose(boxes, [[64, 64, 32, 32]])


def test_postprocess_decodes_a_synthetic_peak():
    adapter = Adapter(input_shape=(1, 3, 128, 128), score_threshold=0.3)
    _, meta = adapter.preprocess(np.zeros((64, 256, 3), dtype=np.uint8))  # x scaled by 1/2, y by 2
    heat = np.zeros((1, 3, 32, 32), np.float32)
    heat[0, 1, 10, 20] = 0.9
    heat[0, 1, 10, 21] = 0.6  # a shoulder of the same peak: must be suppressed by the 3x3 max-pool
    heat[0, 2, 25, 5] = 0.2  # below the threshold
    size = np.zeros((1, 2, 32, 32), np.float32)
    offset = np.zeros((1, 2, 32, 32), np.float32)
    size[0, :, 10, 20] = np.log([8.0, 4.0])  # 32 x 16 input pixels
    offset[0, :, 10, 20] = [0.5, 0.25]
    dets = adapter.postprocess([heat, size, offset], meta)
    assert dets.shape == (1, 6)
    cx, cy = (20 + 0.5) * 4, (10 + 0.25) * 4  # input pixels: 82, 41
    expected = [(cx - 16) * 2, (cy - 8) / 2, 32 * 2, 16 / 2, 0.9, 1]
    assert np.allclose(dets[0], expected, atol=1e-4)


def test_targets_round_trip_through_postprocess():
    """Encoding boxes as targets and decoding those as outputs must give the boxes back."""
    adapter = Adapter(input_shape=(1, 3, 128, 128), score_threshold=0.5)
    _, meta = adapter.preprocess(np.zeros((128, 128, 3), dtype=np.uint8))
    boxes = np.array([[10, 12, 30, 20], [70, 40, 14, 44], [90, 90, 25, 25]], np.float32)
    labels = np.array([0, 2, 1])
    t = _gaussian_targets(boxes, labels, 3, (32, 32), 4.0)
    dets = adapter.postprocess([t["heatmap"][None], t["size"][None], t["offset"][None]], meta)
    assert len(dets) == 3
    order = np.argsort(dets[:, 0])
    assert np.allclose(dets[order, :4], boxes, atol=1e-3)
    assert np.array_equal(dets[order, 5], labels) and np.all(dets[:, 4] == 1)


def test_no_detections_on_empty_heatmap():
    adapter = Adapter(input_shape=(1, 3, 64, 64))
    _, meta = adapter.preprocess(np.zeros((64, 64, 3), dtype=np.uint8))
    outputs = [np.zeros((1, 3, 16, 16), np.float32), np.zeros((1, 2, 16, 16), np.float32),
               np.zeros((1, 2, 16, 16), np.float32)]
    assert adapter.postprocess(outputs, meta).shape == (0, 6)


def test_loss_components_and_gradients():
    torch.manual_seed(0)
    model = build(aux_head=True)
    adapter = Adapter(input_shape=(1, 3, 64, 64))
    targets = [{"boxes": np.array([[8, 8, 20, 12], [30, 30, 16, 24]], np.float32), "labels": np.array([0, 2])},
               {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}]
    outputs = model.forward_train(torch.randn(2, 3, 64, 64))
    losses = adapter.loss(outputs, targets)
    assert set(losses) == {"loss", "heatmap", "size", "offset", "aux"}
    assert torch.isfinite(losses["loss"]) and losses["loss"].ndim == 0
    assert torch.allclose(losses["loss"], sum(v for k, v in losses.items() if k != "loss"))
    losses["loss"].backward()
    assert model.aux_head[0].weight.grad.abs().sum() > 0 and model.size[0].weight.grad.abs().sum() > 0
    assert "aux" not in adapter.loss(outputs[:3], targets)
    # Outputs equal to the targets score (near) zero on size and offset, and beat random outputs.
    t = adapter.encode_targets(targets, 3, (16, 16))
    perfect = adapter.loss((t["heatmap"].clamp(1e-4, 1 - 1e-4), t["size"], t["offset"]), targets)
    assert float(perfect["size"]) == 0 and float(perfect["offset"]) == 0
    assert float(perfect["heatmap"]) < float(losses["heatmap"].detach())


# The legacy (TorchScript) exporter is the one the release build uses; its deprecation notice is noise.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_export_matches_pytorch(tmp_path):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build(width=0.5).eval()
    with torch.no_grad():  # non-trivial BN statistics, so a wrong BN fold would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 128, 128)
    path = tmp_path / "model.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=Adapter.output_names)
    graph = onnx.load(str(path)).graph
    # Plain ops only (BN is folded into Conv by the exporter; Identity aliases equal initializers).
    assert {n.op_type for n in graph.node} <= {"Conv", "Relu", "Resize", "Concat", "Sigmoid",
                                              "BatchNormalization", "Constant", "Identity", "Add"}
    assert [o.name for o in graph.output] == ["heatmap", "size", "offset"]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = [t.numpy() for t in model(x)]
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, atol=1e-4, rtol=0)
