"""The actions doit runs. Each takes one plain dict (picklable, for `doit -n N`) and writes its
outputs atomically. A ReleaseError becomes a doit failure (a `Mistake`, exit 3) with its message
and no traceback; any other exception is a bug and keeps its traceback (a crash, exit 2); a build
whose variants all miss a budget fails with `BudgetsMissed` (exit 1). See docs/ci.md.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import time
from pathlib import Path

from release.atomic import atomic_dir, read_json, write_json
from release.errors import ReleaseError

RECORD_SCHEMA = 1


def guarded(fn):
    @functools.wraps(fn)
    def wrapper(job: dict):
        from release.doitstate import Mistake

        try:
            fn(job)
        except ReleaseError as exc:
            return Mistake(str(exc), getattr(exc, "problems", ()))
        except Exception as exc:
            # A full or read-only disk is said in one line whatever library tripped over it; any
            # other exception is a bug and keeps its traceback.
            from release.diskerrors import explain

            message = explain(exc, _written_folder(job))
            if message is None:
                raise
            return Mistake(message)
        return None

    return wrapper


def _written_folder(job: dict) -> Path:
    """Where an action writes (for naming a full or read-only disk)."""
    for key in ("out_dir", "out", "report", "release_dir"):
        if job.get(key):
            path = Path(job[key])
            return path if key in ("out_dir", "release_dir") else path.parent
    return Path(job["root"]) / "artifacts"


def committed_record(out_dir: Path, fingerprint: str) -> dict | None:
    """The record of a stage output already committed for this fingerprint, verified against the
    output's hash; None when there is none or it does not verify."""
    from release.fingerprint import file_sha256
    from release.plan import OUTPUT_FILE

    try:
        record = read_json(out_dir / "stage.json")
        output = out_dir / OUTPUT_FILE[record["produces"]]
        if record["fingerprint"] != fingerprint or file_sha256(output) != record["output_sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record


def _inputs(job: dict):
    """The typed slice of the plan an action reads (model, data, source, manifest path)."""
    from release.manifest import Inputs

    return Inputs.from_job(job)


def _manifest(job: dict):
    """The whole manifest, parsed again: only the model check needs it (its problems are located
    in the YAML file, line by line)."""
    from release import manifest

    return manifest.load(Path(job["manifest"]), Path(job["root"]))


def _log(message: str) -> None:
    print(message, flush=True)


@guarded
def run_stage(job: dict) -> None:
    from release import stages
    from release.fingerprint import tool_versions
    from release.stages.base import StageContext

    out_dir = Path(job["out_dir"])
    if committed_record(out_dir, job["fingerprint"]) is not None:
        # Committed by an earlier run whose end doit never recorded (it was killed): the folder is
        # named by the fingerprint and was renamed into place complete, so it is this very output.
        _log(f"{job['stage']}: output for {job['fingerprint'][:16]} already committed; not run again")
        return
    module = stages.load(job["stage"])
    params = module.Params.model_validate(job["params_set"])
    checkpoint_sha = _checkpoint_sha256(Path(job["input"]), module.SPEC.consumes)
    started = time.perf_counter()
    # Outside the atomic folder, named by the fingerprint: survives an interrupt, so a training
    # stage resumes; only the same stage instance (same fingerprint) ever reads it.
    resume = out_dir.with_name(out_dir.name + ".resume")
    with atomic_dir(out_dir) as tmp:
        ctx = StageContext(input=Path(job["input"]), out_dir=tmp, params=params, fingerprint=job["fingerprint"],
                           manifest=_inputs(job), log=_log, spec_produces=module.SPEC.produces,
                           resume=resume / "state.pt", progress=_progress(),
                           cache_dir=Path(job.get("cache_dir") or Path(job["root"]) / "artifacts" / ".cache"))
        try:
            facts = module.run(ctx)
        except ReleaseError:
            raise
        except Exception as exc:  # a bug or an unforeseen failure: keep the traceback, add where
            raise RuntimeError(f"stage {job['stage']} (fingerprint {job['fingerprint'][:16]}) crashed; "
                               f"partial output was discarded; inputs: {job['input']}") from exc
        if not ctx.output.is_file():
            raise RuntimeError(f"stage {job['stage']} finished without writing {ctx.output.name}")
        from release.fingerprint import file_sha256

        write_json(tmp / "stage.json", {
            "schema_version": RECORD_SCHEMA, "stage": job["stage"], "version": module.SPEC.version,
            "fingerprint": job["fingerprint"], "input": job["input"], "params": job["params"],
            "produces": module.SPEC.produces, "output_sha256": file_sha256(ctx.output),
            "checkpoint_sha256": checkpoint_sha,
            "tools": tool_versions(module.SPEC.tools), "seconds": round(time.perf_counter() - started, 3), "facts": facts,
        })
    shutil.rmtree(resume, ignore_errors=True)


def _checkpoint_sha256(input_path: Path, consumes: str) -> str | None:
    """The hash of the checkpoint a stage output comes from, as its stage.json records it: the
    input's own for a stage that reads the checkpoint (hashed as it is read now), else what the
    stage before it recorded. A stage output shared through the store keeps the checkpoint it was
    made from, which a generated checkpoint (fingerprinted by its generator, not its bytes) may no
    longer be; release.lock takes this one (release/publish.py). None: an upstream record from
    before it was recorded."""
    from release.fingerprint import file_sha256

    if consumes == "checkpoint":
        return file_sha256(input_path) if input_path.is_file() else None  # a missing one: the stage says so
    try:
        recorded = read_json(input_path.parent / "stage.json").get("checkpoint_sha256")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, str) else None


