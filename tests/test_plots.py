"""The figures of bench.report (plots, plots_bra), drawn from a small results file that the harness itself produces."""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd
import pytest

from bench import load_results
from bench.analysis.variants import with_variants
from bench.report.catalog import PLOTS, make_plots, names
from bench.schema.registry_facts import from_snapshot
from bench.report.figure_style import backend_style, family_color
from bench.report.plot_data import (gmacs_table, main_widths, representative_variants, resolution_table, scaling_table,
                                    speedup_table)
from bench.report.plots import plot_latency_vs_resolution, plot_speedup
from bench.report.plots_bra import kv_mode_table, plot_bra_speedup, plot_kv_modes, plot_topk_sweep, topk_table
from bench.suites.snapshot import registry_snapshot
from figure_checks import check_layout, check_legends_match, check_png, colours_of
from small_results import MISMATCH_LATENCY_MS, select as _select

FACTS = from_snapshot(registry_snapshot())  # the registry the small run was measured with
PLOT_NAMES = names(PLOTS, "attentions")


@pytest.fixture()
def frame(small_results):
    return load_results(small_results)


@pytest.mark.slow  # every plot of the catalog, checked pixel by pixel: about 17 s (the fast tier draws them in
# the report tests and checks their data in test_plot_rows)
def test_every_plot_renders_at_paper_size_with_ink_legends_that_match_and_a_clear_layout(frame, tmp_path):
    backend, font_size = matplotlib.rcParams["backend"], matplotlib.rcParams["font.size"]
    out = tmp_path / "figures"
    written = make_plots(frame, out, FACTS, PLOT_NAMES)
    assert written == [out / f"{name}{suffix}" for name in PLOT_NAMES for suffix in (".png", ".pdf")]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    for path in written:
        if path.suffix == ".png":
            check_png(path)
        else:
            assert path.read_bytes().startswith(b"%PDF")
    figures = [PLOTS[name].make(frame, FACTS) for name in PLOT_NAMES]
    assert sum(check_legends_match(figure, FACTS) for figure in figures) > 50
    for figure in figures:
        check_layout(figure)
    # nothing leaks into other users of matplotlib: neither the backend nor the style
    assert matplotlib.rcParams["backend"] == backend and matplotlib.rcParams["font.size"] == font_size


def test_a_family_keeps_its_hue_and_a_backend_its_style_in_every_plot(frame):
    assert len({family_color(f, FACTS) for f in ("full", "window", "deformable", "bra")}) == 4
    assert len({backend_style(b, FACTS) for b in ("torch", "sdpa", "flex", "chunked", "triton", "xformers")}) == 6
    figure = plot_latency_vs_resolution(frame, FACTS)
    by_panel = {ax.get_title(): {tuple(round(c, 3) for c in matplotlib.colors.to_rgb(line.get_color()))
                                 for line in ax.get_lines()} for ax in figure.axes if ax.get_title()}
    for title, colours in by_panel.items():
        family = title.split(",")[0]
        assert colours == {tuple(round(c, 3) for c in family_color(family, FACTS))}, title
    scaling = colours_of(PLOTS["scaling"].make(frame, FACTS), "family")
    assert scaling == {f: {tuple(round(v, 3) for v in family_color(f, FACTS))} for f in scaling}


def test_speedup_matches_a_hand_computation(frame):
    table = speedup_table(frame, FACTS)
    for family, options in [("full", "{}"), ("bra", '{"topk": 1}')]:
        for resolution, phase in [(7, "fwd"), (14, "fwd+bwd")]:
            fast = frame.loc[_select(frame, family, "sdpa", resolution, phase, options)]
            row = table[_select(table, family, "sdpa", resolution, phase, options)]
            if family == "bra" and resolution == 14:  # the injected oom
                continue
            expected = fast["speedup_vs_ref"].item()  # the speedup over the reference paired in the run's rounds
            assert row["speedup"].item() == pytest.approx(expected, rel=1e-12)
            assert row["speedup_low"].item() == fast["speedup_ci_low"].item() <= expected
            assert row["label"].item() == f"{expected:.2f}×" and row["cell_status"].item() == "ok"


