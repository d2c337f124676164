"""prune: structured channel pruning (torch-pruning) and unstructured magnitude sparsity, on the real
demo detector at tiny size, exported and run through ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from pydantic import ValidationError

from release import check
from release.errors import ManifestError
from release.manifest import load as load_manifest
from release.measure import size
from release.analysis import complexity, output_layers
from release.weights import load_weights, save_weights, weights_metadata
from release.stages import export, prune
from release.stages.base import StageContext
from tests.conftest import tiny_manifest_dict, write_manifest


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A manifest for the tiny demo detector and its weights (random init, trained-looking BN)."""
    from release.usercode import build_model

    root = tmp_path_factory.mktemp("prune")
    manifest = load_manifest(write_manifest(root, tiny_manifest_dict()), root)
    torch.manual_seed(0)
    model = build_model(manifest.model)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.2, 1.5)  # unequal BN scales, so bn_scale importance has a ranking
            m.running_var.uniform_(0.5, 1.5)
    weights = root / "weights.safetensors"
    save_weights(model, weights)
    return manifest, weights, root


def _run(module, project, out, sample_source=None, **params):
    manifest, weights, _ = project
    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(input=weights if module is prune else params.pop("input"), out_dir=out,
                       params=module.Params.model_validate(params), manifest=manifest, log=lambda m: None,
                       spec_produces=module.SPEC.produces, sample_source=sample_source)
    return module.run(ctx), ctx.output


def _inputs(n=2):
    rng = np.random.default_rng(1)
    return [rng.standard_normal((1, 3, 64, 64)).astype(np.float32) for _ in range(n)]


def test_channel_pruning_runs_exports_and_has_fewer_macs(project, tmp_path):
    manifest, weights, _ = project
    facts, pruned = _run(prune, project, tmp_path / "p", method="channel", amount=0.5)
    assert facts["after"]["macs"] < 0.6 * facts["before"]["macs"]
    assert facts["after"]["parameters"] < facts["before"]["parameters"]
    # The weights carry their shapes: a fresh load rebuilds the narrower network.
    model = load_weights(manifest.model, pruned)
    assert complexity(model, manifest.model.input_shape) == facts["after"]
    assert "shapes" in weights_metadata(pruned)
    # Head output layers keep every channel: the outputs have the original shapes.
    original = load_weights(manifest.model, weights)
    x = torch.from_numpy(_inputs(1)[0])
    with torch.no_grad():
        assert [o.shape for o in model(x)] == [o.shape for o in original(x)]
    assert set(facts["kept"]) == {"heatmap.2", "size.2", "offset.2"}
    # Export (with its parity check) and run the ONNX file.
    efacts, onnx_path = _run(export, project, tmp_path / "e", sample_source=lambda split: iter(_inputs()),
                             input=pruned)
    assert efacts["parity_max_abs_diff"] < 1e-3
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outs = session.run(None, {"input": _inputs(1)[0]})
    assert [o.shape for o in outs] == [tuple(o.shape) for o in original(x)]
    assert efacts["macs"] == facts["after"]["macs"]
    # The dense ONNX file is smaller too: fewer channels, fewer weights.
    _, dense_onnx = _run(export, project, tmp_path / "e0", sample_source=lambda split: iter(_inputs()), input=weights)
    assert size.measure(onnx_path)["bytes"] < 0.6 * size.measure(dense_onnx)["bytes"]


@pytest.mark.parametrize("importance", ["l1", "l2", "bn_scale"])
def test_channel_counts_round_to_multiples(project, tmp_path, importance):
    manifest, _, _ = project
    facts, pruned = _run(prune, project, tmp_path, method="channel", amount=0.4, round_to=8, importance=importance)
    model = load_weights(manifest.model, pruned)
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Conv2d) and name not in facts["kept"]:
            assert m.out_channels % 8 == 0, (name, m.out_channels)
    assert facts["channels"], "some layer must have been narrowed"


def test_importance_decides_which_channels_go(project, tmp_path):
    _, l1_out = _run(prune, project, tmp_path / "l1", method="channel", amount=0.5, importance="l1")
    _, bn_out = _run(prune, project, tmp_path / "bn", method="channel", amount=0.5, importance="bn_scale")
    from safetensors.torch import load_file

    a, b = load_file(str(l1_out)), load_file(str(bn_out))
    assert any(not torch.equal(a[k], b[k]) for k in a if a[k].shape == b[k].shape)


