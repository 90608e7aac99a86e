"""Paper figures of a results frame: PNG (200 dpi, to look at) and PDF (vector, to print) of each plot.

Every plot is two layers: a pure *data function* (frame -> tidy DataFrame, checked numerically by
the tests) and a *plot function* (frame -> ``matplotlib.figure.Figure``, or ``None`` when the frame
has no data for it). ``make_plots`` (attention suite) and ``make_model_plots`` (model suite) draw
and save them.

Rules every figure follows:

- **Size.** The width of a two-column paper's text (``FULL_WIDTH``, 7 in) or of one column
  (``COLUMN_WIDTH``, 3.3 in), at most ``MAX_HEIGHT`` (9 in) tall, 8 pt text at that size. Several
  panels are facets (phase, family, resolution), never one crowded axis or an endless column.
- **Layout.** Each panel gets a height of its own; the title, caption and legends get theirs on top of
  it (measured, not guessed), so a small run keeps the same readable panels as a large one, and
  constrained layout keeps title, legends, tick labels and axis labels apart and inside the figure.
- **Encoding.** A family keeps its hue in every figure (Okabe-Ito, colour-blind safe:
  ``FAMILY_PALETTE``); a backend keeps its line style and marker (``backend_style``); resolutions,
  where they share a panel, are shades of the family's hue. Legends are built from the same
  styles as the lines, so they match.
- **Every measured row is a point.** Rows ``ok`` (filled markers) and ``noisy`` (timed, but with a
  spread beyond the device's limit) are drawn in every figure; a noisy timing is a hollow marker
  (legend: "noisy"). Where a figure shows the best backend of a case, the best is chosen among ok
  and noisy rows alike, and is hollow when noisy. Peak memory is no timing figure: a noisy row's
  memory is drawn like an ok row's.
- **Rows without a value are named where their point would be.** A case that has rows, but none
  with a drawn value (``mismatch``: wrong numbers; ``unsupported``, ``oom``, ``error``: no numbers),
  is named with its status at its x position, at the foot of the panel ('oom: sdpa, torch'; the
  panel's log axis is lowered to make room for the names); the speedup dot plots name such cells
  in their row, and list in the caption the backends unsupported in every case. Cases never run
  are not shown at all.
- **Intervals.** Latency carries its p20–p80 band, a paired speedup its 95% confidence interval. A
  log axis spans every point, and each interval up to ``REACH`` times beyond the points; an interval
  cut by the axis's limits ends in an arrow at the edge, so the reader sees it goes on.
- **Ticks.** Log axes get plain-number ticks for the limits they end up with (decades, 1-3, 1-2-5 or
  finer steps): at least two labelled ticks on every panel.
- **Curves over resolution** follow one width per family (``main_widths``): the (dim, heads,
  batch, dtype) group with the most ok rows, named in the caption.

Figures are ``matplotlib.figure.Figure`` objects (no pyplot, no global backend switch); the style is
set in an ``rc_context`` around drawing and saving only.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
import textwrap
from pathlib import Path
from typing import Callable, Iterator

import matplotlib as mpl
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import ticker
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_rgb
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

import attentions

from bench.schema.results import STATUSES, atomic_write
from bench.analysis.variants import with_reference, with_variants

PLOT_NAMES = ("scaling", "bra_speedup", "latency_vs_resolution", "memory_vs_resolution", "gmacs_vs_latency",
              "topk_sweep", "kv_modes", "speedup")
MODEL_PLOT_NAMES = ("model_throughput",)
BRA = "bra"
PHASE_ORDER = ("fwd", "fwd+bwd")
DRAWN_STATUSES = ("ok", "noisy")  # rows whose values are drawn: a noisy row's timings hollow
REACH = 3.0  # how far (a factor) beyond the points a log axis stretches for an interval; further, it is cut
UNMEASURED = "unmeasured"  # gid of the texts naming cases without a drawn value
CLIPPED = "clipped"  # gid of the arrows ending intervals cut by an axis
WIDTH_COLUMNS = ["dim", "heads", "batch", "dtype"]
NUMERIC_COLUMNS = ["resolution", "batch", "dim", "heads", "topk", "latency_ms_median", "latency_ms_p20",
                   "latency_ms_p80", "peak_mem_mb", "gmacs", "speedup_vs_ref", "speedup_ci_low", "speedup_ci_high"]
KV_MODE_ORDER = ["identity", "avgpool", "maxpool", "ada_avgpool", "ada_maxpool"]
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


def family_color(family: str) -> tuple[float, float, float]:
    """The family's hue in every figure (registry order; an unknown family gets the next free one)."""
    families = list(attentions.list_attentions())
    index = families.index(family) if family in families else len(families) + sum(map(ord, family))
    return to_rgb(FAMILY_PALETTE[index % len(FAMILY_PALETTE)])


def backend_style(backend: str) -> tuple:
    """The backend's (line style, marker) in every figure, in the registry's order of backends."""
    names = list(dict.fromkeys(b for info in attentions.list_attentions().values() for b in info["backends"]))
    index = names.index(backend) if backend in names else len(names) + sum(map(ord, backend))
    return STYLES[index % len(STYLES)]


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


# --------------------------------------------------------------------------------------------
# data functions
# --------------------------------------------------------------------------------------------

