"""The protocol every suite implements (``Suite``), and what every row of one run shares (``RunContext``)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Protocol, Sequence

import pandas as pd

import attentions

from bench.core.measure import TimingPolicy
from bench.core.profiles import GpuProfile
from bench.core.settings import Numerics
from bench.report.catalog import PLOTS, TABLES, names
from bench.schema.columns import EAGER

SEED = 0
DEFAULT_COMPILE_LIMIT_S = 600.0


@dataclass
class RunContext:
    """What every row of one run shares."""

    run_id: str
    profile: GpuProfile
    device_name: str
    timing: TimingPolicy = field(default_factory=TimingPolicy)
    seed: int = SEED
    numerics: Numerics = field(default_factory=Numerics)
    # modules that registered families or backends in the sweep's process: every process timing cases imports them
    extension_modules: tuple[str, ...] = field(default_factory=attentions.extension_modules)
    compile_limit_s: float | None = DEFAULT_COMPILE_LIMIT_S  # --compile-limit: the longest one case may compile
    deadline: float | None = None  # time.time() at which --time-budget ends (compiles stop there too)
    _mac_cache: dict[tuple, tuple] = field(default_factory=dict)  # MAC counts by shape: see count_case_macs
    # on_progress(cases, fraction): how much of a group's work is done (see group_progress); called in the process
    # that runs the group, so None where groups run elsewhere (Ray)
    on_progress: Callable[[Sequence[Any], float], None] | None = field(default=None, compare=False, repr=False)

    def compile_time_left(self) -> float | None:
        """How long the next compile may take: the per-case limit, or less where the time budget ends sooner."""
        limits = [limit for limit in (self.compile_limit_s, None if self.deadline is None
                                      else self.deadline - time.time()) if limit is not None]
        return min(limits, default=None)


class PlanError(ValueError):
    """A sweep request that a suite cannot plan: names the flag or value and what is allowed (the CLI exits 2
    with it, before anything runs)."""


class Suite(Protocol):
    """A kind of benchmark: how its cases are planned from the sweep's flags, grouped for paired timing, run
    into rows and summarised, and which tables and plots report it. Execution and the command line know a suite
    only through this protocol; the report, which reads files alone, finds the tables and plots by the suite's
    ``name``, which its result files carry (``SuiteRecord`` gives a suite those registered there)."""

    name: str  # the --suite value, and the schema's suite of the rows it writes
    flags: frozenset[str]  # the suite-specific sweep flags (argparse dests) it takes
    uses_presets: bool  # whether --preset applies (the run id and metadata name the preset)
    pairing: str  # how a group's cases are timed together, for the run's metadata

    @property
    def columns(self) -> list[str]:
        """Its rows' columns, in file order."""

    def plan(self, request: argparse.Namespace, device: str, profile: GpuProfile) -> list[Any]:
        """The cases the sweep's flags ask for, in the order they run; PlanError for a bad request."""

    def groups(self, cases: Sequence[Any]) -> list[list[Any]]:
        """The cases timed together in paired rounds, in the order of their first case."""

    def run_group(self, cases: Sequence[Any], ctx: RunContext, companions: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """One row per case of ``cases``, whatever happens to each (``companions``: references timed again only
        for the pairing)."""

    def base_row(self, case: Any, ctx: RunContext) -> dict[str, Any]:
        """The columns that identify a case's row, known before it runs (an error row starts from them)."""

    def reference_case(self, case: Any) -> Any:
        """The case its speedup is measured against."""

    def references(self, case: Any, members: Sequence[Any]) -> list[Any]:
        """Every case its row is measured against, among ``members`` (its group): the reference case and the
        compiled references (the reference case in each compile mode of the group)."""

    def summary(self, frame: pd.DataFrame) -> str:
        """The text table printed at the end of a sweep."""

    @property
    def tables(self) -> tuple[str, ...]:
        """Its report's tables, by name, in report order (``bench.report.catalog``)."""

    @property
    def plots(self) -> tuple[str, ...]:
        """Its report's plots, by name, in report order."""


GroupRunner = Callable[[Sequence[Any], RunContext, Sequence[Any]], list[dict[str, Any]]]


@dataclass
class SuiteRecord:
    """A suite as a record of its functions (the protocol's members as fields), as a ``Backend`` is of its
    ``attend``; its ``tables`` and ``plots`` are those the report catalog registers under its ``name``."""

    name: str
    flags: frozenset[str]
    uses_presets: bool
    pairing: str
    columns: list[str]
    plan: Callable[[argparse.Namespace, str, GpuProfile], list[Any]]
    groups: Callable[[Sequence[Any]], list[list[Any]]]
    run_group: GroupRunner
    base_row: Callable[[Any, RunContext], dict[str, Any]]
    reference_case: Callable[[Any], Any]
    summary: Callable[[pd.DataFrame], str]

    def references(self, case: Any, members: Sequence[Any]) -> list[Any]:
        """The reference case, then that case in each compile mode among ``members``."""
        eager = self.reference_case(case)
        modes = dict.fromkeys(member.compile for member in members if member.compile != EAGER)
        return [eager, *(replace(eager, compile=mode) for mode in modes)]

    @property
    def tables(self) -> tuple[str, ...]:
        return names(TABLES, self.name)

    @property
    def plots(self) -> tuple[str, ...]:
        return names(PLOTS, self.name)
