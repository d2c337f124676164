"""Checkpoints as they come — Lightning/NanoDet, MMDetection, YOLOv5-style pickled modules, plain
state_dicts, safetensors — each built here from the same trained weights, stripped, loaded strictly,
exported, and scored: every format must give the mAP of the raw weights."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

from release import manifest as manifests
from release.measure import accuracy
from release.weights import load_weights
from release.stages import export, strip
from release.stages.base import StageContext
from tests.conftest import placeholder_data, tiny_manifest_dict, write_manifest

FORMATS = ["lightning", "mmdet", "yolov5", "state_dict", "safetensors"]


def _moments(state: dict) -> dict:
    """An Adam optimizer's state_dict for these tensors: two moments per floating-point parameter."""
    floats = [v for v in state.values() if v.is_floating_point()]
    return {"state": {i: {"step": torch.tensor(10.0), "exp_avg": torch.randn_like(v), "exp_avg_sq": torch.rand_like(v)}
                      for i, v in enumerate(floats)},
            "param_groups": [{"lr": 0.01, "betas": (0.9, 0.999), "params": list(range(len(floats)))}]}


def _write(fmt: str, folder, state: dict, aux: dict):
    """The checkpoint file of `fmt` holding `state` (the deploy weights); returns (path, source fields)."""
    if fmt == "lightning":  # NanoDet: model.* and avg_model.* with an aux head, Adam moments, loop state
        sd = {f"model.{k}": v.clone() for k, v in {**state, **aux}.items()}
        sd.update({f"avg_model.{k}": v.clone() for k, v in {**state, **aux}.items()})
        path = folder / "model_best.ckpt"
        torch.save({"epoch": 11, "global_step": 1200, "pytorch-lightning_version": "2.4.0", "state_dict": sd,
                    "optimizer_states": [_moments({**state, **aux})], "lr_schedulers": [{"last_epoch": 11}],
                    "callbacks": {"EMA": {"decay": 0.9998}}, "hyper_parameters": {"lr": 0.01}}, path)
        return path, {"drop": ["aux_head.*"]}
    if fmt == "mmdet":  # MMEngine: meta, state_dict, optimizer, message_hub, param_schedulers
        path = folder / "epoch_12.pth"
        torch.save({"meta": {"epoch": 12, "iter": 1200, "mmdet_version": "3.3.0", "seed": 0},
                    "state_dict": {k: v.clone() for k, v in state.items()}, "optimizer": _moments(state),
                    "message_hub": {"log_scalars": {}, "runtime_info": {"epoch": 12}},
                    "param_schedulers": [{"base_lrs": [0.02]}]}, path)
        return path, {}
    if fmt == "yolov5":  # pickled nn.Module objects, stored in fp16, EMA beside the raw model
        from release.models.demo.detector import build

        model = build(3, 0.5)
        model.load_state_dict(state)
        path = folder / "best.pt"
        torch.save({"epoch": 99, "best_fitness": 0.61, "model": copy.deepcopy(model).half(),
                    "ema": copy.deepcopy(model).half(), "updates": 12000, "optimizer": _moments(state),
                    "opt": {"imgsz": 64}, "git": None, "date": "2026-11-26"}, path)
        return path, {"trusted": True}
    if fmt == "state_dict":
        path = folder / "weights.pth"
        torch.save({k: v.clone() for k, v in state.items()}, path)
        return path, {}
    path = folder / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path, {}


@pytest.fixture(scope="module")
def raw(tiny_project):
    state = load_file(str(tiny_project.teacher))
    from release.models.demo.detector import build

    torch.manual_seed(1)
    aux = {k: v for k, v in build(3, 0.5, aux_head=True).state_dict().items() if k.startswith("aux_head.")}
    return state, aux, _map(tiny_project, tiny_project.manifest, tiny_project.teacher, tiny_project.root / "raw")


def _map(project, manifest, weights, out) -> float:
    out.mkdir(parents=True, exist_ok=True)
    ctx = StageContext(input=weights, out_dir=out, params=export.Params(), manifest=manifest, log=lambda m: None,
                       spec_produces="onnx")
    export.run(ctx)
    return accuracy.evaluate(ctx.output, manifest.model, manifest.data.eval)["map"]


def _strip_ctx(project, path, name: str, out, params=None, **source) -> StageContext:
    """A strip context for `path` under a tiny manifest whose source is that checkpoint."""
    doc = tiny_manifest_dict()
    doc.pop("generate")
    doc["source"] = {"checkpoint": str(path), **source}
    manifest = manifests.load(write_manifest(project.root, doc, name), project.root)
    out.mkdir()
    return StageContext(input=path, out_dir=out, params=params or strip.Params(), manifest=manifest,
                        log=lambda m: None, spec_produces="weights")


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_strips_loads_strictly_and_scores_like_the_raw_weights(tiny_project, raw, tmp_path, fmt):
    state, aux, raw_map = raw
    path, fields = _write(fmt, tmp_path, state, aux)
    ctx = _strip_ctx(tiny_project, path, f"{fmt}.yaml", tmp_path / "strip", format="auto", **fields)
    manifest = ctx.manifest
    facts = strip.run(ctx)
    assert facts["format"] == fmt
    model = load_weights(manifest.model, ctx.output)  # strict
    stripped = model.state_dict()
    tol = 1e-3 if fmt == "yolov5" else 0.0  # YOLOv5 stores fp16: stripped weights are those values
    for k, v in state.items():
        assert torch.allclose(stripped[k].float(), v.float(), atol=tol, rtol=tol), k
    got = _map(tiny_project, manifest, ctx.output, tmp_path / "map")
    assert got == pytest.approx(raw_map, abs=0.01 if fmt == "yolov5" else 1e-9)
    if fmt == "lightning":  # Adam moments, an EMA copy and aux heads: the file is far bigger than its weights
        assert facts["ratio"] >= 3 and facts["copy"] == "ema"
    if fmt in ("mmdet", "yolov5"):
        assert facts["ratio"] >= 2
    print(f"strip ratio {fmt}: {facts['ratio']:.2f} ({facts['bytes_before']} -> {facts['bytes_after']} bytes)")


