"""MLflow tracking: the one module that imports mlflow, and only when tracking actually runs.

Where runs go: `MLFLOW_TRACKING_URI` if set, else the manifest's `tracking.uri`, else an embedded
store under artifacts/mlflow/ (SQLite for runs, a folder for artifacts), so no server is needed.

What is logged: an experiment per manifest name; a parent run per build whose report changed; a
child run per variant the first time its figures are seen. A variant that did not change keeps its
run: later builds name it in the parent's `variants.json` artifact and `reused.<variant>` tag (its
pass/fail tags are refreshed), so nothing is duplicated. The released variant's ONNX file is logged
as an MLflow model and registered under the manifest name with an alias.

When the server is away: the gate and publish never wait for MLflow. The build's report is queued
under artifacts/<name>/tracking/pending/, one warning is printed, and the next build uploads every
queued build in order, then the current one. `tracking.required: true` makes that an error.

Faults: a build's report is queued before its upload starts, so a build killed mid-upload is
finished by the next one on the runs it had created (also those it created just before it was
killed, found by their tags); a run left RUNNING by a build whose report was lost is closed as
KILLED. A local SQLite store is made next to its place and moved there complete, so a kill while
MLflow migrates it never leaves a half-made store; a store that is half-made all the same (by an
older version of this module, or a migration cut off) is moved aside and made anew, and its builds
re-logged from the queue. A local store that cannot be written (read-only, full disk) is said to
be so at once, never "unreachable", and never fails the build unless tracking.required.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from pathlib import Path

from release.atomic import read_json, write_json
from release.errors import ReleaseError
from release.fingerprint import file_sha256
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the typed report (pydantic) loads in the action, never on a no-op plan
    from release.report import Report
from release.tracking_store import (  # noqa: F401 - the URI helpers are tracking's API too (tasks.py)
    StoreProblem, _client, _file_store_id, _import_mlflow, _no_sqlite_retries, _open_sqlite, _os_reason, _reason,
    embedded_artifacts, embedded_uri, local_store, resolve_uri, sqlite_path, store_key, unreachable)

LEDGER_SCHEMA = 1


# ---------------------------------------------------------------- cheap: no mlflow import

def _empty_store() -> dict:
    return {"builds": {}, "variants": {}, "models": {}}


def _ledger(job: dict) -> dict:
    try:
        return read_json(Path(job["ledger"]))
    except (OSError, ValueError):
        return {"schema_version": LEDGER_SCHEMA, "stores": {}}


def _queue(job: dict) -> list[Path]:
    folder = Path(job["pending"])
    return sorted(folder.glob("*.json")) if folder.is_dir() else []


def is_uptodate(job: dict) -> bool:
    """doit uptodate check: this report is logged in this store and nothing is queued."""
    report = Path(job["report"])
    if not report.is_file() or _queue(job):
        return False
    store = _ledger(job)["stores"].get(store_key(job), {})
    if file_sha256(report) not in store.get("builds", {}):
        return False
    db = sqlite_path(resolve_uri(job))
    if db is not None:  # the ledger's builds are in this very file (not one made anew since)
        found = _file_store_id(db)
        if found is None or store.get("store_id") not in (None, found):
            return False
    return True


def git_commit(root: Path) -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10, check=False)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


# ---------------------------------------------------------------- the tracking action

def track(job: dict, log=print) -> dict:
    """Upload queued builds and this one. Returns what was done; raises only if tracking.required."""
    uri = resolve_uri(job)
    local = local_store(uri)
    digest = file_sha256(Path(job["report"]))
    # Provenance is taken now, when the build ran, not when a queued build is finally uploaded.
    from release.report import Report

    snapshot = {"report": Report.read(Path(job["report"])).dump(),
                "manifest_sha256": file_sha256(Path(job["manifest"])), "git_commit": git_commit(Path(job["root"]))}
    why = unreachable(uri)
    queue_problem = None
    if why is None:
        # Queued first: a build killed mid-upload is finished by the next one, whatever its report.
        queue_problem = _enqueue(job, digest, snapshot)
        previous = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            return _upload(job, uri, digest, snapshot, log)
        except ReleaseError:
            raise
        except StoreProblem as exc:
            why = str(exc)
        except Exception as exc:  # noqa: BLE001 -- the server went away mid-way or refused a call,
            # or a local store could not be written: tracking must never fail a build that gated and
            # published; the report is queued and the error is shown, so nothing is lost or hidden.
            why = _reason(exc, root_cause=local is not None)
        finally:  # mlflow.set_tracking_uri writes the variable; leave the process as it was
            if previous is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous
    if local is not None:  # a file here: it is not "unreachable", it cannot be opened or written
        said = why if why.startswith("cannot ") else f"cannot write the store at {local} ({why})"
        what = f"MLflow at {uri}: {said}"
    else:
        what = f"MLflow at {uri} is unreachable ({why})"
    if job.get("required"):
        fix = ("Make the store writable (or free space), fix MLFLOW_TRACKING_URI / tracking.uri" if local is not None
               else "Start the server, fix MLFLOW_TRACKING_URI / tracking.uri")
        raise ReleaseError(f"tracking: {what} and tracking.required is true. {fix}, or set required: false.")
    if queue_problem is None:
        queue_problem = _enqueue(job, digest, snapshot)
    if queue_problem is None:
        then = f"{len(_queue(job))} build(s) queued in {job['pending']}, uploaded at the next build"
    else:
        then = (f"could not queue the report in {job['pending']} either ({queue_problem}); the next build logs "
                f"it if its report is unchanged")
    log(f"WARNING: {what}; {then}. The gate and publish did not depend on it.")
    return {"uploaded": 0, "pending": len(_queue(job))}


def _enqueue(job: dict, digest: str, snapshot: dict) -> str | None:
    """Queue this build's snapshot unless it is queued already; None, or why it could not be."""
    try:
        if not any(p.name.endswith(f"-{digest}.json") for p in _queue(job)):
            write_json(Path(job["pending"]) / f"{_next_index(job):06d}-{digest}.json", snapshot)
    except OSError as exc:
        return _os_reason(exc)
    return None


