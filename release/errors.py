"""The errors a user sees: what went wrong, where, and what to do next."""

from __future__ import annotations

from collections.abc import Iterable


class ReleaseError(Exception):
    """A user mistake or an expected failure (bad manifest, checkpoint, dataset).

    The message is the whole report: it is printed as is, without a traceback.
    """


class ManifestError(ReleaseError):
    """A manifest that does not validate; the message lists every problem found."""


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
