"""The tables of BRA (bi-level routing attention), each registered once in ``bench.report.catalog``: its
ablations over the routed regions (topk) and over the kv downsampling mode, and its fast paths against the
official algorithm, the flex backend and dense flash attention.
"""

from __future__ import annotations

import pandas as pd

from bench.analysis.variants import (has_compiled_reference, with_backend, with_compiled_reference, with_dense,
                                     with_reference, with_variants)
from bench.report.catalog import table
from bench.report.cells import (CONVENTIONS, case_columns, compiled_reference_column, in_case_order, latency_or_status,
                                peak_memory, memory_ratio, ratio_text, speedup_cell, value_or_none)
from bench.schema.registry_facts import RegistryFacts
from bench.report.tabular import Column, Table

BRA = "bra"


def _stage1_width(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows at the family's most common (dim, heads): ablations compare like with like."""
    if frame.empty:
        return frame
    width = frame.groupby(["dim", "heads"]).size().idxmax()
    return frame[(frame["dim"] == width[0]) & (frame["heads"] == width[1])]


def ablation_table(frame: pd.DataFrame, axis: str) -> Table | None:
    """(b) BRA ablation over ``axis`` (topk or kv_downsample_mode) × resolution: GMACs, latency, memory."""
    bra = _stage1_width(frame[frame["family"] == BRA])
    if axis == "topk":
        bra = bra[bra["kv_downsample_mode"] == "identity"]
    else:
        common_topk = bra["topk"].mode()
        bra = bra[bra["topk"] == common_topk.iloc[0]] if len(common_topk) else bra
    if bra[axis].nunique() < 2:
        return None
    resolutions = sorted(bra["resolution"].unique())
    columns = [Column("Phase", heading=True), Column("Backend", heading=True),
               Column(axis.replace("kv_downsample_mode", "kv mode"))]
    for r in resolutions:
        columns += [Column(f"{r}² GMACs", lambda v: f"{v:.3g}", "min", span=f"{r}²"),
                    Column(f"{r}² ms", best="min", span=f"{r}²"),
                    Column(f"{r}² MB", lambda v: f"{v:.4g}", "min", span=f"{r}²")]
    dim, heads = bra["dim"].iloc[0], bra["heads"].iloc[0]
    what = "top-k routed regions" if axis == "topk" else "kv downsampling mode"
    table = Table(f"bra_{'topk' if axis == 'topk' else 'kv_modes'}",
                  f"BRA ablation over the {what} (C {dim}, {heads} heads, batch {bra['batch'].iloc[0]}, "
                  f"{bra['dtype'].iloc[0]})", columns,
                  note="GMACs, latency (ms, median [p20–p80]) and peak memory (MB) per resolution (tokens per side). "
                  "Best per column within each phase and backend in bold. " + CONVENTIONS)
    blocks: dict[tuple, int] = {}
    keyed = {(r["phase"], r["backend"], r[axis], r["resolution"]): r for _, r in bra.iterrows()}
    label = (lambda v: str(int(v))) if axis == "topk" else str
    ran = sorted(set(zip(bra["phase"], bra["backend"], bra[axis])), key=lambda k: (k[0], k[1], str(type(k[2])), k[2]))
    for phase, backend, value in ran:  # only what the sweep ran: no row of "—" for a combination it never did
        cells: list[object] = [phase, backend, label(value)]
        for r in resolutions:
            row = keyed.get((phase, backend, value, r))
            if row is None:
                cells += [None, None, None]
            else:
                cells += [value_or_none(row["gmacs"]), latency_or_status(row), peak_memory(row)]
        table.rows.append(cells)
        table.blocks.append(blocks.setdefault((phase, backend), len(blocks)))
    return table


@table("bra_topk", "attentions", 20)
def bra_topk_table(frame: pd.DataFrame, facts: RegistryFacts) -> Table | None:
    """The ablation over topk (``ablation_table``); BRA's rows need no registry facts."""
    return ablation_table(frame, "topk")


@table("bra_kv_modes", "attentions", 30)
def bra_kv_mode_table(frame: pd.DataFrame, facts: RegistryFacts) -> Table | None:
    """The ablation over the kv downsampling mode (``ablation_table``)."""
    return ablation_table(frame, "kv_downsample_mode")


@table("bra_fast_paths", "attentions", 50)
def bra_fast_path_table(frame: pd.DataFrame, facts: RegistryFacts) -> Table | None:
    """(d) BRA's fast paths, in the terms of their targets: speedup and memory against the official
    algorithm (memory target: 1/topk of it), speedup over the flex backend, and speedup over dense
    flash attention as a share of the attention FLOP ratio (regions / topk; identity kv mode); and the speedup
    over the compiled reference, where some row was timed against one."""
    rows = with_reference(with_variants(frame, facts.defaults))
    compiled = has_compiled_reference(rows)
    if compiled:
        rows = with_compiled_reference(rows)
    rows = with_dense(with_backend(rows, "flex", "flex"), "sdpa_flash", "flash")
    rows = rows[(rows["family"] == BRA) & (rows["kv_downsample_mode"].fillna("identity") == "identity")
                & (rows["backend"] != rows["reference_backend"])]
    if rows.empty:
        return None
    table = Table("bra_fast_paths", "BRA fast paths against the official algorithm, the flex backend and dense "
                  "flash attention",
                  [*case_columns(), Column("Latency ms", best="min"),
                   Column("× ref", ratio_text, "max", note="× ref: speedup over the official algorithm (the reference "
                          "backend)."),
                   *([compiled_reference_column(rows)] if compiled else []),
                   Column("Mem/ref", ratio_text, "min", note="Mem/ref: peak memory over the reference's; the target is "
                          "1/topk."),
                   Column("1/topk", ratio_text),
                   Column("× flex", ratio_text, "max", note="× flex: speedup over BRA's flex backend."),
                   Column("× flash", ratio_text, "max", note="× flash: speedup over full attention through SDPA's "
                          "flash kernel."),
                   Column("FLOP ratio", lambda v: f"{v:.3g}", paper=False,
                          note="FLOP ratio: the attention FLOP ratio, regions / topk."),
                   Column("% of FLOP ratio", lambda v: f"{v:.0%}", "max",
                          note="% of FLOP ratio: × flash as a share of the attention FLOP ratio (regions / topk)."),
                   Column("TFLOP/s", lambda v: f"{v:.3g}", "max", paper=False, note="TFLOP/s: from fvcore's MACs."),
                   Column("% peak", lambda v: f"{v:.1f}", "max", paper=False,
                          note="% peak: TFLOP/s as a share of the profile's dense peak."),
                   Column("Tile eff.", lambda v: f"{v:.0%}", "max",
                          note="Tile eff.: the share of the multiply-adds its kernels' matrix tiles issue that is "
                          "useful (the backends that report it).")],
                  note="Best per column within each case in bold. " + CONVENTIONS)
    blocks: dict[tuple, int] = {}
    for _, row in in_case_order(rows, facts).iterrows():
        ok = row["status"] == "ok"
        flop_ratio = row["n_win"] ** 2 / row["topk"]
        table.rows.append([
            row["variant"], row["backend"], f"{row['resolution']}²", f"{row['dim']}/{row['heads']}", row["phase"],
            latency_or_status(row), speedup_cell(row),
            *([speedup_cell(row, "compiled_reference")] if compiled else []),
            memory_ratio(row, "reference"), 1 / row["topk"],
            None if row["backend"] == "flex" else value_or_none(row["flex_speedup"]),
            value_or_none(row["flash_speedup"]),
            flop_ratio, value_or_none(row["flash_speedup"] / flop_ratio),
            value_or_none(row["tflops_achieved"]) if ok else None, value_or_none(row["pct_of_peak"]) if ok else None,
            value_or_none(row["tile_efficiency"]) if ok else None])
        table.blocks.append(blocks.setdefault(
            (row["phase"], row["resolution"], row["dim"], row["variant"]), len(blocks)))
    return table
