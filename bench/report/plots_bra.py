"""The figures of BRA (bi-level routing attention), each registered once in ``bench.report.catalog``: its fast
paths' speedup over the official algorithm, the routed regions (topk) sweep and the kv downsampling modes;
with the data of the last two.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib import ticker
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from bench.report.catalog import plot
from bench.schema.registry_facts import RegistryFacts
from bench.report.figure_axes import (UNMEASURED, fixed_ticks, log_axis, log_limits, name_unmeasured, style_line,
                                      with_band)
from bench.report.figure_style import (COLUMN_WIDTH, FULL_WIDTH, add_title, backend_marker, family_color, legends,
                                       marker_handles, panel_grid, shades, status_handles, style_handles)
from bench.report.plot_data import (at_main_width, backend_order, context, drawn, drawn_nowhere, main_widths,
                                    natural_key, phase_order, prepared, tags, unmeasured, width_text)
from bench.report.plots import speedup_figure

BRA = "bra"
KV_MODE_ORDER = ["identity", "avgpool", "maxpool", "ada_avgpool", "ada_maxpool"]


def topk_table(frame: pd.DataFrame, facts: RegistryFacts) -> pd.DataFrame:
    """Data of topk_sweep: BRA drawn rows with kv mode identity at BRA's main width.

    One row per (phase, resolution, backend, topk) with latency (ms), GMACs and ``noisy``.
    """
    frame = prepared(frame, facts)
    columns = ["phase", "resolution", "backend", "topk", "latency_ms_median", "latency_ms_p20", "latency_ms_p80",
               "gmacs"]
    rows = at_main_width(drawn(frame, facts), main_widths(frame))
    rows = rows[(rows["family"] == BRA) & (rows["kv_downsample_mode"] == "identity") & rows["topk"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns + ["noisy"])
    table = rows.groupby(columns[:4], sort=False).agg(
        **{c: (c, "median") for c in columns[4:]}, noisy=("noisy", "any")).reset_index()
    table["topk"] = table["topk"].astype(int)
    return table.sort_values(columns[:4]).reset_index(drop=True)


def kv_mode_table(frame: pd.DataFrame, facts: RegistryFacts) -> pd.DataFrame:
    """Data of kv_modes: BRA drawn rows at BRA's main width and one topk, per kv_downsample_mode.

    The topk is the one with the most kv modes (then the most rows), so the identity point is not a
    topk-sweep point. Column ``label`` is the mode, or the variant label where one mode has
    several configurations. Columns: phase, resolution, backend, topk, label, latencies (ms), noisy.
    """
    frame = prepared(frame, facts)
    columns = ["phase", "resolution", "backend", "topk", "label", "kv_downsample_mode", "latency_ms_median",
               "latency_ms_p20", "latency_ms_p80"]
    rows = at_main_width(drawn(frame, facts), main_widths(frame))
    rows = rows[(rows["family"] == BRA) & rows["kv_downsample_mode"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=columns + ["noisy"])
    per_topk = rows.groupby("topk").agg(modes=("kv_downsample_mode", "nunique"), n=("status", "size"))
    topk = per_topk.sort_values(["modes", "n"], ascending=False).index[0]
    rows = rows[rows["topk"] == topk]
    configurations = rows.groupby(["kv_downsample_mode", "resolution"])["variant"].nunique()
    ambiguous = set(configurations[configurations > 1].index.get_level_values(0))
    rows = rows.assign(label=[tags(v) if m in ambiguous else m
                              for m, v in zip(rows["kv_downsample_mode"], rows["variant"])])
    table = rows.groupby(columns[:6], sort=False).agg(
        **{c: (c, "median") for c in columns[6:]}, noisy=("noisy", "any")).reset_index()
    table["topk"] = table["topk"].astype(int)
    return table.reset_index(drop=True)


def _kv_sort_key(table: pd.DataFrame, label: str) -> tuple:
    mode = table.loc[table["label"] == label, "kv_downsample_mode"].iloc[0]
    rank = KV_MODE_ORDER.index(mode) if mode in KV_MODE_ORDER else len(KV_MODE_ORDER)
    return rank, natural_key(label)


@plot("bra_speedup", "attentions", 20)
def plot_bra_speedup(frame: pd.DataFrame, facts: RegistryFacts) -> Figure | None:
    """The headline speedup figure: BRA's fast paths over the official algorithm, one column wide
    when one phase was run."""
    phases = phase_order(prepared(frame, facts))
    return speedup_figure(frame, facts, [BRA], "BRA fast paths", COLUMN_WIDTH if len(phases) == 1 else FULL_WIDTH)


@plot("topk_sweep", "attentions", 60)
def plot_topk_sweep(frame: pd.DataFrame, facts: RegistryFacts) -> Figure | None:
    """BRA (kv mode identity) latency vs topk, one panel per phase, plus GMACs vs topk; resolutions
    as shades of BRA's hue, backends as line styles (hollow: noisy); a backend's case without a value
    is named at its topk. None with fewer than two topk values."""
    frame = prepared(frame, facts)
    table = topk_table(frame, facts)
    if table["topk"].nunique() < 2:
        return None
    phases = phase_order(table)
    resolutions = sorted(table["resolution"].unique())
    colors = dict(zip(resolutions, shades(family_color(BRA, facts), len(resolutions))))
    bra = at_main_width(frame, main_widths(frame))
    bra = bra[(bra["family"] == BRA) & (bra["kv_downsample_mode"] == "identity") & bra["topk"].notna()]
    failed, absent = drawn_nowhere(unmeasured(bra, ["phase", "resolution", "backend", "topk"]), table["backend"],
                                   facts)
    failed = failed.groupby(["phase", "topk", "backend", "status"], sort=False)["resolution"].agg(
        lambda r: "/".join(f"{v}²" for v in sorted(r))).reset_index()
    failed["name"] = failed["backend"] + " " + failed["resolution"]
    topks = sorted(set(table["topk"]) | set(failed.loc[failed["phase"].isin(phases), "topk"].astype(int)))
    fig, axes = panel_grid(1, len(phases) + 1, FULL_WIDTH, 2.2, sharey=False)
    axes = axes[0]
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlim(*log_limits(topks, min_span=1.0))
        fixed_ticks(ax.xaxis, topks)
        ax.set_xlabel("topk (routed regions)")
    for ax, phase in zip(axes, phases):
        rows = table[table["phase"] == phase]
        for resolution in resolutions:
            for backend in backend_order(rows["backend"], facts):
                line = rows[(rows["resolution"] == resolution) & (rows["backend"] == backend)].sort_values("topk")
                style_line(ax, line.rename(columns={"topk": "x"}), "latency_ms_median", True, colors[resolution],
                           backend, facts, x="x")
        log_axis(ax, "y", *with_band(rows, "latency_ms_median", True))
        name_unmeasured(ax, failed[failed["phase"] == phase], "topk", "name")
        ax.set_title(f"latency, {phase}")
    axes[0].set_ylabel("median latency (ms)")
    macs = table.groupby(["resolution", "topk"])["gmacs"].median().reset_index()
    ax = axes[-1]
    for resolution in resolutions:
        line = macs[macs["resolution"] == resolution].sort_values("topk")
        ax.plot(line["topk"], line["gmacs"], color=colors[resolution], marker="o")
    log_axis(ax, "y", macs["gmacs"])
    ax.set_title("compute (fwd)")
    ax.set_ylabel("GMACs")
    legends(fig, [Line2D([], [], color=colors[r], marker="o", label=f"{r}×{r}") for r in resolutions]
            + status_handles(table), style_handles(table["backend"], facts), "resolution", "backend")
    add_title(fig, "BRA: routed regions (topk)", f"kv mode identity; {width_text(main_widths(frame).get(BRA))}; "
                                                 f"{context(frame)}; band: p20-p80{absent}")
    return fig


@plot("kv_modes", "attentions", 70)
def plot_kv_modes(frame: pd.DataFrame, facts: RegistryFacts) -> Figure | None:
    """BRA median latency per kv_downsample_mode: a point per backend (its marker; hollow: noisy) with
    p20-p80 bars, one panel per resolution (rows) and phase (columns); a backend's case without a value
    shows its status where its point would be (a backend without a value anywhere is named in the
    caption). None with fewer than two modes."""
    frame = prepared(frame, facts)
    table = kv_mode_table(frame, facts)
    if table["kv_downsample_mode"].nunique() < 2:
        return None
    phases, resolutions = phase_order(table), sorted(table["resolution"].unique())
    backends = backend_order(table["backend"], facts)
    topk = int(table["topk"].iloc[0])
    bra = at_main_width(frame, main_widths(frame))
    bra = bra[(bra["family"] == BRA) & (bra["topk"] == topk) & bra["kv_downsample_mode"].notna()]
    failed, absent = drawn_nowhere(unmeasured(bra, ["resolution", "phase", "backend", "kv_downsample_mode",
                                                    "variant"]), backends, facts)
    failed["label"] = [mode if mode in set(table["label"]) else tags(variant)
                       for mode, variant in zip(failed["kv_downsample_mode"], failed["variant"])]
    modes = pd.concat([table, failed])[["label", "kv_downsample_mode"]]
    labels = sorted(set(modes["label"]), key=lambda label: _kv_sort_key(modes, label))
    fig, axes = panel_grid(len(resolutions), len(phases), FULL_WIDTH, 1.6, sharey=False)
    step = 0.7 / max(1, len(backends))
    x = np.arange(len(labels))
    color = family_color(BRA, facts)
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
                                           capsize=1.5, color=color, elinewidth=0.8,
                                           **backend_marker(backend, facts, color, noisy))
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
    legends(fig, status_handles(table), marker_handles(table["backend"], facts), "", "backend")
    add_title(fig, "BRA: KV downsampling mode", f"topk={topk}; {width_text(main_widths(frame).get(BRA))}; "
                                                f"{context(frame)}; bars: p20-p80{absent}")
    return fig
