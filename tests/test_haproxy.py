"""HAProxyHook, HAProxySwitchOperator and HAProxyRoutingSensor against real HAProxy, Patroni and sshd.

This machine has no systemd as PID 1, so the sshd used here puts a small
``systemctl`` stand-in first on PATH that drives a real HAProxy master
(start = ``haproxy -W -D``, reload = ``haproxy -c`` then SIGUSR2, like
Debian's unit). The lab's end-to-end test runs the same operator under real
systemd.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pgha.operators.haproxy as haproxy_ops
import psycopg2
import pytest
from pgha.compat import AirflowException
from fixture_secrets import PATRONI_SUPERUSER_PASSWORD
from pgha.compat import AirflowSensorTimeout
from pgha.compat import AirflowFailException
from pgha.hooks.haproxy import (
    HAProxyHook,
    parse_stat_csv,
    refuse_switchover_to_servers_set_aside,
    routing_problems,
    switchover_routed,
)
from pgha.hooks.remote import RemoteHook
from pgha.operators.haproxy import ClusterRoutingCheckOperator, HAProxySwitchOperator
from pgha.sensors.haproxy import HAProxyRoutingSensor
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
  is-enabled) [ -f {state}/$unit.enabled ] ;;
  enable) touch {state}/$unit.enabled ;;
  daemon-reload) exit 0 ;;
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


def make_inventory(lb: dict[str, Any], patroni: PatroniService, database: str = "airflow_db", **haproxy: Any) -> str:
    nodes = [(patroni.name, "127.0.0.1"), ("ghost-b", "127.0.0.2"), ("ghost-c", "127.0.0.3")]
    raw = loopback_inventory(
        nodes,
        lb_host="lb",
        postgres={"port": patroni.pg_port, "database": database},
        patroni={"rest_port": int(patroni.rest_url.rsplit(":", 1)[1])},
        haproxy={
            "write_port": free_port(), "read_port": free_port(), "stats_port": free_port(),
            "config": str(lb["config"]), "state_file": str(lb["dir"] / "server-state"),
            "stats_socket": str(lb["dir"] / "admin.sock"), "inter": "1s", "fall": 2, "rise": 1, **haproxy,
        },
    )
    raw["hosts"][0]["address"] = "127.0.0.9"  # the node uses 127.0.0.1; addresses must be unique (all of 127/8 is loopback)
    return write_inventory(lb["dir"], raw)


@pytest.fixture
def conns(lb: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "ssh_lb", **ssh_connection(lb["sshd"]))
    set_connection(monkeypatch, "pgha_patroni_api", conn_type="http", login="patroni", password="stats-pw")  # stats page


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


def routed(inventory: str, timeout: float = 30) -> dict[str, list[str]]:
    """What HAProxyRoutingSensor returns once HAProxy routes like Patroni."""
    return HAProxyRoutingSensor(task_id="routing", inventory_path=inventory, mode="poke", poke_interval=0.5,
                                timeout=timeout).execute({})


def test_switch_installs_validates_reloads_and_the_sensor_sees_the_leader(
    lb: dict[str, Any], conns: None, patroni: PatroniService
) -> None:
    inventory = make_inventory(lb, patroni)
    first = HAProxySwitchOperator(task_id="switch", inventory_path=inventory).execute({})
    assert first["changed"] and first["result"] == {"config_changed": True, "reloaded": False, "started": True}
    assert routed(inventory) == {"write": [patroni.name], "read": []}
    pid = master_pid(lb)

    again = HAProxySwitchOperator(task_id="switch", inventory_path=inventory).execute({})
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
    reload = HAProxySwitchOperator(task_id="switch", inventory_path=changed_inventory).execute({})
    assert any("reloaded" in c for c in reload["changes"]), reload
    assert "inter 2s" in lb["config"].read_text()
    assert list(lb["dir"].glob("haproxy.cfg.pgha-bak-*")), "previous config kept"
    assert "postgres_write" in (lb["dir"] / "server-state").read_text()
    with client.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    client.close()
    assert routed(changed_inventory) == {"write": [patroni.name], "read": []}

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


def test_the_sensor_waits_while_patroni_does_not_answer(lb: dict[str, Any], conns: None,
                                                        patroni: PatroniService) -> None:
    inventory = make_inventory(lb, patroni)
    HAProxySwitchOperator(task_id="switch", inventory_path=inventory).execute({})
    sensor = HAProxyRoutingSensor(task_id="routing", inventory_path=inventory, mode="poke", poke_interval=0.5,
                                  timeout=2)
    sensor.patroni_api_urls = lambda: [f"http://127.0.0.1:{free_port()}"]  # type: ignore[method-assign]
    assert not sensor.poke({}).is_done
    with pytest.raises(AirflowSensorTimeout):
        sensor.execute({})


def test_clients_through_haproxy_reach_the_leader_and_a_missing_replica_is_named(
    lb: dict[str, Any], conns: None, patroni: PatroniService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ClusterRoutingCheckOperator: the write port reaches the leader; a single node has no replica to read from."""
    set_connection(monkeypatch, "pgha_airflow_db", conn_type="postgres", login="postgres",
                   password=PATRONI_SUPERUSER_PASSWORD)
    inventory = make_inventory(lb, patroni, database="postgres")
    HAProxySwitchOperator(task_id="switch", inventory_path=inventory).execute({})
    routed(inventory)
    from pgha.inventory import load_inventory

    read_port = load_inventory(inventory).haproxy.read_port
    with pytest.raises(Exception, match=rf"{read_port}|no replica|server closed|could not connect"):
        ClusterRoutingCheckOperator(task_id="routing_through_haproxy", inventory_path=inventory).execute({})


