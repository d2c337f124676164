"""doit task dicts for a build plan: one task per generator, per stage node, per measurement, and
the gate.

Each stage task's file_dep is its input artifact (and the annotations of data it reads), its
targets are its output and record, and its output folder is named by its fingerprint: a changed
param, input, code or tool version gives a new folder, so doit alone decides what is stale.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path

from release import actions, ownership
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
    key = digest(sorted(plan.checked), plan.inputs["model"], {s: plan.data_fp[s] for s in splits})
    yield {
        "name": plan.name, "doc": "check the manifest against the model and the data before anything trains",
        "actions": [(actions.check, [_job(plan, out=str(out), key=key)])],
        "targets": _rel(plan, [out]), "uptodate": [(actions.report_is_current, [str(out), key])], "clean": True,
        "task_dep": _generated(plan, makers), "verbosity": 2,
    }


def stage_tasks(plan: Plan):
    for node in plan.nodes.values():
        job = _job(plan, stage=node.stage, params=node.params, params_set=node.params_set, fingerprint=node.fingerprint,
                   input=str(node.input), out_dir=str(node.out_dir), **_inputs(plan))
        yield {
            "name": node.task_name,
            "doc": f"{node.stage} {node.params or ''} (variants: {', '.join(node.variants)})",
            "actions": [(actions.run_stage, [job])],
            "file_dep": _rel(plan, [node.input, *node.data_deps]),
            "targets": _rel(plan, [node.output, node.record]),
            "clean": [_rmtree(node.out_dir), _rmtree(node.out_dir.with_name(node.out_dir.name + ".resume"))],
            "verbosity": 2, "task_dep": _check_dep(plan) + _generated(plan, node.after),
        }


def measure_tasks(plan: Plan):
    finals = [plan.nodes[fp] for fp in dict.fromkeys(plan.final.values())]
    # Latency is timed alone: under `doit -n N` it waits for every stage and mAP task, and the
    # latency tasks run one after another, so no build work shares the cores with a timing.
    busy = [f"stage:{n.task_name}" for n in plan.nodes.values()] + \
           [f"measure:map@{short(n.fingerprint)[:10]}" for n in finals]
    previous: list[str] = []
    for node in finals:
        model, tag = str(node.output), short(node.fingerprint)
        yield {
            "name": f"size@{tag[:10]}", "doc": f"size of {node.stage} output",
            "actions": [(actions.measure_size, [_job(plan, model=model, out=str(plan.size_file(node)))])],
            "file_dep": _rel(plan, [model]), "targets": _rel(plan, [plan.size_file(node)]), "clean": True,
        }
        yield {
            "name": f"map@{tag[:10]}", "doc": "COCO mAP of the ONNX file through ONNX Runtime on data.eval",
            "actions": [(actions.measure_map, [_job(plan, model=model, out=str(plan.map_file(node)), **_inputs(plan))])],
            "file_dep": _rel(plan, [model, *filter(None, [plan.eval_annotations])]),
            "targets": _rel(plan, [plan.map_file(node)]),
            "clean": True, "verbosity": 2, "task_dep": _generated(plan, plan.data_after.get("eval", [])),
        }
        device = plan.target
        yield {
            "name": f"latency@{tag[:10]}",
            "doc": f"latency on {device['name']} with {device['threads']} threads, {device['runner']} runner",
            "actions": [(actions.measure_latency, [_job(
                plan, model=model, out=str(plan.latency_file(node)), device=device,
                measure=plan.measure)])],
            "file_dep": _rel(plan, [model]), "targets": _rel(plan, [plan.latency_file(node)]), "clean": True,
            "task_dep": busy + previous, "verbosity": 2,
        }
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
               target=plan.target, variants=variants, **_report_paths(plan))
    deps = sorted({p for v in variants.values() for p in [v["size"], v["map"], v["latency"], *v["records"]]})
    # The report records the key it was made from; up to date means that key, not doit's memory of
    # an earlier run (a killed run may have rewritten the report from another plan).
    # Paths are relative: a project copied or restored elsewhere is still up to date.
    job["key"] = digest({k: job[k] for k in ("name", "version", "budget", "select", "target")},
                        {n: v["fingerprint"] for n, v in variants.items()}, _rel(plan, deps))
    return {
        "name": plan.name, "doc": "check every variant against the budgets; write report.json and report.md",
        "actions": [(actions.gate, [job])], "file_dep": _rel(plan, deps),
        "targets": _rel(plan, [job["report"], job["report_md"]]),
        "uptodate": [(actions.report_is_current, [job["report"], job["key"]])],
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
    (and recorded); a user mistake exits with the message, not a traceback.

    A build (anything but `doit list`, `info`, `ui`, ...) first takes the project's build lock, so two
    builds of one folder never run at once; `lock_wait` (doit's `wait=SECONDS`, or RELEASE_LOCK_WAIT)
    queues behind the running one."""
    import os
    import sys

    from release import buildlock, plan as plans, recipes
    from release.diskerrors import explain
    from release.errors import ReleaseError

    root = Path(root) if root is not None else Path.cwd()
    try:
        if lock if lock is not None else buildlock.needs_lock(sys.argv):
            buildlock.acquire(root / "artifacts", _seconds(lock_wait or os.environ.get("RELEASE_LOCK_WAIT") or 0))
        path = recipes.resolve(manifest_name, root)
        return plans.recorded(path, root) or make_plan(path, root)
    except ReleaseError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        raise SystemExit(3) from None
    except OSError as exc:
        message = explain(exc, root / "artifacts")
        if message is None:
            raise
        print(f"ERROR: {message}", file=sys.stderr)
        raise SystemExit(3) from None


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
