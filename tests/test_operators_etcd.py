"""Phase 3 operators (etcd install and configure) on a recorded Debian 12 and Rocky 9 host."""

from __future__ import annotations

from pathlib import Path

import pytest
from pgha.compat import AirflowException
from pgha.hooks.remote import CommandFailed
from pgha.operators.etcd import ConfigureEtcdOperator, InstallEtcdOperator
from recording_host import (
    DEBIAN_12,
    ETCD_TARBALL_SHA256,
    ETCD_TARBALL_URL,
    ROCKY_9,
    Fleet,
    fleet_inventory,
)

TARBALL = {"method": "tarball", "version": "3.5.9", "url": ETCD_TARBALL_URL, "sha256": ETCD_TARBALL_SHA256}
BOTH = [pytest.param(DEBIAN_12, {"install": {"method": "package"}}, id="debian12-package"),
        pytest.param(ROCKY_9, {"install": TARBALL}, id="rocky9-tarball")]


def install(inventory: str) -> dict:
    return InstallEtcdOperator(task_id="install_etcd", host="psg1", inventory_path=inventory).execute({})


def configure(inventory: str) -> dict:
    return ConfigureEtcdOperator(task_id="configure_etcd", host="psg1", inventory_path=inventory).execute({})


@pytest.mark.parametrize(("os", "etcd"), BOTH)
def test_install_then_configure_plan(fleet: Fleet, tmp_path: Path, os: str, etcd: dict) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os, etcd=etcd)
    psg1 = fleet["psg1"]
    installed = install(inventory)
    binary = "/usr/bin/etcd" if os == DEBIAN_12 else "/usr/local/bin/etcd"
    assert installed["changed"] and installed["result"]["version"].startswith("etcd Version: 3.")
    assert psg1.ran(rf"^{binary} --version$") and "etcd" in psg1.users
    if os == DEBIAN_12:
        assert psg1.ran(r"^DEBIAN_FRONTEND=noninteractive apt-get install .* etcd-server etcd-client$")
        assert psg1.ran(r"^dpkg-query ") and not psg1.ran(r"^(dnf|rpm) ")
        assert psg1.ran(r"^useradd") == []  # the package created the user
    else:
        assert [c.killable for c in psg1.commands if "curl" in c.command] == [True]
        assert psg1.ran(r"^useradd --system --home-dir /var/lib/etcd --shell /usr/sbin/nologin etcd$")
        assert not psg1.ran(r"apt-get|dpkg-query")

    configured = configure(inventory)
    assert configured["result"] == {"restarted": True}
    unit = psg1.files["/etc/systemd/system/etcd.service"].content
    assert f"ExecStart={binary} \\" in unit and "--initial-cluster psg1=http://127.0.0.41:2380," in unit
    assert psg1.dirs["/var/lib/etcd/pgha"] == ("etcd", "etcd", "700")
    assert psg1.units["etcd.service"].enabled and psg1.units["etcd.service"].active
    # etcd is not reachable (loopback, nothing listens): a bootstrap, so the restart does not block
    assert psg1.ran(r"^systemctl restart --no-block etcd.service$") and not psg1.warnings


@pytest.mark.parametrize(("os", "etcd"), BOTH)
def test_install_and_configure_twice_change_nothing_the_second_time(fleet: Fleet, tmp_path: Path, os: str,
                                                                    etcd: dict) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os, etcd=etcd)
    install(inventory)
    configure(inventory)
    fleet.forget()
    assert not install(inventory)["changed"]
    again = configure(inventory)
    assert not again["changed"] and again["result"] == {"restarted": False}
    assert fleet["psg1"].mutations() == []


def test_a_version_mismatch_names_the_host_and_both_versions(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, etcd={"install": {"method": "package", "version": "3.5.9"}})
    with pytest.raises(AirflowException,
                       match=r"\[psg1\] version mismatch: expected etcd 3.5.9, /usr/bin/etcd says 'etcd Version: 3.4.23'"):
        install(inventory)


def test_a_tarball_with_the_wrong_checksum_installs_nothing(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, ROCKY_9, etcd={"install": {**TARBALL, "sha256": "0" * 64}})
    with pytest.raises(CommandFailed, match="computed checksum did NOT match"):
        install(inventory)
    assert "/usr/local/bin/etcd" not in fleet["psg1"].binaries


def test_rocky_finds_etcd_only_in_pgdg_extras(fleet: Fleet, tmp_path: Path) -> None:
    """Without PGDG's repository package (phase 1) there is no etcd package (its plan: tests/test_rhel_plan.py)."""
    inventory = fleet_inventory(fleet, tmp_path, ROCKY_9, etcd={"install": {"method": "package"}})
    with pytest.raises(CommandFailed, match=r"\[psg1\] command failed .*"
                                            r"dnf install -y -q --enablerepo=pgdg-rhel9-extras etcd"):
        install(inventory)


def test_a_changed_unit_restarts_a_running_member(fleet: Fleet, tmp_path: Path) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12)
    install(inventory)
    configure(inventory)
    (tmp_path / "changed").mkdir()
    changed = fleet_inventory(fleet, tmp_path / "changed", DEBIAN_12, etcd={"token": "another-token"})
    fleet.forget()
    result = configure(changed)
    assert result["result"] == {"restarted": True}
    assert fleet["psg1"].ran(r"^systemctl daemon-reload$") and fleet["psg1"].ran(r"^systemctl restart --no-block etcd")
