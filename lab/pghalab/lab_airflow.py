"""The lab's Airflow seen from the outer machine: REST API, health, DAG parsing, the
history DAG, the Celery worker, the UI address.
"""

import json
import subprocess
import time

from .topology import AIRFLOW_HOST, HOSTS, WORKER_HOST, api_url
from .common import Timer, die, log
from .record import load_secrets
from .ssh import ssh_run
from .airflow_api import AirflowAPI


def api_client():
    return AirflowAPI(api_url(), "admin", load_secrets()["admin_password"])


def http_json(url, timeout=5):
    import urllib.request
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def wait_airflow(timeout=300, fatal=True):
    """Until /api/v2/monitor/health says the metadatabase and every component are healthy."""
    deadline = time.monotonic() + timeout
    health = None
    while time.monotonic() < deadline:
        try:
            health = http_json(f"{api_url()}/api/v2/monitor/health")
            if all((health.get(c) or {}).get("status") == "healthy"
                   for c in ("metadatabase", "scheduler", "triggerer", "dag_processor")):
                return health
        except (OSError, ValueError):
            pass
        time.sleep(1)
    if not fatal:
        return None
    die(f"Airflow on {AIRFLOW_HOST} not healthy after {timeout}s: {health} "
        f"(lab/lab ssh {AIRFLOW_HOST} journalctl -u 'airflow-*')")


def wait_parsed(since, timeout=180):
    """Until every DAG file was parsed after `since` (epoch seconds) without an import error,
    asking for each parse at once. Stale DAGs count: a file parsed while pgha was being
    reinstalled fails to import and its DAGs turn stale, which the API hides by default."""
    api = api_client()
    asked = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        dags = api.call("GET", "/api/v2/dags?limit=1000&exclude_stale=false")["dags"]
        errors = api.call("GET", "/api/v2/importErrors?limit=100")["import_errors"]
        late = [d for d in dags if d["is_stale"] or parsed_at(d) < since]
        for d in late:
            if time.monotonic() - asked.get(d["file_token"], 0) > 20:
                api.call("PUT", f"/api/v2/parseDagFile/{d['file_token']}")
                asked[d["file_token"]] = time.monotonic()
        if dags and not late and not errors:
            return
        time.sleep(2)
    log(f"warning: DAG files not re-parsed within {timeout}s of the deploy (import errors: "
        f"{[e.get('filename') for e in errors]}, late: {[d['dag_id'] for d in late]})")


def parsed_at(dag):
    import datetime
    stamp = dag.get("last_parsed_time")
    if not stamp:
        return 0
    return datetime.datetime.fromisoformat(stamp).timestamp()  # Python >= 3.11 reads the "Z"


def psql(name, sql):
    return ssh_run(name, "runuser -u postgres -- psql -X -At -F '|' -d airflow_db -f -",
                   stdin=sql.encode()).strip()


HISTORY_TABLES = ("dag_run", "task_instance", "xcom", "log", "job")


def row_counts(name=AIRFLOW_HOST):
    sql = " UNION ALL ".join(f"SELECT '{t}', count(*) FROM {t}" for t in HISTORY_TABLES) + ";"
    return {t: int(c) for t, c in (line.split("|") for line in psql(name, sql).splitlines())}


def make_history(timeout=1800):
    """Unpause lab_history, wait until its window is done, pause it again."""
    t = Timer()
    api = api_client()
    deadline = time.monotonic() + 300
    while True:  # parsed by the dag-processor after the deploy
        try:
            api.call("GET", "/api/v2/dags/lab_history", retry_for=0)
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                die("lab_history is not known to Airflow (import error? GET /api/v2/importErrors)")
            time.sleep(2)
    api.call("PATCH", "/api/v2/dags/lab_history", {"is_paused": False})
    log("history: lab_history unpaused (hourly runs, caught up)")
    query = ("SELECT count(*), count(*) FILTER (WHERE state IN ('queued', 'running')), "
             "count(*) FILTER (WHERE state = 'failed'), "
             "(SELECT next_dagrun_create_after IS NULL FROM dag WHERE dag_id = 'lab_history') "
             "FROM dag_run WHERE dag_id = 'lab_history';")
    deadline, shown = time.monotonic() + timeout, None
    while True:
        runs, active, failed, all_created = psql(AIRFLOW_HOST, query).split("|")
        line = f"{runs} runs, {active} active, {failed} failed"
        if line != shown:
            log(f"history: [{t}] {line}")
            shown = line
        if int(failed):
            die(f"lab_history: {failed} failed runs (see the UI: {api_url()})")
        if int(runs) and not int(active) and all_created == "t":
            break
        if time.monotonic() > deadline:
            die(f"lab_history not done after {timeout}s")
        time.sleep(5)
    api.call("PATCH", "/api/v2/dags/lab_history", {"is_paused": True})
    log(f"history: done in {t}; lab_history paused again")


