"""doit entry point: `doit release manifest=NAME` (default: rpi_detector.yaml); `wait=SECONDS`
queues behind another build of this folder. Thin on purpose: the plan and every action live in
release/, and nothing heavy (torch, onnxruntime, mlflow) is imported here."""

from doit import get_var

from release import tasks
from release.doitstate import CommittingReporter

DOIT_CONFIG = {
    "dep_file": "artifacts/.doit.db",
    "backend": "sqlite3",
    "reporter": CommittingReporter,  # each finished task's state is on disk at once (survives SIGKILL)
    "default_tasks": ["release"],
    "verbosity": 1,
}

PLAN = tasks.plan_for(get_var("manifest", "rpi_detector.yaml"), lock_wait=get_var("wait", None))


def task_check():
    """check the manifest against the model (prune patterns, student outputs) before any training"""
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
    yield tasks.gate_task(PLAN)


def task_publish():
    yield tasks.publish_task(PLAN)


def task_track():
    yield tasks.track_task(PLAN)


def task_release():
    return tasks.release_task(PLAN)


def task_ui():
    return tasks.ui_task(PLAN)
