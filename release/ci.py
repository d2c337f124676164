"""What a build tells a CI system besides its exit code (docs/ci.md): GitHub Actions annotations
and the job's step summary.

- `GITHUB_ACTIONS` set: each problem of a manifest mistake is printed as a workflow command
  `::error file=<path>,line=<n>,title=<field>::<message>`, which GitHub shows on that line of the
  manifest; any other mistake, each missed budget and a crash get one `::error` each.
- `GITHUB_STEP_SUMMARY` set: the gate table (report.md) is appended to that file, or, when the
  build stopped before it, what stopped it. Appended, never truncated: the file is the whole job's.

Standard library only, imported on every build (also a no-op one).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

EXIT_KINDS = {0: "released", 1: "budgets missed", 2: "crash", 3: "mistake"}


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def _workspace_path(path: str) -> str:
    """A file as GitHub names it: relative to the checkout (GITHUB_WORKSPACE, else this folder)."""
    base = Path(os.environ.get("GITHUB_WORKSPACE") or Path.cwd())
    try:
        return Path(path).resolve().relative_to(base.resolve()).as_posix()
    except (ValueError, OSError):
        return str(path)


def annotation(message: str, level: str = "error", file: str | None = None, line: int | None = None,
               title: str | None = None) -> str:
    """One workflow command line, e.g. ::error file=recipes/x.yaml,line=3,title=model.kwargs::..."""
    props = []
    if file:
        props.append(f"file={_escape_property(_workspace_path(file))}")
    if line:
        props.append(f"line={int(line)}")
    if title:
        props.append(f"title={_escape_property(title)}")
    return f"::{level} {','.join(props)}::{_escape_data(message)}" if props else f"::{level}::{_escape_data(message)}"


def on_github() -> bool:
    return bool(os.environ.get("GITHUB_ACTIONS"))


def mistake_annotations(message: str, problems=()) -> list[str]:
    """One annotation per located problem (file, line, field, message); the whole message when
    there are none."""
    if problems:
        return [annotation(text, file=file, line=line, title=field) for file, line, field, text in problems]
    return [annotation(message, title="release: a mistake to fix (exit 3)")]


def error_annotations(exc: Exception) -> list[str]:
    """The annotations of a ReleaseError (a ManifestError's problems, each on its line)."""
    return mistake_annotations(str(exc), getattr(exc, "problems", ()))


def annotate(lines: list[str], stream=None) -> None:
    """Print workflow commands when running in GitHub Actions (stdout, where the runner reads them)."""
    if lines and on_github():
        out = stream or sys.stdout
        out.write("".join(line + "\n" for line in lines))
        out.flush()


def append_summary(markdown: str) -> bool:
    """Append to the job's step summary (GITHUB_STEP_SUMMARY); False when there is none."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return False
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(markdown if markdown.endswith("\n") else markdown + "\n")
    except OSError as exc:  # a summary is a courtesy: never what fails a build
        print(f"warning: GITHUB_STEP_SUMMARY={path}: cannot append ({exc})", file=sys.stderr)
        return False
    return True


def failure_summary(code: int, failures: list[tuple[str, str, str]]) -> str:
    """The step summary of a build that did not release: its exit code and each failed task."""
    lines = [f"## release: exit {code} ({EXIT_KINDS.get(code, 'failed')})", ""]
    for task, kind, message in failures:
        lines += [f"**{task}** ({kind})", "", "```", message.strip(), "```", ""]
    return "\n".join(lines)
