"""Alerts (pgha.notify) reach a real SMTP server (aiosmtpd on loopback): a task that failed for good,
a drill skipped on a degraded cluster, a notifier named by class path; a bad notify: section is an
inventory error naming the field."""

from __future__ import annotations

import email
import email.policy
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from aiosmtpd.controller import Controller
from pgha.compat import AirflowFailException, AirflowSkipException
from fixture_secrets import PATRONI_REST_PASSWORD, POSTGRES_PASSWORD
from pgha.inventory import InventoryError, parse_inventory
from pgha.operators.drill import DrillPrecheckOperator
from pgha_testing import AIRFLOW_RELEASE, set_connection, shipped_inventory, write_inventory
from recording_host import DEBIAN_12, ClusterApis, Fleet, Unit, fleet_inventory
from services import free_port

# The loopback drill cluster has fixed addresses and ports (127.0.0.11-13): one pytest-xdist worker at a time.
pytestmark = pytest.mark.xdist_group("drill_lab")

BASE_URL = "http://airflow.example.test:8080"
OPS = "ops@example.com"
SMTP_NOTIFIER = "airflow.providers.smtp.notifications.smtp:SmtpNotifier"


class Mailbox:
    """An SMTP server on 127.0.0.1 (aiosmtpd) keeping every message it accepts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self._arrived = threading.Condition()
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        with self._arrived:
            self.messages.append(message)  # type: ignore[arg-type]
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self._arrived.notify_all()
        return "250 Message accepted"

    def wait_for(self, count: int = 1, timeout: float = 10) -> list[EmailMessage]:
        with self._arrived:
            self._arrived.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()


def body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html", "plain"))
    assert part is not None
    return part.get_content()


@pytest.fixture
def mailbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[Mailbox]:
    """The SMTP server, Airflow's connection ``smtp_default`` to it (plain SMTP, no retries), the UI's base_url."""
    box = Mailbox()
    box.start()
    set_connection(monkeypatch, "smtp_default", conn_type="smtp", host="127.0.0.1", port=box.port,
                   extra={"disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 5})
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", BASE_URL)
    try:
        yield box
    finally:
        box.stop()


def notify_section(**changes: Any) -> dict[str, Any]:
    return {"notifier": "smtp", "conn_id": "smtp_default", "to": [OPS], "from": "airflow@example.com", **changes}


# ------------------------------------------------------------------ a task that failed for good


def drill_run(inventory: str, scenario: str) -> tuple[str, dict[str, str | None]]:
    """One run of dags/pg_ha_failover_drill.py through dag.test(): Airflow's task runner calls the callbacks."""
    from drill_lab import airflow_metadata_db, drill_dag

    airflow_metadata_db()
    run = drill_dag().test(run_conf={"inventory_path": inventory, "scenario": scenario})
    return run.run_id, {ti.task_id: (str(ti.state) if ti.state else None) for ti in run.get_task_instances()}


def test_a_failed_task_mails_its_reason_with_the_log_link(mailbox: Mailbox, tmp_path: Path) -> None:
    """The drill DAG's precheck fails for good (a scenario the inventory has no fault commands for):
    Airflow runs the DAG's on_failure_callback, the mail carries the exception's text verbatim."""
    raw = shipped_inventory()
    raw["notify"] = notify_section()
    run_id, states = drill_run(write_inventory(tmp_path, raw), "host_crash")
    assert states["precheck"] == "failed"

    [message] = mailbox.wait_for()
    text = body(message)
    assert mailbox.envelopes == [("airflow@example.com", [OPS])]
    if AIRFLOW_RELEASE < (3, 3):  # dag.test() before 3.3 gives on_failure_callback no exception (a real task run does)
        assert message["Subject"] == "pgha: pg_ha_failover_drill precheck failed: unknown"
        assert "task:   precheck failed (try 1)" in text
        return
    assert message["Subject"].startswith("pgha: pg_ha_failover_drill precheck failed: AirflowFailException: "
                                         "scenario host_crash needs drill.inject_commands.host_crash")
    assert mailbox.envelopes == [("airflow@example.com", [OPS])]
    assert "DAG:    pg_ha_failover_drill" in text and f"run:    {run_id}" in text
    assert "task:   precheck failed (try 1)" in text
    assert ("reason:\nAirflowFailException: scenario host_crash needs drill.inject_commands.host_crash "
            "(inject/heal commands with {node}) and drill.fault_injector") in text
    assert f'<a href="{BASE_URL}/dags/pg_ha_failover_drill/runs/{quote(run_id)}/tasks/precheck?try_number=1">' in text
    assert len(mailbox.wait_for(2, timeout=1)) == 1  # the tasks that skipped after it sent nothing


