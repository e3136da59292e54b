"""Phase 7 operators (HAProxy install and switch) on a recorded Debian 12 and Rocky 9 host."""

from __future__ import annotations

from pathlib import Path

import pgha.operators.haproxy as haproxy_ops
import pytest
from airflow.sdk.exceptions import AirflowException
from pgha.operators.haproxy import HAProxySwitchOperator, InstallHAProxyOperator
from recording_host import DEBIAN_12, ROCKY_9, Fleet, fleet_inventory

BOTH = [pytest.param(DEBIAN_12, id="debian12"), pytest.param(ROCKY_9, id="rocky9")]
CONFIG = "/etc/haproxy/haproxy.cfg"
# RHEL's HAProxy may create its socket only in /var/lib/haproxy (InstallHAProxyOperator refuses other paths)
SOCKET = {DEBIAN_12: {}, ROCKY_9: {"haproxy": {"stats_socket": "/var/lib/haproxy/stats"}}}


def run(cls: type, inventory: str) -> dict:
    return cls(task_id=cls.__name__, inventory_path=inventory).execute({})


@pytest.mark.parametrize("os", BOTH)
def test_install_and_switch_plan(fleet: Fleet, tmp_path: Path, os: str) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os, **SOCKET[os])
    vm1 = fleet["vm1"]
    installed = run(InstallHAProxyOperator, inventory)
    assert installed["result"]["version"].startswith("HAProxy version 2.")  # the first line only
    assert "\n" not in installed["result"]["version"]
    assert vm1.ran(r"(apt-get install|dnf install) .*haproxy socat$")

    switched = run(HAProxySwitchOperator, inventory)
    assert "listen postgres_write" in vm1.files[CONFIG].content
    assert vm1.ran(r"^haproxy -c -f /etc/haproxy/haproxy.cfg.pgha-new$")
    assert f"{CONFIG}.pgha-bak-20260101T000000" in vm1.files and f"{CONFIG}.pgha-new" not in vm1.files
    assert vm1.units["haproxy.service"].enabled and vm1.units["haproxy.service"].active
    if os == DEBIAN_12:  # Debian's package started HAProxy: keep server state, reload
        assert switched["result"] == {"config_changed": True, "reloaded": True, "started": False}
        assert vm1.ran(r"^echo 'show servers state' \| socat") and "/var/lib/haproxy/server-state" in vm1.files
        assert vm1.ran(r"^systemctl reload haproxy.service$")
    else:  # Rocky's package leaves it stopped: enable and start
        assert switched["result"] == {"config_changed": True, "reloaded": False, "started": True}
        assert vm1.ran(r"^systemctl enable --quiet haproxy.service$") and vm1.ran(r"^systemctl start haproxy.service$")
        assert not vm1.ran("systemctl reload")


@pytest.mark.parametrize("os", BOTH)
def test_a_second_run_changes_nothing(fleet: Fleet, tmp_path: Path, os: str) -> None:
    inventory = fleet_inventory(fleet, tmp_path, os, **SOCKET[os])
    run(InstallHAProxyOperator, inventory)
    run(HAProxySwitchOperator, inventory)
    fleet.forget()
    assert not run(InstallHAProxyOperator, inventory)["changed"]
    again = run(HAProxySwitchOperator, inventory)
    assert not again["changed"] and again["result"] == {"config_changed": False, "reloaded": False, "started": False}
    assert fleet["vm1"].mutations() == []


def test_an_invalid_config_is_never_installed(fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12)
    run(InstallHAProxyOperator, inventory)
    vm1 = fleet["vm1"]
    before = vm1.files[CONFIG].content
    monkeypatch.setattr(haproxy_ops, "render", lambda *a, **k: "listen broken\n    INVALID\n")
    with pytest.raises(AirflowException, match=r"\[vm1\] the rendered haproxy.cfg is invalid, nothing was installed"):
        run(HAProxySwitchOperator, inventory)
    assert vm1.files[CONFIG].content == before and f"{CONFIG}.pgha-new" not in vm1.files
    assert not vm1.ran("reload|mv -f")
