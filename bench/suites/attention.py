"""The attention suite (``--suite attentions``, the default): attention layers of the registry's families,
planned from a preset narrowed by the sweep's flags, timed in paired rounds per shape."""

from __future__ import annotations

import argparse
import json
from typing import Sequence

import pandas as pd
import torch

import attentions
from attentions import AttentionConfigError

from bench.core.profiles import GpuProfile
from bench.schema.labels import backend_labels
from bench.schema.columns import COLUMNS
from bench.suites.attention_rows import base_row, comparison_groups, reference_case, run_group
from bench.suites.base import PlanError, SuiteRecord
from bench.suites.cases import Case, SweepBlock, unique_cases
from bench.suites.planning import check_input_fits, check_known, summary_cell, text_table
from bench.suites.presets import COMMON_OPTIONS, KV_MODES, STAGE1_WIDTH, kv_axis, preset_blocks, topk_axis


def option_flag(flag: str) -> str:
    """The argparse attribute of a flag: '--kernel-sizes' -> 'kernel_sizes'."""
    return flag.removeprefix("--").replace("-", "_")


def apply_overrides(request: argparse.Namespace, blocks: list[SweepBlock]) -> list[SweepBlock]:
    """Narrow or replace the preset's axes with the sweep's flags (validated here)."""
    known = list(attentions.list_attentions())
    check_known("--families", request.families, known)
    families = request.families or known
    check_known("--backends", request.backends,
                sorted({b for f in families for b in attentions.list_attentions()[f]["backends"]}), ", ".join(families))
    check_known("--kv-modes", request.kv_modes, KV_MODES)
    for flag, option in (("--auto-pad", "auto_pad"), ("--kernel-sizes", "kernel_size"), ("--dilations", "dilation")):
        if getattr(request, option_flag(flag)) and not any(option in attentions.family_options(f) for f in families):
            having = [f for f in known if option in attentions.family_options(f)]
            raise PlanError(f"{flag}: none of {', '.join(families)} has the option {option}; "
                            f"the families that have it: {', '.join(having)}")
    out = []
    for block in blocks:
        block_families = [f for f in (block.families or known) if f in families]
        if not block_families:
            continue
        block.families = block_families
        if request.backends and not block.backends_fixed:
            block.backends = list(request.backends)
        if request.resolutions:
            dim, heads = STAGE1_WIDTH
            block.shapes = [(r, dim, heads, {}) for r in request.resolutions]
        if request.topk:
            block.option_axes["topk"] = topk_axis(request.topk)
            block.shapes = [(r, d, h, {k: v for k, v in o.items() if k != "topk"}) for r, d, h, o in block.shapes]
        if request.kv_modes:
            block.option_axes["kv"] = kv_axis(request.kv_modes)
        if request.auto_pad:
            block.option_axes["auto_pad"] = [{"auto_pad": True}]  # crossed only with the families that have it
        if request.kernel_sizes:
            block.option_axes["kernel_size"] = [{"kernel_size": k} for k in request.kernel_sizes]
        if request.dilations:  # the given dilations replace the preset's, DiNAT's rule included
            block.option_axes["dilation"] = [{"dilation": d} for d in request.dilations]
            if "variant" in block.option_axes:
                undilated = [{k: v for k, v in b.items() if k != "dilation"} for b in block.option_axes["variant"]]
                block.option_axes["variant"] = [dict(t) for t in dict.fromkeys(tuple(b.items()) for b in undilated)]
        block.batches = request.batch or block.batches
        block.dtypes = request.dtype or block.dtypes
        block.phases = request.phase or block.phases
        block.compile_modes = list(dict.fromkeys(request.compile)) if request.compile else block.compile_modes
        out.append(block)
    return out


def check_configurations(cases: Sequence[Case], profile: GpuProfile) -> None:
    """Build every configuration of the plan on the meta device (no memory, no compute) and ask it whether it
    takes its case's map size, and whether its input fits its device: PlanError naming a bad value."""
    for case in cases:
        check_input_fits(case.label(), (case.batch, case.resolution, case.resolution, case.dim), case.dtype, profile)
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
            raise PlanError(f"{case.family} ({options or 'default options'}) at {case.resolution}×{case.resolution}, "
                            f"C {case.dim}, {case.heads} heads: {exc}") from None


def summary_table(frame: pd.DataFrame) -> str:
    """One line per case and one column per backend: median latency and peak memory, or the status."""
    if frame.empty:
        return "(no rows)"
    options = frame["options"].map(lambda text: ",".join(f"{k}={v}" for k, v in json.loads(text).items()))
    shown = frame.assign(cell=frame.apply(summary_cell, axis=1), options=options, backend=backend_labels(frame))
    keys = ["family", "options", "resolution", "batch", "dtype", "phase"]
    groups = shown.groupby(keys, sort=False, dropna=False)
    table = groups["cell"].agg(list).to_frame()  # keeps the case order of the run
    for backend in shown["backend"].unique():
        table[backend] = groups.apply(lambda g, b=backend: ", ".join(g.loc[g["backend"] == b, "cell"]),
                                      include_groups=False)
    table.insert(0, "gmacs", groups["gmacs"].max().map("{:.4g}".format))
    return text_table(table.drop(columns="cell").reset_index().fillna(""))


def plan(request: argparse.Namespace, device: str, profile: GpuProfile) -> list[Case]:
    """The preset's cases narrowed by the sweep's flags, checked, in the order they run: each comparison group's
    cases together (timed in paired rounds)."""
    blocks = apply_overrides(request, preset_blocks(request.preset, profile))
    cases = unique_cases(blocks, device, COMMON_OPTIONS)
    check_configurations(cases, profile)
    return [case for group in comparison_groups(cases) for case in group]


# Attention layers: a case is a family's configuration on one backend at one shape, dtype and phase.
ATTENTION_SUITE = SuiteRecord(
    name="attentions",
    flags=frozenset({"preset", "families", "topk", "kv_modes", "kernel_sizes", "dilations", "auto_pad", "sittings"}),
    uses_presets=True, pairing="paired: a shape's cases round-robin in one process", columns=COLUMNS, plan=plan,
    groups=comparison_groups, run_group=run_group, base_row=base_row, reference_case=reference_case,
    summary=summary_table)
