"""How the figures show noise and failures, checked on their artists rather than by eye: every measured row
is a point (noisy timings hollow, the best backend of a case chosen among ok and noisy rows), every case
without a value is named where its point would be, an interval cut by an axis ends in an arrow, every log
axis has ticks, and a small run keeps its layout.

The rows are built by hand (``small_results.noise_frame``): nothing is timed, so these tests are fast.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba

from bench.report.catalog import PLOTS, names
from bench.schema.registry_facts import frozen_facts
from bench.report.figure_axes import CLIPPED, UNMEASURED
from bench.report.figure_style import backend_style
from bench.report.plot_data import DRAWN_STATUSES, representative_rows, speedup_table
from figure_checks import check_layout, drawn_figure, labelled_ticks
from small_results import noise_frame

FACTS = frozen_facts()  # the rows are made by hand: any registry facts that know their families and backends
PLOT_NAMES = names(PLOTS, "attentions")

TIMING = {"latency_vs_resolution": "latency_ms_median", "memory_vs_resolution": "peak_mem_mb"}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return noise_frame()


@pytest.fixture(scope="module")
def figures(frame) -> dict:
    """Every attention figure of the frame, drawn (it has no kv-mode sweep: no kv_modes figure)."""
    out = {name: PLOTS[name].make(frame, FACTS) for name in PLOT_NAMES}
    assert [name for name, figure in out.items() if figure is None] == ["kv_modes"]
    return {name: drawn_figure(figure) for name, figure in out.items() if figure is not None}


def small_runs(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Runs of one family at one resolution: full attention (both phases), and BRA's forward with one fast
    backend (noisy), two unsupported ones and a long device name: a long caption over one row of dots,
    a column wide."""
    full = frame[(frame["family"] == "full") & (frame["resolution"] == 14)]
    bra = frame[(frame["family"] == "bra") & (frame["resolution"] == 14) & (frame["phase"] == "fwd")
                & (frame["options"] == "{}")].assign(device_name="NVIDIA GeForce RTX 4090 Laptop GPU",
                                                     gpu_profile="rtx4090-laptop")
    unsupported = bra["backend"].isin(["flex", "chunked"])
    bra.loc[unsupported, "status"] = "unsupported"
    bra.loc[unsupported, ["latency_ms_median", "latency_ms_p20", "latency_ms_p80", "peak_mem_mb", "speedup_vs_ref",
                          "speedup_ci_low", "speedup_ci_high"]] = np.nan
    bra.loc[bra["backend"] == "sdpa", "status"] = "noisy"
    return {"full": full, "bra": bra}


def panel(figure, title: str):
    return next(ax for ax in figure.axes if ax.get_title() == title)


def points(ax) -> list[tuple[float, float, bool]]:
    """(x, y, hollow) of every marker drawn for a backend (gid 'backend:<name>'), to 9 decimals, sorted."""
    out = []
    for line in ax.get_lines():
        if (line.get_gid() or "").startswith("backend:") and line.get_marker() not in ("None", "", None):
            hollow = to_rgba(line.get_markerfacecolor()) == (1.0, 1.0, 1.0, 1.0)
            out += [(round(float(x), 9), round(float(y), 9), hollow)
                    for x, y in zip(line.get_xdata(), line.get_ydata())]
    return sorted(out)


def names(ax) -> list[tuple[float, str]]:
    """(x, text on one line) of the texts naming cases without a value."""
    return [(text.get_position()[0], " ".join(text.get_text().split())) for text in ax.texts
            if text.get_gid() == UNMEASURED]


def arrows(ax) -> list[tuple[float, float]]:
    """Where the arrows marking cut intervals point (an axes fraction on the cut axis)."""
    return sorted(tuple(map(float, text.xy)) for text in ax.texts if text.get_gid() == CLIPPED)


def measured(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["status"].isin(DRAWN_STATUSES)]


@pytest.mark.parametrize("name", sorted(TIMING))
def test_curves_draw_every_measured_row_and_noisy_timings_hollow(frame, figures, name):
    """Each family's panel has a point per ok or noisy row, hollow exactly where a noisy row's latency is
    drawn (a memory value is no timing: filled)."""
    for (phase, family), rows in measured(representative_rows(frame, FACTS)).groupby(["phase", "family"]):
        expected = sorted((float(r), round(v, 9), status == "noisy" and name == "latency_vs_resolution")
                          for r, v, status in zip(rows["resolution"], rows[TIMING[name]], rows["status"]))
        assert points(panel(figures[name], f"{family}, {phase}")) == expected, (family, phase)


