"""``run_bench.py [sweep]``: pick a GPU profile, a suite and its cases, sweep them into a run's files, summarise,
report."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import re
import shlex
import signal
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
from attentions.models import list_models
from attentions.plugins import loaded_plugins

from bench.cli.arguments import (at_least, check_folder, default_reports_dir, fail, odd_int, positive_int, ray_address,
                                 run_id_name, seconds)
from bench.cli.cluster_options import DEFAULT_RETRIES, check_cluster_flags, ray_executor, uses_ray
from bench.cli.listing import print_listing
from bench.cli.plugins import add_plugin_argument, load_command_plugins
from bench.cli.progress import StopOnSignals, SweepProgress
from bench.cli.resume import resume_command, resumed_run
from bench.core.methods import measurement_methods
from bench.core.statistics import SPEEDUP_INTERVAL_METHOD
from bench.core.measure import (CPU_ALLOCATORS, MAX_SITTINGS, WARMUP_WINDOW, TimingPolicy,
                                retain_available, use_cpu_allocator)
from bench.core.processes import Stopped
from bench.core.profiles import DTYPE_ALIASES, DTYPES, PROFILES, GpuProfile, canonical_dtype
from bench.core.settings import Numerics
from bench.execution.runner import RetryNoisy, in_process, run_sweep
from bench.core.machine import cpu_name, environment
from bench.schema.files import completed_case_keys, load_results, now_iso, RunInUseError, RunLock
from bench.schema.metadata import write_metadata
from bench.schema.metadata import versioned_metadata
from bench.suites import SUITES
from bench.schema.columns import COMPILE_MODES
from bench.suites.base import DEFAULT_COMPILE_LIMIT_S, PlanError, RunContext, Suite
from bench.suites.cases import PHASES
from bench.suites.model import MODEL_RESOLUTIONS
from bench.suites.presets import KV_MODES, PRESETS
from bench.suites.snapshot import registry_snapshot

MAX_RETRY_NOISY = 10  # --retry-noisy: beyond this the machine is not quiet enough to time on


# A user's runs go here (relative to the working directory), never among the committed reference runs in results/
DEFAULT_RESULTS_DIR = Path("runs") / "results"


# The profile's marker in torch.cuda.get_device_name(), to warn when the profile and the GPU differ.
DEVICE_MARKERS = {"a100": "A100", "h100": "H100", "h200": "H200", "l4": "L4", "rtx4090": "4090", "v100": "V100"}


def profile_matches(profile: str, device_name: str) -> bool:
    """Whether the GPU name carries the profile's model as a whole word (an L40S is not an L4)."""
    return re.search(rf"\b{DEVICE_MARKERS[profile]}\b", device_name, flags=re.IGNORECASE) is not None


def sittings_count(text: str) -> int:
    """An argparse type: a number of timing sittings, 1 to MAX_SITTINGS."""
    value = positive_int(text)
    if value > MAX_SITTINGS:
        raise argparse.ArgumentTypeError(f"{value} sittings: at most {MAX_SITTINGS}")
    return value


