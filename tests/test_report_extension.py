"""A table and a plot of one's own join a report through the catalog's decorators, without editing the project."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from matplotlib.figure import Figure

from bench.report import catalog
from bench.report.build import build_report
from bench.report.tabular import Column, Table
from bench.schema.files import load_results

RUN = Path(__file__).resolve().parents[1] / "results" / "cpu" / "20261205T091110Z-bra56-topk4.csv"  # a small real run


@pytest.fixture
def own_report_items():
    """Register a table and a plot as a user's module would, and take them out again afterwards."""

    @catalog.table("slowest", "attentions", 1000)
    def slowest(frame: pd.DataFrame, facts) -> Table | None:
        measured = frame[frame["status"] == "ok"].nlargest(3, "latency_ms_median")
        result = Table("slowest", "The three slowest cases", [Column("Family"), Column("Backend"),
                       Column("Latency ms", lambda v: f"{v:.3g}", "min")])
        for _, row in measured.iterrows():
            result.rows.append([row["family"], row["backend"], row["latency_ms_median"]])
        return result

    @catalog.plot("latency_histogram", "attentions", 1000)
    def latency_histogram(frame: pd.DataFrame, facts) -> Figure:
        figure = Figure(figsize=(3, 2))
        figure.subplots().hist(frame["latency_ms_median"].dropna(), bins=5)
        return figure

    yield
    del catalog.TABLES["slowest"], catalog.PLOTS["latency_histogram"]


def test_own_table_and_plot_are_in_the_report(own_report_items, tmp_path):
    readme = build_report(RUN, tmp_path / "out").read_text()
    assert "### slowest" in readme and "(plots/latency_histogram.png)" in readme
    written = pd.read_csv(tmp_path / "out" / "tables" / "slowest.csv")
    frame = load_results(RUN)
    slowest = frame[frame["status"] == "ok"].nlargest(3, "latency_ms_median")
    assert list(written["Latency ms"]) == pytest.approx(list(slowest["latency_ms_median"]))
    assert (tmp_path / "out" / "plots" / "latency_histogram.png").stat().st_size > 0


def test_a_name_is_registered_once(own_report_items):
    with pytest.raises(ValueError, match="'main' is already registered"):
        catalog.table("main", "attentions", 1)(lambda frame, facts: None)
    with pytest.raises(ValueError, match="unknown suite 'layers'"):
        catalog.plot("mine", "layers", 1)(lambda frame, facts: None)


def test_blocks_that_do_not_go_with_the_rows_are_named():
    table = Table("mine", "Mine", [Column("A"), Column("B", lambda v: f"{v:g}", "min")],
                  rows=[["x", 2.0], ["y", 1.0]], blocks=[0])
    with pytest.raises(ValueError, match="table 'mine': 1 blocks for 2 rows"):
        table.to_markdown()
    table.blocks = []  # none: one block, whose best value is in bold
    assert "| y | **1** |" in table.to_markdown()
