"""The figures of bench.plots, drawn from a small results file that the harness itself produces."""

from __future__ import annotations

import math
import struct

import matplotlib
import numpy as np
import pandas as pd
import pytest

from bench import load_results
from bench.plots import (PLOT_NAMES, gmacs_table, kv_mode_table, main_widths, make_plots, plot_kv_mode_bars,
                         plot_speedup_heatmap, plot_topk_sweep, resolution_table, speedup_table, topk_table)
from small_results import MISMATCH_LATENCY_MS, select as _select

@pytest.fixture()
def frame(small_results):
    return load_results(small_results)


def _png_size(data: bytes) -> tuple[int, int]:
    return struct.unpack(">II", data[16:24])


def test_make_plots_writes_a_png_and_a_pdf_of_every_plot(frame, tmp_path):
    backend, font_size = matplotlib.rcParams["backend"], matplotlib.rcParams["font.size"]
    out = tmp_path / "figures"
    written = make_plots(frame, out)
    assert written == [out / f"{name}{suffix}" for name in PLOT_NAMES for suffix in (".png", ".pdf")]
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written)
    for path in written:
        data = path.read_bytes()
        assert data.startswith(b"\x89PNG" if path.suffix == ".png" else b"%PDF"), path
        if path.suffix == ".png":
            width, height = _png_size(data)
            assert width >= 3.5 * 200 and height >= 2 * 200, (path, width, height)  # >= 200 dpi at print size
    # nothing leaks into other users of matplotlib: neither the backend nor the style
    assert matplotlib.rcParams["backend"] == backend and matplotlib.rcParams["font.size"] == font_size


def test_speedup_matches_a_hand_computation(frame):
    table = speedup_table(frame)
    for family, options in [("full", "{}"), ("bra", '{"topk": 1}')]:
        for resolution, phase in [(7, "fwd"), (14, "fwd+bwd")]:
            fast = frame.loc[_select(frame, family, "sdpa", resolution, phase, options), "speedup_vs_ref"]
            row = table[_select(table, family, "sdpa", resolution, phase, options)]
            if family == "bra" and resolution == 14:  # the injected oom
                continue
            expected = fast.item()  # the speedup over the reference paired in the run's rounds
            assert row["speedup"].item() == pytest.approx(expected, rel=1e-12)
            assert row["label"].item() == f"{expected:.2f}×" and row["cell_status"].item() == "ok"
    references = table[table["backend"] == "torch"]
    ok = references["status"] == "ok"
    assert np.allclose(references.loc[ok, "speedup"], 1.0)


def test_a_mismatch_row_is_never_a_valid_latency_or_speedup(frame):
    row = speedup_table(frame)
    row = row[_select(row, "full", "sdpa", 14, "fwd")]
    assert math.isnan(row["speedup"].item())
    assert row["cell_status"].item() == row["label"].item() == "mismatch"
    for table in (resolution_table(frame), gmacs_table(frame), topk_table(frame), kv_mode_table(frame)):
        assert not (table["latency_ms_median"] == MISMATCH_LATENCY_MS).any()
    by_case = resolution_table(frame).set_index(["variant", "backend", "resolution", "phase"])
    assert ("full", "sdpa", 14, "fwd") not in by_case.index and ("full", "torch", 14, "fwd") in by_case.index
    # and in the drawn heatmap the cell reads 'mismatch', the ok pairs read their speedups
    figure = plot_speedup_heatmap(frame)
    texts = {ax.get_title(): [t.get_text() for t in ax.texts] for ax in figure.axes if ax.get_title()}
    assert "mismatch" in texts["fwd"] and "mismatch" not in texts["fwd+bwd"]
    sdpa_7_fwd = speedup_table(frame)
    assert sdpa_7_fwd.loc[_select(sdpa_7_fwd, "full", "sdpa", 7, "fwd"), "label"].item() in texts["fwd"]


def test_rows_without_numbers_are_labelled_with_their_status(frame):
    table = speedup_table(frame)
    cells = {
        ("bra", 14, "fwd+bwd", '{"topk": 1}'): "oom",          # the row itself ran out of memory
        ("window", 14, "fwd+bwd", "{}"): "ref oom",             # its reference did
        ("bra", 7, "fwd", '{"kv_downsample_mode": "avgpool", "kv_downsample_ratio": 2}'): "error",
    }
    for (family, resolution, phase, options), status in cells.items():
        row = table[_select(table, family, "sdpa", resolution, phase, options)]
        assert math.isnan(row["speedup"].item()) and row["label"].item() == status
    figure = plot_speedup_heatmap(frame)
    drawn = [t.get_text() for ax in figure.axes for t in ax.texts]
    assert {"oom", "ref oom", "error", "mismatch"} <= set(drawn)
    assert not any(label == "nan" or "nan×" in label for label in drawn)


def test_curves_follow_one_width_per_family(frame):
    # a few rows of another width (more than one resolution would tempt a line) stay out of the curves
    other = frame[(frame["family"] == "full") & (frame["resolution"] == 14)].assign(dim=32, heads=4)
    mixed = pd.concat([frame, other], ignore_index=True)
    assert main_widths(mixed) == {f: (16, 2, 1, "float32") for f in ("full", "window", "bra")}
    table = resolution_table(mixed)
    assert set(table["dim"]) == {16} and len(table) == len(resolution_table(frame))
    assert 32 in set(gmacs_table(mixed)["dim"])  # the scatter shows every width


def test_topk_and_kv_mode_data(frame):
    topk = topk_table(frame)
    assert sorted(topk["topk"].unique()) == [1, 4] and sorted(topk["resolution"].unique()) == [7, 14]
    assert len(topk) == 2 * 2 * 2 * 2 - 1  # topk x resolution x backend x phase, less the oom
    kv = kv_mode_table(frame)
    assert set(kv["topk"]) == {4} and set(kv["label"]) == {"identity", "avgpool"}
    assert set(kv.loc[kv["label"] == "avgpool", "resolution"]) == {14}  # the 7² rows are errors ...
    bars = plot_kv_mode_bars(frame)
    assert [t.get_text() for ax in bars.axes for t in ax.texts] == ["error"] * 4  # ... shown as such, 2 x 2 panels
    # a frame without the sweep skips the plot
    assert plot_topk_sweep(frame[frame["options"] != '{"topk": 1}']) is None
    assert plot_kv_mode_bars(frame[~frame["options"].str.contains("avgpool")]) is None


def test_reference_backend_alone_skips_the_heatmap(frame, tmp_path):
    only_reference = frame[(frame["backend"] == frame["reference_backend"]) & (frame["family"] == "full")]
    assert plot_speedup_heatmap(frame[frame["backend"] == frame["reference_backend"]]) is None
    written = make_plots(only_reference, tmp_path)
    assert [p.name for p in written] == [f"{name}{suffix}" for name in PLOT_NAMES[:3] for suffix in (".png", ".pdf")]


def test_empty_or_unmeasured_frames_write_nothing(frame, tmp_path):
    out = tmp_path / "figures"
    assert make_plots(frame.iloc[:0], out) == []
    failed = frame.assign(status="oom")
    failed[["latency_ms_median", "latency_ms_p20", "latency_ms_p80", "peak_mem_mb", "gmacs"]] = np.nan
    assert make_plots(failed, out) == []
    assert make_plots(frame.assign(status="mismatch"), out) == []  # timed, but never valid
    assert not out.exists()
