"""Command line of ``run_bench.py``: pick a GPU profile and a preset, sweep, write rows, summarise."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from tqdm import tqdm

import attentions
from attentions import AttentionConfigError
from attentions.models import build_model, list_models

from bench.suites.cases import PHASES, Case, ModelCase, SweepBlock, unique_cases
from bench.suites.model import MODEL_RESOLUTIONS, base_model_row, model_cases, model_groups, run_model_group
from bench.core.measure import (CPU_ALLOCATORS, MAX_SITTINGS, SPEEDUP_INTERVAL_METHOD, WARMUP_WINDOW, TimingPolicy,
                      retain_available, use_cpu_allocator)
from bench.suites.presets import COMMON_OPTIONS, KV_MODES, PRESETS, STAGE1_WIDTH, kv_axis, preset_blocks, topk_axis
from bench.core.profiles import DTYPE_ALIASES, DTYPES, PROFILES, GpuProfile, canonical_dtype
from bench.schema.results import (COLUMNS, MEASURED_STATUSES, MODEL_COLUMNS, SUITES, ResultsFormatError, RunInUseError, RunLock,
                      completed_case_keys, cpu_name, environment, load_results, now_iso, one_line_results_warnings,
                      read_metadata, write_metadata)
from bench.execution.runner import (Executor, RetryNoisy, RunContext, Stopped, base_row, comparison_groups, in_process, run_group,
                     run_sweep)
from bench.core.settings import Numerics

DEFAULT_RETRIES = 2  # --retries
MAX_RETRY_NOISY = 10  # --retry-noisy: beyond this the machine is not quiet enough to time on
# A user's runs go here (relative to the working directory), never among the committed reference runs in results/
DEFAULT_RESULTS_DIR = Path("runs") / "results"
# The profile's marker in torch.cuda.get_device_name(), to warn when the profile and the GPU differ.
DEVICE_MARKERS = {"a100": "A100", "h100": "H100", "h200": "H200", "l4": "L4", "rtx4090": "4090", "v100": "V100"}


def profile_matches(profile: str, device_name: str) -> bool:
    """Whether the GPU name carries the profile's model as a whole word (an L40S is not an L4)."""
    return re.search(rf"\b{DEVICE_MARKERS[profile]}\b", device_name, flags=re.IGNORECASE) is not None


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


def sittings_count(text: str) -> int:
    """An argparse type: a number of timing sittings, 1 to MAX_SITTINGS."""
    value = positive_int(text)
    if value > MAX_SITTINGS:
        raise argparse.ArgumentTypeError(f"{value} sittings: at most {MAX_SITTINGS}")
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