def test_per_layer_amounts_and_keep(project, tmp_path):
    facts, _ = _run(prune, project, tmp_path, method="channel", layers={"down32.*": 0.5}, keep=["down32.1.0"])
    narrowed = set(facts["channels"])
    assert "down32.0.0" in narrowed and "down32.1.0" not in narrowed
    assert not any(n.startswith(("stem", "down8", "down16.0")) for n in narrowed)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_reaches_the_requested_sparsity(project, tmp_path, scope):
    manifest, weights, _ = project
    facts, sparse = _run(prune, project, tmp_path / "s", method="magnitude", amount=0.6, scope=scope)
    model = load_weights(manifest.model, sparse)
    pruned = [m.weight for n, m in model.named_modules()
              if isinstance(m, torch.nn.Conv2d) and n not in facts["kept"]]
    zeros = sum(int((w == 0).sum()) for w in pruned) / sum(w.numel() for w in pruned)
    assert zeros == pytest.approx(0.6, abs=0.01)
    if scope == "layer":
        assert all(v == pytest.approx(0.6, abs=0.02) for v in facts["layers_sparsity"].values())
    assert facts["sparsity"] == pytest.approx(0.6 * len_share(pruned, model), abs=0.02)
    assert facts["macs"] == facts["before"]["macs"]  # a dense count: zeros are still multiplied
    assert "does not shrink" in facts["note"]
    # The dense ONNX file keeps its size; compressed, the zeros show.
    _, dense = _run(export, project, tmp_path / "d", sample_source=lambda split: iter(_inputs()), input=weights)
    _, onnx_sparse = _run(export, project, tmp_path / "e", sample_source=lambda split: iter(_inputs()), input=sparse)
    a, b = size.measure(dense), size.measure(onnx_sparse)
    assert b["bytes"] == pytest.approx(a["bytes"], rel=0.01)
    assert b["zipped_bytes"] < 0.75 * a["zipped_bytes"]


def len_share(pruned, model) -> float:
    """The share of all conv/linear weights that the pruned layers hold."""
    total = sum(p.numel() for p in model.parameters() if p.ndim > 1)
    return sum(w.numel() for w in pruned) / total


def test_amounts_outside_zero_one_are_manifest_errors(tmp_path):
    for bad in (0, 1, 1.5, -0.2):
        with pytest.raises(ValidationError):
            prune.Params(method="channel", amount=bad)
    doc = tiny_manifest_dict()
    doc["variants"] = {"pruned": ["strip", {"prune": {"method": "channel", "amount": 1.2}}, "export"]}
    with pytest.raises(ManifestError) as err:
        load_manifest(write_manifest(tmp_path, doc), tmp_path)
    text = str(err.value)
    assert "tiny.yaml" in text and "variants.pruned[1].prune.amount" in text and "less than 1" in text
    with pytest.raises(ValidationError, match="round_to applies to method 'channel' only"):
        prune.Params(method="magnitude", amount=0.5, round_to=8)


def test_patterns_matching_no_layer_fail_the_check_before_training(tmp_path):
    doc = tiny_manifest_dict()
    doc["variants"] = {"pruned": ["strip", {"prune": {"method": "channel", "layers": {"down23.*": 0.5},
                                                      "keep": ["heatmap.0"]}}, "export"]}
    manifest = load_manifest(write_manifest(tmp_path, doc), tmp_path)
    with pytest.raises(ManifestError) as err:
        check.run(manifest)
    text = str(err.value)
    assert "tiny.yaml" in text and "line " in text and "variants.pruned[1].prune.layers.down23.*" in text
    assert "matches no prunable" in text and "down32" in text  # the closest names
    assert "heatmap.0" not in text  # a valid keep pattern is fine
    # A pattern that only names layers kept whole (a head's output conv) would prune nothing.
    doc["variants"] = {"pruned": ["strip", {"prune": {"method": "channel", "layers": {"heatmap.2": 0.5}}}, "export"]}
    with pytest.raises(ManifestError, match="matches only layers that are kept whole"):
        check.run(load_manifest(write_manifest(tmp_path, doc), tmp_path))


def test_output_layers_follow_the_autograd_graph():
    class Yolo(torch.nn.Module):  # boxes and scores concatenated after the last convs
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.box, self.cls = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(8, 2, 1)

        def forward(self, x):
            f = torch.relu(self.body(x))
            return torch.cat([self.box(f) * 4, torch.sigmoid(self.cls(f))], 1).flatten(2)

    assert sorted(output_layers(Yolo(), (1, 3, 8, 8))) == ["box", "cls"]
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    assert output_layers(mlp, (1, 3, 2, 2)) == ["3"]


def test_pruned_weights_record_json_metadata(project, tmp_path):
    _, pruned = _run(prune, project, tmp_path, method="channel", amount=0.3)
    meta = weights_metadata(pruned)
    assert meta["builder"] == "release.models.demo.detector:build"
    assert meta["kwargs"] == {"num_classes": 3, "width": 0.5}
    shapes = meta["shapes"]
    assert shapes["stem.0.0"]["out_channels"] < 8  # width 0.5 builds 8; 30% of them went
    assert shapes["stem.0.1"]["num_features"] == shapes["stem.0.0"]["out_channels"]  # its BN shrank with it
    assert shapes["stem.1.0"]["in_channels"] == shapes["stem.0.0"]["out_channels"]  # and the next conv's input


def test_global_channel_ranking_prunes_the_requested_share_overall(project, tmp_path):
    facts, _ = _run(prune, project, tmp_path, method="channel", amount=0.3, scope="global")
    assert facts["scope"] == "global" and facts["channels"]
    widths = {round(1 - a / b, 2) for b, a in facts["channels"].values()}
    assert len(widths) > 1, widths  # unlike scope: layer, layers lose different shares
