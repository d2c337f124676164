from release import cli
from tests.conftest import tiny_manifest_dict, write_manifest


def test_validate_prints_the_plan_without_building(tmp_path, capsys):
    path = write_manifest(tmp_path, tiny_manifest_dict())
    assert cli.main(["validate", str(path), "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "valid (schema 1); 2 variants, 3 stage tasks after sharing equal prefixes" in out
    assert "int8: strip@" in out and not (tmp_path / "artifacts" / "stages").exists()


def test_validate_reports_errors_without_traceback(tmp_path, capsys):
    doc = tiny_manifest_dict()
    doc["target"]["threads"] = 0
    path = write_manifest(tmp_path, doc)
    assert cli.main(["validate", str(path), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "target.threads: got 0; input should be greater than 0" in err