def test_a_mismatch_row_is_never_a_valid_latency_or_speedup(frame):
    row = speedup_table(frame, FACTS)
    row = row[_select(row, "full", "sdpa", 14, "fwd")]
    assert math.isnan(row["speedup"].item())
    assert row["cell_status"].item() == row["label"].item() == "mismatch"
    for data in (resolution_table, gmacs_table, topk_table, kv_mode_table):
        table = data(frame, FACTS)
        assert not (table["latency_ms_median"] == MISMATCH_LATENCY_MS).any()
    assert not (scaling_table(frame, FACTS)["value"] == MISMATCH_LATENCY_MS).any()
    by_case = resolution_table(frame, FACTS).set_index(["variant", "backend", "resolution", "phase"])
    assert ("full", "sdpa", 14, "fwd") not in by_case.index and ("full", "torch", 14, "fwd") in by_case.index
    # the speedup plot names it where its point would be
    figure = plot_speedup(frame, FACTS)
    texts = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in figure.axes if ax.get_title()}
    assert "14²: mismatch" in texts["fwd"] and "14²: mismatch" not in texts["fwd+bwd"]


def test_rows_without_numbers_are_named_with_their_status(frame):
    table = speedup_table(frame, FACTS)
    cells = {
        ("bra", 14, "fwd+bwd", '{"topk": 1}'): "oom",          # the row itself ran out of memory
        ("window", 14, "fwd+bwd", "{}"): "ref oom",             # its reference did
        ("bra", 7, "fwd", '{"kv_downsample_mode": "avgpool", "kv_downsample_ratio": 2}'): "error",
    }
    for (family, resolution, phase, options), status in cells.items():
        row = table[_select(table, family, "sdpa", resolution, phase, options)]
        assert math.isnan(row["speedup"].item()) and row["label"].item() == status
    drawn = [t.get_text() for ax in plot_speedup(frame, FACTS).axes for t in ax.texts]
    assert {"14²: oom", "14²: ref oom", "7²: error", "14²: mismatch"} <= set(drawn)
    assert not any("nan" in label for label in drawn)
    assert "14²: oom" in [t.get_text() for ax in plot_bra_speedup(frame, FACTS).axes for t in ax.texts]


def test_noisy_rows_are_drawn_hollow(frame):
    noisy = frame.copy()
    noisy.loc[_select(noisy, "full", "sdpa", 7, "fwd"), "status"] = "noisy"
    assert resolution_table(noisy, FACTS)["noisy"].sum() == 1 and not resolution_table(frame, FACTS)["noisy"].any()

    def hollow(figure) -> int:
        return sum(1 for ax in figure.axes for line in ax.get_lines()
                   if line.get_marker() not in ("None", "") and line.get_markerfacecolor() in ("white", "w", (1, 1, 1, 1)))
    assert hollow(plot_latency_vs_resolution(noisy, FACTS)) == 1
    assert hollow(plot_latency_vs_resolution(frame, FACTS)) == 0
    assert hollow(plot_speedup(noisy, FACTS)) == 1
    legend = [h.get_label() for lg in plot_latency_vs_resolution(noisy, FACTS).legends for h in lg.legend_handles]
    assert any(label.startswith("noisy") for label in legend)


def test_curves_follow_one_width_per_family(frame):
    # a few rows of another width (more than one resolution would tempt a line) stay out of the curves
    other = frame[(frame["family"] == "full") & (frame["resolution"] == 14)].assign(dim=32, heads=4)
    mixed = pd.concat([frame, other], ignore_index=True)
    assert main_widths(mixed) == {f: (16, 2, 1, "float32") for f in ("full", "window", "bra")}
    table = resolution_table(mixed, FACTS)
    assert set(table["dim"]) == {16} and len(table) == len(resolution_table(frame, FACTS))
    assert 32 in set(gmacs_table(mixed, FACTS)["dim"])  # compute vs latency shows every width


