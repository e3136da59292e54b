"""The failover drill's arithmetic: SLO defaults, the probe's log, RTO, RPO, the verdict.

Pure functions (no Airflow, no network) so the analysis is unit-tested on
synthetic acknowledgment series. The probe (include/drill/probe.py) writes one
line per acknowledged commit, ``<seq> <epoch> <server address>``, and event
lines starting with ``#`` (``# start <epoch>``, ``# error <epoch> <text>``,
``# stopped <epoch>``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import Any

from pgha.inventory import DRILL_SCENARIOS, Drill, Inventory, load_inventory

log = logging.getLogger(__name__)

DEFAULT_SCHEDULE = Drill().schedule
# Scenarios after which the old leader cannot stay leader (a failover or switchover must happen).
LEADER_MOVES = {"switchover", "patroni_stop", "host_crash", "host_isolate"}
PROMOTION_MARGIN_S = 2.0  # promote + first check after it, on top of the configured timings
HOST_FAULTS = ("host_crash", "host_isolate")  # run on drill.fault_injector, outside the host they break
ROTATION = "rotation"  # the scenario Param's default: the nightly rotation picks the scenario
DRILL_DAG_ID = "pg_ha_failover_drill"
MIGRATION_DAG_ID = "pg_ha_migration"
# The fault record's states: "attempted" is written before the fault, "confirmed" once the cluster shows it.
ATTEMPTED, CONFIRMED = "attempted", "confirmed"
# Per try of a task: from queued to running, with Airflow's own metadata DB failing over under the scheduler.
SCHEDULING_SLACK = timedelta(minutes=1)


def xcom_result(xcom: Any) -> Any:
    """The ``result`` of a pgha operator's summary XCom, or the XCom itself (a sensor's value, or None)."""
    return xcom.get("result") if isinstance(xcom, dict) and "result" in xcom else xcom


def schedule_from_inventory(path: str | None = None) -> str | None:
    """The drill's cron schedule, read at DAG parse time; never raises.

    A broken or missing inventory gives the default schedule: the DAG still
    parses and the first task fails with the inventory's own error.
    """
    try:
        return load_inventory(path).drill.schedule
    except Exception as exc:  # any parse-time failure must not break the DAG
        log.warning("drill schedule: inventory unusable (%s); using %r", str(exc).splitlines()[0], DEFAULT_SCHEDULE)
        return DEFAULT_SCHEDULE


def enabled_scenarios(drill: Drill) -> list[str]:
    """The scenarios this inventory can drill, in DRILL_SCENARIOS order: a host fault only with
    ``drill.fault_injector`` and its ``drill.inject_commands``."""
    return [s for s in DRILL_SCENARIOS
            if s not in HOST_FAULTS or (drill.fault_injector is not None and s in drill.inject_commands)]


def scenario_of_the_day(enabled: Sequence[str], logical_date: datetime) -> str:
    """The nightly rotation: the n-th day since 1970-01-01 (UTC) drills ``enabled[n % len(enabled)]``.

    Drills on consecutive days always differ (with two or more scenarios), and so do weekly ones
    (7 is no multiple of 2..5); a re-run of the same logical date drills the same scenario again.
    """
    if not enabled:
        raise ValueError("no drill scenario is enabled")
    at = logical_date if logical_date.tzinfo else logical_date.replace(tzinfo=timezone.utc)
    day = (at.astimezone(timezone.utc).date() - date(1970, 1, 1)).days
    return enabled[day % len(enabled)]


def fault_state(record: dict[str, Any] | None) -> str | None:
    """ATTEMPTED, CONFIRMED or None (no fault record). A record of an older pgha without ``state`` was
    written before the fault and again after it returned (``t_injected``)."""
    if not record:
        return None
    return record.get("state") or (CONFIRMED if "t_injected" in record else ATTEMPTED)


def worst_case(task: Any) -> timedelta:
    """A task's longest possible time with all its retries: every try waits SCHEDULING_SLACK to start
    and runs into its execution_timeout (a sensor: its timeout, counted from the try's first poke,
    then one more poke), with ``retry_delay`` between tries."""
    if task.execution_timeout is None:
        raise ValueError(f"{task.task_id} has no execution_timeout: its worst case is unbounded")
    if task.retry_exponential_backoff:
        raise ValueError(f"{task.task_id} backs off exponentially: its retry delays are not bounded here")
    per_try = SCHEDULING_SLACK + task.execution_timeout
    if hasattr(task, "poke_interval"):  # a sensor
        per_try += timedelta(seconds=task.timeout + task.poke_interval)
    return (task.retries + 1) * per_try + task.retries * task.retry_delay


def duration_s(text: str) -> float:
    """HAProxy durations as the inventory writes them (``500ms``, ``3s``) in seconds."""
    match = re.fullmatch(r"([0-9]+)(ms|s)", text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return int(match.group(1)) / (1000 if match.group(2) == "ms" else 1)


def default_rto_slo_s(inv: Inventory, scenario: str) -> float:
    """The RTO the timing settings promise when the inventory names no SLO.

    A replica sees the leader key go within ``loop_wait`` (at once on a clean
    release), a lost leader's key expires after ``ttl``; HAProxy marks the new
    leader UP after ``rise`` checks and a dead one DOWN after ``fall``.
    """
    p, h = inv.patroni, inv.haproxy
    up = h.rise * duration_s(h.downinter or h.inter)
    down = duration_s(h.inter) + (h.fall - 1) * duration_s(h.fastinter or h.inter)
    bounds = {
        "switchover": p.loop_wait + up,
        "patroni_stop": p.loop_wait + up,
        "postmaster_kill": p.loop_wait + down + up,
        "host_crash": p.ttl + p.loop_wait + up,
        "host_isolate": p.ttl + p.loop_wait + down + up,
    }
    return round(bounds[scenario] + PROMOTION_MARGIN_S, 1)


def rto_slo_s(inv: Inventory, scenario: str, override: float | None = None) -> float:
    """This run's RTO SLO: the Param, else ``drill.rto_slo_s``, else what the timings promise."""
    if scenario not in DRILL_SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    if override:
        return float(override)
    return float(inv.drill.rto_slo_s.get(scenario) or default_rto_slo_s(inv, scenario))