def dtype_name(text: str) -> str:
    try:
        return canonical_dtype(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


DESCRIPTION = "Sweep the attention zoo and record FLOPs, memory, latency and error."


def build_parser() -> argparse.ArgumentParser:
    """The sweep's own parser (``--resume`` parses a run's stored command line with it)."""
    parser = argparse.ArgumentParser(prog="run_bench.py", description=DESCRIPTION)
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_plugin_argument(parser)
    parser.add_argument("--gpu", choices=list(PROFILES),
                        help="GPU profile (peaks, defaults); default: the visible GPU's (without one, say --gpu cpu)")
    parser.add_argument("--suite", choices=list(SUITES), default="attentions",
                        help="attention layers, or whole backbones of attentions.models (default: %(default)s); "
                             "each suite takes the flags marked with its name")
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
    parser.add_argument("--kernel-sizes", nargs="+", type=odd_int, metavar="K",
                        help="neighborhood attention's kernel sizes (odd; default NAT's 7)")
    parser.add_argument("--dilations", nargs="+", type=positive_int, metavar="D",
                        help="neighborhood attention's dilations (default: 1, and DiNAT's resolution // kernel)")
    parser.add_argument("--batch", nargs="+", type=positive_int, metavar="B", help="batch sizes")
    parser.add_argument("--dtype", nargs="+", type=dtype_name, metavar="DTYPE",
                        help=f"dtypes: {', '.join(DTYPES)} (or {', '.join(DTYPE_ALIASES)})")
    parser.add_argument("--phase", nargs="+", choices=PHASES, help="fwd and/or fwd+bwd")
    parser.add_argument("--compile", nargs="+", choices=COMPILE_MODES, metavar="MODE",
                        help=f"torch.compile modes to measure every case in: {', '.join(COMPILE_MODES)} (eager: not "
                             f"compiled; default: the preset's, eager for most); a compiled case's row says how long "
                             f"it took to compile and how many graphs it made, and its speedup over the fastest "
                             f"compiled reference")
    parser.add_argument("--compile-limit", type=seconds(zero_allowed=False), default=DEFAULT_COMPILE_LIMIT_S,
                        metavar="S", help="the longest one case may compile (its row: timeout), and never past "
                                          "--time-budget (default: %(default)g)")
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
    parser.add_argument("--list", action="store_true",
                        help="list attentions, backends and their availability (as 'run_bench.py list')")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-report", action="store_true", help="skip the report at the end of the sweep")
    parser.add_argument("--reports-dir", type=Path, default=None,
                        help="folder of reports; the sweep's goes to REPORTS_DIR/<gpu>/<run id>/ (default: "
                             "'reports' beside the results folder: runs/reports)")


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


def plan(parser: argparse.ArgumentParser, args: argparse.Namespace, suite: Suite, device: str,
         profile: GpuProfile) -> list[Any]:
    """The suite's cases for the command line; exit 2 for a flag the suite does not take or a bad value."""
    for dest in sorted(set().union(*(other.flags for other in SUITES.values())) - suite.flags):
        if getattr(args, dest) != parser.get_default(dest):
            owners = " or ".join(f"--suite {other.name}" for other in SUITES.values() if dest in other.flags)
            parser.error(f"--{dest.replace('_', '-')}: not used by --suite {suite.name} (only by {owners})")
    try:
        return suite.plan(args, device, profile)
    except PlanError as exc:
        parser.error(str(exc))


def noise_summary(frame: pd.DataFrame, min_time: float) -> str | None:
    """How many rows were noisy, and what helps; None when none was."""
    noisy = frame[frame["status"] == "noisy"]
    if noisy.empty:
        return None
    loads = pd.concat([frame.get(column, pd.Series(dtype=float)) for column in ("load_before", "load_after")]).dropna()
    load = f"; the machine's load average was {loads.min():.2f}–{loads.max():.2f}" if len(loads) else ""
    return (f"{len(noisy)} of {len(frame)} rows are noisy (timing spread or speedup interval beyond the device's "
            f"limit){load}: their numbers are shown but never ranked. A longer --min-time (now {min_time:g} s "
            f"per pass) or a quieter machine helps.")


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: list[str]) -> int:
    """The sweep of the command line ``argv`` (parsed into ``args``): its exit status."""
    load_command_plugins(args.plugin)
    if args.list:
        return print_listing(models=args.suite == "models")
    check_folder(parser, "--results-dir", args.results_dir)
    check_folder(parser, "--reports-dir", args.reports_dir)

    resuming = bool(args.resume)
    if resuming:
        results_path, metadata, args = resumed_run(parser, args)
        argv = metadata["argv"]
        load_command_plugins(plugin["module"] for plugin in metadata.get("plugins", []))  # the run's, however named
    check_cluster_flags(parser, args)
    profile, device, device_name = select_profile(parser, args.gpu, args.dry_run)
    if resuming and device == "cpu" and args.cpu_allocator is None:
        # the policy the run's rows were timed under; a run from before the policies had glibc's defaults
        args.cpu_allocator = metadata.get("timing", {}).get("cpu_allocator") or "system"
    args.cpu_allocator = cpu_allocator_policy(parser, args, device)
    numerics = Numerics(tf32_matmul=args.tf32, tf32_cudnn=args.tf32, cudnn_benchmark=args.cudnn_benchmark,
                        deterministic=args.deterministic)
    numerics.apply()  # before anything is built or recorded: the run's environment shows them
    suite = SUITES[args.suite]
    cases = plan(parser, args, suite, device, profile)
    if args.dry_run:
        done = completed_case_keys(results_path) if resuming else set()
        todo = [case for case in cases if case.key not in done]
        for case in todo:
            print(case.label())
        print(f"{len(todo)} cases" + (f" to run, {len(cases) - len(todo)} already complete" if resuming else ""))
        return 0

    if not resuming:
        preset = args.preset if suite.uses_presets else None
        run_id = args.run_id or f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{preset or suite.name}"
        results_path = args.results_dir / profile.name / f"{run_id}.csv"
        metadata = {"run_id": run_id, "suite": suite.name, "preset": preset, "gpu_profile": profile.name,
                    "device_name": device_name, "argv": argv, "command": "python run_bench.py " + shlex.join(argv),
                    "environment": environment(), "cases_planned": len(cases), "numerics": numerics.as_dict(),
                    **versioned_metadata(measurement_methods()), "registry": registry_snapshot(),
                    "plugins": [plugin.to_json() for plugin in loaded_plugins()]}
    try:
        with RunLock(results_path):  # one writer per run: a second sweep or resume of it refuses
            if resuming:
                metadata.setdefault("resumed", []).append({"at": now_iso(), "environment": environment()})
            elif results_path.exists():
                parser.error(f"--run-id: {results_path} exists; use --resume {metadata['run_id']} to complete it")
            else:
                metadata["started"] = now_iso()
            code = sweep(parser, args, suite, cases, results_path, metadata, device, profile, device_name, numerics)
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


