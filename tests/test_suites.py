"""The suites behind one protocol: every registered suite implements all of it, and the harness finds a suite's
columns, tables and plots through it alone."""

from __future__ import annotations

import pytest

from bench import cli
from bench.report.catalog import PLOTS, TABLES
from bench.schema.columns import SUITES as SCHEMA_SUITES
from bench.suites import SUITES, register_suite, suite_of
from bench.suites.base import Suite
from bench.suites.cases import Case, ModelCase

PROTOCOL = sorted(name for name in dir(Suite) if not name.startswith("_")) + sorted(Suite.__annotations__)


@pytest.mark.parametrize("name", list(SUITES))
def test_every_suite_implements_the_whole_protocol(name):
    suite = SUITES[name]
    missing = [member for member in PROTOCOL if not hasattr(suite, member)]
    assert not missing, f"suite {name!r} lacks {missing}"
    assert suite.name == name and list(suite.columns) == SCHEMA_SUITES[name]
    assert suite.tables and set(suite.tables) == {t for t, entry in TABLES.items() if entry.suite == name}
    assert suite.plots and set(suite.plots) == {p for p, entry in PLOTS.items() if entry.suite == name}


def test_the_listing_names_each_suites_report(capsys):
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for suite in SUITES.values():
        assert f"  {suite.name}: tables {', '.join(suite.tables)}; plots {', '.join(suite.plots)}" in out


def test_cases_name_their_suite_and_a_mix_is_refused():
    attention = Case("full", "torch", (), 1, 7, 16, 2, "float32", "cpu", "fwd")
    model = ModelCase("biformer_tiny", "bra", "torch", 1, 32, "float32", "cpu", "fwd")
    assert suite_of([attention]) is SUITES["attentions"] and suite_of([model]) is SUITES["models"]
    for cases in ([], [attention, model]):
        with pytest.raises(ValueError, match="cases of one suite"):
            suite_of(cases)


def test_a_suite_name_is_registered_once():
    with pytest.raises(ValueError, match="'attentions' is already registered"):
        register_suite(SUITES["attentions"])
