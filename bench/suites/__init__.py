"""What a sweep measures: cases, presets and the suites behind one protocol (``bench.suites.base.Suite``).

``SUITES`` maps each ``--suite`` name to its suite; a suite of one's own joins with ``register_suite``.
"""

from __future__ import annotations

from typing import Any, Sequence

from bench.suites.attention import ATTENTION_SUITE
from bench.suites.base import Suite
from bench.suites.model import MODEL_SUITE

SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> None:
    """Make ``suite`` available to sweeps (``--suite NAME``); ValueError for a name already taken."""
    if suite.name in SUITES:
        raise ValueError(f"a suite named {suite.name!r} is already registered")
    SUITES[suite.name] = suite


def suite_of(cases: Sequence[Any]) -> Suite:
    """The suite whose cases these are (every case type names its suite); ValueError for none or a mix."""
    names = {type(case).suite for case in cases}
    if len(names) != 1:
        raise ValueError(f"cases of one suite are needed; got {len(cases)} of {sorted(names) or 'no'} suite")
    return SUITES[names.pop()]


register_suite(ATTENTION_SUITE)
register_suite(MODEL_SUITE)
