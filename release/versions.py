"""Version templates: `version: "1.0.{date}"` resolved once, when the plan is made.

A manifest's `version` may hold placeholders in braces; each is replaced by its value when the
manifest is loaded for a new plan, and the plan record, the release's lock and its model card keep
both the template and what it resolved to. The placeholders:

    {date}          the UTC date, YYYYMMDD                     (20261202)
    {datetime}      the UTC date and time, YYYYMMDDTHHMMSSZ   (20261202T183005Z)
    {env:NAME}      the environment variable NAME; unset or empty is a manifest error naming it
    {git_describe}  `git describe --tags --always --dirty` in the project root; not a git
                    repository (or no git) is a manifest error

Because a recorded plan is reused while its stamps hold (release/plan.py), what a template read is
stamped too: each NAME of {env:NAME} joins the environment stamps, {date} stamps the date (the
plan is made anew, so a new version, on the next UTC day), {git_describe} stamps its output (run
again on each build that would reuse the plan), and {datetime} never holds (every build is a new
version). Standard library only: the stamps are checked on every no-op build.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# One folder name (as a release name is: release/manifest.py), and '+' for SemVer build metadata.
VERSION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
VERSION_RULE = ("one folder name of letters, digits, '_', '.' and '-' (and '+'), starting with a letter or digit "
                "(no '/', no '..', not an absolute path), at most 128 characters")
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
KNOWN = ("date", "datetime", "env:NAME", "git_describe")
GIT_TIMEOUT = 30  # seconds


@dataclass
class Resolved:
    version: str                                      # what the build uses: the release folder's name
    template: str | None = None                       # the manifest's text, when it had placeholders
    values: dict[str, str] = field(default_factory=dict)  # placeholder -> its value, e.g. {"date": "20261202"}

    def record(self) -> dict | None:
        """What the plan, the lock and the model card keep: None for a plain version."""
        if self.template is None:
            return None
        return {"template": self.template, "version": self.version, "values": dict(self.values)}


def validated(text: str, context: dict | None) -> str:
    """The manifest's `version` checked (a template resolved, in context["root"]): the folder name
    the build writes. The resolution is left in context["version"] for release.manifest.load."""
    context = context if isinstance(context, dict) else {}
    resolved = resolve(text, context.get("root"))
    version = resolved.version
    if len(version) > 128 or not VERSION_NAME.match(version) or ".." in version or version == "latest.json":
        what = f"the template {text!r} resolved to {version!r}, but" if resolved.template else "it is"
        raise ValueError(f"{what} a folder the build writes (not latest.json), so it must be {VERSION_RULE}")
    context["version"] = resolved
    return version


def is_template(text: str) -> bool:
    return "{" in text or "}" in text


def resolve(text: str, root: Path | None = None, now: datetime | None = None) -> Resolved:
    """The version `text` names, its placeholders replaced. Raises ValueError with the fix."""
    if not is_template(text):
        return Resolved(text)
    if PLACEHOLDER.sub("", text).count("{") or PLACEHOLDER.sub("", text).count("}"):
        raise ValueError(f"unbalanced braces in the version template {text!r}: a placeholder is written "
                         f"{{name}}, one of {', '.join('{' + k + '}' for k in KNOWN)}")
    now = now or datetime.now(timezone.utc)
    values: dict[str, str] = {}
    for name in dict.fromkeys(PLACEHOLDER.findall(text)):
        values[name] = _value(name, text, Path(root) if root is not None else Path.cwd(), now)
    version = PLACEHOLDER.sub(lambda m: values[m.group(1)], text)
    return Resolved(version, text, values)


def _value(name: str, template: str, root: Path, now: datetime) -> str:
    if name == "date":
        return now.strftime("%Y%m%d")
    if name == "datetime":
        return now.strftime("%Y%m%dT%H%M%SZ")
    if name == "git_describe":
        return _git_describe(root, template)
    if name.startswith("env:"):
        var = name[4:]
        if not ENV_NAME.match(var):
            raise ValueError(f"{{{name}}} in {template!r}: {var!r} is not an environment variable name "
                             f"(letters, digits and '_', not starting with a digit)")
        value = os.environ.get(var, "")
        if not value:
            raise ValueError(f"{{{name}}} in {template!r}: the environment variable {var} is not set (or is "
                             f"empty); set it in the build's environment (in CI, e.g. {var}=<the run number>) "
                             f"or take {{{name}}} out of `version`")
        return value
    from release.errors import did_you_mean

    hint = did_you_mean(name, ["date", "datetime", "git_describe"]) if not name.startswith("env") else \
        " An environment variable is written {env:NAME}."
    raise ValueError(f"unknown placeholder {{{name}}} in {template!r}.{hint} The placeholders are "
                     f"{', '.join('{' + k + '}' for k in KNOWN)}")


def _git_describe(root: Path, template: str) -> str:
    cmd = ["git", "describe", "--tags", "--always", "--dirty"]
    try:
        done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=GIT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ValueError(f"{{git_describe}} in {template!r}: could not run `{' '.join(cmd)}` in {root} ({exc}); "
                         f"install git, or take {{git_describe}} out of `version`") from None
    if done.returncode != 0 or not done.stdout.strip():
        why = (done.stderr.strip().splitlines() or ["no output"])[0]
        raise ValueError(f"{{git_describe}} in {template!r}: `{' '.join(cmd)}` failed in the project root {root} "
                         f"({why}); build from a git checkout with at least one commit, or take "
                         f"{{git_describe}} out of `version`")
    return done.stdout.strip()


# ---------------------------------------------------------------- stamps

def env_names(record: dict | None) -> list[str]:
    """The environment variables a resolved template read ({env:NAME})."""
    return sorted(k[4:] for k in (record or {}).get("values", {}) if k.startswith("env:"))


def stamp(record: dict | None, root: Path) -> dict | None:
    """What makes a plan's resolved version stale besides the environment: the date, git describe."""
    values = (record or {}).get("values", {})
    found = {k: values[k] for k in ("date", "datetime", "git_describe") if k in values}
    if not found:
        return None
    return {**found, "root": str(root)}


def holds(recorded: dict) -> bool:
    """Whether a recorded stamp (of `stamp`) still gives the same version (the cheap ones first)."""
    now = datetime.now(timezone.utc)
    if "datetime" in recorded:
        return False  # a new version on every build: what {datetime} means
    if "date" in recorded and recorded["date"] != now.strftime("%Y%m%d"):
        return False
    if "git_describe" in recorded:
        try:
            return _git_describe(Path(recorded["root"]), "") == recorded["git_describe"]
        except ValueError:
            return False
    return True
