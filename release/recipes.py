"""Finding a manifest: `manifest=NAME` is a path relative to the project root, else a file under
recipes/; without one, the only manifest under recipes/. Light on purpose: a no-op build resolves
the manifest before it knows whether to parse it.

The project root is the folder doit runs in (a user's own repository), never this package's folder.
"""

from __future__ import annotations

from pathlib import Path

from release.errors import ManifestError, did_you_mean


def resolve(name: str | Path | None, root: Path) -> Path:
    """`manifest=NAME`: a path (relative to root), else a file under root/recipes/; None: the only
    manifest under root/recipes/."""
    if name is None:
        return default(root)
    name = str(name)
    candidates = [root / name, root / "recipes" / name]
    if not name.endswith((".yaml", ".yml")):
        candidates += [root / f"{name}.yaml", root / "recipes" / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    known = known_recipes(root)
    hint = f" Recipes here: {', '.join(known)}." if known else ""
    raise ManifestError(
        f"manifest '{name}' not found (looked for {', '.join(str(c) for c in candidates[:2])})."
        f"{did_you_mean(name, known)}{hint} Pass manifest=PATH or a name under recipes/."
    )


def known_recipes(root: Path) -> list[str]:
    """The manifest file names under root/recipes/, sorted."""
    folder = Path(root) / "recipes"
    return sorted(p.name for p in folder.glob("*.y*ml") if p.is_file()) if folder.is_dir() else []


def default(root: Path) -> Path:
    """The manifest a bare `doit release` builds: the only one under recipes/."""
    known = known_recipes(root)
    if len(known) == 1:
        return Path(root) / "recipes" / known[0]
    if not known:
        raise ManifestError(
            f"no manifest given and none under {Path(root) / 'recipes'}: pass manifest=PATH, or write one "
            f"with `release init --name NAME ...` (or `release init --template demo`).")
    raise ManifestError(f"no manifest given and {Path(root) / 'recipes'} holds {len(known)}: "
                        f"{', '.join(known)}. Pass manifest=NAME to choose one.")
