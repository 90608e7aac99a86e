"""Paper tables from result rows, rendered as markdown, LaTeX (booktabs) and CSV.

Rules every table follows:
- captions state units and conventions (GMACs are the papers' "FLOPs"; HW FLOPs = 2 × MACs);
- the best value of each column is in bold, within each block of rows (a resolution and phase);
- rows whose status is not ok keep their place and show the status instead of numbers;
- a mismatch row never shows a speedup: it failed the error check against the reference;
- a noisy row shows its latency marked NOISY, never in bold and never in a ratio;
- a speedup over the reference is the paired one (median of per-round ratios, timed in the same
  rounds) with its 95% confidence interval where the run has it, else the ratio of medians;
- an error recorded as inf (NaN/inf in a backend's output or gradients) reads "inf" and is never in bold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

import torch

import attentions
from attentions.models import list_models

from .profiles import DTYPES
from .results import MEASURED_STATUSES
from .variants import with_backend, with_dense, with_full_attention, with_reference, with_variants

MB = 2 ** 20
CONVENTIONS = ("GMACs are multiply-adds counted by fvcore, the papers' \"FLOPs\"; hardware FLOPs = 2 × MACs "
               "(forward+backward: 3 × the forward). Latency is the median over timed rounds with the p20–p80 "
               "spread; memory is the peak allocated during one pass above what was allocated before it.")


@dataclass
class Column:
    """A table column: header, how to format a value, and which end is best (for bold)."""

    header: str
    format: Callable[[float], str] = lambda v: f"{v:.3g}"
    best: str | None = None  # "min", "max" or None


@dataclass(frozen=True)
class Cell:
    """A number shown as custom text (e.g. a median with its spread); the number decides bold."""

    value: float
    text: str


def _number(cell: object) -> float | None:
    value = cell.value if isinstance(cell, Cell) else cell
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value):
        return float(value)
    return None


@dataclass
class Table:
    name: str
    caption: str
    columns: list[Column]
    rows: list[list[object]] = field(default_factory=list)  # float, Cell, str (label or status) or None
    blocks: list[int] = field(default_factory=list)          # block id per row, for bold and rules

    def frame(self) -> pd.DataFrame:
        """The table's values (numbers as numbers) for CSV."""
        return pd.DataFrame([[c.value if isinstance(c, Cell) else c for c in row] for row in self.rows],
                            columns=[c.header for c in self.columns])

    def best_cells(self) -> set[tuple[int, int]]:
        cells = set()
        for col, column in enumerate(self.columns):
            if column.best is None:
                continue
            for block in set(self.blocks):
                values = [(r, _number(row[col])) for r, row in enumerate(self.rows) if self.blocks[r] == block]
                values = [(r, v) for r, v in values if v is not None and math.isfinite(v)]  # inf: never the best
                if len(values) < 2:
                    continue
                target = (min if column.best == "min" else max)(v for _, v in values)
                cells.update((r, col) for r, v in values if v == target)
        return cells

    def texts(self) -> list[list[str]]:
        def text(cell: object, column: Column) -> str:
            if isinstance(cell, str):
                return cell
            if isinstance(cell, Cell):
                return cell.text
            return "—" if _number(cell) is None else column.format(cell)
        return [[text(cell, column) for cell, column in zip(row, self.columns)] for row in self.rows]

    def to_markdown(self) -> str:
        bold = self.best_cells()
        lines = [f"**{self.caption}**", "", "| " + " | ".join(c.header for c in self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        for r, row in enumerate(self.texts()):
            cells = [f"**{t}**" if (r, c) in bold else t for c, t in enumerate(row)]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def to_latex(self) -> str:
        bold = self.best_cells()
        align = "".join("l" if c.best is None else "r" for c in self.columns)
        lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{latex_escape(self.caption)}}}",
                 f"\\label{{tab:{self.name}}}", f"\\begin{{tabular}}{{{align}}}", "\\toprule",
                 " & ".join(latex_escape(c.header) for c in self.columns) + " \\\\", "\\midrule"]
        previous = None
        for r, row in enumerate(self.texts()):
            if previous is not None and self.blocks[r] != previous:
                lines.append("\\midrule")
            previous = self.blocks[r]
            cells = [f"\\textbf{{{latex_escape(t)}}}" if (r, c) in bold else latex_escape(t)
                     for c, t in enumerate(row)]
            lines.append(" & ".join(cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = [out_dir / f"{self.name}.md", out_dir / f"{self.name}.tex", out_dir / f"{self.name}.csv"]
        paths[0].write_text(self.to_markdown())
        paths[1].write_text(self.to_latex())
        self.frame().to_csv(paths[2], index=False)
        return paths


LATEX_SPECIALS = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "×": r"$\times$", "²": r"$^2$", "–": "--", "—": "---", "≤": r"$\leq$", "‖": r"$\|$",
                  "→": r"$\to$"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)


def _ratio(value: float) -> str:
    return f"{value:.2f}×"


def _latency(row: pd.Series) -> Cell:
    text = f"{row['latency_ms_median']:.3g} [{row['latency_ms_p20']:.3g}–{row['latency_ms_p80']:.3g}]"
    return Cell(row["latency_ms_median"], text)


def _latency_or_status(row: pd.Series) -> object:
    """The latency of an ok row; of a noisy or mismatch row as marked text (never bold); else the status."""
    if row["status"] == "ok":
        return _latency(row)
    if row["status"] in MEASURED_STATUSES:
        return f"{_latency(row).text} {row['status'].upper()}"
    return row["status"].upper()


def _speedup(row: pd.Series) -> Cell | None:
    """The speedup over the reference with its confidence interval, when the run paired them."""
    value = _value(row["reference_speedup"])
    if value is None:
        return None
    low, high = _value(row.get("reference_speedup_low")), _value(row.get("reference_speedup_high"))
    return Cell(value, _ratio(value) if low is None else f"{_ratio(value)} [{low:.2f}–{high:.2f}]")


def params_millions(row: pd.Series) -> float:
    """Parameter count from the recorded parameter bytes and the dtype's element size."""
    element = torch.empty((), dtype=DTYPES[row["dtype"]]).element_size()
    return row["param_mb"] * MB / element / 1e6


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    order = {"full": 0, "window": 1, "deformable": 2, "bra": 3}
    return frame.assign(_family_order=frame["family"].map(lambda f: order.get(f, 9))).sort_values(
        ["phase", "resolution", "dim", "_family_order", "variant", "backend"], kind="stable")


def _value(value: float) -> float | None:
    return None if pd.isna(value) else value


def main_table(frame: pd.DataFrame) -> Table:
    """(a) Every variant × backend × resolution: cost, speed, memory, and ratios to full and to the reference."""
    rows = with_full_attention(with_reference(with_variants(frame)))
    table = Table("main", "Attention variants: parameters, cost, latency (ms, median [p20–p80]), throughput "
                  "(images/s) and peak memory (MB); speedup (×, higher is better) and memory ratio (×, lower is "
                  "better) against full attention with the same backend and against the family's reference "
                  "backend. Best per column within each resolution and phase in bold. " + CONVENTIONS,
                  [Column("Variant"), Column("Backend"), Column("Res."), Column("C/heads"), Column("Phase"),
                   Column("Params (M)", lambda v: f"{v:.3f}", None), Column("GMACs", lambda v: f"{v:.3g}", "min"),
                   Column("Latency ms", best="min"), Column("Img/s", lambda v: f"{v:.4g}", "max"),
                   Column("Mem MB", lambda v: f"{v:.4g}", "min"), Column("× full", _ratio, "max"),
                   Column("Mem/full", _ratio, "min"), Column("× ref", _ratio, "max"), Column("Mem/ref", _ratio, "min")])
    blocks: dict[tuple, int] = {}
    for _, row in _sorted(rows).iterrows():
        ok = row["status"] == "ok"
        latency = _latency_or_status(row)
        versus_full = row["family"] != "full"
        versus_reference = row["backend"] != row["reference_backend"]
        table.rows.append([
            row["variant"], row["backend"], f"{row['resolution']}²", f"{row['dim']}/{row['heads']}", row["phase"],
            params_millions(row) if not pd.isna(row["param_mb"]) else None, _value(row["gmacs"]), latency,
            _value(row["throughput"]) if ok else None, _value(row["peak_mem_mb"]) if ok else None,
            _value(row["full_speedup"]) if versus_full else None,
            _value(row["full_mem_ratio"]) if versus_full else None,
            _value(row["reference_speedup"]) if versus_reference else None,
            _value(row["reference_mem_ratio"]) if versus_reference else None])
        table.blocks.append(blocks.setdefault((row["phase"], row["resolution"], row["dim"]), len(blocks)))
    return table


def _stage1_width(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows at the family's most common (dim, heads): ablations compare like with like."""
    if frame.empty:
        return frame
    width = frame.groupby(["dim", "heads"]).size().idxmax()
    return frame[(frame["dim"] == width[0]) & (frame["heads"] == width[1])]


def ablation_table(frame: pd.DataFrame, axis: str) -> Table | None:
    """(b) BRA ablation over ``axis`` (topk or kv_downsample_mode) × resolution: GMACs, latency, memory."""
    bra = _stage1_width(frame[frame["family"] == "bra"])
    if axis == "topk":
        bra = bra[bra["kv_downsample_mode"] == "identity"]
    else:
        common_topk = bra["topk"].mode()
        bra = bra[bra["topk"] == common_topk.iloc[0]] if len(common_topk) else bra
    if bra[axis].nunique() < 2:
        return None
    resolutions = sorted(bra["resolution"].unique())
    columns = [Column("Phase"), Column("Backend"), Column(axis.replace("kv_downsample_mode", "kv mode"))]
    for r in resolutions:
        columns += [Column(f"{r}² GMACs", lambda v: f"{v:.3g}", "min"), Column(f"{r}² ms", best="min"),
                    Column(f"{r}² MB", lambda v: f"{v:.4g}", "min")]
    dim, heads = bra["dim"].iloc[0], bra["heads"].iloc[0]
    what = "top-k routed regions" if axis == "topk" else "kv downsampling mode"
    table = Table(f"bra_{'topk' if axis == 'topk' else 'kv_modes'}",
                  f"BRA ablation over the {what} (C {dim}, {heads} heads, batch {bra['batch'].iloc[0]}, "
                  f"{bra['dtype'].iloc[0]}): GMACs, median latency (ms) and peak memory (MB) per resolution. "
                  f"Best per column within each phase and backend in bold. " + CONVENTIONS, columns)
    blocks: dict[tuple, int] = {}
    keyed = {(r["phase"], r["backend"], r[axis], r["resolution"]): r for _, r in bra.iterrows()}
    values = sorted(bra[axis].unique(), key=lambda v: (str(type(v)), v))
    label = (lambda v: str(int(v))) if axis == "topk" else str
    for phase in sorted(bra["phase"].unique()):
        for backend in sorted(bra["backend"].unique()):
            for value in values:
                cells: list[object] = [phase, backend, label(value)]
                for r in resolutions:
                    row = keyed.get((phase, backend, value, r))
                    if row is None:
                        cells += [None, None, None]
                    elif row["status"] != "ok":
                        cells += [row["gmacs"] if not pd.isna(row["gmacs"]) else None, _latency_or_status(row), None]
                    else:
                        cells += [row["gmacs"], _latency(row), row["peak_mem_mb"]]
                table.rows.append(cells)
                table.blocks.append(blocks.setdefault((phase, backend), len(blocks)))
    return table


def backend_table(frame: pd.DataFrame) -> Table | None:
    """(c) Every non-reference backend against its family's reference: speedup, memory saving, error."""
    rows = with_reference(with_variants(frame))
    others = rows[rows["backend"] != rows["reference_backend"]]
    if others.empty:
        return None
    table = Table("backends", "Backends against their family's reference backend on the same case: speedup "
                  "(reference latency / latency, ×), memory saving (reference peak / peak, ×) and error "
                  "(‖out − ref‖ / ‖ref‖, worst of output and gradients; max |out − ref|). A mismatch exceeded "
                  "the dtype's tolerance and shows no speedup. Best per column within each resolution and phase "
                  "in bold. " + CONVENTIONS,
                  [Column("Variant"), Column("Backend"), Column("Res."), Column("C/heads"), Column("Phase"),
                   Column("Status"), Column("Speedup", _ratio, "max"), Column("Mem saving", _ratio, "max"),
                   Column("Rel. err", lambda v: f"{v:.1e}", "min"), Column("Max abs err", lambda v: f"{v:.1e}")])
    blocks: dict[tuple, int] = {}
    for _, row in _sorted(others).iterrows():
        status = row["status"]
        if status == "ok" and row["reference_status"] != "ok":
            reference = row["reference_status"]
            status = f"reference {reference if isinstance(reference, str) else 'missing'}"
        memory_saving = None if pd.isna(row["reference_mem_ratio"]) else 1 / row["reference_mem_ratio"]
        table.rows.append([
            row["variant"], row["backend"], f"{row['resolution']}²", f"{row['dim']}/{row['heads']}", row["phase"],
            status, _speedup(row), memory_saving, _value(row["rel_err"]),
            _value(row["max_abs_err"])])
        table.blocks.append(blocks.setdefault((row["phase"], row["resolution"], row["dim"]), len(blocks)))
    return table


def bra_fast_path_table(frame: pd.DataFrame) -> Table | None:
    """(d) BRA's fast paths, in the terms of their targets: speedup and memory against the official
    algorithm (memory target: 1/topk of it), speedup over the flex backend, and speedup over dense
    flash attention as a share of the attention FLOP ratio (regions / topk; identity kv mode)."""
    rows = with_dense(with_backend(with_reference(with_variants(frame)), "flex", "flex"), "sdpa_flash", "flash")
    rows = rows[(rows["family"] == "bra") & (rows["kv_downsample_mode"].fillna("identity") == "identity")
                & (rows["backend"] != rows["reference_backend"])]
    if rows.empty:
        return None
    table = Table("bra_fast_paths", "BRA fast paths against the official algorithm (the reference backend): "
                  "speedup (×) and peak memory ratio (target ≤ 1/topk), speedup over BRA's flex backend, and "
                  "speedup over full attention through SDPA's flash kernel with that speedup as a share of the "
                  "attention FLOP ratio (regions / topk). TFLOP/s from fvcore's MACs; % of the profile's dense "
                  "peak. Tile eff.: the share of the multiply-adds its kernels' matrix tiles issue that is useful "
                  "(the backends that report it). Best per column within each case in bold. " + CONVENTIONS,
                  [Column("Variant"), Column("Backend"), Column("Res."), Column("C/heads"), Column("Phase"),
                   Column("Latency ms", best="min"), Column("× ref", _ratio, "max"),
                   Column("Mem/ref", _ratio, "min"), Column("1/topk", _ratio), Column("× flex", _ratio, "max"),
                   Column("× flash", _ratio, "max"), Column("FLOP ratio", lambda v: f"{v:.3g}"),
                   Column("% of FLOP ratio", lambda v: f"{v:.0%}", "max"),
                   Column("TFLOP/s", lambda v: f"{v:.3g}", "max"), Column("% peak", lambda v: f"{v:.1f}", "max"),
                   Column("Tile eff.", lambda v: f"{v:.0%}", "max")])
    blocks: dict[tuple, int] = {}
    for _, row in _sorted(rows).iterrows():
        ok = row["status"] == "ok"
        flop_ratio = row["n_win"] ** 2 / row["topk"]
        table.rows.append([
            row["variant"], row["backend"], f"{row['resolution']}²", f"{row['dim']}/{row['heads']}", row["phase"],
            _latency_or_status(row), _speedup(row),
            _value(row["reference_mem_ratio"]), 1 / row["topk"],
            None if row["backend"] == "flex" else _value(row["flex_speedup"]), _value(row["flash_speedup"]),
            flop_ratio, _value(row["flash_speedup"] / flop_ratio),
            _value(row["tflops_achieved"]) if ok else None, _value(row["pct_of_peak"]) if ok else None,
            _value(row["tile_efficiency"]) if ok else None])
        table.blocks.append(blocks.setdefault(
            (row["phase"], row["resolution"], row["dim"], row["variant"]), len(blocks)))
    return table


def all_tables(frame: pd.DataFrame) -> list[Table]:
    tables = [main_table(frame), ablation_table(frame, "topk"), ablation_table(frame, "kv_downsample_mode"),
              backend_table(frame), bra_fast_path_table(frame)]
    return [t for t in tables if t is not None]


MODEL_PHASES = ("fwd", "fwd+bwd")


def _model_order(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows by resolution, batch and dtype, then models in ``list_models`` order, attentions in registry order."""
    models = {name: i for i, name in enumerate(list_models())}
    families = {name: i for i, name in enumerate(attentions.list_attentions())}
    return frame.assign(_model=frame["model"].map(lambda m: models.get(m, len(models))),
                        _attention=frame["attention"].map(lambda a: families.get(a, len(families)))).sort_values(
        ["resolution", "batch", "dtype", "_model", "_attention", "attention", "backend"], kind="stable")


def model_table(frame: pd.DataFrame) -> Table:
    """The model-level paper table: per model, attention choice, backend and resolution, parameters, GFLOPs
    (fvcore MACs per image) and, for the forward and for forward+backward, throughput, latency and memory."""
    names = {name: info["display_name"] for name, info in list_models().items()}
    columns = [Column("Model"), Column("Attention"), Column("Backend"), Column("Res."), Column("Batch"),
               Column("Dtype"), Column("Params (M)", lambda v: f"{v:.2f}"), Column("FLOPs (G)", lambda v: f"{v:.3f}")]
    for phase in MODEL_PHASES:
        columns += [Column(f"{phase} img/s", lambda v: f"{v:.4g}", "max"), Column(f"{phase} ms", best="min"),
                    Column(f"{phase} MB", lambda v: f"{v:.4g}", "min")]
    table = Table("models", "Backbones: parameters (M), FLOPs (G, fvcore multiply-adds of one image's forward in "
                  "eval mode, as the papers count them) and, for the forward (eval mode) and forward+backward "
                  "(training mode), throughput (images/s), latency (ms, median [p20–p80]) and peak memory (MB). "
                  "Best per column within each resolution, batch and dtype in bold. " + CONVENTIONS, columns)
    keys = ["model", "attention", "backend", "resolution", "batch", "dtype"]
    ordered = _model_order(frame)
    blocks: dict[tuple, int] = {}
    for key, rows in ordered.groupby(keys, sort=False):
        model, attention, backend, resolution, batch, dtype = key
        first = rows.iloc[0]
        cells: list[object] = [names.get(model, model), attention, backend, f"{resolution}²", int(batch), dtype,
                               _value(rows["params_m"].max()), _value(rows["gmacs_per_image"].max())]
        for phase in MODEL_PHASES:
            row = rows[rows["phase"] == phase]
            if row.empty:
                cells += [None, None, None]
            elif row.iloc[-1]["status"] != "ok":
                cells += [None, row.iloc[-1]["status"].upper(), None]
            else:
                row = row.iloc[-1]
                cells += [_value(row["throughput"]), _latency(row), _value(row["peak_mem_mb"])]
        table.rows.append(cells)
        table.blocks.append(blocks.setdefault((first["resolution"], first["batch"], first["dtype"]), len(blocks)))
    return table
