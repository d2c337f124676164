"""MLflow tracking when things break (issue 12, findings 3 and 10): a kill while the embedded store
is made or while a build is uploaded, a store left half-migrated, a read-only store folder and a
full disk. Real MLflow on the embedded SQLite store, real SIGKILLs, a real read-only bind mount and a
real full tmpfs (tests run as root here, so chmod would not stop anything)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from release import tracking
from release.errors import ReleaseError
from tests.conftest import copy_project

pytestmark = pytest.mark.slow

RELEASE_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_ambient_mlflow(monkeypatch):
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.delenv(name, raising=False)


def job_for(root: Path, **extra) -> dict:
    """The track task's job, as release/tasks.py makes it (with the plan's slice of the manifest)."""
    from release.manifest import Inputs, load

    d = root / "artifacts" / "tiny"
    inputs = Inputs.of(load(root / "tiny.yaml", root)).model_dump(mode="json")
    return {"manifest": str(root / "tiny.yaml"), "root": str(root), "inputs": inputs, "report": str(d / "report.json"),
            "report_md": str(d / "report.md"), "publish": str(d / "publish.json"),
            "ledger": str(d / "tracking" / "ledger.json"), "pending": str(d / "tracking" / "pending"),
            "uri": None, "required": False, "alias": "candidate", **extra}


def fresh(tiny_built: Path, dst: Path) -> Path:
    """A built project that has never been tracked: no store, no ledger, no queue."""
    root = copy_project(tiny_built, dst)
    shutil.rmtree(root / "artifacts" / "mlflow", ignore_errors=True)
    shutil.rmtree(root / "artifacts" / "tiny" / "tracking", ignore_errors=True)
    return root


def db_of(root: Path) -> Path:
    return root / "artifacts" / "mlflow" / "mlflow.db"


def runs(root: Path, experiment: str = "tiny"):
    from mlflow import MlflowClient

    uri = f"sqlite:///{db_of(root)}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], max_results=100) if exp else []


def parents(found):
    return [r for r in found if "mlflow.parentRunId" not in r.data.tags]


# The kill, in a process of its own: SIGKILL from inside the process at an exact point (a SQL
# statement run by the MLflow migration, or the n-th run MLflow creates), so that each fault is the
# real one and happens every time.
KILLER = """
import json, os, signal, sys
from sqlalchemy import event
from sqlalchemy.engine import Engine
how, when, what = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
if how == "sql":
    @event.listens_for(Engine, "after_cursor_execute")
    def _kill(conn, cursor, statement, *a):
        if when in statement:
            os.kill(os.getpid(), signal.SIGKILL)
if how == "runs":
    import mlflow
    created = mlflow.MlflowClient.create_run
    count = [0]
    def create_run(self, *a, **k):
        run = created(self, *a, **k)
        count[0] += 1
        if count[0] == int(when):
            os.kill(os.getpid(), signal.SIGKILL)
        return run
    mlflow.MlflowClient.create_run = create_run
if "job" in what:
    from release import tracking
    tracking.track(what["job"])
else:  # what MLflow itself does to a new SQLite store: migrate it in place (today's first build)
    from mlflow.store.db import utils
    utils._initialize_tables(utils.create_sqlalchemy_engine("sqlite:///" + what["db"]))
