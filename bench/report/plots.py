"""The report's general figures, each registered once in ``bench.report.catalog``: the headline scaling
figure, latency and memory against resolution per family, compute against latency, the speedup of every
backend over its family's reference, and the models' throughput against compute. The BRA figures are
``bench.report.plots_bra``'s; the data are ``bench.report.plot_data``'s, the drawing engine
``bench.report.figure_style`` and ``figure_axes``.

How a figure shows failures: a case that has rows but no drawn value is named with its status at its x
position, at the foot of its panel ('oom: sdpa, torch'); the speedup dot plots name such cells in their row,
and list in the caption the backends unsupported in every case. A noisy timing is a hollow marker.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report.catalog import plot
from bench.schema.registry_facts import RegistryFacts
from bench.report.figure_axes import UNMEASURED, log_axis, log_log, name_unmeasured, style_line, with_band
from bench.report.figure_style import (FULL_WIDTH, MAX_HEIGHT, add_title, backend_marker, family_color, family_handles,
                                       legends, marker_handles, panel_grid, shades, status_handles, style_handles)
from bench.report.plot_data import (WIDTH_COLUMNS, backend_order, backend_rank, context, drawn_nowhere, family_of,
                                    gmacs_table, main_widths, model_table_data, natural_key, phase_order, prepared,
                                    representative_rows, representative_variants, resolution_table, scaling_table,
                                    speedup_table, unmeasured, at_main_width, widths_caption)


@plot("scaling", "attentions", 10)
def plot_scaling(frame: pd.DataFrame, facts: RegistryFacts) -> Figure | None:
    """The headline figure: latency (top) and peak memory (bottom) vs resolution for each family,
    each point its fastest (resp. leanest) backend among ok and noisy rows, marked with that backend's
    marker (hollow: a noisy timing); one column per phase; a case where no backend has a value is
    named at its resolution. None with fewer than two resolutions."""
    frame = prepared(frame, facts)
    table = scaling_table(frame, facts)
    if table.empty or table["resolution"].nunique() < 2:
        return None
    failed = unmeasured(representative_rows(frame, facts), ["phase", "family", "resolution"])
    phases, metrics = phase_order(table), [m for m in ("latency", "memory") if m in set(table["metric"])]
    resolutions = set(table["resolution"]) | set(failed.loc[failed["phase"].isin(phases), "resolution"])
    fig, axes = panel_grid(len(metrics), len(phases), FULL_WIDTH, 2.0, sharey="row")
    for i, metric in enumerate(metrics):
        for j, phase in enumerate(phases):
            ax = axes[i][j]
            rows = table[(table["metric"] == metric) & (table["phase"] == phase)]
            for family in facts.family_order(rows["family"]):
                line = rows[rows["family"] == family].sort_values("resolution")
                color = family_color(family, facts)
                ax.plot(line["resolution"], line["value"], color=color, gid=f"family:{family}")
                if metric == "latency":
                    ax.fill_between(line["resolution"], line["latency_ms_p20"], line["latency_ms_p80"],
                                    color=color, alpha=0.2, linewidth=0)
                for (backend, noisy), points in line.groupby(["backend", "noisy"]):
                    ax.plot(points["resolution"], points["value"], linestyle="", color=color,
                            **backend_marker(backend, facts, color, noisy), gid=f"backend:{backend}")
            log_log(ax, resolutions, *with_band(table[table["metric"] == metric], "value", metric == "latency"))
            name_unmeasured(ax, failed[failed["phase"] == phase], "resolution", "family")
            ax.set_title(f"{metric}, {phase}")
            ax.set_xlabel("resolution (tokens per side)" if i == len(metrics) - 1 else "")
        axes[i][0].set_ylabel("median latency (ms)" if metric == "latency" else "peak memory (MB)")
    legends(fig, family_handles(table["family"], facts) + status_handles(table),
            marker_handles(table["backend"], facts), "family", "best backend")
    variants = sorted(set(table["variant"]) - set(table["family"]))
    add_title(fig, "Scaling with resolution, best backend per point",
              f"{widths_caption(main_widths(frame), table['family'], facts)}; {context(frame)}; band: p20-p80"
              + (f"; variants: {', '.join(variants)}" if variants else ""))
    return fig


def speedup_figure(frame: pd.DataFrame, facts: RegistryFacts, families: list[str] | None, title: str, width: float
                   ) -> Figure | None:
    """A dot plot of speedups over the reference backend: one row per (variant, backend), x the speedup
    (log), a point per resolution (shades of the family's hue; hollow: noisy) with its 95% interval, one
    panel per phase; a cell without a valid pair names its status in its row. An entry unsupported in
    every case is no row: the caption names it."""
    frame = prepared(frame, facts)
    table = at_main_width(speedup_table(frame, facts), main_widths(frame))
    table = table[(table["backend"] != table["reference_backend"]) & (table["cell_status"] != "no reference")]
    if families is not None:
        table = table[table["family"].isin(families)]
    ran = table[table["cell_status"] != "unsupported"]
    shown = table.set_index(["variant", "backend"]).index.isin(ran.set_index(["variant", "backend"]).index)
    hidden = _entry_names(table[~shown], table, facts)
    table = table[shown]
    if table["speedup"].isna().all():
        return None
    phases = phase_order(table)
    entries = sorted(set(zip(table["variant"], table["backend"])),
                     key=lambda e: (facts.family_order(table["family"]).index(family_of(e[0])), natural_key(e[0]),
                                    backend_rank(e[1], facts)))
    resolutions = sorted(table["resolution"].unique())
    panel = min(MAX_HEIGHT - 1.2, 0.55 + 0.17 * len(entries) * max(1, len(resolutions) / 2))
    fig, axes = panel_grid(1, len(phases), width, panel, sharey="row")
    axes = axes[0]
    offsets = np.linspace(-0.25, 0.25, len(resolutions)) if len(resolutions) > 1 else [0.0]
    for ax, phase in zip(axes, phases):
        rows = table[table["phase"] == phase]
        for y, (variant, backend) in enumerate(entries):
            family = family_of(variant)
            colors = dict(zip(resolutions, shades(family_color(family, facts), len(resolutions))))
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
                                       linestyle="", elinewidth=0.8, capsize=1.5,
                                       **backend_marker(backend, facts, colors[resolution],
                                                        cell["cell_status"] == "noisy"))
                    bars.lines[0].set_gid(f"backend:{backend}")
                else:
                    unmeasured_at.setdefault(cell["label"], []).append((resolution, offset))
            for label, where in unmeasured_at.items():  # one line per label: '28², 56²: unsupported'
                sizes = ", ".join(f"{resolution}²" for resolution, _ in where)
                ax.annotate(f"{sizes}: {label}", (0.01, y + float(np.mean([offset for _, offset in where]))),
                            xycoords=("axes fraction", "data"), fontsize=6, va="center", color="0.3", gid=UNMEASURED)
        ax.axvline(1.0, color="0.3", linewidth=0.8, zorder=0)
        log_axis(ax, "x", pd.concat([rows["speedup"], pd.Series([1.0])]), rows["speedup_low"], rows["speedup_high"],
                 suffix="×")
        ax.set_ylim(len(entries) - 0.5, -0.5)
        ax.set_yticks(range(len(entries)), [f"{v} · {b}" for v, b in entries])
        ax.grid(axis="y", visible=False)
        families_per_row = [family_of(v) for v, _ in entries]
        for y in range(1, len(entries)):
            if families_per_row[y] != families_per_row[y - 1]:
                ax.axhline(y - 0.5, color="0.6", linewidth=0.6)
        ax.set_title(phase)
        ax.set_xlabel("speedup (× reference)")
    shade_handles = [Line2D([], [], linestyle="", marker="o", color=c, label=f"{r}×{r}")
                     for r, c in zip(resolutions, shades((0.35, 0.35, 0.35), len(resolutions)))]
    legends(fig, shade_handles + status_handles(table), marker_handles(table["backend"], facts),
            "resolution (shade)", "backend")
    references = ", ".join(sorted(table["reference_backend"].dropna().unique()))
    add_title(fig, title, f"over the reference backend ({references}); bars: 95% interval of the paired speedup; "
                          f"{widths_caption(main_widths(frame), table['family'], facts)}; {context(frame)}"
                          + (f"; unsupported in every case: {', '.join(hidden)}" if hidden else ""))
    return fig


def _entry_names(entries: pd.DataFrame, table: pd.DataFrame, facts: RegistryFacts) -> list[str]:
    """Names of the (variant, backend) entries of ``entries``: a backend alone where every entry of it in
    ``table`` is among them, else 'variant · backend'."""
    names = []
    for backend in backend_order(entries["backend"], facts):
        variants = set(entries.loc[entries["backend"] == backend, "variant"])
        if variants == set(table.loc[table["backend"] == backend, "variant"]):
            names.append(backend)
        else:
            names += [f"{variant} · {backend}" for variant in sorted(variants, key=natural_key)]
    return names


@plot("speedup", "attentions", 80)
def plot_speedup(frame: pd.DataFrame, facts: RegistryFacts) -> Figure | None:
    """Speedup of every fast backend over its family's reference (a dot plot rather than a heatmap:
    the interval of each paired speedup, and a value axis that reads at a glance)."""
    return speedup_figure(frame, facts, None, "Speedup of every backend", FULL_WIDTH)


def _per_family_figure(frame: pd.DataFrame, facts: RegistryFacts, value: str, timing: bool, ylabel: str, title: str
                       ) -> Figure | None:
    """One panel per family (its representative variant; columns) and phase (rows): a line per backend
    in the family's hue and the backend's style; for a ``timing``, hollow where noisy and the p20-p80
    band. A backend's case without a value is named at its resolution."""
    frame = prepared(frame, facts)
    table = resolution_table(frame, facts)
    table = table[table["variant"] == table["family"].map(representative_variants(frame, facts))]
    table = table[table[value].notna() & (table[value] > 0)]
    if table.empty or table["resolution"].nunique() < 2:
        return None
    phases, families = phase_order(table), facts.family_order(table["family"])
    failed = unmeasured(representative_rows(frame, facts), ["phase", "family", "backend", "resolution"])
    failed, absent = drawn_nowhere(failed[failed["phase"].isin(phases) & failed["family"].isin(families)],
                                   table["backend"], facts)
    resolutions = set(table["resolution"]) | set(failed["resolution"])
    fig, axes = panel_grid(len(phases), len(families), FULL_WIDTH, 1.75, sharey="row")
    for i, phase in enumerate(phases):
        for j, family in enumerate(families):
            ax = axes[i][j]
            rows = table[(table["phase"] == phase) & (table["family"] == family)]
            for backend in backend_order(rows["backend"], facts):
                style_line(ax, rows[rows["backend"] == backend].sort_values("resolution"), value, timing,
                           family_color(family, facts), backend, facts)
            log_log(ax, resolutions, *with_band(table[table["phase"] == phase], value, timing))
            name_unmeasured(ax, failed[(failed["phase"] == phase) & (failed["family"] == family)], "resolution",
                            "backend")
            ax.set_title(f"{family}, {phase}" if len(phases) > 1 else family)
            ax.set_xlabel("resolution" if i == len(phases) - 1 else "")
        axes[i][0].set_ylabel(ylabel)
    legends(fig, family_handles(table["family"], facts) + (status_handles(table) if timing else []),
            style_handles(table["backend"], facts), "family", "backend")
    variants = sorted(set(table["variant"]) - set(table["family"]))
    add_title(fig, title, f"{widths_caption(main_widths(frame), table['family'], facts)}; {context(frame)}"
              + ("; band: p20-p80" if timing else "") + (f"; variants: {', '.join(variants)}" if variants else "")
              + absent)
    return fig


