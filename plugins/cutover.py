"""pgha cutover agent: moves Airflow onto the cluster while Airflow is stopped.

Armed by the DAG's final task (``CutoverOperator``) as a transient systemd unit
on the source host ("primary") and on every other Airflow host ("follower"):

    <the Airflow units' python> -m pgha.cutover /etc/pgha/cutover.json

It survives the stop of the scheduler that ran that task (a LocalExecutor
task is the scheduler's child: restarting the scheduler from a task would kill
the task), and it changes nothing until Airflow has recorded that task as a
success (``await_task``: ``airflow tasks state`` with the units' own
environment, every ``task_poll_seconds``): the task is then over, and none of
its processes can be cut by the stop. A task that ends otherwise leaves the
agent to record "not_started", having changed nothing; so does a primary whose
Airflow cannot confirm the success within ``task_timeout``, while a follower
that cannot confirm it follows the primary's decision (never left behind alone). It runs as root,
outside any task: it needs pgha and psycopg2 (installed with pgha into the
Airflow units' Python), not Airflow's runtime. Settings come from a 0600 JSON file, passwords from a
0600 pgpass file: nothing secret on a command line. Every PostgreSQL step is
``pgha.pgdata``, the code and SQL the migration's operators use.

Steps of the primary (each timed and recorded in /var/log/pgha/cutover-<run>.log
and, when reachable, in table ``pgha_cutover_log`` of the cluster's ``postgres``
database):

  await_task  wait until the arming task is recorded a success (every agent)
  stop      stop every Airflow unit of this host
  drain     wait until no session of the Airflow DB user is left on the source
  copy      recreate the database on the cluster (through HAProxy) and
            pg_dump | pg_restore from the source (method dump_restore), or
  catch_up, sync_sequences, drop_subscription (method logical_replication)
  verify    row count and checksum of every table, source vs cluster
  repoint   install the staged airflow.cfg (dated 0600 backup kept in a root-only directory)
  db_check  ``airflow db check`` against the new URL
  mark      COMMENT ON DATABASE ... 'pgha: live ...' on the cluster
  start     start the units
  healthy   a scheduler job started after the cutover heartbeats in the new DB

Any failure of the primary after ``stop`` rolls back: the old airflow.cfg goes
back, the live mark is cleared, the units start on the source database (which
the agent only reads), and the failure is recorded.

A follower stops its units and waits for the primary's recorded outcome: the
primary alone decides, for every host together. On its rollback the follower
rolls back; on its success the follower only moves forward (repoint, ``db
check`` every ``follower_retry_seconds`` for up to ``follower_forward_timeout``,
start). A follower that cannot (or hears no outcome within ``follower_timeout``)
records "stuck", keeps its units stopped and never starts them on the source.

A crash of the host: before its stop every agent writes a root-only state file
(``STATE_FILE``: run, role, phase, the config backup) and enables
``pgha-cutover-resume.service`` (rendered by CutoverOperator into the settings),
ordered Before= this host's Airflow units. At boot it runs ``python -m
pgha.cutover --resume SETTINGS`` (``Agent.resume``): a follower waits for the
primary's outcome and goes forward or back as above; the primary never continues
a copy: it keeps an outcome it had recorded, else rolls back (and so every
follower). Whatever the outcome, the agent then removes the unit and the state
file, and the pgpass file goes only once no state file is left.

Role ``pooler`` (armed by ``MoveAirflowOntoPgBouncerOperator`` on one Airflow host, before the
migration): the same safe restart onto another database URL, with nothing copied. It waits for
its arming task's success, stops the host's units, installs the staged airflow.cfg that points
at the host's own PgBouncer, runs ``airflow db check`` through it, starts the units and (on the
scheduler's host) waits for a scheduler heartbeat read through PgBouncer. Any failure puts the
previous airflow.cfg back and restarts the units; a crash of the host rolls back at boot. Its
"cluster" settings are the local PgBouncer, its record stays in its own log (no cluster exists
yet), and it has its own settings, state file and resume unit, so it never meets a cutover's.
"""

from __future__ import annotations

import datetime as dt
import errno
import json
import os
import secrets
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from pgha import airflowenv, pgdata
from pgha.pgdata import Endpoint

RUNUSER = "/usr/sbin/runuser"  # by its path: the units' PATH (db check's environment) need not list sbin

# Root-only (0700) places: a path a non-root user controls is never trusted by root.
STATE_DIR = "/var/lib/pgha"
STAGED_CONFIG = f"{STATE_DIR}/airflow.cfg.pgha-new"  # phase 8 writes it, the agent installs it
BACKUP_DIR = f"{STATE_DIR}/backup"
KEEP_BACKUPS = 5  # airflow.cfg backups kept per host (they hold the old database password)
PGPASS = "/etc/pgha/cutover.pgpass"
# pgha's client certificate and key (with TLS): the cluster superuser needs one from a host that is no member.
# They live as long as the pgpass file.
CLIENT_CERT = "/etc/pgha/cutover-client.crt"
CLIENT_KEY = "/etc/pgha/cutover-client.key"
STATE_FILE = f"{STATE_DIR}/cutover-state.json"  # an unfinished cutover on this host (see Agent.resume)
RESUME_UNIT = "pgha-cutover-resume.service"
UNIT_DIR = "/etc/systemd/system"
TASK_TIMEOUT = 900  # the arming task reports its success in seconds; an agent never starts on a task that did not
TASK_ENDED = {"failed", "upstream_failed", "skipped", "removed"}  # a state the arming task leaves no more
FOLLOWER_TIMEOUT = 6 * 3600 + 1800  # the primary's longest run (copy_timeout) and some: it alone decides a rollback


