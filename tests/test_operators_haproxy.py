"""Phase 7 operators (HAProxy install and switch) on a recorded Debian 12 and Rocky 9 host."""

from __future__ import annotations

from pathlib import Path

import pgha.operators.haproxy as haproxy_ops
import pytest
from pgha.compat import AirflowException
from fixture_secrets import PATRONI_REST_PASSWORD
from pgha.operators.haproxy import HAProxySwitchOperator, InstallHAProxyOperator
from pgha.secret_formats import haproxy_word
from pgha_testing import set_connection
from recording_host import DEBIAN_12, ROCKY_9, FakeFile, Fleet, fleet_inventory

BOTH = [pytest.param(DEBIAN_12, id="debian12"), pytest.param(ROCKY_9, id="rocky9")]
CONFIG = "/etc/haproxy/haproxy.cfg"
# RHEL's HAProxy may create its socket only in /var/lib/haproxy (InstallHAProxyOperator refuses other paths)
SOCKET = {DEBIAN_12: {}, ROCKY_9: {"haproxy": {"stats_socket": "/var/lib/haproxy/stats"}}}


@pytest.fixture(autouse=True)
def patroni_login(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stats page's login falls back to the Patroni REST API's connection."""
    set_connection(monkeypatch, "pgha_patroni_api", conn_type="http", login="patroni", password=PATRONI_REST_PASSWORD)


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
    assert f"    stats auth {haproxy_word('patroni:' + PATRONI_REST_PASSWORD)}\n" in vm1.files[CONFIG].content
    assert vm1.files[CONFIG].mode == "600"  # it holds the stats page's password
    assert not any(PATRONI_REST_PASSWORD in c.command for c in vm1.commands)
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


def test_only_the_newest_config_backups_stay(fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A replaced haproxy.cfg holds the stats login: its backups stay 0600, and only the newest 5."""
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12)
    run(InstallHAProxyOperator, inventory)
    run(HAProxySwitchOperator, inventory)
    vm1 = fleet["vm1"]
    assert vm1.files[CONFIG].mode == "600"
    old = [f"{CONFIG}.pgha-bak-2025010{day}T000000" for day in range(1, 8)]
    for backup in old:
        vm1.files[backup] = FakeFile("stats auth 'stats:old'\n", mode="600")
    monkeypatch.setattr(haproxy_ops, "render", lambda *a, **k: vm1.files[CONFIG].content + "# changed\n")
    changes = run(HAProxySwitchOperator, inventory)["changes"]
    backups = sorted(p for p in vm1.files if p.startswith(f"{CONFIG}.pgha-bak-"))
    assert len(backups) == 5 and backups == sorted([*old, f"{CONFIG}.pgha-bak-20260101T000000"])[-5:]
    assert all(vm1.files[b].mode == "600" for b in backups)
    assert any(c.startswith("older backups removed: ") and old[0] in c and old[2] in c for c in changes), changes


def test_the_stats_login_comes_from_its_own_connection_when_there_is_one(
        fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "pgha_haproxy_stats", conn_type="generic", login="stats", password="it's #1 $HOME")
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12)
    run(InstallHAProxyOperator, inventory)
    run(HAProxySwitchOperator, inventory)
    assert "    stats auth 'stats:it'\\''s #1 $HOME'\n" in fleet["vm1"].files[CONFIG].content
    assert PATRONI_REST_PASSWORD not in fleet["vm1"].files[CONFIG].content


def test_haproxy_word_refuses_a_line_break() -> None:
    assert haproxy_word("a'b") == "'a'\\''b'"
    with pytest.raises(ValueError, match="control character"):
        haproxy_word("a\nstats enable")