def _upload(job: dict, uri: str, digest: str, snapshot: dict, log) -> dict:
    _import_mlflow()
    ledger = _ledger(job)
    key = store_key(job)
    store = ledger["stores"].setdefault(key, _empty_store())

    def save() -> None:  # after every run created, so that a retry never creates it twice
        write_json(Path(job["ledger"]), ledger)

    db = sqlite_path(uri)
    with _no_sqlite_retries() if db is not None else contextlib.nullcontext():
        if db is not None:
            store_id, made = _open_sqlite(db, embedded=key == "embedded", log=log)
            known = store.get("store_id")
            if known != store_id and (known is not None or made):
                # Not the store the ledger logged to (made anew: rebuilt, or removed): what the
                # ledger lists is not there, so it is forgotten and the queue is logged again.
                pending = len({p.stem.split("-", 1)[1] for p in _queue(job)} | {digest})
                if isinstance(made, tuple):
                    damage, aside = made
                    log(f"tracking: the store at {db} was damaged ({damage}): moved to {aside} and made anew; "
                        f"re-logging {pending} build(s) from the queue and this report (the ledger forgets the "
                        f"{len(store['builds'])} it had logged there)")
                elif store["builds"]:
                    log(f"tracking: the store at {db} is not the one {job['ledger']} knows (it was made anew "
                        f"since); logging {pending} build(s) there again from the queue and this report")
                store = ledger["stores"][key] = _empty_store()
            if store.get("store_id") != store_id:
                store["store_id"] = store_id
                save()
        client = _client(uri)
        return _upload_to(client, job, uri, digest, snapshot, store, save, log)


def _upload_to(client, job: dict, uri: str, digest: str, snapshot: dict, store: dict, save, log) -> dict:
    uploaded = 0
    for path in _queue(job):  # oldest first, so the experiment shows builds in the order they ran
        queued_digest = path.stem.split("-", 1)[1]
        if queued_digest not in store["builds"]:
            _log_build(client, job, read_json(path), store, queued_digest, save)
            uploaded += 1
        path.unlink()
    if digest not in store["builds"]:
        _log_build(client, job, snapshot, store, digest, save)
        uploaded += 1
    # A parent whose report is neither queued nor this one (its build was killed before it could be
    # queued, by an older version of this module): closed, never left RUNNING beside the new ones.
    for lost, pid in list(store.get("partial", {}).items()):
        _close_cut_off(client, store, pid)
        del store["partial"][lost]
        save()
    from release.report import Report
    from release.tracking_report import variant_key

    report = Report.model_validate(snapshot["report"])
    if report.selected:
        fingerprint = report.release.fingerprint
        if fingerprint not in store["models"]:
            run_id = store["variants"][variant_key(report.selected, report.release)]
            store["models"][fingerprint] = _register(job, report, run_id)
            save()
        # The alias follows the current release, also back to a version registered earlier.
        client.set_registered_model_alias(report.name, job.get("alias", "candidate"), store["models"][fingerprint])
    log(f"tracking: {uploaded} build(s) logged to {uri}")
    return {"uploaded": uploaded, "pending": 0}