def test_a_failure_alert_that_cannot_be_sent_is_logged_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    from pgha.notify import alert_failure

    set_connection(monkeypatch, "smtp_default", conn_type="smtp", host="127.0.0.1", port=free_port(),
                   extra={"disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 2})
    raw = shipped_inventory()
    raw["notify"] = notify_section()
    context = {"params": {"inventory_path": write_inventory(tmp_path, raw)}, "run_id": "manual__1",
               "exception": RuntimeError("boom")}
    alert_failure(context)
    assert "pgha alert NOT SENT for pgha: ? ? failed: RuntimeError: boom" in caplog.text


# ------------------------------------------------------------------ a drill skipped on a degraded cluster


@pytest.fixture
def logins(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "pgha_patroni_api", conn_type="http", login="patroni", password=PATRONI_REST_PASSWORD)
    for conn_id in ("pgha_pg_superuser", "pgha_airflow_db"):
        set_connection(monkeypatch, conn_id, conn_type="postgres", login="postgres", password=POSTGRES_PASSWORD)


def degraded_drill(fleet: Fleet, tmp_path: Path, apis: ClusterApis) -> str:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, notify=notify_section(), **apis.sections())
    for node in ("psg1", "psg2", "psg3"):
        fleet[node].units["patroni.service"] = Unit(enabled=True, active=True)
    apis.members[0].update(role="replica", state="stopped")  # no leader: a failover is under way
    return inventory


def precheck(inventory: str) -> None:
    """The drill DAG's precheck with the context Airflow gives it (minus the task instance)."""
    from airflow.sdk import DAG

    with DAG(dag_id="pg_ha_failover_drill", schedule=None) as dag:
        task = DrillPrecheckOperator(task_id="precheck", inventory_path=inventory)
    task.execute({"dag": dag, "task": task, "params": {"scenario": "patroni_stop"},
                  "run_id": "scheduled__2026-01-02T03:00:00+00:00"})


def test_a_drill_skipped_on_a_degraded_cluster_mails_the_reason(mailbox: Mailbox, fleet: Fleet, tmp_path: Path,
                                                                apis: ClusterApis, logins: None) -> None:
    inventory = degraded_drill(fleet, tmp_path, apis)
    with pytest.raises(AirflowSkipException, match="cluster not healthy, not drilling: expected exactly one leader"):
        precheck(inventory)
    [message] = mailbox.wait_for()
    text = body(message)
    assert message["Subject"] == ("pgha: pg_ha_failover_drill precheck skipped: cluster not healthy, not drilling: "
                                  "expected exactly one leader, found none; psg1 is replica/stopped")
    assert "task:   precheck skipped" in text and "run:    scheduled__2026-01-02T03:00:00+00:00" in text
    assert ("reason:\ncluster not healthy, not drilling: expected exactly one leader, found none; "
            "psg1 is replica/stopped") in text
    run = "scheduled__2026-01-02T03%3A00%3A00%2B00%3A00"
    assert f'log:    <a href="{BASE_URL}/dags/pg_ha_failover_drill/runs/{run}/tasks/precheck">' in text
    assert apis.changes() == []


def test_a_skip_whose_alert_cannot_be_sent_fails_instead(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                         logins: None, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "smtp_default", conn_type="smtp", host="127.0.0.1", port=free_port(),
                   extra={"disable_ssl": True, "disable_tls": True, "retry_limit": 0, "timeout": 2})
    inventory = degraded_drill(fleet, tmp_path, apis)
    with pytest.raises(AirflowFailException, match=r"(?s)cluster not healthy, not drilling: .*\(failed instead of "
                                                   r"skipping: the alert was not sent: smtp: "):
        precheck(inventory)


def test_a_skip_without_a_notify_section_still_skips(fleet: Fleet, tmp_path: Path, apis: ClusterApis,
                                                     logins: None) -> None:
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, **apis.sections())
    apis.members[0].update(role="replica", state="stopped")
    with pytest.raises(AirflowSkipException, match="cluster not healthy"):
        precheck(inventory)


# ------------------------------------------------------------------ any notifier, by class path