def test_the_best_backend_is_chosen_among_ok_and_noisy_rows(frame, figures):
    """scaling: a point per family, phase and resolution with a measured row, its value the least among ok and
    noisy rows; hollow when that row is noisy (full at 28², fwd: every row noisy; at 14²: the fastest is)."""
    rows = measured(representative_rows(frame, FACTS))
    for metric, column in (("latency", "latency_ms_median"), ("memory", "peak_mem_mb")):
        for phase, cases in rows.groupby("phase"):
            best = cases.loc[cases.groupby(["family", "resolution"])[column].idxmin()]
            expected = sorted((float(r), round(v, 9), metric == "latency" and status == "noisy")
                              for r, v, status in zip(best["resolution"], best[column], best["status"]))
            assert points(panel(figures["scaling"], f"{metric}, {phase}")) == expected, (metric, phase)
    full_fwd = points(panel(figures["scaling"], "latency, fwd"))
    assert (14.0, 1.0, True) in full_fwd and (28.0, 5.6, True) in full_fwd


def test_compute_vs_latency_shows_the_fastest_row_even_when_noisy(frame, figures):
    """gmacs_vs_latency: a point per variant, resolution and phase with a measured row; full at 14², fwd is
    sdpa's noisy row, 2× faster than the ok reference: hollow, with sdpa's marker."""
    ax = panel(figures["gmacs_vs_latency"], "fwd")
    rows = measured(frame[frame["phase"] == "fwd"])
    assert len(points(ax)) == len(rows.groupby(["family", "options", "resolution"]))
    sdpa = [line for line in ax.get_lines() if line.get_gid() == "backend:sdpa"
            and to_rgba(line.get_markerfacecolor()) == (1.0, 1.0, 1.0, 1.0)]
    assert sorted((round(x, 9), round(y, 9)) for line in sdpa for x, y in zip(line.get_xdata(), line.get_ydata())) == [
        (0.05, 1.0), (0.2, 5.6)]  # at 28² every row is noisy, sdpa the fastest
    assert {line.get_marker() for line in sdpa} == {backend_style("sdpa", FACTS)[1]}


def test_the_speedup_plot_draws_every_valid_pair_hollow_where_noisy(frame, figures):
    table = speedup_table(frame, FACTS)
    pairs = table[table["speedup"].notna() & (table["backend"] != table["reference_backend"])]
    for phase, rows in pairs.groupby("phase"):
        drawn = [(x, hollow) for x, _, hollow in points(panel(figures["speedup"], phase))]
        assert sorted(drawn) == sorted((round(s, 9), status == "noisy")
                                       for s, status in zip(rows["speedup"], rows["status"])), phase


def test_cases_without_a_value_are_named_where_their_point_would_be(frame, figures):
    """Each backend's case without a value, at its resolution in its family's panel (curves), at its topk
    (topk sweep), in its row (speedup); a case where no backend has a value, at its resolution (scaling)
    or GMACs (compute vs latency)."""
    rows = representative_rows(frame, FACTS)
    failed = rows[~rows["status"].isin(DRAWN_STATUSES)]
    assert set(failed["status"]) == {"unsupported", "oom", "error"}
    for name in TIMING:
        for _, row in failed.iterrows():
            shown = names(panel(figures[name], f"{row['family']}, {row['phase']}"))
            assert any(x == row["resolution"] and f"{row['status']}:" in text and row["backend"] in text
                       for x, text in shown), (name, row["family"], row["backend"], row["resolution"], shown)
    for title in ("latency, fwd+bwd", "memory, fwd+bwd"):  # bra's default at 28², fwd+bwd: no backend ran it
        assert names(panel(figures["scaling"], title)) == [(28, "unsupported/oom/error: bra")]
    assert names(panel(figures["gmacs_vs_latency"], "fwd+bwd")) == [(pytest.approx(0.4), "unsupported/oom/error: bra")]
    sweep = frame[(frame["family"] == "bra") & ~frame["status"].isin(DRAWN_STATUSES)]  # all kv mode identity
    for _, row in sweep.iterrows():
        shown = names(panel(figures["topk_sweep"], f"latency, {row['phase']}"))
        assert any(x == row["topk"] and f"{row['status']}:" in text and f"{row['backend']} " in text
                   and f"{row['resolution']}²" in text for x, text in shown), (row["backend"], row["topk"], shown)
    speedup = {title: [text for _, text in names(panel(figures["speedup"], title))] for title in ("fwd", "fwd+bwd")}
    assert speedup["fwd"] == ["14²: mismatch"]
    # one line per label and row: the resolutions that share it named together
    assert sorted(speedup["fwd+bwd"]) == sorted(["14², 28²: unsupported"] * 3 + ["28²: oom", "28²: error"])


