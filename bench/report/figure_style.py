"""The figure engine's look: sizes, palette, line styles, the matplotlib style, layout (a grid of panels, the
title and caption, legends), and saving. Which figures a report has is the content's (``bench.report.plots``,
``bench.report.plots_bra``); the axes (log scales, ticks, names of cases, clipped intervals) are
``bench.report.figure_axes``'.

Rules every figure follows:

- **Size.** The width of a two-column paper's text (``FULL_WIDTH``, 7 in) or of one column
  (``COLUMN_WIDTH``, 3.3 in), at most ``MAX_HEIGHT`` (9 in) tall, 8 pt text at that size. Several
  panels are facets (phase, family, resolution), never one crowded axis or an endless column.
- **Layout.** Each panel gets a height of its own; the title, caption and legends get theirs on top of
  it (measured, not guessed), so a small run keeps the same readable panels as a large one, and
  constrained layout keeps title, legends, tick labels and axis labels apart and inside the figure.
- **Encoding.** A family keeps its hue in every figure (Okabe-Ito, colour-blind safe:
  ``FAMILY_PALETTE``, in the order of the runs' registry facts); a backend keeps its line style and
  marker (``backend_style``), and a compiled backend ('torch+compile') its plain backend's, the marker half
  filled; resolutions, where they share a panel, are shades of the family's hue.
  Legends are built from the same styles as the lines, so they match.

Figures are ``matplotlib.figure.Figure`` objects (no pyplot, no global backend switch); the style is
set in an ``rc_context`` around drawing and saving only (``plot_style``). Each is saved as PNG (200 dpi,
to look at) and PDF (vector, to print).
"""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path
from typing import Iterator

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.markers import MarkerStyle

from bench.report.plot_data import backend_order
from bench.schema.columns import EAGER
from bench.schema.labels import label_parts
from bench.schema.registry_facts import RegistryFacts
from bench.schema.storage import atomic_write

FULL_WIDTH, COLUMN_WIDTH, MAX_HEIGHT = 7.0, 3.3, 9.0  # inches
PNG_DPI = 200
RC = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "xtick.labelsize": 7, "ytick.labelsize": 7,
    "legend.fontsize": 7, "legend.title_fontsize": 7, "figure.titlesize": 8, "lines.linewidth": 1.2,
    "lines.markersize": 4.0, "pdf.fonttype": 42, "ps.fonttype": 42, "figure.dpi": 100,
    "legend.frameon": False, "axes.titlepad": 3, "axes.labelpad": 2, "xtick.major.pad": 2, "ytick.major.pad": 2,
}
# Okabe & Ito's colour-blind-safe palette, one hue per family in registry order.
FAMILY_PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
# (line style, marker) per backend, in the registry's order of backends.
STYLES = [("-", "o"), ("--", "s"), ("-.", "D"), ((0, (3, 1, 1, 1, 1, 1)), "p"), ((0, (1, 1)), "h"),
          ((0, (5, 2)), "X"), (":", "^"), ((0, (5, 1, 1, 1)), "P"), ((0, (3, 1)), "v"), ((0, (6, 2, 1, 2)), "<")]
# A compiled backend's marker: its plain backend's, half filled; which half, by torch.compile's mode.
COMPILED_FILLS = {"default": "top", "max-autotune": "bottom", "reduce-overhead": "left"}


def family_color(family: str, facts: RegistryFacts) -> tuple[float, float, float]:
    """The family's hue in every figure (registry order; a family the facts do not know gets the next free one)."""
    families = list(facts.families)
    index = families.index(family) if family in families else len(families) + sum(map(ord, family))
    return to_rgb(FAMILY_PALETTE[index % len(FAMILY_PALETTE)])


def backend_style(backend: str, facts: RegistryFacts) -> tuple:
    """The backend's (line style, marker) in every figure, in the registry's order of backends. A compiled backend
    (a label: 'torch+compile') has its plain backend's line style and marker, half filled (``COMPILED_FILLS``)."""
    plain, mode = label_parts(backend)
    names = facts.backends
    index = names.index(plain) if plain in names else len(names) + sum(map(ord, plain))
    linestyle, marker = STYLES[index % len(STYLES)]
    if mode == EAGER:
        return linestyle, marker
    return linestyle, MarkerStyle(marker, fillstyle=COMPILED_FILLS.get(mode, "right"))


def shades(color: tuple[float, float, float], count: int) -> list[tuple[float, float, float]]:
    """``count`` shades of one hue, light to dark, all distinguishable from white."""
    if count == 1:
        return [color]
    base = np.asarray(color)
    out = []
    for t in np.linspace(-0.45, 0.35, count):  # < 0: towards white, > 0: towards black
        shade = base + (1 - base) * -t if t < 0 else base * (1 - t)
        out.append(tuple(float(c) for c in shade))
    return out


