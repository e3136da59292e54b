"""Phase 2 (InstallPostgresOperator) on a recorded Debian 12 and Rocky 9 host."""

from __future__ import annotations

from pathlib import Path

import pytest
from pgha.compat import AirflowException
from pgha.hooks.remote import CommandFailed
from pgha.operators.postgres import InstallPostgresOperator
from recording_host import DEBIAN_12, ROCKY_9, FakeFile, Fleet, fleet_inventory

BOTH = [pytest.param(DEBIAN_12, id="debian12"), pytest.param(ROCKY_9, id="rocky9")]


def install(inventory: str) -> dict:
    return InstallPostgresOperator(task_id="install_postgres", host="psg1", inventory_path=inventory).execute({})


def with_pgdg(fleet: Fleet, os: str) -> None:
    """What phase 1 leaves on a RHEL-family node: PGDG's repository package (tests/test_rhel_plan.py)."""
    if os == ROCKY_9:
        fleet["psg1"].install_package("pgdg-redhat-repo")


@pytest.mark.parametrize("os", BOTH)
def test_install_plan(fleet: Fleet, tmp_path: Path, os: str) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os)
    with_pgdg(fleet, os)
    psg1 = fleet["psg1"]
    result = install(inventory)
    assert result["changed"] and "(PostgreSQL) 15." in result["result"]["version"]
    unit = psg1.units["postgresql.service" if os == DEBIAN_12 else "postgresql-15.service"]
    assert not unit.enabled and not unit.active  # Patroni runs PostgreSQL
    if os == DEBIAN_12:
        assert psg1.ran(r"apt-get install .* postgresql-15 postgresql-client-15$")
        assert psg1.ran(r"^systemctl disable --now --quiet postgresql$")  # the package started it
        assert "/var/lib/postgresql/15/main/PG_VERSION" not in psg1.files  # no "main" cluster was created
        assert psg1.ran(r"^/usr/lib/postgresql/15/bin/postgres --version$")
    else:
        # PGDG's packages and paths; the module streams are phase 1's business (disabled there)
        assert psg1.ran(r"^dnf install -y -q postgresql15-server postgresql15-contrib$")
        assert not psg1.ran("dnf module")
        assert psg1.ran(r"^systemctl is-enabled --quiet postgresql-15$")
        assert not psg1.ran("systemctl disable")  # PGDG's package leaves it disabled
        assert psg1.ran(r"^/usr/pgsql-15/bin/postgres --version$") and not psg1.ran("apt-get|dpkg")


@pytest.mark.parametrize("os", BOTH)
def test_a_second_run_changes_nothing(fleet: Fleet, tmp_path: Path, os: str) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os)
    with_pgdg(fleet, os)
    install(inventory)
    fleet.forget()
    assert not install(inventory)["changed"]
    assert fleet["psg1"].mutations() == []


@pytest.mark.parametrize("os", BOTH)
def test_a_foreign_data_directory_is_refused_before_anything_changes(fleet: Fleet, tmp_path: Path, os: str) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os)
    psg1 = fleet["psg1"]
    data_dir = "/var/lib/postgresql/15/main" if os == DEBIAN_12 else "/var/lib/pgsql/15/data"
    psg1.files[f"{data_dir}/PG_VERSION"] = FakeFile("15\n", "postgres", "postgres")
    with pytest.raises(AirflowException, match=rf"\[psg1\] {data_dir} already holds a PostgreSQL cluster that pgha "
                                               "did not create; move it away"):
        install(inventory)
    assert psg1.mutations() == [] and f"{data_dir}/PG_VERSION" in psg1.files


def test_a_cluster_patroni_created_is_not_foreign(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12)
    psg1 = fleet["psg1"]
    install(inventory)
    psg1.files["/var/lib/postgresql/15/main/PG_VERSION"] = FakeFile("15\n", "postgres", "postgres")
    psg1.files["/etc/patroni/patroni.yml"] = FakeFile("scope: x\n", "postgres", "postgres", "600")
    assert not install(inventory)["changed"]


def test_a_version_mismatch_names_the_host_and_the_versions(fleet: Fleet, tmp_path: Path) -> None:
    """A postgres binary of another major where PGDG's postgresql15-server should have put 15's."""
    inventory = fleet_inventory(fleet, tmp_path, ROCKY_9)
    with_pgdg(fleet, ROCKY_9)
    psg1 = fleet["psg1"]
    for package in ("postgresql15-server", "postgresql15-contrib"):
        psg1.install_package(package)
    psg1.binaries["/usr/pgsql-15/bin/postgres"] = "postgres (PostgreSQL) 13.20"
    with pytest.raises(AirflowException, match=r"\[psg1\] version mismatch: expected PostgreSQL 15, "
                                               r"got 'postgres \(PostgreSQL\) 13.20'"):
        install(inventory)


def test_without_phase_1_rocky_finds_no_pgdg_package(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, ROCKY_9)
    with pytest.raises(CommandFailed, match="Unable to find a match: postgresql15-server postgresql15-contrib"):
        install(inventory)
