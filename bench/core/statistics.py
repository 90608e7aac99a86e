"""The statistics of paired rounds: a speedup over the reference as the median of per-round ratios, and 95%
intervals of speedups and of median latencies by batch means of log values. Their method identifiers are
recorded with every run (``bench.core.methods``): intervals made by different methods do not compare."""

from __future__ import annotations

import math

import numpy as np

from bench.core.measure import Timing

# A paired speedup's interval comes from this many consecutive batches of rounds: few and long, because a
# shared CPU's speed for one pass relative to another changes in stretches of 5-15 s (measured on the 2-core
# development machine), and only batches longer than those are close to independent.
SPEEDUP_BATCHES = 5
# How paired_speedup's interval is made, recorded with a run: intervals of different methods do not compare.
SPEEDUP_INTERVAL_METHOD = "log-batch-means-t95"
# How median_interval's interval of a median latency is made: log_batch_interval too, of the log latencies.
LATENCY_INTERVAL_METHOD = SPEEDUP_INTERVAL_METHOD
# Two-sided 95% quantiles of Student's t distribution by degrees of freedom (batches - 1).
STUDENT_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def log_batch_interval(log_values: np.ndarray, sittings: tuple[int, ...]) -> tuple[float, float, float]:
    """(center, low, high) on the log scale: the median of per-round log values and a 95% confidence interval
    for it by batch means. The batches are the sittings when there were several, else ``SPEEDUP_BATCHES``
    consecutive runs of rounds (one per round when there are fewer rounds); the interval is m ± t · s / √batches,
    where m is the median and s the standard deviation of the batches' medians (``SPEEDUP_INTERVAL_METHOD``).
    Treating rounds as independent (a bootstrap over single rounds, or over short blocks) misses what drifts
    over seconds and gives an interval that other runs fall outside of. One round has no interval (NaN)."""
    center = float(np.median(log_values))
    if len(sittings) > 1:
        batches = np.split(log_values, np.cumsum(sittings)[:-1])
    else:
        batches = np.array_split(log_values, min(SPEEDUP_BATCHES, len(log_values)))
    if len(batches) < 2:
        return center, math.nan, math.nan
    batch_medians = [np.median(batch) for batch in batches]
    half_width = STUDENT_T_975[len(batches) - 1] * float(np.std(batch_medians, ddof=1)) / math.sqrt(len(batches))
    return center, center - half_width, center + half_width


def paired_speedup(reference: Timing, timing: Timing) -> tuple[float, float, float]:
    """Speedup over ``reference`` timed in the same rounds: the median of the per-round ratios
    (reference ÷ this), and a 95% confidence interval for it by batch means of the log-ratios
    (``log_batch_interval``). On the log scale a ratio's interval is always above zero, and 2× slower
    sits as far below as 2× faster sits above."""
    log_ratios = np.log(np.asarray(reference.times_ms) / np.asarray(timing.times_ms))
    return tuple(math.exp(v) for v in log_batch_interval(log_ratios, reference.sittings))


def median_interval(timing: Timing) -> tuple[float, float]:
    """A 95% confidence interval (ms) of a pass's median latency, by batch means of the log latencies
    (``log_batch_interval``): what ``compare`` tests two runs' medians with. NaN for one round."""
    _, low, high = log_batch_interval(np.log(np.asarray(timing.times_ms)), timing.sittings)
    return math.exp(low), math.exp(high)
