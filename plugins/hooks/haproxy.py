"""HAProxy runtime API (stats socket) on the HAProxy host, over SSH."""

from __future__ import annotations

import csv
import io
import re
import shlex
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pgha.compat import AirflowException, BaseHook

from pgha.hooks.patroni import PatroniCluster, PatroniHook
from pgha.hooks.remote import RemoteHook

WRITE_BACKEND = "postgres_write"
READ_BACKEND = "postgres_read"
# a backend or server name as pgha's template writes them; anything else never reaches the runtime API,
# where ";" would start another command
RUNTIME_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# ``show servers state`` flags (HAProxy's srv_admin_state and srv_check_state)
ADMIN_MAINT, ADMIN_DRAIN = 0x01 | 0x02 | 0x04 | 0x20 | 0x40, 0x08 | 0x10
CHECK_CONFIGURED, CHECK_ENABLED = 0x02, 0x04


def admin_state_words(admin_state: int) -> list[str]:
    return (["MAINT"] if admin_state & ADMIN_MAINT else []) + (["DRAIN"] if admin_state & ADMIN_DRAIN else [])


def check_state_words(check_state: int) -> list[str]:
    if not check_state & CHECK_CONFIGURED:
        return ["no health check"]
    return [] if check_state & CHECK_ENABLED else ["health checks disabled"]


def routing_problems(write_up: list[str], read_up: list[str], leader: str | None, replicas: list[str]) -> list[str]:
    """Why HAProxy's routing differs from Patroni's view, or [] when it matches."""
    problems = []
    if not leader:
        problems.append("Patroni has no single leader")
    elif write_up != [leader]:
        problems.append(f"{WRITE_BACKEND} has UP {write_up}, expected exactly the leader [{leader}]")
    if sorted(read_up) != sorted(replicas):
        problems.append(f"{READ_BACKEND} has UP {read_up}, expected the streaming replicas {sorted(replicas)}")
    return problems


@dataclass(frozen=True)
class Routing:
    """Where HAProxy sends writes and reads, and why that differs from Patroni (empty: it matches)."""

    write: list[str]
    read: list[str]
    problems: list[str]

    def as_dict(self) -> dict[str, list[str]]:
        return {"write": self.write, "read": self.read}


def parse_stat_csv(text: str) -> list[dict[str, str]]:
    """``show stat`` output (CSV with a ``# `` header) as one dict per row."""
    lines = text.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError(f"unexpected 'show stat' output: {text[:200]!r}")
    lines[0] = lines[0][2:]
    return list(csv.DictReader(io.StringIO("\n".join(lines))))