@plot("latency_vs_resolution", "attentions", 30)
def plot_latency_vs_resolution(frame: pd.DataFrame, facts: RegistryFacts) -> Figure | None:
    """Median latency (ms) vs resolution, log-log, per family and phase, a line per backend."""
    return _per_family_figure(frame, facts, "latency_ms_median", True, "median latency (ms)", "Latency vs resolution")


@plot("memory_vs_resolution", "attentions", 40)
def plot_memory_vs_resolution(frame: pd.DataFrame, facts: RegistryFacts) -> Figure | None:
    """Peak memory (MB) of one pass vs resolution, log-log, per family and phase, a line per backend."""
    return _per_family_figure(frame, facts, "peak_mem_mb", False, "peak memory (MB)", "Peak memory vs resolution")


@plot("gmacs_vs_latency", "attentions", 50)
def plot_gmacs_vs_latency(frame: pd.DataFrame, facts: RegistryFacts) -> Figure | None:
    """GMACs (x, log) vs median latency (y, log): one point per variant, width and resolution (its
    fastest backend's marker, among ok and noisy rows; hollow: noisy), colour = family, one panel per
    phase; a case where no backend has a value is named at its GMACs."""
    frame = prepared(frame, facts)
    table = gmacs_table(frame, facts)
    if table.empty:
        return None
    phases = phase_order(table)
    keys = ["variant", *WIDTH_COLUMNS, "resolution"]
    failed = unmeasured(frame, ["phase", *keys], "gmacs", keys)
    fig, axes = panel_grid(1, len(phases), FULL_WIDTH, 2.6, sharey="row")
    for ax, phase in zip(axes[0], phases):
        rows = table[table["phase"] == phase]
        for (family, backend, noisy), points in rows.groupby(["family", "backend", "noisy"]):
            ax.plot(points["gmacs"], points["latency_ms_median"], linestyle="", color=family_color(family, facts),
                    alpha=0.8, **backend_marker(backend, facts, family_color(family, facts), noisy),
                    gid=f"backend:{backend}")
        log_log(ax, pd.concat([table["gmacs"], failed["gmacs"]]), table["latency_ms_median"])
        name_unmeasured(ax, failed[failed["phase"] == phase], "gmacs", "variant")
        ax.set_title(phase)
        ax.set_xlabel("forward GMACs (whole batch)")
    axes[0][0].set_ylabel("median latency (ms)")
    legends(fig, family_handles(table["family"], facts) + status_handles(table),
            marker_handles(table["backend"], facts), "family", "fastest backend")
    add_title(fig, "Compute vs latency", f"one point per variant, width and resolution; {context(frame)}")
    return fig


