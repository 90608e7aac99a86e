"""The command line of ``run_bench.py``: one subcommand per module, on argparse subparsers.

``sweep`` (the default: ``run_bench.py --gpu a100`` is ``run_bench.py sweep --gpu a100``), ``list``,
``report``, ``compare``, ``check``, ``export`` and ``check-attention``. A subcommand's module is imported, and its
arguments added, only when it runs or shows its help, so that ``report``, ``compare``, ``check`` and ``export``
never import torch.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, Sequence

from bench.cli.progress import rearm_sigint
from bench.schema.errors import one_line_results_warnings

# name -> (module, one line of help). A module has DESCRIPTION, add_arguments(parser) and run(args, parser, argv);
# compare has DESCRIPTION and main(argv), for it parses its own words (see main)
COMMANDS = {
    "sweep": ("bench.cli.sweep", "sweep a suite's cases into a run's result files (the default command)"),
    "list": ("bench.cli.listing", "the attention families, their backends and where each runs"),
    "report": ("bench.cli.report", "tables, plots and an index from result files"),
    "compare": ("bench.cli.compare", "compare two runs case by case: regressions, fixes, verdicts"),
    "check": ("bench.cli.check", "ratio gates on one run, for CI: 'mybra/triton <= 0.8 * bra/torch'"),
    "export": ("bench.cli.export", "a run's rows as JSON for github-action-benchmark (customSmallerIsBetter)"),
    "check-attention": ("bench.cli.check_attention", "check that a family (a plugin's) keeps the contract"),
}
DEFAULT_COMMAND = "sweep"


class CommandParser(argparse.ArgumentParser):
    """A subcommand's parser that imports its module and adds its arguments on first use (parsing or help)."""

    def __init__(self, *args: Any, module: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.module_name, self.module = module, None

    def command(self) -> Any:
        if self.module is None and self.module_name is not None:
            self.module = importlib.import_module(self.module_name)
            self.description = self.module.DESCRIPTION
            self.module.add_arguments(self)
        return self.module

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:
        self.command()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.command()
        return super().format_help()


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, CommandParser]]:
    """The program's parser, and each command's parser by name."""
    parser = argparse.ArgumentParser(prog="run_bench.py", description="Benchmark the attention zoo.",
                                     epilog=f"Without a command, the arguments are {DEFAULT_COMMAND}'s.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=CommandParser)
    commands = {}
    for name, (module, help_text) in COMMANDS.items():
        # the default command keeps the program's name in its messages: 'run_bench.py --gpu x' is a sweep
        prog = "run_bench.py" if name == DEFAULT_COMMAND else f"run_bench.py {name}"
        commands[name] = subparsers.add_parser(name, module=module, help=help_text, prog=prog)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``run_bench.py``'s command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0] not in COMMANDS and argv[0] not in ("-h", "--help")):
        argv = [DEFAULT_COMMAND, *argv]
    rearm_sigint()
    with one_line_results_warnings("run_bench.py"):
        if argv[0] == "compare":  # compare answers even bad arguments with an exit status of its own, not SystemExit
            return importlib.import_module(COMMANDS["compare"][0]).main(argv[1:])
        parser, commands = build_parser()
        args = parser.parse_args(argv)
        command = commands[vars(args).pop("command")]
        return command.command().run(args, command, argv[1:])