class UnsafePath(RuntimeError):
    """A path root must not use: a symbolic link (or one on the way) a non-root user could have planted."""


def _root_only(info: os.stat_result) -> bool:
    """Owned by root and writable by no one else: only root can have put a link or file in it."""
    return info.st_uid == 0 and not info.st_mode & 0o022


def open_directory(path: str, *, create: bool = False) -> int:
    """
    A descriptor of directory ``path``, entered one component at a time without following a
    symbolic link a user other than root could have planted: a link is followed only in a
    directory only root can write; anything else is opened with O_NOFOLLOW (a link swapped
    in meanwhile fails the open). ``create`` makes missing directories (0700).
    """
    if not path.startswith("/"):
        raise UnsafePath(f"{path}: not an absolute path")
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
    parts, hops = [p for p in path.split("/") if p], 0
    try:
        while parts:
            part = parts.pop(0)
            if part == ".":
                continue
            try:
                info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise
                os.mkdir(part, 0o700, dir_fd=fd)
                info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISLNK(info.st_mode):
                if not _root_only(os.fstat(fd)):
                    raise UnsafePath(f"{path}: {part} is a symbolic link in a directory a user other than root "
                                     "can write")
                hops += 1
                if hops > 40:
                    raise UnsafePath(f"{path}: too many symbolic links")
                target = os.readlink(part, dir_fd=fd)
                if target.startswith("/"):
                    fd = _replace_fd(fd, os.open("/", os.O_RDONLY | os.O_DIRECTORY))
                parts[:0] = [p for p in target.split("/") if p]
                continue
            try:
                fd = _replace_fd(fd, os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd))
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafePath(f"{path}: {part} is not a directory (a link swapped in?)") from exc
                raise
    except BaseException:
        os.close(fd)
        raise
    return fd


def _replace_fd(old: int, new: int) -> int:
    os.close(old)
    return new


def _refuse_link(dir_fd: int, name: str, shown: str) -> os.stat_result | None:
    """``name``'s own stat (None if absent); refuses a link or anything but a regular file."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(info.st_mode):
        raise UnsafePath(f"{shown} is a symbolic link")
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(f"{shown} is not a regular file")
    return info


def read_at(dir_fd: int, name: str, shown: str) -> tuple[bytes, os.stat_result]:
    """The content and stat of regular file ``name`` in the directory, opened without following a link."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{shown} is a symbolic link") from exc
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafePath(f"{shown} is not a regular file")
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks), info
    finally:
        os.close(fd)


def write_at(dir_fd: int, name: str, data: bytes, *, uid: int, gid: int, mode: int, shown: str,
             exclusive: bool = False) -> None:
    """
    Install ``data`` as ``name`` in the directory: a new temp file (O_CREAT|O_EXCL|O_NOFOLLOW: no
    link can stand at its name), owner and mode set on the descriptor, renamed over ``name``
    (a rename replaces, never follows). ``name`` being a link is refused before and after;
    ``exclusive`` refuses an existing ``name`` too.
    """
    if _refuse_link(dir_fd, name, shown) is not None and exclusive:
        raise FileExistsError(f"{shown} exists")
    tmp = f".{name}.pgha-{secrets.token_hex(6)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        os.fsync(fd)
        mine = os.fstat(fd)
        _refuse_link(dir_fd, name, shown)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if (now.st_dev, now.st_ino) != (mine.st_dev, mine.st_ino):
            raise UnsafePath(f"{shown} was replaced while pgha installed it")
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        raise
    finally:
        os.close(fd)


def root_only_directory(path: str, *, create: bool = False) -> int:
    """``open_directory`` of a directory root alone may write (the staged config, the backups)."""
    fd = open_directory(path, create=create)
    if not _root_only(os.fstat(fd)):
        os.close(fd)
        raise UnsafePath(f"{path} is not a root-only directory (owned by root, writable by no one else)")
    return fd


def log_path(settings: dict[str, Any]) -> Path:
    """The agent's log: <log_dir>/<log_prefix><run id>.log (prefix "cutover-" unless the settings say)."""
    return Path(settings["log_dir"]) / f"{settings.get('log_prefix', 'cutover-')}{settings['run_id']}.log"


def endpoint(settings: dict[str, Any], side: str, dbname: str) -> Endpoint:
    """The ``source`` or ``cluster`` endpoint of the settings; the password is in the pgpass file."""
    where = settings[side]
    return Endpoint(host=where["host"], port=int(where["port"]), user=where["user"], dbname=dbname,
                    passfile=settings["pgpass"], connect_timeout=10, sslmode=where.get("sslmode"),
                    sslrootcert=where.get("sslrootcert"), sslcert=where.get("sslcert"), sslkey=where.get("sslkey"))