def dtype_name(text: str) -> str:
    try:
        return canonical_dtype(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_bench.py", description="Sweep the attention zoo and record FLOPs, memory, latency and error.")
    parser.add_argument("--gpu", choices=list(PROFILES),
                        help="GPU profile (peaks, defaults); default: the visible GPU's (without one, say --gpu cpu)")
    parser.add_argument("--suite", choices=list(SUITES), default="attentions",
                        help="attention layers, or whole backbones of attentions.models (default: %(default)s)")
    parser.add_argument("--preset", choices=PRESETS, default="default", help="sweep preset (default: %(default)s)")
    parser.add_argument("--families", nargs="+", metavar="NAME", help="attention families to include")
    parser.add_argument("--models", nargs="+", metavar="NAME",
                        help=f"--suite models: backbones to include (default: all of {', '.join(list_models())})")
    parser.add_argument("--attentions", nargs="+", metavar="CHOICE",
                        help="--suite models: attention choices of swin_layout, each a family or four comma-separated "
                             "(default: every family)")
    parser.add_argument("--backends", nargs="+", metavar="NAME",
                        help="backends to include (--suite models: default torch)")
    parser.add_argument("--resolutions", nargs="+", type=positive_int, metavar="N",
                        help="map sides in tokens; --suite models: image sides in pixels (default: "
                             f"{' '.join(map(str, MODEL_RESOLUTIONS))})")
    parser.add_argument("--topk", nargs="+", type=positive_int, metavar="K", help="BRA topk values")
    parser.add_argument("--kv-modes", nargs="+", metavar="MODE", help=f"BRA kv modes: {', '.join(KV_MODES)}")
    parser.add_argument("--batch", nargs="+", type=positive_int, metavar="B", help="batch sizes")
    parser.add_argument("--dtype", nargs="+", type=dtype_name, metavar="DTYPE",
                        help=f"dtypes: {', '.join(DTYPES)} (or {', '.join(DTYPE_ALIASES)})")
    parser.add_argument("--phase", nargs="+", choices=PHASES, help="fwd and/or fwd+bwd")
    parser.add_argument("--auto-pad", action="store_true",
                        help="pad maps that a family's regions do not divide (BRA's auto_pad) instead of refusing them")
    parser.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS_DIR,
                        help="folder of runs: a run's rows go to RESULTS_DIR/<gpu>/<run id>.csv and .json, and "
                             "--resume looks for its run there (default: %(default)s; the committed reference runs "
                             "are in results/)")
    parser.add_argument("--run-id", type=run_id_name,
                        help="name of the run's files: letters, digits, '.', '_', '-' (default: UTC time and preset)")
    parser.add_argument("--resume", metavar="RUN", help="run id or results path of a run to complete")
    parser.add_argument("--min-time", type=seconds(zero_allowed=True), default=None, metavar="S",
                        help="timed seconds each pass gets of its own, per sitting, after at least 10 rounds: no "
                             "round cap cuts it short, so a fast pass gets as many rounds as that takes (default 0.5 "
                             "on GPU, 0.2 on CPU; each row records its timed_s)")
    parser.add_argument("--sittings", type=sittings_count, default=1, metavar="N",
                        help=f"take each shape's paired rounds in N sittings (at most {MAX_SITTINGS}; each later "
                             "one in a fresh process), so that a speedup's interval covers what varies between "
                             "processes and runs, not only within one (take 5 or more: the interval of 2 or 3 is "
                             "wide); --min-time applies per sitting (default: %(default)s)")
    parser.add_argument("--tf32", action="store_true",
                        help="let float32 matmuls and cuDNN convolutions run in TF32 (faster, ~1e-3 relative error); "
                             "pct_of_peak then divides by the TF32 peak. Off by default: exact fp32, cuDNN's own "
                             "TF32 default included")
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN autotune its convolution algorithms per shape (torch.backends.cudnn.benchmark)")
    parser.add_argument("--deterministic", action="store_true",
                        help="deterministic algorithms only (torch.use_deterministic_algorithms; a backend without "
                             "one records an error)")
    parser.add_argument("--cuda-graphs", action="store_true",
                        help="time replays of each pass captured in a CUDA graph (small shapes, where CPU launch "
                             "overhead dominates); a pass that cannot be captured is timed eagerly, and its row says so")
    parser.add_argument("--cpu-allocator", choices=CPU_ALLOCATORS,
                        help="CPU runs: 'retain' (the default on Linux) keeps memory a pass frees for the next pass, "
                             "as PyTorch's CUDA allocator does; 'system' leaves glibc's defaults, under which every "
                             "block above 32 MiB is faulted in afresh on every call (each row counts its page faults)")
    parser.add_argument("--retry-noisy", type=at_least(0, MAX_RETRY_NOISY), default=0, metavar="N",
                        help="time a group's noisy cases again, beside their references, up to N more times, keeping "
                             "each case's last attempt (its row says it was re-timed; at most "
                             f"{MAX_RETRY_NOISY}); noise on a shared machine comes and goes (default: %(default)s)")
    parser.add_argument("--time-budget", type=seconds(zero_allowed=False), metavar="S",
                        help="start no case after S seconds of sweeping; --resume completes the ones left")
    parser.add_argument("--workers", type=positive_int, metavar="N",
                        help="time N comparison groups at once, each in a Ray task with a GPU of its own (on the "
                             "CPU: concurrent cases disturb each other's timings); default 1: one after the other in "
                             "this process, without Ray (with --ray-address: one per GPU of the cluster, 1 on the CPU)")
    parser.add_argument("--ray-address", type=ray_address, metavar="ADDRESS",
                        help="run on the Ray cluster at ADDRESS ('auto', or its head's HOST:PORT) instead of a local "
                             "one; --workers caps the groups running at once")
    parser.add_argument("--retries", type=at_least(0), metavar="N",
                        help=f"with Ray: runs again of a group whose worker died (a killed process, a lost node) before "
                             f"its cases get error rows (default {DEFAULT_RETRIES})")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the cases and their count, run nothing (any GPU profile, without its device)")
    parser.add_argument("--list", action="store_true", help="list attentions, backends and their availability")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-report", action="store_true", help="skip the report at the end of the sweep")
    parser.add_argument("--reports-dir", type=Path, default=None,
                        help="folder of reports; the sweep's goes to REPORTS_DIR/<gpu>/<run id>/ (default: "
                             "'reports' beside the results folder: runs/reports)")
    return parser


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


def select_profile(parser: argparse.ArgumentParser, requested: str | None,
                   dry_run: bool = False) -> tuple[GpuProfile, str, str]:
    """(profile, device, device name); warns when the profile names another GPU than the one present. A
    ``dry_run`` (which only plans) takes a GPU profile without its device: the name is then the profile's."""
    cuda = torch.cuda.is_available()
    if requested is None:
        if not cuda:
            parser.error("no CUDA device is visible; pass --gpu cpu to benchmark on the CPU")
        name = torch.cuda.get_device_name(0)
        requested = next((p for p in DEVICE_MARKERS if profile_matches(p, name)), None) or parser.error(
            f"no profile matches the GPU {name!r}; pick one with --gpu")
    profile = PROFILES[requested]
    if profile.name == "cpu":
        return profile, "cpu", cpu_name()
    if not cuda:
        if dry_run:
            return profile, "cuda", profile.marketing_name
        parser.error(f"--gpu {profile.name} needs a CUDA device and none is visible; use --gpu cpu to benchmark "
                     f"on the CPU (--dry-run lists its cases without one)")
    name = torch.cuda.get_device_name(0)
    if not profile_matches(profile.name, name):
        warnings.warn(f"profile {profile.name!r} ({profile.marketing_name}) requested on a {name}: peak figures "
                      f"are the profile's; rows keep both names", stacklevel=2)
    return profile, "cuda", name


