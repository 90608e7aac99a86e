"""Readable names of configurations, backends and cases from their identity alone (no registry, no torch), so
that a dry run's listing, a report's tables and compare's verdicts name a case the same way."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import pandas as pd

from bench.schema.columns import EAGER

# Options that read as a short tag in a configuration's name, in this order; the others read 'name=value'.
OPTION_TAGS: dict[str, Callable[[Any], str]] = {
    "topk": lambda v: f"topk={v}",
    "kv_downsample_mode": str,  # the mode alone: avgpool, ada_maxpool, ...
    "kv_downsample_ratio": lambda v: f"r={v}",
    "kv_per_win": lambda v: f"kv={v}",
}


def _tag(name: str, value: Any) -> str:
    if name in OPTION_TAGS:
        return OPTION_TAGS[name](value)
    return name if value is True else f"{name}={value}"


def configuration_name(family: str, options: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
    """A configuration's readable name: the family alone for its ``defaults`` ('bra', 'full'), else the family
    and a tag per option that differs from its default, e.g. 'bra (topk=1, avgpool, r=2)'; a True flag reads
    as its name."""
    changed = {k: v for k, v in options.items() if k not in defaults or defaults[k] != v}
    order = [k for k in OPTION_TAGS if k in changed] + sorted(k for k in changed if k not in OPTION_TAGS)
    return f"{family} ({', '.join(_tag(k, changed[k]) for k in order)})" if order else family


def case_label(configuration: str, backend: str, resolution: int, dim: int, heads: int, batch: int, dtype: str,
               phase: str) -> str:
    """An attention case's one-line label, e.g. 'bra (topk=1)/sdpa 14² C64 h2 b2 float32 fwd'."""
    return f"{configuration}/{backend} {resolution}² C{dim} h{heads} b{batch} {dtype} {phase}"


# A compiled backend's label: the backend, this mark, and the mode where it is not torch.compile's default.
COMPILED = "+compile"
DEFAULT_MODE = "default"


def backend_label(backend: str, compile: Any) -> str:
    """The backend as tables, plots, compare and gates name it: the backend alone for an eager case (an empty
    compile mode too: a row of before the mode was recorded), 'torch+compile' for torch.compile's default mode,
    'torch+compile:max-autotune' for another mode."""
    if not isinstance(compile, str) or compile in ("", EAGER):
        return backend
    return f"{backend}{COMPILED}" if compile == DEFAULT_MODE else f"{backend}{COMPILED}:{compile}"


def backend_labels(frame: pd.DataFrame) -> pd.Series:
    """``backend_label`` of every row of a results frame; its backend column as it is where it has no compile
    column (a frame of before the compile mode, or built by hand)."""
    if "compile" not in frame.columns:
        return frame["backend"].copy()
    return pd.Series([backend_label(b, c) for b, c in zip(frame["backend"], frame["compile"])], index=frame.index,
                     dtype=frame["backend"].dtype)


def label_parts(label: str) -> tuple[str, str]:
    """(backend, compile mode) of a backend label: ``backend_label``'s inverse."""
    backend, compiled, mode = label.partition(COMPILED)
    if not compiled:
        return label, EAGER
    return backend, mode.removeprefix(":") or DEFAULT_MODE