class AirflowUnits:
    """This host's Airflow: its systemd units and ``airflow db check`` (a test passes its own)."""

    def __init__(self, settings: dict[str, Any], log: Callable[[str], None]) -> None:
        self.s = settings
        self.log = log
        self.names: list[str] = list(settings.get("units") or [])
        self.environment: dict[str, str] = {}
        # Resuming at boot: the units are ordered after the resume unit that runs us, so a blocking
        # `systemctl start` of them would wait for us forever; --no-block queues the job (or cancels one).
        self.no_block = False

    @property
    def runs_scheduler(self) -> bool:
        return any("scheduler" in u for u in self.names)

    def sh(self, argv: list[str], timeout: float = 300, env: dict[str, str] | None = None) -> str:
        started = time.monotonic()
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        self.log(f"$ {shlex.join(argv)} -> exit={proc.returncode} in {time.monotonic() - started:.2f}s")
        if proc.returncode:
            raise RuntimeError(f"{shlex.join(argv)} failed ({proc.returncode}): "
                               f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
        return proc.stdout

    def systemctl(self, verb: str, *units: str) -> None:
        self.sh(["systemctl", verb, *(["--no-block"] if self.no_block else []), *units])

    def stop(self) -> None:
        if self.names:
            self.environment = self.units_environment()
            self.systemctl("stop", *self.names)

    def main_pid(self, unit: str) -> int:
        shown = subprocess.run(["systemctl", "show", "-P", "MainPID", unit], capture_output=True, text=True)
        return int(shown.stdout.strip() or 0) if shown.returncode == 0 else 0

    def units_environment(self) -> dict[str, str]:
        """The environment the first unit runs with (read before the stop), so that `db check`
        tests what the units will use; preflight checked that no setting there wins over airflow.cfg."""
        pid = self.main_pid(self.names[0])
        try:
            environment = airflowenv.parse_environ(Path(f"/proc/{pid}/environ").read_bytes()) if pid else {}
        except OSError:
            environment = {}
        if not environment:
            self.log(f"{self.names[0]} is not running: db check gets only AIRFLOW_HOME and PATH")
        return environment

    def start(self) -> None:
        if self.names:
            self.systemctl("start", *self.names)

    def restart(self) -> None:
        """Back onto the restored config: a unit that already runs holds the cluster's URL in memory,
        which `start` would leave running."""
        if self.names:
            self.systemctl("restart", *self.names)

    def check_active(self) -> None:
        if self.names:
            self.sh(["systemctl", "is-active", *self.names])

    def enable_resume(self, unit: str) -> None:
        """The resume unit (its file just written) runs at the next boot, before the Airflow units."""
        self.sh(["systemctl", "daemon-reload"])
        self.sh(["systemctl", "enable", unit])

    def disable_resume(self, unit: str) -> None:
        self.sh(["systemctl", "disable", unit])
        # a resume that ended failed (a rollback at boot) would stay loaded as "failed" and look armed
        subprocess.run(["systemctl", "reset-failed", unit], capture_output=True)

    def daemon_reload(self) -> None:
        self.sh(["systemctl", "daemon-reload"])

    def airflow(self, *args: str, timeout: float = 300) -> str:
        """``airflow <args>`` as the units' user with the units' environment (read before their stop)."""
        environment = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                       "AIRFLOW_HOME": str(Path(self.s["config"]).parent), **self.environment}
        return self.sh([RUNUSER, "-u", self.s["airflow_user"], "--", self.s["airflow_bin"], *args],
                       timeout=timeout, env=environment)

    def db_check(self) -> None:
        self.airflow("db", "check")

    def task_state(self, task: dict[str, str]) -> str:
        """The state Airflow recorded for ``task`` (dag_id, task_id, run_id, map_index of a mapped task): what
        this host's Airflow reads."""
        if not self.environment:  # read until it is not empty: a restarting unit shows none
            self.environment = self.units_environment()
        mapped = ["--map-index", str(task["map_index"])] if int(task.get("map_index", -1)) >= 0 else []
        shown = self.airflow("tasks", "state", *mapped, task["dag_id"], task["task_id"], task["run_id"], timeout=120)
        lines = [line.strip() for line in shown.splitlines() if line.strip()]
        return lines[-1] if lines else ""


class NotStarted(RuntimeError):
    """The agent did not begin: the task that armed it is not a success. Nothing was changed."""


class TaskUnconfirmed(NotStarted):
    """This host's Airflow did not say, in time, that the arming task succeeded."""


