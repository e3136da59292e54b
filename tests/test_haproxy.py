"""HAProxyHook and HAProxySwitchOperator against real HAProxy, Patroni and sshd.

This machine has no systemd as PID 1, so the sshd used here puts a small
``systemctl`` stand-in first on PATH that drives a real HAProxy master
(start = ``haproxy -W -D``, reload = ``haproxy -c`` then SIGUSR2, like
Debian's unit). The lab's end-to-end test runs the same operator under real
systemd.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pgha.operators.haproxy as haproxy_ops
import psycopg2
import pytest
from airflow.sdk.exceptions import AirflowException
from fixture_secrets import PATRONI_SUPERUSER_PASSWORD
from pgha.hooks.haproxy import HAProxyHook, parse_stat_csv
from pgha.hooks.remote import RemoteHook
from pgha.hooks.haproxy import routing_problems
from pgha.operators.haproxy import HAProxySwitchOperator
from pgha_testing import (
    loopback_inventory,
    set_connection,
    ssh_connection,
    write_inventory,
)
from services import PatroniService, free_port, pid_alive, start_sshd

SYSTEMCTL_SHIM = """\
#!/bin/bash
# Test stand-in for systemctl (no systemd here): drives the real HAProxy master.
args=(); for a in "$@"; do case "$a" in --quiet|-q) ;; *) args+=("$a");; esac; done
verb=${{args[0]}}; unit=${{args[1]%.service}}
pidfile={state}/$unit.pid
[ "$unit" = haproxy ] || [ "$verb" = daemon-reload ] || {{ echo "shim: unit $unit unsupported" >&2; exit 5; }}
case "$verb" in
  is-active) [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null ;;
  enable|daemon-reload) exit 0 ;;
  start) haproxy -W -D -p "$pidfile" -f {config} ;;
  reload) haproxy -c -q -f {config} && kill -USR2 "$(cat "$pidfile")" ;;
  *) echo "shim: $verb unsupported" >&2; exit 1 ;;
