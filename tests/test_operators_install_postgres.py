"""Phase 2 (InstallPostgresOperator) on a recorded Debian 12 and Rocky 9 host."""

from __future__ import annotations

from pathlib import Path

import pytest
from pgha.compat import AirflowException
from pgha.operators.postgres import InstallPostgresOperator
from recording_host import DEBIAN_12, ROCKY_9, FakeFile, Fleet, fleet_inventory

BOTH = [pytest.param(DEBIAN_12, id="debian12"), pytest.param(ROCKY_9, id="rocky9")]


def install(inventory: str) -> dict:
    return InstallPostgresOperator(task_id="install_postgres", host="psg1", inventory_path=inventory).execute({})


@pytest.mark.parametrize("os", BOTH)
def test_install_plan(fleet: Fleet, tmp_path: Path, os: str) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os)
    psg1 = fleet["psg1"]
    result = install(inventory)
    assert result["changed"] and "(PostgreSQL) 15." in result["result"]["version"]
    unit = psg1.units["postgresql.service"]
    assert not unit.enabled and not unit.active  # Patroni runs PostgreSQL
    if os == DEBIAN_12:
        assert psg1.ran(r"apt-get install .* postgresql-15 postgresql-client-15$")
        assert psg1.ran(r"^systemctl disable --now --quiet postgresql$")  # the package started it
        assert "/var/lib/postgresql/15/main/PG_VERSION" not in psg1.files  # no "main" cluster was created
        assert psg1.ran(r"^/usr/lib/postgresql/15/bin/postgres --version$")
    else:
        # the module stream before the install: RHEL 9's default stream is 13
        commands = [c.command for c in psg1.commands]
        enable = commands.index("dnf module enable -y -q postgresql:15")
        assert enable < commands.index("dnf install -y -q postgresql-server postgresql-contrib")
        assert not psg1.ran("systemctl disable")  # RHEL's package leaves it disabled
        assert psg1.ran(r"^/usr/bin/postgres --version$") and not psg1.ran("apt-get|dpkg")


@pytest.mark.parametrize("os", BOTH)
def test_a_second_run_changes_nothing(fleet: Fleet, tmp_path: Path, os: str) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os)
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
    """PostgreSQL 13 installed from RHEL's default stream before the inventory's 15 was enabled."""
    inventory = fleet_inventory(fleet, tmp_path, ROCKY_9)
    psg1 = fleet["psg1"]
    psg1.install_package("postgresql-server")
    psg1.install_package("postgresql-contrib")
    psg1.files["/etc/dnf/modules.d/postgresql.module"] = FakeFile("[postgresql]\nstream=15\nstate=enabled\n")
    with pytest.raises(AirflowException, match=r"\[psg1\] version mismatch: expected PostgreSQL 15, "
                                               r"got 'postgres \(PostgreSQL\) 13.20'"):
        install(inventory)
