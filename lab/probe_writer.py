#!/usr/bin/env python3
"""A writer that behaves like an Airflow component, for the lab's cutover tests.

Runs as the unit `airflow-probe` on an Airflow host: reads [database]
sql_alchemy_conn from airflow.cfg at start (so the cutover repoints it like
any Airflow unit), commits one numbered row into pgha_probe every INTERVAL
seconds and appends each acknowledged sequence number to ACK_LOG only after
the commit returned. On stop (SIGTERM) it finishes the current commit and
exits; on start it continues from the highest acknowledged number.
Run with Airflow's Python (psycopg2 is there).
"""

from __future__ import annotations

import configparser
import os
import signal
import sys
import time
from pathlib import Path

import psycopg2

CONFIG = Path(os.environ.get("AIRFLOW_HOME", "/home/airflow/airflow")) / "airflow.cfg"
ACK_LOG = Path(os.environ.get("PGHA_PROBE_ACKS", "/var/lib/pgha-probe/acks.log"))
INTERVAL = float(os.environ.get("PGHA_PROBE_INTERVAL", "0.1"))
running = True


def stop(*_: object) -> None:
    global running
    running = False


def dsn() -> str:
    parser = configparser.ConfigParser()  # interpolating, as Airflow reads it: a password's '%' is written '%%'
    parser.read(CONFIG)
    url = parser.get("database", "sql_alchemy_conn")
    return "postgresql://" + url.split("://", 1)[1]


def last_ack() -> int:
    if not ACK_LOG.exists():
        return 0
    lines = ACK_LOG.read_text().split()
    return int(lines[-1]) if lines else 0


def main() -> int:
    signal.signal(signal.SIGTERM, stop)
    ACK_LOG.parent.mkdir(parents=True, exist_ok=True)
    conn = psycopg2.connect(dsn(), application_name="airflow-probe", connect_timeout=5)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS pgha_probe (seq bigint PRIMARY KEY, at timestamptz DEFAULT now())")
    seq = last_ack()
    with ACK_LOG.open("a") as acks:
        while running:
            seq += 1
            with conn.cursor() as cur:
                cur.execute("INSERT INTO pgha_probe (seq) VALUES (%s) ON CONFLICT DO NOTHING", (seq,))
            acks.write(f"{seq}\n")
            acks.flush()
            time.sleep(INTERVAL)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
