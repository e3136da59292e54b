"""Phase 4/5/9 Patroni operators on a recorded Debian 12 and Rocky 9 host; the switchover against a REST stand-in."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from pgha.compat import AirflowException, AirflowSkipException
from fixture_secrets import PATRONI_REPLICATION_PASSWORD, PATRONI_REST_PASSWORD, PATRONI_SUPERUSER_PASSWORD
from pgha.operators.patroni import (
    ConfigurePatroniOperator,
    InstallPatroniOperator,
    StartPatroniOperator,
    SwitchoverTestOperator,
)
from pgha import pgdata
from pgha_testing import set_connection
from recording_host import DEBIAN_12, ROCKY_9, ClusterApis, Fleet, fleet_inventory
from services import PostgresService, free_port, start_postgres

BOTH = [pytest.param(DEBIAN_12, id="debian12"), pytest.param(ROCKY_9, id="rocky9")]
REWIND_PASSWORD = "rewind %40pw@h:1/'\"\\ $x#;%%"


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "pgha_pg_superuser", conn_type="postgres", login="postgres",
                   password=PATRONI_SUPERUSER_PASSWORD)
    set_connection(monkeypatch, "pgha_pg_replication", conn_type="postgres", login="replicator",
                   password=PATRONI_REPLICATION_PASSWORD)
    set_connection(monkeypatch, "pgha_patroni_api", conn_type="http", login="patroni", password=PATRONI_REST_PASSWORD)


def on_node(cls: type, inventory: str) -> dict:
    return cls(task_id=cls.__name__, host="psg1", inventory_path=inventory).execute({})


def prepared(fleet: Fleet, tmp_path: Path, os: str, **sections: Any) -> str:
    """An inventory whose psg1 has PostgreSQL's packages (the postgres user) as after phase 2."""
    inventory = fleet_inventory(fleet, tmp_path, os, **sections)
    for name in ("postgresql-15",) if os == DEBIAN_12 else ("postgresql-server",):
        fleet["psg1"].install_package(name)
    return inventory


@pytest.mark.parametrize("os", BOTH)
def test_install_configure_start_plan(fleet: Fleet, tmp_path: Path, os: str, connections: None) -> None:
    inventory = prepared(fleet, tmp_path, os)
    psg1 = fleet["psg1"]
    installed = on_node(InstallPatroniOperator, inventory)
    assert installed["result"] == {"version": "patroni 4.1.5"}
    venv_package = "python3-venv" if os == DEBIAN_12 else "python3-pip"
    assert psg1.ran(rf"(apt-get install|dnf install) .*python3 {venv_package}$")
    assert psg1.ran(r"^/usr/bin/python3 -m venv /opt/patroni$")
    pip = [c for c in psg1.commands if "/bin/pip install" in c.command]
    assert len(pip) == 1 and pip[0].killable and "'patroni[etcd3,psycopg2-binary]==4.1.5'" in pip[0].command

    configured = on_node(ConfigurePatroniOperator, inventory)
    assert configured["result"] == {"config_changed": True}
    config = psg1.files["/etc/patroni/patroni.yml"]
    assert (config.owner, config.mode) == ("postgres", "600")
    auth = yaml.safe_load(config.content)["postgresql"]["authentication"]
    assert auth["superuser"]["password"] == PATRONI_SUPERUSER_PASSWORD
    assert auth["replication"]["password"] == PATRONI_REPLICATION_PASSWORD
    assert auth["rewind"] == auth["superuser"]  # no pgha_rewind connection: the superuser rewinds, as before
    data_dir = "/var/lib/postgresql/15/main" if os == DEBIAN_12 else "/var/lib/pgsql/15/data"
    assert psg1.dirs[data_dir] == ("postgres", "postgres", "700")
    assert psg1.dirs["/etc/patroni"] == ("root", "postgres", "750")
    assert psg1.ran(r"^runuser -u postgres -- /opt/patroni/bin/patroni --validate-config --ignore-listen-port "
                    r"/etc/patroni/patroni.yml$")
    assert not any(PATRONI_SUPERUSER_PASSWORD in c.command for c in psg1.commands)
    assert not psg1.ran("systemctl reload")  # not running yet

    started = on_node(StartPatroniOperator, inventory)
    assert started["changed"] and started["result"] == {"was_running": False}
    assert psg1.units["patroni.service"].enabled and psg1.units["patroni.service"].active and not psg1.warnings


@pytest.mark.parametrize("os", BOTH)
def test_a_second_run_changes_nothing(fleet: Fleet, tmp_path: Path, os: str, connections: None) -> None:
    inventory = prepared(fleet, tmp_path, os)
    for cls in (InstallPatroniOperator, ConfigurePatroniOperator, StartPatroniOperator):
        on_node(cls, inventory)
    fleet.forget()
    for cls in (InstallPatroniOperator, ConfigurePatroniOperator, StartPatroniOperator):
        assert not on_node(cls, inventory)["changed"], cls.__name__
    assert fleet["psg1"].mutations() == []