def test_a_noisy_main_width_stays_the_main_width(frame):
    """Noisy rows are drawn: a family whose curves are all noisy keeps them over a width with fewer, ok rows."""
    noisy = frame.assign(status=frame["status"].where(frame["family"] != "window", "noisy"))
    window = noisy[noisy["family"] == "window"]
    other = window[window["resolution"] == window["resolution"].min()].assign(dim=32, heads=4, status="ok")
    assert main_widths(pd.concat([noisy, other], ignore_index=True))["window"] == (16, 2, 1, "float32")


def test_scaling_takes_the_best_backend_of_each_point(frame):
    """Among ok and noisy rows alike (a noisy best is drawn hollow: test_plot_rows.py)."""
    table = scaling_table(frame, FACTS)
    latency = table[table["metric"] == "latency"].set_index(["family", "phase", "resolution"])
    rows = with_variants(frame, FACTS.defaults)
    rows = rows[rows["status"].isin(["ok", "noisy"])
                & (rows["variant"] == rows["family"].map(representative_variants(frame, FACTS)))]
    for (family, phase, resolution), best in latency.iterrows():
        candidates = rows[(rows["family"] == family) & (rows["phase"] == phase) & (rows["resolution"] == resolution)]
        assert best["value"] == candidates["latency_ms_median"].min()
        assert best["backend"] == candidates.loc[candidates["latency_ms_median"].idxmin(), "backend"]
    assert set(table["metric"]) == {"latency", "memory"}


def test_topk_and_kv_mode_data(frame):
    topk = topk_table(frame, FACTS)
    assert sorted(topk["topk"].unique()) == [1, 4] and sorted(topk["resolution"].unique()) == [7, 14]
    assert len(topk) == 2 * 2 * 2 * 2 - 1  # topk x resolution x backend x phase, less the oom
    kv = kv_mode_table(frame, FACTS)
    assert set(kv["topk"]) == {4} and set(kv["label"]) == {"identity", "avgpool"}
    assert set(kv.loc[kv["label"] == "avgpool", "resolution"]) == {14}  # the 7² rows are errors ...
    points = plot_kv_modes(frame, FACTS)
    assert [t.get_text() for ax in points.axes for t in ax.texts] == ["error"] * 4  # ... named, 2 x 2 panels
    # a frame without the sweep skips the plot
    assert plot_topk_sweep(frame[frame["options"] != '{"topk": 1}'], FACTS) is None
    assert plot_kv_modes(frame[~frame["options"].str.contains("avgpool")], FACTS) is None


def test_reference_backend_alone_skips_the_speedup_plots(frame, tmp_path):
    only_reference = frame[frame["backend"] == frame["reference_backend"]]
    assert plot_speedup(only_reference, FACTS) is None and plot_bra_speedup(only_reference, FACTS) is None
    written = make_plots(only_reference[only_reference["family"] == "full"], tmp_path, FACTS, PLOT_NAMES)
    assert [p.stem for p in written[::2]] == ["scaling", "latency_vs_resolution", "memory_vs_resolution",
                                              "gmacs_vs_latency"]


def test_empty_or_unmeasured_frames_write_nothing(frame, tmp_path):
    out = tmp_path / "figures"
    assert make_plots(frame.iloc[:0], out, FACTS, PLOT_NAMES) == []
    failed = frame.assign(status="oom")
    failed[["latency_ms_median", "latency_ms_p20", "latency_ms_p80", "peak_mem_mb", "gmacs"]] = np.nan
    assert make_plots(failed, out, FACTS, PLOT_NAMES) == []
    assert make_plots(frame.assign(status="mismatch"), out, FACTS, PLOT_NAMES) == []  # timed, but never valid
    assert not out.exists()
