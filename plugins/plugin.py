"""pgha's Airflow plugin, registered through the ``airflow.plugins`` entry point.

Airflow finds it in the installed distribution, so nothing of pgha has to sit in the
deployment's plugins folder. It mounts the drill page (``pgha.ui.drill_page``) in
the API server under ``/pgha`` and lists it in the UI's Browse menu.
"""

from __future__ import annotations

from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/pgha"


class DrillPageApp:
    """
    ASGI app that imports the drill page on its first request. Every Airflow
    process loads plugins (a task's runner does, for macros); only the API
    server should pay for the page's imports (FastAPI, Airflow's API security).
    """

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        from pgha.ui.drill_page import app

        await app(scope, receive, send)

    def __repr__(self) -> str:
        return "pgha.ui.drill_page:app"


DRILL_PAGE_APP = {"app": DrillPageApp(), "url_prefix": URL_PREFIX, "name": "pgha failover drills"}
# href without a leading slash: relative to Airflow's base URL, so a deployment under a sub-path works too.
DRILL_PAGE_VIEW = {
    "name": "Failover drills",
    "href": URL_PREFIX.lstrip("/") + "/",
    "destination": "nav",
    "category": "browse",
    "url_route": "pgha-drills",
}


class PghaPlugin(AirflowPlugin):
    name = "pgha"
    fastapi_apps = [DRILL_PAGE_APP]
    external_views = [DRILL_PAGE_VIEW]
