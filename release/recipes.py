"""Finding a manifest: `manifest=NAME` is a path relative to the project root, else a file under
recipes/. Light on purpose: a no-op build resolves the manifest before it knows whether to parse it."""

from __future__ import annotations

from pathlib import Path

from release.errors import ManifestError, did_you_mean


def resolve(name: str | Path, root: Path) -> Path:
    """`manifest=NAME`: a path (relative to root), else a file under root/recipes/."""
    name = str(name)
    candidates = [root / name, root / "recipes" / name]
    if not name.endswith((".yaml", ".yml")):
        candidates += [root / f"{name}.yaml", root / "recipes" / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    known = sorted(p.name for p in (root / "recipes").glob("*.y*ml")) if (root / "recipes").is_dir() else []
    hint = f" Recipes here: {', '.join(known)}." if known else ""
    raise ManifestError(
        f"manifest '{name}' not found (looked for {', '.join(str(c) for c in candidates[:2])})."
        f"{did_you_mean(name, known)}{hint} Pass manifest=PATH or a name under recipes/."
    )
