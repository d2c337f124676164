"""A person's view: headless Chromium opens the MLflow UI and finds every variant and its mAP.

Needs Debian's chromium (.ci/run installs it). The screenshot lands in the project's artifacts/;
with RELEASE_UI_PROJECT=<a built project root> the test opens that project's embedded store
instead of the tiny build, and RELEASE_UI_SCREENSHOT=<path> says where the screenshot goes. The
README's picture was taken with RELEASE_UI_PROJECT=. RELEASE_UI_SCREENSHOT=docs/mlflow-compare.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import copy_project
from tests.func.test_tracking import Server, client_for, free_port, runs_of

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=20000", "--window-size=2400,2400"]  # wide: the compare table renders
                                                                    # only the run columns in view


def chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                          capture_output=True, text=True, timeout=120, check=False)


def metric_table(dom: str) -> dict[str, list[str]]:
    """The compare page's metrics section as {metric: [value per run column]}."""
    text = re.sub(r"\|+", "|", re.sub(r"<[^>]+>", "|", dom))
    section = text.split("|Metrics|Show diff only|", 1)[1].split("|Artifacts|", 1)[0].strip("|").split("|")
    names = [s for s in section if re.fullmatch(r"[a-z_0-9.]+", s) and not re.fullmatch(r"[0-9.e-]+", s)]
    values = section[len(names):]
    per = len(values) // len(names)
    return {name: values[i * per:(i + 1) * per] for i, name in enumerate(names)}


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="Debian's chromium is not installed")
def test_ui_shows_every_variant_and_its_map(tiny_built, tmp_path):
    assert CHROMIUM, "chromium is required in CI (.ci/run installs it)"
    source = Path(os.environ.get("RELEASE_UI_PROJECT", tiny_built))
    root = copy_project(source, tmp_path / "proj") if source == tiny_built else source
    name = next(p.parent.name for p in (root / "artifacts").glob("*/report.json"))
    report = json.loads((root / "artifacts" / name / "report.json").read_text())
    server = Server(tmp_path / "server", free_port())
    server.folder.mkdir(parents=True)
    shutil.copyfile(root / "artifacts/mlflow/mlflow.db", server.folder / "mlflow.db")
    server.start()
    try:
        client = client_for(server.uri)
        children = [r for r in runs_of(client, name) if "mlflow.parentRunId" in r.data.tags]
        latest = {}
        for run in sorted(children, key=lambda r: r.info.start_time):
            latest[run.info.run_name] = run  # the newest run of each variant
        assert set(latest) == set(report["variants"])
        ids = [latest[v].info.run_id for v in report["variants"]]
        experiment = client.get_experiment_by_name(name).experiment_id
        # The compare view of the variants' runs, which a team opens from the experiment's runs page
        # (MLflow 3.17 nests child runs under collapsed parents there, so the page itself shows
        # only the build runs until they are expanded).
        url = f"{server.uri}/#/compare-runs?runs={json.dumps(ids)}&experiments={json.dumps([experiment])}"
        dom = chromium(url, tmp_path / "profile-dom", "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        for variant in report["variants"]:
            assert f">{variant}<" in dom.stdout
        table = metric_table(dom.stdout)
        assert len(table["map"]) == len(report["variants"]), f"the UI showed {len(table['map'])} run columns"
        for column, variant in enumerate(report["variants"]):
            shown = float(table["map"][column])
            assert shown == pytest.approx(report["variants"][variant]["map"], abs=5e-4), (variant, table["map"])
        shot = Path(os.environ.get("RELEASE_UI_SCREENSHOT", root / "artifacts" / "mlflow-compare.png"))
        done = chromium(url, tmp_path / "profile-shot", f"--screenshot={shot}")
        assert done.returncode == 0 and shot.stat().st_size > 10_000
    finally:
        server.stop()


def test_doit_ui_serves_the_embedded_store(tiny_built, tmp_path):
    import signal
    import sys
    import time
    import urllib.request

    from tests.conftest import DODO

    root = copy_project(tiny_built, tmp_path / "proj")
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}, "MLFLOW_UI_PORT": str(port)}
    proc = subprocess.Popen([sys.executable, "-m", "doit", "-f", str(DODO), "-d", str(root), "ui", "manifest=tiny.yaml"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    try:
        deadline, ok = time.monotonic() + 90, False
        while time.monotonic() < deadline and proc.poll() is None and not ok:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    ok = response.status == 200
            except OSError:
                time.sleep(0.5)
        assert ok, "doit ui did not serve the MLflow UI"
        runs = runs_of(client_for(f"http://127.0.0.1:{port}"), "tiny")
        assert {"fp32", "int8"} <= {r.info.run_name for r in runs}  # the project's own store
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
