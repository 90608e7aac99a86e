"""``run_bench.py check-attention MODULE[:NAME] ...``: the conformance kit (``bench.suites.conformance``) on the CPU,
a pass/fail table per family; exit 1 if a rule is broken, 2 if the module or family cannot be found or loaded."""

from __future__ import annotations

import argparse

from attentions import AttentionConfigError

from bench.cli.plugins import PluginFailure
from bench.suites.conformance import check_family, families_of

DESCRIPTION = ("Check that an attention family keeps the contract every sweep relies on (NHWC shapes and dtypes, "
               "seeded determinism, gradients, each backend against float64, macs() against fvcore, bad options "
               "and inputs refused), on the CPU. MODULE is imported as a plugin; NAME picks one of its families.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("specs", nargs="+", metavar="MODULE[:NAME]",
                        help="a module that registers families (a plugin, or 'attentions' for the built-in ones), "
                             "and optionally one family of it")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    try:
        families = [family for spec in args.specs for family in families_of(spec)]
    except AttentionConfigError as exc:  # a PluginError among them: one line, exit 2
        raise PluginFailure(exc) from None
    results = [check_family(family) for family in families]
    print("\n\n".join(result.table() for result in results))
    return 0 if all(result.passed for result in results) else 1
