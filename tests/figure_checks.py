"""Checks every rendered figure must pass: paper size, not blank, small enough to commit, legends that
match the lines. A plain module shared by test_plots.py and test_model_suite.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from bench.plots import COLUMN_WIDTH, FULL_WIDTH, MAX_HEIGHT, PNG_DPI, backend_style

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


def check_legends_match(figure: Figure) -> int:
    """Every drawn mark of a backend (gid 'backend:<name>') has the backend's marker, and its line (if any)
    the backend's line style; so has the backend's legend entry. Returns how many marks were checked."""
    drawn = [(line, line.get_gid().split(":", 1)[1]) for ax in figure.axes for line in ax.get_lines()
             if (line.get_gid() or "").startswith("backend:")]
    for line, backend in drawn:
        linestyle, marker = backend_style(backend)
        if line.get_marker() not in ("None", "", None):
            assert line.get_marker() == marker, (backend, line.get_marker(), marker)
        if line.get_linestyle() not in ("None", ""):
            assert _style(line)[0] == _style(Line2D([], [], linestyle=linestyle))[0], (backend, _style(line))
    entries = {handle.get_label(): handle for legend in figure.legends for handle in legend.legend_handles
               if isinstance(handle, Line2D)}
    for backend in {b for _, b in drawn}:
        assert backend in entries, f"{backend} is drawn but not in the legend"
        entry = entries[backend]
        assert entry.get_marker() == backend_style(backend)[1], backend
        if entry.get_linestyle() not in ("None", ""):
            assert _style(entry)[0] == _style(Line2D([], [], linestyle=backend_style(backend)[0]))[0], backend
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
