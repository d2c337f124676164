"""The build report, typed: one `Report` of every variant's figures and budget checks, and the choice.

The gate builds it (release/gate.py), renderers turn it into text (release/render.py), and publish,
tracking and the build's final summary read it. On disk it is `artifacts/<name>/report.json`, whose
keys CI jobs and scripts read: the models keep them exactly (a check's and a variant's verdict is
the key "pass", a Python keyword, through a field alias), and what is read back writes the same
JSON again (an int stays an int, an absent optional key stays absent), so a report, and the
metrics.json published from it, compare equal to those written before these models existed.

Imports pydantic and the standard library only: it runs on every build, also a no-op one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_serializer, model_validator

SCHEMA_VERSION = 1

# int | float in pydantic's smart mode keeps an int an int: a budget of 10 or a count read back as
# 10.0 would write other JSON than the file it came from.
Number = int | float


class _Model(BaseModel):
    # Written by this module only: an unknown key is a report of another schema, not data to drop.
    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True,
                              serialize_by_alias=True)


class LatencyFigure(BaseModel):
    """What the latency measurement wrote (release/measure/latency.py around bench.py's JSON).

    extra="allow", and only set fields are written back: bench.py runs on the device and may import
    nothing of this package, so its keys are defined by a script that cannot share this model, and
    each runner adds its own (ssh: sent, overhead_s; estimate: host_p50_ms ...). A key this model
    does not name is kept as measured: dropping it would change a published metrics.json's digest,
    and a published version never changes."""

    model_config = ConfigDict(extra="allow")

    # bench.py: the steadiest round's statistics, and how they were taken
    p50_ms: Number
    p90_ms: Number
    min_ms: Number | None = None
    max_ms: Number | None = None
    mean_ms: Number | None = None
    cv: Number | None = None
    runs: int | None = None
    warmup: int | None = None
    rounds: int | None = None
    round_cvs: list[Number] | None = None
    max_cv: Number | None = None
    noisy: bool = False
    threads: int
    process_threads: int | None = None
    provider: str | None = None
    session_options: dict[str, Any] | None = None
    session_seconds: Number | None = None
    # the machine it ran on (the device, for the SSH runner)
    onnxruntime: str | None = None
    cpu: str | None = None
    arch: str | None = None
    cores: int | None = None
    python: str | None = None
    hostname: str | None = None
    # latency.measure: where the figure comes from, this host, and what makes it less than it seems
    runner: str
    provenance: Literal["host", "device", "estimate"] = "host"
    host_cpu: str | None = None
    host_cores: int | None = None
    notes: list[str] = Field(default_factory=list)
    note: str = ""
    target: str | None = None  # the target profile's name (the measure action)

    _order: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="wrap")
    @classmethod
    def _remember_order(cls, data, handler):
        figure = handler(data)
        if isinstance(data, dict):
            figure._order = list(data)
        return figure

    @model_serializer(mode="wrap")
    def _as_measured(self, handler):
        """The keys that were measured, in the order they were (written back as they were read)."""
        data = handler(self)
        keep = self.model_fields_set | set(self.__pydantic_extra__ or {})
        rank = {k: i for i, k in enumerate(self._order)}
        return {k: data[k] for k in sorted((k for k in data if k in keep), key=lambda k: rank.get(k, len(rank)))}


OPTIONAL_CHECK_KEYS = ("provenance", "reason", "released", "against", "note")


class Check(_Model):
    """One budget of one variant: the figure, the limit, the margin (positive = headroom).

    A budget relative to the previous release (budget.*_vs_release) also has the released figure
    and the version it comes from; its limit is the figure the budget allows (released mAP minus
    the drop, released latency times 1 + the increase). With no previous release its limit and
    margin are null and its note says so (it passes)."""

    budget: str                          # the budget's field, e.g. "latency_ms"
    label: str                           # how the table names it, e.g. "latency"
    unit: str
    value: Number
    limit: Number | None
    direction: Literal["max", "min"]
    margin: Number | None
    passed: bool = Field(alias="pass")
    provenance: str | None = None        # latency only: where the figure was measured
    reason: str | None = None            # failed for something other than the margin
    released: Number | None = None       # *_vs_release: the previous release's figure
    against: str | None = None           # *_vs_release: the version of that release
    note: str | None = None              # *_vs_release: e.g. "no previous release", eval data differs

    @model_serializer(mode="wrap")
    def _optional_keys(self, handler):  # written only when they say something, as before
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in OPTIONAL_CHECK_KEYS}


class PipelineStep(_Model):
    """One stage of a variant's pipeline, as its stage.json recorded it."""

    stage: str
    params: dict[str, Any]
    fingerprint: str
    tools: dict[str, str] = Field(default_factory=dict)


class VariantRow(_Model):
    """One variant: its artifact, its measured figures, facts from its stages, and its checks."""

    fingerprint: str
    artifact: str                        # the ONNX file, relative to the project root
    stages: list[PipelineStep]
    size_mb: Number
    bytes: int
    latency_ms: Number                   # the p50
    latency_p90_ms: Number
    latency: LatencyFigure
    map: Number                          # COCO mAP@[.5:.95]
    map50: Number
    zipped_mb: Number | None = None
    parameters: int | None = None        # facts of the last stage that recorded them
    macs: Number | None = None
    sparsity: Number | None = None
    source_bytes: int | None = None      # the first stage's input (the checkpoint)
    # "<index>.<stage>" -> that stage's own facts: only the stage reads them (its describe hook)
    stage_facts: dict[str, dict[str, Any]] = Field(default_factory=dict)
    checks: list[Check] = Field(default_factory=list)
    passed: bool = Field(False, alias="pass")

    def dump(self) -> dict:
        """As report.json holds it."""
        return self.model_dump()


class Report(_Model):
    """The gate's report of one build."""

    schema_version: Literal[1] = SCHEMA_VERSION
    key: str                             # the plan it was made from (release.actions.report_is_current)
    name: str
    version: str
    target: dict[str, Any]               # the resolved target profile (manifest.device)
    budget: dict[str, Any]               # the manifest's budget, validated there
    select: str
    latency_provenance: str = ""
    variants: dict[str, VariantRow]
    selected: str | None = None
    passed: bool = False
    # data.eval's class names in the model's output order (class index i = category i's name), as
    # the mAP measurement read them; absent from reports made before it was recorded
    classes: list[str] | None = None
    # The previously published release the *_vs_release budgets compared against, as
    # release.released.previous found it (its figures, eval data hashes, publish time); absent
    # when the manifest sets no such budget or nothing was published before.
    previous: dict[str, Any] | None = None
    version_from: dict[str, Any] | None = None  # the version template and its values (release/versions.py)

    @model_serializer(mode="wrap")
    def _optional_keys(self, handler):  # absent unless set: older reports write back as they were
        data = handler(self)
        return {k: v for k, v in data.items() if v is not None or k not in ("classes", "previous", "version_from")}

    @property
    def release(self) -> VariantRow | None:
        """The selected variant's row, or None when nothing passed."""
        return self.variants[self.selected] if self.selected else None

    def dump(self) -> dict:
        """As report.json holds it (plain JSON types, "pass" keys)."""
        return self.model_dump()

    @classmethod
    def read(cls, path: Path) -> Report:
        """report.json; a file of another shape is a ReleaseError that says to build again."""
        from release.atomic import read_json
        from release.errors import ReleaseError

        try:
            return cls.model_validate(read_json(Path(path)))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ReleaseError(f"{path}: not a build report this release reads ({where}: {first['msg']}; "
                               f"{exc.error_count()} problem(s)). Run the build again to rewrite it.") from None

    def write(self, path: Path) -> None:
        from release.atomic import write_json

        write_json(Path(path), self.dump())
