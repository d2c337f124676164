from release import cli
from tests.conftest import placeholder_data, tiny_manifest_dict, write_manifest


def test_validate_prints_the_plan_without_building(tmp_path, capsys):
    path = write_manifest(tmp_path, tiny_manifest_dict())
    assert cli.main(["check", str(path), "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "valid (schema 1); 2 variants, 3 stage tasks after sharing equal prefixes" in out
    assert "int8: strip@" in out and not (tmp_path / "artifacts" / "stages").exists()


def test_validate_reports_errors_without_traceback(tmp_path, capsys, monkeypatch):
    doc = tiny_manifest_dict()
    doc["target"]["threads"] = 0
    path = write_manifest(tmp_path, doc)
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    assert cli.main(["check", str(path), "--root", str(tmp_path)]) == 3  # a mistake (docs/ci.md)
    captured = capsys.readouterr()
    assert "target.threads: got 0; input should be greater than 0" in captured.err
    assert "::error" not in captured.out + captured.err  # annotations only in GitHub Actions
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if text.strip().startswith("threads:"))
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    monkeypatch.setenv("GITHUB_WORKSPACE", str(tmp_path))
    assert cli.main(["check", str(path), "--root", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    assert f"::error file=tiny.yaml,line={line},title=target.threads::got 0; input should be greater than 0" in out


def test_validate_imports_a_builder_from_the_project_folder_like_doit(tmp_path):
    import subprocess
    import sys

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    (project / "mybuilder.py").write_text("from release.models.demo.detector import build as demo\n\n"
                                          "def build(**kwargs):\n    return demo(**kwargs)\n")
    doc = tiny_manifest_dict()
    doc["model"]["builder"] = "mybuilder:build"
    write_manifest(project, doc, "manifest.yaml")
    done = subprocess.run([sys.executable, "-m", "release", "check", "manifest.yaml", "--root", str(project)],
                          cwd=elsewhere, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid (schema 1)" in done.stdout


def test_check_checks_model_kwargs_without_a_check_stage(tmp_path, capsys):
    doc = tiny_manifest_dict()
    doc["model"]["kwargs"]["widht"] = doc["model"]["kwargs"].pop("width")
    doc.pop("generate")  # a generator that takes model.kwargs refuses the typo as the manifest loads
    placeholder_data(tmp_path)
    path = write_manifest(tmp_path, doc)
    assert cli.main(["check", str(path), "--root", str(tmp_path)]) == 3
    err = capsys.readouterr().err
    assert "model.kwargs.widht: release.models.demo.detector:build takes no argument 'widht'. Did you mean 'width'?" in err
    assert "Traceback" not in err
