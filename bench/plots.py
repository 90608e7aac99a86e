"""Print-ready figures of a results frame: PNG (300 dpi) and PDF of each plot in ``PLOT_NAMES``.

Every plot is two layers: a pure *data function* (frame -> tidy DataFrame, checked numerically by
the tests) and a *plot function* (frame -> ``matplotlib.figure.Figure``, or ``None`` when the
frame has no data for it). ``make_plots`` draws and saves them all.

Rules shared by every plot:

- Measured values come only from rows with status ``ok``. A ``mismatch`` row keeps its timing in
  the CSV but is never drawn as a valid latency or speedup; oom / unsupported / error rows have
  no numbers. In the speedup heatmap such cases are hatched cells labelled with their status.
- Curves over resolution follow one width: per family, the (dim, heads, batch, dtype) group with
  the most ok rows (``main_widths``), named in the figure's caption.
- Figures are ``matplotlib.figure.Figure`` objects (no pyplot, no global backend switch): saving
  picks the Agg / PDF canvas by file type, so importing this module changes nothing for other
  users of matplotlib. Style (seaborn "whitegrid", 9 pt fonts, embedded TrueType in the PDF) is set
  in an ``rc_context`` around drawing and saving only. Palette: seaborn "colorblind"; the heatmap
  uses the ColorBrewer diverging map RdBu (colourblind-safe).
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
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

import attentions

from .variants import with_reference, with_variants

PLOT_NAMES = ("latency_vs_resolution", "memory_vs_resolution", "gmacs_vs_latency", "topk_sweep", "kv_mode_bars",
              "speedup_heatmap")
BRA = "bra"
PHASE_ORDER = ("fwd", "fwd+bwd")
WIDTH_COLUMNS = ["dim", "heads", "batch", "dtype"]
# A case apart from its backend: what a backend's row is compared with its reference row on.
NUMERIC_COLUMNS = ["resolution", "batch", "dim", "heads", "topk", "latency_ms_median", "latency_ms_p20",
                   "latency_ms_p80", "peak_mem_mb", "gmacs"]
KV_MODE_ORDER = ["identity", "avgpool", "maxpool", "ada_avgpool", "ada_maxpool"]
DPI = 300
MAX_LOG2_SPEEDUP = 5.0
FIG_WIDTH = 7.0  # inches: a two-column figure; single-panel plots stay readable down to ~3.5 in
RC = {
    "font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 10, "lines.linewidth": 1.4,
    "lines.markersize": 4.5, "pdf.fonttype": 42, "ps.fonttype": 42, "savefig.dpi": DPI, "figure.dpi": 100,
    "legend.frameon": False, "axes.titlepad": 4,
}
# (linestyle, marker) per backend, reference backend first.
BACKEND_STYLES = [("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"), ((0, (1, 1)), "P")]


# --------------------------------------------------------------------------------------------
# data functions
# --------------------------------------------------------------------------------------------

def prepared(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with a ``variant`` column (``bench.variants.with_variants``) and numeric measurements."""
    if "variant" not in frame.columns:
        frame = with_variants(frame)
    frame = frame.copy()
    for column in NUMERIC_COLUMNS:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame


