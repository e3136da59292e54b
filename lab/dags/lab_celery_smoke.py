"""lab_celery_smoke: proves the lab's CeleryExecutor: a task that names it runs on vm4.

vm1's airflow.cfg says `executor = LocalExecutor,CeleryExecutor` (Airflow 3's
multi-executor): a task runs on the first, LocalExecutor on vm1, unless it says
`executor="CeleryExecutor"`; then the scheduler sends it through the broker
(Redis on vm1) to the Celery worker on vm4. Each task returns the hostname it
ran on (XCom `return_value`): `on_worker` says vm4, `on_scheduler_host` vm1.
"""

from __future__ import annotations

import socket
from datetime import datetime

from airflow.sdk import dag, task


@dag(dag_id="lab_celery_smoke", schedule=None, start_date=datetime(2026, 1, 1), catchup=False, tags=["lab"],
     is_paused_upon_creation=False)
def lab_celery_smoke() -> None:
    @task(executor="CeleryExecutor")
    def on_worker() -> str:
        return socket.gethostname()

    @task
    def on_scheduler_host() -> str:
        return socket.gethostname()

    on_worker() >> on_scheduler_host()


lab_celery_smoke()
