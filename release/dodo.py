"""The doit entry point, shipped in the package: a project's `dodo.py` is the one line

    from release.dodo import *

(`release init` writes it). `doit release manifest=NAME` builds recipes/NAME.yaml (or a path; without
`manifest=`, the only manifest under recipes/); `wait=SECONDS` queues behind another build of the
folder. Everything resolves against the folder doit runs in (the dodo.py folder, or `doit -d DIR`):
recipes/, artifacts/ (outputs, the dependency file, the MLflow store), never the package's folder.

Thin on purpose: the plan and every action live in release/. Nothing heavy (torch, onnxruntime,
mlflow, pydantic) is imported here. Importing this module makes (or reads back) the plan and takes
the build lock: doit imports the dodo file before it opens its dependency file under artifacts/, and
the lock must be held by then. So import it from a dodo.py only.
"""

from __future__ import annotations

from doit import get_var

from release import tasks
from release.doitstate import CommittingReporter

__all__ = ["DOIT_CONFIG", "task_check", "task_generate", "task_stage", "task_measure", "task_gate",
           "task_publish", "task_track", "task_release", "task_ui"]

DOIT_CONFIG = {
    "dep_file": "artifacts/.doit.db",  # relative: doit's working folder, the project's
    "backend": "sqlite3",
    "reporter": CommittingReporter,  # each finished task's state is on disk at once (survives SIGKILL)
    "default_tasks": ["release"],
    "verbosity": 1,
}

# The plan of `manifest=` (default: the only manifest under recipes/) in the folder doit runs in.
PLAN = tasks.plan_for(get_var("manifest", None), lock_wait=get_var("wait", None))


def task_check():
    """check the model, the adapter on a real image of each split, prune patterns, students: before any stage"""
    yield from tasks.check_tasks(PLAN)


def task_generate():
    """the manifest's generators: inputs the build makes first (data, a trained checkpoint)"""
    yield from tasks.generate_tasks(PLAN)


def task_stage():
    """one task per pipeline stage instance (equal prefixes shared)"""
    yield from tasks.stage_tasks(PLAN)


def task_measure():
    """size, latency and COCO mAP of each variant's ONNX file"""
    yield from tasks.measure_tasks(PLAN)


def task_gate():
    """check every variant against the budgets: report.json, report.md, report.xml (JUnit)"""
    yield tasks.gate_task(PLAN)


def task_publish():
    """publish the selected variant to artifacts/<name>/release/<version>/ (never changed after)"""
    yield tasks.publish_task(PLAN)


def task_track():
    """log every variant of the build to MLflow (the embedded store unless tracking.uri)"""
    yield tasks.track_task(PLAN)


def task_release():
    return tasks.release_task(PLAN)


def task_ui():
    return tasks.ui_task(PLAN)