def prepared(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a ``variant`` column (``bench.analysis.variants.with_variants``) and numeric measurements."""
    if "variant" not in frame.columns:
        frame = with_variants(frame)
    frame = frame.copy()
    for column in NUMERIC_COLUMNS:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def _has_value(frame: pd.DataFrame) -> pd.Series:
    """Whether each row is drawn: status ok or noisy, with a positive median latency."""
    latency = pd.to_numeric(frame["latency_ms_median"], errors="coerce")
    return frame["status"].isin(DRAWN_STATUSES) & (latency > 0)


def drawn(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows whose values are drawn (``_has_value``); ``noisy`` says which are noisy."""
    frame = prepared(frame)
    rows = frame[_has_value(frame)]
    return rows.assign(noisy=rows["status"] == "noisy")


def unmeasured(frame: pd.DataFrame, keys: list[str], position: str | None = None,
               shared: list[str] | None = None) -> pd.DataFrame:
    """The cases of ``frame`` (one per value of ``keys``) that have rows but none drawn, with ``status``:
    their rows' statuses ('oom', 'unsupported/oom'), for a plot to name them where their point would be.

    With ``position`` (a column such as 'gmacs'), each case also gets that column's value from any row
    sharing its ``shared`` keys (another backend or phase of it counted them), and cases without one
    are left out: they have no place on that axis.
    """
    if frame.empty:
        return pd.DataFrame(columns=keys + ["status"] + ([position] if position else []))
    cases = frame.assign(measured=_has_value(frame)).groupby(keys, sort=False, dropna=False).agg(
        measured=("measured", "any"), status=("status", _statuses))
    cases = cases[~cases["measured"]].reset_index()[keys + ["status"]]
    if position is None:
        return cases
    values = pd.to_numeric(frame[position], errors="coerce").groupby([frame[k] for k in shared]).max()
    cases = cases.merge(values.rename(position).reset_index(), on=shared, how="left")
    return cases[cases[position] > 0].reset_index(drop=True)


def _drawn_nowhere(failed: pd.DataFrame, drawn_backends) -> tuple[pd.DataFrame, str]:
    """Split the ``failed`` cases (``unmeasured``) of a figure: those of backends it draws somewhere, to
    name at their points, and a caption part naming the other backends once, with their statuses
    ('; without a value anywhere: triton (unsupported)'), rather than at every point."""
    absent = ~failed["backend"].isin(set(drawn_backends))
    statuses = failed[absent].groupby("backend")["status"].agg(lambda s: _statuses("/".join(s).split("/")))
    backends = sorted(statuses.index, key=_backend_rank)
    names = [f"{', '.join(b for b in backends if statuses[b] == status)} ({status})"
             for status in dict.fromkeys(statuses[b] for b in backends)]
    return failed[~absent].copy(), f"; without a value anywhere: {'; '.join(names)}" if names else ""


def _statuses(statuses) -> str:
    """Distinct statuses in the order of ``bench.schema.results.STATUSES``: 'unsupported/oom'."""
    return "/".join(sorted(set(statuses), key=_status_rank))


def _status_rank(status: str) -> tuple:
    return (STATUSES.index(status) if status in STATUSES else len(STATUSES), status)


def main_widths(frame: pd.DataFrame) -> dict[str, tuple]:
    """Per family, its main (dim, heads, batch, dtype): the group with the most ok rows.

    Ties go to the group with more rows of any status, then more resolutions, then the smaller dim.
    A family without ok rows gets the group with the most rows.
    """
    frame = prepared(frame)
    out: dict[str, tuple] = {}
    for family, rows in frame.groupby("family", sort=False):
        stats = rows.assign(is_ok=rows["status"] == "ok").groupby(WIDTH_COLUMNS).agg(
            n_ok=("is_ok", "sum"), n=("status", "size"), n_res=("resolution", "nunique")).reset_index()
        best = stats.sort_values(["n_ok", "n", "n_res", "dim"], ascending=[False, False, False, True]).iloc[0]
        out[family] = tuple(_plain(best[c]) for c in WIDTH_COLUMNS)
    return out


def at_main_width(frame: pd.DataFrame, widths: dict[str, tuple] | None = None) -> pd.DataFrame:
    """The rows (any status) at their family's main width."""
    frame = prepared(frame)
    widths = main_widths(frame) if widths is None else widths
    if frame.empty:
        return frame
    own = frame["family"].map(widths)
    keep = [w == tuple(_plain(v) for v in values) if isinstance(w, tuple) else False
            for w, values in zip(own, frame[WIDTH_COLUMNS].itertuples(index=False))]
    return frame[keep]


def representative_variants(frame: pd.DataFrame) -> dict[str, str]:
    """Per family, the variant its curves over resolution show: the default configuration (the label
    that is the family's name alone) when the frame has it, else the variant with the most rows."""
    out = {}
    for family, rows in prepared(frame).groupby("family", sort=False):
        counts = rows["variant"].value_counts()
        out[family] = family if family in counts.index else str(counts.index[0])
    return out


def resolution_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Data of latency_vs_resolution, memory_vs_resolution and scaling.

    Drawn rows (ok, noisy) at each family's main width, one per (phase, family, variant, backend,
    resolution): median / p20 / p80 latency in ms, peak memory in MB, and ``noisy``.
    """
    frame = prepared(frame)
    rows = at_main_width(drawn(frame), main_widths(frame))
    keys = ["phase", "family", "variant", "backend", "resolution"]
    values = ["latency_ms_median", "latency_ms_p20", "latency_ms_p80", "peak_mem_mb"]
    if rows.empty:
        return pd.DataFrame(columns=keys + WIDTH_COLUMNS + values + ["noisy"])
    table = rows.groupby(keys + WIDTH_COLUMNS, sort=False, dropna=False).agg(
        **{v: (v, "median") for v in values}, noisy=("noisy", "any")).reset_index()
    return table.sort_values(keys).reset_index(drop=True)


def representative_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows (any status) that curves over resolution follow: each family's main width and
    representative variant."""
    frame = prepared(frame)
    rows = at_main_width(frame, main_widths(frame))
    return rows[rows["variant"] == rows["family"].map(representative_variants(frame))]


def scaling_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Data of the headline scaling figure: per family (its representative variant), phase and
    resolution, the drawn row (ok or noisy) of the fastest backend (``metric`` latency) and of the
    leanest backend (``metric`` memory), with that backend's name. ``noisy``: the value is a noisy
    row's timing (a memory value never is: peak memory is no timing figure)."""
    table = resolution_table(frame)
    table = table[table["variant"] == table["family"].map(representative_variants(frame))]
    out = []
    for metric, column in (("latency", "latency_ms_median"), ("memory", "peak_mem_mb")):
        rows = table[table[column].notna() & (table[column] > 0)]
        if rows.empty:
            continue
        best = rows.loc[rows.groupby(["phase", "family", "resolution"])[column].idxmin()]
        out.append(best.assign(metric=metric, value=best[column], noisy=best["noisy"] & (metric == "latency")))
    columns = ["metric", "phase", "family", "variant", "backend", "resolution", "value", "latency_ms_p20",
               "latency_ms_p80", "noisy"]
    return pd.concat(out, ignore_index=True)[columns] if out else pd.DataFrame(columns=columns)


