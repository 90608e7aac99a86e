"""The figure engine's axes and marks: log axes with plain-number ticks, a backend's line, the names of cases
without a value at the foot of a panel, arrows where an interval runs beyond its axis, and ``styled``, which
draws a plot function in the figures' style and finishes it.

Rules every figure follows:

- **Intervals.** Latency carries its p20–p80 band, a paired speedup its 95% confidence interval. A
  log axis spans every point, and each interval up to ``REACH`` times beyond the points; an interval
  cut by the axis's limits ends in an arrow at the edge, so the reader sees it goes on.
- **Ticks.** Log axes get plain-number ticks for the limits they end up with (decades, 1-3, 1-2-5 or
  finer steps): at least two labelled ticks on every panel.
- **Names.** A case without a value is named with its status at its x position, at the foot of its panel
  (``name_unmeasured``); the panel's log axis is lowered to make room for the names.
"""

from __future__ import annotations

import functools
import math
import textwrap
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.collections import PolyCollection
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from bench.schema.registry_facts import RegistryFacts
from bench.report.figure_style import backend_marker, backend_style, plot_style
from bench.report.plot_data import status_rank

REACH = 3.0  # how far (a factor) beyond the points a log axis stretches for an interval; further, it is cut
UNMEASURED = "unmeasured"  # gid of the texts naming cases without a drawn value
CLIPPED = "clipped"  # gid of the arrows ending intervals cut by an axis


