"""A sweep on Ray (``--workers N``, ``--ray-address``): checking the flags, starting the cluster, the executor."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

from bench.execution.runner import Executor
from bench.schema.metadata import write_metadata
from bench.suites.base import Suite

DEFAULT_RETRIES = 2  # --retries


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


def ray_executor(parser: argparse.ArgumentParser, args: argparse.Namespace, device: str, suite: Suite,
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

    return cluster.RayExecutor(device, workers, retries(args), suite.base_row,
                               threads=threads, on_node=on_node)


def retries(args: argparse.Namespace) -> int:
    return DEFAULT_RETRIES if args.retries is None else args.retries