class HAProxyHook(BaseHook):
    """
    Reads server state per backend through the stats socket.

    :param remote: the RemoteHook of the HAProxy host.
    :param stats_socket: path of the ``stats socket`` on that host.
    """

    hook_name = "HAProxy runtime API"

    def __init__(self, remote: RemoteHook, stats_socket: str) -> None:
        super().__init__()
        self.remote = remote
        self.stats_socket = stats_socket

    @cached_property
    def _socket_arg(self) -> str:
        return shlex.quote(f"UNIX-CONNECT:{self.stats_socket}")

    def get_conn(self) -> RemoteHook:
        return self.remote

    def command(self, runtime_command: str, quiet: bool = True) -> str:
        """Send one runtime API command and return the answer."""
        result = self.remote.run(
            f"echo {shlex.quote(runtime_command)} | socat -t 5 stdio {self._socket_arg}", quiet=quiet
        )
        return result.stdout

    def stats(self) -> list[dict[str, str]]:
        return parse_stat_csv(self.command("show stat"))

    def server_states(self, backend: str) -> dict[str, str]:
        """Server name -> status (UP, DOWN, MAINT, ...) in ``backend``."""
        return {
            row["svname"]: row["status"].split()[0]
            for row in self.stats()
            if row["pxname"] == backend and row["svname"] not in {"FRONTEND", "BACKEND"}
        }

    def servers_held_out_of_checks(self, backend: str) -> dict[str, str]:
        """Servers of ``backend`` whose state HAProxy's health checks do not decide alone: put in MAINT or
        DRAIN, or with checks off, by an operator (server -> what holds it). ``show stat`` cannot tell: a DOWN
        server in DRAIN or with checks off shows DOWN there; ``show servers state`` has the flags."""
        answer = self.command(f"show servers state {backend}")
        lines = [line for line in answer.splitlines() if line.strip()]
        header = next((line[1:].split() for line in lines if line.startswith("#")), None)
        if header is None:
            raise AirflowException(f"HAProxy has no backend {backend}: {answer.strip()[:200]}")
        held = {}
        for line in lines:
            row = dict(zip(header, line.split()))
            if line.startswith("#") or row.get("be_name") != backend:
                continue
            reasons = admin_state_words(int(row["srv_admin_state"])) + check_state_words(int(row["srv_check_state"]))
            if reasons:
                held[row["srv_name"]] = " and ".join(reasons)
        return held

    def up_servers(self, backend: str) -> list[str]:
        return sorted(name for name, status in self.server_states(backend).items() if status == "UP")

    def force_health(self, backend: str, states: dict[str, str]) -> None:
        """``set server <backend>/<server> health up|down`` for each of ``states`` (server -> "up" or "down"),
        in one call: UP or DOWN now, not at HAProxy's next checks. Its checks go on and change it again
        (``fall``, ``rise``) when what Patroni answers changes."""
        for server, health in states.items():
            if health not in ("up", "down"):
                raise ValueError(f"health is up or down, not {health!r}")
            for name in (backend, server):
                if not RUNTIME_NAME.fullmatch(name):
                    raise ValueError(f"not a HAProxy backend or server name pgha writes: {name!r}")
        commands = "; ".join(f"set server {backend}/{server} health {health}" for server, health in states.items())
        answer = self.command(commands, quiet=False).strip()
        if answer:
            marked = ", ".join(f"{backend}/{server} {health.upper()}" for server, health in states.items())
            raise AirflowException(f"HAProxy refused to mark {marked}: {answer}")

    def routing(self, cluster: PatroniCluster) -> Routing:
        """HAProxy's UP servers per backend, held against Patroni's ``cluster``."""
        leader = cluster.leaders[0] if len(cluster.leaders) == 1 else None
        write_up, read_up = self.up_servers(WRITE_BACKEND), self.up_servers(READ_BACKEND)
        return Routing(write_up, read_up, routing_problems(write_up, read_up, leader, cluster.streaming_replicas))

    def wait_for_writes_off(self, patroni: PatroniHook, old_leader: str, timeout: float, poll: float = 0.2,
                            give_up: Callable[[], None] = lambda: None) -> str:
        """After a switchover: until Patroni names one leader other than ``old_leader`` and HAProxy's write
        backend has exactly that one UP; returns it. The read backend is not waited for (the old leader
        rejoins as a replica later). HAProxy's own checks are not waited for where pgha knows better, all of
        it time Airflow waits in a pause: once another member leads, ``old_leader`` still UP in the write
        backend is forced DOWN (Patroni releases the leader key only after the old leader's PostgreSQL shut
        down; HAProxy, checking an UP server every ``inter`` and needing ``fall`` failures, saw it up to
        ``inter`` + ``fastinter`` later: 0.85 s of a 3 s pause on the lab), and the new leader is forced UP
        as soon as its Patroni answers 200 on /primary, HAProxy's own check, asked every round instead of
        every ``downinter``. TimeoutError naming what was seen when not within ``timeout`` seconds;
        ``give_up`` is called each round and may raise to end the wait sooner (a refused switchover)."""
        deadline = time.monotonic() + timeout
        while True:
            give_up()
            cluster = patroni.cluster()
            if len(cluster.leaders) == 1 and cluster.leaders != [old_leader]:  # HAProxy is read once this holds
                new = cluster.leaders[0]
                write_up = self._route_writes_to(patroni, new, old_leader)
                if write_up == [new]:
                    return new
            if time.monotonic() > deadline:
                raise TimeoutError(f"{timeout:g}s after the switchover from {old_leader}: Patroni's leaders "
                                   f"{cluster.leaders}, {WRITE_BACKEND} has UP {self.up_servers(WRITE_BACKEND)}")
            time.sleep(poll)

    def _route_writes_to(self, patroni: PatroniHook, new: str, old: str) -> list[str]:
        """The write backend's UP servers once ``old`` (if UP) is forced DOWN and ``new`` (if not UP, but its
        Patroni answers 200 on /primary) forced UP, both in one runtime API call."""
        write_up = self.up_servers(WRITE_BACKEND)
        states = {}
        if old in write_up:
            self.log.info("%s leads; %s, shut down before Patroni let the key go, is still UP in %s: forced DOWN",
                          new, old, WRITE_BACKEND)
            states[old] = "down"
        url = patroni.api_url_of(new) if new not in write_up else None
        if url and patroni.is_primary(url):
            self.log.info("%s answers 200 on /primary, not yet UP in %s: forced UP", new, WRITE_BACKEND)
            states[new] = "up"
        if states:
            self.force_health(WRITE_BACKEND, states)  # raises unless HAProxy took every one
        return sorted((set(write_up) - {old}) | ({new} if new in states else set()))


