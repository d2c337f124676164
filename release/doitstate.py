"""doit's task state, committed after every finished task; and the build's exit code.

doit keeps what it knows about each task (file_dep states, `config_changed` values) in memory and
writes its dependency file only when the run ends. A build killed with SIGKILL therefore forgets every
task that finished in it: the next build re-runs them all, and a task whose target the killed run
rewrote may be judged up to date against the state of an older run. This reporter writes a task's
row to the sqlite3 dependency file as soon as doit has recorded its success, so the file always
describes what is on disk. (Actions also verify committed outputs themselves: see release.actions.)

The same reporter gives `doit release` the exit codes of docs/ci.md (release/errors.py): doit
itself says 1 for any failed task and 2 for an exception, whatever failed. Actions report a user
mistake as a `Mistake` and missed budgets as `BudgetsMissed` (both doit TaskFailed, so doit's own
handling is unchanged); an exception is a crash. Once doit has saved its state and printed its
failure report (Runner.finish closes the dependency file, then calls complete_run), the reporter
ends the process with the most serious code. It also tells CI what failed (release/ci.py): GitHub
annotations, the step summary, and, when the build stopped before its gate, a report.xml with one
<error> per failed task.

Used through DOIT_CONFIG's `reporter`, which doit accepts as a class; output is doit's console
reporter's, plus the annotations in GitHub Actions.
"""

from __future__ import annotations

from doit.exceptions import TaskFailed, UnmetDependency
from doit.reporter import ConsoleReporter

from release import ci
from release.errors import BUDGETS_MISSED, CRASH, MISTAKE

SEVERITY = (CRASH, MISTAKE, BUDGETS_MISSED)  # the first that happened is the exit code
GATED = {"release", "gate", "publish", "track"}  # selected tasks whose run ends in (or after) the gate


class Mistake(TaskFailed):
    """A ReleaseError in an action: its message is the whole report, no traceback (exit 3).
    `problems` are a ManifestError's located ones (file, line, field, message)."""

    def __init__(self, msg: str, problems=()):
        super().__init__(msg)
        self.problems = [tuple(p) for p in problems]


class BudgetsMissed(TaskFailed):
    """No variant meets every budget (exit 1); `missed` is (variant, budget, one line) per miss."""

    def __init__(self, msg: str, missed=()):
        super().__init__(msg)
        self.missed = [tuple(m) for m in missed]


def classify(fail) -> tuple[int, str] | None:
    """The exit code and kind of one failed task; None for a task that did not run because another
    failed (that one is counted)."""
    if isinstance(fail, Mistake):
        return MISTAKE, "mistake"
    if isinstance(fail, BudgetsMissed):
        return BUDGETS_MISSED, "budgets missed"
    if isinstance(fail, UnmetDependency):
        return None
    return CRASH, "crash"  # an exception (TaskError), a doit dependency error, an action returning False


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
    desc = ("console output; each finished task's state is committed to the dependency file at once; "
            "exit codes by what failed (docs/ci.md)")

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.failed: list[tuple[int, str, str, str]] = []  # (code, task, kind, message)
        self.gates: dict[str, dict] = {}  # gate task -> its job (name, version, report_xml)
        self.judged: set[str] = set()  # gate tasks that ran or were up to date in this run

    def initialize(self, tasks, selected_tasks):
        super().initialize(tasks, selected_tasks)
        if not {name.partition(":")[0] for name in selected_tasks or ()} & GATED:
            return  # e.g. `doit stage:...`: a failure there says nothing of a build's verdict
        for name, task in tasks.items():
            if name.startswith("gate:") and task.actions and getattr(task.actions[0], "args", None):
                self.gates[name] = task.actions[0].args[0]

    def add_success(self, task):
        super().add_success(task)
        commit(task.name)
        self.judged.add(task.name)

    def skip_uptodate(self, task):
        super().skip_uptodate(task)
        self.judged.add(task.name)

    def add_failure(self, task, fail):
        super().add_failure(task, fail)
        kind = classify(fail)
        if kind is None:
            return
        message = fail.message if kind[0] != CRASH else fail.get_msg()
        self.failed.append((kind[0], task.name, kind[1], message))
        ci.annotate(_annotations(task.name, kind[0], fail), self.outstream)

    def runtime_error(self, msg):
        super().runtime_error(msg)
        self.failed.append((CRASH, "doit", "crash", msg))

    def exit_code(self) -> int | None:
        """The most serious failure's code; None when nothing of ours failed (doit's code stands)."""
        codes = {code for code, *_ in self.failed}
        return next((code for code in SEVERITY if code in codes), None)

    def complete_run(self):
        super().complete_run()
        code = self.exit_code()
        if code is None:
            return
        failures = [(task, kind, message) for _, task, kind, message in self.failed]
        if code != BUDGETS_MISSED:  # missed budgets: the release task has put the gate table there
            ci.append_summary(ci.failure_summary(code, failures))
        self._report_unjudged(failures)
        raise SystemExit(code)

    def _report_unjudged(self, failures) -> None:
        """report.xml for a build that stopped before its gate (release.junit.failed): tonight's
        errors under the usual test names, never an earlier build's verdict."""
        from pathlib import Path

        from release import junit
        from release.atomic import write_text

        for gate, job in self.gates.items():
            if gate in self.judged or not job.get("report_xml"):
                continue
            try:
                write_text(Path(job["report_xml"]), junit.text(junit.failed(job, failures)))
            except OSError as exc:  # the failure being reported may be this very disk
                self.write(f"report.xml not written: {exc}\n")


def _annotations(task: str, code: int, fail) -> list[str]:
    if code == MISTAKE:
        return ci.mistake_annotations(fail.message, fail.problems)
    if code == BUDGETS_MISSED:
        return [ci.annotation(line, title=f"budget missed ({variant} {budget})")
                for variant, budget, line in fail.missed]
    lines = [line for line in fail.get_msg().strip().splitlines() if line.strip()]
    return [ci.annotation(f"{task}: {lines[-1] if lines else fail.message} (see the log for the traceback)",
                          title="release crashed (exit 2)")]