def test_a_changed_config_reloads_a_running_patroni(fleet: Fleet, tmp_path: Path, connections: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    inventory = prepared(fleet, tmp_path, DEBIAN_12)
    for cls in (InstallPatroniOperator, ConfigurePatroniOperator, StartPatroniOperator):
        on_node(cls, inventory)
    set_connection(monkeypatch, "pgha_pg_replication", conn_type="postgres", login="replicator",
                   password="a-new-replication-password")
    fleet.forget()
    again = on_node(ConfigurePatroniOperator, inventory)
    assert "running Patroni reloaded its configuration" in again["changes"]
    assert fleet["psg1"].ran(r"^systemctl reload patroni.service$")


def rewind_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "pgha_rewind", conn_type="generic", login="rewinder", password=REWIND_PASSWORD)


def test_with_a_rewind_connection_a_new_cluster_rewinds_as_that_role(fleet: Fleet, tmp_path: Path, connections: None,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    rewind_connection(monkeypatch)
    inventory = prepared(fleet, tmp_path, DEBIAN_12)
    on_node(InstallPatroniOperator, inventory)
    result = on_node(ConfigurePatroniOperator, inventory)
    cfg = yaml.safe_load(fleet["psg1"].files["/etc/patroni/patroni.yml"].content)
    assert cfg["postgresql"]["authentication"]["rewind"] == {"username": "rewinder", "password": REWIND_PASSWORD}
    assert any(u.startswith("rewind role rewinder: no running cluster") for u in result["unchanged"])
    assert not any(REWIND_PASSWORD in c.command for c in fleet["psg1"].commands)


@pytest.fixture(scope="module")
def leader_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PostgresService]:
    svc = start_postgres(tmp_path_factory.mktemp("patroni-leader"), password=PATRONI_SUPERUSER_PASSWORD)
    try:
        yield svc
    finally:
        svc.stop()


def test_a_running_cluster_gets_the_rewind_role_on_its_leader(fleet: Fleet, tmp_path: Path, connections: None,
                                                              monkeypatch: pytest.MonkeyPatch, apis: ClusterApis,
                                                              leader_pg: PostgresService) -> None:
    """Patroni makes the rewind role only when it bootstraps: a cluster that runs already gets it from pgha,
    with what pg_rewind needs and nothing more, before a node's patroni.yml names it."""
    rewind_connection(monkeypatch)

    def psg1_on_loopback(raw: dict) -> None:
        raw["hosts"][1]["address"] = leader_pg.host

    inventory = prepared(fleet, tmp_path, DEBIAN_12, edit=psg1_on_loopback, postgres={"port": leader_pg.port},
                         **apis.sections())
    admin = pgdata.Endpoint(host=leader_pg.host, port=leader_pg.port, user="postgres", dbname="postgres",
                            password=PATRONI_SUPERUSER_PASSWORD)
    with pgdata.session(admin) as conn:
        assert not pgdata.role_exists(conn, "rewinder")
    on_node(InstallPatroniOperator, inventory)
    first = on_node(ConfigurePatroniOperator, inventory)
    assert "rewind role rewinder on the leader psg1" in first["changes"]
    with pgdata.session(admin) as conn:
        assert pgdata.rows(conn, pgdata.sql.SQL(
            "SELECT rolsuper, rolreplication, rolcanlogin, "
            "has_function_privilege('rewinder', 'pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean)', "
            "'EXECUTE'), has_function_privilege('rewinder', 'pg_catalog.pg_ls_dir(text, boolean, boolean)', "
            "'EXECUTE') FROM pg_roles WHERE rolname = 'rewinder'")) == [(False, False, True, True, True)]
    rewinder = pgdata.Endpoint(host=leader_pg.host, port=leader_pg.port, user="rewinder", dbname="postgres",
                               password=REWIND_PASSWORD)
    with pgdata.session(rewinder) as conn:  # the password from the connection logs in; it reads no table
        assert pgdata.scalar(conn, pgdata.sql.SQL("SELECT count(*) FROM pg_ls_dir('global', false, false)")) > 0
        with pytest.raises(Exception, match="permission denied"):
            pgdata.rows(conn, pgdata.sql.SQL("SELECT * FROM pg_authid"))
    again = on_node(ConfigurePatroniOperator, inventory)
    assert "rewind role rewinder on the leader psg1" in again["unchanged"]


