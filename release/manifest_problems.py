"""Problems found in a manifest, each located (file, line, field path) and all reported at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel

from release.errors import ManifestError, Problem, did_you_mean
from release.manifest_yaml import _line_for


def _short(value: Any, limit: int = 80) -> str:
    """repr of a value, cut to `limit` characters (a manifest may hold a megabyte string)."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else f"{text[:limit - 20]}...({len(text)} characters)"


def _dotted(loc: tuple) -> str:
    text = ""
    for part in (p if isinstance(p, int) else _short(str(p), 60) for p in loc):
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _fields_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The valid keys of the pydantic model that sits at `loc` (for 'did you mean')."""
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return []
        ann = model.model_fields[part].annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = candidates[0] if candidates else None
    return list(model.model_fields) if model else []


class _Problems:
    SHOWN = 50  # problems listed; the rest are counted

    def __init__(self, path: Path, lines: dict[tuple, int]):
        self.path, self.lines, self.items, self.count = path, lines, [], 0
        self.located: list[Problem] = []  # the listed ones, structured (CI annotations)

    def add(self, loc: tuple, message: str, line: int | None = None) -> None:
        self.count += 1
        if len(self.items) >= self.SHOWN:
            return
        line = line or _line_for(self.lines, loc)
        where = f"line {line}, " if line else ""
        self.items.append(f"  {where}{_dotted(loc)}: {message}")
        self.located.append(Problem(str(self.path), line, _dotted(loc), message))

    def raise_if_any(self) -> None:
        if self.items:
            n = self.count
            more = [f"  ... and {n - len(self.items)} more"] if n > len(self.items) else []
            raise ManifestError(f"{self.path}: {n} problem{'s' * (n != 1)}\n" + "\n".join(self.items + more),
                                self.located)


def _describe(err: dict, model: type[BaseModel] | None, loc_prefix: tuple = ()) -> tuple[tuple, str]:
    loc = loc_prefix + tuple(err["loc"])
    value = err.get("input")
    if err["type"] == "extra_forbidden":
        key = loc[-1]
        valid = _fields_at(model, tuple(err["loc"])[:-1])
        hint = did_you_mean(str(key)[:60], valid) or (f" Valid keys: {', '.join(valid)}." if valid else "")
        return loc, f"unknown key '{_short(str(key), 60)}'.{hint}"
    if err["type"] == "missing":
        return loc, "required field is missing."
    shown = _short(repr(value)) if not isinstance(value, dict) else "a mapping"
    return loc, f"got {shown}; {err['msg'][0].lower() + err['msg'][1:]}."