def apply_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace,
                    blocks: list[SweepBlock]) -> list[SweepBlock]:
    """Narrow or replace the preset's axes with the command line's flags (validated here)."""
    known = list(attentions.list_attentions())
    if args.families:
        unknown = [f for f in args.families if f not in known]
        if unknown:
            parser.error(f"--families: unknown {', '.join(unknown)}; valid: {', '.join(known)}")
    families = args.families or known
    if args.backends:
        valid = sorted({b for f in families for b in attentions.list_attentions()[f]["backends"]})
        unknown = [b for b in args.backends if b not in valid]
        if unknown:
            parser.error(f"--backends: unknown {', '.join(unknown)} for {', '.join(families)}; valid: {', '.join(valid)}")
    if args.kv_modes:
        unknown = [m for m in args.kv_modes if m not in KV_MODES]
        if unknown:
            parser.error(f"--kv-modes: unknown {', '.join(unknown)}; valid: {', '.join(KV_MODES)}")
    if args.auto_pad and not any("auto_pad" in attentions.family_options(f) for f in families):
        padding = [f for f in known if "auto_pad" in attentions.family_options(f)]
        parser.error(f"--auto-pad: none of {', '.join(families)} has the option; {', '.join(padding)} do")
    out = []
    for block in blocks:
        block_families = [f for f in (block.families or known) if f in families]
        if not block_families:
            continue
        block.families = block_families
        if args.backends:
            block.backends = list(args.backends)
        if args.resolutions:
            dim, heads = STAGE1_WIDTH
            block.shapes = [(r, dim, heads, {}) for r in args.resolutions]
        if args.topk:
            block.option_axes["topk"] = topk_axis(args.topk)
            block.shapes = [(r, d, h, {k: v for k, v in o.items() if k != "topk"}) for r, d, h, o in block.shapes]
        if args.kv_modes:
            block.option_axes["kv"] = kv_axis(args.kv_modes)
        if args.auto_pad:
            block.option_axes["auto_pad"] = [{"auto_pad": True}]  # crossed only with the families that have it
        block.batches = args.batch or block.batches
        block.dtypes = args.dtype or block.dtypes
        block.phases = args.phase or block.phases
        out.append(block)
    return out


def plan(parser: argparse.ArgumentParser, args: argparse.Namespace, device: str,
         profile: GpuProfile) -> list[Case] | list[ModelCase]:
    if args.suite == "models":
        return plan_models(parser, args, device, profile)
    misplaced = [flag for flag, value in (("--models", args.models), ("--attentions", args.attentions)) if value]
    if misplaced:
        parser.error(f"{', '.join(misplaced)}: only with --suite models")
    blocks = apply_overrides(parser, args, preset_blocks(args.preset, profile))
    cases = unique_cases(blocks, device, COMMON_OPTIONS)
    check_configurations(parser, cases, profile)
    # in the order they run: each comparison group's cases together (timed in paired rounds)
    return [case for group in comparison_groups(cases) for case in group]


def device_memory_bytes(profile: GpuProfile) -> int:
    """The memory of the profile's device: its GPU's, or this machine's for the CPU profile."""
    if profile.memory_gb is not None:
        return int(profile.memory_gb * 1e9)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_input_fits(parser: argparse.ArgumentParser, what: str, shape: tuple[int, ...], dtype: str,
                     profile: GpuProfile) -> None:
    """Exit 2 when a case's input alone is larger than its device's whole memory: such a case cannot run on any
    device of the profile, so it is a bad value, not an ``oom`` row."""
    size = math.prod(shape) * DTYPES[dtype].itemsize
    memory = device_memory_bytes(profile)
    if size > memory:
        parser.error(f"{what}: its input alone ({' × '.join(map(str, shape))} {dtype}, {size / 2 ** 30:.4g} GiB) "
                     f"is larger than the memory of {profile.marketing_name} ({memory / 2 ** 30:.4g} GiB); "
                     f"take a smaller --resolutions or --batch")


def check_configurations(parser: argparse.ArgumentParser, cases: Sequence[Case], profile: GpuProfile) -> None:
    """Build every configuration of the plan on the meta device (no memory, no compute) and ask it
    whether it takes its case's map size, and whether its input fits its device: a bad value exits 2,
    naming it, before anything runs."""
    for case in cases:
        check_input_fits(parser, case.label(), (case.batch, case.resolution, case.resolution, case.dim), case.dtype,
                         profile)
    checked = set()
    for case in cases:
        key = (case.family, case.options_json, case.dim, case.heads, case.resolution)
        if key in checked:
            continue
        checked.add(key)
        try:
            with torch.device("meta"):
                module = attentions.build(case.family, dim=case.dim, num_heads=case.heads, **case.options_dict)
            module.check_map_size(case.resolution, case.resolution)
        except AttentionConfigError as exc:
            options = ", ".join(f"{k}={v}" for k, v in case.options)
            parser.error(f"{case.family} ({options or 'default options'}) at {case.resolution}×{case.resolution}, "
                         f"C {case.dim}, {case.heads} heads: {exc}")


