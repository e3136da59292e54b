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

from pgha.compat import AirflowException, AirflowFailException, BaseHook

from pgha.hooks.patroni import PatroniCluster, PatroniHook
from pgha.hooks.remote import RemoteHook

WRITE_BACKEND = "postgres_write"
READ_BACKEND = "postgres_read"
# a backend or server name as pgha's template writes them; anything else never reaches the runtime API,
# where ";" would start another command
RUNTIME_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# ``show servers state`` flags: srv_admin_state's maintenance bits (forced, inherited from a tracked server, a
# failed DNS resolution: HAProxy's own mask; the ``disabled`` keyword sets the forced one too) and drain bits
# (forced, inherited); srv_check_state's "configured" and "enabled"
ADMIN_MAINT, ADMIN_DRAIN = 0x01 | 0x02 | 0x20, 0x08 | 0x10
CHECK_CONFIGURED, CHECK_ENABLED = 0x02, 0x04
# why a server set aside by hand does not take the writes a switchover sends it -> the runtime command that
# puts it back (None: a config change)
PUT_BACK = {
    "MAINT": "set server {backend}/{server} state ready",
    "DRAIN": "set server {backend}/{server} state ready",
    "weight 0": "set weight {backend}/{server} 100%",
    "health checks disabled": "enable health {backend}/{server}",
    "no health check": None,
}


def set_aside_reasons(row: dict[str, str]) -> list[str]:
    """Why the server of one ``show servers state`` row is set aside (keys of PUT_BACK), or []."""
    admin, check = int(row["srv_admin_state"]), int(row["srv_check_state"])
    reasons = [word for word, bits in (("MAINT", ADMIN_MAINT), ("DRAIN", ADMIN_DRAIN)) if admin & bits]
    if int(row["srv_uweight"]) == 0:
        reasons.append("weight 0")
    if not check & CHECK_CONFIGURED:
        reasons.append("no health check")
    elif not check & CHECK_ENABLED:
        reasons.append("health checks disabled")
    return reasons


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

    def servers_set_aside(self, backend: str) -> dict[str, list[str]]:
        """Servers of ``backend`` an operator set aside (server -> why, keys of PUT_BACK): MAINT or DRAIN
        (``health up`` is then taken and ignored), weight 0 (UP, never chosen), health checks off or none (a
        server forced UP then takes traffic, but ``show stat`` calls it "no check", never UP, and no check ever
        corrects the forced state). Read from ``show servers state``: ``show stat`` shows a DOWN server in
        DRAIN or with checks off as plain DOWN."""
        answer = self.command(f"show servers state {backend}")
        lines = [line for line in answer.splitlines() if line.strip()]
        header_at = next((i for i, line in enumerate(lines) if line.startswith("#")), None)
        if header_at is None:
            raise AirflowException(f"unexpected answer to `show servers state {backend}` (a backend HAProxy does "
                                   f"not have?): {answer.strip()[:200]!r}")
        header = lines[header_at][1:].split()
        set_aside = {}
        for line in lines[header_at + 1:]:
            row = dict(zip(header, line.split()))
            if row.get("be_name") != backend:
                continue
            try:
                reasons = set_aside_reasons(row)
            except (KeyError, ValueError) as exc:
                raise AirflowException(f"unexpected row in `show servers state {backend}`: {line!r}") from exc
            if reasons:
                set_aside[row["srv_name"]] = reasons
        return set_aside

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


def refuse_switchover_to_servers_set_aside(haproxy: HAProxyHook, leader: str, candidate: str | None) -> None:
    """AirflowFailException, before anything is changed, when the server that may become the leader (the
    candidate, or with none every other member) is set aside in HAProxy's write backend by hand: inside the pause
    the new leader is forced UP and waited for until it takes writes, which such a server never does, or not in
    a way pgha can see; Airflow would stay paused until the switchover's timeout. Run before the pause, it also
    makes the HAProxy host's SSH login, which ``switchover_routed`` inside it would otherwise wait for."""
    set_aside = haproxy.servers_set_aside(WRITE_BACKEND)
    at_stake = {candidate} if candidate else set(set_aside) - {leader}
    refused = {server: reasons for server, reasons in sorted(set_aside.items()) if server in at_stake}
    if not refused:
        return
    where = f"HAProxy on {haproxy.remote.host_name} (stats socket {haproxy.stats_socket})"
    listed = "; ".join(f"{server}: {', '.join(reasons)}" for server, reasons in refused.items())
    remedies = []
    for server, reasons in refused.items():
        for reason in reasons:
            command = PUT_BACK[reason]
            remedies.append(f"echo {shlex.quote(command.format(backend=WRITE_BACKEND, server=server))} | socat "
                            f"stdio {shlex.quote(haproxy.stats_socket)}" if command else
                            f"{server} has no health check: render pgha's HAProxy config again (phase 7's switch)")
    raise AirflowFailException(
        f"not switching over from {leader}: {where} has set aside, in {WRITE_BACKEND}, the server(s) that may "
        f"become the leader ({listed}): a switchover to it could not be seen routed (in MAINT, DRAIN or at weight 0 it "
        f"gets no writes; with health checks off or none HAProxy never reports it UP) and Airflow would stay "
        f"paused until the switchover's timeout. Nothing was changed, Airflow was not paused. Put them back, "
        f"then clear this task: " + "; ".join(dict.fromkeys(remedies)))


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
