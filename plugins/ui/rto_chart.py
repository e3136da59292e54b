"""One scenario's RTO over time as inline SVG, drawn on the server (no script, no external asset).

Every point is a drill (green passed, red failed, its tooltip the numbers); the
dashed line is the SLO each drill was held to. Text is escaped for XML.
"""

from __future__ import annotations

from datetime import datetime, timezone
from html import escape

from markupsafe import Markup

from pgha.ui.drill_history import DrillRow

WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 16, 14, 34  # margins: axis labels live there
PASS_COLOUR, FAIL_COLOUR, SLO_COLOUR = "#2e7d32", "#c62828", "#ef6c00"


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 100 else f"{value:.0f} s"


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%d")


class _Scale:
    """Drill time -> x, seconds -> y, inside the margins."""

    def __init__(self, drills: list[DrillRow]) -> None:
        self.t0 = drills[0].injected_at
        self.t1 = drills[-1].injected_at
        values = [d.rto_slo_s for d in drills] + [d.rto_s for d in drills if d.rto_s is not None]
        self.top_s = max(values) * 1.15 or 1.0

    def x(self, epoch: float) -> float:
        span = self.t1 - self.t0
        left, width = LEFT, WIDTH - LEFT - RIGHT
        return left + width / 2 if span <= 0 else left + width * (epoch - self.t0) / span

    def y(self, seconds: float) -> float:
        height = HEIGHT - TOP - BOTTOM
        return TOP + height * (1 - min(seconds, self.top_s) / self.top_s)


def _slo_path(drills: list[DrillRow], scale: _Scale) -> str:
    """A step line: each drill's SLO from its time until the next drill's."""
    points = []
    for index, drill in enumerate(drills):
        x0 = scale.x(drill.injected_at) if index else LEFT
        x1 = scale.x(drills[index + 1].injected_at) if index + 1 < len(drills) else WIDTH - RIGHT
        y = scale.y(drill.rto_slo_s)
        points += [f"{x0:.1f},{y:.1f}", f"{x1:.1f},{y:.1f}"]
    return " ".join(points)


def _point(drill: DrillRow, scale: _Scale) -> str:
    verdict = "passed" if drill.passed else "FAILED"
    rto = _seconds(drill.rto_s) if drill.rto_s is not None else "not measured"
    tip = (f"{drill.drill_id} ({drill.injected_iso}): RTO {rto}, SLO {_seconds(drill.rto_slo_s)}, "
           f"{drill.rpo_missing} lost writes, {verdict}")
    colour = PASS_COLOUR if drill.passed else FAIL_COLOUR
    x = scale.x(drill.injected_at)
    if drill.rto_s is None:  # no RTO (the drill did not complete): a cross on the time axis
        y = HEIGHT - BOTTOM
        return (f'<path class="drill failed" d="M{x - 4:.1f},{y - 4:.1f}L{x + 4:.1f},{y + 4:.1f}'
                f'M{x - 4:.1f},{y + 4:.1f}L{x + 4:.1f},{y - 4:.1f}" stroke="{colour}" stroke-width="2">'
                f"<title>{escape(tip)}</title></path>")
    return (f'<circle class="drill {"passed" if drill.passed else "failed"}" cx="{x:.1f}" '
            f'cy="{scale.y(drill.rto_s):.1f}" r="4" fill="{colour}"><title>{escape(tip)}</title></circle>')


def rto_chart_svg(scenario: str, drills: list[DrillRow]) -> Markup:
    """The chart for one scenario's drills (oldest first); empty when there is none."""
    if not drills:
        return Markup("")
    scale = _Scale(drills)
    bottom, right = HEIGHT - BOTTOM, WIDTH - RIGHT
    slo_now = drills[-1].rto_slo_s
    measured = [d for d in drills if d.rto_s is not None]
    line = " ".join(f"{scale.x(d.injected_at):.1f},{scale.y(d.rto_s):.1f}" for d in measured)  # type: ignore[arg-type]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="rto-chart" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(f"RTO of every {scenario} drill")}">',
        f"<title>{escape(f'RTO of every {scenario} drill against its SLO')}</title>",
        f'<line x1="{LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#555"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{bottom}" stroke="#555"/>',
        f'<text x="{LEFT - 6}" y="{bottom}" text-anchor="end" font-size="11">0 s</text>',
        f'<text x="{LEFT - 6}" y="{TOP + 10}" text-anchor="end" font-size="11">{escape(_seconds(scale.top_s))}</text>',
        f'<polyline class="slo" points="{_slo_path(drills, scale)}" fill="none" stroke="{SLO_COLOUR}" '
        f'stroke-width="1.5" stroke-dasharray="6 4"><title>{escape(f"SLO {_seconds(slo_now)}")}</title></polyline>',
        f'<text class="slo-label" x="{right}" y="{scale.y(slo_now) - 4:.1f}" text-anchor="end" font-size="11" '
        f'fill="{SLO_COLOUR}">{escape(f"SLO {_seconds(slo_now)}")}</text>',
        f'<polyline class="rto" points="{line}" fill="none" stroke="#1565c0" stroke-width="1"/>' if line else "",
        *(_point(d, scale) for d in drills),
        f'<text x="{LEFT}" y="{HEIGHT - 10}" font-size="11">{escape(_day(drills[0].injected_at))}</text>',
        f'<text x="{right}" y="{HEIGHT - 10}" text-anchor="end" font-size="11">'
        f"{escape(_day(drills[-1].injected_at))}</text>",
        "</svg>",
    ]
    return Markup("".join(parts))
