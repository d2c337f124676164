"""The documentation says what the code does: the manifest reference is generated from the models,
the README's manifest and error are real, the examples in extending.md run, every stage is
documented, and every link resolves."""

from __future__ import annotations

import difflib
import re
import types
from pathlib import Path

import pytest

from release import stages
from release.errors import ManifestError
from tests.conftest import REPO

DOCS = REPO / "docs"
PAGES = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted(DOCS.glob("*.md"))]


def _blocks(path: Path, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S)


def test_manifest_reference_is_generated_from_the_code():
    from release.docgen import manifest_reference

    committed, generated = (DOCS / "manifest.md").read_text(), manifest_reference()
    if committed != generated:
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), generated.splitlines(True),
                                                 "docs/manifest.md", "release.docgen"))[:60])
        pytest.fail("docs/manifest.md is stale. Regenerate it with\n"
                    "    python -m release.docgen > docs/manifest.md\n" + diff)


def test_the_reference_lists_every_field_of_every_stage():
    text = (DOCS / "manifest.md").read_text()
    for name in stages.names():
        for field in stages.load(name).Params.model_fields:
            assert f"`{name}.{field}`" in text


def test_every_stage_has_a_line_in_the_readme_and_a_section_in_stages_md():
    readme, page = (REPO / "README.md").read_text(), (DOCS / "stages.md").read_text()
    for name in stages.names():
        assert f"- `{name}` (" in readme, name
        assert f"## `{name}`" in page, name


def _readme_manifest() -> str:
    return next(b for b in _blocks(REPO / "README.md", "yaml") if b.startswith("schema_version"))


def test_the_readme_manifest_validates(tmp_path):
    from release import manifest

    path = tmp_path / "my_detector.yaml"
    path.write_text(_readme_manifest())
    loaded = manifest.load(path, tmp_path)
    assert set(loaded.pipelines) == {"fp32", "int8"}


def test_the_readme_error_is_what_release_check_says(tmp_path):
    from release import manifest

    shown = next(b for b in _blocks(REPO / "README.md", "text") if b.startswith("$ release check"))
    typos = {"drop:": "dorp:", "size_mb: 1.0": "size_mb: 1 MB", "format: qdq": "fromat: qdq"}
    text = _readme_manifest()
    for right, wrong in typos.items():
        assert text.count(right) == 1
        text = text.replace(right, wrong)
    path = tmp_path / "my_detector.yaml"
    path.write_text(text)
    with pytest.raises(ManifestError) as caught:
        manifest.load(path, tmp_path)
    said = f"ERROR: {caught.value}".replace(str(tmp_path) + "/", "")
    assert shown.splitlines()[1:] == said.splitlines()


def test_the_new_stage_example_in_extending_md_runs(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from release.stages.base import StageContext

    code = next(b for b in _blocks(DOCS / "extending.md", "python") if "SPEC = StageSpec(" in b)
    module = types.ModuleType("release.stages.stamp")
    exec(compile(code, "docs/extending.md", "exec"), module.__dict__)  # noqa: S102 - our own docs
    assert module.SPEC.consumes == module.SPEC.produces == "onnx"
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["output"], name="id")], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3])])
    source = tmp_path / "in.onnx"
    onnx.save(helper.make_model(graph), str(source))
    out = tmp_path / "out"
    out.mkdir()
    params = module.Params.model_validate({"entries": {"release": "my_detector 1.0.0"}})
    ctx = StageContext(input=source, out_dir=out, params=params, log=lambda message: None, spec_produces="onnx")
    facts = module.run(ctx)
    written = {p.key: p.value for p in onnx.load(str(ctx.output)).metadata_props}
    assert written == {"release": "my_detector 1.0.0"} and facts == {"entries": 1}


def _anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to '-'."""
    headings = re.findall(r"^#+ (.+)$", path.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.replace("`", "")).strip().lower().replace(" ", "-") for h in headings}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        assert linked.exists(), f"{page.name}: {target} does not exist"
        if anchor and linked.suffix == ".md":
            assert anchor in _anchors(linked), f"{page.name}: no heading #{anchor} in {linked.name}"


def test_the_adapter_example_in_extending_md_follows_the_protocol():
    import numpy as np

    code = next(b for b in _blocks(DOCS / "extending.md", "python") if "class Adapter" in b)
    namespace: dict = {}
    exec(compile(code, "docs/extending.md", "exec"), namespace)  # noqa: S102 - our own docs
    adapter = namespace["Adapter"](input_shape=(1, 3, 64, 64), score_threshold=0.5)
    x, meta = adapter.preprocess(np.zeros((32, 48, 3), np.uint8))
    assert x.shape == (3, 64, 64) and x.dtype == np.float32
    boxes = np.array([[[8, 8, 16, 16], [0, 0, 4, 4]]], np.float32)
    scores = np.array([[[0.1, 0.9], [0.2, 0.3]]], np.float32)
    dets = adapter.postprocess([boxes, scores], meta)
    assert dets.shape == (1, 6) and dets[0].tolist() == pytest.approx([6, 4, 12, 8, 0.9, 1])
    assert np.allclose(adapter.boxes_to_input(dets[:, :4], meta), boxes[0, :1])