def measured(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows that are valid measurements: status 'ok' and a positive median latency."""
    frame = prepared(frame)
    latency = frame["latency_ms_median"]
    return frame[(frame["status"] == "ok") & latency.notna() & (latency > 0)]


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


def resolution_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Data of latency_vs_resolution and memory_vs_resolution.

    Ok rows at each family's main width, one row per (phase, variant, backend, resolution) with
    the median / p20 / p80 latency in ms and the peak memory in MB.
    """
    frame = prepared(frame)
    rows = at_main_width(measured(frame), main_widths(frame))
    keys = ["phase", "family", "variant", "backend", "resolution"]
    values = ["latency_ms_median", "latency_ms_p20", "latency_ms_p80", "peak_mem_mb"]
    if rows.empty:
        return pd.DataFrame(columns=keys + WIDTH_COLUMNS + values)
    table = rows.groupby(keys + WIDTH_COLUMNS, sort=False, dropna=False)[values].median().reset_index()
    return table.sort_values(keys).reset_index(drop=True)


def gmacs_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Data of gmacs_vs_latency: every ok row (all widths) with positive GMACs."""
    rows = measured(frame)
    rows = rows[rows["gmacs"].notna() & (rows["gmacs"] > 0)]
    return rows[["phase", "family", "variant", "backend", "resolution", "dim", "heads", "batch", "dtype",
                 "gmacs", "latency_ms_median"]].reset_index(drop=True)


def topk_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Data of topk_sweep: BRA ok rows with kv mode identity at BRA's main width.

    One row per (phase, resolution, backend, topk) with latency (ms) and GMACs.
    """
    frame = prepared(frame)
    columns = ["phase", "resolution", "backend", "topk", "latency_ms_median", "latency_ms_p20", "latency_ms_p80",
               "gmacs"]
    rows = at_main_width(measured(frame), main_widths(frame))
    rows = rows[(rows["family"] == BRA) & (rows["kv_downsample_mode"] == "identity") & rows["topk"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    table = rows.groupby(columns[:4], sort=False)[columns[4:]].median().reset_index()
    table["topk"] = table["topk"].astype(int)
    return table.sort_values(columns[:4]).reset_index(drop=True)


def kv_mode_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Data of kv_mode_bars: BRA ok rows at BRA's main width and one topk, per kv_downsample_mode.

    The topk is the one with the most kv modes (then the most rows), so the identity bar is not a
    topk-sweep point. Column ``label`` is the mode, or the variant label where one mode has
    several configurations. Columns: phase, resolution, backend, topk, label, latencies (ms).
    """
    frame = prepared(frame)
    columns = ["phase", "resolution", "backend", "topk", "label", "kv_downsample_mode", "latency_ms_median",
               "latency_ms_p20", "latency_ms_p80"]
    rows = at_main_width(measured(frame), main_widths(frame))
    rows = rows[(rows["family"] == BRA) & rows["kv_downsample_mode"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns)
    per_topk = rows.groupby("topk").agg(modes=("kv_downsample_mode", "nunique"), n=("status", "size"))
    topk = per_topk.sort_values(["modes", "n"], ascending=False).index[0]
    rows = rows[rows["topk"] == topk]
    configurations = rows.groupby(["kv_downsample_mode", "resolution"])["variant"].nunique()
    ambiguous = set(configurations[configurations > 1].index.get_level_values(0))
    rows = rows.assign(label=[_short_variant(v, drop_family=True) if m in ambiguous else m
                              for m, v in zip(rows["kv_downsample_mode"], rows["variant"])])
    table = rows.groupby(columns[:6], sort=False)[columns[6:]].median().reset_index()
    table["topk"] = table["topk"].astype(int)
    return table.reset_index(drop=True)


def speedup_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Every row with its family's reference-backend row for the same case, and the speedup.

    ``speedup`` = the paired speedup over the reference where the run timed them in the same rounds,
    else reference median latency / the row's median latency; only when both rows are ``ok``,
    otherwise NaN. ``cell_status`` is 'ok', the row's own status (mismatch, oom, ...),
    'ref <status>' when the reference row is not ok, or 'no reference' when it was not run.
    ``label`` is what a heatmap cell shows: '1.35×' or the cell status.
    """
    table = with_reference(prepared(frame))
    table["speedup"] = table["reference_speedup"]
    cell_status = np.where(table["status"] != "ok", table["status"],
                           np.where(table["reference_status"].isna(), "no reference",
                                    np.where(table["reference_status"] != "ok",
                                             "ref " + table["reference_status"].fillna("").astype(str), "ok")))
    table["cell_status"] = cell_status
    table["label"] = [f"{s:.2f}×" if np.isfinite(s) else status
                      for s, status in zip(table["speedup"], table["cell_status"])]
    table.loc[(table["cell_status"] == "ok") & table["speedup"].isna(), "label"] = "n/a"
    return table


# --------------------------------------------------------------------------------------------
# plot functions
# --------------------------------------------------------------------------------------------

@contextlib.contextmanager
def plot_style() -> Iterator[None]:
    """The figures' style, set for the duration of the block only."""
    with mpl.rc_context({**sns.axes_style("whitegrid"), **RC}):
        yield


def _styled(function: Callable[[pd.DataFrame], Figure | None]) -> Callable[[pd.DataFrame], Figure | None]:
    @functools.wraps(function)
    def wrapper(frame: pd.DataFrame) -> Figure | None:
        with plot_style():
            return function(prepared(frame))
    return wrapper


@_styled
def plot_latency_vs_resolution(frame: pd.DataFrame) -> Figure | None:
    """Median latency (ms) vs resolution (tokens per side), log-log: one line per variant (colour)
    and backend (line style, marker), one panel per phase, p20–p80 as error bars. Each family at
    its main width. None with fewer than two resolutions."""
    table = resolution_table(frame)
    return _resolution_figure(frame, table, "latency_ms_median", ("latency_ms_p20", "latency_ms_p80"),
                              "median latency (ms)", "Latency vs resolution",
                              "bars: p20–p80 of the timed rounds")


@_styled
def plot_memory_vs_resolution(frame: pd.DataFrame) -> Figure | None:
    """Peak memory (MB) of one pass vs resolution, log-log, grouped as latency_vs_resolution."""
    table = resolution_table(frame)
    table = table[table["peak_mem_mb"].notna() & (table["peak_mem_mb"] > 0)]
    return _resolution_figure(frame, table, "peak_mem_mb", None, "peak memory (MB)", "Peak memory vs resolution",
                              "peak allocation of one pass above the memory in use before it")


@_styled
def plot_gmacs_vs_latency(frame: pd.DataFrame) -> Figure | None:
    """Scatter of GMACs (x, log) vs median latency (y, log) of every ok row, colour = family,
    marker = backend, one panel per phase."""
    table = gmacs_table(frame)
    if table.empty:
        return None
    phases = _phases(table)
    families = _family_order(table["family"])
    colors = dict(zip(families, sns.color_palette("colorblind", len(families))))
    backends = _backend_order(frame, table["backend"])
    markers = {b: BACKEND_STYLES[i % len(BACKEND_STYLES)][1] for i, b in enumerate(backends)}
    fig, axes = _panels(len(phases), height=3.0)
    for ax, phase in zip(axes, phases):
        rows = table[table["phase"] == phase]
        for family in families:
            for backend in backends:
                points = rows[(rows["family"] == family) & (rows["backend"] == backend)]
                if not points.empty:
                    ax.scatter(points["gmacs"], points["latency_ms_median"], color=colors[family],
                               marker=markers[backend], s=24, alpha=0.85, edgecolors="white", linewidths=0.4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        _log_ticks(ax.xaxis, table["gmacs"])
        _log_ticks(ax.yaxis, table["latency_ms_median"])
        ax.set_title(phase)
        ax.set_xlabel("forward GMACs (whole batch)")
    axes[0].set_ylabel("median latency (ms)")
    _legends(fig, [Line2D([], [], ls="", marker="o", color=colors[f], label=f) for f in families],
             [Line2D([], [], ls="", marker=markers[b], color="0.3", label=b) for b in backends],
             "family", "backend")
    _title(fig, "Compute vs latency", _context(frame) + "; all widths and resolutions")
    return fig


@_styled
def plot_topk_sweep(frame: pd.DataFrame) -> Figure | None:
    """BRA (kv mode identity) latency vs topk, one panel per phase, plus a panel of GMACs vs topk;
    one line per resolution (colour), backend = line style. None with fewer than two topk values."""
    table = topk_table(frame)
    if table["topk"].nunique() < 2:
        return None
    phases = _phases(table)
    resolutions = sorted(table["resolution"].unique())
    colors = dict(zip(resolutions, sns.color_palette("colorblind", len(resolutions))))
    backends = _backend_order(frame, table["backend"])
    styles = _backend_styles(backends)
    fig, axes = _panels(len(phases) + 1, height=3.2, sharey=False)
    for ax, phase in zip(axes, phases):
        rows = table[table["phase"] == phase]
        for resolution in resolutions:
            for backend in backends:
                line = rows[(rows["resolution"] == resolution) & (rows["backend"] == backend)].sort_values("topk")
                if not line.empty:
                    _errorbar_line(ax, line["topk"], line, "latency_ms_median",
                                   ("latency_ms_p20", "latency_ms_p80"), colors[resolution], styles[backend])
        ax.set_yscale("log")
        _log_ticks(ax.yaxis, _spread_values(rows, "latency_ms_median", ("latency_ms_p20", "latency_ms_p80")))
        ax.set_title(f"latency, {phase}")
        ax.set_ylabel("median latency (ms)")
    macs = table.groupby(["resolution", "topk"])["gmacs"].median().reset_index()
    ax = axes[-1]
    for resolution in resolutions:
        line = macs[macs["resolution"] == resolution].sort_values("topk")
        ax.plot(line["topk"], line["gmacs"], color=colors[resolution], marker="o")
    ax.set_yscale("log")
    _log_ticks(ax.yaxis, macs["gmacs"])
    ax.set_title("compute")
    ax.set_ylabel("GMACs (fwd)")
    topks = sorted(table["topk"].unique())
    for ax in axes:
        ax.set_xscale("log", base=2)
        _fixed_ticks(ax.xaxis, topks)
        ax.set_xlabel("topk (routed regions)")
    width = main_widths(frame).get(BRA)
    _legends(fig, [Line2D([], [], color=colors[r], marker="o", label=f"{r}×{r}") for r in resolutions],
             [_style_handle(b, styles[b]) for b in backends], "resolution (tokens)", "backend")
    _title(fig, "BRA: routed regions (topk)",
           f"kv mode identity; {_width_text(width)}; {_context(frame)}; bars: p20–p80")
    return fig


@_styled
def plot_kv_mode_bars(frame: pd.DataFrame) -> Figure | None:
    """BRA median latency (ms) per kv_downsample_mode: bars per backend with p20–p80 error bars,
    one panel per resolution (rows) and phase (columns); a case that ran without a valid number
    shows its status where its bar would be. None with fewer than two modes."""
    table = kv_mode_table(frame)
    if table["kv_downsample_mode"].nunique() < 2:
        return None
    phases = _phases(table)
    resolutions = sorted(table["resolution"].unique())
    labels = sorted(table["label"].unique(), key=lambda l: _kv_sort_key(table, l))
    backends = _backend_order(frame, table["backend"])
    colors = dict(zip(backends, sns.color_palette("colorblind", len(backends))))
    fig = Figure(figsize=(FIG_WIDTH, 0.9 + 1.9 * len(resolutions)), layout="constrained")
    axes = fig.subplots(len(resolutions), len(phases), sharex=True, squeeze=False)
    bar_width = 0.8 / len(backends)
    topk = int(table["topk"].iloc[0])
    rows = at_main_width(frame, main_widths(frame))
    rows = rows[(rows["family"] == BRA) & (rows["topk"] == topk) & (rows["status"] != "ok")]
    failed = {(r, p, b, m): status for r, p, b, m, status in
              rows[["resolution", "phase", "backend", "kv_downsample_mode", "status"]].itertuples(index=False)}
    x = np.arange(len(labels))
    for i, resolution in enumerate(resolutions):
        for j, phase in enumerate(phases):
            ax = axes[i][j]
            rows = table[(table["resolution"] == resolution) & (table["phase"] == phase)]
            for b, backend in enumerate(backends):
                values = rows[rows["backend"] == backend].set_index("label").reindex(labels)
                median = values["latency_ms_median"].to_numpy(float)
                err = np.vstack([median - values["latency_ms_p20"].to_numpy(float),
                                 values["latency_ms_p80"].to_numpy(float) - median]).clip(min=0)
                offsets = x + (b - (len(backends) - 1) / 2) * bar_width
                ax.bar(offsets, median, bar_width, color=colors[backend],
                       yerr=np.nan_to_num(err), error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "0.2"},
                       label=backend)
                for offset, label, value in zip(offsets, labels, median):
                    status = failed.get((resolution, phase, backend, label))
                    if np.isnan(value) and status:  # a case that ran but has no valid number
                        ax.text(offset, 0.02, status, rotation=90, ha="center", va="bottom", fontsize=9,
                                color="0.25", transform=ax.get_xaxis_transform())
            ax.set_title(f"{resolution}×{resolution} tokens, {phase}")
            ax.set_xticks(x, labels, rotation=30, ha="right", rotation_mode="anchor")
            ax.grid(axis="x", visible=False)
            if j == 0:
                ax.set_ylabel("median latency (ms)")
    _legends(fig, [Patch(color=colors[b], label=b) for b in backends], [], "backend", "")
    width = main_widths(frame).get(BRA)
    _title(fig, "BRA: KV downsampling mode",
           f"topk={topk}; {_width_text(width)}; {_context(frame)}; bars: p20–p80")
    return fig


@_styled
def plot_speedup_heatmap(frame: pd.DataFrame) -> Figure | None:
    """Speedup of each non-reference backend over its family's reference backend for the same
    case: rows = variant · backend, columns = resolution, one panel per phase, each family at its
    main width. Cells read '1.35×'; cases without a valid pair are hatched and show their status
    (mismatch, oom, ref oom, ...). None when only reference backends were run, or no reference rows."""
    table = at_main_width(speedup_table(frame), main_widths(frame))
    table = table[table["backend"] != table["reference_backend"]]
    if table.empty or (table["cell_status"] == "no reference").all():
        return None
    phases = _phases(table)
    resolutions = sorted(table["resolution"].unique())
    variants = _variant_order(table["variant"])
    backends = _backend_order(frame, table["backend"])
    present = set(zip(table["variant"], table["backend"]))
    rows = [(v, b) for v in variants for b in backends if (v, b) in present]
    row_labels = [f"{_short_variant(v)} · {b}" for v, b in rows]
    finite = np.log2(table["speedup"].dropna())
    largest = float(np.abs(finite).max()) if len(finite) else 1.0
    limit = float(np.clip(largest, 1.0, MAX_LOG2_SPEEDUP))  # beyond 32x the colour saturates
    norm = Normalize(-limit, limit)
    cmap = mpl.colormaps["RdBu"]
    label_width = max(len(label) for label in row_labels) * 0.065
    fig_width = float(np.clip(label_width + 0.95 * len(resolutions) + 1.4, 4.0, FIG_WIDTH))
    fig = Figure(figsize=(fig_width, 1.2 + len(phases) * (0.45 + 0.26 * len(rows))), layout="constrained")
    axes = fig.subplots(len(phases), 1, sharex=True, squeeze=False)[:, 0]
    image = None
    for ax, phase in zip(axes, phases):
        cells = table[table["phase"] == phase].drop_duplicates(["variant", "backend", "resolution"], keep="last")
        cells = cells.set_index(["variant", "backend", "resolution"])
        values = np.full((len(rows), len(resolutions)), np.nan)
        for r, (variant, backend) in enumerate(rows):
            for c, resolution in enumerate(resolutions):
                key = (variant, backend, resolution)
                if key not in cells.index:
                    continue
                cell = cells.loc[key]
                if np.isfinite(cell["speedup"]):
                    values[r, c] = math.log2(cell["speedup"])
                    shade = norm(values[r, c])
                    ax.text(c, r, cell["label"], ha="center", va="center", fontsize=9,
                            color="white" if abs(shade - 0.5) > 0.3 else "black")
                else:
                    ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, facecolor="0.93", edgecolor="0.55",
                                           hatch="////", linewidth=0))
                    ax.text(c, r, cell["label"], ha="center", va="center", fontsize=9, color="0.1",
                            bbox={"facecolor": "0.93", "edgecolor": "none", "pad": 0.6})
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto",
                          interpolation="nearest")
        ax.set_xlim(-0.5, len(resolutions) - 0.5)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.set_yticks(range(len(rows)), row_labels)
        ax.set_xticks(range(len(resolutions)), [f"{r}×{r}" for r in resolutions])
        ax.tick_params(length=0)
        ax.grid(False)
        for spine in ax.spines.values():
            spine.set_visible(False)
        families = [_family_of(v) for v, _ in rows]
        for r in range(1, len(rows)):  # a rule between families
            if families[r] != families[r - 1]:
                ax.axhline(r - 0.5, color="0.2", linewidth=0.8)
        ax.set_title(phase)
    axes[-1].set_xlabel("resolution (tokens per side)")
    step = 1 if limit <= 3 else 2
    ticks = [t for t in range(-math.floor(limit), math.floor(limit) + 1) if t % step == 0]
    bar = fig.colorbar(image, ax=list(axes), shrink=min(1.0, 4.0 / max(1, len(rows))) ** 0.5, aspect=25,
                       pad=0.02, extend="both" if largest > limit else "neither")
    bar.set_ticks(ticks, labels=[_times(2.0 ** t) for t in ticks])
    bar.minorticks_off()
    bar.set_label("speedup over reference backend")
    references = ", ".join(sorted(table["reference_backend"].dropna().unique()))
    _title(fig, f"Speedup over the reference backend ({references})",
           f"{_widths_caption(main_widths(frame), table['family'])}; {_context(frame)}\n"
           "hatched: no valid pair (row or reference not ok); blank: not run")
    return fig


