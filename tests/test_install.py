"""pgha installs into an existing Airflow the way a deployment does, and keeps that Airflow.

A virtualenv holding another patch release of Airflow 3.3 than the tests' own (built once per
machine and cached, as the lab's images are) gets `pip install <this checkout>` with its
dependencies; its Airflow release must stay. Then that Airflow's own DAG processor parses both
DAGs beside a plugins folder of the deployment's own that has `operators` and `hooks` packages
(named like pgha's subpackages), and `airflow plugins` lists pgha's plugin from its entry point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
OTHER_AIRFLOW = "3.3.1"  # the tests' own venv runs 3.3.2
PROVIDERS = ("apache-airflow-providers-ssh==7.0.1", "apache-airflow-providers-postgres==7.1.1")
CACHE = Path(os.environ.get("PGHA_TEST_CACHE", "/var/cache/pgha-test"))

pytestmark = pytest.mark.install


def outside_env(**extra: str) -> dict[str, str]:
    """This process's environment without the test session's Airflow settings (conftest sets them)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}, **extra}


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", outside_env())
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, argv))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def deployment_venv() -> Path:
    """A virtualenv with Airflow OTHER_AIRFLOW and the providers, as a deployment's image has."""
    venv = CACHE / f"airflow-{OTHER_AIRFLOW}-py{sys.version_info.major}{sys.version_info.minor}"
    if not (venv / ".complete").exists():
        run([sys.executable, "-m", "venv", "--clear", venv])
        run([venv / "bin/pip", "install", "-q", "--disable-pip-version-check", f"apache-airflow=={OTHER_AIRFLOW}",
             *PROVIDERS])
        (venv / ".complete").touch()
    run([venv / "bin/pip", "uninstall", "-q", "-y", "pgha"])
    return venv


def airflow_version(venv: Path) -> str:
    return run([venv / "bin/python", "-c", "import airflow; print(airflow.__version__)"]).stdout.strip()


def test_pip_install_keeps_the_deployments_airflow_and_its_dag_processor_parses_both_dags(
    deployment_venv: Path, tmp_path: Path
) -> None:
    assert airflow_version(deployment_venv) == OTHER_AIRFLOW
    run([deployment_venv / "bin/pip", "install", "-q", "--disable-pip-version-check", REPO_ROOT])
    assert airflow_version(deployment_venv) == OTHER_AIRFLOW

    home = tmp_path / "airflow"
    for package in ("operators", "hooks"):  # the deployment's own, named like pgha's subpackages
        (home / "plugins" / package).mkdir(parents=True)
        (home / "plugins" / package / "__init__.py").write_text('OWNER = "the deployment"\n')
    (home / "plugins" / "operators" / "etcd.py").write_text('OWNER = "the deployment"\n')
    env = outside_env(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False",
                      AIRFLOW__CORE__DAGS_FOLDER=str(REPO_ROOT / "dags"),
                      AIRFLOW__CORE__PLUGINS_FOLDER=str(home / "plugins"))
    airflow = deployment_venv / "bin/airflow"
    run([airflow, "db", "migrate"], env=env)
    run([airflow, "dag-processor", "--num-runs", "1"], env=env)

    dags = json.loads(run([airflow, "dags", "list", "-o", "json"], env=env).stdout.strip().splitlines()[-1])
    assert {d["dag_id"] for d in dags} >= {"pg_ha_migration", "pg_ha_failover_drill"}
    errors = run([airflow, "dags", "list-import-errors", "-o", "json"], env=env).stdout.strip().splitlines()[-1]
    assert json.loads(errors) == []
    plugins = json.loads(run([airflow, "plugins", "-o", "json"], env=env).stdout.strip().splitlines()[-1])
    assert "pgha" in {p["name"] for p in plugins}


def test_the_wheel_ships_the_package_data_and_no_top_level_module(tmp_path: Path) -> None:
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
         "--wheel-dir", tmp_path, REPO_ROOT])
    import zipfile

    names = zipfile.ZipFile(next(tmp_path.glob("pgha-*.whl"))).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"pgha", next(t for t in tops if t.endswith(".dist-info"))}
    for shipped in ("pgha/include/templates/patroni.yml.j2", "pgha/include/sql/table_fingerprint.sql",
                    "pgha/include/inventory.schema.json", "pgha/include/inventory.yml",
                    "pgha/include/drill/probe.py", "pgha/operators/etcd.py", "pgha/plugin.py"):
        assert shipped in names
    entry_points = zipfile.ZipFile(next(tmp_path.glob("pgha-*.whl"))).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[airflow.plugins]" in entry_points and "pgha.plugin:PghaPlugin" in entry_points