def _next_index(job: dict) -> int:
    queue = _queue(job)
    return int(queue[-1].name.split("-", 1)[0]) + 1 if queue else 0


def _experiment(client, job: dict, name: str) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if resolve_uri(job).startswith("sqlite:"):
        location = embedded_artifacts(job).joinpath(name).as_uri()
    # Without the kind, MLflow 3 opens an experiment on its GenAI overview, not on the runs table.
    return client.create_experiment(name, artifact_location=location,
                                    tags={"mlflow.experimentKind": "custom_model_development"})


def _log_build(client, job: dict, snapshot: dict, store: dict, digest: str, save) -> None:
    """One build: its parent run, a child per variant not logged before, the parent's artifacts."""
    import time

    from mlflow.entities import Metric

    from release.report import Report

    report = Report.model_validate(snapshot["report"])
    now = int(time.time() * 1000)
    experiment = _experiment(client, job, report.name)
    partial = store.setdefault("partial", {})
    # A parent created by an upload that was cut off: finish that one. The ledger names it, or, if
    # the build was killed between MLflow creating it and the ledger being saved, its tags do.
    pid = partial.get(digest) or _running_parent(client, experiment, digest)
    orphans = _running_children(client, experiment, pid, store) if pid else {}
    if pid is None:
        pid = client.create_run(experiment, run_name=f"{report.name} {report.version} build",
                                tags=_parent_tags(report, snapshot, digest)).info.run_id
    if partial.get(digest) != pid:
        partial[digest] = pid
        save()
    runs = {name: _log_variant(client, report, name, experiment, pid, orphans, store, save, now)
            for name in report.variants}
    _log_parent_artifacts(client, report, runs, pid)
    client.log_batch(pid, metrics=[Metric("variants_passing", float(sum(r.passed for r in report.variants.values())),
                                          now, 0)])
    for run_id in orphans.values():  # created by the killed upload for a variant not in this report
        client.set_terminated(run_id, "KILLED")
    client.set_terminated(pid, "FINISHED")
    store["builds"][digest] = partial.pop(digest)
    save()


def _parent_tags(report: Report, snapshot: dict, digest: str) -> dict[str, str]:
    tags = {"release.version": report.version, "release.verdict": "pass" if report.passed else "fail",
            "release.selected": report.selected or "", "manifest.sha256": snapshot["manifest_sha256"],
            "report.sha256": digest, "target": report.target["name"]}
    if snapshot.get("git_commit"):
        tags["mlflow.source.git.commit"] = snapshot["git_commit"]
    return tags


def _log_variant(client, report: Report, name: str, experiment: str, pid: str, orphans: dict, store: dict, save,
                 now: int) -> dict:
    """The variant's run: new (or left incomplete by a cut-off upload) is logged in full; one whose
    fingerprint and figures were logged before is reused and named on this build's parent."""
    import tempfile

    from mlflow.entities import Metric, Param

    row = report.variants[name]
    from release.tracking_report import flat_params, variant_key, variant_metrics, variant_record, variant_tags

    key = variant_key(name, row)
    run_id = store["variants"].get(key)
    incomplete = store.setdefault("incomplete", [])
    if run_id is None:
        run_id = orphans.pop((name, row.fingerprint), None) or client.create_run(
            experiment, run_name=name, tags={**variant_tags(report, name), "mlflow.parentRunId": pid}).info.run_id
        store["variants"][key] = run_id
        incomplete.append(run_id)
        save()
    if run_id not in incomplete:
        # The run keeps the tags of the build that measured it; this build's verdict for it lives
        # on this build's parent (variants.json), so history is never rewritten.
        client.set_tag(pid, f"reused.{name}", run_id)
        return {"run_id": run_id, "reused": True, "pass": row.passed}
    client.log_batch(run_id, params=[Param(k, v[:6000]) for k, v in flat_params(row, report.target).items()],
                     metrics=[Metric(k, float(v), now, 0) for k, v in variant_metrics(report, name).items()])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "metrics.json"
        path.write_text(variant_record(name, row))
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    incomplete.remove(run_id)
    save()
    return {"run_id": run_id, "reused": False, "pass": row.passed}