def plan_models(parser: argparse.ArgumentParser, args: argparse.Namespace, device: str,
                profile: GpuProfile) -> list[ModelCase]:
    """The model suite's cases for the command line (validated here)."""
    misplaced = [f"--{dest.replace('_', '-')}" for dest in ("preset", "families", "topk", "kv_modes", "auto_pad",
                                                            "sittings")
                 if getattr(args, dest) != parser.get_default(dest)]
    if misplaced:
        parser.error(f"{', '.join(misplaced)}: not used by --suite models (it takes --models, --attentions, "
                     f"--backends, --resolutions, --batch, --dtype, --phase; it pads every map BRA needs padded)")
    models = list(list_models())
    unknown = [m for m in args.models or [] if m not in models]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)}; valid: {', '.join(models)}")
    families = list(attentions.list_attentions())
    for choice in args.attentions or []:
        names = choice.split(",")
        if len(names) not in (1, 4) or any(name not in families for name in names):
            parser.error(f"--attentions: {choice!r} is not a family or four comma-separated families; "
                         f"families: {', '.join(families)}")
    if args.backends:
        valid = sorted({b for info in attentions.list_attentions().values() for b in info["backends"]})
        unknown = [b for b in args.backends if b not in valid]
        if unknown:
            parser.error(f"--backends: unknown {', '.join(unknown)}; valid: {', '.join(valid)}")
    cases = model_cases(args.models or models, args.attentions or families, args.backends or ["torch"],
                        args.resolutions or list(MODEL_RESOLUTIONS), args.batch, args.dtype or [profile.default_dtype],
                        args.phase or list(PHASES), device, profile)
    check_model_configurations(parser, cases, profile)
    return cases


def check_model_configurations(parser: argparse.ArgumentParser, cases: Sequence[ModelCase],
                               profile: GpuProfile) -> None:
    """The model suite's ``check_configurations``: every model and attention choice built on the meta
    device, asked whether it takes its case's image size."""
    built: dict[tuple[str, str], torch.nn.Module] = {}
    for case in cases:
        check_input_fits(parser, case.label(), (case.batch, 3, case.resolution, case.resolution), case.dtype, profile)
        try:
            with torch.device("meta"):
                if (case.model, case.attention) not in built:
                    built[case.model, case.attention] = build_model(case.model, **case.options_dict)
                built[case.model, case.attention].check_image(torch.empty(1, 3, case.resolution, case.resolution))
        except AttentionConfigError as exc:
            parser.error(f"{case.model} ({case.attention}) at {case.resolution}×{case.resolution} px: {exc}")


def _cell(row: pd.Series) -> str:
    """A row's median latency and peak memory (marked when noisy or a mismatch), or its status."""
    if row["status"] in MEASURED_STATUSES:
        text = f"{row['latency_ms_median']:.3g} ms, {row['peak_mem_mb']:.3g} MB"
        return text if row["status"] == "ok" else f"{row['status'].upper()} {text}"
    return row["status"]


def noise_summary(frame: pd.DataFrame, min_time: float) -> str | None:
    """How many rows were noisy, and what helps; None when none was."""
    noisy = frame[frame["status"] == "noisy"]
    if noisy.empty:
        return None
    loads = pd.concat([frame["load_before"], frame["load_after"]]).dropna()
    load = f"; the machine's load average was {loads.min():.2f}–{loads.max():.2f}" if len(loads) else ""
    return (f"{len(noisy)} of {len(frame)} rows are noisy (timing spread or speedup interval beyond the device's "
            f"limit){load}: their numbers are shown but never ranked. A longer --min-time (now {min_time:g} s "
            f"per pass) or a quieter machine helps.")


def model_summary_table(frame: pd.DataFrame) -> str:
    """One line per model case: parameters, GMACs per image, and latency and memory (or the status)."""
    if frame.empty:
        return "(no rows)"
    shown = frame.assign(result=frame.apply(_cell, axis=1), params_m=frame["params_m"].map("{:.2f}".format),
                         gmacs_per_image=frame["gmacs_per_image"].map("{:.4g}".format))
    columns = ["model", "attention", "backend", "resolution", "batch", "dtype", "phase", "params_m", "gmacs_per_image",
               "result"]
    with pd.option_context("display.width", 250, "display.max_rows", 1000, "display.max_colwidth", 100):
        return shown[columns].to_string(index=False)


def summary_table(frame: pd.DataFrame) -> str:
    """One line per case and one column per backend: median latency and peak memory, or the status."""
    if frame.empty:
        return "(no rows)"
    options = frame["options"].map(lambda text: ",".join(f"{k}={v}" for k, v in json.loads(text).items()))
    shown = frame.assign(cell=frame.apply(_cell, axis=1), options=options)
    keys = ["family", "options", "resolution", "batch", "dtype", "phase"]
    groups = shown.groupby(keys, sort=False, dropna=False)
    table = groups["cell"].agg(list).to_frame()  # keeps the case order of the run
    for backend in shown["backend"].unique():
        table[backend] = groups.apply(lambda g, b=backend: ", ".join(g.loc[g["backend"] == b, "cell"]),
                                      include_groups=False)
    table.insert(0, "gmacs", groups["gmacs"].max().map("{:.4g}".format))
    table = table.drop(columns="cell").reset_index()
    with pd.option_context("display.width", 250, "display.max_rows", 1000, "display.max_colwidth", 100):
        return table.fillna("").to_string(index=False)


# Flags that only say where output goes, how it is shown or where the cases run: allowed beside --resume.
RESUME_COMPATIBLE = {"resume", "results_dir", "reports_dir", "quiet", "no_report", "dry_run", "time_budget", "workers",
                     "ray_address", "retries"}