def sweep(parser: argparse.ArgumentParser, args: argparse.Namespace, suite: Suite, cases: Sequence[Any],
          results_path: Path, metadata: dict[str, Any], device: str, profile: GpuProfile, device_name: str,
          numerics: Numerics) -> int:
    """Run the planned cases into the run's files (the caller holds the run's lock) and summarise them.
    Returns the exit status: 130 when interrupted."""
    min_time = args.min_time if args.min_time is not None else (0.5 if device == "cuda" else 0.2)
    policy = TimingPolicy(min_time_s=min_time, l2_flush=device == "cuda", cuda_graphs=args.cuda_graphs,
                          cpu_allocator=args.cpu_allocator, sittings=args.sittings)
    metadata["timing"] = {
        "rounds": suite.pairing,
        "min_time_s_per_pass": min_time, "min_rounds": policy.min_rounds, "max_rounds": policy.max_rounds,
        "warmup": {"min_calls": policy.warmup_rounds, "max_calls": policy.warmup_max_calls,
                   "max_s": policy.warmup_max_s, "settled_when": f"{WARMUP_WINDOW} consecutive calls within the "
                                                                  f"noise limit of each other"},
        "sittings": policy.sittings, "l2_flush": policy.l2_flush, "cuda_graphs": policy.cuda_graphs,
        "cpu_allocator": policy.cpu_allocator, "noise_limit": policy.noise_limit_for(torch.device(device)),
        "speedup_interval": SPEEDUP_INTERVAL_METHOD, "retry_noisy": args.retry_noisy,
        "compile_limit_s": args.compile_limit}
    results_path.parent.mkdir(parents=True, exist_ok=True)
    metadata_path = results_path.with_suffix(".json")
    on_ray = uses_ray(args)
    executor = ray_executor(parser, args, device, suite, metadata, metadata_path) if on_ray else in_process
    if not on_ray:
        metadata["timing"]["workers"] = 1
    write_metadata(metadata_path, metadata)

    bar = SweepProgress(len(cases), disable=args.quiet)
    ctx = RunContext(run_id=metadata["run_id"], profile=profile, device_name=device_name, timing=policy,
                     numerics=numerics, on_progress=None if on_ray else bar.advance, compile_limit_s=args.compile_limit,
                     deadline=None if args.time_budget is None else time.time() + args.time_budget)
    stop_at = None if args.time_budget is None else time.monotonic() + args.time_budget
    run = RetryNoisy(suite.run_group, args.retry_noisy) if args.retry_noisy else suite.run_group
    stopped_by: int | None = None  # a signal that stopped the sweep at once
    try:
        with StopOnSignals() as signals:
            run_sweep(cases, ctx, results_path, progress=bar.progress, starting=bar.starting, run=run, stop_at=stop_at,
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
    lines = [suite.summary(frame),
             f"\n{bar.written} cases run, {bar.already_complete} already complete; rows in {results_path}"]
    devices = sorted(frame["device_name"].dropna().unique())
    if len(devices) > 1:
        lines.append(f"rows of {len(devices)} device names ({', '.join(devices)}): the report and compare take no "
                     f"ratio between two of them")
    noise = noise_summary(frame, min_time)
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