class _Cluster:
    def __init__(self, leaders: list[str]) -> None:
        self.leaders = leaders


class _Patroni:
    """Patroni's answers in turn (a unit test of the wait's logic; the lab drills the real thing)."""

    def __init__(self, *leaders: list[str], primary_answers: list[bool] | None = None) -> None:
        self.answers = list(leaders)
        self.primary_answers = primary_answers or [False]
        self.asked: list[str] = []

    def cluster(self) -> _Cluster:
        return _Cluster(self.answers.pop(0) if len(self.answers) > 1 else self.answers[0])

    def api_url_of(self, member: str) -> str:
        return f"https://{member}:8008"

    def is_primary(self, api_url: str) -> bool:
        self.asked.append(api_url)
        return self.primary_answers.pop(0) if len(self.primary_answers) > 1 else self.primary_answers[0]


def _hook_with_write_up(monkeypatch: pytest.MonkeyPatch, *write_up: list[str]) -> HAProxyHook:
    hook = HAProxyHook(RemoteHook("ssh_lb", host_name="lb"), "/run/haproxy/admin.sock")
    answers = list(write_up)
    monkeypatch.setattr(hook, "up_servers", lambda backend: answers.pop(0) if len(answers) > 1 else answers[0])
    return hook


def test_writes_are_off_the_old_leader_once_haproxy_has_exactly_the_new_one_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """HAProxy is read once another member leads; the old leader still UP then is forced DOWN."""
    forced: list[dict[str, str]] = []
    hook = _hook_with_write_up(monkeypatch, ["psg1"], ["psg2"])
    monkeypatch.setattr(hook, "force_health", lambda backend, states: forced.append(states))
    assert hook.wait_for_writes_off(_Patroni(["psg1"], ["psg2"]), "psg1", timeout=5, poll=0) == "psg2"
    assert forced == [{"psg1": "down"}]

    forced.clear()  # the new leader already UP beside the old one: forced DOWN, done without another look
    hook = _hook_with_write_up(monkeypatch, ["psg1", "psg2"], ["psg2", "psg3"])
    monkeypatch.setattr(hook, "force_health", lambda backend, states: forced.append(states))
    assert hook.wait_for_writes_off(_Patroni(["psg2"]), "psg1", timeout=5, poll=0) == "psg2"
    assert forced == [{"psg1": "down"}]


