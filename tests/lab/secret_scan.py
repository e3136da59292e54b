"""Where the lab's secrets ended up: every host searched for every secret, in each form pgha writes it.

Not a test itself: ``tests/lab/test_secrets_left_on_hosts.py`` runs it on the lab after a migration and a
drill, ``tests/test_secret_scan.py`` runs its remote part (``SCAN_SCRIPT``) on this machine
against planted files.

What is searched on each host (as root): ``ROOTS`` (Airflow's home with its task logs and
airflow.cfg, /etc, /var/log, /var/lib/pgha, temp directories, Patroni's pgpass file), the
journal (``journalctl -o cat``), the command lines of every process (``ps -eww -o args``) and the
xcom table of every local PostgreSQL's ``airflow_db`` (the old one on vm1, the cluster's on
the database nodes). The secrets reach the remote ``grep -F -f`` over stdin and a bash
process substitution (``printf`` is a builtin): never a command line, so the scan cannot
find itself in ``ps``.

A hit is (host, path, secret, mode, owner). ``ALLOWED`` lists the files that must hold a
secret, each with the mode and owner it must have; any other hit is a leak.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import subprocess
from dataclasses import dataclass
from typing import Callable, Iterable

from pgha import secret_formats

HOSTS = ("vm1", "vm4", "psg1", "psg2", "psg3")
AIRFLOW_HOME = "/home/airflow/airflow"  # the lab's: airflow.cfg and logs/ (the task logs)
ROOTS = (AIRFLOW_HOME, "/etc", "/var/log", "/var/lib/pgha", "/tmp", "/var/tmp", "/run/pgha", "/root/.ssh",
         "/var/lib/postgresql/.pgpass_patroni", "/var/lib/pgsql/.pgpass_patroni")
STREAMS = ("journal", "processes", "xcom")
DATABASE = "airflow_db"

# Run as ``bash -c SCAN_SCRIPT scan "STREAMS" ROOT...``; stdin: name\0form\0 pairs (one pair per form).
# Prints one record per hit: name\0path\0mode\0owner\0 (path "journal", "processes" or "xcom:<port>"
# for what is no file, mode and owner "-").
SCAN_SCRIPT = r"""
set -u
streams=$1; shift
declare -A forms=()
while IFS= read -r -d '' name && IFS= read -r -d '' form; do
  forms[$name]+="$form"$'\n'
