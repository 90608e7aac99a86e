"""Attention *variants* in a results frame, and the partner rows that ratios are taken against.

A variant is a family plus the options that tell its rows apart.
An option is a variant key of a family when, at some resolution, the family's rows take more than
one value of it (topk, kv mode, ...). Options that change only with the resolution (n_win chosen
per resolution, a deformable stride) are sweep policies, not variants, and are left out, so one
variant can be followed across resolutions.

Torch-free and registry-free: the families' default options come in as ``defaults`` (family -> its
default options), from the run's recorded registry (``bench.schema.registry_facts``).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import numpy as np
import pandas as pd

from bench.schema.labels import configuration_name

Defaults = Mapping[str, Mapping[str, Any]]  # family -> its default options

# What a row and its partner share: the case's shape, and the device it ran on by name (a run on several
# GPU models pairs rows of one model only, never a ratio across two).
CASE_SHAPE = ["resolution", "batch", "dim", "heads", "dtype", "phase", "device_name"]
PAIRED = ["status", "latency_ms_median", "peak_mem_mb"]


def effective_options(frame: pd.DataFrame, defaults: Defaults) -> pd.Series:
    """Each row's options over its family's ``defaults`` (none for a family they do not hold)."""
    return frame.apply(lambda row: {**defaults.get(row["family"], {}), **json.loads(row["options"])}, axis=1)


def variant_keys(frame: pd.DataFrame, defaults: Defaults) -> dict[str, list[str]]:
    """Per family, the option names that distinguish its variants.

    First the options that, among the rows setting them, take several values at one resolution and
    width (topk in a topk sweep, the kv mode); then, while two different cases of the same shape
    would still share a label, the other options they set.
    """
    keys: dict[str, list[str]] = {}
    explicit = frame["options"].map(json.loads)
    effective = effective_options(frame, defaults)
    for family, rows in frame.groupby("family", sort=False):
        names = sorted({k for opts in explicit[rows.index] for k in opts})
        varying = []
        for name in names:
            setting = rows[[name in explicit[i] for i in rows.index]]
            values = pd.Series([json.dumps(effective[i][name]) for i in setting.index], index=setting.index)
            if (values.groupby([setting["resolution"], setting["dim"]]).nunique() > 1).any():
                varying.append(name)
        for name in [n for n in names if n not in varying]:
            if not _labels_collide(rows, effective, varying, defaults):
                break
            varying.append(name)
        keys[family] = sorted(varying)
    return keys


def _label(family: str, options: dict, keys: list[str], defaults: Defaults) -> str:
    return configuration_name(family, {k: options[k] for k in keys if k in options}, defaults.get(family, {}))


def _labels_collide(rows: pd.DataFrame, effective: pd.Series, keys: list[str], defaults: Defaults) -> bool:
    """Whether two different cases of one shape and backend would get the same label."""
    labels = [_label(f, effective[i], keys, defaults) for f, i in zip(rows["family"], rows.index)]
    shape = rows[["backend", "device", *CASE_SHAPE]].assign(label=labels, case=rows["case_key"])
    return bool((shape.groupby(["label", "backend", "device", *CASE_SHAPE])["case"].nunique() > 1).any())


def with_variants(frame: pd.DataFrame, defaults: Defaults) -> pd.DataFrame:
    """A copy of ``frame`` with a ``variant`` column: the family and its variant keys' values as named by
    ``configuration_name`` against the families' ``defaults``, e.g. 'bra' (the defaults), 'bra (topk=1)',
    'bra (avgpool)'."""
    if frame.empty:
        return frame.assign(variant=pd.Series(dtype=str))
    keys = variant_keys(frame, defaults)
    effective = effective_options(frame, defaults)
    return frame.assign(variant=[_label(f, effective[i], keys[f], defaults)
                                 for f, i in zip(frame["family"], frame.index)])


def _paired(frame: pd.DataFrame, partners: pd.DataFrame, keys: list[str], prefix: str) -> pd.DataFrame:
    """``frame`` with each row's partner (matched on ``keys``) as ``<prefix>_status``, ``_latency_ms``,
    ``_peak_mem_mb``, and ``<prefix>_speedup`` (partner latency / latency) and ``<prefix>_mem_ratio``
    (peak / partner peak), both only where the row and its partner are ok."""
    partners = partners[keys + PAIRED].drop_duplicates(keys, keep="last").rename(columns={
        "status": f"{prefix}_status", "latency_ms_median": f"{prefix}_latency_ms",
        "peak_mem_mb": f"{prefix}_peak_mem_mb"})
    out = frame.merge(partners, on=keys, how="left")
    out.index = frame.index
    both_ok = (out["status"] == "ok") & (out[f"{prefix}_status"] == "ok")
    speedup = out[f"{prefix}_latency_ms"] / out["latency_ms_median"]
    memory = out["peak_mem_mb"] / out[f"{prefix}_peak_mem_mb"]
    out[f"{prefix}_speedup"] = speedup.where(both_ok & np.isfinite(speedup))
    out[f"{prefix}_mem_ratio"] = memory.where(both_ok & np.isfinite(memory))
    return out


def with_reference(frame: pd.DataFrame) -> pd.DataFrame:
    """Pair every row with its family's reference-backend row for the same case (prefix ``reference``).

    Where the run timed the two in paired rounds (``speedup_vs_ref``), ``reference_speedup`` is that
    paired speedup, with its confidence interval as ``reference_speedup_low`` / ``_high``."""
    keys = ["family", "options", "device", *CASE_SHAPE]
    out = _paired(frame, frame[frame["backend"] == frame["reference_backend"]], keys, "reference")
    if "speedup_vs_ref" not in out.columns:  # a frame assembled by hand, without the paired columns
        return out
    paired = out["speedup_vs_ref"].notna() & out["reference_speedup"].notna()
    out["reference_speedup"] = out["speedup_vs_ref"].where(paired, out["reference_speedup"])
    out["reference_speedup_low"] = out["speedup_ci_low"].where(paired)
    out["reference_speedup_high"] = out["speedup_ci_high"].where(paired)
    return out


def has_compiled_reference(frame: pd.DataFrame) -> bool:
    """Whether some row was timed against a compiled reference (``speedup_vs_compiled_ref``)."""
    return "speedup_vs_compiled_ref" in frame.columns and bool(frame["speedup_vs_compiled_ref"].notna().any())


def with_compiled_reference(frame: pd.DataFrame) -> pd.DataFrame:
    """Pair every row with the compiled reference it was timed against: the row of the same case whose backend
    (a label, ``bench.schema.labels.backend_label``) is its ``compiled_ref`` (prefix ``compiled_reference``).
    ``compiled_reference_speedup`` is the paired ``speedup_vs_compiled_ref``, with its confidence interval as
    ``compiled_reference_speedup_low`` / ``_high``, where both rows are ok; empty elsewhere."""
    keys = ["family", "options", "device", *CASE_SHAPE, "compiled_ref"]
    out = _paired(frame, frame.assign(compiled_ref=frame["backend"]), keys, "compiled_reference")
    paired = out["speedup_vs_compiled_ref"].notna() & out["compiled_reference_speedup"].notna()
    out["compiled_reference_speedup"] = out["speedup_vs_compiled_ref"].where(paired)
    out["compiled_reference_speedup_low"] = out["compiled_speedup_ci_low"].where(paired)
    out["compiled_reference_speedup_high"] = out["compiled_speedup_ci_high"].where(paired)
    return out


def with_full_attention(frame: pd.DataFrame) -> pd.DataFrame:
    """Pair every row with full attention on the same backend and case shape (prefix ``full``)."""
    keys = ["backend", "device", *CASE_SHAPE]
    return _paired(frame, frame[frame["family"] == "full"], keys, "full")


def with_backend(frame: pd.DataFrame, backend: str, prefix: str) -> pd.DataFrame:
    """Pair every row with the same case of its own family on ``backend`` (e.g. 'flex')."""
    keys = ["family", "options", "device", *CASE_SHAPE]
    return _paired(frame, frame[frame["backend"] == backend], keys, prefix)


def with_dense(frame: pd.DataFrame, backend: str, prefix: str) -> pd.DataFrame:
    """Pair every row with full attention on ``backend`` (e.g. 'sdpa_flash') at the same case shape."""
    keys = ["device", *CASE_SHAPE]
    return _paired(frame, frame[(frame["family"] == "full") & (frame["backend"] == backend)], keys, prefix)
