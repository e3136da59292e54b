"""lab_history: gives the lab's airflow_db a real history, fast, on 2 cores.

`lab/lab provision` unpauses it once, waits until every run of the window is
done, and pauses it again (so the source database is quiet except for the
migration). Hourly runs over the DAYS before today's midnight (UTC), caught up
at once; the window is fixed for a day and ends, so the DAG stops by itself.

Per run: 30 EmptyOperators (set to success by the scheduler itself, no worker
process) and 2 real tasks that log and push XComs, so dag_run, task_instance,
xcom, log (task events) and job all fill up.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import chain, dag, task

DAYS = 3
END = pendulum.today("UTC")
START = END - timedelta(days=DAYS)
log = logging.getLogger(__name__)


@dag(
    dag_id="lab_history",
    description="lab only: fills airflow_db with history (lab/lab provision)",
    schedule="@hourly",
    start_date=START,
    end_date=END - timedelta(seconds=1),
    catchup=True,
    max_active_runs=32,
    max_active_tasks=8,
    is_paused_upon_creation=True,
    default_args={"retries": 0},
    tags=["lab"],
)
def lab_history() -> None:
    start = EmptyOperator(task_id="start")
    ingest = [EmptyOperator(task_id=f"ingest_{i:02d}") for i in range(12)]
    ingested = EmptyOperator(task_id="ingested")

    @task
    def extract(**context) -> dict:
        ti = context["ti"]
        hour = context["logical_date"].hour
        rows = {f"source_{i}": (hour * 37 + i * 11) % 1000 for i in range(6)}
        for name, count in rows.items():
            log.info("extracted %d rows from %s", count, name)
            ti.xcom_push(key=name, value={"rows": count, "hour": hour})
        return {"total": sum(rows.values()), "sources": len(rows)}

    checks = [EmptyOperator(task_id=f"check_{i:02d}") for i in range(12)]

    @task
    def summarize(batch: dict, **context) -> str:
        line = f"{context['run_id']}: {batch['total']} rows from {batch['sources']} sources"
        log.info("summary %s", line)
        return line

    publish = [EmptyOperator(task_id=f"publish_{i}") for i in range(3)]
    end = EmptyOperator(task_id="end")

    batch = extract()
    chain(start, ingest, ingested, batch)
    batch >> checks
    summary = summarize(batch)
    checks >> summary
    chain(summary, publish, end)


lab_history()
