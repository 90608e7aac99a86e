"""``run_bench.py list`` (and ``--list``): the attention families, their backends and where each runs; the
models of the model suite."""

from __future__ import annotations

import argparse

import attentions
from attentions.models import list_models

from bench.cli.plugins import add_plugin_argument, load_command_plugins
from bench.suites import SUITES

DESCRIPTION = "The attention families, their backends and options, and where each backend runs here."


def list_attentions_text() -> str:
    lines = []
    devices = ["cpu", "cuda"]
    for name, info in attentions.list_attentions().items():
        lines.append(f"{name} ({info['class']}), reference backend '{info['reference_backend']}'")
        lines.append("  options: " + ", ".join(f"{k}={v!r}" for k, v in info["options"].items()))
        for backend, spec in info["backends"].items():
            here = []
            for device in devices:
                ok, reason = attentions.backend_available(name, backend, device)
                here.append(f"{device}: {'yes' if ok else 'no (' + reason + ')'}")
            lines.append(f"  {backend:<8} {spec['description']}")
            dtypes = {device: ", ".join(names) for device, names in spec["device_dtypes"].items()}
            dtypes_text = next(iter(dtypes.values())) if len(set(dtypes.values())) == 1 else \
                "; ".join(f"{names} on {device}" for device, names in dtypes.items())
            lines.append(f"           devices {', '.join(spec['devices'])}; dtypes {dtypes_text}; "
                         f"backward on {', '.join(spec['backward']) or 'no device'}; here: {'; '.join(here)}")
    return "\n".join(lines)


def list_models_text() -> str:
    lines = ["models (attentions.models.build_model):"]
    for name, info in list_models().items():
        lines.append(f"  {name:<15} {info['display_name']}: depths {info['depths']}, widths {info['dims']}, "
                     f"MLP ratio {info['mlp_ratio']}")
    options = next(iter(list_models().values()))["options"]
    lines.append("  options: " + ", ".join(f"{k}={v!r}" for k, v in options.items()))
    return "\n".join(lines)


def list_suites_text() -> str:
    lines = ["suites (--suite):"]
    for suite in SUITES.values():
        lines.append(f"  {suite.name}: tables {', '.join(suite.tables)}; plots {', '.join(suite.plots)}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_plugin_argument(parser)
    parser.add_argument("--models", action="store_true", help="also list the models of --suite models")


def print_listing(models: bool) -> int:
    """Print the families (and with ``models``, the models) and the suites; the exit status."""
    print(list_attentions_text())
    print(list_suites_text())
    if models:
        print(list_models_text())
    return 0


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    load_command_plugins(args.plugin)
    return print_listing(args.models)
