"""Charts of the runs list, drawn on the server as SVG: no JavaScript library, no CDN.

The functions here only compute geometry (plain numbers and labels the code makes itself); the templates
`includes/chart_*.html` draw it with a <title> and <desc>, so a screen reader gets the figures too.
"""

import math
import statistics
from dataclasses import dataclass, field
from decimal import Decimal

WIDTH, HEIGHT = 460, 220
LEFT, RIGHT, TOP, BOTTOM = 46, 12, 22, 34  # margins for the axes' labels
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM


@dataclass
class Chart:
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    top: int = TOP
    right_x: int = WIDTH - RIGHT
    base_y: int = HEIGHT - BOTTOM
    y_ticks: list[dict] = field(default_factory=list)  # {"y", "label"}
    x_ticks: list[dict] = field(default_factory=list)  # {"x", "label"}
    points: list[dict] = field(default_factory=list)
    bars: list[dict] = field(default_factory=list)
    line: str = ""  # an SVG path
    summary: str = ""  # the figures in words, for <desc> and the caption
    empty: bool = True

    @property
    def mid_x(self) -> float:
        return LEFT + PLOT_W / 2

    @property
    def mid_y(self) -> float:
        return TOP + PLOT_H / 2


def success_by_iteration(succeeded_at: dict[int, int], ended: int, max_iterations: int = 8) -> Chart:
    """Cumulative share of ended runs that had succeeded by iteration k (CodeDistiller's own analysis).

    succeeded_at: {iteration number: runs that succeeded there}; ended: succeeded + failed runs;
    max_iterations: the furthest iteration those runs reached, where the chart ends.
    """
    chart = Chart()
    last = max([max_iterations, *succeeded_at]) if succeeded_at else max_iterations
    last = max(1, min(last, 50))
    chart.y_ticks = [{"y": _y(share), "label": f"{round(share * 100)}%"} for share in (0, 0.25, 0.5, 0.75, 1)]
    if not ended:
        chart.summary = "No run has finished yet."
        return chart
    chart.empty = False
    step = PLOT_W / max(1, last - 1) if last > 1 else 0
    total = 0
    for k in range(1, last + 1):
        total += succeeded_at.get(k, 0)
        share = total / ended
        x = LEFT + (k - 1) * step if last > 1 else LEFT + PLOT_W / 2
        y = _y(share)
        # The first and last labels lean inwards, off the axis labels and the edge.
        anchor = "start" if k == 1 and last > 1 else "end" if k == last and last > 1 else "middle"
        chart.points.append(
            {"x": round(x, 1), "y": round(y, 1), "k": k, "label": f"{share:.0%}", "anchor": anchor}
        )
        chart.x_ticks.append({"x": round(x, 1), "label": str(k)})
    chart.line = "M" + " L".join(f"{p['x']},{p['y']}" for p in chart.points)
    parts = [f"by iteration {p['k']}: {p['label']}" for p in chart.points]
    chart.summary = (
        f"Of {ended} finished runs (cancelled ones aside), the share that had succeeded " + "; ".join(parts)
    )
    return chart


