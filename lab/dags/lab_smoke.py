"""lab_smoke: one real task, to prove a fresh DAG run works after the migration."""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="lab_smoke", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["lab"],
     is_paused_upon_creation=False)
def lab_smoke() -> None:
    @task
    def hello() -> str:
        return "hello from the cluster"

    hello()


lab_smoke()
