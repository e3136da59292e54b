"""HAProxy runtime API (stats socket) on the HAProxy host, over SSH."""

from __future__ import annotations

import csv
import io
import shlex
from functools import cached_property

from airflow.sdk import BaseHook

from pgha.hooks.remote import RemoteHook


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

    def up_servers(self, backend: str) -> list[str]:
        return sorted(name for name, status in self.server_states(backend).items() if status == "UP")