def gmacs_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Data of gmacs_vs_latency: per (phase, variant, width, resolution), the fastest drawn row (ok or
    noisy: ``noisy`` says which) with positive GMACs and its backend (every width: compute is
    comparable across them)."""
    rows = drawn(frame)
    rows = rows[rows["gmacs"].notna() & (rows["gmacs"] > 0)]
    columns = ["phase", "family", "variant", "backend", "resolution", "dim", "heads", "batch", "dtype", "gmacs",
               "latency_ms_median", "noisy"]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    best = rows.loc[rows.groupby(["phase", "variant", *WIDTH_COLUMNS, "resolution"])["latency_ms_median"].idxmin()]
    return best[columns].reset_index(drop=True)


def topk_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Data of topk_sweep: BRA drawn rows with kv mode identity at BRA's main width.

    One row per (phase, resolution, backend, topk) with latency (ms), GMACs and ``noisy``.
    """
    frame = prepared(frame)
    columns = ["phase", "resolution", "backend", "topk", "latency_ms_median", "latency_ms_p20", "latency_ms_p80",
               "gmacs"]
    rows = at_main_width(drawn(frame), main_widths(frame))
    rows = rows[(rows["family"] == BRA) & (rows["kv_downsample_mode"] == "identity") & rows["topk"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns + ["noisy"])
    table = rows.groupby(columns[:4], sort=False).agg(
        **{c: (c, "median") for c in columns[4:]}, noisy=("noisy", "any")).reset_index()
    table["topk"] = table["topk"].astype(int)
    return table.sort_values(columns[:4]).reset_index(drop=True)


def kv_mode_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Data of kv_modes: BRA drawn rows at BRA's main width and one topk, per kv_downsample_mode.

    The topk is the one with the most kv modes (then the most rows), so the identity point is not a
    topk-sweep point. Column ``label`` is the mode, or the variant label where one mode has
    several configurations. Columns: phase, resolution, backend, topk, label, latencies (ms), noisy.
    """
    frame = prepared(frame)
    columns = ["phase", "resolution", "backend", "topk", "label", "kv_downsample_mode", "latency_ms_median",
               "latency_ms_p20", "latency_ms_p80"]
    rows = at_main_width(drawn(frame), main_widths(frame))
    rows = rows[(rows["family"] == BRA) & rows["kv_downsample_mode"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns + ["noisy"])
    per_topk = rows.groupby("topk").agg(modes=("kv_downsample_mode", "nunique"), n=("status", "size"))
    topk = per_topk.sort_values(["modes", "n"], ascending=False).index[0]
    rows = rows[rows["topk"] == topk]
    configurations = rows.groupby(["kv_downsample_mode", "resolution"])["variant"].nunique()
    ambiguous = set(configurations[configurations > 1].index.get_level_values(0))
    rows = rows.assign(label=[_tags(v) if m in ambiguous else m
                              for m, v in zip(rows["kv_downsample_mode"], rows["variant"])])
    table = rows.groupby(columns[:6], sort=False).agg(
        **{c: (c, "median") for c in columns[6:]}, noisy=("noisy", "any")).reset_index()
    table["topk"] = table["topk"].astype(int)
    return table.reset_index(drop=True)


def speedup_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every row with its family's reference-backend row for the same case, and the speedup.

    ``speedup`` = the paired speedup over the reference where the run timed them in the same rounds
    (with its interval in ``speedup_low`` / ``speedup_high``), else reference median latency / the
    row's median latency; only when the row and its reference were measured and passed the error
    check (ok or noisy), otherwise NaN. ``cell_status`` is 'ok', 'noisy', the row's own status
    (mismatch, oom, ...), 'ref <status>' when the reference row has no valid latency, or 'no
    reference' when it was not run. ``label`` reads '1.35×' or the status.
    """
    table = with_reference(prepared(frame))
    drawable = table["status"].isin(DRAWN_STATUSES)
    reference_ok = table["reference_status"].isin(DRAWN_STATUSES)
    missing = pd.Series(np.nan, index=table.index)
    paired, low, high = (table.get(c, missing) for c in ("speedup_vs_ref", "speedup_ci_low", "speedup_ci_high"))
    timed = pd.to_numeric(table["reference_latency_ms"], errors="coerce") / table["latency_ms_median"]
    valid = drawable & reference_ok
    table["speedup"] = paired.where(paired.notna(), timed).where(valid)
    table["speedup_low"], table["speedup_high"] = low.where(valid), high.where(valid)
    table["cell_status"] = np.where(~drawable, table["status"],
                                    np.where(table["reference_status"].isna(), "no reference",
                                             np.where(~reference_ok, "ref " + table["reference_status"].fillna(
                                                 "").astype(str), table["status"])))
    table["label"] = [f"{s:.2f}×" if np.isfinite(s) else status
                      for s, status in zip(table["speedup"], table["cell_status"])]
    table.loc[table["cell_status"].isin(DRAWN_STATUSES) & table["speedup"].isna(), "label"] = "n/a"
    return table


def model_table_data(frame: pd.DataFrame) -> pd.DataFrame:
    """Data of model_throughput: model-suite rows that are ok or noisy, with GMACs per image, images/s
    and the family of their attention ('mixed' for four choices)."""
    rows = frame[frame["status"].isin(DRAWN_STATUSES)].copy()
    for column in ("gmacs_per_image", "throughput", "resolution", "batch"):
        rows[column] = pd.to_numeric(rows[column], errors="coerce")
    rows = rows[(rows["gmacs_per_image"] > 0) & (rows["throughput"] > 0)]
    rows["family"] = [a if "," not in a else "mixed" for a in rows["attention"].astype(str)]
    rows["noisy"] = rows["status"] == "noisy"
    return rows[["phase", "resolution", "batch", "dtype", "model", "attention", "family", "backend",
                 "gmacs_per_image", "throughput", "noisy"]].reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# plot functions
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def plot_style() -> Iterator[None]:
    """The figures' style, set for the duration of the block only."""
    with mpl.rc_context({**sns.axes_style("whitegrid"), **RC}):
        yield


def _styled(function: Callable[[pd.DataFrame], Figure | None]) -> Callable[[pd.DataFrame], Figure | None]:
    """A plot function drawn in the figures' style, and finished (``_finish``) once drawn."""
    @functools.wraps(function)
    def wrapper(frame: pd.DataFrame) -> Figure | None:
        with plot_style():
            figure = function(frame)
            if figure is not None:
                _finish(figure)
            return figure
    return wrapper


@_styled
def plot_scaling(frame: pd.DataFrame) -> Figure | None:
    """The headline figure: latency (top) and peak memory (bottom) vs resolution for each family,
    each point its fastest (resp. leanest) backend among ok and noisy rows, marked with that backend's
    marker (hollow: a noisy timing); one column per phase; a case where no backend has a value is
    named at its resolution. None with fewer than two resolutions."""
    frame = prepared(frame)
    table = scaling_table(frame)
    if table.empty or table["resolution"].nunique() < 2:
        return None
    failed = unmeasured(representative_rows(frame), ["phase", "family", "resolution"])
    phases, metrics = _phases(table), [m for m in ("latency", "memory") if m in set(table["metric"])]
    resolutions = set(table["resolution"]) | set(failed.loc[failed["phase"].isin(phases), "resolution"])
    fig, axes = _grid(len(metrics), len(phases), FULL_WIDTH, 2.0, sharey="row")
    for i, metric in enumerate(metrics):
        for j, phase in enumerate(phases):
            ax = axes[i][j]
            rows = table[(table["metric"] == metric) & (table["phase"] == phase)]
            for family in _family_order(rows["family"]):
                line = rows[rows["family"] == family].sort_values("resolution")
                color = family_color(family)
                ax.plot(line["resolution"], line["value"], color=color, gid=f"family:{family}")
                if metric == "latency":
                    ax.fill_between(line["resolution"], line["latency_ms_p20"], line["latency_ms_p80"],
                                    color=color, alpha=0.2, linewidth=0)
                for (backend, noisy), points in line.groupby(["backend", "noisy"]):
                    ax.plot(points["resolution"], points["value"], linestyle="", marker=backend_style(backend)[1],
                            color=color, **_marker_fill(color, noisy), gid=f"backend:{backend}")
            _log_log(ax, resolutions, *_with_band(table[table["metric"] == metric], "value", metric == "latency"))
            _name_unmeasured(ax, failed[failed["phase"] == phase], "resolution", "family")
            ax.set_title(f"{metric}, {phase}")
            ax.set_xlabel("resolution (tokens per side)" if i == len(metrics) - 1 else "")
        axes[i][0].set_ylabel("median latency (ms)" if metric == "latency" else "peak memory (MB)")
    _legends(fig, _family_handles(table["family"]) + _status_handles(table), _marker_handles(table["backend"]),
             "family", "best backend")
    variants = sorted(set(table["variant"]) - set(table["family"]))
    _title(fig, "Scaling with resolution, best backend per point",
           f"{_widths_caption(main_widths(frame), table['family'])}; {_context(frame)}; band: p20-p80"
           + (f"; variants: {', '.join(variants)}" if variants else ""))
    return fig


def _speedup_figure(frame: pd.DataFrame, families: list[str] | None, title: str, width: float) -> Figure | None:
    """A dot plot of speedups over the reference backend: one row per (variant, backend), x the speedup
    (log), a point per resolution (shades of the family's hue; hollow: noisy) with its 95% interval, one
    panel per phase; a cell without a valid pair names its status in its row. An entry unsupported in
    every case is no row: the caption names it."""
    frame = prepared(frame)
    table = at_main_width(speedup_table(frame), main_widths(frame))
    table = table[(table["backend"] != table["reference_backend"]) & (table["cell_status"] != "no reference")]
    if families is not None:
        table = table[table["family"].isin(families)]
    ran = table[table["cell_status"] != "unsupported"]
    shown = table.set_index(["variant", "backend"]).index.isin(ran.set_index(["variant", "backend"]).index)
    hidden = _entry_names(table[~shown], table)
    table = table[shown]
    if table["speedup"].isna().all():
        return None
    phases = _phases(table)
    entries = sorted(set(zip(table["variant"], table["backend"])),
                     key=lambda e: (_family_order(table["family"]).index(_family_of(e[0])), _natural_key(e[0]),
                                    _backend_rank(e[1])))
    resolutions = sorted(table["resolution"].unique())
    panel = min(MAX_HEIGHT - 1.2, 0.55 + 0.17 * len(entries) * max(1, len(resolutions) / 2))
    fig, axes = _grid(1, len(phases), width, panel, sharey="row")
    axes = axes[0]
    offsets = np.linspace(-0.25, 0.25, len(resolutions)) if len(resolutions) > 1 else [0.0]
    for ax, phase in zip(axes, phases):
        rows = table[table["phase"] == phase]
        for y, (variant, backend) in enumerate(entries):
            family = _family_of(variant)
            colors = dict(zip(resolutions, shades(family_color(family), len(resolutions))))
            unmeasured_at: dict[str, list[tuple[int, float]]] = {}  # label -> (resolution, offset) without a value
            for offset, resolution in zip(offsets, resolutions):
                cell = rows[(rows["variant"] == variant) & (rows["backend"] == backend)
                            & (rows["resolution"] == resolution)]
                if cell.empty:
                    continue
                cell = cell.iloc[-1]
                if np.isfinite(cell["speedup"]):
                    error = None
                    if np.isfinite(cell["speedup_low"]):
                        error = [[cell["speedup"] - cell["speedup_low"]], [cell["speedup_high"] - cell["speedup"]]]
                    bars = ax.errorbar([cell["speedup"]], [y + offset], xerr=error, color=colors[resolution],
                                       marker=backend_style(backend)[1], linestyle="", elinewidth=0.8, capsize=1.5,
                                       **_marker_fill(colors[resolution], cell["cell_status"] == "noisy"))
                    bars.lines[0].set_gid(f"backend:{backend}")
                else:
                    unmeasured_at.setdefault(cell["label"], []).append((resolution, offset))
            for label, where in unmeasured_at.items():  # one line per label: '28², 56²: unsupported'
                sizes = ", ".join(f"{resolution}²" for resolution, _ in where)
                ax.annotate(f"{sizes}: {label}", (0.01, y + float(np.mean([offset for _, offset in where]))),
                            xycoords=("axes fraction", "data"), fontsize=6, va="center", color="0.3", gid=UNMEASURED)
        ax.axvline(1.0, color="0.3", linewidth=0.8, zorder=0)
        _log_axis(ax, "x", pd.concat([rows["speedup"], pd.Series([1.0])]), rows["speedup_low"], rows["speedup_high"],
                  suffix="×")
        ax.set_ylim(len(entries) - 0.5, -0.5)
        ax.set_yticks(range(len(entries)), [f"{v} · {b}" for v, b in entries])
        ax.grid(axis="y", visible=False)
        families_per_row = [_family_of(v) for v, _ in entries]
        for y in range(1, len(entries)):
            if families_per_row[y] != families_per_row[y - 1]:
                ax.axhline(y - 0.5, color="0.6", linewidth=0.6)
        ax.set_title(phase)
        ax.set_xlabel("speedup (× reference)")
    shade_handles = [Line2D([], [], linestyle="", marker="o", color=c, label=f"{r}×{r}")
                     for r, c in zip(resolutions, shades((0.35, 0.35, 0.35), len(resolutions)))]
    _legends(fig, shade_handles + _status_handles(table), _marker_handles(table["backend"]),
             "resolution (shade)", "backend")
    references = ", ".join(sorted(table["reference_backend"].dropna().unique()))
    _title(fig, title, f"over the reference backend ({references}); bars: 95% interval of the paired speedup; "
                       f"{_widths_caption(main_widths(frame), table['family'])}; {_context(frame)}"
                       + (f"; unsupported in every case: {', '.join(hidden)}" if hidden else ""))
    return fig


def _entry_names(entries: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """Names of the (variant, backend) entries of ``entries``: a backend alone where every entry of it in
    ``table`` is among them, else 'variant · backend'."""
    names = []
    for backend in sorted(set(entries["backend"]), key=_backend_rank):
        variants = set(entries.loc[entries["backend"] == backend, "variant"])
        if variants == set(table.loc[table["backend"] == backend, "variant"]):
            names.append(backend)
        else:
            names += [f"{variant} · {backend}" for variant in sorted(variants, key=_natural_key)]
    return names


@_styled
def plot_speedup(frame: pd.DataFrame) -> Figure | None:
    """Speedup of every fast backend over its family's reference (a dot plot rather than a heatmap:
    the interval of each paired speedup, and a value axis that reads at a glance)."""
    return _speedup_figure(frame, None, "Speedup of every backend", FULL_WIDTH)


@_styled
def plot_bra_speedup(frame: pd.DataFrame) -> Figure | None:
    """The headline speedup figure: BRA's fast paths over the official algorithm, one column wide
    when one phase was run."""
    phases = _phases(prepared(frame))
    return _speedup_figure(frame, [BRA], "BRA fast paths", COLUMN_WIDTH if len(phases) == 1 else FULL_WIDTH)


def _per_family_figure(frame: pd.DataFrame, value: str, timing: bool, ylabel: str, title: str) -> Figure | None:
    """One panel per family (its representative variant; columns) and phase (rows): a line per backend
    in the family's hue and the backend's style; for a ``timing``, hollow where noisy and the p20-p80
    band. A backend's case without a value is named at its resolution."""
    frame = prepared(frame)
    table = resolution_table(frame)
    table = table[table["variant"] == table["family"].map(representative_variants(frame))]
    table = table[table[value].notna() & (table[value] > 0)]
    if table.empty or table["resolution"].nunique() < 2:
        return None
    phases, families = _phases(table), _family_order(table["family"])
    failed = unmeasured(representative_rows(frame), ["phase", "family", "backend", "resolution"])
    failed, absent = _drawn_nowhere(failed[failed["phase"].isin(phases) & failed["family"].isin(families)],
                                    table["backend"])
    resolutions = set(table["resolution"]) | set(failed["resolution"])
    fig, axes = _grid(len(phases), len(families), FULL_WIDTH, 1.75, sharey="row")
    for i, phase in enumerate(phases):
        for j, family in enumerate(families):
            ax = axes[i][j]
            rows = table[(table["phase"] == phase) & (table["family"] == family)]
            for backend in sorted(rows["backend"].unique(), key=_backend_rank):
                _style_line(ax, rows[rows["backend"] == backend].sort_values("resolution"), value, timing,
                            family_color(family), backend)
            _log_log(ax, resolutions, *_with_band(table[table["phase"] == phase], value, timing))
            _name_unmeasured(ax, failed[(failed["phase"] == phase) & (failed["family"] == family)], "resolution",
                             "backend")
            ax.set_title(f"{family}, {phase}" if len(phases) > 1 else family)
            ax.set_xlabel("resolution" if i == len(phases) - 1 else "")
        axes[i][0].set_ylabel(ylabel)
    _legends(fig, _family_handles(table["family"]) + (_status_handles(table) if timing else []),
             _style_handles(table["backend"]), "family", "backend")
    variants = sorted(set(table["variant"]) - set(table["family"]))
    _title(fig, title, f"{_widths_caption(main_widths(frame), table['family'])}; {_context(frame)}"
           + ("; band: p20-p80" if timing else "") + (f"; variants: {', '.join(variants)}" if variants else "")
           + absent)
    return fig


@_styled
def plot_latency_vs_resolution(frame: pd.DataFrame) -> Figure | None:
    """Median latency (ms) vs resolution, log-log, per family and phase, a line per backend."""
    return _per_family_figure(frame, "latency_ms_median", True, "median latency (ms)", "Latency vs resolution")


@_styled
def plot_memory_vs_resolution(frame: pd.DataFrame) -> Figure | None:
    """Peak memory (MB) of one pass vs resolution, log-log, per family and phase, a line per backend."""
    return _per_family_figure(frame, "peak_mem_mb", False, "peak memory (MB)", "Peak memory vs resolution")


@_styled
def plot_gmacs_vs_latency(frame: pd.DataFrame) -> Figure | None:
    """GMACs (x, log) vs median latency (y, log): one point per variant, width and resolution (its
    fastest backend's marker, among ok and noisy rows; hollow: noisy), colour = family, one panel per
    phase; a case where no backend has a value is named at its GMACs."""
    frame = prepared(frame)
    table = gmacs_table(frame)
    if table.empty:
        return None
    phases = _phases(table)
    keys = ["variant", *WIDTH_COLUMNS, "resolution"]
    failed = unmeasured(frame, ["phase", *keys], "gmacs", keys)
    fig, axes = _grid(1, len(phases), FULL_WIDTH, 2.6, sharey="row")
    for ax, phase in zip(axes[0], phases):
        rows = table[table["phase"] == phase]
        for (family, backend, noisy), points in rows.groupby(["family", "backend", "noisy"]):
            ax.plot(points["gmacs"], points["latency_ms_median"], linestyle="", marker=backend_style(backend)[1],
                    color=family_color(family), alpha=0.8, **_marker_fill(family_color(family), noisy),
                    gid=f"backend:{backend}")
        _log_log(ax, pd.concat([table["gmacs"], failed["gmacs"]]), table["latency_ms_median"])
        _name_unmeasured(ax, failed[failed["phase"] == phase], "gmacs", "variant")
        ax.set_title(phase)
        ax.set_xlabel("forward GMACs (whole batch)")
    axes[0][0].set_ylabel("median latency (ms)")
    _legends(fig, _family_handles(table["family"]) + _status_handles(table), _marker_handles(table["backend"]),
             "family", "fastest backend")
    _title(fig, "Compute vs latency", f"one point per variant, width and resolution; {_context(frame)}")
    return fig


@_styled
def plot_topk_sweep(frame: pd.DataFrame) -> Figure | None:
    """BRA (kv mode identity) latency vs topk, one panel per phase, plus GMACs vs topk; resolutions
    as shades of BRA's hue, backends as line styles (hollow: noisy); a backend's case without a value
    is named at its topk. None with fewer than two topk values."""
    frame = prepared(frame)
    table = topk_table(frame)
    if table["topk"].nunique() < 2:
        return None
    phases = _phases(table)
    resolutions = sorted(table["resolution"].unique())
    colors = dict(zip(resolutions, shades(family_color(BRA), len(resolutions))))
    bra = at_main_width(frame, main_widths(frame))
    bra = bra[(bra["family"] == BRA) & (bra["kv_downsample_mode"] == "identity") & bra["topk"].notna()]
    failed, absent = _drawn_nowhere(unmeasured(bra, ["phase", "resolution", "backend", "topk"]), table["backend"])
    failed = failed.groupby(["phase", "topk", "backend", "status"], sort=False)["resolution"].agg(
        lambda r: "/".join(f"{v}²" for v in sorted(r))).reset_index()
    failed["name"] = failed["backend"] + " " + failed["resolution"]
    topks = sorted(set(table["topk"]) | set(failed.loc[failed["phase"].isin(phases), "topk"].astype(int)))
    fig, axes = _grid(1, len(phases) + 1, FULL_WIDTH, 2.2, sharey=False)
    axes = axes[0]
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlim(*_log_limits(topks, min_span=1.0))
        _fixed_ticks(ax.xaxis, topks)
        ax.set_xlabel("topk (routed regions)")
    for ax, phase in zip(axes, phases):
        rows = table[table["phase"] == phase]
        for resolution in resolutions:
            for backend in sorted(rows["backend"].unique(), key=_backend_rank):
                line = rows[(rows["resolution"] == resolution) & (rows["backend"] == backend)].sort_values("topk")
                _style_line(ax, line.rename(columns={"topk": "x"}), "latency_ms_median", True, colors[resolution],
                            backend, x="x")
        _log_axis(ax, "y", *_with_band(rows, "latency_ms_median", True))
        _name_unmeasured(ax, failed[failed["phase"] == phase], "topk", "name")
        ax.set_title(f"latency, {phase}")
    axes[0].set_ylabel("median latency (ms)")
    macs = table.groupby(["resolution", "topk"])["gmacs"].median().reset_index()
    ax = axes[-1]
    for resolution in resolutions:
        line = macs[macs["resolution"] == resolution].sort_values("topk")
        ax.plot(line["topk"], line["gmacs"], color=colors[resolution], marker="o")
    _log_axis(ax, "y", macs["gmacs"])
    ax.set_title("compute (fwd)")
    ax.set_ylabel("GMACs")
    _legends(fig, [Line2D([], [], color=colors[r], marker="o", label=f"{r}×{r}") for r in resolutions]
             + _status_handles(table), _style_handles(table["backend"]), "resolution", "backend")
    _title(fig, "BRA: routed regions (topk)", f"kv mode identity; {_width_text(main_widths(frame).get(BRA))}; "
                                              f"{_context(frame)}; band: p20-p80{absent}")
    return fig


@_styled
def plot_kv_modes(frame: pd.DataFrame) -> Figure | None:
    """BRA median latency per kv_downsample_mode: a point per backend (its marker; hollow: noisy) with
    p20-p80 bars, one panel per resolution (rows) and phase (columns); a backend's case without a value
    shows its status where its point would be (a backend without a value anywhere is named in the
    caption). None with fewer than two modes."""
    frame = prepared(frame)
    table = kv_mode_table(frame)
    if table["kv_downsample_mode"].nunique() < 2:
        return None
    phases, resolutions = _phases(table), sorted(table["resolution"].unique())
    backends = sorted(table["backend"].unique(), key=_backend_rank)
    topk = int(table["topk"].iloc[0])
    bra = at_main_width(frame, main_widths(frame))
    bra = bra[(bra["family"] == BRA) & (bra["topk"] == topk) & bra["kv_downsample_mode"].notna()]
    failed, absent = _drawn_nowhere(unmeasured(bra, ["resolution", "phase", "backend", "kv_downsample_mode",
                                                     "variant"]), backends)
    failed["label"] = [mode if mode in set(table["label"]) else _tags(variant)
                       for mode, variant in zip(failed["kv_downsample_mode"], failed["variant"])]
    modes = pd.concat([table, failed])[["label", "kv_downsample_mode"]]
    labels = sorted(set(modes["label"]), key=lambda label: _kv_sort_key(modes, label))
    fig, axes = _grid(len(resolutions), len(phases), FULL_WIDTH, 1.6, sharey=False)
    step = 0.7 / max(1, len(backends))
    x = np.arange(len(labels))
    color = family_color(BRA)
    for i, resolution in enumerate(resolutions):
        for j, phase in enumerate(phases):
            ax = axes[i][j]
            rows = table[(table["resolution"] == resolution) & (table["phase"] == phase)]
            for b, backend in enumerate(backends):
                values = rows[rows["backend"] == backend].set_index("label").reindex(labels)
                offsets = x + (b - (len(backends) - 1) / 2) * step
                median = values["latency_ms_median"].to_numpy(float)
                error = np.nan_to_num(np.vstack([median - values["latency_ms_p20"].to_numpy(float),
                                                 values["latency_ms_p80"].to_numpy(float) - median]).clip(min=0))
                for noisy in (False, True):
                    keep = (values["noisy"].fillna(False).to_numpy(bool) == noisy) & np.isfinite(median)
                    if keep.any():
                        bars = ax.errorbar(offsets[keep], median[keep], yerr=error[:, keep], linestyle="",
                                           capsize=1.5, marker=backend_style(backend)[1], color=color,
                                           elinewidth=0.8, **_marker_fill(color, noisy))
                        bars.lines[0].set_gid(f"backend:{backend}")
                cells = failed[(failed["resolution"] == resolution) & (failed["phase"] == phase)
                               & (failed["backend"] == backend)]
                for label, status in zip(cells["label"], cells["status"]):
                    ax.text(offsets[labels.index(label)], 0.04, status, rotation=90, ha="center", va="bottom",
                            fontsize=6, color="0.35", transform=ax.get_xaxis_transform(), gid=UNMEASURED)
            ax.set_xlim(-0.5, len(labels) - 0.5)  # every mode's place, in every panel: named where a value is missing
            ax.set_ylim(bottom=0)
            ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=5))  # not by the panel's size: the layout's ticks
            ax.set_title(f"{resolution}×{resolution} tokens, {phase}")
            ax.set_xticks(x, labels if i == len(resolutions) - 1 else [""] * len(labels), rotation=20, ha="right",
                          rotation_mode="anchor")
            ax.grid(axis="x", visible=False)
        axes[i][0].set_ylabel("median latency (ms)")
    _legends(fig, _status_handles(table), _marker_handles(table["backend"]), "", "backend")
    _title(fig, "BRA: KV downsampling mode", f"topk={topk}; {_width_text(main_widths(frame).get(BRA))}; "
                                             f"{_context(frame)}; bars: p20-p80{absent}")
    return fig


