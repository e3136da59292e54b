"""pgha's Airflow plugin, registered through the ``airflow.plugins`` entry point.

Airflow finds it in the installed distribution, so nothing of pgha has to sit in the
deployment's plugins folder. It is where pgha's views and operator links hang.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin


class PghaPlugin(AirflowPlugin):
    name = "pgha"
