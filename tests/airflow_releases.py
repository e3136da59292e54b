"""The Airflow releases pgha supports, and a cached virtualenv per release to test them in.

One release per minor, the latest patch (README "Supported Airflow releases"). 3.0 and 3.1 are
the last minors whose docs list PostgreSQL 13 as a metadata database, so users whose Airflow
still runs on PostgreSQL 13 are on one of them.

A release's virtualenv is what a deployment's image holds (that Airflow and the two providers),
built once per machine under CACHE and shared by every checkout on it. tests/test_install.py and
bench/airflow_matrix.py install pgha into it; both hold `locked(venv)` while they do, so two
checkouts never swap pgha under each other's feet.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# release -> pins that release needs beside it, where the newest of a dependency breaks it.
RELEASE_PINS = {
    # 3.0.6 resolved with today's newest (cadwyn 9, FastAPI 0.165, pydantic 2.14): its Execution API answers
    # every task start with 422 ("Input should be a valid dictionary"), and with PyJWT 2.15 its /auth/token
    # fails (500: "Issuer (iss) must be a string", no jwt_issuer set): the versions of its own era.
    "3.0.6": ("cadwyn==5.4.6", "fastapi==0.116.1", "pydantic==2.11.7", "PyJWT==2.10.1"),
    "3.1.8": (),
    # cadwyn 9 (with its fastapi >= 0.137) fails on 3.2.2's execution API models at import
    # ("TITerminalStatePayload needs a discriminator field"): the versions the tests' 3.3.2 uses. svcs 26
    # leaves its Execution API without a service registry (KeyError 'svcs_registry' at every task start).
    "3.2.2": ("cadwyn==7.0.0", "fastapi==0.136.3", "svcs==25.1.0"),
    "3.3.2": (),
}
SUPPORTED = tuple(RELEASE_PINS)  # oldest first
PROVIDERS = ("apache-airflow-providers-ssh==7.0.1", "apache-airflow-providers-postgres==7.1.1")
CACHE = Path(os.environ.get("PGHA_TEST_CACHE", "/var/cache/pgha-test"))
PIP = ("-m", "pip", "install", "-q", "--disable-pip-version-check")


def outside_env(**extra: str) -> dict[str, str]:
    """This process's environment without any Airflow settings (the test conftest sets some)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}, **extra}


def run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    """Run argv; raise with the command and the tail of its output when it fails."""
    kwargs.setdefault("env", outside_env())
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {result.returncode}\n"
                           f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def venv_path(version: str) -> Path:
    return CACHE / f"airflow-{version}-py{sys.version_info.major}{sys.version_info.minor}"


@contextmanager
def locked(venv: Path) -> Iterator[None]:
    """Exclusive use of a release's virtualenv across processes and checkouts."""
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{venv}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def deployment_venv(version: str) -> Path:
    """The release's virtualenv with Airflow `version` and the providers, built when missing.

    Call under `locked(venv_path(version))`."""
    venv = venv_path(version)
    wanted = [f"apache-airflow=={version}", *PROVIDERS, *RELEASE_PINS.get(version, ())]
    marker = venv / ".complete"
    if not marker.exists() or marker.read_text() != "\n".join(wanted):
        run([sys.executable, "-m", "venv", "--clear", venv])
        run([venv / "bin/python", *PIP, *wanted])
        marker.write_text("\n".join(wanted))
    return venv


def airflow_pins(version: str) -> str:
    """A constraints file's text that keeps the release's Airflow (and its RELEASE_PINS) where they are."""
    return "".join(f"{pin}\n" for pin in (f"apache-airflow=={version}", f"apache-airflow-core=={version}",
                                          *RELEASE_PINS.get(version, ())))


def install_test_requirements(venv: Path, version: str) -> None:
    """requirements.txt's test tools and pins, all but its Airflow ones, with Airflow held at `version`.

    Done once per content of requirements.txt (a marker file in the venv remembers it)."""
    wanted = "".join(line for line in (REPO_ROOT / "requirements.txt").read_text().splitlines(keepends=True)
                     if not line.strip().startswith("apache-airflow"))
    marker = venv / ".test-requirements"
    if marker.exists() and marker.read_text() == wanted:
        return
    with tempfile.TemporaryDirectory() as tmp:
        requirements, constraints = Path(tmp, "requirements.txt"), Path(tmp, "constraints.txt")
        requirements.write_text(wanted)
        constraints.write_text(airflow_pins(version))
        run([venv / "bin/python", *PIP, "-r", requirements, "-c", constraints])
    marker.write_text(wanted)


def airflow_version(venv: Path) -> str:
    return run([venv / "bin/python", "-c", "import airflow; print(airflow.__version__)"]).stdout.strip()


def parse_dags(venv: Path, home: Path, plugins: Path | None = None) -> tuple[set[str], list[dict]]:
    """That Airflow's own DAG processor parses dags/ once: (the DAG ids it stored, its import errors)."""
    env = outside_env(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
                      AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
                      AIRFLOW__CORE__PLUGINS_FOLDER=str(plugins or home / "plugins"))
    airflow = venv / "bin/airflow"
    run([airflow, "db", "migrate"], env=env)
    run([airflow, "dag-processor", "--num-runs", "1"], env=env)
    dags = json.loads(run([airflow, "dags", "list", "-o", "json"], env=env).stdout.strip().splitlines()[-1])
    errors = json.loads(run([airflow, "dags", "list-import-errors", "-o", "json"], env=env).stdout.strip().splitlines()[-1])
    return {d["dag_id"] for d in dags}, errors


def plugin_names(venv: Path, home: Path, plugins: Path | None = None) -> set[str]:
    env = outside_env(AIRFLOW_HOME=str(home), AIRFLOW__CORE__PLUGINS_FOLDER=str(plugins or home / "plugins"))
    listed = run([venv / "bin/airflow", "plugins", "-o", "json"], env=env).stdout.strip().splitlines()[-1]
    return {p["name"] for p in json.loads(listed)}
