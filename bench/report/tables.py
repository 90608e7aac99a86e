"""The report's general tables, each registered once in ``bench.report.catalog``: every attention variant
(main), every backend against its family's reference (backends), what compiling cost (compile_times,
model_compile_times: only for runs with compiled cases), and the models (models). The BRA tables are
``bench.report.tables_bra``'s; the cells and rules they share ``bench.report.cells``'.
"""

from __future__ import annotations

import pandas as pd

from bench.analysis.variants import (has_compiled_reference, with_compiled_reference, with_full_attention,
                                     with_reference, with_variants)
from bench.report.catalog import table
from bench.report.cells import (CONVENTIONS, case_columns, compile_cells, compile_columns, compiled_reference_column,
                                compiled_rows, in_case_order, latency_cell, latency_or_status, peak_memory,
                                memory_ratio, ratio_text, speedup_cell, value_or_none)
from bench.schema.registry_facts import RegistryFacts
from bench.report.tabular import Column, Table

MB = 2 ** 20


def params_millions(row: pd.Series, facts: RegistryFacts) -> float:
    """Parameter count from the recorded parameter bytes and the dtype's element size."""
    return row["param_mb"] * MB / facts.element_size(row["dtype"]) / 1e6


@table("main", "attentions", 10)
def main_table(frame: pd.DataFrame, facts: RegistryFacts) -> Table:
    """(a) Every variant × backend × resolution: cost, speed, memory, and ratios to full and to the reference."""
    rows = with_full_attention(with_reference(with_variants(frame, facts.defaults)))
    table = Table("main", "Attention variants: cost, latency and memory, against full attention and the reference",
                  [*case_columns(), Column("Params (M)", lambda v: f"{v:.3f}", paper=False),
                   Column("GMACs", lambda v: f"{v:.3g}", "min"), Column("Latency ms", best="min"),
                   Column("Img/s", lambda v: f"{v:.4g}", "max", paper=False, note="Img/s: images per second."),
                   Column("Mem MB", lambda v: f"{v:.4g}", "min", note="Mem MB: peak memory."),
                   Column("× full", ratio_text, "max", note="× full: speedup over full attention on the same backend."),
                   Column("Mem/full", ratio_text, "min", paper=False,
                          note="Mem/full: peak memory over full attention's."),
                   Column("× ref", ratio_text, "max", note="× ref: speedup over the family's reference backend."),
                   Column("Mem/ref", ratio_text, "min", paper=False,
                          note="Mem/ref: peak memory over the reference's.")],
                  note="Best per column within each resolution, width and phase in bold. " + CONVENTIONS)
    blocks: dict[tuple, int] = {}
    for _, row in in_case_order(rows, facts).iterrows():
        ok = row["status"] == "ok"
        latency = latency_or_status(row)
        versus_full = row["family"] != "full"
        versus_reference = row["backend"] != row["reference_backend"]
        table.rows.append([
            row["variant"], row["backend"], f"{row['resolution']}²", f"{row['dim']}/{row['heads']}", row["phase"],
            params_millions(row, facts) if not pd.isna(row["param_mb"]) else None, value_or_none(row["gmacs"]), latency,
            value_or_none(row["throughput"]) if ok else None, peak_memory(row),
            value_or_none(row["full_speedup"]) if versus_full else None,
            memory_ratio(row, "full") if versus_full else None,
            value_or_none(row["reference_speedup"]) if versus_reference else None,
            memory_ratio(row, "reference") if versus_reference else None])
        table.blocks.append(blocks.setdefault((row["phase"], row["resolution"], row["dim"]), len(blocks)))
    return table


