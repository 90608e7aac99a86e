"""Which tables and plots a report has: each registered once, by a decorator on its function, with its name
(of its files), the suite whose rows it reads ('attentions' or 'models'), and its position in the report.

A table's function is ``(frame, facts) -> Table | None`` and a plot's ``(frame, facts) -> Figure | None``
(None: the rows hold nothing for it); ``facts`` are the runs' registry facts (``bench.schema.registry_facts``). The
content registers itself when ``bench.report`` is imported (its ``__init__`` imports every content module),
so the catalog is whole wherever it is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, TypeVar

import pandas as pd
from matplotlib.figure import Figure

from bench.schema.registry_facts import RegistryFacts
from bench.report.figure_axes import styled
from bench.report.figure_style import save_figure
from bench.report.plot_data import DRAWN_STATUSES
from bench.report.tabular import Table
from bench.schema.columns import SUITES

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A table or plot of the report: ``make`` draws it from one suite's rows, in the report at ``position``
    (ascending; tables and plots each in their own order)."""

    name: str
    suite: str
    position: int
    make: Callable[[pd.DataFrame, RegistryFacts], T | None]


TABLES: dict[str, Entry[Table]] = {}
PLOTS: dict[str, Entry[Figure]] = {}


def _register(catalog: dict[str, Entry], name: str, suite: str, position: int, make: Callable) -> None:
    if name in catalog:
        raise ValueError(f"a table or plot named {name!r} is already registered")
    if suite not in SUITES:
        raise ValueError(f"{name}: unknown suite {suite!r}; valid: {', '.join(SUITES)}")
    catalog[name] = Entry(name, suite, position, make)


def table(name: str, suite: str, position: int) -> Callable:
    """Register the decorated table function as ``name`` of ``suite``, at ``position`` among the tables."""
    def register(make: Callable[[pd.DataFrame, RegistryFacts], Table | None]) -> Callable:
        _register(TABLES, name, suite, position, make)
        return make
    return register


def plot(name: str, suite: str, position: int) -> Callable:
    """Register the decorated plot function, drawn in the figures' style and finished (``styled``), as
    ``name`` of ``suite`` at ``position`` among the plots; the decorated name is the styled function."""
    def register(draw: Callable[[pd.DataFrame, RegistryFacts], Figure | None]) -> Callable:
        make = styled(draw)
        _register(PLOTS, name, suite, position, make)
        return make
    return register


def names(catalog: dict[str, Entry], suite: str) -> tuple[str, ...]:
    """The names of ``suite``'s tables or plots (``catalog``: TABLES or PLOTS), in report order."""
    entries = sorted((e for e in catalog.values() if e.suite == suite), key=lambda e: e.position)
    return tuple(e.name for e in entries)


def suites_in_order(catalog: dict[str, Entry]) -> list[str]:
    """The suites of ``catalog``'s entries, in the order of their first entry in the report."""
    return list(dict.fromkeys(e.suite for e in sorted(catalog.values(), key=lambda e: e.position)))


def make_tables(frame: pd.DataFrame, facts: RegistryFacts, suite: str) -> list[Table]:
    """``suite``'s tables that ``frame`` (that suite's rows) has data for, in report order."""
    tables = [TABLES[name].make(frame, facts) for name in names(TABLES, suite)]
    return [t for t in tables if t is not None]


def make_plots(frame: pd.DataFrame, out_dir: str | Path, facts: RegistryFacts, plot_names: tuple[str, ...]
               ) -> list[Path]:
    """Write ``<name>.png`` and ``<name>.pdf`` into ``out_dir`` for every plot of ``plot_names`` (those of the
    frame's suite: ``names(PLOTS, suite)``) that has data; return the written paths (PNG, PDF per plot).

    A frame without a drawn row writes nothing (and does not create ``out_dir``).
    """
    if frame.empty or not frame["status"].isin(DRAWN_STATUSES).any():
        return []
    written: list[Path] = []
    for name in plot_names:
        figure = PLOTS[name].make(frame, facts)
        if figure is not None:
            written += save_figure(figure, Path(out_dir), name)
    return written
