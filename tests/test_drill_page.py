"""The drill page (pgha.ui): mounted by Airflow as its plugin, behind Airflow's login.

The app is mounted into a FastAPI root with Airflow's own ``init_plugins`` and
``init_auth_manager`` (what ``airflow api-server`` does), so discovery through
the entry point, the URL prefix and the authentication are Airflow's. Drills
live in a real loopback PostgreSQL; the cluster's hosts are loopback addresses
where nothing listens (down) or the real single-node Patroni of the fixtures.
"""

from __future__ import annotations

import time

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from markupsafe import escape
from fixture_secrets import POSTGRES_PASSWORD
from pgha_testing import AIRFLOW_RELEASE, loopback_inventory, set_connection, write_inventory
from services import PatroniService, PostgresService, free_port

from pgha.inventory import INCLUDE_DIR

DAG_ID = "pg_ha_failover_drill"
DOWN = [("pg-a", "127.0.0.71"), ("pg-b", "127.0.0.72"), ("pg-c", "127.0.0.73")]  # nothing listens there
REASON = 'RTO 41.2 s > SLO 30 s; <script>alert("x")</script> & more'
FAILED_RUN = "manual__2026-11-30T03:00:00+00:00"


@pytest.fixture(scope="module")
def airflow_api() -> Iterator[tuple[Any, str]]:
    """A TestClient on a root app with Airflow's plugins and auth manager, and an admin's JWT."""
    from airflow import settings
    from airflow.api_fastapi.app import init_auth_manager, init_plugins, purge_cached_app
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    try:
        from airflow.models.revoked_token import RevokedToken
    except ImportError:  # Airflow 3.0 revokes no tokens
        pass
    else:
        RevokedToken.__table__.create(settings.engine, checkfirst=True)  # every token is checked against it
    root = FastAPI()
    init_plugins(root)
    auth_manager = init_auth_manager(root)
    token = auth_manager.generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
    with TestClient(root) as client:
        yield client, token
    purge_cached_app()


@pytest.fixture
def logged_in(airflow_api: tuple[Any, str]) -> Iterator[Any]:
    """The client with the UI's session cookie (what a browser sends inside Airflow's UI); on Airflow 3.0,
    whose API reads no cookie, the same JWT as a bearer token."""
    client, token = airflow_api
    if AIRFLOW_RELEASE < (3, 1):
        client.headers["Authorization"] = f"Bearer {token}"
    else:
        client.cookies.set("_token", token)
    yield client
    client.cookies.clear()
    client.headers.pop("Authorization", None)


def use_inventory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, nodes: list[tuple[str, str]],
                  pg: tuple[str, int], **sections: Any) -> None:
    """The page's inventory ($PGHA_INVENTORY, as the drill DAG's default) with HAProxy's write port at ``pg``."""
    raw = loopback_inventory(nodes, **sections)
    raw["hosts"][0]["address"] = pg[0]
    raw["haproxy"] = {**raw.get("haproxy", {}), "write_port": pg[1]}
    monkeypatch.setenv("PGHA_INVENTORY", write_inventory(tmp_path, raw))
    set_connection(monkeypatch, "pgha_pg_superuser", conn_type="postgres", host=pg[0], port=pg[1],
                   login="postgres", password=POSTGRES_PASSWORD)


def drill(drill_id: str, scenario: str, day: int, passed: bool, rto: float | None, run_id: str | None,
          problems: list[str] | None = None, rpo_missing: int = 0, slo: float = 30.0) -> dict[str, Any]:
    return {"drill_id": drill_id, "dag_run_id": run_id, "scenario": scenario, "target": "pg-a",
            "old_leader": "pg-a", "new_leader": "pg-b", "injected_at": f"2026-11-{day:02d} 03:00:00+00",
            "passed": passed, "rto_s": rto, "rto_slo_s": slo, "acked": 500, "rpo_missing": rpo_missing,
            "problems": problems or []}


DRILLS = [
    drill("d1", "switchover", 28, True, 4.25, "scheduled__2026-11-28T03:00:00+00:00"),
    drill("d2", "switchover", 29, True, 6.5, "scheduled__2026-11-29T03:00:00+00:00"),
    drill("d3", "switchover", 30, False, 41.2, FAILED_RUN, [REASON], rpo_missing=2),
    drill("d4", "host_crash", 30, False, None, None, ["new_leader did not complete"], slo=45.0),
]