def test_a_pickled_module_checkpoint_is_refused_without_trust(tiny_project, raw, tmp_path):
    from release.errors import CheckpointError

    state, aux, _ = raw
    path, _ = _write("yolov5", tmp_path, state, aux)
    ctx = _strip_ctx(tiny_project, path, "untrusted.yaml", tmp_path / "strip")
    with pytest.raises(CheckpointError, match="needs code to unpickle") as err:
        strip.run(ctx)
    assert "source.trusted: true" in str(err.value) and "CenterNet" in str(err.value)


def test_strip_to_float16_storage_halves_the_file_and_keeps_the_map(tiny_project, raw, tmp_path):
    """YOLOv5's strip_optimizer stores fp16; strip's dtype: float16 does the same for any format."""
    state, aux, raw_map = raw
    path, fields = _write("yolov5", tmp_path, state, aux)
    sizes = {}
    for dtype in ("float32", "float16"):
        ctx = _strip_ctx(tiny_project, path, "fp16.yaml", tmp_path / dtype, strip.Params(dtype=dtype), **fields)
        sizes[dtype] = strip.run(ctx)["bytes_after"]
        stored = load_file(str(ctx.output))
        assert {str(v.dtype) for v in stored.values() if v.is_floating_point()} == {f"torch.{dtype}"}
    assert sizes["float16"] < 0.55 * sizes["float32"]
    assert _map(tiny_project, ctx.manifest, ctx.output, tmp_path / "map") == pytest.approx(raw_map, abs=0.01)


def test_weights_of_the_wrong_dtype_give_one_clear_line(tiny_project, raw, tmp_path):
    from release.errors import CheckpointError

    state, aux, _ = raw
    bad = {k: v.clone() for k, v in state.items()}
    name = next(k for k, v in bad.items() if v.is_floating_point() and v.dim() == 4)
    bad[name] = bad[name].mul(127).round().to(torch.int8)  # an int8 tensor where the model has float32
    path, _ = _write("state_dict", tmp_path, bad, aux)
    ctx = _strip_ctx(tiny_project, path, "int8.yaml", tmp_path / "strip")
    with pytest.raises(CheckpointError, match=rf"1 tensor\(s\) have the wrong dtype, e.g. {name}: torch.int8, "
                                              r"model expects torch.float32.*float checkpoint") as err:
        strip.run(ctx)
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("fmt", ["safetensors", "state_dict"])
def test_a_truncated_file_gives_one_clear_line(raw, tmp_path, fmt):
    from release import checkpoint
    from release.errors import CheckpointError

    state, aux, _ = raw
    path, _ = _write(fmt, tmp_path, state, aux)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError) as err:
        checkpoint.read(path)
    text = str(err.value)
    assert str(path) in text and len(text.splitlines()) == 1
    assert "not a readable" in text


def test_inspect_shows_a_yolov5_file_when_trusted(raw, tmp_path):
    from release import inspection

    state, aux, _ = raw
    path, _ = _write("yolov5", tmp_path, state, aux)
    info = inspection.inspect(path, trusted=True)
    assert info["format"] == "yolov5" and info["copy"] == "ema"
    assert {"optimizer", "epoch", "best_fitness", "updates"} <= set(info["training_keys"])
    assert info["other_copies"] == ["model"] and "ema.stem" in info["groups"]
    assert info["groups"]["ema.stem"]["dtypes"] == ["float16", "int64"]
    assert "loaded as trusted" in inspection.render(info)


def test_strict_false_needs_an_allow_list_and_is_recorded(tiny_project, raw, tmp_path):
    from release.errors import CheckpointError, ManifestError
    from release.render import provenance_notes as _strip_notes

    state, aux, _ = raw
    partial = {k: v for k, v in state.items() if not k.startswith("heatmap.2.")}  # a new head, e.g. other classes
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    doc = tiny_manifest_dict()
    doc.pop("generate")
    placeholder_data(tmp_path)

    def strip_with(**source):
        doc["source"] = {"checkpoint": str(path), **source}
        manifest = manifests.load(write_manifest(tmp_path, doc, "partial.yaml"), tmp_path)
        out = tmp_path / f"strip{len(list(tmp_path.glob('strip*')))}"
        out.mkdir()
        ctx = StageContext(input=path, out_dir=out, params=strip.Params(), manifest=manifest, log=lambda m: None,
                           spec_produces="weights")
        return strip.run(ctx), ctx

    with pytest.raises(CheckpointError, match="2 missing from the checkpoint"):
        strip_with()  # strict by default: the missing head is an error with the key report
    with pytest.raises(ManifestError, match="strict: false needs allow_missing"):
        strip_with(strict=False)
    with pytest.raises(CheckpointError, match="heatmap.2: weight, bias(.|\n)*not covered by source.allow_missing"):
        strip_with(strict=False, allow_missing=["size.*"])  # the allow-list must cover what is missing
    facts, ctx = strip_with(strict=False, allow_missing=["heatmap.2.*"])
    assert facts["from_builder"] == ["heatmap.2.bias", "heatmap.2.weight"]
    load_weights(ctx.manifest.model, ctx.output)  # complete: loads strictly
    note = _strip_notes({"0.strip": facts})
    assert "heatmap.2.bias, heatmap.2.weight" in note and "builder's initialisation" in note