PLOTTERS: dict[str, Callable[[pd.DataFrame], Figure | None]] = {
    "latency_vs_resolution": plot_latency_vs_resolution,
    "memory_vs_resolution": plot_memory_vs_resolution,
    "gmacs_vs_latency": plot_gmacs_vs_latency,
    "topk_sweep": plot_topk_sweep,
    "kv_mode_bars": plot_kv_mode_bars,
    "speedup_heatmap": plot_speedup_heatmap,
}


def make_plots(frame: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Write ``<name>.png`` (300 dpi) and ``<name>.pdf`` into ``out_dir`` for every plot of
    ``PLOT_NAMES`` that has data; return the written paths (PNG, PDF per plot, in that order).

    A frame without ok rows writes nothing (and does not create ``out_dir``).
    """
    out_dir = Path(out_dir)
    if frame.empty:
        return []
    frame = prepared(frame)
    if measured(frame).empty:
        return []
    written: list[Path] = []
    for name in PLOT_NAMES:
        with plot_style():
            figure = PLOTTERS[name](frame)
            if figure is None:
                continue
            out_dir.mkdir(parents=True, exist_ok=True)
            for suffix in (".png", ".pdf"):
                path = out_dir / f"{name}{suffix}"
                figure.savefig(path, dpi=DPI, metadata={"CreationDate": None} if suffix == ".pdf" else None)
                written.append(path)
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


def _times(value: float) -> str:
    """A colour-bar label: 4 -> '4×', 0.25 -> '1/4×'."""
    return f"{value:g}×" if value >= 1 else f"1/{1 / value:g}×"


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
    """Title and caption above the panels, the caption wrapped to the figure's width."""
    columns = int(fig.get_figwidth() * 14)
    lines = [textwrap.fill(part, columns) for part in caption.split("\n") if part]
    fig.suptitle("\n".join([title, *lines]), fontsize=9)


def _phases(table: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(table["phase"]))
    return [p for p in PHASE_ORDER if p in present] + sorted(p for p in present if p not in PHASE_ORDER)


def _family_order(families: pd.Series) -> list[str]:
    registry = list(attentions.list_attentions())
    present = list(dict.fromkeys(families))
    return sorted(present, key=lambda f: (registry.index(f) if f in registry else len(registry), f))


def _family_of(variant: str) -> str:
    return variant.split(" ", 1)[0]


def _natural_key(text: str) -> list:
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part]


