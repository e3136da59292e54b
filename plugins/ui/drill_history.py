"""The failover drills recorded in ``pgha_drill_history`` (the cluster's ``postgres`` database), per scenario."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg2
import psycopg2.errors

from pgha.hooks.drill import drill_database
from pgha.runtime import cluster_tls_files
from pgha.hooks.postgres import load_sql
from pgha.inventory import Inventory

HISTORY_LIMIT = 1000  # nightly drills of every scenario for well over a year
LAST_FAILURES = 5  # per scenario


@dataclass(frozen=True)
class DrillRow:
    """One drill as analyse recorded it."""

    drill_id: str
    dag_run_id: str | None
    scenario: str
    target: str
    old_leader: str | None
    new_leader: str | None
    injected_at: float  # epoch seconds
    passed: bool
    rto_s: float | None
    rto_slo_s: float
    acked: int
    rpo_missing: int
    time_to_new_leader_s: float | None
    time_to_routing_s: float | None
    time_to_old_leader_streaming_s: float | None
    problems: list[str] = field(default_factory=list)

    @property
    def injected_iso(self) -> str:
        return datetime.fromtimestamp(self.injected_at, timezone.utc).isoformat(timespec="seconds")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "injected_at": self.injected_iso}


@dataclass(frozen=True)
class ScenarioSummary:
    """What one scenario's drills say: RTO over time against its SLO, lost writes, the last failures."""

    scenario: str
    drills: list[DrillRow]  # oldest first

    @property
    def last(self) -> DrillRow:
        return self.drills[-1]

    @property
    def failures(self) -> list[DrillRow]:
        """The latest failed drills, newest first."""
        return [row for row in reversed(self.drills) if not row.passed][:LAST_FAILURES]

    @property
    def worst_rto_s(self) -> float | None:
        measured = [row.rto_s for row in self.drills if row.rto_s is not None]
        return max(measured) if measured else None

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "drills": len(self.drills),
            "passed": sum(row.passed for row in self.drills),
            "failed": sum(not row.passed for row in self.drills),
            "rto_slo_s": self.last.rto_slo_s,
            "last_rto_s": self.last.rto_s,
            "worst_rto_s": self.worst_rto_s,
            "rpo_missing_total": sum(row.rpo_missing for row in self.drills),
            "last_rpo_missing": self.last.rpo_missing,
            "rto_series": [{"drill_id": row.drill_id, "injected_at": row.injected_iso, "rto_s": row.rto_s,
                            "rto_slo_s": row.rto_slo_s, "passed": row.passed} for row in self.drills],
            "last_failures": [row.as_dict() for row in self.failures],
        }


def rows_from(records: list[tuple[Any, ...]], columns: list[str]) -> list[DrillRow]:
    """DrillRows from the query's rows, oldest first."""
    rows = []
    for record in records:
        values = dict(zip(columns, record))
        values["problems"] = list(values["problems"] or [])
        rows.append(DrillRow(**values))
    return sorted(rows, key=lambda row: (row.injected_at, row.drill_id))


def load_drill_history(inventory: Inventory, limit: int = HISTORY_LIMIT) -> list[DrillRow]:
    """The latest ``limit`` drills, oldest first; [] before the first drill created the table."""
    conn = drill_database(inventory, cluster_tls_files(inventory)).get_conn()
    try:
        with conn.cursor() as cur:
            try:
                cur.execute(load_sql("drill_history.sql"), {"limit": limit})
            except psycopg2.errors.UndefinedTable:
                return []
            return rows_from(cur.fetchall(), [column.name for column in cur.description])
    finally:
        conn.close()


def by_scenario(rows: list[DrillRow]) -> list[ScenarioSummary]:
    """One summary per scenario that has drills, in the order scenarios first appear."""
    scenarios: dict[str, list[DrillRow]] = {}
    for row in rows:
        scenarios.setdefault(row.scenario, []).append(row)
    return [ScenarioSummary(name, drills) for name, drills in scenarios.items()]