def _progress() -> bool:
    return sys.stderr.isatty() or bool(os.environ.get("RELEASE_PROGRESS"))


@guarded
def check(job: dict) -> None:
    from release import check as checks

    checked = checks.run(_manifest(job))
    _log(f"check: {checked} stage(s) checked against the model: fine")
    write_json(Path(job["out"]), {"checked": checked, "key": job["key"]})


@guarded
def generate(job: dict) -> None:
    from release import generate as generators

    generators.make(job, log=_log)


def _measured(job: dict) -> bool:
    """A measurement file is named by everything that decides its figure (model fingerprint, data,
    code, tool versions, target): one committed by an earlier, killed run is this measurement."""
    try:
        read_json(Path(job["out"]))
    except (OSError, ValueError):
        return False
    _log(f"{Path(job['out']).name}: already measured; not measured again")
    return True


@guarded
def measure_size(job: dict) -> None:
    from release.measure import size

    if _measured(job):
        return
    write_json(Path(job["out"]), size.measure(Path(job["model"])))


@guarded
def measure_map(job: dict) -> None:
    from release.measure import accuracy

    if _measured(job):
        return
    inputs = _inputs(job)
    result = accuracy.evaluate(Path(job["model"]), inputs.model, inputs.data.eval)
    _log(f"mAP@[.5:.95] {result['map']:.4f}  mAP@.5 {result['map50']:.4f}  on {result['images']} images")
    write_json(Path(job["out"]), result)


@guarded
def measure_latency(job: dict) -> None:
    from release.measure import latency

    if _measured(job):
        return
    result = latency.measure(Path(job["model"]), job["device"], job["measure"])
    result["target"] = job["device"]["name"]
    _log(f"latency p50 {result['p50_ms']:.2f} ms  p90 {result['p90_ms']:.2f} ms  CV {result['cv']:.2f}  "
         f"({result['provenance']}: {result['cpu']}, {result['threads']} threads, {result['runner']} runner)"
         + (f"  [{result['note']}]" if result["note"] else ""))
    write_json(Path(job["out"]), result)


def report_is_current(path: str, key: str) -> bool:
    """doit uptodate for the gate (and the model check): its output was made from exactly this plan
    (variants, their fingerprints and measurement files, budgets, target), which it records as its
    key; doit's memory of an earlier run is not enough (a killed run may have rewritten the file)."""
    try:
        return read_json(Path(path)).get("key") == key
    except (OSError, ValueError, AttributeError):
        return False


