"""The lab's secret scan (tests/lab/secret_scan.py): its remote script run here, on planted files and a process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "lab"))

import secret_scan  # noqa: E402  (tests/lab is no package: the lab's tests import it the same way)
from secret_scan import ALLOWED, Hit, problems, scan, secret_forms  # noqa: E402

from pgha import secret_formats  # noqa: E402

HOSTILE = "%@:/'\"\\ $#;"
DB_PASSWORD = "dbTokenAbcdefghijklmnop0123" + HOSTILE
API_PASSWORD = "apiTokenQrstuvwxyz456789012" + HOSTILE
NOT_SECRET = "this file mentions nothing secret\n"


def local(host: str, command: str, stdin: bytes) -> bytes:
    """The lab's runner, here: the same command line through a shell, the secrets on stdin."""
    proc = subprocess.run(command, shell=True, input=stdin, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def plant(root: Path) -> dict[str, Path]:
    """Files as a host could hold them: the password in each of its written forms, and decoys."""
    logs = root / "logs" / "dag_id=pg_ha_migration" / "run_id=x"
    logs.mkdir(parents=True)
    files = {
        "log_url": logs / "attempt=1.log",
        "cfg": root / "airflow.cfg",
        "pgpass": root / "cutover.pgpass",
        "env": root / "airflow.env",
        "yaml": root / "patroni.yml",
        "clean": root / "clean.log",
    }
    url = secret_formats.url_part(DB_PASSWORD)
    files["log_url"].write_text(f"connecting to postgresql://u:{url}@h/db\n")
    files["cfg"].write_text("[database]\nsql_alchemy_conn = " +
                            secret_formats.ini_value(secret_formats.sqlalchemy_url("postgresql", "u", DB_PASSWORD,
                                                                                  "h", 5432, "db")) + "\n")
    files["pgpass"].write_text(secret_formats.pgpass_line("h", 5432, "db", "u", DB_PASSWORD))
    files["env"].write_text('AIRFLOW_CONN_X="{\\"password\\":\\"' + API_PASSWORD.replace("\\", "\\\\\\\\")
                            .replace('"', '\\\\\\"').replace("$", "\\$") + '\\"}"\n')
    files["yaml"].write_text(f"password: {secret_formats.yaml_quote(API_PASSWORD)}\n")
    files["clean"].write_text(NOT_SECRET)
    os.chmod(files["cfg"], 0o600)
    (root / "link-to-outside").symlink_to("/proc/self/environ")  # -r never follows a link
    os.mkfifo(root / "a-fifo")  # nor reads a FIFO (it would wait forever)
    return files


def test_every_form_of_a_secret_is_found_and_nothing_else(tmp_path: Path) -> None:
    files = plant(tmp_path)
    hits = scan({"db": DB_PASSWORD, "api": API_PASSWORD}, hosts=["here"], run=local, streams=[],
                roots=[str(tmp_path), "/no/such/root"])
    found = {(Path(h.path).relative_to(tmp_path).as_posix(), h.secret) for h in hits}
    rel = {key: path.relative_to(tmp_path).as_posix() for key, path in files.items()}
    assert found == {(rel["log_url"], "db"), (rel["cfg"], "db"), (rel["pgpass"], "db"), (rel["env"], "api"),
                     (rel["yaml"], "api")}
    cfg = next(h for h in hits if h.path == str(files["cfg"]))
    me = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    assert cfg.mode == "600" and cfg.owner.startswith(f"{me}:") and cfg.host == "here"


def test_a_secret_on_a_command_line_is_found_and_the_scan_never_finds_itself(tmp_path: Path) -> None:
    secrets = {"db": DB_PASSWORD}
    assert scan(secrets, hosts=["here"], run=local, streams=["processes", "journal", "xcom"], roots=[]) == []
    leak = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", f"--password={DB_PASSWORD}"])
    try:
        time.sleep(0.2)
        hits = scan(secrets, hosts=["here"], run=local, streams=["processes"], roots=[])
    finally:
        leak.kill()
        leak.wait()
    assert hits == [Hit("here", "processes", "db", "-", "-")]


def test_the_secrets_travel_over_stdin_only() -> None:
    command = secret_scan.scan_command()
    stdin = secret_scan.script_input({"db": DB_PASSWORD})
    assert all(form not in command for form in secret_forms(DB_PASSWORD))
    assert DB_PASSWORD.encode() in stdin


def test_the_forms_are_what_pgha_writes() -> None:
    forms = secret_forms(DB_PASSWORD)
    assert secret_formats.url_part(DB_PASSWORD) in forms
    assert "dbTokenAbcdefghijklmnop0123%%25%%40%%3A" in "".join(forms)  # airflow.cfg's URL: % doubled
    assert "dbTokenAbcdefghijklmnop0123%@\\:/'\"\\\\ $#;" in forms  # pgpass: \ and : escaped
    assert "dbTokenAbcdefghijklmnop0123" in forms  # the part every encoding keeps
    assert secret_forms("short") == []  # nothing under 8 characters: it would match anywhere


@pytest.mark.parametrize(("hit", "expected"), [
    (Hit("psg2", "/etc/patroni/patroni.yml", "pg_superuser_password", "600", "postgres:postgres"), None),
    (Hit("psg2", "/etc/patroni/patroni.yml", "pg_superuser_password", "644", "postgres:postgres"),
     "must be mode 600 owned by postgres:postgres"),
    (Hit("vm1", "/etc/redis/pgha-lab.conf", "redis_password", "640", "redis:redis"), None),
    (Hit("vm1", "/var/lib/pgha/backup/airflow.cfg.pgha-bak-20260101T000000.1", "airflow_db_password", "600",
         "root:root"), None),
    (Hit("vm1", "/home/airflow/airflow/logs/dag_id=x/attempt=1.log", "airflow_db_password", "640",
         "airflow:airflow"), "not a file that may hold secrets"),
    (Hit("vm1", "journal", "pg_superuser_password", "-", "-"), "not a file that may hold secrets"),
    (Hit("psg1", "/etc/pgha/airflow.env", "airflow_db_password", "600", "root:root"),
     "not a file that may hold secrets"),  # the lab keeps it on vm1 only
    (Hit("vm1", "/etc/pgha/cutover.pgpass", "airflow_db_password", "600", "root:root"),
     "not a file that may hold secrets"),  # the agent removes it
])
def test_the_allow_list_judges_place_mode_and_owner(hit: Hit, expected: str | None) -> None:
    found = problems([hit], ALLOWED)
    if expected is None:
        assert found == []
    else:
        assert len(found) == 1 and expected in found[0]