def test_a_notifier_named_by_class_path_gets_its_kwargs_and_the_alert(mailbox: Mailbox, tmp_path: Path) -> None:
    """Airflow's SMTP notifier through the generic path: what a Slack or Teams notifier gets the same way."""
    from airflow.sdk.log import mask_secret
    from pgha.notify import alert_failure

    mask_secret("Tr0ub4dor&3")  # as Airflow does with every connection password a task reads
    raw = shipped_inventory()
    raw["notify"] = {"notifier": SMTP_NOTIFIER, "kwargs": {
        "to": ["dba@example.com", OPS], "from_email": "pgha@example.com", "smtp_conn_id": "smtp_default",
        "subject": "[{{ params.env }}] {{ pgha_alert.subject }}", "html_content": "{{ pgha_alert.html }}"}}
    context = {"params": {"inventory_path": write_inventory(tmp_path, raw), "env": "prod"},
               "run_id": "manual__2026-01-05",
               "exception": AirflowFailException("etcd has no quorum (login postgres:Tr0ub4dor&3)")}
    alert_failure(context)
    [message] = mailbox.wait_for()
    assert message["Subject"] == ("[prod] pgha: ? ? failed: AirflowFailException: etcd has no quorum "
                                  "(login postgres:***)")
    assert mailbox.envelopes == [("pgha@example.com", ["dba@example.com", OPS])]
    assert "AirflowFailException: etcd has no quorum (login postgres:***)" in body(message)
    assert "Tr0ub4dor" not in message.as_string()


def test_the_alert_is_never_turned_into_another_type_by_a_native_dag() -> None:
    """The drill DAG renders templates as native objects: the alert's fields must stay text."""
    from airflow.sdk import DAG, BaseNotifier
    from pgha.notify import Alert

    class Keep(BaseNotifier):
        template_fields = ("subject", "text")

        def __init__(self, subject: str, text: str) -> None:
            super().__init__()
            self.subject, self.text = subject, text

        def notify(self, context: Any) -> None:
            self.got = (self.subject, self.text)

    dag = DAG(dag_id="native", schedule=None, render_template_as_native_obj=True)
    alert = Alert(dag_id="native", run_id="r", task_id="t", outcome="failed", reason="[1, 2]", log_url="http://x/")
    notifier = Keep(subject="{{ pgha_alert.subject }}", text="{{ pgha_alert.text }}")
    notifier({"dag": dag, "pgha_alert": alert.as_template_value()})
    assert notifier.got == (alert.subject, alert.text)


# ------------------------------------------------------------------ the notify: section in the inventory


def with_notify(section: Any) -> dict[str, Any]:
    raw = shipped_inventory()
    raw["notify"] = section
    return raw


BAD_NOTIFY: list[tuple[str, Any, str]] = [
    ("module not importable", {"notifier": "no_such_pkg.notifications:Pager",
                               "kwargs": {"text": "{{ pgha_alert.text }}"}},
     "notify.notifier: cannot import 'no_such_pkg.notifications': ModuleNotFoundError"),
    ("class not in module", {"notifier": "airflow.providers.smtp.notifications.smtp:Pager",
                             "kwargs": {"text": "{{ pgha_alert.text }}"}},
     "notify.notifier: airflow.providers.smtp.notifications.smtp has no 'Pager'"),
    ("not a notifier", {"notifier": "json:JSONDecoder", "kwargs": {"strict": "{{ pgha_alert.text }}"}},
     "notify.notifier: json:JSONDecoder is not an Airflow notifier (a subclass of airflow.sdk.BaseNotifier)"),
    ("not a class path", {"notifier": "slack", "kwargs": {}}, "notify.notifier: 'slack' is not smtp or module.path:ClassName"),
    ("path with a newline", {"notifier": "json:JSONDecoder\n", "kwargs": {}}, "notify.notifier: 'json:JSONDecoder\\n'"),
    ("kwargs the notifier does not take", {"notifier": SMTP_NOTIFIER, "kwargs": {
        "recipients": [OPS], "html_content": "{{ pgha_alert.html }}"}},
     "notify.kwargs: SmtpNotifier does not take them: TypeError: missing a required argument: 'to'"),
    ("custom notifier never given the alert", {"notifier": SMTP_NOTIFIER, "kwargs": {"to": [OPS]}},
     "notify.kwargs: no argument carries the alert"),
    ("smtp fields on a custom notifier", {"notifier": SMTP_NOTIFIER, "to": [OPS],
                                          "kwargs": {"to": [OPS], "html_content": "{{ pgha_alert.html }}"}},
     "notify.to: only for notifier smtp"),
    ("smtp without recipients", {"conn_id": "smtp_default"}, "notify.to: is required"),
    ("bad address", notify_section(to=["ops at example.com"]),
     "notify.to[0]: 'ops at example.com' is not an e-mail address"),
    ("address with a newline", notify_section(**{"from": "a@example.com\nBcc: x@evil.test"}), "notify.from: "),
    ("conn id with a newline", notify_section(conn_id="smtp_default\n"), "notify.conn_id: 'smtp_default\\n'"),
    ("kwarg name not an identifier", notify_section(kwargs={"mime-subtype": "alternative"}), "notify.kwargs: "),
    ("unknown field", notify_section(channel="#ops"), "notify: unknown field(s) 'channel'"),
    ("smtp kwargs it does not take", notify_section(kwargs={"priority": "high"}),
     "notify.kwargs: SmtpNotifier does not take them: TypeError: BaseNotifier.__init__() got an unexpected "
     "keyword argument 'priority'"),
]
# On Airflow 3.0 the SMTP provider's notifier drops the keywords it does not know (it hands them to
# BaseNotifier only on 3.1+), so nothing can tell such a section from a good one there.
BAD_ONLY_FROM_3_1 = {"smtp kwargs it does not take"}


