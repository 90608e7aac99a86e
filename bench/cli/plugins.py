"""``--plugin MODULE``: the plugins a command loads before it plans or lists anything (``attentions.plugins``).

A command that builds modules (sweep, list, check-attention) loads, in this order, the installed distributions'
entry points, the ``--plugin`` modules and those of ``SPARSE_ATTENTION_PLUGINS``. A plugin that breaks the
contract ends the command with exit status 2 and one line naming it and the rule.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable

from attentions import AttentionConfigError
from attentions.plugins import ENVIRONMENT_VARIABLE, PluginError, load_plugins


class PluginFailure(SystemExit):
    """Exit status 2 after the one line that names the plugin (or the family) and the rule it broke."""

    def __init__(self, error: AttentionConfigError) -> None:
        print(f"run_bench.py: error: {error}", file=sys.stderr)
        super().__init__(2)


def add_plugin_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help=f"import MODULE (or MODULE:FUNCTION, then call it), which registers attention families "
                             f"or backends (repeatable; also ${ENVIRONMENT_VARIABLE}, comma-separated, and the "
                             f"entry points of installed plugins): docs/plugins.md")


def load_command_plugins(modules: Iterable[str]) -> None:
    """Load the plugins of a command (the entry points, then ``modules``, then the environment's); a broken one
    raises ``PluginFailure`` (exit 2, one line)."""
    try:
        load_plugins(modules)
    except PluginError as error:
        raise PluginFailure(error) from None