# --------------------------------------------------------------------------- the probe's log


@dataclass(frozen=True)
class Ack:
    seq: int
    at: float  # epoch seconds on the probe host, taken when the commit returned
    server: str  # inet_server_addr() of the connection: which node committed it


@dataclass
class ProbeLog:
    acks: list[Ack] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    stopped: float | None = None


def parse_probe_log(text: str) -> ProbeLog:
    """The probe's ack file; unreadable lines (a torn last line) are ignored."""
    out = ProbeLog()
    for line in text.splitlines():
        parts = line.split(maxsplit=3)
        try:
            if parts[0] != "#":
                seq, at, server = parts  # a torn last line has fewer fields
                out.acks.append(Ack(int(seq), float(at), server))
            elif parts[1] == "start":
                out.starts.append(float(parts[2]))
            elif parts[1] == "error":
                out.errors.append((float(parts[2]), parts[3] if len(parts) > 3 else ""))
            elif parts[1] in {"stopped", "timeout"}:
                out.stopped = float(parts[2])
        except (IndexError, ValueError):
            continue
    out.acks.sort(key=lambda a: a.at)
    return out


@dataclass(frozen=True)
class Gap:
    start: float  # last acknowledged commit before the gap
    end: float  # first one after it (or the probe's stop)

    @property
    def seconds(self) -> float:
        return self.end - self.start


def longest_gap(times: list[float], end: float | None = None) -> Gap | None:
    """The longest interval without an acknowledged commit.

    ``end`` (the probe's stop) closes the series: a probe that never
    committed again after the fault has a gap up to its stop.
    """
    points = sorted(times)
    if end is not None and points and end > points[-1]:
        points.append(end)
    if len(points) < 2:
        return None
    return max((Gap(a, b) for a, b in zip(points, points[1:])), key=lambda g: g.seconds)


def missing_acks(acked: list[int], present: set[int]) -> list[int]:
    """Acknowledged sequence numbers that are not in the table: lost writes (RPO)."""
    return sorted(set(acked) - present)


def first_ack_on(acks: list[Ack], server: str, after: float) -> Ack | None:
    """The first commit acknowledged by ``server`` after ``after``."""
    return next((a for a in acks if a.at > after and a.server == server), None)


def promotion_time(history: list[list[Any]], new_leader: str, after: float) -> float | None:
    """When Patroni recorded ``new_leader``'s promotion (GET /history), if after ``after``."""
    for entry in reversed(history):
        if len(entry) >= 5 and entry[4] == new_leader:
            try:
                at = datetime.fromisoformat(str(entry[3])).timestamp()
            except ValueError:
                return None
            return at if at >= after else None
    return None


# --------------------------------------------------------------------------- the verdict


@dataclass
class DrillResult:
    """What one drill measured; ``problems`` empty means it passed."""

    drill_id: str
    scenario: str
    target: str
    old_leader: str
    new_leader: str | None
    rto_slo_s: float
    injected_at: float
    outage_start: float | None = None  # the last acknowledged commit before the longest gap
    rto_s: float | None = None
    gap_start: float | None = None
    gap_end: float | None = None
    acked: int = 0
    rows: int = 0
    missing: list[int] = field(default_factory=list)
    time_to_new_leader_s: float | None = None
    time_to_routing_s: float | None = None
    time_to_old_leader_streaming_s: float | None = None
    probe_errors: int = 0
    probe_starts: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "missing": self.missing[:100], "rpo_missing": len(self.missing)}