@pytest.mark.parametrize("section, expected", [
    pytest.param(s, e, id=i, marks=[pytest.mark.skipif(
        i in BAD_ONLY_FROM_3_1 and AIRFLOW_RELEASE < (3, 1),
        reason="Airflow 3.0's SmtpNotifier takes (and drops) any keyword")]) for i, s, e in BAD_NOTIFY])
def test_a_bad_notify_section_is_an_inventory_error_naming_the_field(section: Any, expected: str) -> None:
    with pytest.raises(InventoryError) as err:
        parse_inventory(with_notify(section))
    assert expected in str(err.value)


def test_the_notify_section_is_optional_and_smtp_by_default() -> None:
    assert parse_inventory(shipped_inventory()).notify is None
    notify = parse_inventory(with_notify({"to": [OPS]})).notify
    assert notify is not None and (notify.notifier, notify.conn_id, notify.to) == ("smtp", None, (OPS,))
    notify = parse_inventory(with_notify(notify_section(kwargs={"cc": ["dba@example.com"]}))).notify
    assert notify is not None and notify.from_email == "airflow@example.com" and notify.kwargs == {
        "cc": ["dba@example.com"]}


def test_the_lab_inventory_mails_the_lab_sink() -> None:
    from pgha.inventory import load_inventory
    from pgha_testing import REPO_ROOT

    notify = load_inventory(REPO_ROOT / "lab" / "inventory.yml").notify
    assert notify is not None and notify.notifier == "smtp" and notify.conn_id == "smtp_default" and notify.to


# ------------------------------------------------------------------ the lab's SMTP sink (without the lab)