@_styled
def plot_model_throughput(frame: pd.DataFrame) -> Figure | None:
    """The model table as a figure: images/s (y, log) vs GMACs per image (x, log), a point per model,
    attention choice and backend, each model and attention choice labelled once (at its fastest point: its
    backends share the x position); colour = family of its attention, marker = backend; one panel per
    resolution (rows) and phase (columns)."""
    table = model_table_data(frame)
    if table.empty:
        return None
    phases, resolutions = _phases(table), sorted(table["resolution"].unique())
    fig, axes = _grid(len(resolutions), len(phases), FULL_WIDTH, 2.2, sharey=False)
    for i, resolution in enumerate(resolutions):
        for j, phase in enumerate(phases):
            ax = axes[i][j]
            rows = table[(table["resolution"] == resolution) & (table["phase"] == phase)]
            for _, row in rows.iterrows():
                color = family_color(row["family"]) if row["family"] != "mixed" else (0.4, 0.4, 0.4)
                ax.plot([row["gmacs_per_image"]], [row["throughput"]], linestyle="",
                        marker=backend_style(row["backend"])[1], color=color, **_marker_fill(color, row["noisy"]),
                        gid=f"backend:{row['backend']}")
            fastest = rows.sort_values("throughput", ascending=False).drop_duplicates(["model", "attention"])
            for _, row in fastest.iterrows():
                own = row["model"].startswith("biformer")  # a BiFormer model with its own attention
                name = row["model"] if own else f"{row['model']} ({row['attention']})"
                ax.annotate(name, (row["gmacs_per_image"], row["throughput"]), xytext=(3, 2),
                            textcoords="offset points", fontsize=5.5, color="0.25")
            if not rows.empty:
                _log_log(ax, rows["gmacs_per_image"], rows["throughput"])
            ax.set_title(f"{resolution}×{resolution} px, {phase}, batch {'/'.join(map(str, sorted(set(rows['batch']))))}")
            ax.set_xlabel("GFLOPs (GMACs) per image" if i == len(resolutions) - 1 else "")
        axes[i][0].set_ylabel("images/s")
    _legends(fig, _family_handles(table["family"]) + _status_handles(table), _marker_handles(table["backend"]),
             "attention", "backend")
    _title(fig, "Backbones: throughput vs compute", _context(frame))
    return fig