done
hit() { printf '%s\0%s\0%s\0%s\0' "$1" "$2" "$3" "$4"; }
roots=()
for root in "$@"; do [ -e "$root" ] && roots+=("$root"); done
xcom() {  # every local PostgreSQL that has the Airflow database: its xcom values
  command -v psql >/dev/null 2>&1 && id postgres >/dev/null 2>&1 || return 0
  for socket in /var/run/postgresql/.s.PGSQL.*; do
    [ -S "$socket" ] || continue
    runuser -u postgres -- psql -X -q -At -p "${socket##*.}" -d "$PGHA_SCAN_DATABASE" \
      -c 'SELECT value::text FROM xcom' 2>/dev/null
  done
}
stream() {
  case $1 in
    journal) journalctl --no-pager -o cat 2>/dev/null ;;
    processes) ps -eww -o args= 2>/dev/null ;;  # -ww: whole command lines, never cut at 80 columns
    xcom) xcom ;;
  esac
}
for name in "${!forms[@]}"; do
  patterns=${forms[$name]%$'\n'}
  if [ ${#roots[@]} -gt 0 ]; then
    grep -rlsF --null --devices=skip --exclude-dir=journal -f <(printf '%s\n' "$patterns") -- "${roots[@]}" |
      while IFS= read -r -d '' file; do
        hit "$name" "$file" "$(stat -c %a -- "$file")" "$(stat -c %U:%G -- "$file")"
      done
  fi
  for source in $streams; do
    if stream "$source" | grep -qF -f <(printf '%s\n' "$patterns"); then
      hit "$name" "$source" - -
    fi
  done
done
exit 0
"""


@dataclass(frozen=True)
class Hit:
    host: str
    path: str
    secret: str
    mode: str
    owner: str

    def __str__(self) -> str:
        return f"{self.host}:{self.path} holds {self.secret} (mode {self.mode}, owner {self.owner})"


@dataclass(frozen=True)
class Allowed:
    """A file that must hold secrets: where (host and path globs), which, and how it must be kept."""

    hosts: str
    path: str
    modes: tuple[str, ...]
    owner: str
    why: str

    def covers(self, hit: Hit) -> bool:
        return fnmatch.fnmatchcase(hit.host, self.hosts) and fnmatch.fnmatchcase(hit.path, self.path)

    def problem(self, hit: Hit) -> str | None:
        if hit.mode not in self.modes or hit.owner != self.owner:
            return f"{hit}: must be mode {' or '.join(self.modes)} owned by {self.owner} ({self.why})"
        return None


# The files that must hold secrets (README, "Files that hold secrets"), and how.
ALLOWED = (
    Allowed("psg*", "/etc/patroni/patroni.yml", ("600",), "postgres:postgres",
            "Patroni's config: superuser, replication, rewind and REST API logins"),
    Allowed("psg*", "/var/lib/postgresql/.pgpass_patroni", ("600",), "postgres:postgres",
            "Patroni's password file for pg_basebackup and pg_rewind"),
    Allowed("psg*", "/var/lib/pgsql/.pgpass_patroni", ("600",), "postgres:postgres",
            "Patroni's password file (RHEL family)"),
    Allowed("vm[14]", f"{AIRFLOW_HOME}/airflow.cfg", ("600",), "airflow:airflow",
            "Airflow's database URL, fernet key, JWT secret, broker URL"),
    Allowed("vm1", f"{AIRFLOW_HOME}/simple_auth_manager_passwords.json", ("600",), "airflow:airflow",
            "the lab's Airflow UI login"),
    Allowed("vm1", "/etc/pgha/airflow.env", ("600",), "root:root",
            "the lab's Airflow connections (environment secrets backend), read by systemd"),
    Allowed("vm1", "/etc/redis/pgha-lab.conf", ("640",), "redis:redis",
            "the lab's Redis requirepass; redis-server runs as redis"),
    Allowed("vm1", "/etc/haproxy/haproxy.cfg", ("600",), "root:root",
            "HAProxy's stats page login (HAProxy reads its config as root)"),
    Allowed("vm1", "/etc/haproxy/haproxy.cfg.pgha-bak-*", ("600",), "root:root",
            "replaced haproxy.cfg, its stats login (newest 5)"),
    Allowed("vm[14]", "/var/lib/pgha/airflow.cfg.pgha-new", ("600",), "root:root",
            "phase 8's staged airflow.cfg, until the cutover installs it"),
    Allowed("vm[14]", "/var/lib/pgha/backup/airflow.cfg.pgha-bak-*", ("600",), "root:root",
            "the cutover's backups of airflow.cfg (newest 5)"),
)


def secret_forms(value: str) -> list[str]:
    """``value`` as each format pgha (and the lab) writes it: raw, percent-encoded (URLs), airflow.cfg's
    doubled %, pgpass's escapes, YAML, JSON, a libpq string, the lab's environment file; and its longest
    run of characters no format escapes, which every encoding keeps (found even in one not listed)."""
    url = secret_formats.url_part(value)
    as_json = json.dumps(value)[1:-1]
    forms = {
        value, url, value.replace("%", "%%"), url.replace("%", "%%"),
        secret_formats.pgpass_line("h", 1, "d", "u", value).rstrip("\n")[len("h:1:d:u:"):],
        secret_formats.yaml_quote(value)[1:-1], as_json,
        "".join("\\" + c if c in '\\"$`' else c for c in as_json),
    }
    if "\n" not in value and "\r" not in value and "\0" not in value:
        forms.add(secret_formats.libpq_value(value)[1:-1])
    plain = max(re.findall(r"[A-Za-z0-9_-]+", value), key=len, default="")
    if len(plain) >= 16:
        forms.add(plain)
    return sorted(f for f in forms if len(f) >= 8 and "\n" not in f and "\0" not in f)


def script_input(secrets: dict[str, str]) -> bytes:
    """The scan's stdin: name\\0form\\0 for every form of every secret."""
    return b"".join(f"{name}\0{form}\0".encode() for name, value in sorted(secrets.items())
                    for form in secret_forms(value))


def scan_command(streams: Iterable[str] = STREAMS, roots: Iterable[str] = ROOTS) -> str:
    """The remote command line (no secret in it)."""
    return shlex.join(["env", f"PGHA_SCAN_DATABASE={DATABASE}", "bash", "-c", SCAN_SCRIPT, "scan",
                       " ".join(streams), *roots])


def parse_hits(host: str, output: bytes) -> list[Hit]:
    fields = output.decode(errors="replace").split("\0")
    return sorted({Hit(host, fields[i + 1], fields[i], fields[i + 2], fields[i + 3])
                   for i in range(0, len(fields) - 3, 4)}, key=lambda h: (h.host, h.path, h.secret))


Runner = Callable[[str, str, bytes], bytes]  # (host, command, stdin) -> stdout


def lab_runner(host: str, command: str, stdin: bytes) -> bytes:
    """``lab/lab ssh HOST COMMAND`` (root on the lab host) with ``stdin``."""
    from pghalab.settings import LAB_COMMAND

    proc = subprocess.run([str(LAB_COMMAND), "ssh", host, command], input=stdin, capture_output=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"the secret scan on {host} failed ({proc.returncode}): {proc.stderr.decode()[-2000:]}")
    return proc.stdout


def scan(secrets: dict[str, str], hosts: Iterable[str] = HOSTS, run: Runner = lab_runner,
         streams: Iterable[str] = STREAMS, roots: Iterable[str] = ROOTS) -> list[Hit]:
    """Every place on ``hosts`` that holds one of ``secrets`` (name -> value)."""
    command, stdin = scan_command(streams, roots), script_input(secrets)
    return [hit for host in hosts for hit in parse_hits(host, run(host, command, stdin))]


def problems(hits: Iterable[Hit], allowed: Iterable[Allowed] = ALLOWED) -> list[str]:
    """A leak (a hit no entry covers) or an allowed file kept with the wrong mode or owner."""
    allowed = list(allowed)
    out = []
    for hit in hits:
        entry = next((a for a in allowed if a.covers(hit)), None)
        if entry is None:
            out.append(f"{hit}: not a file that may hold secrets")
        elif (problem := entry.problem(hit)) is not None:
            out.append(problem)
    return out