def worker_list(name=WORKER_HOST):
    """Celery workers that answer through the broker, asked from `name` (its broker_url)."""
    try:
        out = ssh_run(name, "pgha-airflow celery list-workers -o json 2>/dev/null", check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return []
    # the JSON list is the last line that parses as one (Airflow 3.0 logs "[<time>] {...} INFO" lines to stdout)
    for line in reversed(out.splitlines()):
        try:
            workers = json.loads(line)
            return [w["worker_name"] for w in workers]
        except (ValueError, KeyError, TypeError):
            continue
    return []


def wait_worker(name=WORKER_HOST, timeout=90):
    """Until the worker on `name` answers through vm1's broker; restarts it once if it does not
    (a Celery worker gives up on a broker that stayed away too long)."""
    want = f"celery@{name}"
    for attempt in (1, 2):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if want in worker_list(name):
                return
            time.sleep(2)
        if attempt == 1:
            log(f"{name}: {want} does not answer through the broker after {timeout}s; restarting it")
            ssh_run(name, "systemctl restart airflow-celery-worker")
    die(f"{want} does not answer through the broker on {AIRFLOW_HOST} "
        f"(lab/lab ssh {name} journalctl -u airflow-celery-worker)")


def print_ui(counts=None):
    url = api_url()
    password = load_secrets().get("admin_password", "?")
    print(f"Airflow UI  {url}  (from this machine)")
    print(f"login       admin / {password}")
    print(f"REST        TOKEN=$(curl -s -X POST {url}/auth/token -H 'Content-Type: application/json' "
          f"-d '{{\"username\": \"admin\", \"password\": \"{password}\"}}' | python3 -c "
          "'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')")
    print(f"            curl -s -H \"Authorization: Bearer $TOKEN\" {url}/api/v2/dags")
    print(f"CLI         lab/lab ssh {AIRFLOW_HOST} pgha-airflow dags list")
    print(f"worker      celery@{WORKER_HOST} ({HOSTS[WORKER_HOST]['ip']}): tasks with executor=\"CeleryExecutor\" "
          f"(e.g. DAG lab_celery_smoke); lab/lab ssh {WORKER_HOST} pgha-airflow celery list-workers")
    if counts:
        print("airflow_db  " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def cutover_report(api, dag_id, run_id, task_id="cutover_outcome"):
    """Lines saying how the cutover ended: each host's outcome, how long its Airflow was stopped (from
    the agents' rows in pgha_cutover_log, as the cutover_outcome task returned them) and where the
    agents' log is; for a failed task, its own lines that say why."""
    ti = next((t for t in api.task_instances(dag_id, run_id) if t["task_id"] == task_id), None)
    if ti is None:
        return [f"cutover: no {task_id} task in run {run_id}"]
    if ti["state"] != "success":
        lines = [f"cutover: {task_id} {ti['state']}"]
        try:
            log = api.task_log(dag_id, run_id, task_id, max(ti["try_number"], 1))
        except Exception as exc:  # the report must not hide the run's state
            return lines + [f"cutover: no log ({exc})"]
        said = [line for line in log if " agent: " in line or "agents' log" in line or "Exception" in line
                or "rolled_back" in line or "waiting for the cutover" in line]
        return lines + [f"  {line.strip()}" for line in said[-12:]]
    value = api.xcom(dag_id, run_id, task_id)
    if not value.get("run_id"):
        return [f"cutover: {value.get('detail')}"]
    lines = [f"cutover: {value['outcome']} (agent run {value['run_id']}, "
             f"{value.get('heartbeats')} scheduler heartbeat(s) in the cluster database)"]
    for host, seen in sorted(value["hosts"].items()):
        lines.append(f"  {host:<6} {seen['role']:<9} {seen['outcome']}: {seen['detail']}; "
                     f"Airflow stopped {seen['stopped_s']:.1f}s")
    lines.append(f"  longest stop {value['stopped_s']:.1f}s; log {value['log']} on each of "
                 f"{', '.join(sorted(value['hosts']))} (lab/lab ssh {AIRFLOW_HOST} cat {value['log']}); "
                 "rows in pgha_cutover_log (cluster, database postgres)")
    return lines


MAIL_DIR = "/var/lib/pgha-lab/mail"  # the SMTP sink of pgha's alerts on vm1 (lab/provision/mail_sink.py)
_READ_MAIL = f"""
import json, pathlib
d = pathlib.Path({MAIL_DIR!r})
print(json.dumps({{p.name: p.read_text(errors="replace") for p in sorted(d.glob("*.eml"))}}))
"""


def delivered_mail(name=AIRFLOW_HOST):
    """Every message the SMTP sink on vm1 kept, oldest first: file, from, to, subject and the body as text."""
    return read_mail(json.loads(ssh_run(name, "/usr/bin/python3 -", stdin=_READ_MAIL.encode()) or "{}"))


def read_mail(files):
    """{file name: message as kept by the sink} -> [{file, date, from, to, subject, body (text)}] in name order."""
    import email
    import email.policy
    import html
    import re

    out = []
    for file_name, raw in sorted(files.items()):
        message = email.message_from_string(raw, policy=email.policy.default)
        part = message.get_body(preferencelist=("plain", "html"))
        body = part.get_content() if part is not None else ""
        if part is not None and part.get_content_subtype() == "html":
            body = html.unescape(re.sub(r"<[^>]+>", "", body))
        out.append({"file": f"{MAIL_DIR}/{file_name}", "date": message["Date"], "from": message["From"],
                    "to": message["To"], "subject": message["Subject"], "body": body})
    return out