PLOTTERS: dict[str, Callable[[pd.DataFrame], Figure | None]] = {
    "scaling": plot_scaling,
    "bra_speedup": plot_bra_speedup,
    "latency_vs_resolution": plot_latency_vs_resolution,
    "memory_vs_resolution": plot_memory_vs_resolution,
    "gmacs_vs_latency": plot_gmacs_vs_latency,
    "topk_sweep": plot_topk_sweep,
    "kv_modes": plot_kv_modes,
    "speedup": plot_speedup,
    "model_throughput": plot_model_throughput,
}


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


def make_plots(frame: pd.DataFrame, out_dir: str | Path, names: tuple[str, ...] = PLOT_NAMES) -> list[Path]:
    """Write ``<name>.png`` and ``<name>.pdf`` into ``out_dir`` for every plot of ``names`` that has data;
    return the written paths (PNG, PDF per plot, in that order). ``names``: PLOT_NAMES for an
    attention-suite frame, MODEL_PLOT_NAMES for a model-suite frame.

    A frame without a drawn row writes nothing (and does not create ``out_dir``).
    """
    if frame.empty or not frame["status"].isin(DRAWN_STATUSES).any():
        return []
    written: list[Path] = []
    for name in names:
        figure = PLOTTERS[name](frame)
        if figure is not None:
            written += save_figure(figure, Path(out_dir), name)
    return written


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

