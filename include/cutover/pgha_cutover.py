#!/usr/bin/env python3
"""pgha cutover agent: moves Airflow onto the cluster while Airflow is stopped.

Armed by the DAG's final task as a transient systemd unit on the source host,
so it starts only after that task has reported success and survives the stop
of the scheduler that ran it (ERRATA 20). Standard library only; talks to
PostgreSQL with the client binaries. Settings come from a 0600 JSON file,
passwords from a 0600 pgpass file: nothing secret on a command line.

Steps (each timed and recorded in the log file and, when reachable, in the
table ``pgha_cutover_log`` of the cluster's ``postgres`` database):

  stop      stop every Airflow unit of this host
  drain     wait until no session of the Airflow DB user is left on the source
  copy      recreate the database on the cluster (through HAProxy) and
            pg_dump | pg_restore from the source (method dump_restore), or
  catch_up, sync_sequences, drop_subscription (method logical_replication)
  verify    row count and checksum of every table, source vs cluster
  repoint   install the staged airflow.cfg (dated backup kept)
  db_check  ``airflow db check`` against the new URL
  mark      COMMENT ON DATABASE ... 'pgha: live ...' on the cluster
  start     start the units
  healthy   a scheduler job started after the cutover heartbeats in the new DB

Any failure after ``stop`` rolls back: the old airflow.cfg goes back, the
units start on the source database (which was never modified), and the
failure is recorded.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

LIVE_MARK = "pgha: live"


class Agent:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.s = settings
        self.started = time.time()
        self.steps: list[dict[str, Any]] = []
        self.log_path = Path(settings["log_dir"]) / f"cutover-{settings['run_id']}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.backup: Path | None = None

    # ------------------------------------------------------------------ plumbing
    def log(self, message: str) -> None:
        line = f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='milliseconds')} {message}"
        print(line, flush=True)
        with self.log_path.open("a") as fh:
            fh.write(line + "\n")

    def sh(self, command: str, *, check: bool = True, env: dict[str, str] | None = None, timeout: float = 3600,
           as_postgres: bool = False) -> subprocess.CompletedProcess[str]:
        argv = ["bash", "-o", "pipefail", "-c", command]
        if as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "PGPASSFILE": self.s["pgpass"], "PGCONNECT_TIMEOUT": "10",
                                   **(env or {})})
        shown = command if len(command) < 300 else command[:240] + f" ...[{len(command)} chars]"
        self.log(f"$ {shown} -> exit={proc.returncode} in {time.monotonic() - started:.2f}s")
        if proc.returncode and check:
            raise RuntimeError(f"{command!r} failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()[-1500:]}")
        return proc

    def step(self, name: str, func: Any) -> Any:
        started = time.time()
        self.log(f"step {name}: begin")
        try:
            result = func()
        except Exception as exc:
            self.steps.append({"step": name, "ok": False, "seconds": round(time.time() - started, 2), "error": str(exc)})
            self.log(f"step {name}: FAILED after {time.time() - started:.2f}s: {exc}")
            raise
        self.steps.append({"step": name, "ok": True, "seconds": round(time.time() - started, 2)})
        self.log(f"step {name}: ok in {time.time() - started:.2f}s")
        return result

    def psql(self, target: str, database: str, query: str) -> str:
        """Run one query; ``target`` is 'source' (local socket as postgres) or 'cluster' (through HAProxy)."""
        if self.s["role"] == "follower":
            return self.query_with_python(database, query)
        psql = f"{self.s['bin_dir']}/psql -X -q -At -v ON_ERROR_STOP=1"
        if target == "source":
            cmd = f"{psql} -p {self.s['source_port']} -d {shlex.quote(database)} -c {shlex.quote(query)}"
            return self.sh(cmd, as_postgres=True).stdout
        c = self.s["cluster"]
        cmd = (f"{psql} -h {c['host']} -p {c['port']} -U {shlex.quote(c['superuser'])} "
               f"-d {shlex.quote(database)} -c {shlex.quote(query)}")
        return self.sh(cmd).stdout

    def query_with_python(self, database: str, query: str) -> str:
        """A cluster query from a host without psql, through Airflow's own Python and psycopg2."""
        c = self.s["cluster"]
        script = ("import psycopg2, sys\n"
                  "conn = psycopg2.connect(''); conn.autocommit = True\n"
                  "cur = conn.cursor(); cur.execute(sys.argv[1])\n"
                  "print('\\n'.join('|'.join(map(str, r)) for r in (cur.fetchall() if cur.description else [])))\n")
        env = {"PGHOST": c["host"], "PGPORT": str(c["port"]), "PGUSER": c["superuser"], "PGDATABASE": database}
        proc = subprocess.run([self.s["python"], "-c", script, query], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PGPASSFILE": self.s["pgpass"], "PGCONNECT_TIMEOUT": "5", **env})
        if proc.returncode:
            raise RuntimeError(f"cluster query failed: {proc.stderr.strip()[-500:]}")
        return proc.stdout

    # ------------------------------------------------------------------ steps
    def stop_units(self) -> None:
        if self.s["units"]:
            self.sh("systemctl stop " + " ".join(shlex.quote(u) for u in self.s["units"]))

    def start_units(self) -> None:
        if self.s["units"]:
            self.sh("systemctl start " + " ".join(shlex.quote(u) for u in self.s["units"]))

    def drain(self) -> None:
        query = ("SELECT count(*) || ' ' || coalesce(string_agg(DISTINCT coalesce(client_addr::text, 'local') || '/' "
                 "|| application_name, ', '), '') FROM pg_stat_activity "
                 f"WHERE datname = '{self.s['database']}' AND usename = '{self.s['owner']}' AND pid <> pg_backend_pid()")
        deadline, seen = time.time() + self.s.get("drain_timeout", 120), ""
        while True:
            count, _, who = self.psql("source", "postgres", query).strip().partition(" ")
            if count == "0":
                return
            if who != seen:  # the audit log says whom the window waited for
                self.log(f"waiting for {count} Airflow session(s) on the source: {who}")
                seen = who
            if time.time() > deadline:
                raise RuntimeError(f"{count} Airflow sessions still open on the source: {who}")
            time.sleep(1)

    def copy(self) -> None:
        db, owner = self.s["database"], self.s["owner"]
        self.psql("cluster", "postgres", f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        self.psql("cluster", "postgres", f'CREATE DATABASE "{db}" OWNER "{owner}" ENCODING \'UTF8\'')
        c, b = self.s["cluster"], self.s["bin_dir"]
        self.sh(
            f"{b}/pg_dump -Fc --no-owner --no-privileges -p {self.s['source_port']} -d {shlex.quote(db)} | "
            f"PGPASSFILE={shlex.quote(self.s['pgpass'])} {b}/pg_restore --exit-on-error --no-owner --no-privileges "
            f"--role={shlex.quote(owner)} -h {c['host']} -p {c['port']} -U {shlex.quote(c['superuser'])} "
            f"-d {shlex.quote(db)}",
            as_postgres=True,
        )

    def catch_up(self) -> None:
        """Logical replication: wait until the subscription confirmed everything the source wrote."""
        query = ("SELECT coalesce(bool_and(confirmed_flush_lsn >= pg_current_wal_lsn()), false) "
                 "FROM pg_replication_slots WHERE slot_name = 'pgha_sub'")
        deadline = time.time() + self.s.get("catch_up_timeout", 300)
        while self.psql("source", self.s["database"], query).strip() != "t":
            if time.time() > deadline:
                raise RuntimeError("the subscription did not catch up with the source in time")
            time.sleep(0.2)

    def sync_sequences(self) -> None:
        """Logical replication does not carry sequence values: copy them."""
        rows = self.psql("source", self.s["database"], self.s["sql"]["sequences"]).split()
        statements = []
        for row in rows:
            name, value = row.split("|")
            statements.append(f"SELECT setval('{name}', {int(value)}, true);")
        if statements:
            self.psql("cluster", self.s["database"], " ".join(statements))
        self.log(f"synced {len(statements)} sequences")

    def drop_subscription(self) -> None:
        db = self.s["database"]
        self.psql("cluster", db, "ALTER SUBSCRIPTION pgha_sub DISABLE")
        self.psql("cluster", db, "ALTER SUBSCRIPTION pgha_sub SET (slot_name = NONE)")
        self.psql("cluster", db, "DROP SUBSCRIPTION pgha_sub")
        self.psql("source", db, "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                                "WHERE slot_name = 'pgha_sub'")
        self.psql("source", db, "DROP PUBLICATION IF EXISTS pgha_pub")

    def fingerprints(self, target: str) -> dict[str, str]:
        out = {}
        tables = self.psql(target, self.s["database"], self.s["sql"]["list_tables"]).split()
        for row in tables:
            schema, table = row.split("|")
            ident = f'"{schema}"."{table}"'
            query = ("SET TimeZone = 'UTC'; SET extra_float_digits = 3; SET DateStyle = 'ISO, YMD'; "
                     + self.s["sql"]["table_fingerprint"].replace("{table}", ident))
            out[f"{schema}.{table}"] = self.psql(target, self.s["database"], query).strip().splitlines()[-1]
        return out

    def verify(self) -> dict[str, Any]:
        # both sides at once: the stopped window pays for the slower one, not for the sum
        with ThreadPoolExecutor(max_workers=2) as pool:
            source_side, cluster_side = pool.submit(self.fingerprints, "source"), pool.submit(self.fingerprints, "cluster")
            source, cluster = source_side.result(), cluster_side.result()
        bad = [t for t in sorted(set(source) | set(cluster)) if source.get(t) != cluster.get(t)]
        if bad:
            raise RuntimeError("tables differ after the copy: " + ", ".join(
                f"{t} (source {source.get(t)}, cluster {cluster.get(t)})" for t in bad[:10]))
        rows = sum(int(v.split("|")[0]) for v in source.values())
        self.log(f"verified {len(source)} tables, {rows} rows: identical")
        return {"tables": len(source), "rows": rows, "fingerprints": cluster}

    def repoint(self) -> None:
        config, staged = Path(self.s["config"]), Path(self.s["staged"])
        if not staged.exists():
            raise RuntimeError(f"staged config {staged} is missing")
        stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
        self.backup = config.with_name(f"{config.name}.pgha-bak-{stamp}")
        shutil.copy2(config, self.backup)
        shutil.copymode(config, staged)
        stat = config.stat()
        os.chown(staged, stat.st_uid, stat.st_gid)
        os.replace(staged, config)

    def db_check(self) -> None:
        user = self.s["airflow_user"]
        self.sh(f"runuser -u {user} -- env AIRFLOW_HOME={shlex.quote(str(Path(self.s['config']).parent))} "
                f"{self.s['airflow_bin']} db check", timeout=300)

    def mark_live(self) -> None:
        stamp = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.psql("cluster", "postgres",
                  f"COMMENT ON DATABASE \"{self.s['database']}\" IS '{LIVE_MARK} since {stamp} (run {self.s['run_id']})'")

    def healthy(self) -> None:
        if not self.s["units"]:
            return
        if not any("scheduler" in u for u in self.s["units"]):
            time.sleep(5)
            self.sh("systemctl is-active " + " ".join(shlex.quote(u) for u in self.s["units"]))
            return
        since = dt.datetime.fromtimestamp(self.started, dt.timezone.utc).isoformat()
        query = ("SELECT count(*) FROM job WHERE job_type = 'SchedulerJob' AND state = 'running' "
                 f"AND start_date > '{since}' AND latest_heartbeat > now() - interval '30 seconds'")
        deadline = time.time() + self.s.get("health_timeout", 180)
        while time.time() < deadline:
            if self.psql("cluster", self.s["database"], query).strip() not in ("", "0"):
                self.sh("systemctl is-active " + " ".join(shlex.quote(u) for u in self.s["units"]))
                return
            time.sleep(2)
        raise RuntimeError("no scheduler heartbeat in the new database after the restart")

    # ------------------------------------------------------------------ outcome
    def record(self, outcome: str, detail: str, result: dict[str, Any] | None = None) -> None:
        record = {"run_id": self.s["run_id"], "host": os.uname().nodename, "role": self.s["role"],
                  "outcome": outcome, "detail": detail,
                  "seconds": round(time.time() - self.started, 2), "steps": self.steps, "result": result or {}}
        self.log("RECORD " + json.dumps({k: v for k, v in record.items() if k != "result"}))
        payload = json.dumps(record).replace("'", "''")
        try:
            self.psql("cluster", "postgres",
                      "CREATE TABLE IF NOT EXISTS pgha_cutover_log (id bigserial PRIMARY KEY, "
                      "at timestamptz NOT NULL DEFAULT now(), run_id text, host text, role text, outcome text, "
                      "record jsonb)")
            self.psql("cluster", "postgres",
                      "INSERT INTO pgha_cutover_log (run_id, host, role, outcome, record) VALUES "
                      f"('{self.s['run_id']}', '{record['host']}', '{self.s['role']}', '{outcome}', "
                      f"'{payload}'::jsonb)")
        except Exception as exc:  # the log file already has it
            self.log(f"could not write pgha_cutover_log on the cluster: {exc}")

    def rollback(self, clear_mark: bool = True) -> None:
        self.log("ROLLBACK: back to the source database")
        if self.backup and self.backup.exists():
            shutil.copy2(self.backup, self.s["config"])
            self.log(f"restored {self.s['config']} from {self.backup}")
        if clear_mark:
            try:
                self.psql("cluster", "postgres", f"COMMENT ON DATABASE \"{self.s['database']}\" IS NULL")
            except Exception as exc:
                self.log(f"could not clear the live mark: {exc}")
        self.step("start_old", self.start_units)

    def outcome_of_primary(self) -> None:
        """Follower: wait until the source host's agent records its outcome on the cluster."""
        query = f"SELECT outcome FROM pgha_cutover_log WHERE run_id = '{self.s['run_id']}' AND role = 'primary'"
        deadline = time.time() + self.s.get("follower_timeout", 1800)
        while time.time() < deadline:
            try:
                outcome = self.psql("cluster", "postgres", query).strip()
            except RuntimeError as exc:
                outcome = ""
                self.log(f"waiting for the primary agent: {exc}")
            if outcome == "success":
                return
            if outcome:
                raise RuntimeError(f"the source host's cutover ended with {outcome!r}")
            time.sleep(2)
        raise RuntimeError("no outcome from the source host's cutover agent in time")

    def run_follower(self) -> int:
        self.log(f"cutover {self.s['run_id']} (follower) begins on {os.uname().nodename}")
        self.step("stop", self.stop_units)
        try:
            self.step("wait_primary", self.outcome_of_primary)
            self.step("repoint", self.repoint)
            self.step("db_check", self.db_check)
            self.step("start", self.start_units)
            self.step("healthy", self.healthy)
        except Exception as exc:
            try:
                self.rollback(clear_mark=False)
            finally:
                self.record("rolled_back", str(exc))
            return 1
        self.record("success", "repointed")
        return 0

    def run(self) -> int:
        if self.s["role"] == "follower":
            return self.run_follower()
        self.log(f"cutover {self.s['run_id']} begins on {os.uname().nodename}")
        self.step("stop", self.stop_units)
        try:
            self.step("drain", self.drain)
            if self.s.get("method") == "logical_replication":
                self.step("catch_up", self.catch_up)
                self.step("sync_sequences", self.sync_sequences)
                self.step("drop_subscription", self.drop_subscription)
            else:
                self.step("copy", self.copy)
            result = self.step("verify", self.verify)
            if self.s["config"]:  # the source host also runs Airflow (the runbook's VM1)
                self.step("repoint", self.repoint)
                self.step("db_check", self.db_check)
            self.step("mark", self.mark_live)
            self.step("start", self.start_units)
            self.step("healthy", self.healthy)
        except Exception as exc:
            try:
                self.rollback()
            finally:
                self.record("rolled_back", str(exc))
            return 1
        self.record("success", f"{result['tables']} tables, {result['rows']} rows verified", result)
        self.log(f"cutover done in {time.time() - self.started:.1f}s")
        return 0


def main() -> int:
    settings = json.loads(Path(sys.argv[1]).read_text())
    return Agent(settings).run()


if __name__ == "__main__":
    sys.exit(main())
