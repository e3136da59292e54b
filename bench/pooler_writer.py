#!/usr/bin/env python3
"""The benchmark's independent client: one committed INSERT every INTERVAL seconds, on an Airflow host.

    pooler_writer.py --via pgbouncer|haproxy --out RESULT.json [--haproxy ADDRESS:PORT] [--ca CA_FILE]

Reads Airflow's own login from airflow.cfg (AIRFLOW_HOME), so no secret is ever passed to it: --via
pgbouncer connects where Airflow does (its local PgBouncer), --via haproxy to HAProxy's write port
directly (TLS verified against --ca), as a client without a pooler would. A failed transaction is
counted and the connection opened again. On SIGTERM it writes RESULT.json: commits, failed
transactions, the longest commit latency (start of the attempt that succeeded to its commit), the
longest gap between two successful commits, every commit slower than SLOW seconds (its start, epoch
seconds, and its latency: the benchmark picks the ones inside a task's window; the last 1000 kept, the
cutover comes late in a run), and the id of every
acknowledged row (the benchmark counts the ones the cluster lacks: lost writes). Run with Airflow's Python (psycopg2 is there).
"""

from __future__ import annotations

import argparse
import configparser
import json
import os
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2

INTERVAL = 0.05
SLOW = 0.25
running = True


def stop(*_: object) -> None:
    global running
    running = False


def airflow_dsn() -> str:
    parser = configparser.ConfigParser()  # interpolating, as Airflow reads it
    parser.read(Path(os.environ.get("AIRFLOW_HOME", "/home/airflow/airflow")) / "airflow.cfg")
    return "postgresql://" + parser.get("database", "sql_alchemy_conn").split("://", 1)[1]


def dsn(via: str, haproxy: str | None, ca: str | None) -> str:
    url = airflow_dsn()
    if via == "pgbouncer":
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[0] + "@" + haproxy
    return urlunsplit((parts.scheme, netloc, parts.path, f"sslmode=verify-full&sslrootcert={ca}", ""))


def connect(target: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(target, application_name="pgha-bench-writer", connect_timeout=5)
    conn.autocommit = True
    return conn


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--via", choices=("pgbouncer", "haproxy"), required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--haproxy")
    ap.add_argument("--ca")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, stop)
    target = dsn(args.via, args.haproxy, args.ca)
    conn = connect(target)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS pgha_bench_writes (id bigserial PRIMARY KEY, via text, "
                    "at timestamptz DEFAULT clock_timestamp())")
    commits, failures, errors, acked, slow = 0, 0, [], [], []
    longest_latency, longest_gap, last_commit = 0.0, 0.0, time.monotonic()
    while running:
        started = time.monotonic()
        try:
            if conn is None or conn.closed:
                conn = connect(target)
            with conn.cursor() as cur:
                cur.execute("INSERT INTO pgha_bench_writes (via) VALUES (%s) RETURNING id", (args.via,))
                acked.append(cur.fetchone()[0])
            now = time.monotonic()
            commits += 1
            longest_latency = max(longest_latency, now - started)
            if now - started > SLOW:
                slow.append([round(time.time() - (now - started), 3), round(now - started, 3)])
            longest_gap = max(longest_gap, now - last_commit)
            last_commit = now
        except psycopg2.Error as exc:
            failures += 1
            errors.append(f"{time.time():.3f} {type(exc).__name__}: {str(exc).strip()[:200]}")
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a broken connection may not close cleanly
                pass
            conn = None
        time.sleep(max(0.0, INTERVAL - (time.monotonic() - started)))
    Path(args.out).write_text(json.dumps({"via": args.via, "commits": commits, "failed": failures,
                                          "longest_latency_s": round(longest_latency, 3),
                                          "longest_gap_s": round(longest_gap, 3), "errors": errors[:20], "slow": slow[-1000:],
                                          "acked_ids": acked}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
