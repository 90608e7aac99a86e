"""Argument types and small helpers every subcommand shares (no torch: ``report`` and ``compare`` use them)."""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Callable


def at_least(least: int, most: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``least`` (and at most ``most``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < least:
            raise argparse.ArgumentTypeError(f"{value} must be >= {least}")
        if most is not None and value > most:
            raise argparse.ArgumentTypeError(f"{value} must be <= {most}")
        return value

    return parse


positive_int = at_least(1)


def odd_int(text: str) -> int:
    """An argparse type: an odd integer >= 1 (a window with its query at the centre)."""
    value = positive_int(text)
    if value % 2 == 0:
        raise argparse.ArgumentTypeError(f"{value} is even: kernel sizes are odd (the query at the centre)")
    return value


def seconds(zero_allowed: bool) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds, > 0 (or >= 0 when ``zero_allowed``)."""
    least = "zero or more" if zero_allowed else "more than zero"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_allowed):
            raise argparse.ArgumentTypeError(f"{text} must be a finite number of seconds, {least}")
        return value

    return parse


RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

# The suffixes of a run's own files (and their temporary copies): a run id ending in one would be read as a file.
RUN_FILE_SUFFIXES = (".csv", ".json", ".lock", ".tmp")


def is_run_id(text: str) -> bool:
    """Whether ``text`` can name a run: its files stay inside the results folder, and ``--resume`` cannot take
    it for the path of a file."""
    return bool(RUN_ID.fullmatch(text)) and not text.lower().endswith(RUN_FILE_SUFFIXES)


def run_id_name(text: str) -> str:
    """An argparse type: a run id, which names the run's files inside the results folder."""
    if not is_run_id(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a run id: 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or "
            f"digit and not ending in {', '.join(RUN_FILE_SUFFIXES)} (it names the run's files inside the results "
            f"folder)")
    return text


RAY_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]")  # a name, an IPv4 or a bracketed IPv6 address


def ray_address(text: str) -> str:
    """An argparse type: ``auto`` (the cluster this machine belongs to) or the HOST:PORT of a cluster's head."""
    host, _, port = text.rpartition(":")
    if text != "auto" and not (RAY_HOST.fullmatch(host) and port.isdigit() and 0 < int(port) < 2 ** 16):
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'auto' nor HOST:PORT of a Ray cluster's head "
                                         f"(such as 10.0.0.1:6379)")
    return text


def check_folder(parser: argparse.ArgumentParser, flag: str, folder: Path | None) -> None:
    """Exit 2 when a folder the command writes into names something that is not a folder."""
    for parent in [] if folder is None else [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            parser.error(f"{flag}: {parent} is not a folder")


def fail(message: str) -> int:
    """A failure while running (not a bad command line, so no usage text): the message, and exit status 1."""
    print(f"run_bench.py: error: {message}", file=sys.stderr)
    return 1


def default_reports_dir(results_dir: Path) -> Path:
    return results_dir.parent / "reports"