def _log_parent_artifacts(client, report: Report, runs: dict, pid: str) -> None:
    """report.md, variants.json (each variant's run, reused or new, and its verdict) and the plot."""
    import tempfile

    from release import render
    from release.tracking_report import write_pareto

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "report.md").write_text(render.markdown(report))
        (folder / "variants.json").write_text(json.dumps(runs, indent=2))
        write_pareto(report, folder / "pareto.png")
        for item in folder.iterdir():
            client.log_artifact(pid, str(item))


def _running_parent(client, experiment: str, digest: str) -> str | None:
    """The RUNNING parent MLflow holds for this report (a build killed before the ledger named it);
    more than one (left by older versions of this module) are closed but the first."""
    found = client.search_runs([experiment], filter_string=f"tags.`report.sha256` = '{digest}' and "
                                                           f"attributes.status = 'RUNNING'",
                               order_by=["attributes.start_time ASC"], max_results=100)
    found = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    for extra in found[1:]:
        client.set_terminated(extra.info.run_id, "KILLED")
    return found[0].info.run_id if found else None


def _running_children(client, experiment: str, pid: str, store: dict) -> dict[tuple[str, str], str]:
    """(variant, fingerprint) -> a RUNNING child of `pid` that the ledger does not know."""
    known = set(store["variants"].values())
    found = client.search_runs([experiment], filter_string=f"tags.`mlflow.parentRunId` = '{pid}' and "
                                                           f"attributes.status = 'RUNNING'",
                               order_by=["attributes.start_time ASC"], max_results=1000)
    orphans: dict[tuple[str, str], str] = {}
    for run in found:
        if run.info.run_id in known:
            continue
        slot = (run.data.tags.get("variant", ""), run.data.tags.get("fingerprint", ""))
        if slot in orphans:  # two for one variant: keep the first
            client.set_terminated(run.info.run_id, "KILLED")
        else:
            orphans[slot] = run.info.run_id
    return orphans


def _close_cut_off(client, store: dict, pid: str) -> None:
    """A parent whose report is lost: KILLED, with its unfinished children, which the ledger forgets
    (so that a later build makes them anew under its own parent)."""
    incomplete = store.setdefault("incomplete", [])
    for run_id in list(incomplete):
        if client.get_run(run_id).data.tags.get("mlflow.parentRunId") == pid:
            client.set_terminated(run_id, "KILLED")
            incomplete.remove(run_id)
            for key in [k for k, v in store["variants"].items() if v == run_id]:
                del store["variants"][key]
    client.set_terminated(pid, "KILLED")


def _register(job: dict, report: Report, run_id: str) -> str:
    """Log the released ONNX file as an MLflow model on its variant's run and register it."""
    import mlflow
    import onnx
    import onnxruntime as ort
    from mlflow.models import infer_signature

    from release.manifest import Inputs
    from release.usercode import sample_inputs

    path = Path(job["root"]) / report.release.artifact  # report paths are relative to the project root
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    loaded = Inputs.from_job(job)  # sample_inputs reads .model and .data
    example = next(sample_inputs(loaded, "eval", 1))  # a real, preprocessed eval image
    outputs = session.run(None, {session.get_inputs()[0].name: example})
    names = [o.name for o in session.get_outputs()]
    signature = infer_signature(example, {n: o for n, o in zip(names, outputs)})
    with mlflow.start_run(run_id=run_id):
        info = mlflow.onnx.log_model(onnx.load(str(path)), name="model", signature=signature,
                                     input_example=example, registered_model_name=report.name,
                                     save_as_external_data=False,
                                     onnx_execution_providers=["CPUExecutionProvider"])
    return str(info.registered_model_version)
