"""The errors a user sees: what went wrong, where, and what to do next."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

# The exit codes of `doit release` and `release check` (docs/ci.md). When several tasks fail (with
# --continue or -n N), the most serious counts: a crash, then a mistake, then budgets missed.
RELEASED = 0
BUDGETS_MISSED = 1  # the build ran; no variant meets every budget (report.xml says which missed what)
CRASH = 2           # an unexpected exception: a bug here or in user code, shown with its traceback
MISTAKE = 3         # a mistake to fix: the manifest, an input it names, or what the build needs around it


class ReleaseError(Exception):
    """A user mistake or an expected failure (bad manifest, checkpoint, dataset).

    The message is the whole report: it is printed as is, without a traceback.
    """


class Problem(NamedTuple):
    """One located problem of a manifest (for CI annotations: file, line, field)."""

    file: str
    line: int | None
    field: str
    message: str


class ManifestError(ReleaseError):
    """A manifest that does not validate; the message lists every problem found, and `problems`
    holds the located ones (those listed, up to the first 50)."""

    def __init__(self, message: str, problems: Iterable[Problem] = ()):
        super().__init__(message)
        self.problems = [Problem(*p) for p in problems]

    def __reduce__(self):  # picklable with its problems (a doit -n N worker sends failures back)
        return type(self), (str(self), list(self.problems))


class CheckpointError(ReleaseError):
    """A checkpoint that cannot be read safely, or does not fit the model."""


class DataError(ReleaseError):
    """A dataset (COCO json + image folder) that cannot be used."""


def closest(word: str, choices: Iterable[str], n: int = 1, cutoff: float = 0.6) -> list[str]:
    """The valid names that look most like `word` (for "did you mean ...?" hints)."""
    import difflib  # only when a mistake is reported, never on a no-op

    return difflib.get_close_matches(str(word), sorted(set(choices)), n=n, cutoff=cutoff)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' or '' when nothing is close."""
    match = closest(word, choices)
    return f" Did you mean '{match[0]}'?" if match else ""