def _plain(value):
    """numpy scalars to Python ones (ints stay ints), so width tuples compare and print plainly."""
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)) and float(value).is_integer():
        return int(value)
    return value.item() if isinstance(value, np.generic) else value


def _width_text(width: tuple | None) -> str:
    if width is None:
        return ""
    dim, heads, batch, dtype = width
    return f"C={dim}, {heads} heads, batch {batch}, {dtype}"


def _widths_caption(widths: dict[str, tuple], families: pd.Series) -> str:
    """'C=64, 2 heads, batch 1, float32', or per family when the families differ."""
    groups: dict[tuple, list[str]] = {}
    for family in _family_order(families):
        if family in widths:
            groups.setdefault(widths[family], []).append(family)
    if len(groups) == 1:
        return _width_text(next(iter(groups)))
    return "; ".join(f"{', '.join(fams)}: {_width_text(w)}" for w, fams in groups.items())


def _context(frame: pd.DataFrame) -> str:
    """'AMD EPYC (profile cpu)': the device the rows were measured on."""
    parts = []
    for column, template in (("device_name", "{}"), ("gpu_profile", "profile {}")):
        if column in frame.columns:
            values = [str(v) for v in frame[column].dropna().unique()]
            if values:
                parts.append(template.format("/".join(values)))
    if len(parts) == 2:
        return f"{parts[0]} ({parts[1]})"
    return parts[0] if parts else ""


