"""The project's own promises: README commands, CI, and a light dodo.py."""

import re

from tests.conftest import REPO


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    first_block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S).group(1)
    return [line for line in first_block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_exactly_two_setup_commands():
    commands = readme_commands()
    assert len(commands) == 2
    assert commands[0].endswith("doit release manifest=rpi_detector.yaml")
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_dodo_is_thin_and_imports_nothing_heavy():
    dodo = (REPO / "dodo.py").read_text()
    assert len(dodo.splitlines()) < 60
    assert not re.search(r"^\s*(import|from)\s+(torch|onnxruntime|onnx|mlflow)\b", dodo, re.M)
