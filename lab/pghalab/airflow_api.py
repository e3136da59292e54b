"""A small client for the lab Airflow's REST API (what the UI's buttons call).

Standard library only, so `lab/lab`, `lab/demo`, bench/ and the tests share it. Tolerates the
api-server restarting under it (the migration's cutover restarts Airflow).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

TERMINAL = {"success", "failed"}


class AirflowAPI:
    def __init__(self, base_url: str, username: str, password: str, timeout: float = 15) -> None:
        self.base_url = base_url.rstrip("/")
        self.username = username
        self.password = password
        self.timeout = timeout
        self._token: str | None = None

    def _request(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base_url}{path}", data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token()}")
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=self.timeout) as response:
            text = response.read().decode()
        return json.loads(text) if text else None

    def token(self) -> str:
        if self._token is None:
            answer = self._request("POST", "/auth/token", {"username": self.username, "password": self.password},
                                   auth=False)
            self._token = answer["access_token"]
        return self._token

    def call(self, method: str, path: str, body: Any = None, retry_for: float = 300) -> Any:
        """A request that waits out an api-server restart (connection refused, 5xx, expired token)."""
        deadline = time.monotonic() + retry_for
        while True:
            try:
                return self._request(method, path, body)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:
                    self._token = None
                elif exc.code < 500 or time.monotonic() > deadline:
                    raise RuntimeError(f"{method} {path}: HTTP {exc.code} {exc.read().decode()[:500]}") from exc
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
            time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": True})

    def dag(self, dag_id: str) -> dict[str, Any]:
        """The DAG as the API shows it (is_paused, next_dagrun_run_after, ...)."""
        return self.call("GET", f"/api/v2/dags/{dag_id}")

    def runs(self, dag_id: str, states: tuple[str, ...] = ()) -> list[dict[str, Any]]:
        """The DAG's runs, only those in ``states`` when given (up to 100)."""
        query = "".join(f"&state={state}" for state in states)
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100{query}")["dag_runs"]

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, logical_date: str | None = None) -> str:
        run = self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", {"logical_date": logical_date, "conf": conf or {}})
        return run["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def wait(self, dag_id: str, run_id: str, timeout: float = 3600, poll: float = 5,
             progress: Any = None) -> str:
        """Wait until the run is finished; returns its state."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if progress:
                progress(state)
            if state in TERMINAL:
                return state
            time.sleep(poll)
        raise TimeoutError(f"{dag_id} {run_id} not finished after {timeout}s")

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        answer = self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances?limit=1000")
        return answer["task_instances"]

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int, map_index: int = -1) -> list[str]:
        """A task's log for one try, one line per event (Airflow 3 serves structured records)."""
        answer = self.call(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}"
                   f"?map_index={map_index}&full_content=true"
        )
        content = answer.get("content", []) if isinstance(answer, dict) else answer
        if isinstance(content, str):
            return content.splitlines()
        return [_log_line(record) for record in content]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        answer = self.call(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value"
                   f"?map_index={map_index}&deserialize=true"
        )
        return answer["value"]

    def clear(self, dag_id: str, run_id: str, task_ids: list[str]) -> None:
        self.call("POST", f"/api/v2/dags/{dag_id}/clearTaskInstances", {
            "dag_run_id": run_id, "task_ids": task_ids, "dry_run": False, "only_failed": False,
            "include_downstream": False, "include_upstream": False, "reset_dag_runs": True,
        })


def _log_line(record: Any) -> str:
    if not isinstance(record, dict):
        return str(record)
    extra = {k: v for k, v in record.items() if k not in ("timestamp", "level", "event", "logger")}
    text = f"{record.get('timestamp', '')} {record.get('level', '')} {record.get('event', '')}"
    return f"{text} {extra}" if extra else text