def _title(fig: Figure, title: str, caption: str) -> None:
    """Title and caption above the panels, the caption wrapped to the figure's width. Called last: the
    figure grows by the title's height and the legends' (``_legends``, beside each other), measured, so
    that the panels keep the height ``_grid`` gave them, up to MAX_HEIGHT in all."""
    text = fig.suptitle("\n".join([title, *textwrap.wrap(caption, int(fig.get_figwidth() * 16))]), fontsize=7.5)
    legends = max((legend.get_window_extent().height for legend in fig.legends), default=0.0)
    extra = (text.get_window_extent().height + legends) / fig.dpi + 0.25  # inches, with the layout's pads
    fig.set_figheight(min(MAX_HEIGHT, fig.get_figheight() + extra))


def _phases(table: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(table["phase"]))
    return [p for p in PHASE_ORDER if p in present] + sorted(p for p in present if p not in PHASE_ORDER)


def _family_order(families: pd.Series) -> list[str]:
    registry = list(attentions.list_attentions())
    present = list(dict.fromkeys(families))
    return sorted(present, key=lambda f: (registry.index(f) if f in registry else len(registry), f))


def _family_of(variant: str) -> str:
    return re.split(r"[ (]", variant, maxsplit=1)[0]


def _tags(variant: str) -> str:
    """A variant's options without its family: 'bra (topk=4, avgpool)' -> 'topk=4, avgpool'."""
    rest = variant[len(_family_of(variant)):].strip()
    return rest[1:-1] if rest.startswith("(") and rest.endswith(")") else rest or _family_of(variant)


