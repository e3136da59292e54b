"""What the cutover will do, in words a person approving it can check (the approval step's text).

The stopped-window estimate comes from the lab's measurements (README "The stopped window",
bench/cutover_window_lab.jsonl): about 25 s of every window is fixed (stopping the units,
``airflow db check``, the scheduler's first heartbeat on the cluster); dump_restore adds the
copy and the verify (about 80 s per GB), logical replication only the verify (about 32 s per
GB). Another machine can take up to about twice as long; the text says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgha.inventory import Inventory

GB = 1024**3
FIXED_WINDOW_S = 25.0
WINDOW_S_PER_GB = {"dump_restore": 80.0, "logical_replication": 32.0}
SLOWER_MACHINE_FACTOR = 2.0
PAUSE_FIXED_S = 1.0  # PAUSE, the subscription's catch-up, the sequences, RELOAD and RESUME (0.5-0.6 s on the lab)


@dataclass(frozen=True)
class WindowEstimate:
    seconds: float
    upper_seconds: float

    def text(self) -> str:
        return f"about {duration(self.seconds)} (up to {duration(self.upper_seconds)} on a slower machine)"


def stopped_window(method: str, size_bytes: int | None) -> WindowEstimate | None:
    """The expected stopped window of a ``method`` cutover of a database of ``size_bytes`` (None: unknown size)."""
    if size_bytes is None or method not in WINDOW_S_PER_GB:
        return None
    seconds = FIXED_WINDOW_S + WINDOW_S_PER_GB[method] * size_bytes / GB
    return WindowEstimate(round(seconds), round(seconds * SLOWER_MACHINE_FACTOR))


@dataclass(frozen=True)
class PausedWait:
    """How long Airflow's transactions wait in PgBouncer during the cutover through the pause. Every table is
    compared before the PAUSE; inside it only the tables changed since: ``least`` when those are small
    (the catch-up, the sequences, RELOAD, RESUME), ``most`` when every table changed and is read again."""

    least: float
    most: float

    def text(self) -> str:
        return (f"about {duration(self.least)} plus the compare of the tables Airflow writes meanwhile (at most "
                f"about {duration(self.most)} if every table changed, up to {duration(self.most * SLOWER_MACHINE_FACTOR)}"
                " on a slower machine)")


def paused_wait(size_bytes: int | None) -> PausedWait | None:
    """The cutover through the pause (pooler pgbouncer, logical method): its least and most wait."""
    if size_bytes is None:
        return None
    verify_all = WINDOW_S_PER_GB["logical_replication"] * size_bytes / GB
    return PausedWait(PAUSE_FIXED_S, round(PAUSE_FIXED_S + verify_all, 1))


def window_estimates(size_bytes: int | None) -> dict[str, str]:
    """Every way to cut over, with what Airflow goes through (preflight logs them side by side)."""
    def text(estimate: WindowEstimate | PausedWait | None) -> str:
        return estimate.text() if estimate else "unknown (no size)"

    return {
        "dump_restore (Airflow stopped)": text(stopped_window("dump_restore", size_bytes)),
        "logical_replication (Airflow stopped)": text(stopped_window("logical_replication", size_bytes)),
        "logical_replication + pooler pgbouncer (Airflow running, its transactions held)": text(
            paused_wait(size_bytes)),
    }


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    seconds = int(round(seconds))
    if seconds < 120:
        return f"{seconds} s"
    minutes, rest = divmod(seconds, 60)
    return f"{minutes} min {rest:02d} s" if minutes < 120 else f"{minutes // 60} h {minutes % 60:02d} min"


def size_text(size_bytes: int | None, pretty: str | None) -> str:
    if size_bytes is None:
        return "unknown (preflight.check_source_db reported no size)"
    return f"{pretty or f'{size_bytes / GB:.2f} GB'} ({size_bytes:,} bytes)"


METHOD_TEXT = {
    "dump_restore": "dump_restore: the whole database is copied while Airflow is stopped, then every table verified",
    "logical_replication": "logical_replication: the cluster is already in sync; the stopped window only catches up "
                           "and verifies every table",
}


def cutover_summary(inventory: Inventory, *, method: str, pooler: str, size_bytes: int | None,
                    size_pretty: str | None) -> tuple[str, str]:
    """(subject, body in Markdown) of the approval asked before the cutover."""
    inv = inventory
    db = inv.postgres.database
    cluster = ", ".join(inv.database_nodes)
    haproxy = f"{inv.haproxy.host}:{inv.haproxy.write_port}"
    subject = f"Approve the cutover of {db} from {inv.source.host} to the Patroni cluster ({cluster})?"
    lines = [
        f"**Cutover of `{db}`** from PostgreSQL {inv.source.major} on `{inv.source.host}` to the Patroni cluster "
        f"`{cluster}`, reached through HAProxy `{haproxy}`.",
        "",
        f"- **Database size:** {size_text(size_bytes, size_pretty)}",
        f"- **Method:** {METHOD_TEXT.get(method, method)}",
    ]
    if pooler == "pgbouncer":
        wait = paused_wait(size_bytes)
        lines += [
            "- **Expected stopped window:** none: Airflow keeps running; PgBouncer holds its queries (PAUSE) "
            f"while the database is switched, {wait.text() if wait else 'for an unknown time (no size)'}",
            "- **Hosts to restart:** none (Airflow already runs on PgBouncer)",
        ]
    else:
        estimate = stopped_window(method, size_bytes)
        lines.append(f"- **Expected stopped window:** {estimate.text() if estimate else 'unknown (no size)'}; "
                     "Airflow runs no task in it")
        lines.append("- **Hosts to restart** (their Airflow units stop, are repointed at HAProxy, start again):")
        lines += [f"  - `{a.host}`: {', '.join(f'`{u}`' for u in a.units)} (config `{a.config}`)"
                  for a in inv.airflow_hosts]
    lines += [
        "",
        "If any host fails, every host goes back to the source database and the run turns red with the reason.",
        "**Approve** starts the cutover; **Reject** skips it and every task after it: nothing moves, the cluster "
        "stays built and a later run can cut over.",
    ]
    return subject, "\n".join(lines)