def _since(at: float | None, start: float) -> float | None:
    return round(at - start, 3) if at is not None else None


def analyse(
    *,
    plan: dict[str, Any],
    injection: dict[str, Any],
    probe: ProbeLog,
    present: set[int],
    new_leader: str | None,
    new_leader_address: str | None,
    promoted_at: float | None,
    old_leader_streaming_at: float | None,
    incomplete: list[str],
) -> DrillResult:
    """RTO, RPO and the timeline of one drill, and every reason it failed."""
    injected_at = float(injection["t_inject"])
    result = DrillResult(
        drill_id=plan["drill_id"], scenario=plan["scenario"], target=plan["target"], old_leader=plan["leader"],
        new_leader=new_leader, rto_slo_s=float(plan["rto_slo_s"]), injected_at=injected_at,
        acked=len(probe.acks), rows=len(present), missing=missing_acks([a.seq for a in probe.acks], present),
        probe_errors=len(probe.errors), probe_starts=len(probe.starts),
    )
    gap = longest_gap([a.at for a in probe.acks], probe.stopped)
    if gap:
        result.rto_s, result.gap_start, result.gap_end = round(gap.seconds, 3), gap.start, gap.end
    # The timeline starts when the client lost its writes, not when the (slower) fault command returned.
    start = result.outage_start = gap.start if gap and gap.start >= injected_at else injected_at
    if new_leader != plan["leader"]:
        result.time_to_new_leader_s = _since(promoted_at, start)
    if new_leader_address:
        first = first_ack_on(probe.acks, new_leader_address, max(start, float(injection.get("t_injected") or 0)))
        result.time_to_routing_s = _since(first.at if first else None, start)
    if new_leader != plan["target"]:  # a target that leads again never had to stream
        result.time_to_old_leader_streaming_s = _since(old_leader_streaming_at, start)
    result.problems = _problems(result, plan, probe, incomplete)
    return result


def _problems(result: DrillResult, plan: dict[str, Any], probe: ProbeLog, incomplete: list[str]) -> list[str]:
    out = [f"step did not complete: {step}" for step in incomplete]
    if result.missing:
        out.append(f"RPO: {len(result.missing)} acknowledged write(s) missing (seq {result.missing[:10]})")
    if result.rto_s is None:
        out.append("RTO unknown: the probe acknowledged fewer than two commits")
    elif result.rto_s > result.rto_slo_s:
        out.append(f"RTO {result.rto_s:.2f}s exceeds the SLO of {result.rto_slo_s:.1f}s")
    if not any(a.at > result.injected_at for a in probe.acks):
        out.append("the probe never committed after the fault")
    if plan.get("leader_must_change") and result.new_leader == plan["leader"]:
        out.append(f"{plan['leader']} is still the leader after {plan['scenario']}")
    return out


def _clock(at: float | None) -> str:
    return datetime.fromtimestamp(at, timezone.utc).strftime("%H:%M:%S.%f")[:-3] if at else "-"


def _plus(seconds: float | None) -> str:
    return f"+{seconds:.2f}s" if seconds is not None else "-"


def summary(result: DrillResult, probe_host: str, interval_ms: int) -> str:
    """One screen for the task log."""
    rto = f"{result.rto_s:.2f}s" if result.rto_s is not None else "unknown"
    lines = [
        f"{' pgha failover drill ' + result.drill_id + ' ':=^78}",
        f"verdict       {'PASS' if result.passed else 'FAIL'}",
        f"scenario      {result.scenario} on {result.target} "
        f"(leader {result.old_leader} -> {result.new_leader or '?'})",
        f"injected at   {_clock(result.injected_at)} UTC",
        f"RTO           {rto}  (SLO {result.rto_slo_s:.1f}s)  longest commit gap "
        f"{_clock(result.gap_start)} -> {_clock(result.gap_end)}",
        f"RPO           {len(result.missing)} acknowledged write(s) missing "
        f"({result.acked} acknowledged, {result.rows} rows in the table)",
        "timeline      from the last commit before the outage:",
        f"  new leader  {_plus(result.time_to_new_leader_s)}  (promotion recorded by Patroni)",
        f"  HAProxy     {_plus(result.time_to_routing_s)}  (first commit acknowledged by the leader)",
        f"  target back {_plus(result.time_to_old_leader_streaming_s)}  (the old leader streams again)",
        f"probe         on {probe_host} every {interval_ms} ms: {result.probe_errors} error event(s), "
        f"{result.probe_starts} start(s)",
    ]
    lines += [f"problem       {p}" for p in result.problems] or ["problems      none"]
    return "\n".join(lines + ["=" * 78])
