"""doit's task state, committed after every finished task.

doit keeps what it knows about each task (file_dep states, `config_changed` values) in memory and
writes its dependency file only when the run ends. A build killed with SIGKILL therefore forgets every
task that finished in it: the next build re-runs them all, and a task whose target the killed run
rewrote may be judged up to date against the state of an older run. This reporter writes a task's
row to the sqlite3 dependency file as soon as doit has recorded its success, so the file always
describes what is on disk. (Actions also verify committed outputs themselves: see release.actions.)

Used through DOIT_CONFIG's `reporter`, which doit accepts as a class; output is doit's console
reporter's, unchanged.
"""

from __future__ import annotations

from doit.reporter import ConsoleReporter


def commit(task_name: str) -> bool:
    """Write one task's recorded state to the dependency file now. False when the backend is not
    doit's sqlite3 one (json and dbm are written whole at the end, as doit does)."""
    from doit.globals import Globals

    backend = getattr(Globals.dep_manager, "backend", None)
    conn = getattr(backend, "_conn", None)
    cache = getattr(backend, "_cache", None)
    if conn is None or cache is None or task_name not in cache:
        return False
    conn.execute("insert or replace into doit values (?,?)", (task_name, backend.codec.encode(cache[task_name])))
    conn.commit()
    return True


class CommittingReporter(ConsoleReporter):
    desc = "console output; each finished task's state is committed to the dependency file at once"

    def add_success(self, task):
        super().add_success(task)
        commit(task.name)