@contextlib.contextmanager
def plot_style() -> Iterator[None]:
    """The figures' style, set for the duration of the block only."""
    with mpl.rc_context({**sns.axes_style("whitegrid"), **RC}):
        yield


def save_figure(figure: Figure, out_dir: Path, name: str) -> list[Path]:
    """``<name>.png`` (PNG_DPI) and ``<name>.pdf`` of a figure, without a creation date (same input, same file),
    each written whole or not at all (``atomic_write``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    with plot_style():
        with atomic_write(paths[0]) as tmp:
            figure.savefig(tmp, format="png", dpi=PNG_DPI)
        with atomic_write(paths[1]) as tmp:
            figure.savefig(tmp, format="pdf", metadata={"CreationDate": None})
    return paths


def panel_grid(rows: int, columns: int, width: float, panel_height: float, sharey: bool | str) -> tuple[Figure, list]:
    """A figure of rows × columns panels, ``width`` wide, each row ``panel_height`` tall (its title, tick
    labels and axis labels included); ``add_title`` adds the title's and legends' height."""
    fig = Figure(figsize=(width, rows * panel_height), layout="constrained")
    axes = fig.subplots(rows, columns, sharey=sharey, squeeze=False)
    return fig, [list(row) for row in axes]


def add_title(fig: Figure, title: str, caption: str) -> None:
    """Title and caption above the panels, the caption wrapped to the figure's width. Called last: the
    figure grows by the title's height and the legends' (``legends``, beside each other), measured, so
    that the panels keep the height ``panel_grid`` gave them, up to MAX_HEIGHT in all."""
    text = fig.suptitle("\n".join([title, *textwrap.wrap(caption, int(fig.get_figwidth() * 16))]), fontsize=7.5)
    legends = max((legend.get_window_extent().height for legend in fig.legends), default=0.0)
    extra = (text.get_window_extent().height + legends) / fig.dpi + 0.25  # inches, with the layout's pads
    fig.set_figheight(min(MAX_HEIGHT, fig.get_figheight() + extra))


def backend_marker(backend: str, facts: RegistryFacts, color, hollow: bool) -> dict:
    """The backend's marker (``backend_style``) in ``color``, as keyword arguments of a plot: filled (white edge, to
    stand out where markers meet), or hollow (white inside): a noisy timing. A compiled backend's half-filled
    marker has its outline in ``color`` and its other half white, so that its shape reads whole; hollow, it
    looks like its plain backend's."""
    marker = backend_style(backend, facts)[1]
    if hollow:
        return {"marker": marker, "markerfacecolor": "white", "markeredgecolor": color, "markeredgewidth": 0.9}
    if isinstance(marker, MarkerStyle):
        return {"marker": marker, "markerfacecolor": color, "markerfacecoloralt": "white", "markeredgecolor": color,
                "markeredgewidth": 0.6}
    return {"marker": marker, "markerfacecolor": color, "markeredgecolor": "white", "markeredgewidth": 0.4}


def family_handles(families: pd.Series, facts: RegistryFacts) -> list[Line2D]:
    return [Line2D([], [], color=family_color(f, facts) if f in facts.families else (0.4, 0.4, 0.4),
                   marker="s", linestyle="-", label=f) for f in facts.family_order(families)]


def style_handles(backends: pd.Series, facts: RegistryFacts) -> list[Line2D]:
    handles = []
    for b in backend_order(backends, facts):
        linestyle, marker = backend_style(b, facts)
        handles.append(Line2D([], [], color="0.3", linestyle=linestyle, marker=marker, label=b, gid=f"backend:{b}"))
    return handles


def marker_handles(backends: pd.Series, facts: RegistryFacts) -> list[Line2D]:
    return [Line2D([], [], color="0.3", linestyle="", marker=backend_style(b, facts)[1], label=b, gid=f"backend:{b}")
            for b in backend_order(backends, facts)]


def status_handles(table: pd.DataFrame) -> list[Line2D]:
    """A legend entry for hollow markers, when some drawn value is noisy."""
    noisy = table["noisy"].any() if "noisy" in table else (table.get("cell_status") == "noisy").any()
    return [Line2D([], [], color="0.3", linestyle="", marker="o", markerfacecolor="white",
                   label="noisy (spread beyond the device's limit)")] if noisy else []


def legends(fig: Figure, first: list, second: list, first_title: str, second_title: str) -> None:
    """The legends below the panels, side by side, each in as many columns as fit."""
    for handles, title, where in ((second, second_title, "outside lower left"),
                                  (first, first_title, "outside lower right" if second else "outside lower center")):
        if handles:
            longest = max(len(h.get_label()) for h in handles)
            shared = 2 if second and first else 1  # two legends share the width
            ncols = max(1, min(len(handles), int(fig.get_figwidth() * 13 / (longest + 5) / shared)))
            fig.legend(handles=handles, title=title or None, loc=where, ncols=ncols, handlelength=2.4,
                       columnspacing=1.0)