def _variant_order(variants: pd.Series) -> list[str]:
    order = _family_order(variants.map(_family_of))
    present = list(dict.fromkeys(variants))
    return sorted(present, key=lambda v: (order.index(_family_of(v)), _natural_key(v)))


def _short_variant(variant: str, drop_family: bool = False) -> str:
    """A legend label: 'bra kv_downsample_mode=avgpool topk=4' -> 'bra kv=avgpool topk=4'."""
    text = variant.replace("kv_downsample_mode=", "kv=").replace("kv_downsample_ratio=", "kv_ratio=")
    if drop_family and " " in text:
        text = text.split(" ", 1)[1]
    return text


def _kv_sort_key(table: pd.DataFrame, label: str) -> tuple:
    mode = table.loc[table["label"] == label, "kv_downsample_mode"].iloc[0]
    rank = KV_MODE_ORDER.index(mode) if mode in KV_MODE_ORDER else len(KV_MODE_ORDER)
    return rank, _natural_key(label)


def _backend_order(frame: pd.DataFrame, backends: pd.Series) -> list[str]:
    """Reference backends first, then the others alphabetically."""
    references = set(frame["reference_backend"].dropna()) if "reference_backend" in frame.columns else set()
    present = list(dict.fromkeys(backends))
    return sorted(present, key=lambda b: (b not in references, b))