@guarded
def gate(job: dict) -> None:
    from release import gate as gates
    from release import junit, render
    from release.atomic import write_text

    report = gates.build(job)
    report.write(Path(job["report"]))
    write_text(Path(job["report_md"]), render.markdown(report))
    junit.write(report, Path(job["report_xml"]))  # for CI test reporters (docs/ci.md)
    # The final summary of every build, rendered now: a no-op build prints it without loading the
    # typed report or a stage (pydantic stays off the no-op path).
    from release.fingerprint import file_sha256

    write_json(_summary_file(job), {"report_sha256": file_sha256(Path(job["report"])), "table": render.table(report),
                                    "missed": render.missed(report)})


def _summary_file(job: dict) -> Path:
    return Path(job["report"]).with_name("summary.json")


def _summary(job: dict) -> dict:
    """The gate's rendered summary of this very report.json; rendered again when it is not."""
    from release.fingerprint import file_sha256

    try:
        summary = read_json(_summary_file(job))
        if summary["report_sha256"] == file_sha256(Path(job["report"])):
            return summary
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from release import render
    from release.report import Report

    report = Report.read(Path(job["report"]))
    return {"table": render.table(report), "missed": render.missed(report)}


@guarded
def publish(job: dict) -> None:
    from release import publish as pub
    from release.fingerprint import file_sha256
    from release.report import Report

    report = Report.read(Path(job["report"]))
    result = pub.publish(report, job, log=_log) if report.selected else {"published": None}
    write_json(Path(job["out"]), {**result, "report_sha256": file_sha256(Path(job["report"]))})


@guarded
def track(job: dict) -> None:
    from release import tracking

    tracking.track(job, log=_log)


def ui(job: dict) -> None:
    """Serve the MLflow UI on the tracking store until interrupted."""
    import subprocess

    if job["uri"].startswith(("http://", "https://")):
        print(f"tracking goes to a server: its UI is at {job['uri']}", flush=True)
        return
    store = Path(job["root"]) / "artifacts" / "mlflow"
    store.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", job["uri"],
           "--host", "127.0.0.1", "--port", os.environ.get("MLFLOW_UI_PORT", "5000")]
    print("serving the MLflow UI:", " ".join(cmd), flush=True)
    try:
        subprocess.run(cmd, check=False)
    except KeyboardInterrupt:
        pass


def show_result(job: dict):
    """The last word of every build: the gate table (also to the CI job's step summary), and a
    failure when nothing passed."""
    from release.doitstate import BudgetsMissed, Mistake

    try:
        report = read_json(Path(job["report"]))
        summary = _summary(job)
    except (OSError, ValueError) as exc:
        return Mistake(f"{job['report']}: unreadable ({exc}); run the build again.")
    except ReleaseError as exc:
        return Mistake(str(exc))
    print(summary["table"])
    _step_summary(job)
    if not report["passed"]:
        return BudgetsMissed(f"no variant of {report['name']} meets its budgets:\n{summary['missed']}\n"
                             f"(report: {job['report']})", _misses(report))
    from release.publish import verify

    published = read_json(Path(job["publish"]))
    problem = verify(Path(job["root"]) / published["published"])[1]
    if problem is not None:  # publish verified it; something changed it since
        return Mistake(f"the release is not as published: {problem}. Run the build again to restore it.")
    print(f"released {report['selected']} -> {published['published']}")
    return None


def _step_summary(job: dict) -> None:
    """report.md appended to GITHUB_STEP_SUMMARY, on every build (a no-op one too: a CI job that
    restored its artifacts still shows the table)."""
    from release import ci

    if job.get("report_md") and os.environ.get("GITHUB_STEP_SUMMARY"):
        try:
            ci.append_summary(Path(job["report_md"]).read_text(encoding="utf-8"))
        except OSError:
            pass


def _misses(report: dict) -> list[tuple[str, str, str]]:
    """(variant, budget, one line) per missed budget, from report.json (no typed report: a no-op
    build that misses its budgets stays light)."""
    def figure(value, unit: str) -> str:
        return f"{value:.4g} {unit}".rstrip()

    out = []
    for variant, row in report["variants"].items():
        for c in row.get("checks", []):
            if not c["pass"]:
                why = c.get("reason") or f"missed by {figure(abs(c['margin']), c['unit'])}"
                out.append((variant, c["budget"], f"{variant}: {c['label']} {figure(c['value'], c['unit'])} vs "
                                                  f"{c['direction']} {figure(c['limit'], c['unit'])}: {why}"))
    return out
