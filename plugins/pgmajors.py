"""Which PostgreSQL majors a migration may move between, as data (README "Source majors").

A source of major N moves to a cluster of major M >= N: pg_dump reads older servers and
logical replication subscribes to older publishers, never the other way round. The cluster
then becomes Airflow's metadata database, so Airflow must support M. What the source's own
server must offer for each method is checked here too; everything that fails is a reason
preflight gives before it changes anything.
"""

from __future__ import annotations

from collections.abc import Mapping

# Airflow release range (first, last; (major, minor)) -> the PostgreSQL majors its metadata
# database may run on, from the PostgreSQL versions each release's installation prerequisites
# say it is tested with (README "Supported Airflow releases" has the same table). Those pages
# move the window up about one major a year (2.8 listed 12 to 16); 3.0 and 3.1 list 13 to 17,
# 3.2 dropped 13 and added 18. A release outside every row is refused: add its row first.
AIRFLOW_POSTGRES_MAJORS: tuple[tuple[tuple[int, int], tuple[int, int], tuple[int, ...]], ...] = (
    ((3, 0), (3, 1), (13, 14, 15, 16, 17)),
    ((3, 2), (3, 3), (14, 15, 16, 17, 18)),
)

# The source settings logical replication needs that only a restart of the source changes and that
# pgha does not set (it sets wal_level and listen_addresses, see PrepareLogicalSourceOperator): the
# subscription's slot plus one table-sync slot and walsender at a time (13's table sync uses a
# temporary slot of its own).
LOGICAL_MINIMUMS = {"max_replication_slots": 2, "max_wal_senders": 2}
LOGICAL = "logical_replication"


def release_of(version: str) -> tuple[int, int]:
    """(major, minor) of an Airflow version string such as ``3.0.6`` or ``3.1.0rc1``."""
    parts = version.split(".")
    digits = ["".join(ch for ch in part if ch.isdigit()) or "0" for part in parts[:2]]
    return int(digits[0]), int(digits[1] if len(digits) > 1 else 0)


def airflow_postgres_majors(airflow_version: str) -> tuple[int, ...]:
    """The PostgreSQL majors the Airflow release ``airflow_version`` supports (empty: unknown release)."""
    release = release_of(airflow_version)
    for first, last, majors in AIRFLOW_POSTGRES_MAJORS:
        if first <= release <= last:
            return majors
    return ()


def migration_refusals(*, source_major: int, target_major: int, airflow_version: str, method: str,
                       source_settings: Mapping[str, str] | None = None,
                       used_slots: int = 0) -> list[str]:
    """Why a migration from ``source_major`` to ``target_major`` with ``method`` must not start (empty: it may)."""
    reasons = []
    if target_major < source_major:
        reasons.append(f"the cluster's major {target_major} is older than the source's {source_major}: pg_dump and "
                       "logical replication only move data to the same or a newer major")
    supported = airflow_postgres_majors(airflow_version)
    if not supported:
        reasons.append(f"Airflow {airflow_version} is not a release pgha knows the PostgreSQL majors of "
                       f"(pgha.pgmajors.AIRFLOW_POSTGRES_MAJORS)")
    elif target_major not in supported:
        reasons.append(f"Airflow {airflow_version} supports PostgreSQL {supported[0]} to {supported[-1]} as its "
                       f"metadata database, not the cluster's major {target_major}")
    if method == LOGICAL:
        reasons.extend(logical_source_gaps(source_settings or {}, used_slots))
    return reasons


def logical_source_gaps(settings: Mapping[str, str], used_slots: int = 0) -> list[str]:
    """What the source lacks for logical replication that pgha will not change for it (each needs a restart)."""
    gaps = []
    for name, needed in LOGICAL_MINIMUMS.items():
        value = int(settings.get(name, "0") or 0)
        free = value - used_slots if name == "max_replication_slots" else value
        if free < needed:
            gaps.append(f"source {name} = {value}" + (f" ({used_slots} in use)" if name == "max_replication_slots"
                                                      and used_slots else "")
                        + f": logical replication needs {needed} free; set it on the source and restart it "
                        "(pgha changes only wal_level and listen_addresses there)")
    return gaps