@plot("model_throughput", "models", 90)
def plot_model_throughput(frame: pd.DataFrame, facts: RegistryFacts) -> Figure | None:
    """The model table as a figure: images/s (y, log) vs GMACs per image (x, log), a point per model,
    attention choice and backend, each model and attention choice labelled once (at its fastest point: its
    backends share the x position); colour = family of its attention, marker = backend; one panel per
    resolution (rows) and phase (columns)."""
    table = model_table_data(frame)
    if table.empty:
        return None
    phases, resolutions = phase_order(table), sorted(table["resolution"].unique())
    fig, axes = panel_grid(len(resolutions), len(phases), FULL_WIDTH, 2.2, sharey=False)
    for i, resolution in enumerate(resolutions):
        for j, phase in enumerate(phases):
            ax = axes[i][j]
            rows = table[(table["resolution"] == resolution) & (table["phase"] == phase)]
            for _, row in rows.iterrows():
                color = family_color(row["family"], facts) if row["family"] != "mixed" else (0.4, 0.4, 0.4)
                ax.plot([row["gmacs_per_image"]], [row["throughput"]], linestyle="", color=color,
                        **backend_marker(row["backend"], facts, color, row["noisy"]), gid=f"backend:{row['backend']}")
            fastest = rows.sort_values("throughput", ascending=False).drop_duplicates(["model", "attention"])
            for _, row in fastest.iterrows():
                own = row["model"].startswith("biformer")  # a BiFormer model with its own attention
                name = row["model"] if own else f"{row['model']} ({row['attention']})"
                ax.annotate(name, (row["gmacs_per_image"], row["throughput"]), xytext=(3, 2),
                            textcoords="offset points", fontsize=5.5, color="0.25")
            if not rows.empty:
                log_log(ax, rows["gmacs_per_image"], rows["throughput"])
            batches = "/".join(map(str, sorted(set(rows["batch"]))))
            ax.set_title(f"{resolution}×{resolution} px, {phase}, batch {batches}")
            ax.set_xlabel("GFLOPs (GMACs) per image" if i == len(resolutions) - 1 else "")
        axes[i][0].set_ylabel("images/s")
    legends(fig, family_handles(table["family"], facts) + status_handles(table),
            marker_handles(table["backend"], facts), "attention", "backend")
    add_title(fig, "Backbones: throughput vs compute", context(frame))
    return fig