class Agent:
    def __init__(self, settings: dict[str, Any], units: AirflowUnits | None = None, *,
                 settings_path: str | None = None, resuming: bool = False) -> None:
        self.s = settings
        self.settings_path = settings_path
        self.resuming = resuming
        self.phase = "begin"
        self.armed = resuming  # a state file (and resume unit) is kept only once armed
        self.stop_failed = False
        self.started = time.time()
        self.steps: list[dict[str, Any]] = []
        self.log_path = log_path(settings)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.backup: Path | None = None
        self.original: tuple[bytes, int, int, int] | None = None  # the config replaced: content, uid, gid, mode
        self.units = units or AirflowUnits(settings, self.log)
        if resuming:
            self.units.no_block = True
        self.database = settings["database"]
        self.cluster_admin = endpoint(settings, "cluster", "postgres")
        self.cluster_db = endpoint(settings, "cluster", self.database)

    # ------------------------------------------------------------------ plumbing
    def log(self, message: str) -> None:
        line = f"{dt.datetime.now(dt.timezone.utc).isoformat(timespec='milliseconds')} {message}"
        print(line, flush=True)
        with self.log_path.open("a") as fh:
            fh.write(line + "\n")
            if message.startswith("RECORD "):  # on disk before the cluster has it: a resume reads it back
                fh.flush()
                os.fsync(fh.fileno())

    def timeout(self, name: str, default: float) -> float:
        return float(self.s.get(name, default))

    def step(self, name: str, func: Callable[[], Any]) -> Any:
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

    @property
    def source_db(self) -> Endpoint:
        return endpoint(self.s, "source", self.database)

    # ------------------------------------------------------------------ steps
    def await_task(self) -> None:
        """Nothing changes before Airflow has recorded the arming task a success: a LocalExecutor task is a
        child of the scheduler this agent stops, a Celery task runs in a worker it stops."""
        task = self.s.get("task")
        if not task:
            self.log("no arming task named in the settings: nothing to wait for")
            return
        if not self.units.names:  # the primary of a source host without Airflow: its drain waits for the others
            self.log("no Airflow unit on this host: nothing of this host's can cut the task")
            return
        shown = f"task {task['task_id']} of {task['dag_id']} run {task['run_id']}"
        # A mapped arming task: every instance (one per host) must be a success before any host stops its
        # units, whose restart would cut a sibling still running (LocalExecutor: the scheduler's children).
        instances = [{**task, "map_index": i} for i in task.get("map_indexes") or []] or [task]
        if len(instances) > 1:
            shown += f" (map indexes {', '.join(str(i['map_index']) for i in instances)})"
        timeout = self.timeout("task_timeout", TASK_TIMEOUT)
        interval = self.timeout("task_poll_seconds", 2)
        deadline, seen = time.time() + timeout, None
        while True:
            try:
                states = [self.units.task_state(instance) for instance in instances]
                ended = [s for s in states if s in TASK_ENDED]
                state = ended[0] if ended else ("success" if set(states) == {"success"} else ", ".join(states))
            except Exception as exc:  # an Airflow that cannot answer yet: asked again until the deadline
                state = f"unknown ({str(exc).strip()[-300:]})"
            if state != seen:
                self.log(f"{shown}: {state}")
                seen = state
            if state == "success":
                return
            if state in TASK_ENDED:
                raise NotStarted(f"{shown} ended {state}: nothing was changed")
            if time.time() + interval > deadline:
                raise TaskUnconfirmed(f"{shown} not a success after {timeout:g}s (last seen: {state})")
            time.sleep(interval)

    def began(self) -> bool:
        """The arming task succeeded: go on. It ended otherwise: "not_started" is recorded, nothing changed
        (False). Unconfirmed in time: the primary does not begin; a follower follows the primary's decision
        (it stops its units and goes where the primary went), so that no host is left behind on its own."""
        try:
            self.step("await_task", self.await_task)
        except TaskUnconfirmed as exc:
            if self.s["role"] == "follower":
                self.log(f"{exc}: following the source host's decision instead")
                return True
            self.record("not_started", f"{exc}: nothing was changed")
            return False
        except NotStarted as exc:
            self.record("not_started", str(exc))
            return False
        return True

    def drain(self) -> None:
        deadline, seen = time.time() + self.timeout("drain_timeout", 120), ""
        with pgdata.session(self.source_db.on("postgres")) as conn:
            while True:
                count, who = pgdata.airflow_sessions(conn, self.database, self.s["owner"])
                if count == 0:
                    return
                if who != seen:  # the audit log says whom the window waited for
                    self.log(f"waiting for {count} Airflow session(s) on the source: {who}")
                    seen = who
                if time.time() > deadline:
                    raise RuntimeError(f"{count} Airflow sessions still open on the source: {who}")
                time.sleep(0.5)

    def copy(self) -> None:
        with pgdata.session(self.cluster_admin) as conn:
            pgdata.recreate_database(conn, self.database, self.s["owner"])
        command = pgdata.dump_restore_command(self.source_db, self.cluster_db, bin_dir=self.s["bin_dir"],
                                              owner=self.s["owner"], passfile=self.s["pgpass"])
        self.log(f"$ {command}")
        seconds = pgdata.run_pipeline(command, timeout=self.timeout("copy_timeout", 6 * 3600))
        self.log(f"pg_dump | pg_restore done in {seconds:.2f}s")

    def catch_up(self) -> None:
        """Logical replication: wait until the subscription confirmed everything the source wrote."""
        deadline = time.time() + self.timeout("catch_up_timeout", 300)
        with pgdata.session(self.source_db) as conn:
            while not pgdata.slot_caught_up(conn):
                if time.time() > deadline:
                    raise RuntimeError("the subscription did not catch up with the source in time")
                time.sleep(0.2)

    def sync_sequences(self) -> None:
        with pgdata.session(self.source_db) as conn:
            values = pgdata.sequence_values(conn)
        with pgdata.session(self.cluster_db) as conn:
            pgdata.set_sequences(conn, values)
        self.log(f"synced {len(values)} sequences")

    def drop_subscription(self) -> None:
        with pgdata.session(self.cluster_db) as conn:
            pgdata.drop_subscription(conn)
        try:
            with pgdata.session(self.source_db) as conn:
                pgdata.drop_publication(conn)
        except Exception as exc:  # the publication holds no WAL; only a superuser may drop one FOR ALL TABLES
            self.log(f"publication {pgdata.PUBLICATION} left on the source: {str(exc).strip()}")

    def verify(self) -> dict[str, Any]:
        source, cluster = pgdata.both_sides(self.source_db, self.cluster_db)
        problems = pgdata.compare_fingerprints(source, cluster)
        if problems:
            raise RuntimeError("tables differ after the copy: " + "; ".join(problems[:10]))
        rows = sum(count for count, _ in source.values())
        self.log(f"verified {len(source)} tables, {rows} rows: identical")
        return {"tables": len(source), "rows": rows, "fingerprints": pgdata.as_text(cluster)}

    def repoint(self) -> None:
        """Install the staged config over airflow.cfg. Every path is checked before anything changes: a link
        planted by the config's owner (config, its directory, the staged file) fails the step untouched."""
        config, staged = Path(self.s["config"]), Path(self.s["staged"])
        config_dir = open_directory(str(config.parent))
        try:
            current, info = read_at(config_dir, config.name, str(config))
            owner = os.fstat(config_dir).st_uid
            if owner not in (0, info.st_uid):
                raise UnsafePath(f"{config.parent} is owned by uid {owner}, neither root nor the owner of "
                                 f"{config.name} (uid {info.st_uid})")
            staged_dir = root_only_directory(str(staged.parent))
            try:
                try:
                    new, _ = read_at(staged_dir, staged.name, str(staged))
                except FileNotFoundError:
                    raise RuntimeError(f"staged config {staged} is missing") from None
                mode = stat.S_IMODE(info.st_mode)
                if current == new and self.original:  # installed before a restart cut this run short
                    self.log(f"{config} already is the staged config (installed before the restart)")
                else:
                    self.backup = self.keep_backup(config.name, current)
                    self.original = (current, info.st_uid, info.st_gid, mode)
                    self.save_state("repointing")  # a restart from here on finds the way back in the state file
                    write_at(config_dir, config.name, new, uid=info.st_uid, gid=info.st_gid, mode=mode,
                             shown=str(config))
                os.unlink(staged.name, dir_fd=staged_dir)
            finally:
                os.close(staged_dir)
        finally:
            os.close(config_dir)
        self.log(f"installed {staged} as {config} (owner {info.st_uid}:{info.st_gid}, mode {mode:o}); "
                 f"previous kept as {self.backup}")

    def keep_backup(self, name: str, content: bytes) -> Path:
        """``content`` as <backup_dir>/<name>.pgha-bak-<timestamp>, root 0600; only the newest KEEP_BACKUPS stay."""
        backup_dir = Path(self.s.get("backup_dir") or BACKUP_DIR)
        fd = root_only_directory(str(backup_dir), create=True)
        try:
            os.fchmod(fd, 0o700)
            prefix = f"{name}.pgha-bak-"
            stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S.%f")  # sorts as it was taken
            for attempt in range(100):
                backup = f"{prefix}{stamp}" + (f".{attempt}" if attempt else "")
                try:
                    write_at(fd, backup, content, uid=0, gid=0, mode=0o600, shown=str(backup_dir / backup),
                             exclusive=True)
                    break
                except FileExistsError:
                    continue
            older = sorted(n for n in os.listdir(fd) if n.startswith(prefix))[:-KEEP_BACKUPS]
            for stale in older:
                os.unlink(stale, dir_fd=fd)
            if older:
                self.log(f"pruned {len(older)} old backup(s) of {name} (keeping {KEEP_BACKUPS}): {', '.join(older)}")
        finally:
            os.close(fd)
        return backup_dir / backup

    def mark_live(self) -> None:
        with pgdata.session(self.cluster_admin) as conn:
            self.log("cluster database marked: " + pgdata.mark_live(conn, self.database, self.s["run_id"]))

    def healthy(self) -> None:
        if not self.units.runs_scheduler:
            time.sleep(self.timeout("settle_seconds", 5))
            self.units.check_active()
            return
        since = dt.datetime.fromtimestamp(self.started, dt.timezone.utc)
        deadline = time.time() + self.timeout("health_timeout", 180)
        while time.time() < deadline:
            with pgdata.session(self.cluster_db) as conn:
                if pgdata.scheduler_heartbeats(conn, since):
                    self.units.check_active()
                    return
            time.sleep(2)
        raise RuntimeError("no scheduler heartbeat in the new database after the restart")

    # ------------------------------------------------------------------ crash safety
    @property
    def state_path(self) -> Path:
        return Path(self.s.get("state_file") or STATE_FILE)

    @property
    def resume_unit_path(self) -> Path:
        return Path(self.s.get("unit_dir") or UNIT_DIR) / self.resume_unit_name

    @property
    def resume_unit_name(self) -> str:
        return self.s.get("resume_unit_name") or RESUME_UNIT

    def save_state(self, phase: str) -> None:
        """What a restart of this host must know to complete the cutover (root 0600, root-only directory)."""
        self.phase = phase
        if not self.armed:
            return
        state = {"run_id": self.s["run_id"], "role": self.s["role"], "settings": self.settings_path, "phase": phase,
                 "backup": str(self.backup) if self.backup else None,
                 "original": list(self.original[1:]) if self.original else None}
        path = self.state_path
        fd = root_only_directory(str(path.parent), create=True)
        try:
            write_at(fd, path.name, json.dumps(state).encode(), uid=0, gid=0, mode=0o600, shown=str(path))
            os.fsync(fd)
        finally:
            os.close(fd)
        self.log(f"state {path}: phase {phase}")

    def load_state(self) -> dict[str, Any] | None:
        path = self.state_path
        try:
            fd = root_only_directory(str(path.parent))
        except FileNotFoundError:
            return None
        try:
            content, _ = read_at(fd, path.name, str(path))
        except FileNotFoundError:
            return None
        finally:
            os.close(fd)
        return json.loads(content)

    def arm_resume(self) -> None:
        """Before the stop: the state file and the boot-time unit that completes this cutover after a crash."""
        self.armed = True
        self.save_state("stopping")
        text = self.s.get("resume_unit")
        if not text:
            raise RuntimeError("the settings carry no resume unit (armed by an older CutoverOperator)")
        unit = self.resume_unit_path
        fd = open_directory(str(unit.parent))
        try:
            write_at(fd, unit.name, text.encode(), uid=0, gid=0, mode=0o644, shown=str(unit))
        finally:
            os.close(fd)
        self.units.enable_resume(self.resume_unit_name)

    def disarm_resume(self) -> None:
        """The cutover is over on this host (whatever its outcome): the resume unit goes, the state file last."""
        unit = self.resume_unit_path
        try:
            if unit.exists():
                self.units.disable_resume(self.resume_unit_name)
            unit.unlink(missing_ok=True)
            self.units.daemon_reload()
        except Exception as exc:  # the state file goes anyway: the unit then finds nothing to resume
            self.log(f"could not remove {unit}: {exc}")
        self.state_path.unlink(missing_ok=True)
        self.log(f"state {self.state_path} and {self.resume_unit_name} removed")

    def load_original(self, state: dict[str, Any]) -> None:
        """The config the repoint replaced, from the backup the state file names (for a rollback)."""
        if not state.get("backup") or not state.get("original"):
            return
        backup = Path(state["backup"])
        fd = root_only_directory(str(backup.parent))
        try:
            content, _ = read_at(fd, backup.name, str(backup))
        finally:
            os.close(fd)
        uid, gid, mode = state["original"]
        self.backup, self.original = backup, (content, uid, gid, mode)

    def own_outcome(self) -> str | None:
        """This host's outcome as its agent recorded it in its log (fsynced before the cluster has it)."""
        try:
            lines = self.log_path.read_text().splitlines()
        except FileNotFoundError:
            return None
        outcomes = [json.loads(line.split(" RECORD ", 1)[1]).get("outcome") for line in lines if " RECORD " in line]
        return outcomes[-1] if outcomes else None

    # ------------------------------------------------------------------ outcome
    def record(self, outcome: str, detail: str, result: dict[str, Any] | None = None) -> None:
        host = os.uname().nodename
        record = {"run_id": self.s["run_id"], "host": host, "role": self.s["role"], "outcome": outcome,
                  "detail": detail, "seconds": round(time.time() - self.started, 2), "steps": self.steps,
                  "result": result or {}}
        self.log("RECORD " + json.dumps({k: v for k, v in record.items() if k != "result"}))
        self.send_record(record)

    def send_record(self, record: dict[str, Any]) -> None:
        """The record into pgha_cutover_log; after a restart (the network maybe just up) retried a while:
        the followers wait for the primary's, the outcome task for everyone's. ``record: log``: the log only."""
        if self.s.get("record") == "log":
            return
        deadline = time.time() + (self.timeout("record_timeout", 300) if self.resuming else 0)
        while True:
            try:
                with pgdata.session(self.cluster_admin) as conn:
                    pgdata.record_cutover(conn, self.s["run_id"], record["host"], self.s["role"], record["outcome"],
                                          json.dumps(record))
                return
            except Exception as exc:  # the log file already has it
                self.log(f"could not write pgha_cutover_log on the cluster: {exc}")
                if time.time() >= deadline:
                    return
                time.sleep(5)

    def resend_own_record(self) -> None:
        """After a restart: the record this host's log has, into the cluster if it did not get there."""
        if self.s.get("record") == "log":
            return
        lines = [line for line in self.log_path.read_text().splitlines() if " RECORD " in line]
        record = json.loads(lines[-1].split(" RECORD ", 1)[1])
        try:
            with pgdata.session(self.cluster_admin) as conn:
                hosts = {r.host for r in pgdata.cutover_records(conn, self.s["run_id"])}
        except Exception as exc:
            self.log(f"could not read pgha_cutover_log on the cluster: {exc}")
            hosts = set()
        if record.get("host") not in hosts:
            self.send_record(record)

    def rollback(self, clear_mark: bool = True) -> None:
        self.log("ROLLBACK: back to the source database")
        if self.original:
            try:
                self.restore_config()
            except Exception as exc:  # the units stay stopped rather than start on a config nobody checked
                self.log(f"ROLLBACK FAILED: could not restore {self.s['config']} (copy in {self.backup}): {exc}")
                raise
        if clear_mark:
            try:
                with pgdata.session(self.cluster_admin) as conn:
                    pgdata.clear_mark(conn, self.database)
            except Exception as exc:
                self.log(f"could not clear the live mark: {exc}")
        self.step("start_old", self.units.restart)

    def restore_config(self) -> None:
        """Put the replaced airflow.cfg back (same owner and mode), through the same link-refusing install."""
        assert self.original is not None
        config = Path(self.s["config"])
        content, uid, gid, mode = self.original
        fd = open_directory(str(config.parent))
        try:
            write_at(fd, config.name, content, uid=uid, gid=gid, mode=mode, shown=str(config))
        finally:
            os.close(fd)
        self.original = None
        self.log(f"restored {config} (as kept in {self.backup})")

    def outcome_of_primary(self) -> str | None:
        """Follower: the outcome the source host's agent records on the cluster (None: none in time)."""
        deadline = time.time() + self.timeout("follower_timeout", FOLLOWER_TIMEOUT)
        while time.time() < deadline:
            try:
                with pgdata.session(self.cluster_admin) as conn:
                    outcome = pgdata.cutover_outcome(conn, self.s["run_id"], "primary")
            except Exception as exc:  # HAProxy switching, cluster busy: keep asking
                outcome = None
                self.log(f"waiting for the primary agent: {str(exc).strip()}")
            if outcome:
                self.log(f"the source host's agent recorded {outcome!r}")
                return outcome
            time.sleep(2)
        return None

    def db_check_until_reachable(self) -> None:
        """After the primary committed there is no way back: `db check` again until the cluster answers."""
        interval = self.timeout("follower_retry_seconds", 10)
        deadline = time.time() + self.timeout("follower_forward_timeout", 1800)
        tries = 0
        while True:
            tries += 1
            try:
                self.units.db_check()
                return
            except Exception as exc:
                if time.time() + interval > deadline:
                    raise RuntimeError(f"airflow db check still failing after {tries} tries: {exc}") from exc
                self.log(f"db check try {tries} failed, again in {interval:g}s: {str(exc).strip()[-300:]}")
                time.sleep(interval)

    def move_forward(self) -> None:
        """Follower after the primary's success (also a resume): repoint, db check until it passes, start."""
        if Path(self.s["staged"]).exists() or self.phase not in ("repointing", "repointed"):
            self.step("repoint", self.repoint)
            self.save_state("repointed")
        self.step("db_check", self.db_check_until_reachable)
        self.step("start", self.units.restart if self.stop_failed else self.units.start)
        if self.resuming:  # the units start once this resume unit has ended (they are ordered after it)
            self.log("units queued to start after this resume unit; the outcome task awaits their heartbeat")
        else:
            self.step("healthy", self.healthy)

    def follow(self) -> int:
        """Follower, its units stopped: the primary alone decides forward (success) or back (anything else)."""
        outcome = self.step("wait_primary", self.outcome_of_primary)
        if outcome is None:
            return self.stuck("no outcome from the source host's cutover agent in time; its decision is not "
                              "known, so this host's units stay stopped on the old config")
        if outcome != "success":
            try:
                self.rollback(clear_mark=False)
            finally:
                self.record("rolled_back", f"the source host's cutover ended with {outcome!r}")
            return 1
        try:
            self.move_forward()
        except Exception as exc:
            return self.stuck(f"the source host committed, but this host could not follow: {exc}")
        self.record("success", "repointed" + (" (resumed after a restart)" if self.resuming else ""))
        return 0

    def stuck(self, reason: str) -> int:
        """Never back onto the source once it may have been left: units stopped, a red run naming this host."""
        if self.resuming:
            try:  # cancels the start the boot queued behind this resume unit
                self.units.stop()
            except Exception as exc:
                self.log(f"could not keep the units stopped: {exc}")
        self.log(f"STUCK: {reason}")
        self.record("stuck", reason)
        return 1

    def run_follower(self) -> int:
        self.log(f"cutover {self.s['run_id']} (follower) begins on {os.uname().nodename}")
        if not self.began():
            return 1
        try:
            try:
                self.step("arm_resume", self.arm_resume)
            except Exception as exc:  # the primary decides; without the safety net this host still follows
                self.log(f"WARNING: no resume after a crash of this host: {exc}")
            try:
                self.step("stop", self.units.stop)
            except Exception as exc:  # still the primary's call: its drain sees a unit left on the source
                self.stop_failed = True
                self.log(f"a unit did not stop ({exc}); following the source host's decision all the same")
            self.save_state("waiting")
            return self.follow()
        finally:
            self.disarm_resume()

    def run_pooler(self) -> int:
        """Role pooler: this host's Airflow onto its local PgBouncer (same database), or back as it was."""
        self.log(f"move onto PgBouncer {self.s['run_id']} begins on {os.uname().nodename}")
        if not self.began():
            return 1
        try:
            try:
                self.step("arm_resume", self.arm_resume)
                self.step("stop", self.units.stop)
                self.step("repoint", self.repoint)
                self.save_state("repointed")
                self.step("db_check", self.units.db_check)
                self.step("start", self.units.start)
                self.step("healthy", self.healthy)
            except Exception as exc:
                try:
                    self.rollback(clear_mark=False)
                except Exception as undo:
                    self.record("rollback_failed", f"{exc}; then the way back failed too: {undo} (the previous "
                                                   f"airflow.cfg is kept as {self.backup})")
                    raise
                self.record("rolled_back", str(exc))
                return 1
            self.record("success", f"Airflow goes through PgBouncer {self.s['cluster']['host']}:"
                                   f"{self.s['cluster']['port']}")
            self.log(f"moved onto PgBouncer in {time.time() - self.started:.1f}s")
            return 0
        finally:
            self.disarm_resume()

    def run(self) -> int:
        if self.s["role"] == "follower":
            return self.run_follower()
        if self.s["role"] == "pooler":
            return self.run_pooler()
        self.log(f"cutover {self.s['run_id']} begins on {os.uname().nodename}")
        if not self.began():
            return 1
        try:
            try:
                self.step("arm_resume", self.arm_resume)
                self.step("stop", self.units.stop)  # inside: a unit that failed to stop is started again
                self.save_state("copying")
                self.step("drain", self.drain)
                if self.s.get("method") == "logical_replication":
                    self.step("catch_up", self.catch_up)
                    self.step("sync_sequences", self.sync_sequences)
                    self.step("drop_subscription", self.drop_subscription)
                else:
                    self.step("copy", self.copy)
                result = self.step("verify", self.verify)
                if self.s.get("config"):  # the source host also runs Airflow (the runbook's VM1)
                    self.step("repoint", self.repoint)
                    self.save_state("repointed")
                    self.step("db_check", self.units.db_check)
                self.step("mark", self.mark_live)
                self.step("start", self.units.start)
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
        finally:
            self.disarm_resume()

    # ------------------------------------------------------------------ after a restart
    def resume(self) -> int:
        """
        At boot (the resume unit, ordered before this host's Airflow units): complete the cutover a
        restart interrupted. A follower waits for the primary's outcome and moves forward on success,
        back on anything else. The primary never continues a copy: forward if its own outcome was
        already success, else it rolls back (and so every follower with it).
        """
        state = self.load_state()
        if state is None:
            self.log(f"resume: no unfinished cutover ({self.state_path} absent)")
            self.disarm_resume()
            return 0
        if state.get("run_id") != self.s["run_id"] or state.get("role") != self.s["role"]:
            self.log(f"resume: {self.state_path} is of run {state.get('run_id')} ({state.get('role')}), the settings "
                     f"of {self.s['run_id']} ({self.s['role']}): left for an operator")
            return 1
        self.phase = state.get("phase") or "stopping"
        self.log(f"cutover {self.s['run_id']} ({self.s['role']}) resumed on {os.uname().nodename} after a restart "
                 f"in phase {self.phase}")
        try:
            self.load_original(state)
            mine = self.own_outcome()
            if mine:  # recorded before the restart: only the cleanup was left
                self.log(f"resume: this host had already recorded {mine!r}")
                self.resend_own_record()
                if mine == "stuck":
                    self.units.stop()
                return 0 if mine == "success" else 1
            if self.s["role"] == "follower":
                return self.follow()
            pooler = self.s["role"] == "pooler"
            try:
                self.rollback(clear_mark=not pooler)
            finally:
                self.record("rolled_back", f"this host restarted during the move onto PgBouncer (phase {self.phase})"
                            if pooler else f"the source host restarted during the cutover (phase {self.phase}); "
                                           "the copy is not continued")
            return 1
        finally:
            self.disarm_resume()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    resuming = args[:1] == ["--resume"]
    args = args[1:] if resuming else args
    if len(args) != 1:
        print("usage: python -m pgha.cutover [--resume] SETTINGS.json", file=sys.stderr)
        return 2
    secret_files, state = [PGPASS, CLIENT_CERT, CLIENT_KEY], Path(STATE_FILE)
    try:
        settings = json.loads(Path(args[0]).read_text())
        cluster = settings.get("cluster") or {}
        if settings.get("role") == "pooler":  # its own passwords and staged airflow.cfg, never a cutover's files
            secret_files = [p for p in (settings.get("pgpass"), settings.get("staged")) if p]
        else:
            secret_files = [settings.get("pgpass") or PGPASS, cluster.get("sslcert") or CLIENT_CERT,
                            cluster.get("sslkey") or CLIENT_KEY]
        state = Path(settings.get("state_file") or STATE_FILE)
        agent = Agent(settings, settings_path=args[0], resuming=resuming)
        return agent.resume() if resuming else agent.run()
    finally:  # the passwords' file and the client key have done their work once no resume can need them
        if not state.exists():  # (the log and the record stay)
            for path in secret_files:
                Path(path).unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
