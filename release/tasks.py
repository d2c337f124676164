"""doit task dicts for a build plan: one task per generator, per stage node, per measurement, and
the gate.

A stage task's output folder (in the stage store, artifacts/ by default) is named by its
fingerprint: a changed param, input, data, code or tool version gives a new folder. So a stage or
measurement task needs no file_dep: it is up to date when the store holds its output, verified
against its record (release.ownership), and runs after the task that makes its input. doit's own
state is therefore not needed to reuse a store (a CI runner restores only the store).
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from release import actions, ci, ownership, released
from release.errors import CRASH, MISTAKE
from release.plan import Plan, relative, short


def _rel(plan: Plan, paths) -> list[str]:
    return [relative(path, plan.root) for path in paths]


def _job(plan: Plan, **extra) -> dict:
    """An action's one argument: plain data (picklable, for `doit -n N`), with the typed slices of
    the plan it needs (the actions validate them; none of them parses the manifest again)."""
    return {"manifest": str(plan.manifest), "root": str(plan.root), **extra}


def _inputs(plan: Plan) -> dict:
    return {"inputs": plan.inputs}


def _rmtree(path: Path):
    return (shutil.rmtree, [str(path)], {"ignore_errors": True})


def generate_tasks(plan: Plan):
    """One task per generator (the manifest's `generate:` section), in order: up to date while its
    out carries the build's mark for its fingerprint; `doit clean` removes only what carries it."""
    for g in plan.generators.values():
        job = _job(plan, name=g.name, run=g.run, kwargs=g.kwargs, out=str(g.out), writes=g.writes,
                   fingerprint=g.fingerprint, expects=g.expects,
                   model_kwargs=plan.inputs["model"]["kwargs"] if g.model_kwargs else {})
        current = ownership.is_current_folder if g.writes == "folder" else ownership.is_current_file
        yield {
            "name": g.name, "doc": f"{g.run} writes {relative(g.out, plan.root)}",
            "actions": [(actions.generate, [job])],
            "file_dep": _rel(plan, [t for name in g.after for t in plan.generators[name].targets]),
            "targets": _rel(plan, g.targets),
            "uptodate": [(current, [str(g.out), g.fingerprint])],
            "clean": [(ownership.remove_owned, [str(g.out)])], "verbosity": 2,
            # One that trains the model waits for the model check: a typo costs seconds, not a training run.
            "task_dep": _generated(plan, g.after) + (_check_dep(plan) if g.model_kwargs else []),
        }


def _generated(plan: Plan, names) -> list[str]:
    return [plan.generators[name].task_name for name in names]


def _check_dep(plan: Plan) -> list[str]:
    return [f"check:{plan.name}"]


def check_tasks(plan: Plan):
    """The model check (release/check.py) in one task that runs before every stage (so before every
    measurement) and every generator that trains the model, and after the generators that make the
    data it reads (one image of each split the build reads). Up to date while the checked stages'
    fingerprints (params, stage, model and adapter code), the model section and the fingerprints of
    that data hold."""
    from release.check_images import SPLITS, trained_generators
    from release.fingerprint import digest

    trained = trained_generators({n: (g.model_kwargs, g.after) for n, g in plan.generators.items()})
    # The split a training generator makes is not there before the check: the check skips it.
    splits = [s for s in SPLITS if s in plan.data_fp and not set(plan.data_after.get(s, [])) & trained]
    makers = sorted({g for s in splits for g in plan.data_after.get(s, [])})
    out = plan.release_dir / "check.json"
    key = digest(sorted(plan.checked), plan.check_code, plan.inputs["model"], {s: plan.data_fp[s] for s in splits})
    yield {
        "name": plan.name, "doc": "check the manifest against the model and the data before anything trains",
        "actions": [(actions.check, [_job(plan, out=str(out), key=key)])],
        "targets": _rel(plan, [out]), "uptodate": [(actions.report_is_current, [str(out), key])], "clean": True,
        "task_dep": _generated(plan, makers), "verbosity": 2,
    }


def _stamps(plan: Plan) -> str:
    """This project's stamps of store files it has verified (never in the store itself)."""
    return str(plan.artifacts / ".cache" / "verified")


def stage_tasks(plan: Plan):
    """One task per stage node. Up to date: its output folder in the store holds the output
    committed for its fingerprint, verified against its record (release.ownership.output_verified);
    no file_dep, so a store restored without doit's state (a fresh CI runner) is up to date too.
    The fingerprint covers the input, the data and the code, so nothing else can make it stale;
    it runs after the task that makes its input."""
    made_by = {node.output: node.task_name for node in plan.nodes.values()}
    for node in plan.nodes.values():
        job = _job(plan, stage=node.stage, params=node.params, params_set=node.params_set, fingerprint=node.fingerprint,
                   input=str(node.input), out_dir=str(node.out_dir), cache_dir=str(plan.store_dir / ".cache"),
                   **_inputs(plan))
        upstream = [f"stage:{made_by[node.input]}"] if node.input in made_by else []
        yield {
            "name": node.task_name,
            "doc": f"{node.stage} {node.params or ''} (variants: {', '.join(node.variants)})",
            "actions": [(actions.run_stage, [job])],
            "targets": _rel(plan, [node.output, node.record]),
            "uptodate": [(ownership.output_verified, [str(node.out_dir), node.fingerprint, _stamps(plan)])],
            "clean": [_rmtree(node.out_dir), _rmtree(node.out_dir.with_name(node.out_dir.name + ".resume"))],
            "verbosity": 2, "task_dep": _check_dep(plan) + _generated(plan, node.after) + upstream,
        }


def _measurement(plan: Plan, node, kind: str, out: Path, action, job: dict, **task) -> dict:
    """A measurement task: up to date while its file (named by everything that decides the figure)
    is the one sealed for its key, so it is verified wherever it came from, and doit's state is not
    needed; a file that does not verify is removed and measured again."""
    from release.fingerprint import digest

    key = digest(kind, node.fingerprint, plan.keys[kind] if kind == "size" else plan.keys[kind][node.fingerprint])
    return {
        "name": f"{kind}@{short(node.fingerprint)[:10]}",
        "actions": [(ownership.drop_unsealed, [str(out), key]), (action, [job]), (ownership.seal_file, [str(out), key])],
        "targets": _rel(plan, [out]), "uptodate": [(ownership.is_sealed, [str(out), key])],
        "clean": [(ownership.remove_sealed, [str(out)])], **task,
    }


def measure_tasks(plan: Plan):
    finals = [plan.nodes[fp] for fp in dict.fromkeys(plan.final.values())]
    # Latency is timed alone: under `doit -n N` it waits for every stage and mAP task, and the
    # latency tasks run one after another, so no build work shares the cores with a timing.
    busy = [f"stage:{n.task_name}" for n in plan.nodes.values()] + \
           [f"measure:map@{short(n.fingerprint)[:10]}" for n in finals]
    previous: list[str] = []
    for node in finals:
        model, tag, made = str(node.output), short(node.fingerprint), [f"stage:{node.task_name}"]
        out = plan.size_file(node)
        yield _measurement(plan, node, "size", out, actions.measure_size, _job(plan, model=model, out=str(out)),
                           doc=f"size of {node.stage} output", task_dep=made)
        out = plan.map_file(node)
        yield _measurement(plan, node, "map", out, actions.measure_map,
                           _job(plan, model=model, out=str(out), **_inputs(plan)),
                           doc="COCO mAP of the ONNX file through ONNX Runtime on data.eval", verbosity=2,
                           task_dep=made + _generated(plan, plan.data_after.get("eval", [])))
        device, out = plan.target, plan.latency_file(node)
        yield _measurement(plan, node, "latency", out, actions.measure_latency,
                           _job(plan, model=model, out=str(out), device=device, measure=plan.measure),
                           doc=f"latency on {device['name']} with {device['threads']} threads, {device['runner']} runner",
                           task_dep=busy + previous, verbosity=2)
        previous = [f"measure:latency@{tag[:10]}"]


def _report_paths(plan: Plan) -> dict:
    d = plan.release_dir
    return {"report": str(d / "report.json"), "report_md": str(d / "report.md"), "publish": str(d / "publish.json"),
            "ledger": str(d / "tracking" / "ledger.json"), "pending": str(d / "tracking" / "pending")}


def gate_task(plan: Plan) -> dict:
    variants = {
        name: {"fingerprint": node.fingerprint, "artifact": _rel(plan, [node.output])[0],
               "size": str(plan.size_file(node)), "map": str(plan.map_file(node)),
               "latency": str(plan.latency_file(node)),
               "records": [str(plan.nodes[fp].record) for fp in plan.chains[name]]}
        for name, node in ((v, plan.final_node(v)) for v in plan.final)
    }
    from release.fingerprint import digest

    job = _job(plan, name=plan.name, version=plan.version, budget=plan.budget, select=plan.select,
               target=plan.target, variants=variants, **_report_paths(plan),
               report_xml=str(plan.release_dir / "report.xml"))
    deps = sorted({p for v in variants.values() for p in [v["size"], v["map"], v["latency"], *v["records"]]})
    # The report records the key it was made from; up to date means that key, not doit's memory of
    # an earlier run (a killed run may have rewritten the report from another plan).
    # Paths are relative: a project copied or restored elsewhere is still up to date.
    keyed = {k: job[k] for k in ("name", "version", "budget", "select", "target")}
    if plan.version_from:
        job["version_from"] = keyed["version_from"] = plan.version_from
    job["key"] = digest(keyed, {n: v["fingerprint"] for n, v in variants.items()}, _rel(plan, deps))
    from release import junit

    # report.xml too: a build that stopped before its gate replaced it with its errors
    uptodate = [(actions.report_is_current, [job["report"], job["key"]]),
                (junit.is_gate_report, [job["report_xml"], job["key"]])]
    if released.relative_budgets(plan.budget):
        # The previous release is an input too: the one it is now must be the one the report compared against.
        job.update(releases=str(plan.release_dir / "release"),
                   hash_cache=str(plan.artifacts / ".cache" / "hashes.json"), **_inputs(plan))
        uptodate.append((released.gate_is_current, [job["report"], job["releases"], plan.version]))
    return {
        "name": plan.name, "doc": "check every variant against the budgets; write report.json, .md and .xml (JUnit)",
        "actions": [(actions.gate, [job])], "file_dep": _rel(plan, deps),
        "targets": _rel(plan, [job["report"], job["report_md"], job["report_xml"]]), "uptodate": uptodate,
        "clean": True,
    }


def publish_task(plan: Plan) -> dict:
    paths = _report_paths(plan)
    release_dir = plan.release_dir / "release" / plan.version
    job = _job(plan, report=paths["report"], out=paths["publish"], release_dir=str(release_dir),
               hash_cache=str(plan.artifacts / ".cache" / "hashes.json"), **_inputs(plan))
    from release import publish

    return {
        "name": plan.name, "doc": f"publish the selected variant to {release_dir}",
        "actions": [(actions.publish, [job])], "file_dep": _rel(plan, [paths["report"]]),
        "targets": _rel(plan, [paths["publish"]]),
        # Up to date: the record names this very report and the bundle verifies against its lock.
        # clean forgets the record only: a published release is never deleted by the build.
        "uptodate": [(publish.is_current, [job])], "clean": True, "verbosity": 2,
    }


def track_task(plan: Plan) -> dict:
    from release import tracking  # light: mlflow is imported only inside the action

    paths = _report_paths(plan)
    tracking_cfg = plan.tracking
    job = _job(plan, **paths, uri=tracking_cfg["uri"], required=tracking_cfg["required"], alias=tracking_cfg["alias"],
               **_inputs(plan))
    return {
        "name": plan.name, "doc": "log the build and every new variant to MLflow (queued when the server is away)",
        "actions": [(actions.track, [job])], "file_dep": _rel(plan, [paths["report"], paths["publish"]]),
        "uptodate": [(tracking.is_uptodate, [job])], "task_dep": [f"publish:{plan.name}"], "verbosity": 2,
    }


def release_task(plan: Plan) -> dict:
    return {
        "doc": f"build, measure, gate, publish and track every variant of {plan.name} (manifest=NAME)",
        "actions": [(actions.show_result, [{**_report_paths(plan), "root": str(plan.root)}])],
        "task_dep": [f"publish:{plan.name}", f"track:{plan.name}"], "verbosity": 2, "uptodate": [False],
    }


def ui_task(plan: Plan) -> dict:
    from release import tracking

    job = _job(plan, uri=plan.tracking["uri"])
    store = tracking.resolve_uri(job)
    return {
        "doc": "open the MLflow UI on this project's tracking store (http://127.0.0.1:5000; Ctrl-C stops it)",
        "actions": [(actions.ui, [{**job, "uri": store}])], "uptodate": [False], "verbosity": 2,
    }


def plan_for(manifest_name: str, root: Path | None = None, lock_wait: str | float | None = None,
             lock: bool | None = None) -> Plan:
    """The plan of a manifest for dodo.py: the recorded one when its stamps hold, else made anew
    (and recorded); a user mistake exits 3 with the message, not a traceback (also as GitHub
    annotations, release/ci.py), and a crash exits 2 with its traceback (docs/ci.md).

    A build (anything but `doit list`, `info`, `ui`, ...) first takes the project's build lock, so two
    builds of one folder never run at once; `lock_wait` (doit's `wait=SECONDS`, or RELEASE_LOCK_WAIT)
    queues behind the running one."""
    import os
    import sys

    from release import buildlock, plan as plans, recipes
    from release.diskerrors import explain
    from release.errors import ReleaseError

    root = Path(root) if root is not None else Path.cwd()
    building = False  # this process holds the build lock: it may replace the report of a build
    try:
        if lock if lock is not None else buildlock.needs_lock(sys.argv):
            buildlock.acquire(root / "artifacts", _seconds(lock_wait or os.environ.get("RELEASE_LOCK_WAIT") or 0))
            building = True
        path = recipes.resolve(manifest_name, root)
        return plans.recorded(path, root) or make_plan(path, root)
    except ReleaseError as exc:
        if building:
            _report_load_failure(manifest_name, root, "mistake", str(exc))
        _stop(MISTAKE, str(exc), ci.error_annotations(exc))
    except OSError as exc:
        message = explain(exc, root / "artifacts")
        if message is None:
            _crashed(manifest_name, root if building else None)
        _stop(MISTAKE, message, ci.mistake_annotations(message))
    except Exception:  # a bug, here or in user code the plan imports: a crash, not a mistake
        _crashed(manifest_name, root if building else None)


def _stop(code: int, message: str, annotations: list[str]):
    """End the build before any task runs (doit would say 3 for any exception while loading)."""
    import sys

    print(f"ERROR: {message}", file=sys.stderr)
    ci.annotate(annotations)
    ci.append_summary(ci.failure_summary(code, [("plan", ci.EXIT_KINDS[code], message)]))
    raise SystemExit(code) from None


def _report_load_failure(manifest_name: str, root: Path, kind: str, message: str) -> None:
    """The manifest's report.xml says tonight's build stopped while planning (its cases are those
    of the last plan recorded under the manifest's name, not judged), not what an earlier build
    found. Best effort: with no earlier build of that name there is no report to replace."""
    import json

    import yaml

    from release import junit, recipes
    from release.atomic import write_text
    from release.errors import ReleaseError

    try:
        name = yaml.safe_load(recipes.resolve(manifest_name, root).read_text(encoding="utf-8"))["name"]
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            return
        folder = root / "artifacts" / name
        job = gate_task(Plan.from_record(json.loads((folder / "plan.json").read_text())["plan"]))["actions"][0][1][0]
        if job["name"] != name:
            return
        write_text(folder / "report.xml", junit.text(junit.failed(job, [("plan", kind, message)])))
    except (ReleaseError, OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, yaml.YAMLError):
        return


def _crashed(manifest_name: str, building: Path | None):
    """Stop with a crash's code and traceback; `building` is the root of a build this process holds
    the lock of (its report.xml says so), None for a read-only command."""
    import traceback

    text = traceback.format_exc()
    last = text.strip().splitlines()[-1]
    if building is not None:
        _report_load_failure(manifest_name, building, "crash", text)
    _stop(CRASH, f"planning the build crashed:\n{text}",
          [ci.annotation(f"{last} (see the log for the traceback)", title="release crashed (exit 2)")])


def make_plan(path: Path, root: Path) -> Plan:
    """Parse and check the manifest, plan it, and record the plan with the stamps of what it read."""
    from release import fingerprint, manifest, planner
    from release.plan import record

    fingerprint.READ.clear()
    loaded = manifest.load(path, root)
    (root / "artifacts").mkdir(exist_ok=True)
    made = planner.build(loaded, root)
    record(made, fingerprint.READ | _loaded_sources())
    return made


def _loaded_sources() -> set[str]:
    """The source files of every module imported so far (the release package, the user's builder
    and adapter, the stages): a change to any of them may change the plan."""
    import sys

    files = set()
    for module in list(sys.modules.values()):
        name = getattr(module, "__name__", "")
        path = getattr(module, "__file__", None)
        if path and (name == "release" or name.startswith("release.") or not _installed(path)):
            files.add(path)
    return files


def _installed(path: str) -> bool:
    return path.startswith(_library_folders())


@functools.lru_cache(maxsize=1)
def _library_folders() -> tuple[str, ...]:
    import sysconfig

    found = sysconfig.get_paths()
    return found["purelib"], found["platlib"], found["stdlib"]


def _seconds(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        from release.errors import ReleaseError

        raise ReleaseError(f"wait={value!r}: give the seconds to wait for another build, e.g. wait=600.") from None