def resumed_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Path, dict, argparse.Namespace]:
    """Results path, metadata and the stored sweep arguments of the run named by --resume. Reads only:
    the run's lock is taken, and a torn last row cut, when the run is written to."""
    changed = sorted(f"--{dest.replace('_', '-')}" for dest, value in vars(args).items()
                     if dest not in RESUME_COMPATIBLE and value != parser.get_default(dest))
    if changed:
        parser.error(f"--resume continues the run's own sweep; drop {', '.join(changed)} "
                     f"(start a new run to sweep something else)")
    named = Path(args.resume)
    if named.suffix in (".csv", ".json"):
        results_path = named.with_suffix(".csv")
    else:
        if not is_run_id(args.resume):
            parser.error(f"--resume: {args.resume!r} is neither a run id nor the path of a run's .csv or .json")
        matches = sorted(args.results_dir.glob(f"*/{args.resume}.csv"))
        if not matches:
            parser.error(f"--resume: no run {args.resume!r} under {args.results_dir}/ (give the run id or "
                         f"the path of its .csv)")
        results_path = matches[0]
    metadata_path = results_path.with_suffix(".json")
    try:
        metadata = read_metadata(results_path)
        completed_case_keys(results_path)  # the rows must be readable too
    except (ResultsFormatError, OSError) as exc:
        parser.error(f"--resume: {exc}")
    stored_argv = metadata.get("argv")
    if stored_argv is None:
        parser.error(f"--resume: {metadata_path} has no 'argv' (the run's command-line words): it is not "
                     f"the metadata of a run of this tool")
    if not all(isinstance(word, str) for word in stored_argv):
        parser.error(f"--resume: {metadata_path}: 'argv' is {stored_argv!r}, not a list of strings (the run's "
                     f"command-line words)")
    metadata["run_id"] = results_path.stem
    stored = parse_stored_command(parser, stored_argv, metadata_path)
    for dest in RESUME_COMPATIBLE - {"resume"}:
        setattr(stored, dest, getattr(args, dest))
    return results_path, metadata, stored


def parse_stored_command(parser: argparse.ArgumentParser, argv: list[str], source: Path) -> argparse.Namespace:
    """A run's stored command line parsed as at its start; a clean error if it does not parse or resumes."""
    with contextlib.redirect_stderr(io.StringIO()) as messages:
        try:
            stored = parser.parse_args(argv)
        except SystemExit:
            stored = None
    if stored is None or stored.resume:
        problem = messages.getvalue().strip().splitlines()[-1] if stored is None else "it is itself a --resume"
        parser.error(f"--resume: the command line stored in {source} ({shlex.join(argv)}) is not one this tool "
                     f"can continue: {problem}")
    return stored


def check_folder(parser: argparse.ArgumentParser, flag: str, folder: Path | None) -> None:
    """Exit 2 when a folder the command writes into names something that is not a folder."""
    for parent in [] if folder is None else [folder, *folder.parents]:
        if parent.exists() and not parent.is_dir():
            parser.error(f"{flag}: {parent} is not a folder")


