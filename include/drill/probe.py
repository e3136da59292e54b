#!/usr/bin/env python3
"""pgha drill write probe: what a client of the cluster sees during a failover.

Commits one numbered row every ``interval_ms`` through HAProxy's write port
into ``pgha_drill_probe(drill_id, seq, committed_at)`` and appends every
acknowledged commit to ``ack_file`` as ``<seq> <epoch> <server address>``
(flushed at once). Events are lines starting with ``#``: ``# start <epoch>``,
``# error <epoch> <text>`` (when the error changes), ``# stopped <epoch>``.

Runs as a transient systemd unit (``systemd-run``) on a host that is not the
leader, outside every Airflow process, so it keeps measuring while Airflow's
own metadata DB fails over. Stops on SIGTERM (``systemctl stop``) or after
``max_seconds``. Settings come from a 0600 JSON file (the only argument):
host, port, user, password, dbname, drill_id, interval_ms, ack_file,
max_seconds, and with TLS sslmode and sslrootcert. The password is never on a
command line.

Needs Python 3.8+ and psycopg2 (or psycopg 3); nothing else.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

try:
    import psycopg2 as driver
except ImportError:  # psycopg 3 has the same connect/cursor/execute surface for this use
    import psycopg as driver  # type: ignore[no-redef]

INSERT = "INSERT INTO pgha_drill_probe (drill_id, seq) VALUES (%s, %s)"
SEQ_GAP_ON_RESTART = 1000  # a restarted probe skips past seqs whose commit may be unacknowledged
_stop = False


def _on_sigterm(signum: int, frame: Any) -> None:
    global _stop
    _stop = True


def connect(settings: dict[str, Any]) -> tuple[Any, str]:
    """A fresh autocommit connection and the address of the server behind HAProxy.

    The connect timeout is long on purpose: while no server is UP, HAProxy
    queues the connection (``timeout queue``) and hands it to the new leader
    the moment its check passes; a short timeout would only add its own
    granularity (libpq's minimum is 2 s) to the measured RTO.
    """
    tls = {key: settings[key] for key in ("sslmode", "sslrootcert") if settings.get(key)}
    conn = driver.connect(
        host=settings["host"], port=settings["port"], user=settings["user"], password=settings["password"],
        dbname=settings["dbname"], connect_timeout=settings.get("connect_timeout", 10),
        application_name="pgha-drill-probe",
        keepalives=1, keepalives_idle=1, keepalives_interval=1, keepalives_count=2, tcp_user_timeout=2000, **tls,
    )
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT host(inet_server_addr())")
        server = cur.fetchone()[0] or "local"
    return conn, server


def next_seq(ack_file: Path) -> int:
    """1, or past every seq an earlier run of this probe may have committed."""
    if not ack_file.exists():
        return 1
    seqs = [int(line.split()[0]) for line in ack_file.read_text().splitlines() if line[:1].isdigit()]
    return max(seqs, default=0) + SEQ_GAP_ON_RESTART


class Probe:
    """One drill's probe: a loop of single-row autocommit INSERTs."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.interval = settings["interval_ms"] / 1000.0
        self.ack_path = Path(settings["ack_file"])
        self.seq = next_seq(self.ack_path)
        self.out = open(self.ack_path, "a", buffering=1)  # line-buffered: one write per ack
        self.conn: Any = None
        self.server = ""
        self.last_error = ""

    def event(self, word: str, text: str = "") -> None:
        self.out.write(f"# {word} {time.time():.6f} {text}".rstrip() + "\n")
        self.out.flush()

    def commit_one(self) -> None:
        seq, self.seq = self.seq, self.seq + 1  # never reused: an unacknowledged commit may exist
        try:
            if self.conn is None:
                self.conn, self.server = connect(self.settings)
            with self.conn.cursor() as cur:
                cur.execute(INSERT, (self.settings["drill_id"], seq))
        except Exception as exc:  # every failure is an outage sample, never fatal
            self.failed(exc)
            return
        self.out.write(f"{seq} {time.time():.6f} {self.server}\n")
        self.out.flush()
        self.last_error = ""

    def failed(self, exc: Exception) -> None:
        text = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        if text != self.last_error:
            self.event("error", text)
            self.last_error = text
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None

    def run(self) -> str:
        self.event("start", f"seq={self.seq}")
        deadline = time.monotonic() + self.settings.get("max_seconds", 3600)
        tick = time.monotonic()
        while not _stop:
            if time.monotonic() > deadline:
                return "timeout"
            self.commit_one()
            tick = max(tick + self.interval, time.monotonic())
            time.sleep(max(0.0, tick - time.monotonic()))
        return "stopped"


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} SETTINGS.json", file=sys.stderr)
        return 2
    settings = json.loads(Path(argv[1]).read_text())
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, _on_sigterm)
    probe = Probe(settings)
    probe.event(probe.run())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