def test_a_patroni_of_another_version_is_replaced(fleet: Fleet, tmp_path: Path) -> None:
    inventory = prepared(fleet, tmp_path, DEBIAN_12)
    on_node(InstallPatroniOperator, inventory)
    fleet["psg1"].binaries["/opt/patroni/bin/patroni"] = "patroni 4.0.1"
    fleet.forget()
    result = on_node(InstallPatroniOperator, inventory)
    assert "patroni 4.1.5 into /opt/patroni (was patroni 4.0.1)" in result["changes"]
    assert not fleet["psg1"].ran(r"-m venv")  # the venv is there


def test_debians_patroni_package_comes_with_its_etcd_client(fleet: Fleet, tmp_path: Path) -> None:
    """Debian's patroni only recommends python3-etcd; without it Patroni finds no etcd at all."""
    inventory = prepared(fleet, tmp_path, DEBIAN_12, patroni={"install": {"method": "package"}})
    result = on_node(InstallPatroniOperator, inventory)
    assert fleet["psg1"].ran(r"apt-get install .* --no-install-recommends .* patroni python3-etcd$")
    assert result["result"] == {"version": "patroni 3.0.2"}


def test_the_package_method_checks_the_version(fleet: Fleet, tmp_path: Path) -> None:
    inventory = prepared(fleet, tmp_path, DEBIAN_12, patroni={"install": {"method": "package", "version": "4.1.5"}})
    with pytest.raises(AirflowException,
                       match=r"\[psg1\] version mismatch: expected patroni 4.1.5, /usr/bin/patroni says 'patroni 3.0.2'"):
        on_node(InstallPatroniOperator, inventory)


# ------------------------------------------------------------------ switchover (Patroni REST stand-in)

class PatroniStandIn(BaseHTTPRequestHandler):
    """Answers GET /cluster with ``cluster`` and POST /switchover with ``answer``; keeps the requests."""

    cluster: dict[str, Any] = {}
    answer: tuple[int, str] = (200, "Successfully switched over")
    requests: list[tuple[str, dict[str, Any], str | None]] = []

    def do_GET(self) -> None:  # noqa: N802
        self._reply(200, json.dumps(self.cluster))

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append((self.path, body, self.headers.get("Authorization")))
        self._reply(*self.answer)

    def _reply(self, status: int, text: str) -> None:
        self.send_response(status)
        self.end_headers()
        self.wfile.write(text.encode())

    def log_message(self, *args: Any) -> None:
        pass


HEALTHY = {"members": [{"name": "psg1", "role": "leader", "state": "running"},
                       {"name": "psg2", "role": "sync_standby", "state": "streaming", "lag": 0},
                       {"name": "psg3", "role": "replica", "state": "streaming", "lag": 0}]}


@pytest.fixture
def patroni_api(tmp_path: Path, fleet: Fleet, connections: None) -> Iterator[tuple[str, type[PatroniStandIn]]]:
    port = free_port()
    handler = type("Handler", (PatroniStandIn,), {"cluster": HEALTHY, "requests": []})
    server = HTTPServer(("127.0.0.41", port), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield fleet_inventory(fleet, tmp_path, DEBIAN_12, patroni={"rest_port": port}), handler
    finally:
        server.shutdown()


def switchover(inventory: str, run_failover_test: bool = True) -> dict:
    return SwitchoverTestOperator(task_id="switchover_test", inventory_path=inventory).execute(
        {"params": {"run_failover_test": run_failover_test}})


def test_switchover_is_requested_to_the_sync_standby_and_not_waited_for(patroni_api: tuple) -> None:
    inventory, api = patroni_api
    result = switchover(inventory)
    assert result["result"] == {"old_leader": "psg1", "new_leader": "psg2"}
    [(path, body, auth)] = api.requests
    assert (path, body) == ("/switchover", {"leader": "psg1", "candidate": "psg2"}) and auth.startswith("Basic ")


def test_switchover_refused_by_patroni_fails_with_its_answer(patroni_api: tuple) -> None:
    inventory, api = patroni_api
    api.answer = (412, "candidate name does not match with sync_standby")
    with pytest.raises(AirflowException, match="Patroni refused the switchover psg1 -> psg2: HTTP 412 candidate"):
        switchover(inventory)


def test_no_switchover_from_an_unhealthy_cluster(patroni_api: tuple) -> None:
    inventory, api = patroni_api
    api.cluster = {"members": HEALTHY["members"][:1]}
    with pytest.raises(AirflowException, match="cluster not healthy before the switchover: expected 2 streaming"):
        switchover(inventory)
    assert api.requests == []


def test_switchover_skips_when_the_run_says_so(patroni_api: tuple) -> None:
    inventory, api = patroni_api
    with pytest.raises(AirflowSkipException):
        switchover(inventory, run_failover_test=False)
    assert api.requests == []