def _natural_key(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def _kv_sort_key(table: pd.DataFrame, label: str) -> tuple:
    mode = table.loc[table["label"] == label, "kv_downsample_mode"].iloc[0]
    rank = KV_MODE_ORDER.index(mode) if mode in KV_MODE_ORDER else len(KV_MODE_ORDER)
    return rank, _natural_key(label)


def _backend_rank(backend: str) -> tuple:
    """Backends in the registry's order (the reference backends come first there)."""
    names = list(dict.fromkeys(b for info in attentions.list_attentions().values() for b in info["backends"]))
    return (names.index(backend) if backend in names else len(names), backend)


def _grid(rows: int, columns: int, width: float, panel_height: float, sharey: bool | str) -> tuple[Figure, list]:
    """A figure of rows × columns panels, ``width`` wide, each row ``panel_height`` tall (its title, tick
    labels and axis labels included); ``_title`` adds the title's and legends' height."""
    fig = Figure(figsize=(width, rows * panel_height), layout="constrained")
    axes = fig.subplots(rows, columns, sharey=sharey, squeeze=False)
    return fig, [list(row) for row in axes]


def _fixed_ticks(axis, values) -> None:
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


def _log_limits(points, lows=(), highs=(), min_span: float = 3.0) -> tuple[float, float]:
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


def _log_axis(ax, which: str, points, lows=(), highs=(), suffix: str = "", min_span: float = 3.0) -> None:
    """``ax``'s x or y axis (``which``) in log scale over ``points`` and their intervals (``_log_limits``),
    with plain-number ticks (``PlainLogLocator``) ending in ``suffix``."""
    getattr(ax, f"set_{which}scale")("log")
    getattr(ax, f"set_{which}lim")(*_log_limits(points, lows, highs, min_span))
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(PlainLogLocator())
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}{suffix}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _log_log(ax, x_values, y_points, y_lows=(), y_highs=()) -> None:
    """Log axes over ``x_values`` and the y points with their intervals; the x ticks at the data's own
    values when there are few whole ones (resolutions)."""
    x_values = sorted({float(v) for v in x_values})
    own_ticks = len(x_values) <= 6 and all(v.is_integer() for v in x_values)
    _log_axis(ax, "x", x_values, min_span=1.0 if own_ticks else 3.0)
    if own_ticks:
        _fixed_ticks(ax.xaxis, x_values)
    _log_axis(ax, "y", y_points, y_lows, y_highs)


def _with_band(table: pd.DataFrame, value: str, band: bool) -> tuple[pd.Series, ...]:
    """``table[value]``, and its p20 and p80 latencies when the ``band`` is drawn: what a log axis spans."""
    return (table[value], table["latency_ms_p20"], table["latency_ms_p80"]) if band else (table[value],)


def _marker_fill(color, hollow: bool) -> dict:
    """Marker colours: filled with ``color`` (white edge, to stand out where markers meet), or hollow
    (white inside): a noisy timing."""
    if hollow:
        return {"markerfacecolor": "white", "markeredgecolor": color, "markeredgewidth": 0.9}
    return {"markerfacecolor": color, "markeredgecolor": "white", "markeredgewidth": 0.4}


def _style_line(ax, line: pd.DataFrame, value: str, timing: bool, color, backend: str, x: str = "resolution") -> None:
    """A backend's line in ``color`` and its style; for a ``timing``, hollow markers where the row is noisy
    and the p20-p80 band (peak memory is no timing: filled markers)."""
    if line.empty:
        return
    linestyle, marker = backend_style(backend)
    ax.plot(line[x], line[value], color=color, linestyle=linestyle, gid=f"backend:{backend}")
    for noisy, points in line.groupby(line["noisy"].astype(bool) & timing):
        ax.plot(points[x], points[value], linestyle="", marker=marker, color=color, **_marker_fill(color, noisy),
                gid=f"backend:{backend}")
    if timing:
        ax.fill_between(line[x], line["latency_ms_p20"], line["latency_ms_p80"], color=color, alpha=0.18, linewidth=0)


def _name_unmeasured(ax, cases: pd.DataFrame, x: str, name: str) -> None:
    """Name the ``cases`` without a value (``unmeasured``) where their points would be: at their ``x``,
    from the panel's foot up, a line per status with the cases' ``name`` ('oom: sdpa, torch'); left
    of the panel's first third aligned left, in its last third right, so that the names stay inside.
    ``_finish`` lowers the panel's log axis so that the data clears them. Set the x limits first."""
    if cases.empty:
        return
    left, right = sorted(ax.get_xlim())
    scale = np.log if ax.get_xscale() == "log" else (lambda v: v)
    for position, at in cases.groupby(x, sort=True):
        by_status = sorted(at.groupby("status"), key=lambda item: _status_rank(item[0].split("/")[0]))
        lines = [line for status, group in by_status
                 for line in textwrap.wrap(f"{status}: {', '.join(dict.fromkeys(map(str, group[name])))}", 26)]
        where = (scale(position) - scale(left)) / (scale(right) - scale(left))
        align = "left" if where < 1 / 3 else "right" if where > 2 / 3 else "center"
        ax.text(position, 0.02, "\n".join(lines), transform=ax.get_xaxis_transform(), ha=align, va="bottom",
                fontsize=5.5, linespacing=1.1, color="0.3", gid=UNMEASURED)


def _finish(fig: Figure) -> None:
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


def _family_handles(families: pd.Series) -> list[Line2D]:
    return [Line2D([], [], color=family_color(f) if f in attentions.list_attentions() else (0.4, 0.4, 0.4),
                   marker="s", linestyle="-", label=f) for f in _family_order(families)]


def _style_handles(backends: pd.Series) -> list[Line2D]:
    return [Line2D([], [], color="0.3", linestyle=backend_style(b)[0], marker=backend_style(b)[1], label=b,
                   gid=f"backend:{b}") for b in sorted(set(backends), key=_backend_rank)]


def _marker_handles(backends: pd.Series) -> list[Line2D]:
    return [Line2D([], [], color="0.3", linestyle="", marker=backend_style(b)[1], label=b, gid=f"backend:{b}")
            for b in sorted(set(backends), key=_backend_rank)]


def _status_handles(table: pd.DataFrame) -> list[Line2D]:
    """A legend entry for hollow markers, when some drawn value is noisy."""
    noisy = table["noisy"].any() if "noisy" in table else (table.get("cell_status") == "noisy").any()
    return [Line2D([], [], color="0.3", linestyle="", marker="o", markerfacecolor="white",
                   label="noisy (spread beyond the device's limit)")] if noisy else []


def _legends(fig: Figure, first: list, second: list, first_title: str, second_title: str) -> None:
    """The legends below the panels, side by side, each in as many columns as fit."""
    for handles, title, where in ((second, second_title, "outside lower left"),
                                  (first, first_title, "outside lower right" if second else "outside lower center")):
        if handles:
            longest = max(len(h.get_label()) for h in handles)
            ncols = max(1, min(len(handles), int(fig.get_figwidth() * 13 / (longest + 5) / (2 if second and first else 1))))
            fig.legend(handles=handles, title=title or None, loc=where, ncols=ncols, handlelength=2.4,
                       columnspacing=1.0)