print("NOT KILLED")
"""


def killed(how: str, when: str, **what) -> None:
    done = subprocess.run([sys.executable, "-c", KILLER, how, when, json.dumps(what)], cwd=RELEASE_ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == -9, (done.returncode, done.stdout[-2000:], done.stderr[-3000:])


def track(job: dict) -> tuple[dict, str, float]:
    lines: list[str] = []
    started = time.monotonic()
    result = tracking.track(job, log=lines.append)
    return result, "\n".join(lines), time.monotonic() - started


# ---------------------------------------------------------------- kills

def test_a_kill_while_the_store_is_made_leaves_no_half_made_store(tiny_built, tmp_path):
    root = fresh(tiny_built, tmp_path / "proj")
    job = job_for(root)
    # Killed in the middle of MLflow's migrations: the issues table made, its revision not yet stamped.
    killed("sql", "CREATE TABLE issues", job=job)
    assert not db_of(root).exists()  # the store is made next to its place and moved there when complete
    result, log, _ = track(job)
    assert result == {"uploaded": 1, "pending": 0}, log
    assert "WARNING" not in log and "unreachable" not in log
    assert sorted(r.info.run_name for r in runs(root)) == ["fp32", "int8", "tiny 0.0.1 build"]
    assert not list(db_of(root).parent.glob(".mlflow.db.*"))  # the killed build's unfinished store is gone


def test_a_half_migrated_store_is_moved_aside_and_rebuilt_from_the_ledger(tiny_built, tmp_path):
    """The state today's code leaves behind (MLflow migrating the store in place, killed): every
    later build said 'unreachable (table issues already exists)' and only queued."""
    root = copy_project(tiny_built, tmp_path / "proj")
    job = job_for(root)
    assert tracking.is_uptodate(job)
    db_of(root).unlink()
    killed("sql", "CREATE TABLE issues", db=str(db_of(root)))
    assert not tracking.is_uptodate(job)  # the ledger's builds are not in the store now there
    result, log, _ = track(job)
    assert result == {"uploaded": 1, "pending": 0}, log
    assert "unreachable" not in log and "WARNING" not in log
    aside = list(db_of(root).parent.glob("mlflow.db.damaged-*"))
    assert len(aside) == 1
    said = [line for line in log.splitlines() if "damaged" in line]
    assert len(said) == 1 and "table issues already exists" in said[0] and str(aside[0]) in said[0], log
    assert "re-logging 1 build(s)" in said[0]
    found = runs(root)
    assert sorted(r.info.run_name for r in found) == ["fp32", "int8", "tiny 0.0.1 build"]
    from mlflow import MlflowClient

    uri = f"sqlite:///{db_of(root)}"
    assert MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("tiny", "candidate")
    assert tracking.is_uptodate(job)


def test_a_store_of_an_older_mlflow_is_upgraded_not_rebuilt(tiny_built, tmp_path):
    from alembic import command
    from mlflow.store.db import utils

    root = fresh(tiny_built, tmp_path / "proj")
    db_of(root).parent.mkdir(parents=True)
    engine = utils.create_sqlalchemy_engine(f"sqlite:///{db_of(root)}")
    utils.InitialBase.metadata.create_all(engine)
    config = utils._get_alembic_config(str(engine.url))
    with engine.begin() as connection:  # the schema as an older MLflow left it, intact
        config.attributes["connection"] = connection
        command.upgrade(config, "e1f2a3b4c5d6")
    engine.dispose()
    result, log, _ = track(job_for(root))
    assert result == {"uploaded": 1, "pending": 0}, log
    assert f"upgraded the store at {db_of(root)}" in log and "damaged" not in log
    assert not list(db_of(root).parent.glob("mlflow.db.*"))


def test_a_store_removed_since_is_logged_to_again(tiny_built, tmp_path):
    root = copy_project(tiny_built, tmp_path / "proj")
    job = job_for(root)
    db_of(root).unlink()  # or made anew by another manifest's build: the ledger's builds are not in it
    assert not tracking.is_uptodate(job)
    result, log, _ = track(job)
    assert result == {"uploaded": 1, "pending": 0} and "is not the one" in log, log
    assert sorted(r.info.run_name for r in runs(root)) == ["fp32", "int8", "tiny 0.0.1 build"]
    assert tracking.is_uptodate(job)


@pytest.mark.parametrize("nth, what", [(1, "the parent"), (2, "a child")])
def test_a_run_left_running_by_a_kill_is_finished_not_duplicated(tiny_built, tmp_path, nth, what):
    """SIGKILL right after MLflow created a run, before the ledger could name it."""
    root = fresh(tiny_built, tmp_path / "proj")
    job = job_for(root)
    killed("runs", str(nth), job=job)
    before = runs(root)
    assert len(before) == nth and {r.info.status for r in before} == {"RUNNING"}
    result, log, _ = track(job)
    assert result["uploaded"] == 1, log
    after = runs(root)
    assert sorted(r.info.run_name for r in after) == ["fp32", "int8", "tiny 0.0.1 build"], what
    assert {r.info.status for r in after} == {"FINISHED"}
    assert {r.info.run_id for r in before} <= {r.info.run_id for r in after}  # the killed build's runs, finished


def test_a_build_killed_mid_upload_is_finished_even_when_the_next_report_differs(tiny_built, tmp_path):
    root = fresh(tiny_built, tmp_path / "proj")
    job = job_for(root)
    killed("runs", "2", job=job)  # the parent and one child created and saved in the ledger, then killed
    report = Path(job["report"])
    doc = json.loads(report.read_text())
    doc["version"] = "0.0.2"  # the next build's report is another one
    report.write_text(json.dumps(doc))
    result, log, _ = track(job)
    assert result == {"uploaded": 2, "pending": 0}, log  # the killed build (it was queued first), then this one
    found = runs(root)
    assert {r.info.status for r in found} == {"FINISHED"}
    assert sorted(r.info.run_name for r in parents(found)) == ["tiny 0.0.1 build", "tiny 0.0.2 build"]


# ---------------------------------------------------------------- an unwritable store, a full disk

def _mount(*args: str) -> None:
    done = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount here ({done.stderr.strip()}): needs root with CAP_SYS_ADMIN")


@contextmanager
def mounted(*args: str, at: Path):
    _mount(*args, str(at))
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=False)


@contextmanager
def read_only(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    with mounted("--bind", "-o", "ro", str(folder), at=folder):
        yield folder


@contextmanager
def full_disk(folder: Path):
    folder.mkdir(parents=True, exist_ok=True)
    with mounted("-t", "tmpfs", "-o", "size=1m", "tmpfs", at=folder):
        with (folder / "filler").open("wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * 65536)
                    handle.flush()
            except OSError:
                pass
        yield folder


@pytest.mark.parametrize("with_store", [False, True])
def test_a_read_only_store_warns_at_once_and_queues(tiny_built, tmp_path, with_store):
    root = copy_project(tiny_built, tmp_path / "proj") if with_store else fresh(tiny_built, tmp_path / "proj")
    shutil.rmtree(root / "artifacts" / "tiny" / "tracking", ignore_errors=True)
    job = job_for(root)
    with read_only(root / "artifacts" / "mlflow") as folder:
        result, log, seconds = track(job)  # was: 103 s of MLflow retrying to open the file, then "unreachable"
        assert seconds < 10, seconds
        assert result == {"uploaded": 0, "pending": 1}
        assert log.count("WARNING") == 1 and "unreachable" not in log
        assert f"cannot write the store at {folder} (Read-only file system" in log, log
        with pytest.raises(ReleaseError, match=r"cannot write the store at .*Read-only file system.*"
                                               r"tracking.required is true"):
            tracking.track({**job, "required": True}, log=lambda _: None)


def test_a_store_folder_that_is_a_file_warns(tiny_built, tmp_path):
    root = fresh(tiny_built, tmp_path / "proj")
    (root / "artifacts" / "mlflow").write_text("not a folder")
    result, log, seconds = track(job_for(root))
    assert result == {"uploaded": 0, "pending": 1} and seconds < 10
    assert "cannot write the store at" in log and "unreachable" not in log, log


def test_a_full_disk_warns_at_once_and_never_fails_the_build(tiny_built, tmp_path):
    root = fresh(tiny_built, tmp_path / "proj")
    job = job_for(root)
    with full_disk(tmp_path / "disk") as disk:
        (disk / "mlflow").mkdir()
        (root / "artifacts" / "mlflow").symlink_to(disk / "mlflow")
        result, log, seconds = track(job)
        assert result == {"uploaded": 0, "pending": 1} and seconds < 10, log
        assert "cannot write the store at" in log and "No space left on device" in log and "unreachable" not in log
        assert "WARNING" in log and "could not queue" not in log
        # The queue on the full disk as well (was: OSError, and the build failed).
        shutil.rmtree(root / "artifacts" / "tiny" / "tracking")
        (disk / "tracking").mkdir()
        (root / "artifacts" / "tiny" / "tracking").symlink_to(disk / "tracking")
        result, log, seconds = track(job)
        assert result["uploaded"] == 0 and seconds < 10
        assert log.count("WARNING") == 1 and "could not queue the report" in log and "No space left" in log, log
    # Room again: the next build logs it.
    (root / "artifacts" / "mlflow").unlink()
    (root / "artifacts" / "tiny" / "tracking").unlink()
    result, log, _ = track(job)
    assert result == {"uploaded": 1, "pending": 0}, log
