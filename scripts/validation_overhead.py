"""Per-forward cost of input validation: every check uncached (what each forward ran before the cache)
against a cache hit (what it runs now), beside the forward itself, in interleaved rounds.

    python scripts/validation_overhead.py                 # every family at 14² and 56², batch 8, CPU
    python scripts/validation_overhead.py --resolutions 14 --rounds 31

Each round times ``--calls`` calls of ``validate_input`` (the checks), as many of ``check_input`` (the
cached path) and one forward under ``torch.inference_mode``, in turn, so that drift of the machine lands
on all three alike. Prints a markdown table of the medians over rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch

import attentions

OPTIONS = {"full": {}, "window": {"window_size": 7}, "deformable": {}, "bra": {"topk": 4}}


def per_call_us(function: Callable[[], object], calls: int) -> float:
    begin = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - begin) / calls * 1e6


def measure(family: str, resolution: int, batch: int, rounds: int, calls: int) -> tuple[float, float, float]:
    """Medians over rounds of µs per call: uncached checks, cached checks, forward."""
    torch.manual_seed(0)
    options = dict(OPTIONS[family])
    if family == "deformable":
        options["fmap_size"] = resolution
    module = attentions.build(family, dim=64, num_heads=2, **options)
    x = torch.randn(batch, resolution, resolution, 64)
    samples: tuple[list[float], list[float], list[float]] = ([], [], [])
    with torch.inference_mode():
        module(x)  # warm-up, and the cache's first (missing) entry
        for _ in range(rounds):
            samples[0].append(per_call_us(lambda: module.validate_input(x), calls))
            samples[1].append(per_call_us(lambda: module.check_input(x), calls))
            samples[2].append(per_call_us(lambda: module(x), 1))
    return tuple(statistics.median(s) for s in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[14, 56])
    parser.add_argument("--families", nargs="+", default=list(OPTIONS), choices=list(OPTIONS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=2000, help="validation calls per round (default 2000)")
    args = parser.parse_args()
    print(f"{torch.get_num_threads()} threads, batch {args.batch}, C 64, 2 heads, float32, forward; medians of "
          f"{args.rounds} interleaved rounds")
    print("| family | map | validation before (µs) | after: cache hit (µs) | forward (µs) | before, % of forward "
          "| after, % of forward |")
    print("|---|---|---|---|---|---|---|")
    for resolution in args.resolutions:
        for family in args.families:
            before, after, forward = measure(family, resolution, args.batch, args.rounds, args.calls)
            print(f"| {family} | {resolution}² | {before:.1f} | {after:.2f} | {forward:.0f} | "
                  f"{100 * before / forward:.2f}% | {100 * after / forward:.3f}% |", flush=True)


if __name__ == "__main__":
    main()