def fixed_ticks(axis, values) -> None:
    axis.set_major_locator(ticker.FixedLocator(list(values)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(ticker.NullLocator())


class PlainLogLocator(ticker.Locator):
    """Ticks of a log axis at plain numbers ('0.2', '5', '300' rather than powers of ten), for the limits
    the axis has when drawn: the coarsest of decades, 1-3, 1-2-5 and finer steps that puts three ticks
    within them, else the finest if it puts two, else evenly spaced ticks (an axis narrower than a step).
    So every panel gets at least two, whatever its limits."""

    STEPS = ((1,), (1, 3), (1, 2, 5), (1, 1.5, 2, 3, 5, 7), (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 7, 8, 9))

    def __call__(self) -> list[float]:
        return self.tick_values(*self.axis.get_view_interval())

    def tick_values(self, vmin: float, vmax: float) -> list[float]:
        vmin, vmax = sorted((vmin, vmax))
        if not (vmin > 0 and np.isfinite(vmax)):
            return []
        decades = range(math.floor(math.log10(vmin)), math.ceil(math.log10(vmax)) + 1)
        candidates = [[v for d in decades for s in steps if vmin <= (v := float(f"{s}e{d}")) <= vmax]
                      for steps in self.STEPS]
        enough = [ticks for ticks in candidates if len(ticks) >= 3]
        if enough or len(candidates[-1]) >= 2:
            return enough[0] if enough else candidates[-1]
        return list(ticker.MaxNLocator(nbins=3).tick_values(vmin, vmax))


def log_limits(points, lows=(), highs=(), min_span: float = 3.0) -> tuple[float, float]:
    """Limits of a log axis: every point, and each interval (``lows`` to ``highs``) as far as REACH times
    beyond the points, where it is cut (``_mark_clipped``); on each side a margin of 5% of the span on the
    log scale, more where the axis would span less than a factor ``min_span`` (so that ``PlainLogLocator``
    finds plain ticks around a single point; 1 for an axis whose ticks are the data's own values)."""
    def positive(values) -> np.ndarray:
        values = pd.to_numeric(pd.Series(list(values), dtype=object), errors="coerce").to_numpy(float)
        return values[np.isfinite(values) & (values > 0)]
    points, lows, highs = positive(points), positive(lows), positive(highs)
    if not len(points):
        return 1.0, 10.0
    low, high = points.min(), points.max()
    low = max(min([low, *lows]), low / REACH)
    high = min(max([high, *highs]), high * REACH)
    margin = max((min_span * low / high) ** 0.5, (high / low) ** 0.05)
    return low / margin, high * margin


def log_axis(ax, which: str, points, lows=(), highs=(), suffix: str = "", min_span: float = 3.0) -> None:
    """``ax``'s x or y axis (``which``) in log scale over ``points`` and their intervals (``log_limits``),
    with plain-number ticks (``PlainLogLocator``) ending in ``suffix``."""
    getattr(ax, f"set_{which}scale")("log")
    getattr(ax, f"set_{which}lim")(*log_limits(points, lows, highs, min_span))
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(PlainLogLocator())
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}{suffix}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def log_log(ax, x_values, y_points, y_lows=(), y_highs=()) -> None:
    """Log axes over ``x_values`` and the y points with their intervals; the x ticks at the data's own
    values when there are few whole ones (resolutions)."""
    x_values = sorted({float(v) for v in x_values})
    own_ticks = len(x_values) <= 6 and all(v.is_integer() for v in x_values)
    log_axis(ax, "x", x_values, min_span=1.0 if own_ticks else 3.0)
    if own_ticks:
        fixed_ticks(ax.xaxis, x_values)
    log_axis(ax, "y", y_points, y_lows, y_highs)


def with_band(table: pd.DataFrame, value: str, band: bool) -> tuple[pd.Series, ...]:
    """``table[value]``, and its p20 and p80 latencies when the ``band`` is drawn: what a log axis spans."""
    return (table[value], table["latency_ms_p20"], table["latency_ms_p80"]) if band else (table[value],)


def style_line(ax, line: pd.DataFrame, value: str, timing: bool, color, backend: str, facts: RegistryFacts,
               x: str = "resolution") -> None:
    """A backend's line in ``color`` and its style; for a ``timing``, hollow markers where the row is noisy
    and the p20-p80 band (peak memory is no timing: filled markers)."""
    if line.empty:
        return
    ax.plot(line[x], line[value], color=color, linestyle=backend_style(backend, facts)[0], gid=f"backend:{backend}")
    for noisy, points in line.groupby(line["noisy"].astype(bool) & timing):
        ax.plot(points[x], points[value], linestyle="", color=color, **backend_marker(backend, facts, color, noisy),
                gid=f"backend:{backend}")
    if timing:
        ax.fill_between(line[x], line["latency_ms_p20"], line["latency_ms_p80"], color=color, alpha=0.18, linewidth=0)


def name_unmeasured(ax, cases: pd.DataFrame, x: str, name: str) -> None:
    """Name the ``cases`` without a value (``unmeasured``) where their points would be: at their ``x``,
    from the panel's foot up, a line per status with the cases' ``name`` ('oom: sdpa, torch'); left
    of the panel's first third aligned left, in its last third right, so that the names stay inside.
    ``finish`` lowers the panel's log axis so that the data clears them. Set the x limits first."""
    if cases.empty:
        return
    left, right = sorted(ax.get_xlim())
    scale = np.log if ax.get_xscale() == "log" else (lambda v: v)
    for position, at in cases.groupby(x, sort=True):
        by_status = sorted(at.groupby("status"), key=lambda item: status_rank(item[0].split("/")[0]))
        lines = [line for status, group in by_status
                 for line in textwrap.wrap(f"{status}: {', '.join(dict.fromkeys(map(str, group[name])))}", 26)]
        where = (scale(position) - scale(left)) / (scale(right) - scale(left))
        align = "left" if where < 1 / 3 else "right" if where > 2 / 3 else "center"
        ax.text(position, 0.02, "\n".join(lines), transform=ax.get_xaxis_transform(), ha=align, va="bottom",
                fontsize=5.5, linespacing=1.1, color="0.3", gid=UNMEASURED)


def finish(fig: Figure) -> None:
    """What needs the figure's final layout and limits: room at the panels' foot for the names of cases
    without a value (``_room_for_names``), then arrows where an interval runs beyond its panel."""
    if any(text.get_gid() == UNMEASURED for ax in fig.axes for text in ax.texts):
        fig.draw_without_rendering()
        for ax in fig.axes:
            _room_for_names(ax)
    for ax in fig.axes:
        _mark_clipped(ax)


def _room_for_names(ax) -> None:
    """Stack the names at a log y axis's foot where they would overlap, and lower its bottom until the lowest
    value drawn on it lies above them."""
    names = [text for text in ax.texts if text.get_gid() == UNMEASURED]
    if not names or ax.get_yscale() != "log":
        return
    box = ax.get_window_extent()
    placed = []
    for text in sorted(names, key=lambda text: text.get_window_extent().x0):
        while blocking := [other for other in placed if other.overlaps(text.get_window_extent())]:
            text.set_y(text.get_position()[1] + (max(other.y1 for other in blocking) + 2
                                                 - text.get_window_extent().y0) / box.height)
        placed.append(text.get_window_extent())
    above = min(0.8, (max(text.get_window_extent().y1 for text in names) - box.y0) / box.height + 0.04)
    bottom, top = ax.get_ylim()
    lowest = max(ax.dataLim.y0, bottom)
    needed = math.exp((math.log(lowest) - above * math.log(top)) / (1 - above))
    if needed < bottom:
        ax.set_ylim(needed, top)


def _mark_clipped(ax) -> None:
    """An arrow at the panel's edge where an interval (error bar, p20-p80 band) runs beyond its limits."""
    limits = {"x": sorted(ax.get_xlim()), "y": sorted(ax.get_ylim())}
    for container in ax.containers:
        if isinstance(container, ErrorbarContainer):
            for bars in container.lines[2]:
                color = bars.get_colors()[0]
                for (x0, y0), (x1, y1) in bars.get_segments():
                    which, at, ends = ("x", y0, (x0, x1)) if y0 == y1 else ("y", x0, (y0, y1))
                    _arrows_beyond(ax, which, at, ends, limits[which], color)
    for band in ax.collections:
        if isinstance(band, PolyCollection):
            vertices = np.concatenate([path.vertices for path in band.get_paths()])
            color = band.get_facecolor()[0][:3]
            for x in np.unique(vertices[:, 0]):
                _arrows_beyond(ax, "y", x, vertices[vertices[:, 0] == x, 1], limits["y"], color)


def _arrows_beyond(ax, which: str, at: float, ends, limits: list[float], color) -> None:
    """Arrows at the edges of ``ax`` that an interval along ``which`` (at ``at`` on the other axis) runs beyond."""
    for side, beyond in ((0, min(ends) < limits[0]), (1, max(ends) > limits[1])):  # side: as an axes fraction
        if not beyond:
            continue
        inward = 7 if side == 0 else -7  # points: the arrow's tail, inside the panel
        xy, transform, tail = (((side, at), ax.get_yaxis_transform(), (inward, 0)) if which == "x"
                               else ((at, side), ax.get_xaxis_transform(), (0, inward)))
        ax.annotate("", xy=xy, xycoords=transform, xytext=tail, textcoords="offset points", annotation_clip=False,
                    arrowprops={"arrowstyle": "-|>", "color": color, "lw": 0.8, "shrinkA": 0, "shrinkB": 0,
                                "mutation_scale": 6}, gid=CLIPPED)


PlotFunction = Callable[[pd.DataFrame, RegistryFacts], Figure | None]


def styled(function: PlotFunction) -> PlotFunction:
    """A plot function drawn in the figures' style, and finished (``finish``) once drawn."""
    @functools.wraps(function)
    def wrapper(frame: pd.DataFrame, facts: RegistryFacts) -> Figure | None:
        with plot_style():
            figure = function(frame, facts)
            if figure is not None:
                finish(figure)
            return figure
    return wrapper
