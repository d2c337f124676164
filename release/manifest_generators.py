"""A manifest's `generate:` section checked when it loads: each generator's function (imported and
marked), its kwargs against the function's signature, its `after` and its path kwargs, each problem
located (release/generate.py says what a generator is)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from release.errors import ReleaseError, did_you_mean
from release.manifest_problems import _describe, _Problems, _short

if TYPE_CHECKING:
    from release.manifest import Generator, Manifest


def _check_generators(manifest: Manifest, root: Path, problems: _Problems) -> dict[str, tuple[Any, dict]]:
    """Each generator's function (imported: marked?), its kwargs against the function's signature,
    its `after` (generators defined above it), and its path kwargs (the generator whose out holds
    one must run first). Returns name -> (spec, validated kwargs as JSON)."""
    from release import generate
    from release.manifest_paths import _check_kind

    outs = {name: g.out for name, g in manifest.generate.items()}
    names, found = list(outs), {}
    for name, g in manifest.generate.items():
        loc = ("generate", name)
        defined = names[:names.index(name)]
        for i, before in enumerate(g.after):
            if before not in defined:
                problems.add(loc + ("after", i), f"'{_short(before, 60)}' is not a generator defined above "
                                                 f"'{name}'.{did_you_mean(before, defined)} A generator runs after "
                                                 f"those it names, so they come first under `generate:`.")
        try:
            fn, spec = generate.load(g.run, f"generate.{name}.run")
        except ReleaseError as exc:
            problems.add(loc + ("run",), str(exc).removeprefix(f"generate.{name}.run: "))
            continue
        kwargs = _generator_kwargs(manifest, name, g, fn, spec, problems)
        if kwargs is None:
            continue
        for key in spec.paths:
            value = kwargs.get(key)
            if value is None:
                continue
            where = loc + ("kwargs", key)
            if not isinstance(value, str):
                problems.add(where, f"got {_short(repr(value))}; {g.run} reads it as a path (relative to the project "
                                    f"folder): give a string.")
                continue
            made_by = generate.owner(root / value, outs)
            if made_by == name:
                problems.add(where, f"{_short(value)} is inside generate.{name}.out, which this generator writes: "
                                    f"it cannot read its own output.")
            elif made_by is not None and made_by not in g.after:
                problems.add(where, f"{_short(value)} is inside generate.{made_by}.out: add {made_by} to "
                                    f"generate.{name}.after, so that it runs first.")
            elif made_by is None:
                _check_kind(problems, where, value, root, "any", required=True)
        found[name] = (spec, kwargs)
    return found


def _generator_kwargs(manifest: Manifest, name: str, g: Generator, fn, spec, problems: _Problems) -> dict | None:
    """generate.<name>.kwargs (and model.kwargs, for a generator that takes them) validated against the
    function's signature, each problem located; None when any is wrong."""
    from release import generate

    loc = ("generate", name, "kwargs")
    count = problems.count
    if "out" in g.kwargs:
        problems.add(loc + ("out",), f"out is passed from generate.{name}.out; remove it from generate.{name}.kwargs.")
    given = {k: v for k, v in g.kwargs.items() if k != "out"}
    from_model = dict(manifest.model.kwargs) if spec.model_kwargs else {}
    for key in sorted(set(given) & set(from_model)):
        problems.add(loc + (key,), f"{g.run} also takes model.kwargs, which set {key} already: remove it here.")
    try:
        model = generate.kwargs_model(fn)
    except Exception as exc:  # noqa: BLE001 - a signature pydantic cannot model: say so, located
        problems.add(("generate", name, "run"), f"{g.run}: its signature cannot be checked "
                                                f"({type(exc).__name__}: {exc}).")
        return None
    try:
        validated = model.model_validate({**from_model, **given})
    except ValidationError as exc:
        for err in exc.errors():
            key = err["loc"][0] if err["loc"] else None
            if key in from_model and key not in given:
                where, message = _describe(err, model, ("model", "kwargs"))
                problems.add(where, f"passed to generate.{name} ({g.run}), which takes model.kwargs: {message}")
            else:
                problems.add(*_describe(err, model, loc))
    if problems.count != count:
        return None
    return validated.model_dump(mode="json", exclude_unset=True, exclude=set(from_model))
