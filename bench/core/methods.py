"""The methods a run's rows depend on, by identifier. A run records them (``metadata["methods"]``, see
``bench.schema.metadata.versioned_metadata``) so that its readers compare only figures made the same way:
``bench.analysis.compare`` judges no interval against one made by another method."""

from __future__ import annotations

from bench.core.flops import FLOP_CONVENTION
from bench.core.measure import TIMING_METHOD
from bench.core.statistics import LATENCY_INTERVAL_METHOD, SPEEDUP_INTERVAL_METHOD


def measurement_methods() -> dict[str, str]:
    """The identifiers of this code's methods, by the keys of ``bench.schema.columns.METHODS``: how latencies
    are timed, how the intervals of median latencies and of paired speedups are made, and how work is
    counted."""
    return {"timing": TIMING_METHOD, "latency_interval": LATENCY_INTERVAL_METHOD,
            "speedup_interval": SPEEDUP_INTERVAL_METHOD, "flops": FLOP_CONVENTION}