esac
"""


@pytest.fixture
def lb(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """An sshd whose sessions see the systemctl stand-in; stops HAProxy afterwards."""
    shim_dir, state = tmp_path / "shim", tmp_path / "state"
    shim_dir.mkdir()
    state.mkdir()
    config = tmp_path / "haproxy.cfg"
    shim = shim_dir / "systemctl"
    shim.write_text(SYSTEMCTL_SHIM.format(state=state, config=config))
    shim.chmod(0o755)
    path = f"{shim_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    sshd = start_sshd(tmp_path / "sshd", extra_config=[f"SetEnv PATH={path}"])
    try:
        yield {"sshd": sshd, "config": config, "pidfile": state / "haproxy.pid", "dir": tmp_path}
    finally:
        pidfile = state / "haproxy.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().split()[0])
            if pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
        sshd.stop()


def make_inventory(lb: dict[str, Any], patroni: PatroniService, **haproxy: Any) -> str:
    nodes = [(patroni.name, "127.0.0.1"), ("ghost-b", "127.0.0.2"), ("ghost-c", "127.0.0.3")]
    raw = loopback_inventory(
        nodes,
        lb_host="lb",
        postgres={"port": patroni.pg_port},
        patroni={"rest_port": int(patroni.rest_url.rsplit(":", 1)[1])},
        haproxy={
            "write_port": free_port(), "read_port": free_port(), "stats_port": free_port(),
            "config": str(lb["config"]), "state_file": str(lb["dir"] / "server-state"),
            "stats_socket": str(lb["dir"] / "admin.sock"), "inter": "1s", "fall": 2, "rise": 1, **haproxy,
        },
    )
    raw["hosts"][0]["address"] = "localhost"  # the node uses 127.0.0.1; addresses must be unique
    return write_inventory(lb["dir"], raw)


@pytest.fixture
def conns(lb: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "ssh_lb", **ssh_connection(lb["sshd"]))


def master_pid(lb: dict[str, Any]) -> int:
    return int(lb["pidfile"].read_text().split()[0])


def test_parse_stat_csv() -> None:
    rows = parse_stat_csv("# pxname,svname,status\nw,FRONTEND,OPEN\nw,psg1,UP\nw,psg2,DOWN 1/2\n")
    assert [r["status"] for r in rows] == ["OPEN", "UP", "DOWN 1/2"]
    with pytest.raises(ValueError, match="unexpected"):
        parse_stat_csv("Unknown command\n")


def test_routing_problems_in_words() -> None:
    assert routing_problems(["a"], ["b", "c"], "a", ["c", "b"]) == []
    assert routing_problems(["a", "b"], [], "a", []) == [
        "postgres_write has UP ['a', 'b'], expected exactly the leader [a]"
    ]
    assert routing_problems([], [], None, []) == ["Patroni has no single leader"]


def test_switch_installs_validates_reloads_and_routes_to_the_leader(
    lb: dict[str, Any], conns: None, patroni: PatroniService
) -> None:
    inventory = make_inventory(lb, patroni)
    first = HAProxySwitchOperator(task_id="switch", inventory_path=inventory, routing_timeout=30).execute({})
    assert first["changed"] and first["result"] == {"write": [patroni.name], "read": []}
    pid = master_pid(lb)

    again = HAProxySwitchOperator(task_id="switch", inventory_path=inventory, routing_timeout=30).execute({})
    assert not again["changed"], again
    assert master_pid(lb) == pid

    # a live client through the write port survives a reload
    from pgha.inventory import load_inventory

    inv = load_inventory(inventory)
    client = psycopg2.connect(host="127.0.0.1", port=inv.haproxy.write_port, user="postgres",
                              password=PATRONI_SUPERUSER_PASSWORD, dbname="postgres", connect_timeout=5)
    client.autocommit = True
    with client.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        assert cur.fetchone() == (False,)
    changed_inventory = make_inventory(lb, patroni, inter="2s", write_port=inv.haproxy.write_port,
                                       read_port=inv.haproxy.read_port, stats_port=inv.haproxy.stats_port)
    reload = HAProxySwitchOperator(task_id="switch", inventory_path=changed_inventory, routing_timeout=30).execute({})
    assert any("reloaded" in c for c in reload["changes"]), reload
    assert "inter 2s" in lb["config"].read_text()
    assert list(lb["dir"].glob("haproxy.cfg.pgha-bak-*")), "previous config kept"
    assert "postgres_write" in (lb["dir"] / "server-state").read_text()
    with client.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    client.close()

    hook = HAProxyHook(RemoteHook("ssh_lb", host_name="lb"), str(lb["dir"] / "admin.sock"))
    states = hook.server_states("postgres_write")
    assert states[patroni.name] == "UP" and states["ghost-b"] == "DOWN" and states["ghost-c"] == "DOWN"


def test_invalid_config_is_never_installed(lb: dict[str, Any], conns: None, patroni: PatroniService,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    lb["config"].write_text("# the operator's current config\n")
    monkeypatch.setattr(haproxy_ops, "render", lambda *a, **k: "listen broken\n    bind *:notaport\n")
    with pytest.raises(AirflowException, match="rendered haproxy.cfg is invalid, nothing was installed"):
        HAProxySwitchOperator(task_id="switch", inventory_path=make_inventory(lb, patroni)).execute({})
    assert lb["config"].read_text() == "# the operator's current config\n"
    assert not list(lb["dir"].glob("haproxy.cfg.pgha-new"))


def test_routing_that_never_matches_fails_with_the_reason(lb: dict[str, Any], conns: None,
                                                         patroni: PatroniService) -> None:
    inventory = make_inventory(lb, patroni)
    HAProxySwitchOperator(task_id="switch", inventory_path=inventory, routing_timeout=30).execute({})
    op = HAProxySwitchOperator(task_id="check", inventory_path=inventory, routing_timeout=2)
    op.patroni_api_urls = lambda: [f"http://127.0.0.1:{free_port()}"]  # type: ignore[method-assign]
    started = time.monotonic()
    with pytest.raises(AirflowException, match="did not match Patroni within 2s: no Patroni member answered"):
        op.wait_for_routing()
    assert time.monotonic() - started < 10