def test_the_lab_mail_sink_keeps_each_alert_as_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """lab/provision/mail_sink.py (as the unit on vm1 runs it) and the lab's smtp_default connection: the
    lab inventory's notify: section delivers, `lab/lab mail` reads the files back."""
    import socket
    import subprocess
    import sys
    import time

    from pgha.inventory import load_inventory
    from pgha.notify import Alert, deliver
    from pgha_testing import REPO_ROOT

    monkeypatch.syspath_prepend(str(REPO_ROOT / "lab" / "provision"))
    monkeypatch.syspath_prepend(str(REPO_ROOT / "lab"))
    import airflow_host
    from pghalab import topology
    from pghalab.lab_airflow import MAIL_DIR, read_mail

    assert (airflow_host.MAIL_PORT, airflow_host.MAIL_DIR, MAIL_DIR) == (
        topology.MAIL_SINK_PORT, "/var/lib/pgha-lab/mail", "/var/lib/pgha-lab/mail")
    vm1 = topology.address(topology.AIRFLOW_HOST)
    conn = airflow_host.connections(airflow_host.complete({}), {}, {}, {"host": "h", "port": 1, "host_key": "k"},
                                    mail_host=vm1)["smtp_default"]
    assert (conn["host"], conn["port"]) == (vm1, topology.MAIL_SINK_PORT)
    unit = airflow_host.bundle(airflow_host.complete({}), {}, {}, "key", vm1, {},
                               {"host": "h", "port": 1, "host_key": "k", "key": "k"})["pgha-mail-sink.service"][0]
    assert f"mail_sink.py {vm1} {topology.MAIL_SINK_PORT} /var/lib/pgha-lab/mail\n" in unit.decode()
    assert "StateDirectory=pgha-lab/mail\n" in unit.decode()

    port, mail_dir = free_port(), tmp_path / "mail"
    mail_dir.mkdir()
    sink = subprocess.Popen([sys.executable, str(REPO_ROOT / "lab" / "provision" / "mail_sink.py"), "127.0.0.1",
                             str(port), str(mail_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and sink.poll() is None, "the sink did not start"
                time.sleep(0.1)
        set_connection(monkeypatch, "smtp_default", **{**conn, "host": "127.0.0.1", "port": port})
        alert = Alert(dag_id="pg_ha_failover_drill", run_id="scheduled__2026-01-02T03:00:00+00:00",
                      task_id="precheck", outcome="skipped", reason="cluster not healthy, not drilling: "
                      "psg2: streaming 20 MB behind", log_url=f"{topology.api_url()}/dags/pg_ha_failover_drill")
        deliver(load_inventory(REPO_ROOT / "lab" / "inventory.yml").notify, alert, {})
        files = {p.name: p.read_text() for p in mail_dir.glob("*.eml")}
    finally:
        sink.terminate()
        sink.wait(10)
    [mail] = read_mail(files)
    assert mail["subject"] == alert.subject and mail["to"] == "ops@pgha-lab.test"
    assert mail["from"] == "airflow@pgha-lab.test"
    assert "reason:\ncluster not healthy, not drilling: psg2: streaming 20 MB behind" in mail["body"]
    assert [p.name for p in mail_dir.iterdir()] == list(files)  # no partial file left behind


def test_a_mapped_task_on_a_host_names_the_host_and_its_map_index() -> None:
    from types import SimpleNamespace

    from pgha.notify import alert_from_context

    ti = SimpleNamespace(dag_id="pg_ha_migration", run_id="manual__1", task_id="phase4_patroni.configure_patroni",
                         map_index=1, try_number=3, log_url="http://airflow:8080/dags/pg_ha_migration/runs/manual__1/"
                         "tasks/phase4_patroni.configure_patroni/mapped/1?try_number=3")
    alert = alert_from_context({"ti": ti, "task": SimpleNamespace(host="psg2")}, "failed", "patroni.yml invalid")
    assert alert.text == (
        "DAG:    pg_ha_migration\nrun:    manual__1\ntask:   phase4_patroni.configure_patroni[1] failed (try 3)\n"
        f"host:   psg2\nlog:    {ti.log_url}\n\nreason:\npatroni.yml invalid\n")
    assert alert.subject == "pgha: pg_ha_migration phase4_patroni.configure_patroni[1] failed: patroni.yml invalid"


# ------------------------------------------------------------------ a cutover that awaits approval


class SourceFacts:
    """The task instance as the approval reads it: the source database's size from preflight's XCom."""

    dag_id, run_id, task_id, map_index, try_number = "pg_ha_migration", "manual__2026-12-04", "approve_cutover", -1, 1
    log_url = f"{BASE_URL}/dags/pg_ha_migration/runs/manual__2026-12-04/tasks/approve_cutover"

    def xcom_pull(self, task_ids: str) -> dict[str, Any]:
        return {"result": {"size_bytes": 1180 * 1024**2, "size": "1180 MB"}}


def test_an_approval_that_waits_is_mailed_with_what_the_cutover_will_do(
        mailbox: Mailbox, fleet: Fleet, tmp_path: Path, logins: None, monkeypatch: pytest.MonkeyPatch) -> None:
    from pgha.operators import approval

    if approval.ApprovalOperator is None:
        pytest.skip(f"no human-in-the-loop operator in this Airflow: {approval.HITL_MISSING}")
    waited: list[str] = []

    def wait_for_a_person(self: Any, context: Any) -> None:  # the HITL operator's own calls, without its supervisor
        for notifier in self.notifiers:
            notifier(context)
        waited.append(self.subject)

    monkeypatch.setattr(approval.ApprovalOperator, "execute", wait_for_a_person)
    inventory = fleet_inventory(fleet, tmp_path, DEBIAN_12, notify=notify_section())
    op = approval.CutoverApprovalOperator(task_id="approve_cutover", inventory_path=inventory)
    op.execute({"params": {"approve_cutover": True}, "ti": SourceFacts(), "run_id": "manual__2026-12-04"})
    [message] = mailbox.wait_for()
    assert message["Subject"].startswith(f"pgha: pg_ha_migration approve_cutover awaits approval: {waited[0]}")
    text = body(message)
    assert "1180 MB" in text and "dump_restore" in text and "Browse &gt; Required Actions" in text
    assert f'log:    <a href="{SourceFacts.log_url}">' in text
    assert fleet.hosts and all(host.mutations() == [] for host in fleet.hosts.values())
