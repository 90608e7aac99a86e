"""``run_bench.py compare BASE NEW``: two runs case by case (``bench.analysis.compare``)."""

from __future__ import annotations

from typing import Sequence

from bench.analysis.compare import main_compare

DESCRIPTION = "Compare two runs case by case: regressions, fixes and verdicts."


def main(argv: Sequence[str]) -> int:
    return main_compare(argv)