@table("backends", "attentions", 40)
def backend_table(frame: pd.DataFrame, facts: RegistryFacts) -> Table | None:
    """(c) Every non-reference backend against its family's reference: speedup, memory saving, error; and the
    speedup over the compiled reference, where some row was timed against one."""
    rows = with_reference(with_variants(frame, facts.defaults))
    compiled = has_compiled_reference(rows)
    if compiled:
        rows = with_compiled_reference(rows)
    others = rows[rows["backend"] != rows["reference_backend"]]
    if others.empty:
        return None
    table = Table("backends", "Backends against their family's reference backend on the same case",
                  [*case_columns(), Column("Status"),
                   Column("Speedup", ratio_text, "max", note="Speedup: reference latency / latency, with its 95% "
                          "confidence interval where the two were timed in paired rounds."),
                   *([compiled_reference_column(others)] if compiled else []),
                   Column("Mem saving", ratio_text, "max", note="Mem saving: reference peak memory / peak memory."),
                   Column("Rel. err", lambda v: f"{v:.1e}", "min",
                          note="Rel. err: ‖out − exact‖ / ‖exact‖ against float64 math on the same rounded weights "
                          "and input, of the tensor (output or a gradient) nearest its bound."),
                   Column("Ref. err", lambda v: f"{v:.1e}", paper=False,
                          note="Ref. err: the reference backend's own error there, in the same dtype."),
                   Column("Bound", lambda v: f"{v:.1e}", paper=False,
                          note="Bound: max(2 × Ref. err, the dtype's floor)."),
                   Column("Max abs err", lambda v: f"{v:.1e}", paper=False,
                          note="Max abs err: max |out − exact| over output and gradients.")],
                  note="A mismatch exceeded its bound and shows no speedup. Best per column within each "
                  "resolution, width and phase in bold. " + CONVENTIONS)
    blocks: dict[tuple, int] = {}
    for _, row in in_case_order(others, facts).iterrows():
        status = row["status"]
        if status == "ok" and row["reference_status"] != "ok":
            reference = row["reference_status"]
            status = f"reference {reference if isinstance(reference, str) else 'missing'}"
        ratio = memory_ratio(row, "reference")
        memory_saving = None if ratio is None else 1 / ratio
        table.rows.append([
            row["variant"], row["backend"], f"{row['resolution']}²", f"{row['dim']}/{row['heads']}", row["phase"],
            status, speedup_cell(row), *([speedup_cell(row, "compiled_reference")] if compiled else []),
            memory_saving, value_or_none(row["rel_err"]), value_or_none(row["ref_rel_err"]),
            value_or_none(row["err_tolerance"]), value_or_none(row["max_abs_err"])])
        table.blocks.append(blocks.setdefault((row["phase"], row["resolution"], row["dim"]), len(blocks)))
    return table


@table("compile_times", "attentions", 45)
def compile_time_table(frame: pd.DataFrame, facts: RegistryFacts) -> Table | None:
    """What compiling every compiled case cost: cold compile time, graphs, graph breaks and status."""
    rows = compiled_rows(with_variants(frame, facts.defaults))
    if rows.empty:
        return None
    table = Table("compile_times", "torch.compile: compile time and graphs of every compiled case",
                  [*case_columns(), Column("Batch"), Column("Dtype"), *compile_columns()],
                  note="Best per column within each resolution, width and phase in bold.")
    blocks: dict[tuple, int] = {}
    for _, row in in_case_order(rows, facts).iterrows():
        table.rows.append([row["variant"], row["backend"], f"{row['resolution']}²", f"{row['dim']}/{row['heads']}",
                           row["phase"], int(row["batch"]), row["dtype"], *compile_cells(row)])
        table.blocks.append(blocks.setdefault((row["phase"], row["resolution"], row["dim"]), len(blocks)))
    return table


MODEL_PHASES = ("fwd", "fwd+bwd")


def _model_order(frame: pd.DataFrame, facts: RegistryFacts) -> pd.DataFrame:
    """Rows by resolution, batch and dtype, then models and attentions in registry order (unknown ones after)."""
    return frame.assign(_model=frame["model"].map(facts.model_rank),
                        _attention=frame["attention"].map(facts.family_rank)).sort_values(
        ["resolution", "batch", "dtype", "_model", "_attention", "attention", "backend"], kind="stable")