def cost_per_run(runs: list[dict]) -> Chart:
    """Bars of the cost of the given finished runs, oldest first.

    runs: {"pk", "cost_usd", "status"}, newest first (as the database returns them).
    """
    chart = Chart()
    runs = list(reversed(runs))
    costs = [float(r["cost_usd"] or Decimal(0)) for r in runs]
    top = _nice_ceiling(max(costs, default=0))
    # Runs of the local model cost nothing: one tick at $0, not three that all read "$0".
    chart.y_ticks = [
        {"y": round(TOP + PLOT_H - PLOT_H * frac, 1), "label": _axis_money(top * frac, top)}
        for frac in ((0, 0.5, 1) if top else (0,))
    ]
    if not runs:
        chart.summary = "No run has finished yet."
        return chart
    chart.empty = False
    slot = PLOT_W / len(runs)
    width = max(2.0, min(24.0, slot * 0.7))
    for i, (run, cost) in enumerate(zip(runs, costs, strict=True)):
        height = PLOT_H * cost / top if top else 0
        x = LEFT + i * slot + (slot - width) / 2
        chart.bars.append({
            "pk": run["pk"], "x": round(x, 1), "y": round(TOP + PLOT_H - height, 1), "w": round(width, 1),
            "h": round(max(height, 1.0), 1), "status": run["status"], "label": _dollars(cost),
        })  # fmt: skip
    chart.x_ticks = [
        {"x": round(LEFT + slot / 2, 1), "label": f"#{runs[0]['pk']}"},
        {"x": round(LEFT + (len(runs) - 0.5) * slot, 1), "label": f"#{runs[-1]['pk']}"},
    ]
    median = statistics.median(costs)
    chart.line = f"M{LEFT},{_cost_y(median, top)} L{WIDTH - RIGHT},{_cost_y(median, top)}" if top else ""
    chart.summary = (
        f"The last {len(runs)} finished runs cost {_dollars(sum(costs))} in all: "
        f"median {_dollars(median)}, highest {_dollars(max(costs))} a run."
    )
    return chart


def _y(share: float) -> float:
    return round(TOP + PLOT_H * (1 - share), 1)


def _cost_y(cost: float, top: float) -> float:
    return round(TOP + PLOT_H - PLOT_H * cost / top, 1)


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10^n at or above value, so the axis reads in round figures."""
    if value <= 0:
        return 0.0
    magnitude = 10 ** math.floor(math.log10(value))
    for factor in (1, 2, 2.5, 5, 10):
        if value <= factor * magnitude + 1e-12:
            return factor * magnitude
    return 10 * magnitude  # pragma: no cover


def _axis_money(value: float, top: float) -> str:
    """An axis label at the axis's own scale: cents below a dollar ("2.5¢"), dollars above ("$2.5")."""
    if value == 0:
        return "$0"
    if top < 1:
        return f"{value * 100:.4g}¢"
    return f"${value:.4g}"


def _dollars(value: float) -> str:
    if value == 0:
        return "$0"
    if value < 0.01:
        return f"${value:.4f}"
    return f"${value:.2f}"


def share_by_day(days: list[tuple[str, int, int]], *, what: str) -> Chart:
    """A line of the share of good outcomes a day, oldest first: the library's health over time.

    days: (label, good, total) a day that had any; what: the outcome in words ("verified"), for <desc>.
    """
    chart = Chart()
    chart.y_ticks = [{"y": _y(share), "label": f"{round(share * 100)}%"} for share in (0, 0.25, 0.5, 0.75, 1)]
    days = [day for day in days if day[2]]
    if not days:
        chart.summary = "Nothing was checked in this time."
        return chart
    chart.empty = False
    step = PLOT_W / (len(days) - 1) if len(days) > 1 else 0
    for i, (label, good, total) in enumerate(days):
        x = LEFT + i * step if len(days) > 1 else LEFT + PLOT_W / 2
        anchor = (
            "start"
            if i == 0 and len(days) > 1
            else "end"
            if i == len(days) - 1 and len(days) > 1
            else "middle"
        )
        chart.points.append({"x": round(x, 1), "y": _y(good / total), "k": label, "anchor": anchor,
                             "label": f"{good / total:.0%}", "detail": f"{good} of {total}"})  # fmt: skip
    chart.line = "M" + " L".join(f"{p['x']},{p['y']}" for p in chart.points)
    # The first and last labels lean inwards, off the edge.
    chart.x_ticks = [{"x": chart.points[0]["x"], "label": days[0][0], "anchor": chart.points[0]["anchor"]}]
    if len(days) > 1:
        chart.x_ticks.append({"x": chart.points[-1]["x"], "label": days[-1][0], "anchor": "end"})
    good, total = sum(d[1] for d in days), sum(d[2] for d in days)
    chart.summary = (
        f"Of {total} checks over {len(days)} day{'s' if len(days) != 1 else ''}, {good} found the example "
        f"{what} ({good / total:.0%}); " + "; ".join(f"{p['k']}: {p['detail']}" for p in chart.points[-7:])
    )
    return chart