def main(argv: Sequence[str] | None = None) -> int:
    """``run_bench.py [sweep flags]``, ``run_bench.py report ...`` or ``run_bench.py compare ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rearm_sigint()
    with one_line_results_warnings("run_bench.py"):
        if argv[:1] == ["report"]:
            return main_report(argv[1:])
        if argv[:1] == ["compare"]:
            from bench.analysis.compare import main_compare
            return main_compare(argv[1:])
        return main_sweep(argv)


def fail(message: str) -> int:
    """A failure while running (not a bad command line, so no usage text): the message, and exit status 1."""
    print(f"run_bench.py: error: {message}", file=sys.stderr)
    return 1


def rearm_sigint() -> None:
    """Give SIGINT back to Python (KeyboardInterrupt) where this process inherited it ignored (a shell's
    ``trap '' INT``, a background job of a script, a parent's ``preexec_fn``): otherwise Ctrl-C could not
    stop a sweep. Only the main thread can set a handler."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def default_reports_dir(results_dir: Path) -> Path:
    return results_dir.parent / "reports"


def main_report(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="run_bench.py report",
                                     description="Tables, plots and an index from result files alone.")
    parser.add_argument("results", type=Path, help="a results .csv (or its .json), or a folder of them")
    parser.add_argument("--out", type=Path,
                        help="report folder (default, beside results/: reports/<gpu profile>/ for a folder, "
                             "reports/<gpu profile>/<run id>/ for one run)")
    args = parser.parse_args(argv)
    check_folder(parser, "--out", args.out)
    from bench.report.build import build_report, collect_results  # plotting libraries load only when reporting
    try:
        frame, _ = next(iter(collect_results(args.results).values()))
        out = args.out
        if out is None:
            folder = args.results.is_dir()
            base = args.results if folder else args.results.parent
            out = default_reports_dir(base.parent) / str(frame["gpu_profile"].iloc[0])
            if not folder:
                out /= args.results.stem  # one run's report: beside the folder's, never over it
        readme = build_report(args.results, out)
    except (ResultsFormatError, OSError) as exc:
        print(f"run_bench.py report: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    print(f"report written to {readme}")
    return 0


class SweepProgress:
    """The sweep's tqdm bar, in cases. Cases already complete count at once (tqdm's ``initial``, so that they
    stay out of its rate and ETA). A running group's cases advance together as its work does (``advance``,
    in-process: each pass prepared, each sitting of rounds), and a case counts whole when its row is written.
    The estimate is the time so far per case done, partial groups included (no smoothing: a group's rows come
    together). The postfix names the cases running (the first group's, and how many more groups run beside
    it). ``run_sweep`` reports the complete cases before it starts one: the bar opens with the first."""

    BAR_FORMAT = "{l_bar}{bar}| {n:.1f}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"

    def __init__(self, total: int, disable: bool) -> None:
        self.total, self.disable = total, disable
        self.already_complete = 0
        self.written = 0  # rows written by this sweep
        self.bar: tqdm | None = None
        self.running: list[Sequence[Any]] = []  # the groups started and not all written yet, oldest first
        self.done: dict[str, float] = {}  # each running case's work done so far, as a fraction of it

    def progress(self, case: Any, already_done: bool) -> None:
        if already_done:
            self.already_complete += 1
            return
        del self.done[case.key]
        self.written += 1
        running = [group for group in self.running if any(member.key in self.done for member in group)]
        finished, self.running = len(running) < len(self.running), running
        self.bar.set_postfix_str(self._running_text(), refresh=False)
        self._count(refresh=finished)  # a group's rows come together: drawn once, with the last

    def advance(self, cases: Sequence[Any], fraction: float) -> None:
        """``RunContext.on_progress``: the running ``cases`` are ``fraction`` done. Cases the bar is not running
        are left alone, and a lower fraction (a retry of noisy cases starting over) is no step back."""
        moved = False
        for case in cases:
            before = self.done.get(case.key)
            if before is not None and fraction > before:
                self.done[case.key] = fraction
                moved = True
        if moved:
            self._count(refresh=True)

    def _count(self, refresh: bool) -> None:
        """Set the bar to the cases done: a sum, not increments, so that fractions never drift past the total."""
        self.bar.n = self.already_complete + self.written + sum(self.done.values())
        if refresh:
            self.bar.refresh()

    def starting(self, cases: Sequence[Any]) -> None:
        if self.bar is None:
            self.bar = tqdm(total=self.total, initial=self.already_complete, disable=self.disable, unit="case",
                            dynamic_ncols=True, smoothing=0, bar_format=self.BAR_FORMAT)
        self.running.append(cases)
        self.done.update((case.key, 0.0) for case in cases)
        self.bar.set_postfix_str(self._running_text())

    def _running_text(self) -> str:
        if not self.running:
            return ""
        first = self.running[0]
        together = f" and {len(first) - 1} more, timed together" if len(first) > 1 else ""
        beside = f"; {len(self.running) - 1} more groups running" if len(self.running) > 1 else ""
        return f"running {first[0].label()}{together}{beside}"

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StopOnSignals:
    """While in ``with``, the signals that end a sweep stop it cleanly. The first SIGINT (Ctrl-C) only sets
    ``requested``, so that the sweep stops once the group in progress has its rows; a second SIGINT, and
    SIGTERM or SIGHUP at any time, raise ``Stopped`` at once (the group in progress gets no rows, and a resume
    runs it). Nothing is installed outside the main thread, nor for a signal ignored or handled outside
    Python (``nohup`` ignores SIGHUP: it stays ignored)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signal.getsignal(signum) not in (signal.SIG_IGN, None):
                    self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)

    def _handle(self, signum: int, frame: Any) -> None:
        if signum != signal.SIGINT or self.requested:
            raise Stopped(signum)
        self.requested = True
        # os.write, not print: a handler may run in the middle of a write to sys.stderr (the progress bar's)
        os.write(2, b"\ninterrupt: the sweep stops once the case in progress has its row "
                    b"(Ctrl-C again stops at once)\n")


def resume_command(parser: argparse.ArgumentParser, args: argparse.Namespace, run_id: str) -> str:
    """The command that completes the run: ``--resume`` with the flags given for where its files go."""
    words = ["--resume", run_id]
    for dest in ("results_dir", "reports_dir", "workers", "ray_address", "retries"):
        if getattr(args, dest) != parser.get_default(dest):
            words += [f"--{dest.replace('_', '-')}", str(getattr(args, dest))]
    if args.no_report:
        words.append("--no-report")
    return "python run_bench.py " + shlex.join(words)


def uses_ray(args: argparse.Namespace) -> bool:
    return args.ray_address is not None or (args.workers or 1) > 1


def check_cluster_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit 2 when Ray is asked for and not installed, or --retries is given without Ray."""
    if not uses_ray(args):
        if args.retries is not None:
            parser.error(f"--retries {args.retries}: only with Ray (--workers N > 1 or --ray-address)")
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        flag = f"--ray-address {args.ray_address}" if args.ray_address else f"--workers {args.workers}"
        parser.error(f'{flag} runs on Ray, which is not installed: pip install -e ".[cluster]"')


def ray_executor(parser: argparse.ArgumentParser, args: argparse.Namespace, device: str, models: bool,
                 metadata: dict[str, Any], metadata_path: Path) -> Executor:
    """Start (or join, with --ray-address) the Ray cluster and return the sweep's executor on it; the
    workers, their threads and the cluster go into the run's metadata, each node's environment as its
    first rows come back. The caller stops the cluster (``cluster.stop``)."""
    from bench.execution import cluster
    workers = args.workers or (1 if device == "cpu" else None)  # None: every GPU of the cluster
    threads = None if device == "cuda" else max(1, torch.get_num_threads() // workers)
    try:
        cluster.start(args.ray_address, cpus=max(os.cpu_count() or 1, (workers or 1) * (threads or 1)))
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"--ray-address {args.ray_address}" if args.ray_address else "a local Ray cluster"
        parser.error(f"{where}: cannot start Ray: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}")
    if workers is None:
        workers = cluster.cluster_gpus()
        if workers == 0:
            cluster.stop()
            parser.error(f"--ray-address {args.ray_address}: the cluster has no GPU (give --workers to use the GPUs "
                         f"it will have)")
    if device == "cpu" and workers > 1:
        print(f"run_bench.py: warning: --workers {workers} on the CPU: concurrent cases share its cores, caches and "
              f"memory bandwidth and disturb each other's timings ({threads} thread(s) each); one worker, the "
              f"default, times them cleanly", file=sys.stderr)
    metadata["timing"].update(workers=workers, threads_per_worker=threads)
    metadata["ray"] = {"address": args.ray_address or "local", "retries": retries(args)}
    nodes = metadata.setdefault("nodes", {})

    def on_node(node: str, node_env: dict[str, Any]) -> None:
        nodes[node] = node_env
        write_metadata(metadata_path, metadata)

    return cluster.RayExecutor(device, workers, retries(args), base_model_row if models else base_row,
                               threads=threads, on_node=on_node)


def retries(args: argparse.Namespace) -> int:
    return DEFAULT_RETRIES if args.retries is None else args.retries


def main_sweep(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(list_attentions_text())
        if args.suite == "models":
            print(list_models_text())
        return 0
    check_folder(parser, "--results-dir", args.results_dir)
    check_folder(parser, "--reports-dir", args.reports_dir)

    resuming = bool(args.resume)
    if resuming:
        results_path, metadata, args = resumed_run(parser, args)
        argv = metadata["argv"]
    check_cluster_flags(parser, args)
    profile, device, device_name = select_profile(parser, args.gpu, args.dry_run)
    if resuming and device == "cpu" and args.cpu_allocator is None:
        # the policy the run's rows were timed under; a run from before the policies had glibc's defaults
        args.cpu_allocator = metadata.get("timing", {}).get("cpu_allocator") or "system"
    args.cpu_allocator = cpu_allocator_policy(parser, args, device)
    numerics = Numerics(tf32_matmul=args.tf32, tf32_cudnn=args.tf32, cudnn_benchmark=args.cudnn_benchmark,
                        deterministic=args.deterministic)
    numerics.apply()  # before anything is built or recorded: the run's environment shows them
    cases = plan(parser, args, device, profile)
    if args.dry_run:
        done = completed_case_keys(results_path) if resuming else set()
        todo = [case for case in cases if case.key not in done]
        for case in todo:
            print(case.label())
        print(f"{len(todo)} cases" + (f" to run, {len(cases) - len(todo)} already complete" if resuming else ""))
        return 0

    if not resuming:
        name = args.preset if args.suite == "attentions" else args.suite
        run_id = args.run_id or f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{name}"
        results_path = args.results_dir / profile.name / f"{run_id}.csv"
        metadata = {"run_id": run_id, "suite": args.suite,
                    "preset": args.preset if args.suite == "attentions" else None, "gpu_profile": profile.name,
                    "device_name": device_name, "argv": argv, "command": "python run_bench.py " + shlex.join(argv),
                    "environment": environment(), "cases_planned": len(cases), "numerics": numerics.as_dict()}
    try:
        with RunLock(results_path):  # one writer per run: a second sweep or resume of it refuses
            if resuming:
                metadata.setdefault("resumed", []).append({"at": now_iso(), "environment": environment()})
            elif results_path.exists():
                parser.error(f"--run-id: {results_path} exists; use --resume {metadata['run_id']} to complete it")
            else:
                metadata["started"] = now_iso()
            code = sweep(parser, args, cases, results_path, metadata, device, profile, device_name, numerics)
    except RunInUseError as exc:
        parser.error(str(exc))
    except OSError as exc:
        return fail(f"cannot write the run's files in {results_path.parent}: {exc.strerror or exc}"
                    f"{f' ({exc.filename})' if exc.filename else ''}; the rows written so far are kept, and "
                    f"--resume {metadata['run_id']} completes the run once the cause is fixed")
    if code == 0 and not args.no_report:
        from bench.report.build import build_report
        out = (args.reports_dir or default_reports_dir(args.results_dir)) / profile.name / metadata["run_id"]
        try:
            print(f"report: {build_report(results_path, out)}")
        except OSError as exc:
            return fail(f"cannot write the report in {out}: {exc.strerror or exc}"
                        f"{f' ({exc.filename})' if exc.filename else ''}; the rows are in {results_path}, and "
                        f"'python run_bench.py report {results_path}' writes it once the cause is fixed")
    return code


def cpu_allocator_policy(parser: argparse.ArgumentParser, args: argparse.Namespace, device: str) -> str | None:
    """The run's CPU allocator policy, applied to this process (None on a GPU run); exits 2 when it cannot be."""
    if device != "cpu":
        if args.cpu_allocator:
            parser.error(f"--cpu-allocator {args.cpu_allocator}: applies to CPU runs (--gpu cpu), not to this "
                         f"{device} run")
        return None
    policy = args.cpu_allocator or ("retain" if retain_available() else "system")
    try:
        use_cpu_allocator(policy)
    except RuntimeError as exc:
        parser.error(f"--cpu-allocator {policy}: {exc}")
    return policy


def sweep(parser: argparse.ArgumentParser, args: argparse.Namespace, cases: list[Case] | list[ModelCase],
          results_path: Path, metadata: dict[str, Any], device: str, profile: GpuProfile, device_name: str,
          numerics: Numerics) -> int:
    """Run the planned cases into the run's files (the caller holds the run's lock) and summarise them.
    Returns the exit status: 130 when interrupted."""
    min_time = args.min_time if args.min_time is not None else (0.5 if device == "cuda" else 0.2)
    policy = TimingPolicy(min_time_s=min_time, l2_flush=device == "cuda", cuda_graphs=args.cuda_graphs,
                          cpu_allocator=args.cpu_allocator, sittings=args.sittings)
    metadata["timing"] = {
        "rounds": "paired: a shape's cases round-robin in one process" if args.suite == "attentions" else
                  "paired: a model case's backends round-robin in one process",
        "min_time_s_per_pass": min_time, "min_rounds": policy.min_rounds, "max_rounds": policy.max_rounds,
        "warmup": {"min_calls": policy.warmup_rounds, "max_calls": policy.warmup_max_calls,
                   "max_s": policy.warmup_max_s, "settled_when": f"{WARMUP_WINDOW} consecutive calls within the "
                                                                  f"noise limit of each other"},
        "sittings": policy.sittings, "l2_flush": policy.l2_flush, "cuda_graphs": policy.cuda_graphs,
        "cpu_allocator": policy.cpu_allocator, "noise_limit": policy.noise_limit_for(torch.device(device)),
        "speedup_interval": SPEEDUP_INTERVAL_METHOD, "retry_noisy": args.retry_noisy}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    models = args.suite == "models"
    metadata_path = results_path.with_suffix(".json")
    on_ray = uses_ray(args)
    executor = ray_executor(parser, args, device, models, metadata, metadata_path) if on_ray else in_process
    if not on_ray:
        metadata["timing"]["workers"] = 1
    write_metadata(metadata_path, metadata)

    bar = SweepProgress(len(cases), disable=args.quiet)
    ctx = RunContext(run_id=metadata["run_id"], profile=profile, device_name=device_name, timing=policy,
                     numerics=numerics, on_progress=None if on_ray else bar.advance)
    stop_at = None if args.time_budget is None else time.monotonic() + args.time_budget
    run = run_model_group if models else run_group
    if args.retry_noisy:
        run = RetryNoisy(run, args.retry_noisy)
    stopped_by: int | None = None  # a signal that stopped the sweep at once
    try:
        with StopOnSignals() as signals:
            run_sweep(cases, ctx, results_path, progress=bar.progress, starting=bar.starting, run=run,
                      columns=MODEL_COLUMNS if models else COLUMNS, stop_at=stop_at,
                      groups=model_groups if models else comparison_groups,
                      should_stop=lambda: signals.requested, executor=executor)
    except Stopped as stop:
        stopped_by = stop.signum
    finally:
        bar.close()
        if on_ray:
            from bench.execution import cluster
            cluster.stop()
    frame = load_results(results_path)
    done = set(frame["case_key"])
    not_started = sum(case.key not in done for case in cases)
    if stopped_by is None and signals.requested and not_started:  # a Ctrl-C during the last group interrupts nothing
        stopped_by = signal.SIGINT
    metadata.update(finished=now_iso(), rows=len(frame), cases_not_started=not_started,
                    interrupted=stopped_by is not None,
                    stopped_by=None if stopped_by is None else signal.Signals(stopped_by).name,
                    status_counts={k: int(v) for k, v in frame["status"].value_counts().items()})
    write_metadata(results_path.with_suffix(".json"), metadata)
    lines = [model_summary_table(frame) if models else summary_table(frame),
             f"\n{bar.written} cases run, {bar.already_complete} already complete; rows in {results_path}"]
    devices = sorted(frame["device_name"].dropna().unique())
    if len(devices) > 1:
        lines.append(f"rows of {len(devices)} device names ({', '.join(devices)}): the report and compare take no "
                     f"ratio between two of them")
    noise = None if models else noise_summary(frame, min_time)
    if noise:
        lines.append(noise)
    resume = resume_command(parser, args, metadata["run_id"])
    if stopped_by is not None:
        lines.append(f"interrupted ({signal.Signals(stopped_by).name}): {not_started} cases not run; "
                     f"resume with: {resume}")
    elif not_started:
        lines.append(f"time budget of {args.time_budget:g} s reached: {not_started} cases not started; "
                     f"{resume} completes them")
    with contextlib.suppress(OSError):  # after SIGHUP the terminal may be gone: the files say it all
        print("\n".join(lines), flush=True)
    return 0 if stopped_by is None else 128 + stopped_by  # the shell's code for a command ended by that signal