@pytest.fixture
def history(postgres: PostgresService) -> Iterator[tuple[str, int]]:
    """pgha_drill_history (include/sql/drill_tables.sql) in the loopback PostgreSQL, with DRILLS."""
    conn = psycopg2.connect(host=postgres.host, port=postgres.port, user="postgres", password=POSTGRES_PASSWORD,
                            dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS public.pgha_drill_history, public.pgha_drill_probe")
        cur.execute((INCLUDE_DIR / "sql" / "drill_tables.sql").read_text())
        for row in DRILLS:
            cur.execute(
                "INSERT INTO public.pgha_drill_history (drill_id, dag_run_id, scenario, target, old_leader, "
                "new_leader, injected_at, passed, rto_s, rto_slo_s, acked, rpo_missing, problems) VALUES "
                "(%(drill_id)s, %(dag_run_id)s, %(scenario)s, %(target)s, %(old_leader)s, %(new_leader)s, "
                "%(injected_at)s, %(passed)s, %(rto_s)s, %(rto_slo_s)s, %(acked)s, %(rpo_missing)s, %(problems)s)",
                row)
    yield postgres.host, postgres.port
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS public.pgha_drill_history, public.pgha_drill_probe")
    conn.close()


# ------------------------------------------------------------------ Airflow finds and guards the page


def test_airflow_lists_the_app_and_the_view() -> None:
    """What `airflow plugins` prints (plugins_manager.get_plugin_info) and what the UI gets."""
    from airflow import plugins_manager

    info = {p["name"]: p for p in plugins_manager.get_plugin_info()}["pgha"]
    assert "pgha.plugin:PghaPlugin" in str(info["source"])
    assert [(a["url_prefix"], a["name"]) for a in info["fastapi_apps"]] == [("/pgha", "pgha failover drills")]
    if AIRFLOW_RELEASE < (3, 1):  # Airflow 3.0 has no external views: the page is served, without a menu entry
        assert "external_views" not in info
        return
    assert info["external_views"] == [{"name": "Failover drills", "href": "pgha/", "destination": "nav",
                                       "category": "browse", "url_route": "pgha-drills"}]
    if hasattr(plugins_manager, "_get_ui_plugins"):  # Airflow 3.2+
        external_views, _ = plugins_manager._get_ui_plugins()
    else:  # 3.1: module globals filled by initialize_ui_plugins
        plugins_manager.initialize_ui_plugins()
        external_views = plugins_manager.external_views
    assert any(view["url_route"] == "pgha-drills" for view in external_views)


@pytest.mark.parametrize("path", ["/pgha/", "/pgha/api/drills", "/pgha/api/cluster"])
def test_without_an_airflow_login_nothing_is_shown(airflow_api: tuple[Any, str], path: str) -> None:
    client, token = airflow_api
    anonymous = client.get(path)
    assert anonymous.status_code == 401 and anonymous.json() == {"detail": "Not authenticated"}
    client.cookies.set("_token", token[:-6] + "AAAAAA")
    try:
        forged = client.get(path)
    finally:
        client.cookies.clear()
    # Airflow 3.0's API reads only the Authorization header: a cookie, forged or not, is no login there
    assert forged.status_code == (401 if AIRFLOW_RELEASE < (3, 1) else 403), forged.text
    bearer = client.get(path, headers={"Authorization": "Bearer not-a-jwt"})
    assert bearer.status_code == 403


# ------------------------------------------------------------------ what the page shows


def test_drills_show_on_the_page_and_in_the_json(logged_in: Any, history: tuple[str, int],
                                                 monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_inventory(monkeypatch, tmp_path, DOWN, history)
    data = logged_in.get("/pgha/api/drills").json()
    assert data["error"] is None
    assert [d["drill_id"] for d in data["drills"]] == ["d4", "d3", "d2", "d1"]  # newest first
    switchover, host_crash = data["scenarios"]
    assert (switchover["scenario"], switchover["drills"], switchover["passed"], switchover["failed"]) == (
        "switchover", 3, 2, 1)
    assert (switchover["rto_slo_s"], switchover["last_rto_s"], switchover["worst_rto_s"]) == (30.0, 41.2, 41.2)
    assert (switchover["last_rpo_missing"], switchover["rpo_missing_total"]) == (2, 2)
    assert [p["rto_s"] for p in switchover["rto_series"]] == [4.25, 6.5, 41.2]
    failure = switchover["last_failures"][0]
    assert failure["problems"] == [REASON] and failure["injected_at"] == "2026-11-30T03:00:00+00:00"
    assert failure["run_url"] == f"/dags/{DAG_ID}/runs/{FAILED_RUN}"
    assert host_crash["last_failures"][0]["run_url"] is None and host_crash["rto_slo_s"] == 45.0

    page = logged_in.get("/pgha/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    summary = re.search(r'<table id="drill-summary">(.*?)</table>', text, re.S).group(1)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", summary, re.S)[1:]]
    assert cells == [["switchover", "3", "2", "1", "41.200", "41.200", "30", "2", "2"],
                     ["host_crash", "1", "0", "1", "-", "-", "45", "0", "0"]]
    assert f'<a href="/dags/{DAG_ID}/runs/{FAILED_RUN}" target="_top">{FAILED_RUN}</a>' in text
    # the reason is text, never markup
    assert str(escape(REASON)) in text and "&lt;script&gt;alert(" in text and "<script>" not in text
    assert not re.search(r"<script|<link|<img|src=|@import|url\(", text)  # no script, no external asset


def test_the_chart_draws_every_drill_against_its_slo(logged_in: Any, history: tuple[str, int],
                                                     monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    use_inventory(monkeypatch, tmp_path, DOWN, history)
    text = logged_in.get("/pgha/").text
    section = text.split('id="scenario-switchover"', 1)[1].split("</section>", 1)[0]
    chart = re.search(r"<svg .*?</svg>", section, re.S).group(0)
    points = [(float(x), float(y)) for x, y in re.findall(r'<circle[^>]*cx="([\d.]+)" cy="([\d.]+)"', chart)]
    assert len(points) == 3 and [x for x, _ in points] == sorted(x for x, _ in points)  # in time order
    assert chart.count('class="drill passed"') == 2 and chart.count('class="drill failed"') == 1
    # y grows downwards: the 41.2 s drill lies above the SLO line, the others below it
    slo_points = re.search(r'class="slo" points="([^"]+)"', chart).group(1)
    slo_y = {float(y) for y in re.findall(r",([\d.]+)", slo_points)}
    assert len(slo_y) == 1
    (slo,) = slo_y
    assert points[2][1] < slo < points[1][1] < points[0][1]
    assert "SLO 30.0 s" in chart and "2 lost writes, FAILED" in chart
    crash = text.split('id="scenario-host_crash"', 1)[1].split("</section>", 1)[0]
    assert 'class="drill failed" d="M' in crash  # a drill without an RTO: a cross on the time axis


def test_unreachable_hosts_show_as_down_and_the_page_renders(logged_in: Any, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    use_inventory(monkeypatch, tmp_path, DOWN, ("127.0.0.74", free_port()))  # no PostgreSQL either
    page = logged_in.get("/pgha/")
    assert page.status_code == 200
    members = re.search(r'<table id="members">(.*?)</table>', page.text, re.S).group(1)
    assert members.count('<td class="down">down</td>') == 3
    assert page.text.count('<td class="down">down <span') == 3  # every etcd endpoint, with its error
    assert "no Patroni member answered" in page.text and 'id="leader">no single leader' in page.text
    assert re.search(r'<p class="error" id="haproxy">HAProxy: .*ssh_lb', page.text)  # no SSH connection defined
    assert "Drill history unavailable" in page.text and 'id="no-drills"' in page.text
    cluster = logged_in.get("/pgha/api/cluster").json()
    assert [m["up"] for m in cluster["members"]] == [False] * 3 and cluster["leader"] is None
    assert logged_in.get("/pgha/api/drills").json()["error"].startswith("OperationalError")


def test_a_live_leader_and_members_down(logged_in: Any, patroni: PatroniService, monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    rest_port = int(patroni.rest_url.rsplit(":", 1)[1])
    etcd_host, etcd_port = patroni.etcd_hosts[0].rsplit(":", 1)
    use_inventory(monkeypatch, tmp_path, [(patroni.name, "127.0.0.1"), *DOWN[1:]], ("127.0.0.74", free_port()),
                  patroni={"rest_port": rest_port}, etcd={"client_port": int(etcd_port)})
    deadline = time.monotonic() + 30  # a leader just elected reports its timeline a moment later
    while True:
        answer = logged_in.get("/pgha/api/cluster")
        assert answer.status_code == 200, answer.text
        cluster = answer.json()
        live, down, _ = cluster["members"]
        if live["timeline"] is not None or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert cluster["leader"] == patroni.name and cluster["patroni_error"] is None
    assert (live["up"], live["role"], live["state"], live["timeline"]) == (True, "leader", "running", 1)
    assert down == {"name": "pg-b", "address": "127.0.0.72", "up": False, "role": None, "state": None,
                    "lag_bytes": None, "timeline": None}
    assert [e["up"] for e in cluster["etcd_endpoints"]] == [etcd_host == "127.0.0.1", False, False]
    page = logged_in.get("/pgha/").text
    assert f'<strong id="leader">{patroni.name}</strong>' in page


# ------------------------------------------------------------------ the drill DAG's asset event


def test_analyse_puts_the_result_into_its_asset_event(tmp_path: Path) -> None:
    from airflow.sdk.execution_time.context import OutletEventAccessors
    from pg_ha_failover_drill import DRILL_RESULT, dag
    from pgha.operators.drill import AnalyseDrillOperator

    analyse = dag.get_task("analyse")
    assert isinstance(analyse, AnalyseDrillOperator) and analyse.outlets == [DRILL_RESULT]
    assert DRILL_RESULT.uri == "pgha://drill/result"
    inventory = write_inventory(tmp_path, loopback_inventory(DOWN))
    op = AnalyseDrillOperator(task_id="analyse_alone", inventory_path=inventory, outlets=[DRILL_RESULT])
    events = OutletEventAccessors()
    result = {"drill_id": "d9", "passed": True, "rto_s": 3.5, "rto_slo_s": 30.0, "rpo_missing": 0, "problems": []}
    op._result_to_outlets(result, {"outlet_events": events, "run_id": "manual__x"})
    assert events[DRILL_RESULT].extra == {**result, "cluster": "pgha-test", "dag_run_id": "manual__x"}