def test_a_new_leader_that_answers_200_on_primary_is_forced_up_without_waiting_for_haproxy(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """HAProxy's own check, asked by the wait: /primary not 200 yet, it waits; then forced UP. Both changes
    due in one round go in one runtime API call."""
    forced: list[dict[str, str]] = []
    hook = _hook_with_write_up(monkeypatch, ["psg1"], [], ["psg3"])
    monkeypatch.setattr(hook, "force_health", lambda backend, states: forced.append(states))
    patroni = _Patroni(["psg2"], primary_answers=[False, True])
    assert hook.wait_for_writes_off(patroni, "psg1", timeout=5, poll=0) == "psg2"
    assert forced == [{"psg1": "down"}, {"psg2": "up"}]
    assert patroni.asked == ["https://psg2:8008", "https://psg2:8008"]

    forced.clear()
    hook = _hook_with_write_up(monkeypatch, ["psg1"], ["psg3"])
    monkeypatch.setattr(hook, "force_health", lambda backend, states: forced.append(states))
    assert hook.wait_for_writes_off(_Patroni(["psg2"], primary_answers=[True]), "psg1", timeout=5, poll=0) == "psg2"
    assert forced == [{"psg1": "down", "psg2": "up"}]


def test_a_switchover_is_routed_only_once_the_new_leader_takes_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Patroni says 200 on /primary (and HAProxy routes) once it asked PostgreSQL to promote: the switchover is
    done only when a write through HAProxy would be taken; never within the timeout: TimeoutError naming it."""
    from concurrent.futures import Future

    answered: Future[Any] = Future()
    answered.set_result(type("Answer", (), {"status_code": 200})())
    patroni = _Patroni(["psg2"])
    monkeypatch.setattr(patroni, "switchover_in_background", lambda leader, candidate: answered, raising=False)
    hook = _hook_with_write_up(monkeypatch, ["psg2"])
    recovering = [True, True, False]
    assert switchover_routed(patroni, hook, "psg1", None, 5, lambda: not recovering.pop(0)) == ("psg2", answered)
    assert recovering == []
    with pytest.raises(TimeoutError, match="routes writes to psg2, which does not take them"):
        switchover_routed(patroni, hook, "psg1", None, 0.1, lambda: False)


def test_a_server_forced_down_or_up_is_so_at_once(lb: dict[str, Any], conns: None, patroni: PatroniService) -> None:
    """Against a real HAProxy: ``force_health`` marks the leader DOWN at once (its checks off meanwhile, so none
    can race the look), then UP, and its checks go on. A name the runtime API could take for two commands is
    refused before anything is sent."""
    inventory = make_inventory(lb, patroni)
    HAProxySwitchOperator(task_id="switch", inventory_path=inventory).execute({})
    routed(inventory)
    hook = HAProxyHook(RemoteHook("ssh_lb", host_name="lb"), str(lb["dir"] / "admin.sock"))
    server = f"postgres_write/{patroni.name}"
    hook.command(f"disable health {server}")  # its own checks cannot race the looks below
    hook.force_health("postgres_write", {patroni.name: "down", "ghost-b": "down"})  # one call, two commands
    states = hook.server_states("postgres_write")
    assert states[patroni.name] == "DOWN" and states["ghost-b"] == "DOWN"
    hook.command(f"enable health {server}")  # (with checks off HAProxy shows a server's state as "no check")
    hook.force_health("postgres_write", {patroni.name: "up"})
    assert hook.server_states("postgres_write")[patroni.name] == "UP"
    assert routed(inventory) == {"write": [patroni.name], "read": []}
    with pytest.raises(ValueError, match="not a HAProxy backend or server name"):
        hook.force_health("postgres_write", {f"{patroni.name}; shutdown sessions server postgres_write/x": "down"})
    with pytest.raises(ValueError, match="health is up or down"):
        hook.force_health("postgres_write", {patroni.name: "maint"})
    with pytest.raises(AirflowException, match="refused to mark postgres_write/no-such-server DOWN"):
        hook.force_health("postgres_write", {"no-such-server": "down"})


def test_a_switchover_is_refused_before_the_pause_to_a_server_set_aside_in_haproxy(
        lb: dict[str, Any], conns: None, patroni: PatroniService) -> None:
    """Against a real HAProxy: a write-backend server an operator set aside (MAINT, DRAIN, weight 0, checks
    off) could not be seen to take the writes a switchover sends it (Airflow paused until the timeout): a
    switchover that may make it the leader is refused before the pause, naming it, why, and the command that
    puts it back; one to another candidate goes on; put back, it is ready again."""
    inventory = make_inventory(lb, patroni)
    HAProxySwitchOperator(task_id="switch", inventory_path=inventory).execute({})
    routed(inventory)
    socket = str(lb["dir"] / "admin.sock")
    hook = HAProxyHook(RemoteHook("ssh_lb", host_name="lb"), socket)
    refuse_switchover_to_servers_set_aside(hook, patroni.name, None)  # DOWN (ghost) and UP servers are the checks'
    for set_aside, put_back, why in (
            ("set server {} state maint", "set server {} state ready", "MAINT"),
            ("set server {} state drain", "set server {} state ready", "DRAIN"),
            ("set weight {} 0", "set weight {} 100%", "weight 0"),
            ("disable health {}", "enable health {}", "health checks disabled")):
        hook.command(set_aside.format("postgres_write/ghost-b"))  # (`show stat` shows a DOWN server so set as DOWN)
        with pytest.raises(AirflowFailException) as refused:
            refuse_switchover_to_servers_set_aside(hook, patroni.name, None)
        message = str(refused.value)
        assert f"not switching over from {patroni.name}: HAProxy on lb (stats socket {socket})" in message
        assert f"(ghost-b: {why}): a switchover to it could not be seen routed" in message
        assert "Nothing was changed, Airflow was not paused" in message
        assert f"echo '{put_back.format('postgres_write/ghost-b')}' | socat stdio {socket}" in message
        refuse_switchover_to_servers_set_aside(hook, patroni.name, "ghost-c")  # ghost-b cannot become the leader
        hook.command(put_back.format("postgres_write/ghost-b"))
        refuse_switchover_to_servers_set_aside(hook, patroni.name, None)
    assert routed(inventory) == {"write": [patroni.name], "read": []}


def test_servers_set_aside_in_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the lab's HAProxy cannot show without a config change: a server with no ``check`` at all, flags
    that do not keep a server from traffic (0x04: the ``disabled`` keyword's, kept after ``state ready``; 0x40:
    an FQDN set at runtime), a malformed row, a backend HAProxy does not have."""
    hook = HAProxyHook(RemoteHook("ssh_lb", host_name="lb"), "/run/haproxy/admin.sock")
    header = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
              "srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state\n")
    answer = header + ("2 postgres_write 1 psg1 10.0.0.1 2 0 1 1 5 6 3 4 6\n"
                       "2 postgres_write 2 psg2 10.0.0.2 0 0 1 1 5 1 0 0 0\n"
                       "2 postgres_write 3 psg3 10.0.0.3 0 9 1 1 5 6 3 4 14\n"
                       "2 postgres_write 4 psg4 10.0.0.4 2 68 1 1 5 6 3 4 7\n"
                       "3 postgres_write_2 1 psg5 10.0.0.5 0 1 1 1 5 6 3 4 14\n")
    monkeypatch.setattr(hook, "command", lambda command, quiet=True: answer)
    assert hook.servers_set_aside("postgres_write") == {"psg2": ["no health check"], "psg3": ["MAINT", "DRAIN"]}
    with pytest.raises(AirflowFailException, match=r"\(psg2: no health check\).*psg2 has no health check: render "
                                                   r"pgha's HAProxy config again"):
        refuse_switchover_to_servers_set_aside(hook, "psg1", "psg2")
    answer = header + "2 postgres_write 1 psg1 10.0.0.1 2\n"
    with pytest.raises(AirflowException, match="unexpected row in `show servers state postgres_write`"):
        hook.servers_set_aside("postgres_write")
    monkeypatch.setattr(hook, "command", lambda command, quiet=True: "Can't find backend.\n")
    with pytest.raises(AirflowException, match="unexpected answer to `show servers state postgres_write`"):
        hook.servers_set_aside("postgres_write")


def test_the_wait_for_the_new_leader_times_out_naming_what_it_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _hook_with_write_up(monkeypatch, ["psg1"])
    with pytest.raises(TimeoutError, match=r"leaders \['psg1'\], postgres_write has UP \['psg1'\]"):
        hook.wait_for_writes_off(_Patroni(["psg1"]), "psg1", timeout=0.05, poll=0.01)


def test_a_refused_switchover_ends_the_wait_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = _hook_with_write_up(monkeypatch, ["psg1"])

    def refused() -> None:
        raise AirflowException("POST /switchover refused: HTTP 412")

    with pytest.raises(AirflowException, match="refused"):
        hook.wait_for_writes_off(_Patroni(["psg1"]), "psg1", timeout=60, poll=0.01, give_up=refused)
