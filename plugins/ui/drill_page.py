"""The drill page: a FastAPI app the pgha plugin mounts under ``/pgha`` in Airflow's API server.

``/pgha/`` (HTML) and ``/pgha/api/drills`` + ``/pgha/api/cluster`` (JSON, the same data)
show the cluster as it is now and every failover drill's RTO and RPO per scenario.

Airflow does not protect a plugin's app: every route here depends on
``drill_reader``, Airflow's own ``get_user`` (the JWT of the UI's ``_token``
cookie or an ``Authorization: Bearer`` header; 401 without one) and the auth
manager's permission to read the drill DAG's runs (403 without it).
The inventory is the one the drill DAG uses by default: ``$PGHA_INVENTORY``, else the shipped one.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Annotated, Any
from urllib.parse import quote

import jinja2
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails
from airflow.api_fastapi.core_api.security import GetUserDep
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse

from pgha.inventory import INCLUDE_DIR, Inventory, InventoryError, inventory_path, load_inventory
from pgha.plugin import URL_PREFIX
from pgha.ui.cluster_state import PAGE_DEADLINE_S, ClusterState, read_cluster_state, result_within, submit
from pgha.ui.drill_history import DrillRow, by_scenario, load_drill_history
from pgha.ui.rto_chart import rto_chart_svg

DRILL_DAG_ID = "pg_ha_failover_drill"

_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(str(INCLUDE_DIR / "templates" / "ui")),
    undefined=jinja2.StrictUndefined,
    autoescape=True,  # every value reaches the page escaped
    trim_blocks=True,
    lstrip_blocks=True,
)


def drill_reader(user: GetUserDep) -> BaseUser:
    """A logged-in user who may read the drill DAG's runs (401 / 403 otherwise)."""
    allowed = get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=DRILL_DAG_ID), user=user
    )
    if not allowed:
        raise HTTPException(status.HTTP_403_FORBIDDEN, f"not allowed to read the runs of {DRILL_DAG_ID}")
    return user


Reader = Annotated[BaseUser, Depends(drill_reader)]


def run_link(airflow_root: str, run_id: str | None) -> str | None:
    """The Airflow UI page of a drill's DAG run (relative to Airflow's root), None without a run id."""
    if not run_id:
        return None
    return f"{airflow_root}/dags/{quote(DRILL_DAG_ID)}/runs/{quote(run_id, safe=':+@')}"


def airflow_root(request: Request) -> str:
    """Airflow's root path as the browser sees it (this app is mounted at ``<root>/pgha``)."""
    return str(request.scope.get("root_path", "")).removesuffix(URL_PREFIX)


def drills_payload(inventory: Inventory, drills: list[DrillRow] | None, error: str | None,
                   root: str) -> dict[str, Any]:
    """What /api/drills answers and the page shows: per scenario and every drill, newest first."""
    drills = drills or []

    def linked(row: dict[str, Any]) -> dict[str, Any]:
        return {**row, "run_url": run_link(root, row["dag_run_id"])}

    scenarios = []
    for summary in by_scenario(drills):
        data = summary.as_dict()
        data["last_failures"] = [linked(row) for row in data["last_failures"]]
        scenarios.append(data)
    return {
        "cluster": inventory.cluster.name,
        "error": error,
        "scenarios": scenarios,
        "drills": [linked(row.as_dict()) for row in reversed(drills)],
    }


def gather(inventory: Inventory, cluster: bool = True) -> tuple[ClusterState | None, list[DrillRow] | None,
                                                               str | None]:
    """The cluster now (unless ``cluster`` is False) and the drill history, read in parallel within one
    deadline; the history is None with the reason when the cluster takes no connection through HAProxy."""
    deadline = time.monotonic() + PAGE_DEADLINE_S
    history = submit(load_drill_history, inventory)
    state = read_cluster_state(inventory, deadline) if cluster else None
    drills, error = result_within(history, deadline, "pgha_drill_history (through HAProxy)")
    return state, drills, error


def the_inventory() -> Inventory:
    try:
        return load_inventory()
    except InventoryError as exc:
        raise HTTPException(status.HTTP_500_INTERNAL_SERVER_ERROR, f"pgha inventory: {exc}") from exc


def create_app() -> FastAPI:
    app = FastAPI(title="pgha failover drills", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/", response_class=HTMLResponse)
    def drill_page(request: Request, user: Reader) -> HTMLResponse:
        inventory = the_inventory()
        state, drills, error = gather(inventory)
        root = airflow_root(request)
        summaries = by_scenario(drills or [])
        page = _templates.get_template("drill_page.html.j2").render(
            state=state,
            drills=drills_payload(inventory, drills, error, root),
            charts={s.scenario: rto_chart_svg(s.scenario, s.drills) for s in summaries},
            inventory_path=str(inventory_path()),
            dag_url=f"{root}/dags/{DRILL_DAG_ID}",
            now=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        return HTMLResponse(page, headers={"Cache-Control": "no-store"})

    @app.get("/api/drills")
    def drills_json(request: Request, user: Reader) -> dict[str, Any]:
        inventory = the_inventory()
        _, drills, error = gather(inventory, cluster=False)
        return drills_payload(inventory, drills, error, airflow_root(request))

    @app.get("/api/cluster")
    def cluster_json(user: Reader) -> dict[str, Any]:
        return read_cluster_state(the_inventory()).as_dict()

    return app


app = create_app()