@table("models", "models", 60)
def model_table(frame: pd.DataFrame, facts: RegistryFacts) -> Table:
    """The model-level paper table: per model, attention choice, backend and resolution, parameters, GFLOPs
    (fvcore MACs per image) and, for the forward and for forward+backward, throughput, latency and memory."""
    columns = [Column("Model"), Column("Attention"), Column("Backend"), Column("Res.", heading=True),
               Column("Batch", heading=True), Column("Dtype", heading=True),
               Column("Params (M)", lambda v: f"{v:.2f}"),
               Column("FLOPs (G)", lambda v: f"{v:.3f}", note="FLOPs (G): fvcore multiply-adds of one image's "
                      "forward in eval mode, as the papers count them.")]
    for phase in MODEL_PHASES:
        columns += [Column(f"{phase} img/s", lambda v: f"{v:.4g}", "max", span=phase),
                    Column(f"{phase} ms", best="min", paper=False),
                    Column(f"{phase} MB", lambda v: f"{v:.4g}", "min", span=phase)]
    table = Table("models", "Backbones: parameters, FLOPs, throughput and memory", columns,
                  note="fwd: the forward in eval mode; fwd+bwd: forward and backward in training mode; img/s: "
                  "images per second; MB: peak memory. Best per column within each resolution, batch and dtype in "
                  "bold. " + CONVENTIONS)
    keys = ["model", "attention", "backend", "resolution", "batch", "dtype"]
    ordered = _model_order(frame, facts)
    blocks: dict[tuple, int] = {}
    for key, rows in ordered.groupby(keys, sort=False):
        model, attention, backend, resolution, batch, dtype = key
        first = rows.iloc[0]
        cells: list[object] = [facts.display_name(model), attention, backend, f"{resolution}²", int(batch), dtype,
                               value_or_none(rows["params_m"].max()), value_or_none(rows["gmacs_per_image"].max())]
        for phase in MODEL_PHASES:
            row = rows[rows["phase"] == phase]
            if row.empty:
                cells += [None, None, None]
            elif row.iloc[-1]["status"] == "noisy":  # marked, never bold; its memory is no timing figure
                row = row.iloc[-1]
                cells += [f"{row['throughput']:.4g} NOISY", latency_or_status(row), value_or_none(row["peak_mem_mb"])]
            elif row.iloc[-1]["status"] != "ok":  # in the throughput column, which the LaTeX shows too
                cells += [row.iloc[-1]["status"].upper(), None, None]
            else:
                row = row.iloc[-1]
                cells += [value_or_none(row["throughput"]), latency_cell(row), value_or_none(row["peak_mem_mb"])]
        table.rows.append(cells)
        table.blocks.append(blocks.setdefault((first["resolution"], first["batch"], first["dtype"]), len(blocks)))
    return table


@table("model_compile_times", "models", 70)
def model_compile_time_table(frame: pd.DataFrame, facts: RegistryFacts) -> Table | None:
    """What compiling every compiled backbone cost: cold compile time, graphs, graph breaks and status."""
    rows = compiled_rows(frame)
    if rows.empty:
        return None
    table = Table("model_compile_times", "torch.compile: compile time and graphs of every compiled backbone",
                  [Column("Model"), Column("Attention"), Column("Backend"), Column("Res.", heading=True),
                   Column("Batch", heading=True), Column("Dtype", heading=True), Column("Phase"), *compile_columns()],
                  note="Best per column within each resolution, batch and dtype in bold.")
    blocks: dict[tuple, int] = {}
    for _, row in _model_order(rows, facts).iterrows():
        table.rows.append([facts.display_name(row["model"]), row["attention"], row["backend"], f"{row['resolution']}²",
                           int(row["batch"]), row["dtype"], row["phase"], *compile_cells(row)])
        table.blocks.append(blocks.setdefault((row["resolution"], row["batch"], row["dtype"]), len(blocks)))
    return table