def _backend_styles(backends: list[str]) -> dict[str, tuple]:
    return {b: BACKEND_STYLES[i % len(BACKEND_STYLES)] for i, b in enumerate(backends)}


def _style_handle(backend: str, style: tuple) -> Line2D:
    return Line2D([], [], color="0.3", linestyle=style[0], marker=style[1], label=backend)


def _panels(count: int, height: float, sharey: bool = True) -> tuple[Figure, list]:
    fig = Figure(figsize=(FIG_WIDTH if count > 1 else FIG_WIDTH / 2 + 0.5, height), layout="constrained")
    axes = fig.subplots(1, count, sharey=sharey, squeeze=False)[0]
    return fig, list(axes)


def _fixed_ticks(axis, values) -> None:
    axis.set_major_locator(ticker.FixedLocator(list(values)))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(ticker.NullLocator())


def _log_ticks(axis, values) -> None:
    """Plain-number ticks on a log axis ('0.1', '20', '500' rather than powers of ten): decades when
    the data spans many, 1-2-5 steps when it spans few."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values) & (values > 0)]
    decades = math.log10(values.max() / values.min()) if len(values) else 3.0
    if decades > 2.5:
        subs: tuple[float, ...] = (1.0,)
    elif decades > 1.2:
        subs = (1.0, 3.0)
    elif decades > 0.6:
        subs = (1.0, 2.0, 5.0)
    else:
        subs = (1.0, 1.5, 2.0, 3.0, 5.0, 7.0)
    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(ticker.NullFormatter())


def _errorbar_line(ax, x, rows: pd.DataFrame, value: str, spread: tuple[str, str] | None, color, style) -> None:
    y = rows[value].to_numpy(float)
    yerr = None
    if spread is not None:
        yerr = np.vstack([y - rows[spread[0]].to_numpy(float), rows[spread[1]].to_numpy(float) - y]).clip(min=0)
        yerr = np.nan_to_num(yerr)
    ax.errorbar(np.asarray(x, float), y, yerr=yerr, color=color, linestyle=style[0], marker=style[1],
                capsize=2, elinewidth=0.8, markeredgecolor="white", markeredgewidth=0.4)


def _spread_values(table: pd.DataFrame, value: str, spread: tuple[str, str] | None) -> np.ndarray:
    columns = [value, *(spread or ())]
    return table[columns].to_numpy(float).ravel()


def _legends(fig: Figure, first: list, second: list, first_title: str, second_title: str) -> None:
    """Legends below the panels, outside the data: the styles' legend (short) at the left, the
    colours' legend beside it."""
    if second:
        fig.legend(handles=second, title=second_title, loc="outside lower left", ncols=1, handlelength=2.6)
    longest = max((len(h.get_label()) for h in first), default=1)
    ncols = max(1, min(len(first), int(64 // (longest + 6))))
    fig.legend(handles=first, title=first_title, loc="outside lower right" if second else "outside lower center",
               ncols=ncols)


def _resolution_figure(frame: pd.DataFrame, table: pd.DataFrame, value: str, spread: tuple[str, str] | None,
                       ylabel: str, title: str, note: str) -> Figure | None:
    if table.empty or table["resolution"].nunique() < 2:
        return None
    phases = _phases(table)
    variants = _variant_order(table["variant"])
    colors = dict(zip(variants, sns.color_palette("colorblind", len(variants))))
    backends = _backend_order(frame, table["backend"])
    styles = _backend_styles(backends)
    longest = max(len(_short_variant(v)) for v in variants)
    legend_rows = math.ceil(len(variants) / max(1, min(len(variants), int(70 // (longest + 6)))))
    fig, axes = _panels(len(phases), height=2.9 + 0.2 * legend_rows)
    resolutions = sorted(table["resolution"].unique())
    for ax, phase in zip(axes, phases):
        rows = table[table["phase"] == phase]
        for variant in variants:
            for backend in backends:
                line = rows[(rows["variant"] == variant) & (rows["backend"] == backend)].sort_values("resolution")
                if not line.empty:
                    _errorbar_line(ax, line["resolution"], line, value, spread, colors[variant], styles[backend])
        ax.set_xscale("log")
        ax.set_yscale("log")
        _fixed_ticks(ax.xaxis, resolutions)
        _log_ticks(ax.yaxis, _spread_values(table, value, spread))
        ax.set_title(phase)
        ax.set_xlabel("resolution (tokens per side)")
    axes[0].set_ylabel(ylabel)
    _legends(fig, [Line2D([], [], color=colors[v], marker="o", label=_short_variant(v)) for v in variants],
             [_style_handle(b, styles[b]) for b in backends], "variant", "backend")
    _title(fig, title, f"{_widths_caption(main_widths(frame), table['family'])}; {_context(frame)}; {note}")
    return fig
