"""Where the MLflow store is (the URI: MLFLOW_TRACKING_URI, the manifest's, or the embedded one),
whether a server answers, the client that opens it, and the embedded store on disk: made
atomically, checked before MLflow opens it, upgraded on a copy, moved aside when damaged, and
written to only when its folder can be written.

Cheap to import (mlflow only inside functions): tracking's doit uptodate check reads a store's id
from here.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from pathlib import Path
from urllib.parse import quote, urlparse


# ---------------------------------------------------------------- where the store is

def embedded_uri(root: Path) -> str:
    """The project's own store: SQLite under artifacts/mlflow/."""
    return f"sqlite:///{Path(root) / 'artifacts' / 'mlflow' / 'mlflow.db'}"


def resolve_uri(job: dict) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or job.get("uri") or embedded_uri(job["root"])


def embedded_artifacts(job: dict) -> Path:
    return Path(job["root"]) / "artifacts" / "mlflow" / "artifacts"


def store_key(job: dict) -> str:
    """The ledger's name for the store: the embedded one moves with the project folder."""
    uri = resolve_uri(job)
    return "embedded" if uri == embedded_uri(job["root"]) else uri


def sqlite_path(uri: str) -> Path | None:
    """The file of a SQLite store URI (sqlite:///relative or sqlite:////absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def local_store(uri: str) -> Path | None:
    """Where a store on this machine lives (a SQLite file, a file store folder), else None."""
    db = sqlite_path(uri)
    if db is not None:
        return db
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return Path(urlparse(uri).path)
    if scheme == "" and not uri.startswith(("databricks", "uc")):
        return Path(uri)
    return None



def unreachable(uri: str, timeout: float = 3.0) -> str | None:
    """Why a tracking server cannot be reached, or None. Local stores are always reachable."""
    if not uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            return None if response.status == 200 else f"HTTP {response.status}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def _import_mlflow():
    import logging

    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    import mlflow

    for name in ("mlflow", "alembic"):  # after the import: mlflow configures its loggers on import
        logging.getLogger(name).setLevel(logging.WARNING)
    return mlflow


def _client(uri: str):
    """The client (for a SQLite store this opens the file: _open_sqlite has made it ready)."""
    mlflow = _import_mlflow()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


# ---------------------------------------------------------------- the embedded store on disk

def _file_store_id(db: Path) -> int | None:
    """The id this module stamps in a SQLite store it makes (the header's user_version, read from
    the file itself: cheap enough for doit's uptodate check), 0 for an unstamped store, None if
    there is no SQLite file."""
    try:
        with db.open("rb") as handle:
            head = handle.read(100)
    except OSError:
        return None
    if len(head) < 100 or not head.startswith(b"SQLite format 3\0"):
        return None
    return int.from_bytes(head[60:64], "big")


def _os_reason(exc: OSError) -> str:
    return f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc.strerror or exc)


def _reason(exc: BaseException, root_cause: bool = False) -> str:
    """One line on why a call failed; for a local store the underlying SQLite or OS error (MLflow's
    own message can be "raised as a result of Query-invoked autoflush")."""
    if root_cause:
        import sqlite3

        chain, e = [], exc
        while e is not None and e not in chain:
            chain.append(e)
            e = e.__cause__ or e.__context__
        exc = next((e for e in reversed(chain) if isinstance(e, (sqlite3.Error, OSError))), exc)
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:300]}"


class StoreProblem(Exception):
    """A store on this machine that cannot be written or opened; the message says which and why."""


@contextlib.contextmanager
def _no_sqlite_retries():
    """MLflow retries opening a database 10 times over ~100 s (for a server still starting); a file
    here that cannot be opened will not open later in this build: fail at once."""
    from mlflow.store.db import utils

    saved = getattr(utils, "MAX_RETRY_COUNT", None)
    utils.MAX_RETRY_COUNT = 1
    try:
        yield
    finally:
        if saved is not None:
            utils.MAX_RETRY_COUNT = saved


def _check_writable(folder: Path) -> None:
    """The store's folder takes a new file with some data in it, or StoreProblem at once."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * 65536)  # SQLite needs room for its pages and journal, not only a name
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                probe.unlink()
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
        why = (f"{blocker} is a file, not a folder" if blocker is not None and not blocker.is_dir()
               else exc.strerror or str(exc))
        raise StoreProblem(f"cannot write the store at {folder} ({why})") from None


def _sqlite_uri(path: Path, mode: str = "rw") -> str:
    return f"file:{quote(str(path))}?mode={mode}"


def _unfinished(db: Path) -> list[Path]:
    return sorted(db.parent.glob(f".{db.name}.*.new"))


def _temp_for(db: Path) -> Path:
    return db.with_name(f".{db.name}.{os.getpid()}.new")


def _clear_unfinished(db: Path) -> None:
    """Stores being made by a build that was killed (their maker is gone) are removed."""
    for path in _unfinished(db):
        try:
            pid = int(path.name.split(".")[-2])
            if pid != os.getpid():
                os.kill(pid, 0)
                continue  # its maker is alive: another build is making it
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        with contextlib.suppress(OSError):
            path.unlink()


def _stamp(path: Path) -> int:
    import sqlite3

    store_id = secrets.randbelow(2**31 - 2) + 1
    con = sqlite3.connect(str(path))
    try:
        con.execute(f"PRAGMA user_version = {store_id}")
        con.commit()
    finally:
        con.close()
    return store_id


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _migrate(path: Path, step) -> None:
    """Run one of MLflow's schema steps (create the tables, upgrade them) on the SQLite file `path`."""
    from mlflow.store.db import utils

    engine = utils.create_sqlalchemy_engine(f"sqlite:///{path}")
    try:
        step(engine)
    finally:
        engine.dispose()


def _make_store(db: Path) -> None:
    """A new store: MLflow migrates a file next to its place, which is linked there only when done."""
    from mlflow.store.db import utils

    tmp = _temp_for(db)
    try:
        tmp.unlink(missing_ok=True)
        _migrate(tmp, utils._initialize_tables)
        _stamp(tmp)
        _fsync(tmp)
        try:
            os.link(tmp, db)  # never replaces a store another build made meanwhile
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not db.exists():
                os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def _schema_state(db: Path) -> str | None:
    """None (ready), "behind" (an older schema: to be upgraded), or what is wrong with it."""
    import sqlite3

    from mlflow.store.db import utils

    try:  # read-write: a journal left by a killed write is rolled back, as SQLite does on open
        con = sqlite3.connect(_sqlite_uri(db), uri=True, timeout=10)
        try:
            check = con.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                return f"SQLite finds it damaged: {check}"
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            row = (con.execute("SELECT version_num FROM alembic_version").fetchone()
                   if "alembic_version" in tables else None)
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        if any(s in text for s in ("locked", "unable to open", "readonly", "disk is full", "disk I/O")):
            raise StoreProblem(f"cannot open the store at {db} ({type(exc).__name__}: {text})") from None
        return f"{type(exc).__name__}: {text}"
    if row is None:
        return "it has no schema version: it was never completely made"
    head = utils._get_latest_schema_revision()
    if row[0] == head:
        return None
    from alembic.script import ScriptDirectory

    try:
        ScriptDirectory.from_config(utils._get_alembic_config(db_url="")).get_revision(row[0])
    except Exception:  # noqa: BLE001 -- alembic's "Can't locate revision"
        import mlflow

        raise StoreProblem(f"cannot open the store at {db} (its schema revision {row[0]} is unknown to MLflow "
                           f"{mlflow.__version__}: made by a newer MLflow?)") from None
    return "behind"


def _upgrade_store(db: Path) -> None:
    """An older schema upgraded on a copy, which then replaces the store: never half-done in place."""
    import sqlite3

    from mlflow.store.db import utils

    tmp = _temp_for(db)
    try:
        tmp.unlink(missing_ok=True)
        source, copy = sqlite3.connect(_sqlite_uri(db), uri=True, timeout=10), sqlite3.connect(str(tmp))
        try:
            source.backup(copy)
        finally:
            source.close()
            copy.close()
        _migrate(tmp, utils._upgrade_db)
        _fsync(tmp)
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def _open_sqlite(db: Path, embedded: bool, log) -> tuple[int, object]:
    """Make the SQLite store at `db` ready for MLflow: (its id, how it was made now: None if it was
    there, "new", or (what was wrong, where the damaged one went))."""
    _check_writable(db.parent)
    if db.exists() and not db.is_file():
        raise StoreProblem(f"cannot open the store at {db} (it is not a file)")
    _clear_unfinished(db)
    if not db.exists():
        _make_store(db)
        return _file_store_id(db) or _stamp(db), "new"
    damage = _schema_state(db)
    if damage == "behind":
        try:
            _upgrade_store(db)
            import mlflow

            log(f"tracking: upgraded the store at {db} to the schema of MLflow {mlflow.__version__}")
            damage = None
        except Exception as exc:  # noqa: BLE001 -- a migration that cannot run: the store is damaged
            damage = f"its schema cannot be upgraded: {_reason(exc, root_cause=True)}"
    if damage is None:
        return _file_store_id(db) or _stamp(db), None  # 0: made before stores were stamped
    if not embedded:  # somebody else's file: said, not moved
        raise StoreProblem(f"cannot open the store at {db} ({damage}); move it aside, and the next build makes "
                           f"a new one there")
    aside = db.with_name(f"{db.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}")
    for suffix in ("-journal", "-wal", "-shm"):  # what SQLite keeps beside it belongs to it
        beside = db.with_name(db.name + suffix)
        if beside.exists():
            os.replace(beside, aside.with_name(aside.name + suffix))
    os.replace(db, aside)
    _make_store(db)
    return _file_store_id(db) or _stamp(db), (damage, aside)
