"""Checks every rendered figure must pass: paper size, not blank, small enough to commit, legends that
match the lines, a layout without overlaps, ticks on every panel. A plain module shared by test_plots.py,
test_plot_rows.py and test_model_suite.py."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle
from matplotlib.text import Text
from matplotlib.transforms import Bbox
from PIL import Image

from bench.schema.registry_facts import RegistryFacts
from bench.report.figure_axes import UNMEASURED
from bench.report.figure_style import COLUMN_WIDTH, FULL_WIDTH, MAX_HEIGHT, PNG_DPI, backend_style, plot_style

MAX_PNG_BYTES = 1 << 20


def check_png(path: Path) -> None:
    """A column or text width at PNG_DPI, at most MAX_HEIGHT tall, ink on it, and at most 1 MB."""
    assert path.stat().st_size <= MAX_PNG_BYTES, (path, path.stat().st_size)
    image = np.asarray(Image.open(path).convert("RGB"))
    height, width, _ = image.shape
    assert COLUMN_WIDTH * PNG_DPI * 0.98 <= width <= FULL_WIDTH * PNG_DPI * 1.02, (path, width)
    assert 1.0 * PNG_DPI <= height <= MAX_HEIGHT * PNG_DPI, (path, height)
    ink = (image < 200).any(axis=2).mean()
    colours = len(np.unique(image.reshape(-1, 3)[::7], axis=0))
    assert ink > 0.01 and colours > 16, (path, ink, colours)  # text, axes and coloured marks, not a blank page


def _style(line: Line2D) -> tuple[str, str]:
    return str(line.get_linestyle()), str(line.get_marker())


def marker_of(line: Line2D) -> tuple[str, str]:
    """A mark's marker: its shape and fill style (a compiled backend's is half filled)."""
    return line.get_marker(), line.get_fillstyle()


def style_marker(marker) -> tuple[str, str]:
    """``marker_of`` of a marker as ``backend_style`` gives it (a shape, or a MarkerStyle)."""
    style = MarkerStyle(marker)
    return style.get_marker(), style.get_fillstyle()


def check_legends_match(figure: Figure, facts: RegistryFacts) -> int:
    """Every drawn mark of a backend (gid 'backend:<name>') has the backend's marker (shape and fill style), and
    its line (if any) the backend's line style; so has the backend's legend entry. Returns how many marks were
    checked."""
    drawn = [(line, line.get_gid().split(":", 1)[1]) for ax in figure.axes for line in ax.get_lines()
             if (line.get_gid() or "").startswith("backend:")]
    for line, backend in drawn:
        linestyle, marker = backend_style(backend, facts)
        if line.get_marker() not in ("None", "", None):
            assert marker_of(line) == style_marker(marker), (backend, marker_of(line), style_marker(marker))
        if line.get_linestyle() not in ("None", ""):
            assert _style(line)[0] == _style(Line2D([], [], linestyle=linestyle))[0], (backend, _style(line))
    entries = {handle.get_label(): handle for legend in figure.legends for handle in legend.legend_handles
               if isinstance(handle, Line2D)}
    for backend in {b for _, b in drawn}:
        assert backend in entries, f"{backend} is drawn but not in the legend"
        entry = entries[backend]
        linestyle, marker = backend_style(backend, facts)
        assert marker_of(entry) == style_marker(marker), backend
        if entry.get_linestyle() not in ("None", ""):
            assert _style(entry)[0] == _style(Line2D([], [], linestyle=linestyle))[0], backend
    return len(drawn)


def colours_of(figure: Figure, gid_prefix: str) -> dict[str, set[tuple]]:
    """The RGB colours of the marks with a gid '<prefix>:<name>', per name."""
    out: dict[str, set[tuple]] = {}
    for ax in figure.axes:
        for line in ax.get_lines():
            gid = line.get_gid() or ""
            if gid.startswith(gid_prefix + ":"):
                out.setdefault(gid.split(":", 1)[1], set()).add(tuple(round(c, 3) for c in to_rgb(line.get_color())))
    return out


def drawn_figure(figure: Figure) -> Figure:
    """``figure`` laid out and drawn (on an Agg canvas, in the figures' style), so that its artists have
    their final places and extents."""
    FigureCanvasAgg(figure)
    with plot_style():
        figure.canvas.draw()
    return figure


def labelled_ticks(axis) -> list[str]:
    """The labels of an axis's major ticks within its limits (a locator may return some beyond them), as its
    formatter writes them (a panel that shares its row's axis shows them beside the row's first panel)."""
    low, high = sorted(axis.get_view_interval())
    values = [value for value in axis.get_majorticklocs() if low * (1 - 1e-9) <= value <= high * (1 + 1e-9)]
    return [text for text in axis.get_major_formatter().format_ticks(values) if text]


def layout_boxes(figure: Figure) -> dict[str, Bbox]:
    """The drawn figure's own texts (title and caption), legends, and per panel its title, axis labels and
    tick labels within limits."""
    boxes = {f"figure text {i}": text.get_window_extent()
             for i, text in enumerate(c for c in figure.get_children() if isinstance(c, Text) and c.get_text())}
    boxes |= {f"legend {i}": legend.get_window_extent() for i, legend in enumerate(figure.legends)}
    for k, ax in enumerate(figure.axes):
        for text in (ax.title, ax.xaxis.label, ax.yaxis.label):
            if text.get_text():
                boxes[f"panel {k}: {text.get_text()}"] = text.get_window_extent()
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for value, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels()):
                if low * (1 - 1e-9) <= value <= high * (1 + 1e-9) and label.get_text() and label.get_visible():
                    boxes[f"panel {k}: tick {label.get_text()}"] = label.get_window_extent()
    return boxes


def check_layout(figure: Figure) -> None:
    """Title, legends, panel titles, axis labels and tick labels inside the figure and apart from each other;
    the names of cases without a value inside their panel."""
    boxes = layout_boxes(drawn_figure(figure))
    for ax in figure.axes:
        panel = ax.get_window_extent()
        strays = [text.get_text() for text in ax.texts if text.get_gid() == UNMEASURED
                  and not panel.x0 - 1 <= text.get_window_extent().x0 <= text.get_window_extent().x1 <= panel.x1 + 1]
        assert not strays, f"named outside their panel {ax.get_title()!r}: {strays}"
    page = figure.bbox
    outside = [name for name, box in boxes.items()
               if box.x0 < page.x0 - 0.5 or box.y0 < page.y0 - 0.5 or box.x1 > page.x1 + 0.5 or box.y1 > page.y1 + 0.5]
    assert not outside, f"outside the figure: {outside}"
    overlapping = [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2)
                   if box_a.overlaps(box_b)]
    assert not overlapping, f"overlapping: {overlapping}"