class SwitchoverRefused(Exception):
    """Patroni answered POST /switchover with an error."""


def ready_to_switch_over(patroni: PatroniHook, haproxy: HAProxyHook, leader: str) -> None:
    """Before a pause: what ``switchover_routed`` inside it would otherwise do while Airflow waits. Patroni's
    login (a connection lookup is a round trip to the task's supervisor, which could wait on Airflow itself),
    the leader's own REST URL (``PatroniHook.member_first``) and the HAProxy host's SSH login. Refuses, before
    anything changed, when a server of the write backend is held out of HAProxy's checks (MAINT, DRAIN, checks
    off): forced UP it would stay out of rotation, and the pause would last until the switchover's timeout."""
    patroni.get_conn()
    patroni.member_first(leader)
    held = haproxy.servers_held_out_of_checks(WRITE_BACKEND)
    if held:
        listed = ", ".join(f"{server} ({why})" for server, why in sorted(held.items()))
        raise AirflowException(
            f"HAProxy's {WRITE_BACKEND} has servers its checks do not govern: {listed}. A switchover could not "
            f"route writes to such a server; put it back first (set server {WRITE_BACKEND}/<server> state ready; "
            f"enable health {WRITE_BACKEND}/<server>)")


def switchover_routed(patroni: PatroniHook, haproxy: HAProxyHook, leader: str, candidate: str | None,
                      timeout: float, takes_writes: Callable[[], bool] = lambda: True) -> tuple[str, Future[Any]]:
    """
    A planned switchover away from ``leader``, done once HAProxy sends writes to the new leader and
    ``takes_writes`` (through HAProxy's write port: out of recovery) holds: returns it
    and Patroni's answer (a Future: Patroni answers POST /switchover only after polling its DCS in whole
    seconds, HAProxy's routing shows the change sooner). SwitchoverRefused as soon as Patroni refuses;
    TimeoutError when HAProxy does not route to a new leader within ``timeout`` seconds.
    """
    answer = patroni.switchover_in_background(leader, candidate)

    def refused() -> None:
        if answer.done() and answer.result().status_code >= 400:
            response = answer.result()
            raise SwitchoverRefused(f"POST /switchover {leader} -> {candidate or 'any'} refused: "
                                    f"HTTP {response.status_code} {response.text.strip()[:500]}")

    # polled often: under a pause every round HAProxy already routes is time Airflow waits
    deadline = time.monotonic() + timeout
    new = haproxy.wait_for_writes_off(patroni, leader, timeout, poll=0.05, give_up=refused)
    # Patroni answers 200 on /primary once it asked PostgreSQL to promote, HAProxy's check with it: PostgreSQL
    # may still be read-only for a few tens of ms (a paused client resumed then got "cannot execute INSERT in
    # a read-only transaction" on the lab)
    while not takes_writes():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{timeout:g}s after the switchover from {leader}: HAProxy routes writes to {new}, "
                               "which does not take them (still in recovery, or "
                               "not reachable as the superuser through HAProxy's write port)")
        time.sleep(0.02)
    return new, answer
