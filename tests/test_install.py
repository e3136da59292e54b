"""pgha installs into an existing Airflow the way a deployment does, and keeps that Airflow.

For each supported Airflow release (tests/airflow_releases.py; by default the oldest and the
newest, PGHA_AIRFLOW_RELEASES=all or a comma-separated list for others), a virtualenv holding that
release and the providers (built once per machine and cached, as the lab's images are) gets
`pip install <this checkout>` with its dependencies; its Airflow release must stay. Then that
Airflow's own DAG processor parses both DAGs beside a plugins folder of the deployment's own that
has `operators` and `hooks` packages (named like pgha's subpackages), and `airflow plugins` lists
pgha's plugin from its entry point. bench/airflow_matrix.py runs the unit tests on every release.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from airflow_releases import (
    SUPPORTED,
    airflow_version,
    deployment_venv,
    locked,
    outside_env,
    parse_dags,
    plugin_names,
    venv_path,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.install


def releases_under_test() -> list[str]:
    wanted = os.environ.get("PGHA_AIRFLOW_RELEASES", "")
    if wanted == "all":
        return list(SUPPORTED)
    if wanted:
        return [release.strip() for release in wanted.split(",")]
    return [SUPPORTED[0], SUPPORTED[-1]]


def run(argv: list, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("env", outside_env())
    result = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, argv))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def source_copy(tmp_path: Path) -> Path:
    """This checkout's sources in a directory of the test's own.

    setuptools builds in `build/` beside the sources, so two builds of one directory at once (the
    two tests here on two xdist workers) delete each other's files mid-copy.
    """
    ignored = shutil.ignore_patterns(".venv", ".git", "build", ".state", "*.egg-info", "__pycache__",
                                     ".pytest_cache")
    return Path(shutil.copytree(REPO_ROOT, tmp_path / "source", ignore=ignored))


@pytest.fixture(scope="module", params=releases_under_test())
def deployment(request: pytest.FixtureRequest) -> Iterator[tuple[str, Path]]:
    """(release, a virtualenv with that Airflow and the providers, without pgha), as a deployment's image has."""
    release = request.param
    with locked(venv_path(release)):
        venv = deployment_venv(release)
        run([venv / "bin/pip", "uninstall", "-q", "-y", "pgha"])
        yield release, venv


def test_pip_install_keeps_the_deployments_airflow_and_its_dag_processor_parses_both_dags(
    deployment: tuple[str, Path], tmp_path: Path
) -> None:
    release, venv = deployment
    assert airflow_version(venv) == release
    run([venv / "bin/pip", "install", "-q", "--disable-pip-version-check", source_copy(tmp_path)])
    assert airflow_version(venv) == release

    home = tmp_path / "airflow"
    for package in ("operators", "hooks"):  # the deployment's own, named like pgha's subpackages
        (home / "plugins" / package).mkdir(parents=True)
        (home / "plugins" / package / "__init__.py").write_text('OWNER = "the deployment"\n')
    (home / "plugins" / "operators" / "etcd.py").write_text('OWNER = "the deployment"\n')
    dag_ids, import_errors = parse_dags(venv, home)
    assert import_errors == []
    assert dag_ids >= {"pg_ha_migration", "pg_ha_failover_drill"}
    assert "pgha" in plugin_names(venv, home)


def test_the_wheel_ships_the_package_data_and_no_top_level_module(tmp_path: Path) -> None:
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
         "--wheel-dir", tmp_path, source_copy(tmp_path)])
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