@pytest.mark.parametrize("name", ["latency_vs_resolution", "scaling", "topk_sweep", "gmacs_vs_latency"])
def test_names_stay_inside_their_panel_apart_from_each_other_and_below_the_data(figures, name):
    for ax in figures[name].axes:
        texts = [text.get_window_extent() for text in ax.texts if text.get_gid() == UNMEASURED]
        box = ax.get_window_extent()
        assert all(box.x0 - 1 <= t.x0 and t.x1 <= box.x1 + 1 and box.y0 <= t.y0 for t in texts), ax.get_title()
        assert not any(a.overlaps(b) for i, a in enumerate(texts) for b in texts[i + 1:]), ax.get_title()
        data = ax.transData.transform([(x, y) for x, y, _ in points(ax)] or np.empty((0, 2)))
        assert not texts or not len(data) or data[:, 1].min() > max(t.y1 for t in texts), ax.get_title()


def test_an_interval_cut_by_its_axis_ends_in_an_arrow(figures):
    """full sdpa at 28², fwd+bwd: its speedup's interval (0.02× to 30× the point) runs off both ends of the
    axis; full torch at 28², fwd+bwd: its p80 (40× the median) off the top of the latency axis."""
    fwd, both = panel(figures["speedup"], "fwd"), panel(figures["speedup"], "fwd+bwd")
    assert arrows(fwd) == []
    row = 0.25  # the first entry (full · sdpa), 28² (the second of two resolutions)
    assert arrows(both) == [(0.0, row), (1.0, row)]
    low, high = sorted(both.get_xlim())
    segments = [s for container in both.containers for bars in container.lines[2] for s in bars.get_segments()]
    cut = [s for s in segments if min(s[:, 0]) < low or max(s[:, 0]) > high]
    assert len(cut) == 1 and cut[0][0, 1] == row
    latency = figures["latency_vs_resolution"]
    assert arrows(panel(latency, "full, fwd+bwd")) == [(28.0, 1.0)]
    assert all(arrows(ax) == [] for ax in latency.axes if ax.get_title() != "full, fwd+bwd")


def test_every_log_axis_has_two_labelled_ticks(frame, figures):
    small = [PLOTS[name].make(rows, FACTS) for rows in small_runs(frame).values() for name in PLOT_NAMES]
    for figure in list(figures.values()) + [drawn_figure(f) for f in small if f is not None]:
        for ax in figure.axes:
            for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
                if scale == "log":
                    assert len(labelled_ticks(axis)) >= 2, (figure.get_suptitle(), ax.get_title(), labelled_ticks(axis))


@pytest.mark.parametrize("run", ["full", "bra"])
def test_a_small_run_keeps_its_layout(frame, run):
    """One family at one resolution: title, legends, tick and axis labels apart and inside the figure."""
    rows = small_runs(frame)[run]
    drawn = {name: figure for name in PLOT_NAMES if (figure := PLOTS[name].make(rows, FACTS)) is not None}
    assert sorted(drawn) == (["bra_speedup", "gmacs_vs_latency", "speedup"] if run == "bra"
                             else ["gmacs_vs_latency", "speedup"])
    for figure in drawn.values():
        check_layout(figure)


@pytest.mark.parametrize("name", ["scaling", "latency_vs_resolution", "topk_sweep", "speedup"])
def test_figures_with_names_and_arrows_keep_their_layout(figures, name):
    check_layout(figures[name])
